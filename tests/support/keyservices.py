"""Both KeyService implementations for the engine tests (ARCHITECTURE MUST 2): the engine
tests run once with the in-process LocalKeyService and once with the PipeKeyService talking
to a real forked key process (not jailed here: jailing is tested on its own)."""

from __future__ import annotations

import pytest

from tlswrapper.keys.process import start_key_process
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.local import LocalKeyService

_state: dict = {"kind": "local", "started": []}


def new_key_service(paths=()):
    """A KeyService of the kind under test; the key process is configured with `paths` as
    -f files (it opens nothing else: keys/files.py)."""
    if _state["kind"] == "pipe":
        files = KeyFiles([("file", str(p)) for p in paths])
        service, _pid = start_key_process(jail=None, files=files)
        _state["started"].append(service)
        return service
    return LocalKeyService()


@pytest.fixture(autouse=True, params=["local", "pipe"])
def key_service_kind(request):
    """Autouse in the engine test modules: every test runs with both implementations."""
    _state["kind"] = request.param
    yield request.param
    for service in _state["started"]:
        service.close()
    _state["started"].clear()
    _state["kind"] = "local"
