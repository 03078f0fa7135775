"""The key process against a network process taken over by a client (ARCHITECTURE MUST 6).

Rule: each test plays the attacker: it holds the network process's ends of a real key process's
pipes (the production LocalKeyService, jailed as in production when we are root) and sends what
an attacker would, raw frames included. It asserts that nothing comes back but public
certificates of configured files and values a handshake yields, that no signature over data
the attacker chose can be had, and that the key process ends on the first bad request, with no
answer to it.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
import time

import pytest
from testenv import is_root, our_command
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from tlswrapper import ipc, jail
from tlswrapper.exits import EXIT_FAILURE as EXIT_FATAL
from tlswrapper.keys.process import start_key_process
from tlswrapper.net.keyproxy import KeyProcessDied
from tlswrapper.keys.files import KeyFiles
from tlswrapper.tls.transcript import SERVER_PREFIX as CERTIFICATE_VERIFY_PREFIX
from tlswrapper.net.start import KeyProcessJail
from tlswrapper.tls import messages
from tlswrapper.tls import suites as s
from tlswrapper.tls.keyservice import READ, SENDER_CLIENT, WRITE, Candidate, KeyServiceError
from tlswrapper.tls.wire import handshake_message

# The calls the pipe had before it trusted nothing; their opcodes are gone or reused.
OLD_SIGN_LIKE = ("sign", "key_share", "derive13_handshake", "derive13_application")
SECRET_MARKERS = (b"PRIVATE KEY", b"root:", b"daemon:")


# --- the attacker's tools -----------------------------------------------------------------------

class Victim:
    """A real key process, configured as `tlswrapper -f ... -d ... -a ...` would start it,
    jailed as in production when we are root; `ks` is its PipeKeyService, whose pipe ends the
    attacker also writes to raw."""

    def __init__(self, files: KeyFiles) -> None:
        self.files = files
        if is_root() and os.path.isdir(jail.DEFAULT_JAIL_DIR):
            jail.prepare()
            key_jail = KeyProcessJail(None, jail.DEFAULT_JAIL_DIR)
        else:
            key_jail = None
        self.jailed = key_jail is not None
        self.ks, self.pid = start_key_process(key_jail, files, log=None)

    def raw(self, frame: bytes) -> None:
        """Write bytes on the request pipe (EPIPE: the key process is gone already)."""
        try:
            os.write(self.ks.wfd, frame)
        except BrokenPipeError:
            pass

    def call_raw(self, name: str, args: tuple) -> None:
        self.raw(ipc.encode(ipc.OPCODES[name], args))

    def ended_without_answer(self) -> bool:
        """The key process closed its answer pipe with nothing (more) on it and exited 111."""
        ready, _, _ = select.select([self.ks.rfd], [], [], 10)
        assert ready, "the key process neither answered nor ended"
        leftover = os.read(self.ks.rfd, 1 << 16)
        status = self.ks.close()
        return leftover == b"" and os.WIFEXITED(status) \
            and os.WEXITSTATUS(status) == EXIT_FATAL

    def close(self) -> None:
        self.ks.close()


@pytest.fixture
def site(pki, tmp_path):
    """A -f file, a -d directory with one host's file, an -a file, and, outside the
    configuration, another site's key and a file standing in for /etc/shadow."""
    certdir = tmp_path / "certdir"
    certdir.mkdir()
    shutil.copy(pki["ecdsa-p384"].path, certdir / "www.example.org")
    other = tmp_path / "other-site.pem"
    shutil.copy(pki["rsa-2048"].path, other)
    shadow = tmp_path / "shadow"
    shadow.write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\ndaemon:*:19000::::::\n")
    files = KeyFiles([("file", str(pki["ecdsa-p256"].path)), ("dir", str(certdir))],
                     str(pki.client_ca.path))
    return {"files": files, "certdir": certdir, "other": other, "shadow": shadow, "pki": pki,
            "f": str(pki["ecdsa-p256"].path), "host_file": str(certdir / "www.example.org")}


@pytest.fixture
def victim(site):
    v = Victim(site["files"])
    yield v
    v.close()


def x25519_share() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()


CLIENT_HELLO = handshake_message(s.HS_CLIENT_HELLO, b"\x03\x03" + b"c" * 200)


