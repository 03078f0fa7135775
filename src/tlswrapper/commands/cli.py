"""The `tlswrapper` command line: the C tlswrapper's option syntax, checked up front.

Rule: a bad option or an unusable file is one `tlswrapper: fatal: ...` line and exit 100; any
other failure is one fatal line and exit 111; a Python traceback never reaches the user.
"""

from __future__ import annotations

import os
import stat

from tlswrapper import log
from tlswrapper.commands.optscan import (  # noqa: F401 (the errors: re-exported)
    OptionError, UsageError, check_account, parse_timeout, run_main, split_options)
from tlswrapper.exits import EXIT_FAILURE, EXIT_USAGE  # noqa: F401 (EXIT_USAGE: tests)
from tlswrapper.jail import DEFAULT_JAIL_DIR
from tlswrapper.net.certfiles import CertEntry, candidate_paths, fixpath
from tlswrapper.tls import suites
from tlswrapper.tls.config import ConfigError, ServerConfig
from tlswrapper.tls.frozen import Frozen, init

# tcpserver mode starts a new interpreter per connection: modules that only the type checker
# needs (typing) are not imported at run time, nor re, dataclasses (see tls/frozen.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Literal, NoReturn


USAGE = "tlswrapper [options] [ -d certdir ] [ -f certfile ] prog [args...]"

FLAGS = frozenset("qQvsSnN")
WITH_VALUE = frozenset("fdacemMtTuUpJj")

DEFAULT_TIMEOUT = 60
DEFAULT_HANDSHAKE_TIMEOUT = 30
USER_FIELDS = ("commonName", "emailAddress")


class Options(Frozen):
    __slots__ = ("verbosity", "certs", "anchor", "ciphers", "groups", "version_min", "version_max",
                 "server_preference", "timeout", "handshake_timeout", "user", "user_from_cert",
                 "proxy_protocol", "jail_dir", "jail_user", "delayed_encryption", "prog")
    verbosity: int
    certs: tuple[CertEntry, ...]
    anchor: str | None                      # -a, as given (open anchor_path)
    ciphers: tuple[str, ...]
    groups: tuple[str, ...]
    version_min: int
    version_max: int
    server_preference: bool
    timeout: int
    handshake_timeout: int
    user: str | None                        # -u account name
    user_from_cert: Literal["commonName", "emailAddress"] | None          # -U
    proxy_protocol: int | None              # -p: PROXY protocol version 1, 2, 0 (either)
    jail_dir: str
    jail_user: str | None                   # -j account name; None: random ids
    delayed_encryption: bool                # -n
    prog: tuple[str, ...]

    def __init__(self, verbosity: int = log.DEFAULT, certs: tuple[CertEntry, ...] = (),
                 anchor: str | None = None, ciphers: tuple[str, ...] = suites.DEFAULT_CIPHERS,
                 groups: tuple[str, ...] = suites.DEFAULT_GROUPS, version_min: int = suites.TLS12,
                 version_max: int = suites.TLS13, server_preference: bool = True,
                 timeout: int = DEFAULT_TIMEOUT, handshake_timeout: int = DEFAULT_HANDSHAKE_TIMEOUT,
                 user: str | None = None,
                 user_from_cert: Literal["commonName", "emailAddress"] | None = None,
                 proxy_protocol: int | None = None, jail_dir: str = DEFAULT_JAIL_DIR,
                 jail_user: str | None = None, delayed_encryption: bool = False,
                 prog: tuple[str, ...] = ()) -> None:
        init(self, "verbosity", verbosity)
        init(self, "certs", certs)
        init(self, "anchor", anchor)
        init(self, "ciphers", ciphers)
        init(self, "groups", groups)
        init(self, "version_min", version_min)
        init(self, "version_max", version_max)
        init(self, "server_preference", server_preference)
        init(self, "timeout", timeout)
        init(self, "handshake_timeout", handshake_timeout)
        init(self, "user", user)
        init(self, "user_from_cert", user_from_cert)
        init(self, "proxy_protocol", proxy_protocol)
        init(self, "jail_dir", jail_dir)
        init(self, "jail_user", jail_user)
        init(self, "delayed_encryption", delayed_encryption)
        init(self, "prog", prog)

    @property
    def anchor_path(self) -> str | None:
        """The -a file name to open, with the `/.` -> `/:` rule applied."""
        return fixpath(self.anchor) if self.anchor is not None else None

    def cert_candidates(self, sni: str | bytes | None) -> list[str]:
        """The PEM files to try for this SNI, in order (see certfiles.candidate_paths)."""
        return candidate_paths(self.certs, sni)

    def server_config(self, client_ca_names: Sequence[bytes] = ()) -> ServerConfig:
        """The engine's configuration. `client_ca_names`: DER subjects of the -a anchors, for
        the certificate_authorities the engine sends (parsed from the anchor file elsewhere)."""
        return ServerConfig(
            version_min=self.version_min, version_max=self.version_max,
            ciphers=self.ciphers, groups=self.groups,
            server_preference=self.server_preference,
            request_client_certificate=self.anchor is not None,
            client_ca_names=tuple(client_ca_names))


