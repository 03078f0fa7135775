"""The jail: an unused uid/gid, chroot into an empty directory, no files, no forks, no core,
capped address space, not dumpable. Rule: every step is checked afterwards, any failure raises
JailError (the caller exits 111), and nothing is loaded from disk once the jail has begun.

Order in jail(): account -> rlimits -> chroot + chdir -> setgroups, setgid, setuid -> not
dumpable -> verification. The account is looked up first (NSS may load libraries and read
/etc), the rlimits are set while we are still root (so the hard limits can be lowered to 0),
chroot needs root, the ids change last of the privileged steps, and PR_SET_DUMPABLE comes after
setuid because changing credentials resets the dumpable flag.
"""

from __future__ import annotations

import errno
import os
import pwd
import resource
import stat

from tlswrapper.tls.frozen import Frozen, init

# ctypes is imported by prepare(), not here: the CLI imports this module for DEFAULT_JAIL_DIR
# and the per-connection commands (tlswrapper-tcp, -smtp) need no prctl before their jail.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes

DEFAULT_JAIL_DIR = "/var/lib/tlswrapper/empty"

# The random per-connection ids. systemd's table of uid ranges (docs/UIDS-GIDS.md) marks
# 0x70000000..0x7FFDFFFF (1879048192..2147352575) as unused: above the container ranges
# handed out by systemd-nspawn (0x00080000..0x6FFFFFFF), below the "foreign" range
# (0x7FFE0000..0x7FFEFFFF) and below 2^31, where tools that store a uid in a signed int break.
# /etc/login.defs' UID_MAX (60000 here) and the subuid ranges (100000 + 65536*n) are far below.
# The id is RANGE_START + (random(0..62) << 22 | pid): the pid (< 2^22, the kernel's
# PID_MAX_LIMIT) makes two live jails in one pid namespace always differ, the random part
# makes a reused pid unlikely to get its predecessor's id.
RANGE_START = 0x70000000
RANGE_END = 0x7FFDFFFF
_PID_BITS = 22
_RANDOM_SLOTS = (RANGE_END - RANGE_START + 1) >> _PID_BITS   # 63 full slots of 2^22

# Address space cap. Measured with Python 3.11 and cryptography 46-50: a process with
# cryptography and the engine imported has a VmSize of about 38 MiB; after X25519, P-521,
# RSA-4096 signing, ML-KEM and AES-GCM/ChaCha20 on 16 KiB records plus 8 MiB of buffers, about
# 46 MiB; the smallest cap that still ran all of it was 48 MiB. The C version caps at 128 MiB;
# we take the same 128 MiB floor, and for a process forked from a big parent (the built-in
# listener, a test runner) its current size plus 64 MiB, since the limit counts what the
# parent already had mapped.
AS_FLOOR = 128 << 20
AS_MARGIN = 64 << 20

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


class JailError(Exception):
    """The jail could not be built or verified; the message is one line for the log."""


class Account(Frozen):
    __slots__ = ("name", "uid", "gid")
    name: str | None      # None for a random per-connection id
    uid: int
    gid: int

    def __init__(self, name: str | None, uid: int, gid: int) -> None:
        init(self, "name", name)
        init(self, "uid", uid)
        init(self, "gid", gid)


_libc: ctypes.CDLL | None = None


def prepare() -> None:
    """Load what the jailed process needs while files can still be opened. Idempotent.

    - the libc handle for prctl.
    Not cryptography's OpenSSL backend module (which its Rust code imports lazily on the
    first X25519 key generation or ECDSA signature, an import that fails with EMFILE in the
    jail): the modules that use cryptography import it themselves (keys/local.py in the key
    process, clientcert.py for -a), so that a network process without -a does not pay about
    20 ms and several MiB for it.
    jail() calls it too, before any limit is set."""
    global _libc
    if _libc is not None:
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                               ctypes.c_ulong]
        libc.prctl.restype = ctypes.c_int
        # A first call, so that nothing about calling it is left to do lazily.
        if libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (ImportError, OSError, AttributeError) as e:
        raise JailError(f"unable to load libc for prctl ({e})") from e
    _libc = libc


def loaded_libc() -> ctypes.CDLL | None:
    """The libc handle prepare() made, or None before it (see keys/process.py)."""
    return _libc


