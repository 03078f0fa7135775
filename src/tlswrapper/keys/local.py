"""The KeyService in-process: one connection's private key, ephemeral keys, secrets and
record protection. Rule: every secret stays inside this object; answers are public values."""

from __future__ import annotations

from typing import Callable, Sequence

# Imported here, not lazily: after the jail (chroot, RLIMIT_NOFILE 0) nothing can be loaded,
# and cryptography imports its backend module on the first key generation.
import cryptography.hazmat.backends.openssl.backend  # noqa: F401
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, padding, rsa, x25519

from tlswrapper.keys import pem, protect, schedule12, schedule13
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.pem import Encoding, PublicFormat
from tlswrapper.tls import keyservice, messages, suites
from tlswrapper.tls.record import split_fragments
from tlswrapper.tls.keyservice import Candidate, KeyServiceError, Unusable
from tlswrapper.tls.transcript import SERVER_PREFIX, Transcript, hash_names
from tlswrapper.tls.wire import handshake_message

_EC_CURVES = {suites.SECP256R1: ec.SECP256R1, suites.SECP384R1: ec.SECP384R1,
              suites.SECP521R1: ec.SECP521R1}
MLKEM768_ENCAPSULATION_KEY = 1184
MLKEM768_CIPHERTEXT = 1088
X25519_LEN = 32
MAX_ANCHOR_FILE = pem.MAX_PEM_FILE     # -a: CA certificates; far more than any real file


class _MD5SHA1(hashes.HashAlgorithm):
    """OpenSSL's "md5-sha1" digest: MD5 || SHA-1, 36 bytes. RSA PKCS#1 v1.5 signing with it
    writes the digest with no DigestInfo, as TLS 1.0/1.1 ServerKeyExchange wants (RFC 4346
    section 7.4.3). cryptography has no class for it but passes the name to OpenSSL."""

    name = "md5-sha1"
    digest_size = 36
    block_size = 64


_HASH_CLASSES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
                 "sha512": hashes.SHA512}
_RSA_PKCS1 = (suites.RSA_PKCS1_SHA1, suites.RSA_PKCS1_SHA256, suites.RSA_PKCS1_SHA384,
              suites.RSA_PKCS1_SHA512)
_RSA_PSS_RSAE = (suites.RSA_PSS_RSAE_SHA256, suites.RSA_PSS_RSAE_SHA384,
                 suites.RSA_PSS_RSAE_SHA512)
_ECDSA = (suites.ECDSA_SHA1, suites.ECDSA_SECP256R1_SHA256, suites.ECDSA_SECP384R1_SHA384,
          suites.ECDSA_SECP521R1_SHA512, suites.LEGACY_ECDSA_SHA1)


