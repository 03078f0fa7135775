"""Exit statuses, one definition each (the C version's values).

Rule: every module returns these names, never a bare number, so that one place says what
tcpserver, inetd and systemd see.
"""

EXIT_OK = 0
EXIT_USAGE = 100     # usage or configuration error
EXIT_FAILURE = 111   # internal failure, a dead key process, or prog killed by a signal
