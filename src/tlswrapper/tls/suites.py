"""Tables of the protocol's numbers and the CLI's names for them.

Rule: constants only, no logic that depends on a connection. Shared by tls/ and keys/."""

from __future__ import annotations

from .frozen import Frozen, init

# Protocol versions (RFC 8446 section 4.2.1, RFC 5246 appendix E).
TLS10 = 0x0301
TLS11 = 0x0302
TLS12 = 0x0303
TLS13 = 0x0304
VERSION_NAMES = {"tls10": TLS10, "tls11": TLS11, "tls12": TLS12, "tls13": TLS13}
VERSION_LABELS = {TLS10: "TLSv1", TLS11: "TLSv1.1", TLS12: "TLSv1.2", TLS13: "TLSv1.3"}

# Record content types (RFC 8446 section 5.1).
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

# Handshake message types.
HS_CLIENT_HELLO = 1
HS_SERVER_HELLO = 2
HS_NEW_SESSION_TICKET = 4
HS_END_OF_EARLY_DATA = 5
HS_ENCRYPTED_EXTENSIONS = 8
HS_CERTIFICATE = 11
HS_SERVER_KEY_EXCHANGE = 12
HS_CERTIFICATE_REQUEST = 13
HS_SERVER_HELLO_DONE = 14
HS_CERTIFICATE_VERIFY = 15
HS_CLIENT_KEY_EXCHANGE = 16
HS_FINISHED = 20
HS_KEY_UPDATE = 24
HS_MESSAGE_HASH = 254

# Alert descriptions (RFC 8446 section 6).
CLOSE_NOTIFY = 0
UNEXPECTED_MESSAGE = 10
BAD_RECORD_MAC = 20
RECORD_OVERFLOW = 22
HANDSHAKE_FAILURE = 40
BAD_CERTIFICATE = 42
UNSUPPORTED_CERTIFICATE = 43
CERTIFICATE_REVOKED = 44
CERTIFICATE_EXPIRED = 45
CERTIFICATE_UNKNOWN = 46
ILLEGAL_PARAMETER = 47
UNKNOWN_CA = 48
ACCESS_DENIED = 49
DECODE_ERROR = 50
DECRYPT_ERROR = 51
PROTOCOL_VERSION = 70
INSUFFICIENT_SECURITY = 71
INTERNAL_ERROR = 80
INAPPROPRIATE_FALLBACK = 86
USER_CANCELED = 90
NO_RENEGOTIATION = 100
MISSING_EXTENSION = 109
UNSUPPORTED_EXTENSION = 110
UNRECOGNIZED_NAME = 112
CERTIFICATE_REQUIRED = 116
NO_APPLICATION_PROTOCOL = 120
ALERT_NAMES = {
    CLOSE_NOTIFY: "close_notify", UNEXPECTED_MESSAGE: "unexpected_message",
    BAD_RECORD_MAC: "bad_record_mac", RECORD_OVERFLOW: "record_overflow",
    HANDSHAKE_FAILURE: "handshake_failure", BAD_CERTIFICATE: "bad_certificate",
    UNSUPPORTED_CERTIFICATE: "unsupported_certificate",
    CERTIFICATE_REVOKED: "certificate_revoked", CERTIFICATE_EXPIRED: "certificate_expired",
    CERTIFICATE_UNKNOWN: "certificate_unknown", ILLEGAL_PARAMETER: "illegal_parameter",
    UNKNOWN_CA: "unknown_ca", ACCESS_DENIED: "access_denied", DECODE_ERROR: "decode_error",
    DECRYPT_ERROR: "decrypt_error", PROTOCOL_VERSION: "protocol_version",
    INSUFFICIENT_SECURITY: "insufficient_security", INTERNAL_ERROR: "internal_error",
    INAPPROPRIATE_FALLBACK: "inappropriate_fallback", USER_CANCELED: "user_canceled",
    NO_RENEGOTIATION: "no_renegotiation", MISSING_EXTENSION: "missing_extension",
    UNSUPPORTED_EXTENSION: "unsupported_extension", UNRECOGNIZED_NAME: "unrecognized_name",
    CERTIFICATE_REQUIRED: "certificate_required",
    NO_APPLICATION_PROTOCOL: "no_application_protocol",
}