def _split(args: Sequence[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    return split_options(args, FLAGS, WITH_VALUE)


def _fixed_note(given: str, fixed: str) -> str:
    return "" if given == fixed else "; '/.' in a file name is read as '/:'"


def _check_file(kind: str, given: str, add_word: str) -> None:
    """A certfile or anchor file must exist, be a regular file and be readable by us. Never
    blocks: a FIFO (or a device) is refused by its type, and the file is opened O_NONBLOCK
    in case it is swapped for one in between."""
    path = fixpath(given)
    note = _fixed_note(given, path)
    try:
        st = os.stat(path)
    except OSError as e:
        reason = f"{log.oserror_text(e)}{note}"
        raise OptionError(f"unable to {add_word} {kind} '{path}' ({reason})") from None
    if not stat.S_ISREG(st.st_mode):
        # The C version's words (a directory included).
        raise OptionError(f"unable to add {kind} '{path}' (not a regular file)")
    try:
        # Opened for real: os.access would answer for the real uid, not the effective one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise OptionError(f"unable to open {kind} '{path}' ({log.oserror_text(e)}{note})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OptionError(f"unable to add {kind} '{path}' (not a regular file)")
        os.read(fd, 1)
    except OSError as e:
        raise OptionError(f"unable to read {kind} '{path}' ({log.oserror_text(e)}{note})") from None
    finally:
        os.close(fd)


def _check_dir(given: str) -> None:
    path = fixpath(given)   # the names built from it are fixed as a whole, so check that
    note = _fixed_note(given, path)
    try:
        st = os.stat(path)
    except OSError as e:
        reason = f"{log.oserror_text(e)}{note}"
        raise OptionError(f"unable to stat certdir '{path}' ({reason})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OptionError(f"unable to add certdir '{path}' (not a directory)")


def _choice(what: str, value: str, table: Sequence[str]) -> str:
    if value not in table:
        raise OptionError(f"unable to parse {what} from the string '{log.escape(value)}' "
                          f"(available: {', '.join(table)})")
    return value


def _version_name(code: int) -> str:
    return next(k for k, v in suites.VERSION_NAMES.items() if v == code)


def parse(args: Sequence[str]) -> Options:
    """Parse the arguments after the program name. Raises UsageError or OptionError."""
    opts, prog = _split(args)
    verbosity = log.DEFAULT
    for letter, _ in opts:
        if letter == "q":
            verbosity = log.QUIET
        elif letter == "Q":
            verbosity = log.FATAL
        elif letter == "v":
            verbosity = min(verbosity + 1, log.MAX_VERBOSITY)
    # Verbosity first, so that a later -q also silences an earlier option's error.
    log.setup(verbosity=verbosity)

    certs: list[CertEntry] = []
    anchor: str | None = None
    ciphers: list[str] | None = None     # None until the first -c replaces the default
    groups: list[str] | None = None
    kw: dict[str, object] = {}
    for letter, value in opts:
        if value is None:
            if letter in "sS":
                kw["server_preference"] = letter == "s"
            elif letter in "nN":
                kw["delayed_encryption"] = letter == "n"
            continue
        if letter == "f":
            _check_file("certfile", value, "stat")
            certs.append(("file", value))
        elif letter == "d":
            _check_dir(value)
            certs.append(("dir", value))
        elif letter == "a":
            if anchor is not None:
                raise OptionError("unable to add more than one anchor file")
            _check_file("anchor file", value, "add")
            anchor = value
        elif letter == "c":
            name = _choice("cipher", value, suites.CIPHER_NAMES)
            ciphers = ciphers if ciphers is not None else []
            if name not in ciphers:
                ciphers.append(name)
        elif letter == "e":
            name = _choice("ephemeral algorithm", value, tuple(suites.GROUP_NAMES))
            groups = groups if groups is not None else []
            if name not in groups:
                groups.append(name)
        elif letter in "mM":
            which = "min." if letter == "m" else "max."
            name = _choice(f"TLS {which} version", value, tuple(suites.VERSION_NAMES))
            kw["version_min" if letter == "m" else "version_max"] = suites.VERSION_NAMES[name]
        elif letter == "t":
            kw["timeout"] = parse_timeout("timeout", value)
        elif letter == "T":
            kw["handshake_timeout"] = parse_timeout("handshake timeout", value)
        elif letter == "u":
            kw["user"] = check_account("u", value)
        elif letter == "U":
            kw["user_from_cert"] = _choice("ASN.1 object", value, USER_FIELDS)
        elif letter == "p":
            # 1: text, 2: binary, 0: either (the first byte tells; see the manual page)
            kw["proxy_protocol"] = int(_choice("incoming proxy-protocol version", value,
                                               ("0", "1", "2")))
        elif letter == "J":
            if not value:
                raise OptionError("jaildir must not be empty")
            kw["jail_dir"] = value
        elif letter == "j":
            kw["jail_user"] = check_account("j", value)

    if not certs:
        raise UsageError("no -f certfile or -d certdir given")
    if not prog:
        raise UsageError("no prog given")
    if kw.get("user_from_cert") and anchor is None:
        raise OptionError("option -U must be used with -a")
    if kw.get("user_from_cert") and kw.get("delayed_encryption"):
        raise OptionError("option -U is not compatible with -n")

    options = Options(
        verbosity=verbosity, certs=tuple(certs), anchor=anchor,
        ciphers=tuple(ciphers) if ciphers is not None else suites.DEFAULT_CIPHERS,
        groups=tuple(groups) if groups is not None else suites.DEFAULT_GROUPS,
        prog=tuple(prog), **kw)  # type: ignore[arg-type]
    _check_algorithms(options)
    return options


def _check_algorithms(options: Options) -> None:
    """Refuse a configuration that could never complete a handshake."""
    lo, hi = options.version_min, options.version_max
    if lo > hi:
        raise OptionError(f"TLS min. version {_version_name(lo)} is above TLS max. version "
                          f"{_version_name(hi)}")
    try:
        config = options.server_config()
    except ConfigError as e:
        raise OptionError(str(e)) from None
    versions = [v for v in sorted(suites.VERSION_LABELS) if lo <= v <= hi]
    if not any(config.suite_codes(v) for v in versions):
        raise OptionError(f"no enabled cipher works with {_version_name(lo)}.."
                          f"{_version_name(hi)}")
    if hi < suites.TLS13 and all(suites.GROUP_NAMES[g] in suites.TLS13_ONLY_GROUPS
                                 for g in options.groups):
        raise OptionError("no enabled ephemeral algorithm works below tls13 "
                          "(x25519mlkem768 is TLS 1.3 only)")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: parse, then hand over to the relay. `argv` excludes the program name."""
    run_main("tlswrapper", USAGE, parse, _run_relay, argv)  # type: ignore[arg-type]


def _run_relay(options: Options) -> int:
    try:
        from tlswrapper.net.start import run
    except Exception as e:   # noqa: BLE001 -- any import failure is ours, not the user's
        log.fatal(f"unable to load the relay ({type(e).__name__}: {e})")
        return EXIT_FAILURE
    return run(options)


if __name__ == "__main__":
    main()
