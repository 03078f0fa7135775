"""The server machine's states and its one internal exception. Rule: only what every part of the
machine shares (server.py, server12.py, server13.py, clientauth.py); the transitions between the
states are in server.py's _TRANSITIONS."""

from __future__ import annotations


class StateValue:
    """One state of State: compared by identity, `name` for the log (as an Enum member's)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<State.{self.name}>"


class State:
    START = StateValue("START")              # waiting for ClientHello
    CHOOSE_CERTIFICATE = StateValue("CHOOSE_CERTIFICATE")  # ClientHello reported, waiting
    #                                         for choose_certificate()
    WAIT_CLIENT_HELLO_2 = StateValue("WAIT_CLIENT_HELLO_2")  # 1.3: HelloRetryRequest sent
    WAIT_CLIENT_CERTIFICATE = StateValue("WAIT_CLIENT_CERTIFICATE")  # -a: CertificateRequest
    #                                         sent (1.2 and 1.3)
    WAIT_CLIENT_KEY_EXCHANGE = StateValue("WAIT_CLIENT_KEY_EXCHANGE")  # 1.2
    WAIT_CLIENT_CERTIFICATE_VERIFY = StateValue("WAIT_CLIENT_CERTIFICATE_VERIFY")  # -a: client
    #                                         Certificate accepted (1.2 and 1.3)
    WAIT_CHANGE_CIPHER_SPEC = StateValue("WAIT_CHANGE_CIPHER_SPEC")  # 1.2
    WAIT_FINISHED = StateValue("WAIT_FINISHED")  # 1.2 and 1.3
    CONNECTED = StateValue("CONNECTED")
    FAILED = StateValue("FAILED")


class Abort(Exception):
    """Internal: end the connection with this alert (never leaves the engine: receive() and
    choose_certificate() turn it into ConnectionFailed)."""

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert
        self.reason = reason
