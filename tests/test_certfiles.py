"""Tests of certfiles: SNI validation, certdir joining and the `/.` -> `/:` rule."""

from __future__ import annotations

import pytest

from tlswrapper.net.certfiles import candidate_paths, fixpath, normalize_hostname

D = ("dir", "/etc/tlswrapper/ecdsa.d")
F = ("file", "/etc/tlswrapper/rsa.pem")


@pytest.mark.parametrize("sni,expected", [
    ("example.com", "example.com"),
    (b"example.com", "example.com"),
    ("WWW.Example.COM", "www.example.com"),
    ("example.com.", "example.com"),          # absolute form: one trailing dot dropped
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("localhost", "localhost"),
    ("a" * 63 + ".com", "a" * 63 + ".com"),
    ("1.2.3.4", "1.2.3.4"),                   # looks like an IP, harmless as a file name
])
def test_valid_hostnames(sni, expected):
    assert normalize_hostname(sni) == expected


@pytest.mark.parametrize("sni", [
    None, "", b"", ".", "..", "../etc/passwd", "..%2fetc", ".hidden", "a/b", "a\\b",
    "example.com..", "a..b", ".example.com", "-a.com", "a-.com", "a_b.com", "a b",
    "a\x00b", "a\nb", "bücher.de", b"b\xc3\xbccher.de", b"\xff",
    "a" * 64 + ".com",                        # label too long
    ".".join(["a" * 63] * 4),                 # 255 characters: too long
])
def test_invalid_hostnames(sni):
    assert normalize_hostname(sni) is None


def test_longest_valid_name():
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert normalize_hostname(name) == name
    assert normalize_hostname(name + ".") == name
    assert normalize_hostname(name + "d") is None


def test_order_and_dir_join():
    certs = [D, ("dir", "/etc/tlswrapper/rsa.d/"), F]
    assert candidate_paths(certs, "Example.COM") == [
        "/etc/tlswrapper/ecdsa.d/example.com",
        "/etc/tlswrapper/rsa.d/example.com",
        "/etc/tlswrapper/rsa.pem",
    ]


@pytest.mark.parametrize("sni", [None, "", "../etc/passwd", ".hidden", "a/b", "x" * 300])
def test_dir_skipped_without_valid_sni(sni):
    assert candidate_paths([D, F], sni) == ["/etc/tlswrapper/rsa.pem"]
    assert candidate_paths([D], sni) == []


def test_fixpath_rule():
    assert fixpath("/etc/ssl/.private/key.pem") == "/etc/ssl/:private/key.pem"
    assert fixpath("/a/../b") == "/a/:./b"
    assert fixpath("/a/./b/.c") == "/a/:/b/:c"
    assert fixpath("./rel.pem") == "./rel.pem"       # no slash before the dot: unchanged
    assert fixpath("dir/file.pem") == "dir/file.pem"  # dots inside names are fine


def test_fixpath_on_f_and_d_paths():
    certs = [("file", "/etc/.tls/a.pem"), ("dir", "/srv/.certs")]
    assert candidate_paths(certs, "host.example") == [
        "/etc/:tls/a.pem", "/srv/:certs/host.example"]


def test_no_candidate_can_escape_certdir():
    # Whatever the SNI, a -d candidate stays a direct child of the (fixed) certdir.
    for sni in ["..", "../x", "a/../../b", "./a", "a/./b", "%2e%2e", "a\x00b", "/abs"]:
        for path in candidate_paths([("dir", "/certs")], sni):
            assert path.startswith("/certs/") and "/" not in path[len("/certs/"):]
            assert "/." not in path


def test_unknown_kind_rejected():
    with pytest.raises(ValueError):
        candidate_paths([("url", "x")], "a")  # type: ignore[list-item]
