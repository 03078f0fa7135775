"""Command-line scanning shared by tlswrapper and its companions, as the C versions read
theirs. Rule: only the syntax lives here (which letters take values); meanings live in each
command's own module."""

from __future__ import annotations

from collections.abc import Container, Sequence

from . import log


class UsageError(Exception):
    """The command line cannot be read: one line with the reason and the usage, exit 100."""


class OptionError(Exception):
    """A readable command line with a bad value or file: one fatal line, exit 100."""


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
