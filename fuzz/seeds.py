"""Write the seed inputs of every target into fuzz/corpus/<target>/seed-<name> (valid inputs
the fuzzer starts from and mutates). Rule: seeds are made with the project's builders, the
test clients (tests/support/tls13client.py) and OpenSSL through Python's ssl, never by hand.

    .venv/bin/python fuzz/seeds.py          # (re)writes the seed-* files; found-* stay"""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

import targets  # noqa: E402
from tls13client import TLS13Client  # noqa: E402
from tlswrapper import ipc  # noqa: E402
from tlswrapper.net import proxyproto  # noqa: E402
from tlswrapper.tls import messages as m  # noqa: E402
from tlswrapper.tls import record  # noqa: E402
from tlswrapper.tls import suites as s  # noqa: E402
from tlswrapper.tls.wire import handshake_message  # noqa: E402

import hostile  # noqa: E402  (tests/support/hostile.py)


def _parser_index(name: str) -> int:
    return [n for n, _ in targets.PARSERS].index(name)


def messages_seeds() -> dict[str, bytes]:
    hello13 = hostile.client_hello()[4:]
    hello12 = hostile.client_hello(tls13=False, extra=(
        m.Extension(s.EXT_EXTENDED_MASTER_SECRET, b""),
        m.Extension(s.EXT_RENEGOTIATION_INFO, m.build_renegotiation_info(b""))))[4:]
    ext = (m.Extension(s.EXT_SUPPORTED_VERSIONS, m.build_supported_versions_server(s.TLS13)),)
    bodies = {
        "parse_client_hello": [hello13, hello12],
        "parse_server_hello": [m.build_server_hello(m.ServerHello(
            s.TLS12, os.urandom(32), os.urandom(32), 0x1301, ext))],
        "parse_extensions": [m.build_extensions(ext)],
        "parse_encrypted_extensions": [m.build_encrypted_extensions(m.EncryptedExtensions(
            (m.Extension(s.EXT_SERVER_NAME, b""),)))],
        "parse_certificate13": [m.build_certificate13(m.Certificate13(
            b"", ((b"\x30\x03\x02\x01\x01", b""),)))],
        "parse_certificate12": [m.build_certificate12(m.Certificate12((b"\x30\x00",)))],
        "parse_certificate_verify": [m.build_certificate_verify(m.CertificateVerify(
            s.ECDSA_SECP256R1_SHA256, os.urandom(70)))],
        "parse_server_key_exchange": [m.build_server_key_exchange(m.ServerKeyExchangeECDHE(
            s.X25519, os.urandom(32), s.ECDSA_SECP256R1_SHA256, os.urandom(70)))],
        "parse_client_key_exchange": [m.build_client_key_exchange(
            m.ClientKeyExchangeECDHE(os.urandom(32)))],
        "parse_finished": [os.urandom(12)],
        "parse_key_update": [b"\x01"],
        "parse_certificate_request13": [m.build_certificate_request13(m.CertificateRequest13(
            b"", (m.Extension(s.EXT_SIGNATURE_ALGORITHMS,
                              m.build_signature_algorithms((0x0403,))),)))],
        "parse_certificate_request12": [m.build_certificate_request12(m.CertificateRequest12(
            b"\x01\x40", (0x0403, 0x0401), (b"\x30\x00",)))],
        "parse_empty": [b""],
        "parse_alert": [b"\x02\x28"],
        "parse_server_name": [m.build_server_name("www.example.com"),
                              hostile.raw_server_name(b"a\x1bb")],
        "parse_supported_groups": [m.build_supported_groups((29, 23, 0x11EC))],
        "parse_signature_algorithms": [m.build_signature_algorithms((0x0403, 0x0804))],
        "parse_supported_versions_client": [m.build_supported_versions_client((0x0304, 0x0303))],
        "parse_supported_versions_server": [b"\x03\x04"],
        "parse_key_share_client": [m.build_key_share_client(((29, os.urandom(32)),
                                                             (23, os.urandom(65))))],
        "parse_key_share_server": [m.build_key_share_server(29, os.urandom(32))],
        "parse_key_share_hrr": [b"\x00\x17"],
        "parse_ec_point_formats": [b"\x01\x00"],
        "parse_renegotiation_info": [b"\x00"],
        "parse_psk_key_exchange_modes": [b"\x01\x01"],
        "parse_pre_shared_key_client": [m.build_pre_shared_key_client(
            ((b"id", 7),), (os.urandom(32),))],
        "parse_cookie": [m.build_cookie(b"cookie")],
        "parse_alpn": [m.build_alpn((b"h2", b"http/1.1"))],
        "parse_certificate_authorities": [m.build_certificate_authorities((b"\x30\x00",))],
    }
    out = {}
    for name, values in bodies.items():
        for i, body in enumerate(values):
            out[f"{name}-{i}"] = bytes((_parser_index(name), 0)) + body
    return out


