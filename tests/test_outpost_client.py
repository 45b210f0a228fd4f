"""The shared Outpost client: poll batching, the debug-log check, the poll request."""

import asyncio
import logging
import time

from tornado.httpclient import AsyncHTTPClient

from outpostspawner import outpost as outpost_client
from outpostspawner.testing.dummy_server import make_app


def poll_times(outpost):
    return [
        r.time for r in outpost.requests if r.method == "GET" and r.path.startswith("/services/")
    ]


async def start_several(factory, n, **traits):
    first = factory(user="u0", **traits)
    spawners = [first] + [factory(user=f"u{i}", db=first.user.db, **traits) for i in range(1, n)]
    await asyncio.gather(*(s.start() for s in spawners))
    return spawners


async def test_polls_within_the_window_go_out_together(reference_outpost, outpost_spawner_factory):
    spawners = await start_several(outpost_spawner_factory, 5, poll_batch_window=0.6)
    try:

        async def poll_later(spawner, delay):
            await asyncio.sleep(delay)
            called = time.time()
            return called, await spawner.poll()

        results = await asyncio.wait_for(
            asyncio.gather(*(poll_later(s, 0.1 * i) for i, s in enumerate(spawners))), 10
        )
        assert [status for _, status in results] == [None] * 5
        calls = [called for called, _ in results]
        arrived = poll_times(reference_outpost)
        assert len(arrived) == 5
        # called over 0.4 s, sent together when the first one's window ended
        assert max(calls) - min(calls) >= 0.35
        assert max(arrived) - min(arrived) < 0.25
        assert min(arrived) >= min(calls) + 0.5
    finally:
        await asyncio.gather(*(s.stop() for s in spawners))


async def test_no_window_sends_each_poll_at_once(reference_outpost, outpost_spawner_factory):
    (spawner,) = await start_several(outpost_spawner_factory, 1, poll_batch_window=0)
    try:
        called = time.time()
        assert await asyncio.wait_for(spawner.poll(), 5) is None
        (arrived,) = poll_times(reference_outpost)
        assert arrived - called < 0.3
    finally:
        await spawner.stop()


async def test_a_cancelled_poll_leaves_the_others_in_its_window(
    reference_outpost, outpost_spawner_factory
):
    spawners = await start_several(outpost_spawner_factory, 3, poll_batch_window=0.3)
    try:
        tasks = [asyncio.ensure_future(s.poll()) for s in spawners]
        await asyncio.sleep(0.05)  # all three wait for the window
        tasks[1].cancel()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert isinstance(done[1], asyncio.CancelledError)
        assert done[0] is None and done[2] is None
        assert len(poll_times(reference_outpost)) == 2
        # the next window works as before
        assert await asyncio.wait_for(spawners[1].poll(), 5) is None
    finally:
        await asyncio.gather(*(s.stop() for s in spawners))


async def test_poll_request_follows_a_new_start(reference_outpost, outpost_spawner_factory):
    spawner = outpost_spawner_factory(poll_batch_window=0)
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
