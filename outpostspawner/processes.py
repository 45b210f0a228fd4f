"""Ending child processes: SIGTERM, then SIGKILL, every wait bounded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


def _send(proc: asyncio.subprocess.Process, sig: int, group: bool) -> None:
    if group:
        try:
            os.killpg(proc.pid, sig)
            return
        except (ProcessLookupError, PermissionError):
            pass  # no group of its own (any more): the process alone
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


async def stop_process(
    proc: asyncio.subprocess.Process, timeout: float, *, group: bool = False
) -> int | None:
    """Terminate ``proc``; kill it if it is still there after ``timeout`` seconds.

    :param group: signal the process group that ``proc`` leads (a child started
        with ``start_new_session=True``), so that what it started ends too
    :returns: its exit code (``-9`` if it had to be killed), or ``None`` if even
        SIGKILL did not end it in time
    """
    if proc.returncode is None:
        _send(proc, signal.SIGTERM, group)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            _send(proc, signal.SIGKILL, group)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout)
    return proc.returncode
