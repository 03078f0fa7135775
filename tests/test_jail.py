"""Tests of the jail on live processes: a forked child jails itself, reports from inside over a
pipe, and the parent inspects it through /proc while it is still alive."""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
from pathlib import Path
from typing import Any, Callable

import pytest

# Everything the jailed child uses must be imported before the jail: nothing loads after it
# (cryptography's OpenSSL backend module too: its Rust code imports it on first use, as
# keys/local.py knows).
import cryptography.hazmat.backends.openssl.backend  # noqa: F401
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

try:
    from cryptography.hazmat.primitives.asymmetric import mlkem
except ImportError:            # older cryptography: the ML-KEM check is skipped
    mlkem = None  # type: ignore[assignment]

from tlswrapper import jail as jailmod
from tlswrapper.jail import (AS_FLOOR, RANGE_END, RANGE_START, Account, JailError, jail,
                             make_jail_dir, prepare, random_account)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the jail needs root (chroot, setuid)")


@pytest.fixture
def jail_dir(tmp_path: Path) -> str:
    return make_jail_dir(str(tmp_path / "empty"))


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def run_jailed(jail_dir: str, inside: Callable[[], dict[str, Any]],
               outside: Callable[[int], dict[str, Any]] | None = None,
               account: str | Account | None = None,
               files: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fork; the child jails (`files`: jail()'s), runs `inside`, reports JSON, then waits until
    the parent has run `outside(pid)` on the live process. Returns (inside report, outside
    report)."""
    prepare()
    report_r, report_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(report_r)
            os.close(hold_w)
            try:
                acct = jail(account, jail_dir, files=files)
                result = {"ok": True, "uid": acct.uid, "gid": acct.gid, **inside()}
            except BaseException as e:        # report everything; a child must not escape
                result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            os.write(report_w, json.dumps(result).encode())
            os.close(report_w)
            os.read(hold_r, 1)                # stay alive until the parent has looked
        except BaseException:
            status = 1
        os._exit(status)
    os.close(report_w)
    os.close(hold_r)
    try:
        report = json.loads(_read_all(report_r))
        seen = outside(pid) if outside and report.get("ok") else {}
    finally:
        os.close(report_r)
        os.close(hold_w)
        os.waitpid(pid, 0)
    return report, seen


def _inside_checks() -> dict[str, Any]:
    r: dict[str, Any] = {}
    r["getuid"], r["getgid"], r["groups"] = os.getuid(), os.getgid(), os.getgroups()
    r["passwd_exists"] = os.path.exists("/etc/passwd")
    try:
        open("/etc/passwd", "rb").close()
        r["open"] = "opened"
    except OSError as e:
        r["open"] = e.errno
    try:
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        r["fork"] = "forked"
    except OSError as e:
        r["fork"] = e.errno
    try:
        socket.socket().close()
        r["socket"] = "created"
    except OSError as e:
        r["socket"] = e.errno
    try:
        os.setuid(0)
        r["setuid0"] = "succeeded"
    except OSError as e:
        r["setuid0"] = e.errno
    r["dumpable"] = jailmod.get_dumpable()
    r["cwd"] = os.getcwd()
    r["root_nlink"] = os.stat("/").st_nlink   # 2: an empty directory (listdir needs an fd)
    return r


def _inside_crypto() -> dict[str, Any]:
    a, b = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    shared_ok = a.exchange(b.public_key()) == b.exchange(a.public_key())
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, b"x" * 16384, b"ad")
    opened_ok = AESGCM(key).decrypt(nonce, sealed, b"ad") == b"x" * 16384
    k = ec.generate_private_key(ec.SECP256R1())
    sig = k.sign(b"data", ec.ECDSA(hashes.SHA256()))
    k.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA256()))
    chacha = ChaCha20Poly1305(os.urandom(32))
    chacha_ok = chacha.decrypt(nonce, chacha.encrypt(nonce, b"y" * 100, None), None) == b"y" * 100
    mlkem_ok = True
    if mlkem is not None:
        dk = mlkem.MLKEM768PrivateKey.generate()
        secret, ct = dk.public_key().encapsulate()
        mlkem_ok = dk.decapsulate(ct) == secret
    return {"x25519": shared_ok, "aesgcm": opened_ok, "ecdsa": True, "chacha": chacha_ok,
            "mlkem": mlkem_ok}


def _outside(pid: int) -> dict[str, Any]:
    limits = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        parts = line.split()
        # "Max open files  0  0  files": the name is all words before the two numbers
        for i in range(len(parts) - 1):
            if parts[i].isdigit() or parts[i] == "unlimited":
                limits[" ".join(parts[:i])] = (parts[i], parts[i + 1])
                break
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {
        "root": os.readlink(f"/proc/{pid}/root"),
        "limits": limits,
        "Uid": status["Uid"].split(), "Gid": status["Gid"].split(),
        "Groups": status["Groups"].split(),
        # The files in /proc/PID of a process that is not dumpable are owned by root, whatever
        # its uid (the directory itself keeps the uid): the outside view of PR_SET_DUMPABLE 0.
        "proc_owner": os.stat(f"/proc/{pid}/status").st_uid,
    }


@needs_root
def test_jail_from_inside_and_outside(jail_dir: str) -> None:
    inside, outside = run_jailed(jail_dir, _inside_checks, _outside)
    assert inside["ok"], inside
    uid, gid = inside["uid"], inside["gid"]
    assert RANGE_START <= uid <= RANGE_END and RANGE_START <= gid <= RANGE_END
    assert (inside["getuid"], inside["getgid"], inside["groups"]) == (uid, gid, [gid])
    assert inside["passwd_exists"] is False
    assert inside["open"] != "opened"
    assert inside["fork"] != "forked"
    assert inside["socket"] != "created"
    assert inside["setuid0"] != "succeeded"
    assert inside["dumpable"] == 0
    assert inside["cwd"] == "/" and inside["root_nlink"] == 2

    assert outside["root"] == os.path.realpath(jail_dir)
    lim = outside["limits"]
    assert lim["Max open files"] == ("0", "0")
    assert lim["Max processes"] == ("0", "0")
    assert lim["Max core file size"] == ("0", "0")
    cap = int(lim["Max address space"][0])
    assert cap >= AS_FLOOR and lim["Max address space"][1] == str(cap)
    assert outside["Uid"] == [str(uid)] * 4       # real, effective, saved, filesystem
    assert outside["Gid"] == [str(gid)] * 4
    assert outside["Groups"] == [str(gid)]
    assert outside["proc_owner"] == 0 != uid


@needs_root
def test_crypto_works_inside_the_jail(jail_dir: str) -> None:
    inside, _ = run_jailed(jail_dir, _inside_crypto)
    assert inside == {**inside, "ok": True, "x25519": True, "aesgcm": True, "ecdsa": True,
                      "chacha": True, "mlkem": True}


@needs_root
def test_two_jails_get_different_ids(jail_dir: str) -> None:
    a, _ = run_jailed(jail_dir, dict)
    b, _ = run_jailed(jail_dir, dict)
    assert a["ok"] and b["ok"]
    assert a["uid"] != b["uid"] and a["gid"] != b["gid"]


@needs_root
def test_named_jail_account(jail_dir: str) -> None:
    inside, outside = run_jailed(jail_dir, _inside_checks, _outside, account="nobody")
    assert inside["ok"], inside
    assert inside["getuid"] == 65534 and outside["Uid"] == ["65534"] * 4


@needs_root
@pytest.mark.parametrize("account,msg", [("root", "uid or gid 0"),
                                         ("no-such-user-xyz", "no such user")])
def test_bad_jail_accounts(jail_dir: str, account: str, msg: str) -> None:
    inside, _ = run_jailed(jail_dir, dict, account=account)
    assert not inside["ok"] and msg in inside["error"]


@needs_root
def test_missing_or_writable_jail_dir_is_fatal(tmp_path: Path) -> None:
    inside, _ = run_jailed(str(tmp_path / "missing"), dict)
    assert not inside["ok"] and "JailError" in inside["error"]
    writable = tmp_path / "writable"
    writable.mkdir(mode=0o777)
    writable.chmod(0o777)
    inside, _ = run_jailed(str(writable), dict)
    assert not inside["ok"] and "writable" in inside["error"]


def test_not_root_is_fatal(tmp_path: Path) -> None:
    """Without root (here: a child that became nobody) the jail cannot be built: JailError."""
    d = tmp_path / "empty"
    d.mkdir()
    if os.geteuid() != 0:
        with pytest.raises(JailError):
            jail(None, str(d))
        return
    make_jail_dir(str(d))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(65534, 65534, 65534)
            os.setgroups([65534])
            os.setresuid(65534, 65534, 65534)
            try:
                jail(None, str(d))
                msg = "jailed"
            except JailError as e:
                msg = f"JailError: {e}"
        except BaseException as e:
            msg = repr(e)
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    msg = _read_all(r).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert msg.startswith("JailError: unable to chroot"), msg


def test_random_account_range() -> None:
    for _ in range(200):
        a = random_account()
        assert RANGE_START <= a.uid <= RANGE_END and a.uid == a.gid
        assert (a.uid - RANGE_START) & ((1 << 22) - 1) == os.getpid()


def test_limits_of_this_process_untouched() -> None:
    # Only jailed children change their limits; the test process itself is unchanged.
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0


@needs_root
def test_make_jail_dir(tmp_path: Path) -> None:
    path = str(tmp_path / "a" / "empty")
    assert make_jail_dir(path) == path
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o555 and (st.st_uid, st.st_gid) == (0, 0)
    os.chmod(path, 0o700)
    make_jail_dir(path)                       # fixes the mode of an existing directory
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o555
    os.chmod(path, 0o755)
    Path(path, "f").touch()
    with pytest.raises(JailError):
        make_jail_dir(path)


def _files_then_closed() -> dict[str, Any]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    r, w = os.pipe()            # a descriptor can still arrive (numbers below the limit)
    os.close(r)
    os.close(w)
    jailmod.close_files()
    after = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        os.pipe()
        more = True
    except OSError:
        more = False
    return {"before": list(before), "after": list(after), "more": more}


@needs_root
def test_jail_with_files_left_then_closed(jail_dir: str) -> None:
    """The listener's spare: jailed with RLIMIT_NOFILE still 16 (its client socket must still
    arrive), then close_files() drops it to 0 before the first client byte."""
    result, _ = run_jailed(jail_dir, _files_then_closed, files=16)
    del result["uid"], result["gid"]
    assert result == {"ok": True, "before": [16, 16], "after": [0, 0], "more": False}