def _x25519_shared(private: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    if len(peer) != X25519_LEN:
        raise KeyServiceError(suites.ILLEGAL_PARAMETER, "X25519 share has the wrong length")
    try:
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        # OpenSSL refuses small-order points itself (the result would be all zeros).
        raise KeyServiceError(suites.ILLEGAL_PARAMETER, "X25519 share of small order") from None
    # RFC 8446 section 7.4.2: an all-zero X25519 result must be refused.
    if shared == bytes(X25519_LEN):
        raise KeyServiceError(suites.ILLEGAL_PARAMETER, "X25519 shared secret is zero")
    return shared


def _ecdh_shared(private: ec.EllipticCurvePrivateKey, peer: bytes, group: int) -> bytes:
    size = suites.KEY_SHARE_SIZES[group][0]
    # RFC 8446 section 4.2.8.2 / RFC 8422 section 5.1.2: uncompressed points only.
    if len(peer) != size or peer[0] != 4:
        raise KeyServiceError(suites.ILLEGAL_PARAMETER, "EC share is not an uncompressed point")
    try:
        # from_encoded_point checks that the point is on the curve.
        public = ec.EllipticCurvePublicKey.from_encoded_point(private.curve, peer)
        return private.exchange(ec.ECDH(), public)
    except ValueError:
        raise KeyServiceError(suites.ILLEGAL_PARAMETER, "EC share is not a valid point") from None


class LocalKeyService:
    """keyservice.KeyService in this process (engine tests; the key process wraps one).

    `jail`, when given, is called by load() after the files are read and before anything in
    them is parsed (ARCHITECTURE MUST 4). A jail failure propagates: it is fatal.

    `files`: the configuration (keys/files.py). The key process always has one: load() then
    opens only names derived from it (else NameRefused) and read_anchor() reads its -a file.
    Without it (engine tests, the warm-up's throw-away certificate: callers in this very
    process, with no trust line between them) load() opens the names it is given."""

    def __init__(self, jail: Callable[[], None] | None = None,
                 files: KeyFiles | None = None) -> None:
        self._jail = jail
        self._files = files
        self._loaded = False
        self._sealed: list[pem.SealedPem | None] = []
        self._usable: list[bool] = []
        self._key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None
        # Key exchange.
        self._group = 0
        self._ephemeral: x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey | None = None
        self._shared: bytes | None = None
        # TLS 1.0-1.2.
        self._version = 0
        self._suite: suites.CipherSuite | None = None
        self._master12: bytes | None = None
        # TLS 1.3.
        self._schedule: schedule13.KeySchedule | None = None
        self._hs_secrets: tuple[bytes, bytes] | None = None     # (client, server)
        self._ap_secrets: list[bytes] | None = None            # [client, server]
        # Record protection per direction (keyservice.READ, keyservice.WRITE).
        self._current: list[protect.RecordProtection | None] = [None, None]
        self._pending: list[protect.RecordProtection | None] = [None, None]

    # --- certificates -------------------------------------------------------------------
    def load(self, paths: Sequence[str]) -> list[Candidate | Unusable]:
        if self._loaded:
            raise KeyServiceError(suites.INTERNAL_ERROR, "load called twice")
        if self._files is not None:
            self._files.check_names(paths)     # NameRefused: before anything is opened
        self._loaded = True
        early: list[Unusable | None] = []
        for path in paths:
            try:
                sealed = pem.read_pem_file(path)
            except pem.PemError as e:
                sealed = None
                early.append(Unusable(e.reason))
            except OSError as e:
                sealed = None
                early.append(Unusable(e.strerror or str(e)))
            else:
                early.append(None if sealed is not None else Unusable("missing", missing=True))
            self._sealed.append(sealed)
        if self._jail is not None:
            self._jail()
        answer: list[Candidate | Unusable] = []
        for sealed, problem in zip(self._sealed, early):
            if problem is not None or sealed is None:
                answer.append(problem if problem is not None else Unusable("missing", True))
                self._usable.append(False)
                continue
            try:
                chain, key_type, bits = pem.parse_public(sealed)
            except pem.PemError as e:
                answer.append(Unusable(e.reason))
                self._usable.append(False)
            else:
                answer.append(Candidate(chain, key_type, bits))
                self._usable.append(True)

        return answer

    def read_anchor(self) -> bytes:
        """-a: the configured anchor file's CERTIFICATE blocks (PEM text), read while still
        privileged (before load() jails us). No request names the file: it is the one the
        configuration gives. Only certificate blocks come back (a private key put in the file
        by mistake stays here, sealed and dropped); they are parsed in the jailed network
        process, so that a parser bug cannot act with our privileges. The file is opened
        without blocking and must be a regular file (a FIFO cannot hold us)."""
        path = self._files.anchor if self._files is not None else None
        if path is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "no anchor file configured")
        if self._loaded:
            raise KeyServiceError(suites.INTERNAL_ERROR, "read_anchor after load")
        try:
            sealed = pem.read_pem_file(path)
        except pem.PemError as e:
            reason = e.reason
        except OSError as e:
            reason = e.strerror or str(e)
        else:
            if sealed is not None:
                return b"".join(c + b"\n" for c in sealed.certificates)
            reason = "file does not exist"
        raise KeyServiceError(suites.INTERNAL_ERROR,
                              f"unable to read anchor PEM file '{path}' ({reason})")

    def select(self, index: int) -> None:
        # Whatever happens below, no earlier key stays selected: after a failed select the
        # calls that sign fail (the engine may have sent its flight call right behind this
        # select, deferred, and must never get a signature by another key than its choice).
        self._key = None
        if not 0 <= index < len(self._sealed) or not self._usable[index]:
            raise KeyServiceError(suites.HANDSHAKE_FAILURE, f"no usable certificate {index}")
        sealed = self._sealed[index]
        if sealed is None:
            raise KeyServiceError(suites.HANDSHAKE_FAILURE, f"no usable certificate {index}")
        try:
            # Not handed the leaf kept from load(): unseal_private_key parses the chain again
            # first, and that changes which freed heap chunks cryptography's PEM decoding
            # reuses. Without it, the key's DER (decoded inside cryptography and freed
            # without being wiped) was found in memory in 2 runs of 8 of
            # test_key_process_holds_no_clear_pem_before_signing[rsa-2048].
            self._key = pem.unseal_private_key(sealed)
        except pem.PemError as e:
            raise KeyServiceError(suites.INTERNAL_ERROR, f"{sealed.path}: {e.reason}") from None
        # The other files' sealed keys are no longer needed.
        self._sealed = [s if i == index else None for i, s in enumerate(self._sealed)]

    def _require_key(self) -> None:
        """The server flight calls check this first, so that after a failed (deferred) select
        they fail before doing anything: no ephemeral key, no secrets, no key activated."""
        if self._key is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "no key selected")

    def sign(self, scheme: int, data: bytes) -> bytes:
        # In this process only (the flight calls below, tests): the pipe has no call for it.
        key = self._key
        if key is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "sign before select")
        if isinstance(key, rsa.RSAPrivateKey):
            if scheme in _RSA_PKCS1:
                algorithm = _HASH_CLASSES[suites.SIGNATURE_SCHEME_HASH[scheme]]()
                return key.sign(data, padding.PKCS1v15(), algorithm)
            if scheme in _RSA_PSS_RSAE:
                algorithm = _HASH_CLASSES[suites.SIGNATURE_SCHEME_HASH[scheme]]()
                # RFC 8446 section 4.2.3: salt as long as the digest, MGF1 with that hash.
                pss = padding.PSS(mgf=padding.MGF1(algorithm),
                                  salt_length=algorithm.digest_size)
                return key.sign(data, pss, algorithm)
            if scheme == suites.LEGACY_RSA_MD5_SHA1:
                return key.sign(data, padding.PKCS1v15(), _MD5SHA1())
        elif isinstance(key, ec.EllipticCurvePrivateKey) and scheme in _ECDSA:
            # In TLS 1.2 any ecdsa_*_shaN fits any curve (the engine enforces 1.3's pairing).
            algorithm = _HASH_CLASSES[suites.SIGNATURE_SCHEME_HASH[scheme]]()
            return key.sign(data, ec.ECDSA(algorithm))    # DER, as TLS sends it
        raise KeyServiceError(suites.INTERNAL_ERROR,
                              f"signature scheme {scheme:#06x} does not fit the key")

    # --- key exchange ---------------------------------------------------------------------
    def key_share(self, group: int, peer_share: bytes | None = None) -> bytes:
        self._shared = None
        self._group = group
        if group == suites.X25519MLKEM768:
            return self._hybrid_share(peer_share)
        if group == suites.X25519:
            private = x25519.X25519PrivateKey.generate()
            self._ephemeral = private
            public = private.public_key().public_bytes_raw()
            if peer_share is not None:
                self._shared = _x25519_shared(private, peer_share)
            return public
        curve = _EC_CURVES.get(group)
        if curve is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, f"unsupported group {group}")
        ec_private = ec.generate_private_key(curve())
        self._ephemeral = ec_private
        public = ec_private.public_key().public_bytes(Encoding.X962,
                                                      PublicFormat.UncompressedPoint)
        if peer_share is not None:
            self._shared = _ecdh_shared(ec_private, peer_share, group)
        return public

    def _hybrid_share(self, peer_share: bytes | None) -> bytes:
        """X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem section 4.3): ML-KEM first in the
        client share, our answer and the shared secret."""
        if peer_share is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "X25519MLKEM768 needs the peer share")
        if len(peer_share) != MLKEM768_ENCAPSULATION_KEY + X25519_LEN:
            raise KeyServiceError(suites.ILLEGAL_PARAMETER,
                                  "X25519MLKEM768 share has the wrong length")
        try:
            # FIPS 203 section 7.2: the encapsulation key check happens on import.
            encapsulation_key = mlkem.MLKEM768PublicKey.from_public_bytes(
                peer_share[:MLKEM768_ENCAPSULATION_KEY])
        except ValueError:
            raise KeyServiceError(suites.ILLEGAL_PARAMETER,
                                  "invalid ML-KEM-768 encapsulation key") from None
        private = x25519.X25519PrivateKey.generate()
        x_shared = _x25519_shared(private, peer_share[MLKEM768_ENCAPSULATION_KEY:])
        kem_shared, ciphertext = encapsulation_key.encapsulate()
        self._ephemeral = None
        self._shared = kem_shared + x_shared
        return ciphertext + private.public_key().public_bytes_raw()

    # --- TLS 1.0 - 1.2 --------------------------------------------------------------------
    def derive12(self, version: int, suite: int, peer_share: bytes, client_random: bytes,
                 server_random: bytes, session_hash: bytes | None,
                 encrypt_then_mac: bool = False) -> None:
        cs = suites.SUITES.get(suite)
        if cs is None or not cs.version_min <= version <= cs.version_max \
                or version == suites.TLS13:
            raise KeyServiceError(suites.INTERNAL_ERROR, f"suite {suite:#06x} not for version")
        private = self._ephemeral
        if isinstance(private, x25519.X25519PrivateKey):
            premaster = _x25519_shared(private, peer_share)
        elif isinstance(private, ec.EllipticCurvePrivateKey):
            premaster = _ecdh_shared(private, peer_share, self._group)
        else:
            raise KeyServiceError(suites.INTERNAL_ERROR, "derive12 without an ECDHE key")
        self._ephemeral = None
        try:
            if session_hash is not None:
                master = schedule12.extended_master_secret(version, cs.prf_hash, premaster,
                                                           session_hash)
            else:
                master = schedule12.master_secret(version, cs.prf_hash, premaster,
                                                  client_random, server_random)
            block = schedule12.key_block(version, cs, master, client_random, server_random)
        except schedule12.ScheduleError as e:
            raise KeyServiceError(suites.INTERNAL_ERROR, str(e)) from None
        self._version = version
        self._suite = cs
        self._master12 = master
        etm = encrypt_then_mac and cs.mac is not None
        self._pending[keyservice.READ] = protect.new_protection(
            version, cs, block.client_key, block.client_iv, block.client_mac_key, etm)
        self._pending[keyservice.WRITE] = protect.new_protection(
            version, cs, block.server_key, block.server_iv, block.server_mac_key, etm)

    def server_key_exchange12(self, group: int, scheme: int, client_random: bytes,
                              server_random: bytes) -> tuple[bytes, bytes]:
        self._require_key()
        public = self.key_share(group)
        params = messages.ecdhe_params(group, public)
        return public, self.sign(scheme, client_random + server_random + params)

    def derive12_finished(self, version: int, suite: int, peer_share: bytes,
                          client_random: bytes, server_random: bytes,
                          transcript: Sequence[bytes], extended_master_secret: bool,
                          encrypt_then_mac: bool) -> tuple[bytes, bytes]:
        cs = suites.SUITES.get(suite)
        if cs is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, f"unknown suite {suite:#06x}")
        # RFC 5246 7.4.9 (RFC 2246 7.4.9 below TLS 1.2: MD5 || SHA-1).
        names = hash_names(version, cs.prf_hash)
        running = Transcript(transcript)
        handshake_hash = running.digest(names)
        self.derive12(version, suite, peer_share, client_random, server_random,
                      handshake_hash if extended_master_secret else None, encrypt_then_mac)
        client_verify = self.finished12(keyservice.SENDER_CLIENT, handshake_hash)
        client_finished = handshake_message(suites.HS_FINISHED, client_verify)
        running.append(client_finished)
        self.activate(keyservice.WRITE)
        record = self.seal_finished12(running.digest(names))
        return client_verify, record

    def seal_finished12(self, handshake_hash: bytes) -> bytes:
        verify_data = self.finished12(keyservice.SENDER_SERVER, handshake_hash)
        return self.seal([(suites.HANDSHAKE, handshake_message(suites.HS_FINISHED,
                                                               verify_data))])

    def finished12(self, sender: int, handshake_hash: bytes) -> bytes:
        if self._master12 is None or self._suite is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "finished12 before derive12")
        return schedule12.verify_data(self._version, self._suite.prf_hash, self._master12,
                                      sender == keyservice.SENDER_CLIENT, handshake_hash)

    # --- TLS 1.3 ----------------------------------------------------------------------------
    def derive13_handshake(self, suite: int, transcript_hash: bytes) -> None:
        cs = suites.SUITES.get(suite)
        if cs is None or cs.version_min != suites.TLS13:
            raise KeyServiceError(suites.INTERNAL_ERROR, f"suite {suite:#06x} is not TLS 1.3")
        if self._shared is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "derive13_handshake without a secret")
        try:
            schedule = schedule13.KeySchedule(cs.prf_hash)
            schedule.set_shared_secret(self._shared)
            self._hs_secrets = schedule.handshake_traffic_secrets(transcript_hash)
        except schedule13.ScheduleError as e:
            raise KeyServiceError(suites.INTERNAL_ERROR, str(e)) from None
        self._shared = None
        self._ephemeral = None
        self._schedule = schedule
        self._suite = cs
        self._version = suites.TLS13
        self._pending[keyservice.READ] = self._protection13(self._hs_secrets[0])
        self._pending[keyservice.WRITE] = self._protection13(self._hs_secrets[1])

    def server_flight13(self, group: int, peer_share: bytes, suite: int, scheme: int,
                        transcript: Sequence[bytes], hello_head: bytes,
                        flight: Sequence[bytes], client_auth: bool,
                        ) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        self._require_key()
        cs = suites.SUITES.get(suite)
        if cs is None or cs.version_min != suites.TLS13:
            raise KeyServiceError(suites.INTERNAL_ERROR, f"suite {suite:#06x} is not TLS 1.3")
        # What is signed must be a TLS 1.3 transcript whose ServerHello ends with the key
        # share made here and now: a ClientHello (or the message_hash of one) first, and
        # hello_head a ServerHello whose length counts the share still to come.
        if not transcript or transcript[0][:1] not in (b"\x01", b"\xfe") \
                or hello_head[:1] != b"\x02" or len(hello_head) < 4:
            raise KeyServiceError(suites.INTERNAL_ERROR, "not a TLS 1.3 transcript")
        share_size = suites.KEY_SHARE_SIZES.get(group, (0, 0))[1]
        if int.from_bytes(hello_head[1:4], "big") != len(hello_head) - 4 + share_size:
            raise KeyServiceError(suites.INTERNAL_ERROR, "ServerHello does not end with our share")
        share = self.key_share(group, peer_share)
        # One running transcript hash; each step takes a snapshot (RFC 8446 4.4.1).
        names = (cs.prf_hash,)
        running = Transcript(transcript)
        running.append(hello_head + share)
        self.derive13_handshake(suite, running.digest(names))
        self.activate(keyservice.WRITE)
        self.activate(keyservice.READ)
        running.extend(flight)
        signature = self.sign(scheme, SERVER_PREFIX + running.digest(names))
        certificate_verify = handshake_message(
            suites.HS_CERTIFICATE_VERIFY, messages.build_certificate_verify(
                messages.CertificateVerify(scheme, signature)))
        running.append(certificate_verify)
        finished = handshake_message(
            suites.HS_FINISHED, self.finished13(keyservice.SENDER_SERVER, running.digest(names)))
        running.append(finished)
        data = b"".join(flight) + certificate_verify + finished
        records = self.seal([(suites.HANDSHAKE, f) for f in split_fragments(data)])
        transcript_hash = running.digest(names)
        client_verify = b"" if client_auth else \
            self.finished13(keyservice.SENDER_CLIENT, transcript_hash)
        self.derive13_application(transcript_hash)
        self.activate(keyservice.WRITE)
        return share, certificate_verify, finished, records, client_verify

    def _protection13(self, secret: bytes) -> protect.RecordProtection:
        if self._schedule is None or self._suite is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "no TLS 1.3 key schedule")
        key, iv = self._schedule.traffic_key_iv(secret, self._suite.key_len,
                                                self._suite.iv_len)
        return protect.new_protection(suites.TLS13, self._suite, key, iv)

    def finished13(self, sender: int, transcript_hash: bytes) -> bytes:
        if self._schedule is None or self._hs_secrets is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "finished13 without handshake secrets")
        base_key = self._hs_secrets[0 if sender == keyservice.SENDER_CLIENT else 1]
        try:
            return self._schedule.finished_verify_data(base_key, transcript_hash)
        except schedule13.ScheduleError as e:
            raise KeyServiceError(suites.INTERNAL_ERROR, str(e)) from None

    def derive13_application(self, transcript_hash: bytes) -> None:
        if self._schedule is None or self._hs_secrets is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "derive13_application out of order")
        try:
            client, server = self._schedule.application_traffic_secrets(transcript_hash)
        except schedule13.ScheduleError as e:
            raise KeyServiceError(suites.INTERNAL_ERROR, str(e)) from None
        # The handshake traffic secrets stay: the client's Finished (and with client
        # authentication its Certificate) still comes under them.
        self._ap_secrets = [client, server]
        self._pending[keyservice.READ] = self._protection13(client)
        self._pending[keyservice.WRITE] = self._protection13(server)

    def key_update(self, direction: int) -> None:
        if self._schedule is None or self._ap_secrets is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "key_update before application keys")
        self._check_direction(direction)
        # RFC 8446 section 7.2: secret N+1 from secret N; sender and receiver both move on.
        secret = self._schedule.next_application_secret(self._ap_secrets[direction])
        self._ap_secrets[direction] = secret
        self._current[direction] = self._protection13(secret)

    # --- records ----------------------------------------------------------------------------
    @staticmethod
    def _check_direction(direction: int) -> None:
        if direction not in (keyservice.READ, keyservice.WRITE):
            raise KeyServiceError(suites.INTERNAL_ERROR, f"bad direction {direction}")

    def activate(self, direction: int) -> None:
        self._check_direction(direction)
        pending = self._pending[direction]
        if pending is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "no pending protection to activate")
        self._current[direction] = pending
        self._pending[direction] = None

    def seal(self, records: Sequence[tuple[int, bytes]]) -> bytes:
        current = self._current[keyservice.WRITE]
        if current is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "seal without write protection")
        try:
            return current.seal(records)
        except protect.ProtectionError as e:
            raise KeyServiceError(e.alert, e.reason) from None

    def open(self, records: Sequence[bytes]) -> tuple[list[tuple[int, bytes]], int, str]:
        current = self._current[keyservice.READ]
        if current is None:
            raise KeyServiceError(suites.INTERNAL_ERROR, "open without read protection")
        return current.open(records)
