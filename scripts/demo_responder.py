"""A tiny HTTP/1.0 responder for `make demo`: reads one request head on stdin, answers 200 with
a short text page on stdout, then exits. tlswrapper runs it once per connection, so it sees the
connection's details in its environment (TCPREMOTEIP, SSL_* ...), and shows them."""

from __future__ import annotations

import os
import sys

MAX_HEAD = 16384  # bytes of request head we are willing to read

# what tcpserver and tlswrapper put in prog's environment (SSL_* as mod_ssl names them)
SHOWN = (
    "TCPLOCALIP", "TCPLOCALPORT", "TCPREMOTEIP", "TCPREMOTEPORT",
    "SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI", "SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN",
    "SSL_CLIENT_S_DN_CN", "SSL_CLIENT_S_DN_Email", "SSL_CLIENT_M_SERIAL",
)


def read_head(stream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_HEAD:
        line = stream.readline(MAX_HEAD)
        if not line:
            break
        head += line
    return head


def main() -> int:
    head = read_head(sys.stdin.buffer)
    request_line = head.split(b"\n", 1)[0].strip().decode("latin-1") or "(no request)"
    lines = ["Hello from tlswrapper's demo responder.", "", f"request: {request_line}", ""]
    for name in SHOWN:
        if name in os.environ:
            lines.append(f"{name}={os.environ[name]}")
    body = ("\n".join(lines) + "\n").encode()
    out = sys.stdout.buffer
    out.write(b"HTTP/1.0 200 OK\r\n"
              b"Content-Type: text/plain; charset=utf-8\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n"
              b"Connection: close\r\n\r\n" + body)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
