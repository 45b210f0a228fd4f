"""One timer polls all servers: the scheduler, and spawners polled through it."""

import asyncio
import logging

import pytest
from tornado.ioloop import PeriodicCallback

from outpostspawner.polling import PollHandle, PollScheduler, get_scheduler
from outpostspawner.testing import Fault


async def test_due_polls_start_in_one_pass():
    loop = asyncio.get_running_loop()
    scheduler = PollScheduler(loop, tick=0.25)
    calls: list[tuple[int, float]] = []

    def poller(i):
        async def poll():
            calls.append((i, loop.time()))

        return poll

    handles = []
    for i in range(4):  # added over 0.15 s: due over 0.15 s
        handles.append(scheduler.add(poller(i), interval=0.3, jitter=0))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    for handle in handles:
        handle.stop()
    assert sorted(i for i, _ in calls[:4]) == [0, 1, 2, 3]
    # passes run at multiples of the tick; dues within 0.15 s need at most two
    passes = sorted({round(t / 0.25) for _, t in calls[:4]})
    assert len(passes) <= 2
    for _, t in calls[:4]:
        assert abs(t - round(t / 0.25) * 0.25) < 0.03
    scheduler.close()


async def test_each_server_keeps_its_rate():
    loop = asyncio.get_running_loop()
    scheduler = PollScheduler(loop, tick=0.02)
    fast: list[float] = []
    slow: list[float] = []

    async def poll_fast():
        fast.append(loop.time())

    async def poll_slow():
        slow.append(loop.time())

    a = scheduler.add(poll_fast, interval=0.1, jitter=0.1)
    b = scheduler.add(poll_slow, interval=0.25, jitter=0)
    await asyncio.sleep(1.02)
    a.stop()
    b.stop()
    assert 9 <= len(fast) <= 11
    assert 3 <= len(slow) <= 5
    scheduler.close()


async def test_stop_ends_polling_also_from_inside_the_poll(caplog):
    loop = asyncio.get_running_loop()
    scheduler = PollScheduler(loop, tick=0.01)
    calls = []
    handle: PollHandle

    async def poll():
        calls.append(loop.time())
        if len(calls) == 2:
            handle.stop()  # as JupyterHub's poll_and_notify does when the server is gone

    handle = scheduler.add(poll, interval=0.05, jitter=0)
    await asyncio.sleep(0.4)
    assert len(calls) == 2
    assert not handle.is_running()
    await asyncio.sleep(0.05)
    assert len(scheduler) == 0 and scheduler._timer is None  # nothing left to wake up for
    scheduler.close()


async def test_a_failing_poll_is_logged_and_polling_goes_on(caplog):
    loop = asyncio.get_running_loop()
    scheduler = PollScheduler(loop, tick=0.01)
    calls = []

    async def poll():
        calls.append(1)
        raise RuntimeError("broken poll")

    handle = scheduler.add(poll, interval=0.05, jitter=0)
    with caplog.at_level(logging.ERROR, logger="outpostspawner.polling"):
        await asyncio.sleep(0.3)
    handle.stop()
    assert len(calls) >= 3
    assert "broken poll" in caplog.text
    scheduler.close()


async def test_invalid_settings_are_refused():
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError):
        PollScheduler(loop, tick=0)
    scheduler = PollScheduler(loop, tick=0.1)
    with pytest.raises(ValueError):
        scheduler.add(lambda: None, interval=0, jitter=0)
    scheduler.close()


async def test_spawners_are_polled_together(reference_outpost, outpost_spawner_factory):
    first = outpost_spawner_factory(
        user="u0", poll_interval=1, poll_jitter=0, poll_batch_window=0.4
    )
    spawners = [first] + [
        outpost_spawner_factory(
            user=f"u{i}", db=first.user.db, poll_interval=1, poll_jitter=0, poll_batch_window=0.4
        )
        for i in range(1, 4)
    ]
    await asyncio.gather(*(s.start() for s in spawners))
    try:
        for spawner in spawners:
            spawner.start_polling()
            await asyncio.sleep(0.1)  # their first polls fall due over 0.3 s
        assert all(s._poll_callback is not None for s in spawners)
        assert len({id(get_scheduler(0.4))}) == 1
        await asyncio.sleep(1.6)
        times = sorted(
            r.time
            for r in reference_outpost.requests
            if r.method == "GET" and r.path.startswith("/services/")
        )
        assert len(times) >= 4
        # due over 0.3 s, sent in at most two passes 0.4 s apart (own timers: four)
        groups = 1 + sum(1 for a, b in zip(times[:3], times[1:4], strict=True) if b - a > 0.2)
        assert groups <= 2, times
    finally:
        for spawner in spawners:
            spawner.stop_polling()
            assert spawner._poll_callback is None
        await asyncio.gather(*(s.stop() for s in spawners))


async def test_a_server_found_gone_by_the_timer_runs_the_poll_callbacks(
    reference_outpost, outpost_spawner_factory
):
    spawner = outpost_spawner_factory(poll_interval=1, custom_poll_interval=200)
    await spawner.start()
    stopped = asyncio.Event()
    spawner.add_poll_callback(stopped.set)
    spawner.start_polling()
    handle = spawner._poll_callback
    assert isinstance(handle, PollHandle) and handle.interval == pytest.approx(0.2)
    reference_outpost.faults.add(Fault("poll", "status", status=404))  # the server is gone
    await asyncio.wait_for(stopped.wait(), 5)
    assert spawner._poll_callback is None and not handle.is_running()


async def test_no_window_gives_each_server_its_own_timer(
    reference_outpost, outpost_spawner_factory
):
    spawner = outpost_spawner_factory(poll_interval=1, poll_batch_window=0)
    await spawner.start()
    try:
        spawner.start_polling()
        assert isinstance(spawner._poll_callback, PeriodicCallback)
        assert spawner._poll_callback.is_running()
    finally:
        spawner.stop_polling()
        await spawner.stop()