def server_hello_head(share_size: int = 32) -> bytes:
    """A ServerHello whose length counts the key share the key process appends."""
    body = b"\x03\x03" + b"s" * 32 + b"\x00\x13\x01\x00" + b"\x00\x28\x00\x33\x00\x24\x00\x1d"
    body += b"\x00\x20"
    return bytes([s.HS_SERVER_HELLO]) + (len(body) + share_size).to_bytes(3, "big") + body


def flight13(ks, client_auth=False):
    """The legitimate TLS 1.3 server flight: what a handshake yields."""
    cert_msg = handshake_message(s.HS_CERTIFICATE, b"\x00\x00\x00\x00")
    ee = handshake_message(s.HS_ENCRYPTED_EXTENSIONS, b"\x00\x00")
    head = server_hello_head()
    answer = ks.server_flight13(s.X25519, x25519_share(), 0x1301, s.ECDSA_SECP256R1_SHA256,
                                [CLIENT_HELLO], head, [ee, cert_msg], client_auth)
    return answer, head, [ee, cert_msg]


def to_tls13(v: Victim, site, client_auth=False):
    v.ks.read_anchor()
    v.ks.load([site["f"]])
    v.ks.select(0)
    return flight13(v.ks, client_auth)


# --- files: only what the configuration leads to ----------------------------------------------

@pytest.mark.parametrize("name", [
    "/etc/shadow", "shadow", "other", "../other-site.pem", "certdir/../other-site.pem",
    "certdir/www.example.org/..", "certdir/WWW.EXAMPLE.ORG", "certdir/www.example.org.",
    "certdir/.hidden", "certdir/:hidden", "certdir/a b", "certdir/x\x00y", "certdir/", "",
    "certdir//www.example.org", "/proc/self/fd/0", "certdir-link/www.example.org",
])
def test_hostile_network_process_cannot_load_a_file_outside_the_configuration(site, name):
    tmp = site["certdir"].parent
    (tmp / "certdir-link").symlink_to(site["certdir"]) if not (tmp / "certdir-link").exists() \
        else None
    names = {"shadow": str(site["shadow"]), "other": str(site["other"])}
    # Joined as strings: pathlib would normalize "//" away.
    path = names.get(name, name if name.startswith("/") or not name else f"{tmp}/{name}")
    v = Victim(site["files"])
    v.call_raw("load", ([path],))
    assert v.ended_without_answer()


def test_hostile_network_process_gets_only_public_chains_of_configured_files(site):
    v = Victim(site["files"])
    try:
        # Both names the configuration leads to: the -f file and the -d directory joined with
        # a valid host name; a host with no file is 'missing'.
        answer = v.ks.load([site["f"], site["host_file"]])
        assert [type(c) for c in answer] == [Candidate, Candidate]
        pki = site["pki"]
        assert answer[0].chain[0] == pki["ecdsa-p256"].der
        assert answer[1].chain[0] == pki["ecdsa-p384"].der
        for cand in answer:
            for der in cand.chain:
                x509.load_der_x509_certificate(der)      # certificates, nothing else
                assert not any(m in der for m in SECRET_MARKERS)
    finally:
        v.close()


def test_hostile_network_process_cannot_load_more_names_than_entries_or_twice(site):
    v = Victim(site["files"])
    v.call_raw("load", ([site["f"], site["f"], site["f"]],))
    assert v.ended_without_answer()
    v = Victim(site["files"])
    assert v.ks.load([site["f"]])
    v.call_raw("load", ([site["f"]],))                  # a replay
    assert v.ended_without_answer()


def test_hostile_network_process_symlinked_certificate_files_still_work(site, tmp_path):
    """ACME clients keep certificates behind symlinks: a configured name that is a symlink
    is the admin's choice and is followed; a -d host name cannot contain a slash."""
    link = tmp_path / "live.pem"
    link.symlink_to(site["pki"]["ecdsa-p256"].path)
    hostlink = site["certdir"] / "mail.example.org"
    hostlink.symlink_to(site["pki"]["rsa-2048"].path)
    v = Victim(KeyFiles([("file", str(link)), ("dir", str(site["certdir"]))]))
    try:
        answer = v.ks.load([str(link), str(hostlink)])
        assert [type(c) for c in answer] == [Candidate, Candidate]
    finally:
        v.close()


