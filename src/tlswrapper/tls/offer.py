"""What a ClientHello offers, as one value. Rule: read_offer is pure (the ClientHello and the
version chosen in, an Offer or an OfferRefused out); the engine chooses from the Offer only.

The checks are those of the version chosen, in the order the engine has always made them, so
that each bad ClientHello gets the same alert: RFC 7627 5.1 (extended_master_secret empty),
RFC 8446 9.2 and 4.2.8 (TLS 1.3), RFC 5746 3.6 and RFC 7366 (TLS 1.0-1.2).
"""

from __future__ import annotations

from . import messages as m
from . import suites
from .frozen import Frozen, init

# No typing at run time: each tcpserver-mode connection imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class OfferRefused(Exception):
    """The ClientHello breaks a rule of the version chosen: end with this alert."""

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert
        self.reason = reason


class Offer(Frozen):
    """The client's offer. `groups`, `schemes`, `shares` are () when the extension is absent;
    `versions` is (legacy_version,) without supported_versions; the TLS 1.0-1.2 fields
    (secure_renegotiation, ems, etm, point_formats) stay False/None for TLS 1.3, and
    early_data False for TLS 1.0-1.2, as the version chosen does not read them."""

    __slots__ = ("sni", "versions", "cipher_suites", "groups", "schemes", "shares",
                 "early_data", "secure_renegotiation", "ems", "etm", "point_formats")

    def __init__(self, sni: str | None, versions: tuple[int, ...],
                 cipher_suites: tuple[int, ...], groups: tuple[int, ...],
                 schemes: tuple[int, ...], shares: tuple[tuple[int, bytes], ...],
                 early_data: bool, secure_renegotiation: bool, ems: bool, etm: bool,
                 point_formats: bytes | None) -> None:
        init(self, "sni", sni)
        init(self, "versions", versions)
        init(self, "cipher_suites", cipher_suites)
        init(self, "groups", groups)
        init(self, "schemes", schemes)
        init(self, "shares", shares)
        init(self, "early_data", early_data)
        init(self, "secure_renegotiation", secure_renegotiation)
        init(self, "ems", ems)
        init(self, "etm", etm)
        init(self, "point_formats", point_formats)


def read_offer(hello: m.ClientHello, version: int) -> Offer:
    """The Offer of `hello` for `version`; raises OfferRefused or DecodeError."""
    raw = hello.extension(suites.EXT_EXTENDED_MASTER_SECRET)
    if raw is not None and raw != b"":
        # RFC 7627 5.1: its extension_data is empty.
        raise OfferRefused(suites.DECODE_ERROR, "extended_master_secret extension not empty")
    raw = hello.extension(suites.EXT_SERVER_NAME)
    sni = m.parse_server_name(raw) if raw is not None else None
    groups_raw = hello.extension(suites.EXT_SUPPORTED_GROUPS)
    groups = m.parse_supported_groups(groups_raw) if groups_raw is not None else ()
    schemes_raw = hello.extension(suites.EXT_SIGNATURE_ALGORITHMS)
    schemes = m.parse_signature_algorithms(schemes_raw) if schemes_raw is not None else ()
    shares_raw = hello.extension(suites.EXT_KEY_SHARE)
    shares = m.parse_key_share_client(shares_raw) if shares_raw is not None else ()
    versions_raw = hello.extension(suites.EXT_SUPPORTED_VERSIONS)
    versions = m.parse_supported_versions_client(versions_raw) \
        if versions_raw is not None else (hello.legacy_version,)
    early_data = secure_renegotiation = ems = etm = False
    point_formats = None
    if version == suites.TLS13:
        _check_13(hello, groups, groups_raw, schemes_raw, shares_raw, shares)
        early_data = hello.extension(suites.EXT_EARLY_DATA) is not None
    else:
        raw = hello.extension(suites.EXT_RENEGOTIATION_INFO)
        if raw is not None and m.parse_renegotiation_info(raw) != b"":
            raise OfferRefused(suites.HANDSHAKE_FAILURE, "renegotiation_info not empty in the "
                               "initial handshake")
        secure_renegotiation = raw is not None or \
            suites.TLS_EMPTY_RENEGOTIATION_INFO_SCSV in hello.cipher_suites
        ems = hello.extension(suites.EXT_EXTENDED_MASTER_SECRET) is not None
        raw = hello.extension(suites.EXT_ENCRYPT_THEN_MAC)
        if raw is not None and raw != b"":
            raise OfferRefused(suites.DECODE_ERROR, "encrypt_then_mac extension not empty")
        etm = raw is not None
        raw = hello.extension(suites.EXT_EC_POINT_FORMATS)
        point_formats = m.parse_ec_point_formats(raw) if raw is not None else None
    return Offer(sni, tuple(versions), hello.cipher_suites, tuple(groups), tuple(schemes),
                 tuple(shares), early_data, secure_renegotiation, ems, etm, point_formats)


def _check_13(hello: m.ClientHello, groups: Sequence[int], groups_raw: bytes | None,
              schemes_raw: bytes | None, shares_raw: bytes | None,
              shares: Sequence[tuple[int, bytes]]) -> None:
    # RFC 8446 9.2: what a TLS 1.3 ClientHello without PSK must carry.
    if schemes_raw is None:
        raise OfferRefused(suites.MISSING_EXTENSION, "TLS 1.3 ClientHello without "
                           "signature_algorithms")
    if groups_raw is None or shares_raw is None:
        raise OfferRefused(suites.MISSING_EXTENSION, "TLS 1.3 ClientHello without "
                           "supported_groups and key_share")
    # Sets: a large but valid ClientHello may list 32 k groups and 13 k shares.
    group_set = frozenset(groups)
    seen: set[int] = set()
    for group, share in shares:
        if group in seen:
            raise OfferRefused(suites.ILLEGAL_PARAMETER, "two key shares for one group")
        # RFC 8446 4.2.8: servers MAY check these rules, with illegal_parameter; we do.
        if group in suites.TLS13_OBSOLETE_GROUPS:
            raise OfferRefused(suites.ILLEGAL_PARAMETER, f"key share for group {group:#06x}, "
                               "which TLS 1.3 does not define")
        if group not in group_set:
            raise OfferRefused(suites.ILLEGAL_PARAMETER, "key share for a group not in "
                               "supported_groups")
        # A share of a group we know, of the wrong size, is malformed whether or not we
        # would pick it (RFC 8446 4.2.8.1, 4.2.8.2: the sizes are fixed per group).
        size = suites.KEY_SHARE_SIZES.get(group)
        if size is not None and len(share) != size[0]:
            raise OfferRefused(suites.ILLEGAL_PARAMETER, f"key share of {len(share)} bytes for "
                               f"group {suites.GROUP_LABELS[group]}")
        seen.add(group)
    psk = hello.extension(suites.EXT_PRE_SHARED_KEY)
    if psk is not None:
        m.parse_pre_shared_key_client(psk)   # well-formed, then ignored: full handshake
        if hello.extension(suites.EXT_PSK_KEY_EXCHANGE_MODES) is None:
            raise OfferRefused(suites.MISSING_EXTENSION, "pre_shared_key without "
                               "psk_key_exchange_modes")
