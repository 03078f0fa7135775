"""Command-line scanning and the entry point shared by tlswrapper and its companions, as the
C versions read theirs. Rule: only syntax, exit codes and the account check every command
makes live here; what the options mean lives in each command's own module."""

from __future__ import annotations

import os
import pwd
import sys

from tlswrapper import log
from tlswrapper.exits import EXIT_FAILURE, EXIT_USAGE

# Only for the type checker (typing costs each tcpserver-mode connection several ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Container, Sequence
    from typing import NoReturn



class UsageError(Exception):
    """The command line cannot be read: one line with the reason and the usage, exit 100."""


class OptionError(Exception):
    """A readable command line with a bad value or file: one fatal line, exit 100."""


MAX_TIMEOUT = 86400          # the C versions refuse more than a day


def parse_timeout(what: str, value: str) -> int:
    """A timeout in seconds for -t/-T (tlswrapper and its companions alike): [+-]?[0-9]+ in
    ASCII (str.isdigit also takes other scripts' digits and superscripts), 1..MAX_TIMEOUT."""
    digits = value[1:] if value[:1] in ("+", "-") else value
    if not (digits.isascii() and digits.isdigit()):
        raise OptionError(f"unable to parse {what} from the string '{log.escape(value)}' "
                          f"(invalid argument)")
    n = int(value)
    if n <= 0:
        raise OptionError(f"{what} must be a number > 0, not '{log.escape(value)}'")
    if n > MAX_TIMEOUT:
        raise OptionError(f"{what} must be a number <= {MAX_TIMEOUT}, not '{log.escape(value)}'")
    return n


def check_account(option: str, name: str) -> str:
    """An account for -u or -j (tlswrapper and its companions alike): it must exist and not
    have uid or gid 0 (prog or the jail as root would undo the separation)."""
    try:
        pw = pwd.getpwnam(name)
    except (KeyError, ValueError, UnicodeError):
        raise OptionError(f"unable to find user '{log.escape(name)}' for -{option} "
                          f"(no such account)") from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise OptionError(f"user '{name}' for -{option} has uid or gid 0, refused")
    return name


def split_options(args: Sequence[str], flags: Container[str], with_value: Container[str]
                  ) -> tuple[list[tuple[str, str | None]], list[str]]:
    """getopt-style scan: flags combine (-vv, -qv), a value is attached (-fcert.pem) or the
    next argument; `--` ends options; so does the first argument not starting with '-'.
    Returns the (letter, value) pairs in order and the remaining arguments."""
    opts: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            if arg == "-":
                raise UsageError("'-' is not an option")
            break
        j = 1
        while j < len(arg):
            letter = arg[j]
            if letter in flags:
                opts.append((letter, None))
                j += 1
            elif letter in with_value:
                if j + 1 < len(arg):
                    value = arg[j + 1:]
                else:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"option -{letter} needs a value")
                    value = args[i]
                opts.append((letter, value))
                break
            else:
                raise UsageError(f"unknown option -{log.escape(letter)}")
        i += 1
    return opts, list(args[i:])


def run_main(name: str, usage: str, parse: Callable[[list[str]], object],
             run: Callable[[object], int], argv: Sequence[str] | None) -> NoReturn:
    """A command's entry point: parse, run, map every outcome to an exit code; never a
    traceback. `argv` excludes the program name; None means sys.argv (the console script)."""
    code = EXIT_FAILURE
    try:
        log.setup(name=name, verbosity=log.DEFAULT)
        log.avoid_client_socket()     # inetd: fd 2 is the client's socket
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            options = parse(args)
        except UsageError as e:
            # Printed even with -q, as the C version does with its usage line.
            log.setup(verbosity=max(log.verbosity(), log.FATAL))
            log.fatal(f"{e}; usage: {usage}")
            code = EXIT_USAGE
        except OptionError as e:
            log.fatal(str(e))
            code = EXIT_USAGE
        else:
            result = run(options)
            code = result if isinstance(result, int) else EXIT_FAILURE
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else EXIT_FAILURE
    except KeyboardInterrupt:
        log.fatal("interrupted")
        code = EXIT_FAILURE
    except BaseException as e:  # noqa: BLE001 -- the last line of defence against tracebacks
        try:
            log.fatal(f"internal error ({type(e).__name__}: {e})")
        except BaseException:   # noqa: BLE001 -- nothing is left to report it to
            pass
        code = EXIT_FAILURE
    if argv is None:
        # The console script, once per connection: skip the interpreter's teardown (module
        # clean-up costs milliseconds and does nothing for a process that ends here).
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(code)
    sys.exit(code)
