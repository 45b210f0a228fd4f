"""The shared Outpost client: the debug-log check, the poll request."""

import logging

from tornado.httpclient import AsyncHTTPClient

from outpostspawner import outpost as outpost_client
from outpostspawner.testing.dummy_server import make_app


async def test_poll_request_follows_a_new_start(reference_outpost, outpost_spawner_factory):
    spawner = outpost_spawner_factory()
    await spawner.start()
    first_id = spawner.start_id
    assert await spawner.poll() is None
    assert await spawner.poll() is None
    await spawner.stop()
    spawner.clear_state()
    await spawner.start()
    assert spawner.start_id != first_id
    assert await spawner.poll() is None
    await spawner.stop()
    paths = [
        r.path
        for r in reference_outpost.requests
        if r.method == "GET" and r.path.startswith("/services/")
    ]
    name = spawner.outpost_name
    assert paths == [f"/services/{name}/{first_id}"] * 2 + [f"/services/{name}/{spawner.start_id}"]


def test_debug_enabled_looks_at_the_handlers():
    outpost_client._debug_checked.clear()
    parent = logging.getLogger("outpostspawner-test-debug")
    child = logging.getLogger("outpostspawner-test-debug.child")
    handler = logging.StreamHandler()
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    parent.propagate = False  # pytest's capture handler on the root takes everything
    try:
        # as traitlets applications do: the logger at DEBUG, the handler at INFO
        handler.setLevel(logging.INFO)
        assert not outpost_client.debug_enabled(child)
        assert not outpost_client.debug_enabled(logging.LoggerAdapter(child, {}))

        outpost_client._debug_checked.clear()
        handler.setLevel(logging.DEBUG)
        assert outpost_client.debug_enabled(child)

        # the answer is kept for a moment, then looked at again
        handler.setLevel(logging.INFO)
        assert outpost_client.debug_enabled(child)
        for key, (_, value) in list(outpost_client._debug_checked.items()):
            outpost_client._debug_checked[key] = (0.0, value)
        assert not outpost_client.debug_enabled(child)

        outpost_client._debug_checked.clear()
        child.propagate = False
        handler.setLevel(logging.DEBUG)
        assert not outpost_client.debug_enabled(child)  # nothing would reach the handler
    finally:
        child.propagate = parent.propagate = True
        parent.removeHandler(handler)
        parent.setLevel(logging.NOTSET)
        outpost_client._debug_checked.clear()


async def test_dummy_server_tells_its_jupyterhub_version():
    from jupyterhub._version import __version__

    server = make_app("/user/alice/").listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    client = AsyncHTTPClient(force_instance=True)
    try:
        resp = await client.fetch(f"http://127.0.0.1:{port}/user/alice/api", request_timeout=5)
        assert resp.headers["X-JupyterHub-Version"] == __version__
    finally:
        client.close()
        server.stop()
