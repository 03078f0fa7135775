"""tlswrapper: a TLS encryption wrapper with a separate key process and a jail."""

__version__ = "0.1.0"
