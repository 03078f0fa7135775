"""Setting up one connection: its key process, prog waiting for the go-ahead and the engine,
started before the client is known (Prepared, also a listener's spare); then the jail and the
relay (Prepared.serve); and run(), the whole of tlswrapper's network process under tcpserver.

Rule: the key process and prog are started, and everything they need opened, before this
process jails itself; from the jail on, no file is opened and nothing is imported.
"""

from __future__ import annotations

import os

from tlswrapper import jail, log
from tlswrapper.exits import EXIT_FAILURE
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.process import start_key_process
from tlswrapper.net import proxyproto
from tlswrapper.net.keyproxy import KeyProcessDied
from tlswrapper.net.prog import ChildError, Prog, connection_addresses, drop_inherited, start_prog
from tlswrapper.net.relay import Relay
from tlswrapper.tls.keyservice import KeyServiceError
from tlswrapper.tls.server import ServerConnection


class KeyProcessJail:
    """The key process's jail, called by its first load() once the files are read. ahead()
    (in the key process, before its first request) works out the jail beforehand."""

    def __init__(self, account: jail.Account | None, jail_dir: str) -> None:
        self.account = account
        self.jail_dir = jail_dir
        self.plan: jail.Plan | None = None

    def ahead(self) -> None:
        try:
            self.plan = jail.plan(self.account, self.jail_dir)
        except jail.JailError:
            self.plan = None      # jail() finds the problem again and reports it

    def __call__(self) -> None:
        jail.jail(self.account, self.jail_dir, ahead=self.plan)


class StartError(Exception):
    """The connection's processes could not be started; one fatal line for the log."""


class Prepared:
    """A connection's processes started before its client is known: the key process (not yet
    jailed: it reads the certificate files after the SNI), prog waiting for the go-ahead, the
    engine. The built-in listener prepares these in a spare process ahead of time."""

    def __init__(self, options) -> None:
        self.options = options
        config = options.server_config()
        jail.prepare()
        if getattr(options, "proxy_protocol", None) is not None:
            # -p: what the PROXY header reader imports (ipaddress, proxyproto2), loaded now:
            # a listener's spare jails before its connection, and nothing loads in the jail.
            proxyproto.ProxyReader(options.proxy_protocol)
        self.account = jail.lookup_account(options.jail_user) if options.jail_user else None
        self.jail_dir = options.jail_dir
        # An OSError here becomes StartError in prepare(), as every other start failure.
        # The key process knows the -f/-d/-a files from these options (its own copy, taken
        # at fork): it opens only what they lead to, whatever the pipe asks (MUST 6).
        self.keys, _key_pid = start_key_process(KeyProcessJail(self.account, self.jail_dir),
                                                KeyFiles.from_options(options))
        self.anchor_pem = None
        self.prog: Prog | None = None
        try:
            if options.anchor is not None:
                # -a: the key process reads the file while privileged (before it jails); we
                # parse it after our own jail, as the C version does. clientcert
                # (cryptography's X.509) is imported now: nothing can be loaded in the jail.
                from tlswrapper.net import clientcert  # noqa: F401
                self.anchor_pem = self.keys.read_anchor()
            self.prog = start_prog(options.prog, user=options.user,
                                         user_from_cert=options.user_from_cert is not None,
                                         delayed_encryption=options.delayed_encryption)
            # prog has its copies of what we inherited (`prog 9>log`); we need none of them.
            drop_inherited()
            # While we may: once jailed, only this lets us end prog (Relay._finish).
            self.prog.arm_end_signal()
        except (OSError, ChildError) as e:
            self.keys.close()
            raise StartError(f"unable to start: {e}") from None
        except (KeyServiceError, KeyProcessDied) as e:
            self.keys.close()
            raise StartError(str(e)) from None
        self.config = config
        self.conn = ServerConnection(config, self.keys)
        self.jailed = False

    def jail_ahead(self) -> None:
        """Jail now, before the client socket exists here, all but the last step: descriptors
        may still be made (the listener's spare accepts its connection); serve() then lowers
        RLIMIT_NOFILE to 0 before the first byte is read. Raises JailError."""
        try:
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        except (OSError, ValueError):
            highest = 1023
        # Room for two more: the spare's epoll descriptor and the connection it accepts.
        jail.jail(self.account, self.jail_dir, files=highest + 3)
        self.jailed = True

    def abandon(self) -> None:
        """No client came (the listener stopped): prog's child exits without running prog,
        the key process sees EOF and exits."""
        if self.prog is not None:
            self.prog.abort()
            self.prog.close()
        try:
            self.keys.close()
        except (OSError, KeyProcessDied):
            pass

    def serve(self, addresses: dict[str, str]) -> int:
        """Jail, then serve the client on fd 0/1; returns the exit status (prog's, or 111).
        `addresses` are the TCP* variables for prog."""
        options, prog = self.options, self.prog
        relay = Relay(self.conn, self.keys, prog, options)
        relay.env = addresses
        try:
            if self.jailed:
                jail.close_files()
            else:
                jail.jail(self.account, self.jail_dir)
        except jail.JailError as e:
            log.fatal(f"unable to create jail: {e}")
            prog.abort()
            return EXIT_FAILURE
        if self.anchor_pem is not None:
            from tlswrapper.net import clientcert
            try:
                verifier = clientcert.ClientCertificates.from_pem(self.anchor_pem)
            except clientcert.AnchorError as e:
                log.fatal(f"unable to parse anchor PEM file '{options.anchor_path}' ({e})")
                prog.abort()
                return EXIT_FAILURE
            relay.conn = ServerConnection(verifier.server_config(self.config), self.keys)
        return relay.run()      # a dead key process included (Relay.run, _finish)


def prepare(options) -> Prepared:
    """Start a connection's key process and prog (see Prepared). Raises StartError."""
    try:
        return Prepared(options)
    except (OSError, jail.JailError) as e:
        raise StartError(f"unable to start: {e}") from None
    except (KeyServiceError, KeyProcessDied) as e:
        raise StartError(str(e)) from None


def run(options) -> int:
    """Serve one connection on fd 0/1; returns the exit status (prog's, or 111)."""
    log.setup("tlswrapper", options.verbosity)
    addresses = connection_addresses()
    log.set_prefix(log.client_prefix(addresses.get("TCPREMOTEIP"),
                                     addresses.get("TCPREMOTEPORT")))
    try:
        prepared = prepare(options)
    except StartError as e:
        log.fatal(str(e))
        return EXIT_FAILURE
    return prepared.serve(addresses)
