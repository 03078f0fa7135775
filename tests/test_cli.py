"""Tests of the command line: syntax, defaults, every error case (one line, exit 100), and the
top-level guard that turns any failure into one fatal line and exit 111.

What Debian's C tlswrapper (20230101) printed for the same cases, observed by hand with
`/usr/bin/tlswrapper ARGS </dev/null` (ec.pem an existing PEM file, `true` as prog):

| args                                   | C exit | C stderr (usage is the line `tlswrapper [options] [ -d certdir ] [ -f certfile ] prog`)
|----------------------------------------|--------|------------------------------------------------------------------------
| (none), -x true, -f, true, -f ec.pem,  | 100    | usage only (no reason given)
|   -h, -V, -f ec.pem -c, -f ec.pem -    |        |
| -- -f ec.pem true                      | 100    | usage (`--` ends options, -f becomes prog... and no certfile)
| -f /nonexist true                      | 100    | fatal: unable to stat certfile '/nonexist' (file does not exist)
| -d /nonexist true                      | 100    | fatal: unable to stat certdir '/nonexist' (file does not exist)
| -d ec.pem true                         | 100    | fatal: unable to add certdir 'ec.pem' (not a directory)
| -a /nonexist -f ec.pem true            | 100    | fatal: unable to add anchor file '/nonexist' (file does not exist)
| -a x -a x ...                          | 100    | fatal: unable to add more than one anchor file
| -c FOO                                 | 100    | fatal: unable to parse cipher from the string 'FOO' + one `fatal: available: NAME` line per cipher
| -e FOO, -e x25519mlkem768              | 100    | fatal: unable to parse ephemeral algorithm from the string 'FOO' + `available:` lines
| -m tls14 / -M tls13                    | 100    | fatal: unable to parse TLS min. (max.) version from the string '...' + `available:` tls10..tls12
| -m tls12 -M tls10                      | 111    | nothing at -Q (fails at the handshake)
| -t 0, -T 0, -T -1                      | 100    | fatal: timeout must be a number > 0, not '0'
| -t 99999999999999                      | 100    | fatal: timeout must be a number < 86400, not '...' (86400 itself is accepted)
| -t abc, -T abc                         | 100    | fatal: unable to parse timeout from the string 'abc' (invalid argument)
| -t 1x                                  | (ok)   | accepted (as 1); -t +5 and -t 010 accepted too
| -p 2                                   | 100    | fatal: unable to parse incoming proxy-protocol version from the string '2' + `available: 1` (ours: 0, 1, 2 accepted)
| -U foo                                 | 100    | fatal: unable to parse ASN.1 object from the string 'foo' + `available:` lines
| -U commonName (no -a)                  | 100    | fatal: option -U must be used with -a
| -a x -U commonName -n                  | 100    | fatal: option -U is not compatible with -u   (sic: the C text says -u)
| -u nosuchuser, -u root                 | 111    | nothing at -Q; checked only when prog is started after a handshake
| -j nosuchuser                          | 111    | fatal: unable to create jail
| -j root                                | 111    | nothing at -Q
| -J /nonexist                           | 111    | fatal: unable to create jail (file does not exist)
| -q -f /nonexist true                   | 100    | nothing (-q before the bad option silences it; after it, not)
| -q -x                                  | 100    | usage (printed even with -q)
| not root, no -j                        | 111    | fatal: unable to create jail (permission denied)  (setgid fails)
| -f /tmp/./ec.pem                       | (ok)   | accepted: the C version stats the path as given, the `/:` rule hits at open time
| exec of a missing prog                 | 111    | fatal: unable to run /nonexistent/prog (file does not exist)

Where we differ, on purpose: every configuration error is found before anything starts, so
min above max, unknown or root -u/-j accounts are exit 100 with a line (C: 111 at run time);
the reason is given with the usage, on one line; the `available:` names are listed on the same
line; -t 1x is refused; a certfile or anchor path is checked after the `/.` -> `/:` rule (what
will really be opened) and must be readable; the -U/-n message names -n; -q silences option
errors wherever it appears on the line. -J is checked when jailing (111), as in the C version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tlswrapper import log
from tlswrapper.commands.cli import (EXIT_USAGE, USAGE, OptionError, Options, UsageError, main, parse)
from tlswrapper.tls import suites
from tlswrapper.tls.config import ServerConfig


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "ec.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "rsa.pem").write_text("x")
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "certs").mkdir()
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    log.setup(verbosity=log.DEFAULT)    # parse() sets the verbosity; reset for other tests


# -- syntax and defaults ----------------------------------------------------------------------

def test_defaults(files: Path) -> None:
    o = parse(["-f", "ec.pem", "prog"])
    assert o == Options(certs=(("file", "ec.pem"),), prog=("prog",))
    assert o.verbosity == log.FATAL
    assert o.ciphers == ("CHACHA20_POLY1305_SHA256", "AES_256_GCM_SHA384", "AES_128_GCM_SHA256")
    assert o.groups == ("x25519mlkem768", "x25519", "secp256r1")
    assert (o.version_min, o.version_max) == (suites.TLS12, suites.TLS13)
    assert o.server_preference is True and o.delayed_encryption is False
    assert (o.timeout, o.handshake_timeout) == (60, 30)
    assert o.jail_dir == "/var/lib/tlswrapper/empty" and o.jail_user is None
    assert o.user is None and o.user_from_cert is None and o.proxy_protocol is None
    assert o.anchor is None


def test_frozen(files: Path) -> None:
    o = parse(["-f", "ec.pem", "prog"])
    with pytest.raises(AttributeError):
        o.timeout = 5  # type: ignore[misc]


@pytest.mark.parametrize("args,verbosity", [
    ([], 1), (["-q"], 0), (["-Q"], 1), (["-v"], 2), (["-vv"], 3), (["-vvv"], 4),
    (["-v", "-v"], 3), (["-vvvvvv"], 4), (["-qv"], 1), (["-vq"], 0), (["-vvQ"], 1),
])
def test_verbosity(files: Path, args: list[str], verbosity: int) -> None:
    assert parse(args + ["-f", "ec.pem", "prog"]).verbosity == verbosity


def test_values_attached_or_separate(files: Path) -> None:
    a = parse(["-fec.pem", "-dcerts", "-t5", "-T", "7", "prog"])
    b = parse(["-f", "ec.pem", "-d", "certs", "-t", "5", "-T7", "prog"])
    assert a == b
    assert a.certs == (("file", "ec.pem"), ("dir", "certs")) and (a.timeout, a.handshake_timeout) == (5, 7)


def test_flags_combine_with_a_value_last(files: Path) -> None:
    o = parse(["-vSnf", "ec.pem", "prog"])
    assert o.verbosity == 2 and not o.server_preference and o.delayed_encryption
    assert o.certs == (("file", "ec.pem"),)
    # a value eats the rest of the argument, letters included
    assert parse(["-vfec.pem", "prog"]).certs == (("file", "ec.pem"),)


def test_prog_and_args_end_options(files: Path) -> None:
    o = parse(["-f", "ec.pem", "prog", "-v", "--", "x"])
    assert o.prog == ("prog", "-v", "--", "x") and o.verbosity == 1
    assert parse(["-f", "ec.pem", "--", "-prog", "-a"]).prog == ("-prog", "-a")


def test_certs_keep_order(files: Path) -> None:
    o = parse(["-d", "certs", "-f", "ec.pem", "-d", "certs/", "-f", "rsa.pem", "p"])
    assert o.certs == (("dir", "certs"), ("file", "ec.pem"), ("dir", "certs/"),
                       ("file", "rsa.pem"))
    assert o.cert_candidates("Host.Example") == ["certs/host.example", "ec.pem",
                                                 "certs/host.example", "rsa.pem"]
    assert o.cert_candidates(None) == ["ec.pem", "rsa.pem"]


def test_first_c_and_e_replace_defaults(files: Path) -> None:
    o = parse(["-f", "ec.pem", "-c", "AES_128_GCM_SHA256", "-c", "AES_256_CBC_SHA",
               "-c", "AES_128_GCM_SHA256", "-e", "secp384r1", "-e", "x25519", "p"])
    assert o.ciphers == ("AES_128_GCM_SHA256", "AES_256_CBC_SHA")   # duplicates dropped
    assert o.groups == ("secp384r1", "x25519")


def test_all_other_options(files: Path) -> None:
    o = parse(["-f", "ec.pem", "-a", "ca.pem", "-U", "emailAddress", "-u", "nobody",
               "-p", "1", "-J", "/j", "-j", "nobody", "-m", "tls10", "-M", "tls12", "-S",
               "-n", "-N", "-s", "p"])
    assert o.anchor == "ca.pem" and o.user_from_cert == "emailAddress" and o.user == "nobody"
    assert o.proxy_protocol == 1 and o.jail_dir == "/j" and o.jail_user == "nobody"
    assert (o.version_min, o.version_max) == (suites.TLS10, suites.TLS12)
    assert o.server_preference and not o.delayed_encryption


def test_proxy_protocol_versions_0_1_2(files: Path) -> None:
    assert parse(["-f", "ec.pem", "p"]).proxy_protocol is None
    for version in (0, 1, 2):
        assert parse(["-f", "ec.pem", f"-p{version}", "p"]).proxy_protocol == version


def test_server_config(files: Path) -> None:
    o = parse(["-f", "ec.pem", "-a", "ca.pem", "-S", "-M", "tls12", "-e", "x25519", "p"])
    cfg = o.server_config(client_ca_names=(b"\x30\x00",))
    assert isinstance(cfg, ServerConfig)
    assert cfg == ServerConfig(version_min=suites.TLS12, version_max=suites.TLS12,
                               ciphers=suites.DEFAULT_CIPHERS, groups=("x25519",),
                               server_preference=False, request_client_certificate=True,
                               client_ca_names=(b"\x30\x00",))
    assert parse(["-f", "ec.pem", "p"]).server_config() == ServerConfig()


def test_anchor_path_fixed(files: Path) -> None:
    (files / ":hidden").mkdir()
    (files / ":hidden" / "ca.pem").write_text("x")
    o = parse(["-f", "ec.pem", "-a", f"{files}/.hidden/ca.pem", "p"])
    assert o.anchor_path == f"{files}/:hidden/ca.pem"


# -- errors -----------------------------------------------------------------------------------

USAGE_CASES = [
    ([], "no -f certfile or -d certdir given"),
    (["-x", "true"], "unknown option -x"),
    (["-f"], "option -f needs a value"),
    (["true"], "no -f certfile or -d certdir given"),
    (["-f", "ec.pem"], "no prog given"),
    (["-f", "ec.pem", "--"], "no prog given"),
    (["--", "-f", "ec.pem", "true"], "no -f certfile or -d certdir given"),
    (["-f", "ec.pem", "-"], "'-' is not an option"),
    (["-f", "ec.pem", "-c"], "option -c needs a value"),
    (["-h"], "unknown option -h"),
]

OPTION_CASES = [
    (["-f", "/nonexist", "true"], "unable to stat certfile '/nonexist' (file does not exist)"),
    (["-f", "certs", "true"], "unable to add certfile 'certs' (not a regular file)"),
    (["-d", "/nonexist", "true"], "unable to stat certdir '/nonexist' (file does not exist)"),
    (["-d", "ec.pem", "true"], "unable to add certdir 'ec.pem' (not a directory)"),
    (["-a", "/nonexist", "-f", "ec.pem", "true"],
     "unable to add anchor file '/nonexist' (file does not exist)"),
    (["-f", "ec.pem", "-a", "ca.pem", "-a", "ca.pem", "true"],
     "unable to add more than one anchor file"),
    (["-f", "ec.pem", "-c", "FOO", "true"],
     "unable to parse cipher from the string 'FOO' (available: CHACHA20_POLY1305_SHA256, "
     "AES_256_GCM_SHA384, AES_128_GCM_SHA256, AES_256_CBC_SHA384, AES_128_CBC_SHA256, "
     "AES_256_CBC_SHA, AES_128_CBC_SHA)"),
    (["-f", "ec.pem", "-c", "chacha20_poly1305_sha256", "true"],
     "unable to parse cipher from the string 'chacha20_poly1305_sha256'"),
    (["-f", "ec.pem", "-e", "FOO", "true"],
     "unable to parse ephemeral algorithm from the string 'FOO' (available: x25519mlkem768, "
     "x25519, secp256r1, secp384r1, secp521r1)"),
    (["-f", "ec.pem", "-m", "tls14", "true"],
     "unable to parse TLS min. version from the string 'tls14' (available: tls10, tls11, "
     "tls12, tls13)"),
    (["-f", "ec.pem", "-M", "TLS12", "true"],
     "unable to parse TLS max. version from the string 'TLS12'"),
    (["-f", "ec.pem", "-m", "tls13", "-M", "tls12", "true"],
     "TLS min. version tls13 is above TLS max. version tls12"),
    (["-f", "ec.pem", "-M", "tls11", "true"],                    # min stays tls12
     "TLS min. version tls12 is above TLS max. version tls11"),
    (["-f", "ec.pem", "-m", "tls10", "-M", "tls11", "true"],     # default ciphers are AEAD
     "no enabled cipher works with tls10..tls11"),
    (["-f", "ec.pem", "-m", "tls13", "-c", "AES_128_CBC_SHA", "true"],
     "no enabled cipher works with tls13..tls13"),
    (["-f", "ec.pem", "-M", "tls12", "-e", "x25519mlkem768", "true"],
     "no enabled ephemeral algorithm works below tls13"),
    (["-f", "ec.pem", "-t", "0", "true"], "timeout must be a number > 0, not '0'"),
    (["-f", "ec.pem", "-T", "-1", "true"], "handshake timeout must be a number > 0, not '-1'"),
    (["-f", "ec.pem", "-t", "86401", "true"], "timeout must be a number <= 86400, not '86401'"),
    (["-f", "ec.pem", "-t", "abc", "true"],
     "unable to parse timeout from the string 'abc' (invalid argument)"),
    (["-f", "ec.pem", "-t", "1x", "true"],
     "unable to parse timeout from the string '1x' (invalid argument)"),
    (["-f", "ec.pem", "-T", "", "true"],
     "unable to parse handshake timeout from the string '' (invalid argument)"),
    (["-f", "ec.pem", "-p", "3", "true"],
     "unable to parse incoming proxy-protocol version from the string '3' (available: 0, 1, 2)"),
    (["-f", "ec.pem", "-U", "foo", "true"],
     "unable to parse ASN.1 object from the string 'foo' (available: commonName, emailAddress)"),
    (["-f", "ec.pem", "-U", "commonName", "true"], "option -U must be used with -a"),
    (["-f", "ec.pem", "-a", "ca.pem", "-U", "commonName", "-n", "true"],
     "option -U is not compatible with -n"),
    (["-f", "ec.pem", "-u", "nosuchuser", "true"],
     "unable to find user 'nosuchuser' for -u (no such account)"),
    (["-f", "ec.pem", "-j", "nosuchuser", "true"],
     "unable to find user 'nosuchuser' for -j (no such account)"),
    (["-f", "ec.pem", "-u", "root", "true"], "user 'root' for -u has uid or gid 0, refused"),
    (["-f", "ec.pem", "-j", "root", "true"], "user 'root' for -j has uid or gid 0, refused"),
    (["-f", "ec.pem", "-J", "", "true"], "jaildir must not be empty"),
]


@pytest.mark.parametrize("args,reason", USAGE_CASES)
def test_usage_errors(files: Path, args: list[str], reason: str,
                      capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse(args)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == EXIT_USAGE
    err = capfd.readouterr().err
    assert err == f"tlswrapper: fatal: {reason}; usage: {USAGE}\n"


@pytest.mark.parametrize("args,message", OPTION_CASES)
def test_option_errors(files: Path, args: list[str], message: str,
                       capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OptionError):
        parse(args)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == EXIT_USAGE
    err = capfd.readouterr().err
    assert err.startswith(f"tlswrapper: fatal: {message}") and err.count("\n") == 1, err


def test_fixpath_applied_to_f(files: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # ec.pem exists, but `/.` in the path makes it `/:`: what would really be opened.
    with pytest.raises(SystemExit) as exc:
        main(["-f", f"{files}/./ec.pem", "true"])
    assert exc.value.code == EXIT_USAGE
    assert f"unable to stat certfile '{files}/:/ec.pem' (file does not exist; '/.' in a file " \
           "name is read as '/:')" in capfd.readouterr().err


def test_quiet_silences_option_errors_not_usage(files: Path,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    for args in (["-q", "-f", "/nonexist", "true"], ["-f", "/nonexist", "-q", "true"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == EXIT_USAGE and capfd.readouterr().err == ""
    with pytest.raises(SystemExit) as exc:
        main(["-q", "-x"])
    assert exc.value.code == EXIT_USAGE and "usage:" in capfd.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_unreadable_files(files: Path) -> None:
    (files / "secret.pem").write_text("x")
    os.chmod(files / "secret.pem", 0)
    os.chmod(files, 0o755)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = []
        try:
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            for args in (["-f", "secret.pem", "p"], ["-f", "ec.pem", "-a", "secret.pem", "p"]):
                try:
                    parse(args)
                    out.append("parsed")
                except OptionError as e:
                    out.append(str(e))
        except BaseException as e:       # report, never unwind into pytest in the child
            out.append(repr(e))
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert json.loads(data) == ["unable to open certfile 'secret.pem' (permission denied)",
                                "unable to open anchor file 'secret.pem' (permission denied)"]


# -- main: hand-over and the guard against tracebacks ------------------------------------------

def _fake_relay(monkeypatch: pytest.MonkeyPatch, run) -> None:
    mod = types.ModuleType("tlswrapper.net.start")
    mod.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tlswrapper.net.start", mod)


def test_main_hands_options_to_relay(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    _fake_relay(monkeypatch, lambda o: seen.append(o) or 3)
    with pytest.raises(SystemExit) as exc:
        main(["-v", "-f", "ec.pem", "prog", "a"])
    assert exc.value.code == 3
    assert seen[0].prog == ("prog", "a") and seen[0].verbosity == 2


def test_main_relay_exception_is_one_fatal_line(files: Path, monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    def boom(options):
        raise RuntimeError("something broke")
    _fake_relay(monkeypatch, boom)
    with pytest.raises(SystemExit) as exc:
        main(["-f", "ec.pem", "prog"])
    assert exc.value.code == 111
    assert capfd.readouterr().err == \
        "tlswrapper: fatal: internal error (RuntimeError: something broke)\n"


def test_main_relay_missing(files: Path, monkeypatch: pytest.MonkeyPatch,
                            capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tlswrapper.net.start", None)   # makes the import fail
    with pytest.raises(SystemExit) as exc:
        main(["-f", "ec.pem", "prog"])
    assert exc.value.code == 111
    err = capfd.readouterr().err
    assert err.startswith("tlswrapper: fatal: unable to load the relay (") and err.count("\n") == 1


def test_main_keyboard_interrupt(files: Path, monkeypatch: pytest.MonkeyPatch,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    def interrupted(options):
        raise KeyboardInterrupt
    _fake_relay(monkeypatch, interrupted)
    with pytest.raises(SystemExit) as exc:
        main(["-f", "ec.pem", "prog"])
    assert exc.value.code == 111 and "Traceback" not in capfd.readouterr().err


def test_console_script_no_traceback(files: Path) -> None:
    """As a real process: a usage error, then a bad file, give one line and exit 100."""
    for args in (["-x"], ["-f", "/nonexist", "true"]):
        res = subprocess.run([sys.executable, "-m", "tlswrapper.commands.cli", *args],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 100 and res.stdout == ""
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("tlswrapper: fatal: ")


# -- against Debian's C tlswrapper -------------------------------------------------------------

C_TLSWRAPPER = "/usr/bin/tlswrapper"
SAME_EXIT = [args for args, _ in USAGE_CASES if args not in (["-f", "ec.pem", "--"],)] + [
    args for args, msg in OPTION_CASES
    if not any(s in msg for s in ("above", "no enabled", "1x", "for -u", "for -j", "86401",
                                  "-T", "jaildir", "x25519mlkem768",
                                  "TLS12'", "tls14", "0, not '0'"))
]


@pytest.mark.skipif(not os.access(C_TLSWRAPPER, os.X_OK), reason="Debian's tlswrapper not installed")
@pytest.mark.parametrize("args", SAME_EXIT)
def test_same_exit_code_as_c_version(files: Path, args: list[str]) -> None:
    c = subprocess.run([C_TLSWRAPPER, *args], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30)
    assert c.returncode == EXIT_USAGE, (args, c.stderr)
    with pytest.raises((UsageError, OptionError)):
        parse(args)


# -- the logger (log.py) -----------------------------------------------------------------------

@pytest.fixture
def logger():
    yield log
    log.setup(name="tlswrapper", verbosity=log.DEFAULT)
    log.set_prefix(None)


@pytest.mark.parametrize("verbosity,labels", [
    (0, []), (1, ["fatal"]), (2, ["fatal", "warning", "error", "info"]),
    (3, ["fatal", "warning", "error", "info", "debug"]),
    (4, ["fatal", "warning", "error", "info", "debug", "tracing"]),
])
def test_log_levels(logger, capfd, verbosity: int, labels: list[str]) -> None:
    log.setup(verbosity=verbosity)
    for name in ("fatal", "warning", "error", "info", "debug", "tracing"):
        getattr(log, name)(f"{name} line")
    assert capfd.readouterr().err == "".join(f"tlswrapper: {n}: {n} line\n" for n in labels)


def test_log_prefix_and_name(logger, capfd) -> None:
    log.setup(name="tlswrapper-tcp", verbosity=log.INFO)
    log.set_prefix(log.client_prefix("127.0.0.1", 54321))
    log.info("SSL connection: TLSv1.3")
    log.set_prefix(log.client_prefix("::1", "443"))
    log.info("x")
    log.set_prefix(None)
    log.fatal("y")
    assert capfd.readouterr().err == ("tlswrapper-tcp: info: 127.0.0.1:54321: SSL connection: TLSv1.3\n"
                                      "tlswrapper-tcp: info: [::1]:443: x\n"
                                      "tlswrapper-tcp: fatal: y\n")
    assert log.client_prefix(None) is None and log.client_prefix("10.0.0.1") == "10.0.0.1"


def test_log_cannot_be_forged(logger, capfd) -> None:
    log.fatal("sni='evil\ntlswrapper: info: forged\x1b[2J\\'")
    err = capfd.readouterr().err
    assert err.count("\n") == 1
    assert err == "tlswrapper: fatal: sni='evil\\x0atlswrapper: info: forged\\x1b[2J\\x5c'\n"


def test_log_long_line_cut(logger, capfd) -> None:
    log.fatal("x" * 10000)
    err = capfd.readouterr().err
    assert len(err) == log.MAX_LINE + 1 and err.endswith("...\n")


def test_log_closed_stderr_is_silent(logger) -> None:
    saved = os.dup(2)
    try:
        os.close(2)
        log.fatal("nowhere to go")            # must not raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def test_oserror_text() -> None:
    assert log.oserror_text(FileNotFoundError(2, "x")) == "file does not exist"
    assert log.oserror_text(PermissionError(13, "x")) == "permission denied"
    assert log.oserror_text(ValueError("bad")) == "bad"
