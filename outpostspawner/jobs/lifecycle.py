"""A job's life on the Hub: prepare, start its server, stop it at the timeout,
remove it.

The job's server is an ordinary named server of an
:class:`~outpostspawner.OutpostSpawner`; the job only sets, on that one spawner,
the remote command (``custom_misc`` ``cmd``/``args``), two callback URLs
(``custom_env``), the poll interval and log collection. What the administrator
configured for those hooks still applies: the job's values are added to theirs.
Background work runs with the handler of the request that caused it, as
JupyterHub's own server API does.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

from jupyterhub import orm
from jupyterhub.utils import maybe_future, url_escape_path

from .. import hooks
from . import store
from .config import JobAPIHandlerConfig
from .model import JOB_NAME_PREFIX, JobRequest
from .script import job_command, job_spec

log = logging.getLogger(__name__)

#: background tasks, kept referenced until done
_tasks: set[asyncio.Task] = set()
#: (user, server) -> the task preparing and starting that job
_runs: dict[tuple[str, str], asyncio.Task] = {}
#: whether this Hub process has looked for jobs that ran before it started
_rescanned = False
#: seconds to wait for a stop before a removal gives up
STOP_WAIT = 120


def background(coro, name: str) -> asyncio.Task:
    task = asyncio.create_task(coro, name=name)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def job_path(user_name: str, server_name: str) -> str:
    return f"/job/{url_escape_path(user_name)}/{server_name}"


def _message(e: BaseException) -> str:
    for attr in ("jupyterhub_message", "log_message"):
        text = getattr(e, attr, None)
        if isinstance(text, str) and text:
            return text[:2000]
    return (str(e) or type(e).__name__)[:2000]


def keep_outcome(spawner: Any) -> None:
    """Keep the server's logs and exit code in the job's record when it stops:
    JupyterHub drops the spawner object after a stop, and saves the state (with
    the record) right after ``post_stop_hook``, which this wraps."""
    configured = spawner.post_stop_hook
    if getattr(configured, "_keeps_job_outcome", False):
        return

    def post_stop_hook(spawner):
        record = store.get_record(spawner)
        if record is not None:
            record["logs"] = list(getattr(spawner, "logs", None) or [])[-store.MAX_LOG_LINES :]
            code = getattr(spawner, "exit_code", None)
            record["server_exit_code"] = code if isinstance(code, int) else None
            if record.get("end_time") is None:
                record["end_time"] = time.time()
        if configured is not None:
            return configured(spawner)
        return None

    post_stop_hook._keeps_job_outcome = True
    spawner.post_stop_hook = post_stop_hook


def configure(spawner: Any, request: JobRequest, cfg: JobAPIHandlerConfig) -> None:
    """Make ``spawner`` (a fresh job server) run the job."""
    spec = job_spec(
        request,
        spawner.name,
        install_papermill=cfg.install_papermill,
        server_command=cfg.server_command,
        timeout=cfg.job_timeout,
        max_notebook_bytes=cfg.max_notebook_bytes,
    )
    cmd, args = job_command(spec, python=cfg.python)
    configured_env = spawner.custom_env
    configured_misc = spawner.custom_misc
    path = job_path(spawner.user.name, spawner.name)

    async def custom_env(spawner, user_options, jupyterhub_api_url):
        env = await hooks.resolve(
            spawner,
            "custom_env",
            value=configured_env,
            user_options=user_options,
            jupyterhub_api_url=jupyterhub_api_url,
            check=hooks.is_dict,
        )
        # the administrator's hook may name other URLs (e.g. one the remote side
        # can reach) or none ("": results only through the logs)
        job_url = jupyterhub_api_url.rstrip("/") + path
        env.setdefault("JUPYTERHUB_JOB_URL", job_url)
        env.setdefault("JUPYTERHUB_JOB_RESULTS_URL", job_url + "/results")
        return env

    async def custom_misc(spawner, user_options):
        misc = await hooks.resolve(
            spawner,
            "custom_misc",
            value=configured_misc,
            user_options=user_options,
            check=hooks.is_dict,
        )
        misc.update(cmd=cmd, args=args)
        return misc

    keep_outcome(spawner)
    spawner.custom_env = custom_env
    spawner.custom_misc = custom_misc
    spawner.collect_logs = True
    spawner.collect_logs_polling = True
    spawner.custom_poll_interval = 1000 * cfg.poll_interval


async def run(handler: Any, user: Any, spawner: Any, request: JobRequest, cfg) -> None:
    """Prepare and start the job's server, then watch its timeout."""
    key = (user.name, spawner.name)
    record = store.get_record(spawner)
    store.in_flight[key] = "preparing"
    try:
        configure(spawner, request, cfg)
        if cfg.prepare_job is not None:
            await maybe_future(cfg.prepare_job(request.as_dict(), spawner))
        store.in_flight[key] = "spawning"
        await handler.spawn_single_user(user, spawner.name, options=request.user_options)
        future = spawner._spawn_future
        if future is not None:
            timeout = float(spawner.start_timeout) + float(spawner.http_timeout) + 30
            await asyncio.wait_for(asyncio.shield(future), timeout)
    except Exception as e:  # the job fails with the message; the Hub has cleaned up
        log.warning("job %s/%s did not start: %s", *key, _message(e))
        record["error"] = f"The job's server did not start: {_message(e)}"
        record["end_time"] = time.time()
        store.save(spawner, handler.db)
        return
    finally:
        store.in_flight.pop(key, None)
        _runs.pop(key, None)
    await watch(handler, user, spawner, cfg)


