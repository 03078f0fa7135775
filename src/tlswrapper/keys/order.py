"""The order in which the key process accepts requests: the calls a handshake makes, in the
order it makes them, each as often as it makes them (ARCHITECTURE MUST 6).

Rule: admit() is asked before every request and raises OutOfOrder for one a handshake would
not make now; the key process then ends, with no answer. done() moves the state on with the
request's outcome. Nothing here looks at secrets: it only counts and orders calls.

The table, by phase (a phase is entered when the call that leads to it succeeds):

    START    ready (once), read_anchor (once, only with -a), load (once)      -> LOADED
    LOADED   select (of a name loaded; at most as many as names loaded)
             server_flight13 (after a select)                                  -> TLS13
             server_key_exchange12 (after a select)                            -> TLS12
    TLS12    derive12_finished (once)  or  derive12 (once), finished12 client (once)
             activate READ (once, after the keys), activate WRITE (once, derive12's way),
             seal_finished12 (once, derive12's way, after activate WRITE), open, seal
    TLS13    finished13 client (once, only when the flight asked for a client certificate),
             activate READ (once, after it), open, seal, key_update
    FAILED   seal, twice at most (the engine's alert), when records can be sealed

A select that fails is a legitimate answer (the key does not match its certificate: the
engine tries the next one), as is a flight call that fails for want of a selected key; any
other failed handshake call leads to FAILED. A KeyUpdate needs a record between two of them
in its direction (the KeyUpdate message itself comes in, or goes out, in one): a flood costs
the caller a record per key derivation.
"""

from __future__ import annotations

from tlswrapper.tls.keyservice import READ, SENDER_CLIENT, WRITE

START, LOADED, TLS12, TLS13, FAILED = "start", "loaded", "tls12", "tls13", "failed"
MAX_ALERTS_AFTER_FAILURE = 2


class OutOfOrder(Exception):
    """A request a handshake would not make now: the key process ends without answering."""