def test_hostile_network_process_certdir_fifo_does_not_block_the_key_process(site):
    fifo = site["certdir"] / "fifo.example.org"
    os.mkfifo(fifo)
    v = Victim(site["files"])
    try:
        started = time.monotonic()
        (answer,) = v.ks.load([str(fifo)])
        assert "not a regular file" in answer.reason
        assert time.monotonic() - started < 10       # a blocking open would hang forever
    finally:
        v.close()


# --- the anchor: read because it is configured, never named ---------------------------------------

def test_hostile_network_process_anchor_request_naming_a_file_ends_it(site):
    for path in ("/etc/shadow", str(site["shadow"]), site["f"]):
        v = Victim(site["files"])
        v.call_raw("read_anchor", (path,))
        assert v.ended_without_answer()


def test_hostile_network_process_anchor_gives_only_certificates(site):
    """Even an anchor file holding a private key (the server's PEM given to -a by mistake)
    gives back its certificates only."""
    v = Victim(KeyFiles([("file", site["f"])], site["f"]))
    try:
        pem = v.ks.read_anchor()
        assert b"PRIVATE KEY" not in pem
        assert x509.load_pem_x509_certificates(pem)
    finally:
        v.close()
    v = Victim(KeyFiles([("file", site["f"])]))             # no -a: no anchor call at all
    v.call_raw("read_anchor", ())
    assert v.ended_without_answer()


def test_hostile_network_process_anchor_after_load_or_twice_ends_it(site, victim):
    victim.ks.load([site["f"]])
    victim.call_raw("read_anchor", ())
    assert victim.ended_without_answer()
    v = Victim(site["files"])
    v.ks.read_anchor()
    v.call_raw("read_anchor", ())
    assert v.ended_without_answer()


# --- signatures: only over what the key process made itself -----------------------------------------

@pytest.mark.parametrize("name", OLD_SIGN_LIKE)
def test_hostile_network_process_has_no_raw_sign_or_secret_call(name):
    assert name not in ipc.METHODS


@pytest.mark.parametrize("opcode", [0, len(ipc.METHODS) + 1, 0x40, ipc.OP_OK, ipc.OP_ERR, 255])
def test_hostile_network_process_unknown_opcode_ends_it(site, opcode):
    v = Victim(site["files"])
    v.ks.load([site["f"]])
    v.raw(ipc.encode(opcode, (s.ECDSA_SECP256R1_SHA256, b"sign me")))
    assert v.ended_without_answer()


def test_hostile_network_process_tls13_signature_covers_the_key_process_share(site, victim):
    (share, cv, fin, records, client_fin), head, flight = to_tls13(victim, site)
    cv_msg = messages.parse_certificate_verify(cv[4:])
    h = hashlib.sha256(CLIENT_HELLO + head + share + b"".join(flight)).digest()
    public = site["pki"]["ecdsa-p256"].cert.public_key()
    public.verify(cv_msg.signature, CERTIFICATE_VERIFY_PREFIX + h, ec.ECDSA(hashes.SHA256()))
    # The share is a fresh X25519 key of the key process's (its private half never leaves).
    x25519.X25519PublicKey.from_public_bytes(share)


def test_hostile_network_process_tls12_signature_covers_the_key_process_share(site, victim):
    victim.ks.load([site["f"]])
    victim.ks.select(0)
    crandom, srandom = b"\x20" * 32, b"\x20" * 32       # as chosen as an attacker likes
    public, sig = victim.ks.server_key_exchange12(s.X25519, s.ECDSA_SECP256R1_SHA256,
                                                   crandom, srandom)
    params = messages.ecdhe_params(s.X25519, public)
    site["pki"]["ecdsa-p256"].cert.public_key().verify(
        sig, crandom + srandom + params, ec.ECDSA(hashes.SHA256()))
    # One signature per connection: a second flight call, with or without a select, ends it.
    victim.ks.select(0)
    with pytest.raises(KeyProcessDied):
        victim.ks.server_key_exchange12(s.X25519, s.ECDSA_SECP256R1_SHA256, crandom, srandom)


