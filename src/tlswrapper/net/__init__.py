"""The network process: it reads the client's bytes, drives the TLS engine (tls/), relays
cleartext to prog, and asks the key process (over net/keyproxy.py) for every secret operation.
Rule: nothing here holds a private key or a traffic secret; after the jail it opens nothing."""
