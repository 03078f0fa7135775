"""The commands: tlswrapper, tlswrapper-listen, tlswrapper-tcp, tlswrapper-smtp, and their
option scanning. Rule: a command parses its options, reports a bad one in one line (exit 100),
and hands over to the process code in net/ and keys/; it holds no protocol logic itself."""