@pytest.mark.parametrize("hello", ["not-a-server-hello", "share-not-last", "no-client-hello"])
def test_hostile_network_process_flight_refuses_a_transcript_without_its_share(site, hello):
    v = Victim(site["files"])
    try:
        v.ks.load([site["f"]])
        v.ks.select(0)
        head, transcript = server_hello_head(), [CLIENT_HELLO]
        if hello == "not-a-server-hello":
            head = b"\x14" + head[1:]                # a Finished-looking message
        elif hello == "share-not-last":
            head = server_hello_head(share_size=0)
        else:
            transcript = [b"\x0b" + CLIENT_HELLO[1:]]   # a Certificate first
        with pytest.raises(KeyServiceError):
            v.ks.server_flight13(s.X25519, x25519_share(), 0x1301, s.ECDSA_SECP256R1_SHA256,
                                 transcript, head, [b"\x08\x00\x00\x00"], False)
        # After a failed flight nothing but an alert could be sealed; a retry ends it.
        v.ks.select(0)
        with pytest.raises(KeyProcessDied):
            v.ks.server_flight13(s.X25519, x25519_share(), 0x1301, s.ECDSA_SECP256R1_SHA256,
                                 [CLIENT_HELLO], server_hello_head(), [], False)
    finally:
        v.close()


# --- order: every call out of order ends it -----------------------------------------------------------

VALID_ARGS = {
    "load": lambda site: ([site["f"]],),
    "select": lambda site: (0,),
    "derive12": lambda site: (s.TLS12, 0xC02B, x25519_share(), b"c" * 32, b"s" * 32, None,
                              False),
    "finished12": lambda site: (SENDER_CLIENT, b"h" * 32),
    "finished13": lambda site: (SENDER_CLIENT, b"h" * 32),
    "key_update": lambda site: (READ,),
    "activate": lambda site: (READ,),
    "seal": lambda site: ([(s.APPLICATION_DATA, b"x")],),
    "open": lambda site: ([b"\x17\x03\x03\x00\x11" + b"x" * 17],),
    "read_anchor": lambda site: (),
    "server_flight13": lambda site: (s.X25519, x25519_share(), 0x1301,
                                     s.ECDSA_SECP256R1_SHA256, [CLIENT_HELLO],
                                     server_hello_head(), [], False),
    "server_key_exchange12": lambda site: (s.X25519, s.ECDSA_SECP256R1_SHA256, b"c" * 32,
                                           b"s" * 32),
    "seal_finished12": lambda site: (b"h" * 32,),
    "derive12_finished": lambda site: (s.TLS12, 0xC02B, x25519_share(), b"c" * 32, b"s" * 32,
                                       [b"ch"], True, False),
    "ready": lambda site: (),
}
# What is allowed first (from a fresh key process): everything else must end it.
ALLOWED_FIRST = {"load", "read_anchor", "ready"}
# What is allowed right after load.
ALLOWED_AFTER_LOAD = {"select"}


def test_hostile_network_process_table_covers_every_call():
    assert set(VALID_ARGS) == set(ipc.METHODS)


@pytest.mark.parametrize("name", sorted(set(ipc.METHODS) - ALLOWED_FIRST))
def test_hostile_network_process_call_before_load_ends_it(site, name):
    v = Victim(site["files"])
    v.call_raw(name, VALID_ARGS[name](site))
    assert v.ended_without_answer()


@pytest.mark.parametrize("name", sorted(set(ipc.METHODS) - ALLOWED_AFTER_LOAD))
def test_hostile_network_process_call_after_load_without_select_ends_it(site, name):
    v = Victim(site["files"])
    v.ks.read_anchor()
    v.ks.load([site["f"]])
    v.call_raw(name, VALID_ARGS[name](site))
    assert v.ended_without_answer()


@pytest.mark.parametrize("name", ["derive12", "derive12_finished", "finished12",
                                  "seal_finished12", "server_key_exchange12", "load", "ready",
                                  "select", "activate", "read_anchor"])
def test_hostile_network_process_tls12_call_in_tls13_ends_it(site, name):
    v = Victim(site["files"])
    to_tls13(v, site)
    args = (WRITE,) if name == "activate" else VALID_ARGS[name](site)
    v.call_raw(name, args)
    assert v.ended_without_answer()