def prctl(option: int, arg: int = 0) -> int:
    prepare()
    if _libc is None:          # prepare() sets it or raises; this keeps the type checker sure
        raise JailError("libc not loaded")
    ret = _libc.prctl(option, arg, 0, 0, 0)
    if ret < 0:
        import ctypes       # loaded by prepare() already
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def get_dumpable() -> int:
    return prctl(PR_GET_DUMPABLE)


def lookup_account(name: str) -> Account:
    """The account named by -j (or -u): must exist and have a non-zero uid and gid."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise JailError(f"unable to find account '{name}' (no such user)") from None
    except (OSError, UnicodeError, ValueError) as e:
        raise JailError(f"unable to find account '{name}' ({e})") from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise JailError(f"account '{name}' has uid or gid 0, refused")
    return Account(name, pw.pw_uid, pw.pw_gid)


def _randbelow(n: int) -> int:
    """Uniform in [0, n) from the kernel's CSPRNG, as secrets.randbelow (whose import, with
    random, hmac and base64, costs a new interpreter several ms): rejection sampling over
    the smallest power of two >= n."""
    bits = (n - 1).bit_length()
    nbytes = (bits + 7) // 8
    while True:
        r = int.from_bytes(os.urandom(nbytes), "big") >> (8 * nbytes - bits)
        if r < n:
            return r


def random_account() -> Account:
    """A fresh uid (= gid) in the unused range, unique among this namespace's live jails."""
    pid = os.getpid()
    if pid >= 1 << _PID_BITS:
        # Not possible on Linux (PID_MAX_LIMIT is 2^22); refuse rather than collide.
        raise JailError(f"pid {pid} out of range for a jail id")
    ident = RANGE_START + ((_randbelow(_RANDOM_SLOTS) << _PID_BITS) | pid)
    return Account(None, ident, ident)


def choose_account(account: str | Account | None) -> Account:
    if account is None:
        return random_account()
    if isinstance(account, Account):
        if account.uid == 0 or account.gid == 0:
            raise JailError("jail account has uid or gid 0, refused")
        return account
    return lookup_account(account)


def _reason(e: OSError) -> str:
    return os.strerror(e.errno).lower() if e.errno else str(e)