# Extension types.
EXT_SERVER_NAME = 0
EXT_STATUS_REQUEST = 5
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_SCT = 18
EXT_PADDING = 21
EXT_ENCRYPT_THEN_MAC = 22
EXT_EXTENDED_MASTER_SECRET = 23
EXT_SESSION_TICKET = 35
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_SUPPORTED_VERSIONS = 43
EXT_COOKIE = 44
EXT_PSK_KEY_EXCHANGE_MODES = 45
EXT_CERTIFICATE_AUTHORITIES = 47
EXT_POST_HANDSHAKE_AUTH = 49
EXT_SIGNATURE_ALGORITHMS_CERT = 50
EXT_KEY_SHARE = 51
EXT_RENEGOTIATION_INFO = 0xFF01

# Special cipher suite values.
TLS_EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF
TLS_FALLBACK_SCSV = 0x5600

# Key-exchange groups (RFC 8446 section 4.2.7, draft-ietf-tls-ecdhe-mlkem).
SECP256R1 = 23
SECP384R1 = 24
SECP521R1 = 25
X25519 = 29
X25519MLKEM768 = 0x11EC
GROUP_NAMES = {
    "x25519mlkem768": X25519MLKEM768, "x25519": X25519,
    "secp256r1": SECP256R1, "secp384r1": SECP384R1, "secp521r1": SECP521R1,
}
GROUP_LABELS = {v: k for k, v in GROUP_NAMES.items()}
TLS13_ONLY_GROUPS = frozenset({X25519MLKEM768})
# The RFC 4492/8422 curves TLS 1.3 retired (RFC 8446 4.2.7: obsolete_RESERVED 0x0001..0x0016,
# 0x001A..0x001C (brainpool), 0xFF01..0xFF02 (explicit curves)): a TLS 1.3 key share for one
# of them is illegal_parameter; listed in supported_groups alone they are ignored.
TLS13_OBSOLETE_GROUPS = frozenset(range(0x0001, 0x0017)) | frozenset(range(0x001A, 0x001D)) \
    | frozenset((0xFF01, 0xFF02))
DEFAULT_GROUPS = ("x25519mlkem768", "x25519", "secp256r1")
# Public share sizes (client share, server share), for early length checks.
KEY_SHARE_SIZES = {
    X25519: (32, 32), SECP256R1: (65, 65), SECP384R1: (97, 97), SECP521R1: (133, 133),
    X25519MLKEM768: (1184 + 32, 1088 + 32),
}

# Signature schemes (RFC 8446 section 4.2.3).
RSA_PKCS1_SHA1 = 0x0201
ECDSA_SHA1 = 0x0203
RSA_PKCS1_SHA256 = 0x0401
RSA_PKCS1_SHA384 = 0x0501
RSA_PKCS1_SHA512 = 0x0601
ECDSA_SECP256R1_SHA256 = 0x0403
ECDSA_SECP384R1_SHA384 = 0x0503
ECDSA_SECP521R1_SHA512 = 0x0603
RSA_PSS_RSAE_SHA256 = 0x0804
RSA_PSS_RSAE_SHA384 = 0x0805
RSA_PSS_RSAE_SHA512 = 0x0806
RSA_PSS_PSS_SHA256 = 0x0809
RSA_PSS_PSS_SHA384 = 0x080A
RSA_PSS_PSS_SHA512 = 0x080B
# Not on the wire: the TLS 1.0/1.1 ServerKeyExchange signatures (RFC 4346 / RFC 4492),
# RSA over MD5||SHA-1 and ECDSA over SHA-1. Values chosen outside the registry's used range.
LEGACY_RSA_MD5_SHA1 = 0xFF01
LEGACY_ECDSA_SHA1 = 0xFF02

SIGNATURE_SCHEME_HASH = {
    RSA_PKCS1_SHA1: "sha1", ECDSA_SHA1: "sha1",
    RSA_PKCS1_SHA256: "sha256", RSA_PKCS1_SHA384: "sha384", RSA_PKCS1_SHA512: "sha512",
    ECDSA_SECP256R1_SHA256: "sha256", ECDSA_SECP384R1_SHA384: "sha384",
    ECDSA_SECP521R1_SHA512: "sha512",
    RSA_PSS_RSAE_SHA256: "sha256", RSA_PSS_RSAE_SHA384: "sha384", RSA_PSS_RSAE_SHA512: "sha512",
    RSA_PSS_PSS_SHA256: "sha256", RSA_PSS_PSS_SHA384: "sha384", RSA_PSS_PSS_SHA512: "sha512",
    LEGACY_ECDSA_SHA1: "sha1",
}

