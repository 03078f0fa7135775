"""The key process: starting it (process.py), its request loop (service.py) and what it runs
(local.py), the only code that touches secret bytes (private keys, shared secrets,
master/traffic secrets, record keys). Rule: it never parses what the client sends, except
the peer's key share and the protected records it is asked to open."""
