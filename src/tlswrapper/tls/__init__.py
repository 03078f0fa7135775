"""The TLS protocol, sans-IO. Rule: nothing here imports os, socket or tlswrapper.keys."""