def test_hostile_network_process_client_finished13_without_client_auth_ends_it(site, victim):
    to_tls13(victim, site, client_auth=False)
    victim.call_raw("finished13", (SENDER_CLIENT, b"h" * 32))
    assert victim.ended_without_answer()


def test_hostile_network_process_server_finished_oracle_is_closed(site):
    v = Victim(site["files"])
    to_tls13(v, site, client_auth=True)
    v.call_raw("finished13", (1, b"h" * 32))             # the server's Finished: never asked
    assert v.ended_without_answer()
    v = Victim(site["files"])
    to_tls13(v, site, client_auth=True)
    assert len(v.ks.finished13(SENDER_CLIENT, b"h" * 32)) == 32
    v.call_raw("finished13", (SENDER_CLIENT, b"h" * 32))  # a replay
    assert v.ended_without_answer()


@pytest.mark.parametrize("name", ["open", "seal", "activate", "seal_finished12", "finished12"])
def test_hostile_network_process_tls12_records_before_keys_end_it(site, name):
    v = Victim(site["files"])
    v.ks.load([site["f"]])
    v.ks.select(0)
    v.ks.server_key_exchange12(s.X25519, s.ECDSA_SECP256R1_SHA256, b"c" * 32, b"s" * 32)
    v.call_raw(name, VALID_ARGS[name](site))
    assert v.ended_without_answer()


def test_hostile_network_process_key_update_flood_is_bounded_by_records(site, victim):
    """Each KeyUpdate needs a record in its direction since the last key change: the
    KeyUpdate message itself. A flood of key_update calls ends the key process."""
    to_tls13(victim, site)
    victim.ks.activate(READ)
    victim.ks.seal([(s.APPLICATION_DATA, b"x")])
    victim.ks.key_update(WRITE)
    victim.ks.seal([(s.APPLICATION_DATA, b"y")])
    victim.ks.key_update(WRITE)
    victim.ks.key_update(WRITE)               # no record since: the flood stops here
    with pytest.raises(KeyProcessDied):
        victim.ks.seal([(s.APPLICATION_DATA, b"z")])


def test_hostile_network_process_key_update_read_needs_an_opened_record(site, victim):
    to_tls13(victim, site)
    victim.ks.activate(READ)
    victim.call_raw("key_update", (READ,))
    assert victim.ended_without_answer()


def test_hostile_network_process_after_a_failure_only_an_alert(site, victim):
    victim.ks.load([site["f"]])
    victim.ks.select(0)
    with pytest.raises(KeyServiceError) as e:         # an invalid client share
        victim.ks.server_flight13(s.X25519, b"\x00" * 32, 0x1301, s.ECDSA_SECP256R1_SHA256,
                                  [CLIENT_HELLO], server_hello_head(), [], False)
    assert e.value.alert == s.ILLEGAL_PARAMETER
    victim.call_raw("select", (0,))
    assert victim.ended_without_answer()


# --- frames: sizes, truncation, junk ------------------------------------------------------------------

@pytest.mark.parametrize("name,size", [("select", 4096), ("load", 1 << 20),
                                       ("server_key_exchange12", 1 << 16),
                                       ("seal", ipc.MAX_FRAME + 1), ("ready", 2000)])
def test_hostile_network_process_oversized_frame_ends_it_before_its_body(site, name, size):
    v = Victim(site["files"])
    v.raw(ipc.HEADER.pack(size, ipc.OPCODES[name]))     # the header alone: no body follows
    assert v.ended_without_answer()


@pytest.mark.parametrize("frame", [
    b"\x00\x00\x00\x10" + bytes([1]) + b"U",          # cut short, then EOF
    b"\x00\x00\x00\x02" + bytes([1]) + b"X\x00",       # unknown tag
    ipc.encode(1, [["/etc/shadow"]]),                  # arguments not a tuple
    ipc.encode(1, (["/etc/shadow"],)) + b"junk",       # a bad request after a good header
    b"\x00",                                           # a partial header, then EOF
])
def test_hostile_network_process_malformed_frames_end_it(site, frame):
    v = Victim(site["files"])
    v.ks.ready()       # serving: an EOF during its start-up is the network process leaving
    v.raw(frame)
    os.close(v.ks.wfd)          # EOF after the frame
    v.ks.wfd = os.open(os.devnull, os.O_WRONLY)
    assert v.ended_without_answer()


