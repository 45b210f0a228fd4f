"""pytest fixtures for testing an OutpostSpawner configuration.

Installed as a pytest plugin with the package. Example::

    async def test_my_hooks(reference_outpost, outpost_spawner_factory):
        spawner = outpost_spawner_factory(config=my_config, user_options={"system": "A"})
        url = await spawner.start()
        body = reference_outpost.requests[-1].body
        assert body["env"]["JUPYTERHUB_STAGE"] == "prod"
        await spawner.stop()
"""

from __future__ import annotations

import pytest

try:  # async fixtures work in pytest-asyncio's strict and auto modes
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # pragma: no cover - without pytest-asyncio the fixture cannot run anyway
    async_fixture = pytest.fixture

from .outpost import ReferenceOutpost
from .spawner import make_spawner


@async_fixture
async def reference_outpost():
    """A running reference Outpost (credentials ``hub``/``secret``); stopped, with
    every service it started, after the test."""
    async with ReferenceOutpost() as outpost:
        yield outpost


@pytest.fixture
def outpost_spawner_factory(reference_outpost):
    """A function building spawners that talk to ``reference_outpost``.

    Takes the arguments of :func:`outpostspawner.testing.spawner.make_spawner`;
    ``request_url`` and ``request_headers`` default to the reference Outpost's.
    """

    def factory(**kwargs):
        kwargs.setdefault("request_url", reference_outpost.services_url)
        kwargs.setdefault("request_headers", ReferenceOutpost.basic_auth_header())
        return make_spawner(**kwargs)

    return factory


@async_fixture
async def sshd(tmp_path_factory):
    """A running OpenSSH server (:class:`outpostspawner.testing.sshd.TestSSHD`) on a
    free port of ``127.0.0.1`` that accepts the test user's ``client_key``; stopped
    after the test. ``make system-deps`` installs OpenSSH's server."""
    import os

    from .sshd import SSHD, TestSSHD

    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} is not installed: run `make system-deps`", pytrace=False)
    server = TestSSHD(tmp_path_factory.mktemp("sshd"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
