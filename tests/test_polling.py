"""One timer polls all servers, spread over the interval: the scheduler, and
spawners polled through it."""

import asyncio
import itertools
import logging
import time

import pytest

from outpostspawner.polling import POLLS_PER_TURN, PollHandle, PollScheduler, phase_of
from outpostspawner.testing import Fault


async def test_polls_fall_on_each_servers_phase_of_the_interval():
    """Added at the same moment, 40 servers are polled spread over the interval, each
    at the phase its name gives (of the wall clock: the same after a restart)."""
    loop = asyncio.get_running_loop()
    scheduler = PollScheduler(loop)
    interval = 0.4
    calls: dict[str, list[float]] = {}

    def poller(key):
        async def poll():
            calls.setdefault(key, []).append(time.time())

        return poll

    keys = [f"{i}/server-{i}" for i in range(40)]
    handles = [scheduler.add(poller(k), interval=interval, jitter=0, key=k) for k in keys]
    await asyncio.sleep(2 * interval + 0.05)
    for handle in handles:
        handle.stop()
    scheduler.close()
    assert sorted(calls) == sorted(keys)
    for key, times in calls.items():
        assert 1 <= len(times) <= 3, (key, times)
        for t in times:
            off = (t - phase_of(key, interval)) % interval
            assert min(off, interval - off) < 0.03, (key, t)
        assert all(b - a == pytest.approx(interval, abs=0.03) for a, b in itertools.pairwise(times))
    # spread: no tenth of the interval holds more than a fifth of the servers
    firsts = [times[0] % interval for times in calls.values()]
    buckets = [
        sum(1 for f in firsts if k * interval / 10 <= f < (k + 1) * interval / 10)
        for k in range(10)
    ]
    assert max(buckets) <= 8, buckets


def test_phases_are_stable_and_within_the_interval():
    assert phase_of("7/gpu", 1.0) == phase_of("7/gpu", 1.0)
    assert phase_of("7/gpu", 2.0) == pytest.approx(2 * phase_of("7/gpu", 1.0))
    phases = [phase_of(f"{i}/", 1.0) for i in range(1000)]
    assert all(0 <= p < 1 for p in phases)
    assert len({round(p, 3) for p in phases}) > 500


def test_a_poll_longer_than_its_interval_skips_the_turns_it_missed():
    handle = PollHandle(lambda: None, interval=1.0, jitter=0)
    handle.grid = 10.25
    handle.advance(now=10.5)
    assert handle.grid == pytest.approx(11.25)
    handle.advance(now=13.9)  # the poll took almost three intervals
    assert handle.grid == pytest.approx(14.25)  # the same phase
    handle.jitter = 0.2
    for _ in range(100):
        assert 14.15 <= handle.jittered() <= 14.35


async def test_one_turn_starts_at_most_a_few_polls():
    """Servers due at the same moment are started a few per turn of the event loop,
    so that other callbacks (the Hub's API requests) run in between."""
    loop = asyncio.get_running_loop()
    scheduler = PollScheduler(loop)
    turn = [0]
    seen: list[int] = []

    async def ticker():
        while True:
            turn[0] += 1
            await asyncio.sleep(0)

    async def poll():
        seen.append(turn[0])

    ticking = asyncio.ensure_future(ticker())
    try:
        # one key: the same phase for all 20
        handles = [scheduler.add(poll, interval=0.2, jitter=0, key="same") for _ in range(20)]
        await asyncio.sleep(0.25)
    finally:
        ticking.cancel()
        for handle in handles:
            handle.stop()
        scheduler.close()
    assert len(seen) in (20, 40)  # every server once, twice when its phase was close to now
    per_turn = [seen.count(t) for t in set(seen)]
    assert max(per_turn) <= POLLS_PER_TURN and len(per_turn) >= len(seen) / POLLS_PER_TURN


async def test_a_window_batches_due_polls_into_one_pass():
    loop = asyncio.get_running_loop()
    scheduler = PollScheduler(loop, window=0.25)
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
    # passes run at multiples of the window; dues within 0.15 s need at most two
    passes = sorted({round(t / 0.25) for _, t in calls[:4]})
    assert len(passes) <= 2
    for _, t in calls[:4]:
        assert abs(t - round(t / 0.25) * 0.25) < 0.03
    scheduler.close()


async def test_each_server_keeps_its_rate():
    loop = asyncio.get_running_loop()
    scheduler = PollScheduler(loop)
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
    scheduler = PollScheduler(loop)
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
    scheduler = PollScheduler(loop)
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
        PollScheduler(loop, window=-1)
    scheduler = PollScheduler(loop)
    with pytest.raises(ValueError):
        scheduler.add(lambda: None, interval=0, jitter=0)
    scheduler.close()


async def test_spawners_are_polled_at_their_phases(reference_outpost, outpost_spawner_factory):
    first = outpost_spawner_factory(user="u0", poll_interval=1, poll_jitter=0)
    spawners = [first] + [
        outpost_spawner_factory(user=f"u{i}", db=first.user.db, poll_interval=1, poll_jitter=0)
        for i in range(1, 4)
    ]
    await asyncio.gather(*(s.start() for s in spawners))
    since = time.time()
    try:
        for spawner in spawners:
            spawner.start_polling()  # all at once
        assert all(isinstance(s._poll_callback, PollHandle) for s in spawners)
        await asyncio.sleep(1.3)
        for spawner in spawners:
            times = [
                r.time
                for r in reference_outpost.requests
                if r.method == "GET"
                and r.path.startswith(f"/services/{spawner.outpost_name}/")
                and r.time >= since
            ]
            assert times, spawner.outpost_name
            phase = phase_of(f"{spawner.user.id}/{spawner.name}", 1.0)
            off = (times[0] - phase) % 1.0
            assert min(off, 1 - off) < 0.1, (times, phase)
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
