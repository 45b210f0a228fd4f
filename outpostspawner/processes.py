"""Ending child processes: SIGTERM, then SIGKILL, every wait bounded."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_process(proc: asyncio.subprocess.Process, timeout: float) -> int | None:
    """Terminate ``proc``; kill it if it is still there after ``timeout`` seconds.

    :returns: its exit code, or ``None`` if even SIGKILL did not end it in time
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout)
    return proc.returncode
