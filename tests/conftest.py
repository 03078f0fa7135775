"""The fixtures and hooks every test shares: the session's PKI, the needs_root skip and the
`unit` marker. Rule: nothing here knows tlswrapper's internals; the helpers (ports, root
checks, external tools, subprocess plumbing) are in tests/support/testenv.py.

Test modules import helpers from tests/support/ (pyproject.toml puts it on sys.path):
    from testenv import free_port, wait_for_port, is_root, needs_root, which, run
    from certs import PKI
"""

from __future__ import annotations


import pytest
from certs import PKI
from testenv import (  # noqa: F401  (re-exported: `from testenv import ...` still works)
    DEBIAN_PACKAGE, DEBIAN_TLSWRAPPER, REPO, debian_tlswrapper, free_port, in_ci, is_root,
    needs_root, our_command, run, wait_for_port, which)

@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """The session's test PKI (see tests/support/certs.py), generated once into a temporary dir."""
    directory = tmp_path_factory.mktemp("pki")
    # tlswrapper turns "/." into "/:" in every path it opens: keep fixture paths clear of it.
    assert "/." not in str(directory), f"temp dir {directory} has a '/.' in it"
    return PKI.create(directory)


# `pytest -m unit`: the engine, parser and key-side tests. They run in memory or with local
# processes only: no root, no Debian package (a missing tool skips its test), under a minute.
UNIT_FILES = frozenset({
    "test_engine.py", "test_engine_12.py", "test_engine_13.py", "test_engine_select.py",
    "test_messages.py", "test_wire.py", "test_hostile_hello.py", "test_fuzz_corpus.py",
    "test_proxyproto.py", "test_proxyproto2.py", "test_certfiles.py", "test_ipc.py",
    "test_keys_schedule.py", "test_keys_protect.py", "test_keys_local.py", "test_keys_pem.py",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in UNIT_FILES:
            item.add_marker(pytest.mark.unit)
    # `@pytest.mark.needs_root` works as well as the `@needs_root` decorator in testenv.py.
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("needs_root"):
            item.add_marker(skip)
