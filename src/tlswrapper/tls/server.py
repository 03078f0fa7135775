"""The TLS server state machine (TLS 1.0-1.3). Rule: sans-IO, every secret behind KeyService.

API (BearSSL-style, the caller owns all I/O and timing):

    conn = ServerConnection(config, keys)
    events = conn.receive(data)        # bytes from the client; b"" means the transport ended
    events = conn.choose_certificate(candidates)  # after ClientHelloReceived
    conn.send(data)                    # application data (after HandshakeComplete)
    conn.close()                       # queue close_notify
    out = conn.outgoing()              # bytes to write to the client (may be b"")
    conn.handshake_done, conn.closed (fatal error or both sides closed)
"""
