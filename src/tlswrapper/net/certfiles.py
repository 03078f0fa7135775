"""From the -f/-d list and the client's SNI to the PEM file names to try, in order.

Rule: every name handed to the key process went through fixpath(), and a certdir is joined
only with a validated, lower-cased host name; nothing here opens a file.

Loading order (SPEC section 1), split between this module and its callers:
- here: a -d entry is skipped when there is no SNI or it is not a valid host name;
- the network process asks the key process to load each candidate in turn; when the key
  process answers "missing" (the file does not exist) and more candidates follow, the network
  process moves on to the next one; with no candidate left the handshake fails with an alert;
- the key-type fallback (an ECDSA file first, RSA next if the client cannot use ECDSA) is the
  engine's: it moves to the next candidate when the loaded key does not fit the client.
"""

from __future__ import annotations

import os

# typing only for the type checker: each tcpserver-mode connection would pay for its import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Literal

    CertEntry = tuple[Literal["file", "dir"], str]
else:
    CertEntry = tuple[str, str]    # ("file" or "dir", the name as given)

# RFC 1035 / RFC 1123 limits: 63 bytes per label, 253 for the whole name (without a trailing
# dot). Above that a name cannot be a host name, so it cannot be a file in a certdir either.
MAX_LABEL = 63
MAX_HOSTNAME = 253
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def fixpath(path: str) -> str:
    """Replace every dot right after a slash by a colon (`/.` -> `/:`), as the C version does.

    Applied to the whole path just before it is opened: then no path component can be `.`,
    `..` or a dot file, whatever a client put in its SNI."""
    return path.replace("/.", "/:")


def normalize_hostname(sni: str | bytes | None) -> str | None:
    """The SNI as a safe, lower-case host name, or None when it is absent or not a host name.

    Valid: ASCII letters, digits and hyphens in dot-separated labels of 1..63 characters, a
    label neither starting nor ending with a hyphen, at most 253 characters. One trailing dot
    (the absolute form `example.com.`, which RFC 6066 forbids in SNI but some clients send) is
    dropped so that it finds the same file. Everything else (empty, `..`, a leading dot, `/`,
    `\\`, NUL, spaces, non-ASCII, an underscore) is invalid: the -d entry is then skipped."""
    if sni is None:
        return None
    if isinstance(sni, (bytes, bytearray, memoryview)):
        try:
            name = bytes(sni).decode("ascii")
        except UnicodeDecodeError:
            return None
    else:
        name = sni
    if len(name) > MAX_HOSTNAME + 1:
        return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_HOSTNAME:
        return None
    for label in name.split("."):
        # An empty label covers a leading dot, a trailing second dot and `..`.
        if not label or len(label) > MAX_LABEL:
            return None
        if label[0] == "-" or label[-1] == "-":
            return None
        if not set(label) <= _LABEL_CHARS:
            return None
    return name


def candidate_paths(certs: Iterable[CertEntry], sni: str | bytes | None) -> list[str]:
    """The file names to try for this connection, in the order of the -f/-d options."""
    host = normalize_hostname(sni)
    out: list[str] = []
    for kind, path in certs:
        if kind == "file":
            out.append(fixpath(path))
        elif kind == "dir":
            if host is None:
                continue
            # os.path.join keeps a single slash whether or not the certdir ends with one.
            out.append(fixpath(os.path.join(path, host)))
        else:
            raise ValueError(f"unknown certificate entry kind {kind!r}")
    return out