# Key types of a server certificate, as the KeyService reports them.
KEY_RSA = "rsa"
KEY_EC_P256 = "ec-p256"
KEY_EC_P384 = "ec-p384"
KEY_EC_P521 = "ec-p521"

# What each key type may sign with, strongest hash first (RFC 8446 4.4.3, RFC 5246 7.4.1.4.1).
# In TLS 1.3 an ECDSA scheme names its curve; in TLS 1.2 it does not (any ecdsa_*_shaN).
SCHEMES_13 = {
    KEY_RSA: (RSA_PSS_RSAE_SHA512, RSA_PSS_RSAE_SHA384, RSA_PSS_RSAE_SHA256),
    KEY_EC_P256: (ECDSA_SECP256R1_SHA256,),
    KEY_EC_P384: (ECDSA_SECP384R1_SHA384,),
    KEY_EC_P521: (ECDSA_SECP521R1_SHA512,),
}
_ECDSA_12 = (ECDSA_SECP521R1_SHA512, ECDSA_SECP384R1_SHA384, ECDSA_SECP256R1_SHA256, ECDSA_SHA1)
SCHEMES_12 = {
    KEY_RSA: (RSA_PSS_RSAE_SHA512, RSA_PKCS1_SHA512, RSA_PSS_RSAE_SHA384, RSA_PKCS1_SHA384,
              RSA_PSS_RSAE_SHA256, RSA_PKCS1_SHA256, RSA_PKCS1_SHA1),
    KEY_EC_P256: _ECDSA_12, KEY_EC_P384: _ECDSA_12, KEY_EC_P521: _ECDSA_12,
}


class CipherSuite(Frozen):
    __slots__ = ("code", "name", "cli", "version_min", "version_max", "auth", "cipher", "key_len",
                 "iv_len", "mac", "mac_len", "prf_hash")
    code: int
    name: str            # the IANA name
    cli: str             # the -c name
    version_min: int     # lowest version that may use it
    version_max: int     # highest version that may use it
    auth: str | None     # "ecdsa", "rsa", or None for TLS 1.3 suites
    cipher: str          # chacha20-poly1305, aes-128-gcm, aes-256-gcm, aes-128-cbc, aes-256-cbc
    key_len: int
    iv_len: int          # fixed IV (AEAD) or CBC block size
    mac: str | None      # HMAC hash for CBC suites, None for AEAD
    mac_len: int
    prf_hash: str        # "sha256" / "sha384": PRF (1.2) or HKDF hash (1.3)

    def __init__(self, code: int, name: str, cli: str, version_min: int, version_max: int,
                 auth: str | None, cipher: str, key_len: int, iv_len: int, mac: str | None,
                 mac_len: int, prf_hash: str) -> None:
        init(self, "code", code)
        init(self, "name", name)
        init(self, "cli", cli)
        init(self, "version_min", version_min)
        init(self, "version_max", version_max)
        init(self, "auth", auth)
        init(self, "cipher", cipher)
        init(self, "key_len", key_len)
        init(self, "iv_len", iv_len)
        init(self, "mac", mac)
        init(self, "mac_len", mac_len)
        init(self, "prf_hash", prf_hash)


def _suite(code, name, cli, vmin, vmax, auth, cipher, key_len, iv_len, mac, mac_len, prf):
    return CipherSuite(code, name, cli, vmin, vmax, auth, cipher, key_len, iv_len, mac,
                       mac_len, prf)


