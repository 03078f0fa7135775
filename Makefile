# tlswrapper: developer and CI entry points.
#   make test   install what the tests need (Debian packages, venv), run the whole suite
#   make demo   serve https://127.0.0.1:8443/ with a demo certificate through tcpserver
#   make bench  run the benchmarks (bench/run.py, then bench/real_clients.py)
#   make fuzz   coverage-guided fuzzing (atheris) of every target, FUZZ_SECONDS each
#               (e.g. make fuzz FUZZ_SECONDS=300 FUZZ_TARGETS="engine13 proxy")
# Works on a fresh Debian 12 as root; the second run installs nothing and goes straight on.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JAILDIR := /var/lib/tlswrapper/empty
PYTEST_ARGS ?=
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=

# What the tests call as real peers and harnesses:
#   openssl, gnutls-bin (gnutls-cli), curl: TLS clients; tlswrapper: Debian's C version, for
#   comparisons; ucspi-tcp: tcpserver; socat, busybox (tcpsvd): plumbing; chromium: the
#   X25519MLKEM768 interop client; python3-venv: for the venv below; nginx-light,
#   exim4-daemon-light, postgrey: the real servers behind tlswrapper-tcp / tlswrapper-smtp;
#   haproxy: the load balancer in front of tlswrapper-listen (PROXY v1/v2, restarts);
#   systemd: systemd-socket-activate, the socket activator for tlswrapper-listen.
TEST_PACKAGES := openssl gnutls-bin curl tlswrapper ucspi-tcp socat busybox chromium python3-venv \
	nginx-light exim4-daemon-light postgrey haproxy systemd
DEMO_PACKAGES := ucspi-tcp python3-venv

DEMO_HOST := 127.0.0.1
DEMO_PORT := 8443

.PHONY: test unit demo bench fuzz deps demo-deps venv bytecode jaildir clean distclean
# deps must finish before the venv is made (python3-venv); keep the steps in order.
.NOTPARALLEL:

test: deps venv bytecode jaildir
	$(VPY) -m pytest -q -ra $(PYTEST_ARGS)

# The engine, parser and key-side tests (tests/conftest.py's UNIT_FILES): no root, no Debian
# package, under a minute.
unit: venv
	$(VPY) -m pytest -q -ra -m unit $(PYTEST_ARGS)

deps:
	@scripts/ensure-debian-packages $(TEST_PACKAGES)

demo-deps:
	@scripts/ensure-debian-packages $(DEMO_PACKAGES)

# The venv, (re)installed when pyproject.toml or a bin/ script changes (pip copies them).
venv: $(STAMP)

$(STAMP): pyproject.toml $(wildcard bin/*)
	@if ! $(VPY) -c '' 2>/dev/null; then \
		rm -rf $(VENV) && echo "creating $(VENV)" && $(PYTHON) -m venv $(VENV); \
	fi
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# tcpserver mode starts a new interpreter per connection: without cached bytecode (this
# environment sets PYTHONDONTWRITEBYTECODE) every connection would compile our modules again
# (about 35 ms). compileall writes the caches whatever that variable says; only stale ones.
bytecode: venv
	@$(VPY) -m compileall -q src >/dev/null

# The default jail directory: empty, owned by root, not writable by the jail accounts.
# (Debian's tlswrapper package creates the same one.) Needs root; skipped otherwise.
jaildir:
	@if [ "$$(id -u)" = 0 ] && [ ! -d $(JAILDIR) ]; then \
		install -d -m 0755 -o root -g root $(JAILDIR); \
	fi

demo/localhost.pem: scripts/demo_cert.py | venv
	$(VPY) scripts/demo_cert.py $@

demo: demo-deps venv bytecode jaildir demo/localhost.pem
	@echo
	@echo "Serving https://$(DEMO_HOST):$(DEMO_PORT)/ (Ctrl-C stops). In another terminal try:"
	@echo
	@echo "    curl -k https://$(DEMO_HOST):$(DEMO_PORT)/"
	@echo
	tcpserver -HRDl0 $(DEMO_HOST) $(DEMO_PORT) \
		$(VENV)/bin/tlswrapper -f demo/localhost.pem -- \
		$(VPY) scripts/demo_responder.py

# run.py: the figures of issue 6 against the C version; real_clients.py: latency with curl,
# openssl s_client and gnutls-cli (a client with Nagle on shows delayed-ACK stalls).
bench: deps venv bytecode
	$(VPY) bench/run.py
	$(VPY) bench/real_clients.py

# fuzz/run.py: each target under atheris for FUZZ_SECONDS; new inputs that add coverage are
# merged into fuzz/corpus/<target>/ (commit them), crashes land in fuzz/crashes/. The corpus
# is replayed by tests/test_fuzz_corpus.py in every `make test`.
fuzz: venv bytecode
	$(VPY) fuzz/run.py --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf demo .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) src/*.egg-info
