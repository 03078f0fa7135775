"""The test environment: root or not, external tools, ports, subprocesses. Rule: nothing here
knows tlswrapper's internals.

Import the helpers in a test module with
    from testenv import free_port, wait_for_port, is_root, needs_root, which, run
(pyproject.toml puts tests/support/ on sys.path; conftest.py re-exports them too).

External tools (openssl, gnutls-cli, curl, tcpserver, socat, busybox, chromium, Debian's
tlswrapper) are installed by `make test`. Outside CI a missing tool skips the test; under CI
(CI=true in the environment) it fails, so that a missing install step cannot hide as a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

# tool -> the Debian package that provides it (what `make test` installs)
DEBIAN_PACKAGE = {
    "openssl": "openssl",
    "gnutls-cli": "gnutls-bin",
    "gnutls-serv": "gnutls-bin",
    "curl": "curl",
    "tcpserver": "ucspi-tcp",
    "socat": "socat",
    "busybox": "busybox",
    "chromium": "chromium",
    "tlswrapper": "tlswrapper",
    "tlswrapper-tcp": "tlswrapper",
    "tlswrapper-smtp": "tlswrapper",
    "haproxy": "haproxy",
    "systemd-socket-activate": "systemd",
}

# Debian's C tlswrapper, by absolute path: `tlswrapper` on PATH may be ours (the venv's).
DEBIAN_TLSWRAPPER = "/usr/bin/tlswrapper"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root")


def which(tool: str) -> str:
    """The absolute path of an external tool, or skip the test (fail under CI) when missing."""
    path = shutil.which(tool)
    if path is None and os.path.isabs(tool) and os.access(tool, os.X_OK):
        path = tool
    if path is None:
        package = DEBIAN_PACKAGE.get(os.path.basename(tool), "?")
        msg = f"{tool} not installed (Debian package {package}; `make test` installs it)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def debian_tlswrapper(name: str = "tlswrapper") -> str:
    """Path of Debian's C tlswrapper (or tlswrapper-tcp / tlswrapper-smtp); skip if absent."""
    return which(f"/usr/bin/{name}")


def our_command(name: str = "tlswrapper") -> str:
    """Path of our console script in the running venv (beside sys.executable)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{path} missing: run `pip install -e .` (make test does)")
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                  proc: subprocess.Popen | None = None) -> None:
    """Wait until something accepts TCP connections on host:port (e.g. a tcpserver just
    started). Fails early if proc has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def run(cmd: Sequence[str | os.PathLike], input: bytes | str | None = None,
        timeout: float = 60.0, env: Mapping[str, str] | None = None,
        check: bool = False, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run cmd, capture stdout/stderr (bytes, or str when input is a str), and return the
    CompletedProcess. A timeout raises subprocess.TimeoutExpired after killing the process;
    check=True raises on a non-zero exit with stderr in the message."""
    text = isinstance(input, str)
    proc = subprocess.run([os.fspath(c) for c in cmd], input=input, capture_output=True,
                          check=False, timeout=timeout,
                          env=None if env is None else dict(env), cwd=cwd, text=text,
                          stdin=subprocess.DEVNULL if input is None else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {proc.returncode}: {proc.stderr!r}")
    return proc