def submit(handler: Any, user: Any, spawner: Any, request: JobRequest, cfg) -> None:
    """Prepare and start the job in the background."""
    key = (user.name, spawner.name)
    store.in_flight[key] = "preparing"
    _runs[key] = background(run(handler, user, spawner, request, cfg), f"job-{spawner.name}")


async def watch(handler: Any, user: Any, spawner: Any, cfg: JobAPIHandlerConfig) -> None:
    """Stop the job's server when its time is up."""
    record = store.get_record(spawner)
    while spawner.active:
        left = record["deadline"] - time.time()
        if left > 0:
            await asyncio.sleep(min(left, 3600))
            continue
        if spawner.pending:
            await asyncio.sleep(max(1.0, cfg.poll_interval))
            continue
        record["error"] = f"The job ran longer than its timeout ({cfg.job_timeout:g} s)."
        record["end_time"] = time.time()
        store.save(spawner, handler.db)
        log.info("job %s/%s timed out, stopping it", user.name, spawner.name)
        await stop(handler, user, spawner)
        return


async def stop(handler: Any, user: Any, spawner: Any) -> None:
    """Stop a job's server (its preparation or pending start is cancelled) and wait
    for it (bounded)."""
    key = (user.name, spawner.name)
    task = _runs.get(key)
    if store.in_flight.get(key) == "preparing" and task is not None:
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_WAIT)
    # JupyterHub sets these futures only once a spawn or stop has begun
    spawn_future = getattr(spawner, "_spawn_future", None)
    if spawner.pending == "spawn" and spawn_future is not None:
        spawn_future.cancel()
        await asyncio.sleep(1)
    if spawner.active and not spawner.pending:
        await handler.stop_single_user(user, spawner.name)
    future = getattr(spawner, "_stop_future", None)
    if future is not None:
        try:
            await asyncio.wait_for(asyncio.shield(future), STOP_WAIT)
        except asyncio.TimeoutError:
            log.warning("job %s/%s: stop still pending", user.name, spawner.name)


async def remove(handler: Any, user: Any, name: str, files: store.NotebookFiles) -> None:
    """Stop and delete a job's server, its record and its notebooks."""
    spawner = user.spawners[name]
    await stop(handler, user, spawner)
    if spawner.active:
        log.warning("job %s/%s is still active; not removed", user.name, name)
        return
    await maybe_future(user._delete_spawner(spawner))
    handler.db.delete(spawner.orm_spawner)
    user.spawners.pop(name, None)
    handler.db.commit()
    await files.remove(user.name, name)
    log.info("job %s/%s removed", user.name, name)


def jobs_of(user: Any) -> list[tuple[str, Any, dict]]:
    """``(name, spawner, record)`` of each of the user's jobs."""
    found = []
    for name in list(user.orm_spawners):
        if name.startswith(JOB_NAME_PREFIX):
            spawner = user.spawners[name]
            record = store.get_record(spawner)
            if record is not None:
                found.append((name, spawner, record))
    return found


def is_active(user: Any, name: str, spawner: Any) -> bool:
    return (user.name, name) in store.in_flight or bool(spawner.active)


async def remove_old(handler, user, cfg: JobAPIHandlerConfig, files) -> None:
    """Remove the user's inactive jobs started over ``job_timeout + 60`` s ago."""
    limit = time.time() - cfg.job_timeout - 60
    for name, spawner, record in jobs_of(user):
        if not is_active(user, name, spawner) and record["start_time"] < limit:
            await remove(handler, user, name, files)


def rescan(handler: Any, cfg: JobAPIHandlerConfig) -> None:
    """Once per Hub process: watch the timeouts of jobs that ran before it started."""
    global _rescanned
    if _rescanned:
        return
    _rescanned = True
    query = handler.db.query(orm.Spawner).filter(orm.Spawner.name.like(JOB_NAME_PREFIX + "%"))
    for orm_spawner in query:
        if orm_spawner.server is None or orm_spawner.user is None:
            continue
        user = handler.users[orm_spawner.user]
        spawner = user.spawners[orm_spawner.name]
        if store.get_record(spawner) is not None:
            keep_outcome(spawner)
            background(watch(handler, user, spawner, cfg), f"job-watch-{spawner.name}")


def request_key(request: JobRequest) -> dict:
    """What makes two submissions the same job."""
    return copy.deepcopy(request.as_dict(with_user=False))