def wire_seeds() -> dict[str, bytes]:
    ops = bytes((0, 1, 2, 3, 8, 4, 12, 5, 9, 1, 12, 11))
    return {"program": bytes((len(ops),)) + ops + b"\x01\x00\x02\x00\x00\x03" + bytes(40),
            "blocks": b"\x04\x08\x08\x00\x0c" + b"\x00\x06\x00\x04\x00\x02ab"}


def _openssl_hello(version: ssl.TLSVersion, ciphers: str | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1 if version < ssl.TLSVersion.TLSv1_2 \
        else ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _tls12_rest() -> bytes:
    """ClientKeyExchange (an X25519 point), ChangeCipherSpec and a Finished record that will
    not open: the server derives its keys and fails on the record, deep in the handshake."""
    cke = handshake_message(s.HS_CLIENT_KEY_EXCHANGE, m.build_client_key_exchange(
        m.ClientKeyExchangeECDHE(os.urandom(32))))
    return record.plaintext_records(s.HANDSHAKE, s.TLS12, cke) + b"\x14\x03\x03\x00\x01\x01" \
        + b"\x16\x03\x03\x00\x28" + os.urandom(40)


def engine12_seeds() -> dict[str, bytes]:
    out = {}
    for name, version, ciphers in (
            ("openssl-tls12", ssl.TLSVersion.TLSv1_2, None),
            ("openssl-tls12-cbc", ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256"),
            ("openssl-tls10-cbc", ssl.TLSVersion.TLSv1, "ECDHE-RSA-AES128-SHA")):
        out[name] = b"\x00" + _openssl_hello(version, ciphers) + _tls12_rest()
    out["hostile-hello-small-pieces"] = b"\x01" + hostile.records(
        hostile.client_hello(tls13=False), 200) + _tls12_rest()
    return out


def engine13_seeds() -> dict[str, bytes]:
    client = TLS13Client(groups=(s.X25519, s.SECP256R1))
    client.start()
    full = client.data_to_send()
    hrr = TLS13Client(groups=(s.SECP256R1,), key_share_groups=())
    hrr.start()
    first = hrr.data_to_send()
    # The second ClientHello, as the client would send it after our HelloRetryRequest.
    hrr._hello_retry_request(m.ServerHello(s.TLS12, s.HRR_RANDOM, hrr.session_id, 0x1301, (
        m.Extension(s.EXT_SUPPORTED_VERSIONS, m.build_supported_versions_server(s.TLS13)),
        m.Extension(s.EXT_KEY_SHARE, m.build_key_share_hrr(s.SECP256R1)))), b"")
    junk = b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x30" + os.urandom(48)
    return {"tls13client": b"\x00" + full + junk,
            "tls13client-hrr": b"\x00" + first + hrr.data_to_send() + junk,
            "openssl-tls13": b"\x00" + _openssl_hello(ssl.TLSVersion.TLSv1_3) + junk,
            "mlkem-share": b"\x03" + _mlkem_hello() + junk}


def _mlkem_hello() -> bytes:
    client = TLS13Client(groups=(s.X25519MLKEM768, s.X25519))
    client.start()
    return client.data_to_send()


def record_seeds() -> dict[str, bytes]:
    hello = hostile.client_hello()
    return {"hello": b"\x00" + hostile.records(hello),
            "hello-in-100-byte-records": b"\x02" + hostile.records(hello, 100),
            "ccs-alert-appdata": b"\x00\x14\x03\x03\x00\x01\x01\x15\x03\x03\x00\x02\x01\x00"
                                 b"\x17\x03\x03\x00\x03abc"}


def protect_seeds() -> dict[str, bytes]:
    out = {}
    for selector in range(2 * len(targets._PROTECTIONS)):
        sealer = targets._protection(selector)
        recs = sealer.seal([(s.APPLICATION_DATA, b"hello world"), (s.ALERT, b"\x01\x00")])
        out[f"sealed-{selector}"] = bytes((selector,)) + recs
    return out


def proxy_seeds() -> dict[str, bytes]:
    # data[0] % 3 is the reader's version (0: either), data[0] // 3 the piece size.
    out = {"tcp4": bytes((3 * 30 + 1,)) + proxyproto.build(("192.0.2.1", 56324),
                                                           ("198.51.100.7", 443)) + b"\x16\x03",
           "tcp6": bytes((3 * 2 + 0,)) + proxyproto.build(("2001:db8::1", 1), ("::1", 65535)),
           "unknown": bytes((3 * 80 + 1,)) + b"PROXY UNKNOWN whatever\r\n"}
    try:
        from tlswrapper.net import proxyproto2
    except ImportError:
        return out
    out["v2-tcp4"] = bytes((3 * 40 + 2,)) + proxyproto2.build(("192.0.2.1", 1), ("10.0.0.1", 443)) \
        + b"\x16\x03\x01"
    out["v2-tcp6-either"] = bytes((3 * 1 + 0,)) + proxyproto2.build(("2001:db8::5", 7),
                                                                  ("2001:db8::6", 8))
    out["v2-local"] = bytes((3 * 10 + 2,)) + proxyproto2.build(None, None)
    return out


def ipc_seeds() -> dict[str, bytes]:
    values = {"request": (1, [b"\x01" * 32, "path", 7, None, True, False, (b"", [])]),
              "answer": (ipc.OP_OK, [(23, b"x" * 100)]),
              "error": (ipc.OP_ERR, "no such file")}
    out = {name: ipc.encode(op, v) for name, (op, v) in values.items()}
    out["two-frames"] = out["request"] + out["answer"]
    return out


def _sealed(*records: tuple[int, bytes]) -> bytes:
    return b"".join(bytes((t,)) + len(p).to_bytes(2, "big") + p for t, p in records)


def connected13_seeds() -> dict[str, bytes]:
    key_update = handshake_message(s.HS_KEY_UPDATE, b"\x01")
    return {"data-and-close": _sealed((23, b"hello"), (23, b""), (21, b"\x01\x00")),
            "key-updates": _sealed((22, key_update), (23, b"x"), (22, key_update[:2]),
                                   (22, key_update[2:])),
            "alerts": _sealed((21, b"\x01\x5a"), (21, b"\x02\x28"), (21, b"")),
            "padded": _sealed((0x97, b"padded"), (24, b"?"))}


def connected12_seeds() -> dict[str, bytes]:
    reneg = hostile.client_hello(tls13=False)
    return {"data-and-close": _sealed((23, b"hello"), (23, b""), (21, b"\x01\x00")),
            "renegotiation": _sealed((22, reneg), (23, b"after")),
            "ccs-and-warnings": _sealed((20, b"\x01"), (21, b"\x01\x64"), (21, b"\x01\x00"))}


def keyservice_seeds() -> dict[str, bytes]:
    """The calls of whole handshakes as the engine makes them (the harness maps cert0 and
    cert1 to its files), and a few an attacker would try."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    def frames(*calls: tuple[str, tuple]) -> bytes:
        return b"".join(ipc.encode(ipc.OPCODES[name], args) for name, args in calls)
    share = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    hello = hostile.client_hello()
    body = b"\x03\x03" + b"s" * 32 + b"\x00\x13\x01\x00\x00\x28\x00\x33\x00\x24\x00\x1d\x00\x20"
    head = bytes([s.HS_SERVER_HELLO]) + (len(body) + 32).to_bytes(3, "big") + body
    ee = handshake_message(s.HS_ENCRYPTED_EXTENSIONS, b"\x00\x00")
    record = b"\x17\x03\x03\x00\x15" + b"r" * 21
    tls13 = (("ready", ()), ("load", (["cert0", "cert1"],)), ("select", (0,)),
             ("server_flight13", (s.X25519, share, 0x1301, s.ECDSA_SECP256R1_SHA256, [hello],
                                  head, [ee], False)),
             ("seal", ([(23, b"hello")],)), ("open", ([record],)), ("activate", (0,)),
             ("key_update", (1,)), ("seal", ([(21, b"\x01\x00")],)))
    tls12 = (("load", (["cert1"],)), ("select", (0,)),
             ("server_key_exchange12", (s.X25519, s.RSA_PSS_RSAE_SHA256, b"c" * 32,
                                        b"s" * 32)),
             ("derive12_finished", (s.TLS12, 0xC02F, share, b"c" * 32, b"s" * 32, [hello],
                                    True, False)),
             ("activate", (0,)), ("open", ([record],)), ("seal", ([(23, b"x")],)))
    client_auth12 = tls12[:3] + (
        ("derive12", (s.TLS12, 0xC02F, share, b"c" * 32, b"s" * 32, b"h" * 32, False)),
        ("finished12", (0, b"h" * 32)), ("activate", (0,)), ("activate", (1,)),
        ("seal_finished12", (b"h" * 32,)))
    return {"tls13": frames(*tls13), "tls12": frames(*tls12),
            "tls12-client-auth": frames(*client_auth12),
            "rsa-key-with-an-ecdsa-scheme": frames(("load", (["cert0", "cert1"],)),
                                               ("select", (1,)), *tls13[3:4]),
            "attacker-paths": frames(("load", (["/etc/shadow", "cert0/../x"],))),
            "attacker-anchor": frames(("read_anchor", ("/etc/shadow",)))}


SEEDS = {"messages": messages_seeds, "wire": wire_seeds, "record": record_seeds,
         "protect": protect_seeds, "engine12": engine12_seeds, "engine13": engine13_seeds,
         "proxy": proxy_seeds, "ipc": ipc_seeds,
         "connected12": connected12_seeds, "connected13": connected13_seeds,
         "keyservice": keyservice_seeds}


def main() -> None:
    assert set(SEEDS) == set(targets.TARGETS)
    for target, make in SEEDS.items():
        directory = HERE / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        for name, data in make().items():
            (directory / f"seed-{name}").write_bytes(data)
            targets.TARGETS[target](data)     # every seed runs clean
    print("seeds written under", HERE / "corpus")


if __name__ == "__main__":
    main()
