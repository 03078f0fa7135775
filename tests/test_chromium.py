"""X25519MLKEM768 against a real client: Debian's chromium, headless, fetches a page from the
harness in http mode (tests/support/harness.py). The page names the negotiated version, suite and group;
the test asserts the server recorded them and the dumped DOM shows them.

Cases:
- default server (groups x25519mlkem768, x25519, secp256r1): TLS 1.3 on x25519mlkem768
  (chromium sends key shares for X25519MLKEM768 and X25519, plus GREASE);
- server -e secp384r1 only: chromium supports secp384r1 but sends no share for it, so the
  server must send a HelloRetryRequest (a second real-client HRR, next to s_client's);
- server -M tls12 with an RSA certificate: TLS 1.2 (hybrid groups are TLS 1.3 only, so x25519).

chromium connects to https://localhost:PORT/ mapped to 127.0.0.1 (--host-resolver-rules) so
that it sends SNI. It usually opens a second connection for /favicon.ico: the harness serves
up to four connections and the test looks at the one that carried `GET /`.
Outside CI a missing chromium skips (conftest.which); under CI it fails.
"""

from __future__ import annotations

import pytest

from testenv import run, which
from harness import HarnessServer
from tlswrapper.tls import suites
from tlswrapper.tls.config import ServerConfig

TIMEOUT = 120

CASES = [
    pytest.param({}, "ecdsa-p256", "TLSv1.3", "x25519mlkem768", False, id="1.3-x25519mlkem768"),
    pytest.param({"groups": ("secp384r1",)}, "ecdsa-p384", "TLSv1.3", "secp384r1", True,
                 id="1.3-hrr-secp384r1"),
    pytest.param({"version_max": suites.TLS12, "groups": ("x25519mlkem768", "x25519")},
                 "rsa-2048", "TLSv1.2", "x25519", False, id="1.2-x25519-rsa"),
]


@pytest.mark.parametrize("config,cert,version,group,hrr", CASES)
def test_chromium(pki, tmp_path, config, cert, version, group, hrr):
    chromium = which("chromium")
    with HarnessServer(str(pki[cert].path), config=ServerConfig(**config), mode="http",
                       connections=4, timeout=TIMEOUT) as srv:
        proc = run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    f"--user-data-dir={tmp_path / 'profile'}", "--ignore-certificate-errors",
                    "--host-resolver-rules=MAP localhost 127.0.0.1",
                    "--dump-dom", f"https://localhost:{srv.port}/"],
                   timeout=TIMEOUT, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        srv.wait()                 # the first connection is done
    dom = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, proc.stderr[-2000:]
    pages = [r for r in srv.results if r.http_request.startswith(b"GET / HTTP/1.1\r\n")]
    assert pages, [r.summary() for r in srv.results]
    result = pages[0]
    assert result.error is None, result.error
    assert result.failure is None, result.summary()
    assert result.version == version
    assert result.group == group
    assert result.hello_retry == hrr
    assert result.client_hello.sni == "localhost"
    if version == "TLSv1.3":
        # chromium offers the hybrid group and sends a key share for it
        assert suites.X25519MLKEM768 in result.client_hello.groups
        assert suites.X25519MLKEM768 in result.client_hello.key_share_groups
    expected = f"tlswrapper-harness version={version} cipher={result.cipher} group={group}"
    assert expected in dom, dom[-2000:]