SUITES: dict[int, CipherSuite] = {s.code: s for s in (
    _suite(0x1301, "TLS_AES_128_GCM_SHA256", "AES_128_GCM_SHA256", TLS13, TLS13, None,
           "aes-128-gcm", 16, 12, None, 0, "sha256"),
    _suite(0x1302, "TLS_AES_256_GCM_SHA384", "AES_256_GCM_SHA384", TLS13, TLS13, None,
           "aes-256-gcm", 32, 12, None, 0, "sha384"),
    _suite(0x1303, "TLS_CHACHA20_POLY1305_SHA256", "CHACHA20_POLY1305_SHA256", TLS13, TLS13,
           None, "chacha20-poly1305", 32, 12, None, 0, "sha256"),
    _suite(0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "CHACHA20_POLY1305_SHA256",
           TLS12, TLS12, "ecdsa", "chacha20-poly1305", 32, 12, None, 0, "sha256"),
    _suite(0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "CHACHA20_POLY1305_SHA256",
           TLS12, TLS12, "rsa", "chacha20-poly1305", 32, 12, None, 0, "sha256"),
    _suite(0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "AES_256_GCM_SHA384",
           TLS12, TLS12, "ecdsa", "aes-256-gcm", 32, 4, None, 0, "sha384"),
    _suite(0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "AES_256_GCM_SHA384",
           TLS12, TLS12, "rsa", "aes-256-gcm", 32, 4, None, 0, "sha384"),
    _suite(0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "AES_128_GCM_SHA256",
           TLS12, TLS12, "ecdsa", "aes-128-gcm", 16, 4, None, 0, "sha256"),
    _suite(0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "AES_128_GCM_SHA256",
           TLS12, TLS12, "rsa", "aes-128-gcm", 16, 4, None, 0, "sha256"),
    _suite(0xC024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", "AES_256_CBC_SHA384",
           TLS12, TLS12, "ecdsa", "aes-256-cbc", 32, 16, "sha384", 48, "sha384"),
    _suite(0xC028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", "AES_256_CBC_SHA384",
           TLS12, TLS12, "rsa", "aes-256-cbc", 32, 16, "sha384", 48, "sha384"),
    _suite(0xC023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "AES_128_CBC_SHA256",
           TLS12, TLS12, "ecdsa", "aes-128-cbc", 16, 16, "sha256", 32, "sha256"),
    _suite(0xC027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "AES_128_CBC_SHA256",
           TLS12, TLS12, "rsa", "aes-128-cbc", 16, 16, "sha256", 32, "sha256"),
    _suite(0xC00A, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "AES_256_CBC_SHA",
           TLS10, TLS12, "ecdsa", "aes-256-cbc", 32, 16, "sha1", 20, "sha256"),
    _suite(0xC014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "AES_256_CBC_SHA",
           TLS10, TLS12, "rsa", "aes-256-cbc", 32, 16, "sha1", 20, "sha256"),
    _suite(0xC009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "AES_128_CBC_SHA",
           TLS10, TLS12, "ecdsa", "aes-128-cbc", 16, 16, "sha1", 20, "sha256"),
    _suite(0xC013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "AES_128_CBC_SHA",
           TLS10, TLS12, "rsa", "aes-128-cbc", 16, 16, "sha1", 20, "sha256"),
)}
# Note: the PRF of TLS 1.0/1.1 is MD5/SHA-1 whatever the suite; prf_hash applies to TLS 1.2.

CIPHER_NAMES = ("CHACHA20_POLY1305_SHA256", "AES_256_GCM_SHA384", "AES_128_GCM_SHA256",
                "AES_256_CBC_SHA384", "AES_128_CBC_SHA256", "AES_256_CBC_SHA", "AES_128_CBC_SHA")
DEFAULT_CIPHERS = ("CHACHA20_POLY1305_SHA256", "AES_256_GCM_SHA384", "AES_128_GCM_SHA256")

# Record layer limits (RFC 8446 section 5.1, 5.2; RFC 5246 section 6.2).
MAX_PLAINTEXT = 1 << 14
MAX_CIPHERTEXT_13 = (1 << 14) + 256
MAX_CIPHERTEXT_12 = (1 << 14) + 2048
MAX_HANDSHAKE_MESSAGE = 1 << 16   # more than any message we accept but ClientHello
# The largest ClientHello its own length fields allow (RFC 8446 4.1.2, RFC 5246 7.4.1.2):
# version, random, session_id<0..32>, cipher_suites<2..2^16-2>, compression<1..2^8-1>,
# extensions<0..2^16-1>. A valid one of that size (16 k extensions, 32 k suites) is served,
# so the handshake buffer for a ClientHello is bounded by this, not by MAX_HANDSHAKE_MESSAGE.
MAX_CLIENT_HELLO = 2 + 32 + (1 + 32) + (2 + 0xFFFE) + (1 + 0xFF) + (2 + 0xFFFF)

# The TLS 1.3 downgrade sentinels (RFC 8446 section 4.1.3), last 8 bytes of server_random.
DOWNGRADE_TLS12 = b"DOWNGRD\x01"
DOWNGRADE_TLS11 = b"DOWNGRD\x00"
# HelloRetryRequest's special random (RFC 8446 section 4.1.3).
HRR_RANDOM = bytes.fromhex(
    "CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
