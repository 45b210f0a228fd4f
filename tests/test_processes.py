"""Ending child processes (outpostspawner.processes.stop_process)."""

import asyncio
import signal
import sys

import psutil

from outpostspawner.processes import stop_process

# a child that starts a grandchild and waits; with IGNORE_TERM both ignore SIGTERM
CHILD = """
import signal, subprocess, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[2]])
print(grandchild.pid, flush=True)
time.sleep(60)
"""
GRANDCHILD = "import signal, sys, time\n{}time.sleep(60)\n"


async def start(ignore_term: bool):
    grand = GRANDCHILD.format(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else ""
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        "ignore" if ignore_term else "term",
        grand,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    return proc, int(line)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def eventually_gone(pid: int, timeout: float = 5) -> bool:
    for _ in range(int(timeout / 0.05)):
        if gone(pid):
            return True
        await asyncio.sleep(0.05)
    return gone(pid)


async def test_terminates_the_process_group():
    proc, grandchild = await start(ignore_term=False)
    assert await stop_process(proc, 5, group=True) == -signal.SIGTERM
    assert await eventually_gone(grandchild)


async def test_kills_what_ignores_sigterm_after_the_timeout():
    proc, grandchild = await start(ignore_term=True)
    assert await stop_process(proc, 0.5, group=True) == -signal.SIGKILL
    assert await eventually_gone(grandchild)


async def test_without_group_only_the_process_ends():
    proc, grandchild = await start(ignore_term=False)
    try:
        assert await stop_process(proc, 5) == -signal.SIGTERM
        await asyncio.sleep(0.2)
        assert not gone(grandchild)
    finally:
        psutil.Process(grandchild).kill()
    assert await eventually_gone(grandchild)


async def test_an_ended_process_is_left_alone():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await asyncio.wait_for(proc.wait(), 10)
    assert await stop_process(proc, 1, group=True) == 0
