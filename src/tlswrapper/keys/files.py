"""The files the key process may open: derived from its own configuration, never from a request.

Rule: a name the network process asks for is opened only if the key process derives the very
same name from the -f/-d options it was started with (ARCHITECTURE MUST 6): a -f file exactly,
or a -d directory joined with a host name validated here again; the anchor file (-a) is read
because it is configured, and no request names it.

The key process is forked from the process that parsed the command line, so it holds the same
options; a network process taken over by a client can send any bytes on the pipe, and these
checks are what keeps it from making a privileged process read `/etc/shadow` or another site's
key.
"""

from __future__ import annotations

import os

from tlswrapper.net import certfiles

# typing only for the type checker (each tcpserver-mode key process imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# Longest name accepted in a load request: PATH_MAX on Linux.
MAX_NAME = 4096


class NameRefused(Exception):
    """A load request named a file the configuration does not lead to."""


class KeyFiles:
    """What the key process was configured with: the -f/-d entries (as given; fixpath is
    applied when names are derived) and the -a anchor file's name (fixed), or None."""

    __slots__ = ("certs", "anchor", "_files")

    def __init__(self, certs: Iterable[tuple[str, str]] = (), anchor: str | None = None) -> None:
        self.certs = tuple((str(kind), str(path)) for kind, path in certs)
        for kind, _ in self.certs:
            if kind not in ("file", "dir"):
                raise ValueError(f"unknown certificate entry kind {kind!r}")
        self.anchor = certfiles.fixpath(anchor) if anchor is not None else None
        self._files = frozenset(certfiles.fixpath(p) for k, p in self.certs if k == "file")

    @classmethod
    def from_options(cls, options) -> KeyFiles:
        return cls(options.certs, options.anchor)

    def max_names(self) -> int:
        """A load request names at most one file per -f/-d entry."""
        return len(self.certs)

    def _from_certdir(self, name: str) -> bool:
        """Whether `name` is a -d directory joined with a valid host name, as
        certfiles.candidate_paths builds it."""
        for kind, path in self.certs:
            if kind != "dir":
                continue
            # candidate_paths: fixpath(os.path.join(dir, host)). The host is the part after
            # the last slash (a valid host name has none); it must be a host name in the form
            # the network side makes (lower case, no trailing dot), and joining it again must
            # give exactly the name asked for.
            host = name.rsplit("/", 1)[-1]
            if host and certfiles.normalize_hostname(host) == host \
                    and certfiles.fixpath(os.path.join(path, host)) == name:
                return True
        return False

    def check_names(self, names: Sequence[str]) -> None:
        """Raise NameRefused unless every name is one the configuration leads to, and there
        are no more of them than -f/-d entries."""
        if len(names) > self.max_names():
            raise NameRefused(f"{len(names)} names for {self.max_names()} -f/-d entries")
        for name in names:
            if type(name) is not str or not name or len(name) > MAX_NAME or "\x00" in name:
                raise NameRefused("malformed file name")
            if name not in self._files and not self._from_certdir(name):
                raise NameRefused("a file name not derived from the configuration")