def _vm_size() -> int:
    """The current address space size in bytes (VmSize), or 0 when /proc is not readable."""
    try:
        with open(f"/proc/{os.getpid()}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def address_space_limit() -> int:
    return max(AS_FLOOR, _vm_size() + AS_MARGIN)


def _check_jail_dir(jail_dir: str) -> os.stat_result:
    try:
        st = os.stat(jail_dir)
    except OSError as e:
        raise JailError(f"unable to chroot to {jail_dir} ({_reason(e)})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise JailError(f"unable to chroot to {jail_dir} (not a directory)")
    if st.st_mode & 0o022 or st.st_uid != 0:
        raise JailError(f"jail directory {jail_dir} must be owned by root and not writable "
                        f"by group or others")
    try:
        with os.scandir(jail_dir) as it:
            if any(True for _ in it):
                raise JailError(f"jail directory {jail_dir} is not empty")
    except OSError as e:
        raise JailError(f"unable to read jail directory {jail_dir} ({e.strerror})") from None
    return st


class Plan:
    """What jail() works out before its first privileged step (the account, the jail
    directory checked, the address space cap), worked out ahead of time by plan()."""
    __slots__ = ("account", "root_st", "limit", "jail_dir")

    def __init__(self, account: Account, root_st: os.stat_result, limit: int,
                 jail_dir: str) -> None:
        self.account = account
        self.root_st = root_st
        self.limit = limit
        self.jail_dir = jail_dir


def plan(account: str | Account | None = None, jail_dir: str = DEFAULT_JAIL_DIR, *,
         as_limit: int | None = None) -> Plan:
    """jail()'s preparation, done now (a key process waiting for its first request does it
    while no client waits). Raises JailError. jail() still checks after chroot that "/" is the
    directory checked here."""
    prepare()
    acct = choose_account(account)
    root_st = _check_jail_dir(jail_dir)
    limit = as_limit if as_limit is not None else address_space_limit()
    return Plan(acct, root_st, limit, jail_dir)


def jail(account: str | Account | None = None, jail_dir: str = DEFAULT_JAIL_DIR, *,
         as_limit: int | None = None, files: int = 0, ahead: Plan | None = None) -> Account:
    """Jail the calling process for good; returns the account it now runs as.

    `account` is the -j name (or an Account looked up before), None for a random id. Raises
    JailError on any failure: the process is then in an unknown half-jailed state and must
    exit (111) without touching client data. `files` > 0 leaves RLIMIT_NOFILE at that value
    (hard and soft) for one more descriptor to arrive (the listener's spare receives its
    client socket jailed); close_files() then lowers it to 0. `ahead`: plan() made earlier
    for this account and directory (the arguments are then taken from it)."""
    if ahead is None:
        ahead = plan(account, jail_dir, as_limit=as_limit)
    acct, root_st, limit, jail_dir = ahead.account, ahead.root_st, ahead.limit, ahead.jail_dir
    step = ""
    try:
        step = "setrlimit RLIMIT_AS"
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        step = "setrlimit RLIMIT_CORE"
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        step = "setrlimit RLIMIT_NPROC"
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        step = "setrlimit RLIMIT_NOFILE"
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
        step = f"chroot to {jail_dir}"
        os.chroot(jail_dir)
        step = "chdir to /"
        os.chdir("/")
        step = f"setgroups([{acct.gid}])"
        os.setgroups([acct.gid])
        step = f"setgid({acct.gid})"
        os.setresgid(acct.gid, acct.gid, acct.gid)
        step = f"setuid({acct.uid})"
        os.setresuid(acct.uid, acct.uid, acct.uid)
        step = "prctl PR_SET_DUMPABLE"
        prctl(PR_SET_DUMPABLE, 0)
    except OSError as e:
        raise JailError(f"unable to {step} ({_reason(e)})") from None
    except ValueError as e:       # setrlimit with a value above the current hard limit
        raise JailError(f"unable to {step} ({e})") from None
    _verify(acct, root_st, limit, files)
    return acct


def close_files() -> None:
    """The last step of a jail(files=N): RLIMIT_NOFILE to 0, checked. Raises JailError."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (0, 0))
    except (OSError, ValueError) as e:
        raise JailError(f"unable to setrlimit RLIMIT_NOFILE ({e})") from None
    if resource.getrlimit(resource.RLIMIT_NOFILE) != (0, 0):
        raise JailError("jail verification failed: RLIMIT_NOFILE is not 0")


def _verify(acct: Account, root_st: os.stat_result, limit: int, files: int = 0) -> None:
    """Check that each step took effect; trust nothing that only returned without error."""
    def fail(what: str) -> JailError:
        return JailError(f"jail verification failed: {what}")

    try:
        if os.getresuid() != (acct.uid,) * 3:
            raise fail(f"uids are {os.getresuid()}")
        if os.getresgid() != (acct.gid,) * 3:
            raise fail(f"gids are {os.getresgid()}")
        if os.getgroups() != [acct.gid]:
            raise fail(f"groups are {os.getgroups()}")
        for res, want in ((resource.RLIMIT_NOFILE, files), (resource.RLIMIT_NPROC, 0),
                          (resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, limit)):
            if resource.getrlimit(res) != (want, want):
                raise fail(f"rlimit {res} is {resource.getrlimit(res)}")
        st = os.stat("/")
        if (st.st_dev, st.st_ino) != (root_st.st_dev, root_st.st_ino):
            raise fail("/ is not the jail directory")
        if os.getcwd() != "/":
            raise fail("working directory is not /")
        if get_dumpable() != 0:
            raise fail("process is dumpable")
    except OSError as e:
        raise fail(str(e)) from None
    # Root must be gone for good: getting uid 0 back has to fail.
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise fail("setuid(0) succeeded")
    try:
        os.setgid(0)
    except PermissionError:
        pass
    else:
        raise fail("setgid(0) succeeded")


def make_jail_dir(path: str = DEFAULT_JAIL_DIR) -> str:
    """Create (or fix) the jail directory: empty, owned by root, mode 0555. For install/tests.

    Raises OSError when it cannot, JailError when the directory exists but is not empty."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, 0o555)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} exists and is not a directory")
    if os.listdir(path):
        raise JailError(f"jail directory {path} is not empty")
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(path, 0, 0)
    os.chmod(path, 0o555)       # mkdir's mode is masked by the umask; set it exactly
    return path