class CallOrder:
    """One connection's handshake, as far as the key process has served it."""

    def __init__(self, anchor_configured: bool) -> None:
        self.phase = START
        self._anchor_configured = anchor_configured
        self._done: set[str] = set()        # calls made once already
        self._names = 0                     # names load() was given
        self._selects = 0
        self._selected = False              # the last select succeeded
        self._flight_armed = False          # a select since the last flight call
        self._client_auth = False
        self._derive12 = False              # derive12 (client certificate) rather than _finished
        self._active = [False, False]       # READ, WRITE: records can be opened / sealed
        self._app_keys = False              # TLS 1.3 application keys in both directions
        self._records_since_update = [0, 0]
        self._alerts_after_failure = 0

    # --- the checks ---------------------------------------------------------------------------
    def _once(self, name: str) -> None:
        if name in self._done:
            raise OutOfOrder(f"{name} a second time")
        self._done.add(name)

    def _phase(self, name: str, *phases: str) -> None:
        if self.phase not in phases:
            raise OutOfOrder(f"{name} in phase {self.phase}")

    def admit(self, name: str, args: tuple) -> None:
        """Raise OutOfOrder unless a handshake makes this call now. `args` are checked for
        type already (keys/service.py)."""
        if self.phase == FAILED:
            if name != "seal" or not self._active[WRITE] \
                    or self._alerts_after_failure >= MAX_ALERTS_AFTER_FAILURE:
                raise OutOfOrder(f"{name} after a failure")
            self._alerts_after_failure += 1
            return
        check = getattr(self, "_admit_" + name, None)
        if check is None:
            raise OutOfOrder(f"no such call {name}")
        check(name, args)

    def _admit_ready(self, name: str, args: tuple) -> None:
        self._phase(name, START)
        self._once(name)

    def _admit_read_anchor(self, name: str, args: tuple) -> None:
        self._phase(name, START)
        if not self._anchor_configured:
            raise OutOfOrder("read_anchor without an anchor file configured")
        self._once(name)

    def _admit_load(self, name: str, args: tuple) -> None:
        self._phase(name, START)
        self._once(name)
        self._names = len(args[0])

    def _admit_select(self, name: str, args: tuple) -> None:
        self._phase(name, LOADED)
        if self._selects >= self._names:
            raise OutOfOrder("more selects than names loaded")
        if not 0 <= args[0] < self._names:
            raise OutOfOrder("select of a name not loaded")
        self._selects += 1
        self._flight_armed = True

    def _admit_flight(self, name: str) -> None:
        self._phase(name, LOADED)
        if not self._flight_armed:
            raise OutOfOrder(f"{name} without a select before it")
        self._flight_armed = False

    def _admit_server_flight13(self, name: str, args: tuple) -> None:
        self._admit_flight(name)
        self._client_auth = args[7]

    def _admit_server_key_exchange12(self, name: str, args: tuple) -> None:
        self._admit_flight(name)

    def _admit_derive12_finished(self, name: str, args: tuple) -> None:
        self._phase(name, TLS12)
        self._once("derive12")

    def _admit_derive12(self, name: str, args: tuple) -> None:
        self._phase(name, TLS12)
        self._once("derive12")
        self._derive12 = True

    def _admit_finished12(self, name: str, args: tuple) -> None:
        self._phase(name, TLS12)
        if not self._derive12 or args[0] != SENDER_CLIENT:
            raise OutOfOrder("finished12 is only for the client's Finished after derive12")
        self._once(name)

    def _admit_finished13(self, name: str, args: tuple) -> None:
        self._phase(name, TLS13)
        if not self._client_auth or args[0] != SENDER_CLIENT or "activate READ" in self._done:
            raise OutOfOrder("finished13 is only for the client's Finished after its "
                             "certificate")
        self._once(name)

    def _admit_activate(self, name: str, args: tuple) -> None:
        direction = args[0]
        self._phase(name, TLS12, TLS13)
        if direction == READ:
            if self.phase == TLS12:
                if "derive12" not in self._done or (self._derive12
                                                    and "finished12" not in self._done):
                    raise OutOfOrder("activate READ before the keys")
            elif self._client_auth and "finished13" not in self._done:
                raise OutOfOrder("activate READ before the client's Finished is known")
        elif direction == WRITE:
            # TLS 1.3 and derive12_finished activate WRITE themselves.
            if self.phase != TLS12 or not self._derive12 or "finished12" not in self._done:
                raise OutOfOrder("activate WRITE out of order")
        else:
            raise OutOfOrder("activate in no direction")
        self._once(f"activate {'READ' if direction == READ else 'WRITE'}")

    def _admit_seal_finished12(self, name: str, args: tuple) -> None:
        self._phase(name, TLS12)
        if "activate WRITE" not in self._done:
            raise OutOfOrder("seal_finished12 before activate WRITE")
        self._once(name)

    def _admit_seal(self, name: str, args: tuple) -> None:
        self._phase(name, TLS12, TLS13)
        if not self._active[WRITE]:
            raise OutOfOrder("seal before records can be sealed")

    def _admit_open(self, name: str, args: tuple) -> None:
        self._phase(name, TLS12, TLS13)
        if not self._active[READ]:
            raise OutOfOrder("open before records can be opened")

    def _admit_key_update(self, name: str, args: tuple) -> None:
        direction = args[0]
        self._phase(name, TLS13)
        if direction not in (READ, WRITE) or not self._app_keys \
                or "activate READ" not in self._done:
            raise OutOfOrder("key_update before the application keys")
        # The KeyUpdate message itself is a record in that direction under the current keys.
        if self._records_since_update[direction] < 1:
            raise OutOfOrder("key_update with no record since the last key change")
        self._records_since_update[direction] = 0

    def key_selected(self) -> bool:
        """Whether the last select succeeded (a flight call needs one)."""
        return self._selected

    # --- the outcome --------------------------------------------------------------------------
    def done(self, name: str, args: tuple, ok: bool, result: object = None) -> None:
        """Move on after the call: `ok` is False when it answered a KeyServiceError."""
        if self.phase == FAILED:
            return
        if name == "select":
            self._selected = ok
            return
        if name in ("server_flight13", "server_key_exchange12") and not ok \
                and not self._selected:
            return      # no key selected: the engine selects the next candidate and retries
        if not ok:
            self.phase = FAILED
            return
        if name == "load":
            self.phase = LOADED
        elif name == "server_flight13":
            self.phase = TLS13
            # Handshake keys both ways, then application keys for WRITE (keyservice.py).
            self._active = [True, True]
            self._app_keys = True
            self._records_since_update = [0, 0]
        elif name == "server_key_exchange12":
            self.phase = TLS12
        elif name == "derive12_finished":
            self._active[WRITE] = True      # activated for the sealed Finished
            self._records_since_update[WRITE] = 1
        elif name == "activate":
            direction = args[0]
            self._active[direction] = True
            self._records_since_update[direction] = 0
        elif name == "open":
            opened, alert, _reason = result
            self._records_since_update[READ] += len(opened)
        elif name == "seal":
            self._records_since_update[WRITE] += len(args[0])