def test_hostile_network_process_deep_or_long_values_end_it(site):
    v = Victim(site["files"])
    deep = b"U\x00\x00\x00\x01" * (ipc.MAX_DEPTH + 2) + b"N"
    v.raw(ipc.HEADER.pack(len(deep), ipc.OPCODES["load"]) + deep)
    assert v.ended_without_answer()
    v = Victim(site["files"])
    many = b"U\xff\xff\xff\xff"
    v.raw(ipc.HEADER.pack(len(many), ipc.OPCODES["load"]) + many)
    assert v.ended_without_answer()


# --- the key process itself: jailed, and nothing of it leaks ----------------------------------------

@pytest.mark.needs_root
def test_hostile_network_process_faces_a_jailed_key_process(site, victim):
    victim.ks.load([site["f"]])        # the key process jails once the files are read
    with open(f"/proc/{victim.pid}/status") as f:
        status = f.read()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert all(int(u) >= jail.RANGE_START for u in uids)
    assert os.readlink(f"/proc/{victim.pid}/root") == jail.DEFAULT_JAIL_DIR
    # A load of another site's file is refused outright, even though the jail would stop
    # it anyway: the refusal does not depend on the jail.
    victim.call_raw("select", (5,))     # a name it did not load: ends it
    assert victim.ended_without_answer()


def test_hostile_network_process_answers_carry_no_file_content(site):
    """Everything a run of legitimate calls gets back contains neither the private key (its
    PEM lines or its scalar) nor anything of files outside the configuration."""
    v = Victim(site["files"])
    try:
        answers = [v.ks.read_anchor()]
        answers += [der for c in v.ks.load([site["f"], site["host_file"]]) for der in c.chain]
        v.ks.select(0)
        answers += list(flight13(v.ks)[0])
        v.ks.activate(READ)
        answers.append(v.ks.seal([(s.APPLICATION_DATA, b"hello")]))
    finally:
        v.close()
    blob = b"".join(answers)
    pem = site["pki"]["ecdsa-p256"].path.read_bytes()
    key_lines = [line for line in pem.split(b"-----BEGIN")[1].splitlines()[1:]
                 if len(line) > 16 and b"-----" not in line] if b"PRIVATE KEY" in \
        pem.split(b"-----END")[0] else []
    for line in key_lines:
        assert line not in blob
    key = site["pki"]["ecdsa-p256"].key
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    assert scalar not in blob
    assert b"secret-hash" not in blob and b"PRIVATE KEY" not in blob


# --- not regular files at start: one line, exit 100 ---------------------------------------------------

@pytest.mark.parametrize("option", ["-f", "-a"])
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_hostile_network_process_files_that_are_not_regular_refused_at_start(pki, tmp_path,
                                                                             option, kind):
    path = tmp_path / "odd"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/null"
    else:
        path.mkdir()
    args = [our_command(), option, str(path)]
    if option == "-a":
        args = [our_command(), "-f", str(pki["ecdsa-p256"].path), "-a", str(path)]
    proc = subprocess.run(args + ["true"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 100
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines
    assert "Traceback" not in proc.stderr.decode()


@pytest.mark.parametrize("replay", [("derive12_finished", None), ("derive12", None),
                                    ("activate", (READ,)), ("activate", (WRITE,))])
def test_hostile_network_process_tls12_replays_end_it(site, replay):
    """Once the TLS 1.2 keys are made (and READ activated), making them again or activating
    a direction a second time ends the key process."""
    v = Victim(site["files"])
    v.ks.load([site["f"]])
    v.ks.select(0)
    v.ks.server_key_exchange12(s.X25519, s.ECDSA_SECP256R1_SHA256, b"c" * 32, b"s" * 32)
    v.ks.derive12_finished(s.TLS12, 0xC02B, x25519_share(), b"c" * 32, b"s" * 32,
                           [CLIENT_HELLO], True, False)
    v.ks.activate(READ)
    v.ks.seal([(s.APPLICATION_DATA, b"x")])        # the deferred activate went with it
    name, args = replay
    v.call_raw(name, args if args is not None else VALID_ARGS[name](site))
    assert v.ended_without_answer()
