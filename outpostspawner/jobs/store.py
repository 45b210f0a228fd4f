"""Where a job's data lives, and what ``GET /hub/api/job/{user}/{server}`` shows.

A job's record (its request, times, results, error) is kept in its spawner's
``extra_state["job"]``, so it is in the Hub's database, survives Hub restarts and
the server's stop, and goes with the server when the job is removed. Executed
notebooks are files under ``JobAPIHandlerConfig.output_dir``. What happens only
in this Hub process (preparing, starting) is in :data:`in_flight`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from datetime import datetime, timezone
from typing import Any

from escapism import escape

from .model import MARKER_COMPLETED, MAX_NOTEBOOKS, job_exit_code, results_from_logs

#: log lines of a stopped job's server kept in its record
MAX_LOG_LINES = 200
#: (user, server) -> "preparing" | "spawning", for jobs whose start runs in this process
in_flight: dict[tuple[str, str], str] = {}


def new_record(request: dict, timeout: float) -> dict:
    now = time.time()
    return {
        "request": request,
        "start_time": now,
        "end_time": None,
        "deadline": now + timeout,
        "results": [],
        "finished_exit_code": None,
        "error": None,
    }


def get_record(spawner: Any) -> dict | None:
    """The job record of a spawner, ``None`` when it is not a job's."""
    extra = getattr(spawner, "extra_state", None)
    record = extra.get("job") if isinstance(extra, dict) else None
    return record if isinstance(record, dict) else None


def save(spawner: Any, db: Any) -> None:
    """Write the spawner's state (with the job record) to the database."""
    spawner.orm_spawner.state = spawner.get_state()
    db.commit()


def add_result(record: dict, result: dict, executed: dict | None) -> int:
    """Add (or replace, by notebook) a notebook's result; its index."""
    results = record["results"]
    entry = dict(result, executed_notebook=executed)
    for i, old in enumerate(results):
        if old["notebook"] == result["notebook"]:
            results[i] = entry
            return i
    if len(results) >= MAX_NOTEBOOKS:
        raise ValueError(f"a job reports at most {MAX_NOTEBOOKS} results")
    results.append(entry)
    return len(results) - 1


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def job_status(key: tuple[str, str], spawner: Any) -> str:
    phase = in_flight.get(key)
    if phase == "preparing":
        return "preparing"
    if spawner.pending == "spawn" or phase == "spawning":
        return "spawning"
    if spawner.active:
        return "running"
    return "stopped"


def job_view(key: tuple[str, str], spawner: Any, record: dict, job_url: str) -> dict:
    """The answer of ``GET`` for a job: the existing API's ``status``, ``logs`` and
    ``exit_code``, and the results, times and error."""
    status = job_status(key, spawner)
    logs = list(getattr(spawner, "logs", None) or record.get("logs") or [])
    block, from_logs = results_from_logs(logs)
    if from_logs is not None and logs and logs[-1].strip() == MARKER_COMPLETED:
        status = "stopped"  # the existing API's reading of the completion marker
    results = record["results"]
    source = "callback" if results else None
    if not results and from_logs is not None:
        results = [dict(r, executed_notebook=None) for r in from_logs["results"]]
        source = "logs"
    exit_code = None
    if status == "stopped":
        if record.get("error"):
            exit_code = 1
        elif source == "logs":
            exit_code = from_logs["exit_code"]
        elif source == "callback" or record.get("finished_exit_code") is not None:
            codes = [job_exit_code(results), record.get("finished_exit_code") or 0]
            exit_code = 1 if any(codes) else 0
        else:
            code = getattr(spawner, "exit_code", None)
            exit_code = code if isinstance(code, int) else record.get("server_exit_code")
    shown = []
    for i, r in enumerate(results):
        executed = r.get("executed_notebook") or None
        item = {k: v for k, v in r.items() if k != "executed_notebook"}
        item["executed_notebook_url"] = f"{job_url}/notebooks/{i}" if executed else None
        item["executed_notebook_size"] = executed["size"] if executed else None
        shown.append(item)
    return {
        "status": status,
        "logs": block if from_logs is not None else logs,
        "exit_code": exit_code,
        "results": shown,
        "results_source": source,
        "start_time": _iso(record.get("start_time")),
        "end_time": _iso(record.get("end_time")) if status == "stopped" else None,
        "error": record.get("error"),
    }


class NotebookFiles:
    """Executed notebooks on the Hub's disk: ``<dir>/<user>/<server>/<index>.ipynb``.

    Every file operation runs in a thread, off the event loop.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _job_dir(self, user: str, server: str) -> str:
        return os.path.join(self.directory, escape(user, escape_char="_"), server)

    def path(self, user: str, server: str, index: int) -> str:
        return os.path.join(self._job_dir(user, server), f"{int(index)}.ipynb")

    async def write(self, user: str, server: str, index: int, text: str) -> None:
        def _write() -> None:
            path = self.path(user, server, index)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)

        await asyncio.to_thread(_write)

    async def read(self, user: str, server: str, index: int) -> bytes | None:
        def _read() -> bytes | None:
            try:
                with open(self.path(user, server, index), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(_read)

    async def remove(self, user: str, server: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._job_dir(user, server), True)
