"""The job API's endpoints on the Hub.

- ``POST /hub/api/job``: submit a job (``201``, the job URL as body and
  ``Location``)
- ``GET /hub/api/job/{user}/{server}``: the job's status, logs, exit code, results
- ``DELETE /hub/api/job/{user}/{server}``: cancel and remove it (``204``)
- ``POST /hub/api/job/{user}/{server}/results``: the remote job reports a result
  (with the server's own token)
- ``GET /hub/api/job/{user}/{server}/notebooks/{index}``: an executed notebook

Scopes are JupyterHub's for servers, checked for the job's user (or server): a
user's own token acts on that user's jobs; ``admin:servers`` acts for anyone.
Without access the answer is 404, as JupyterHub's for servers.
"""

from __future__ import annotations

import json
import time

from jupyterhub.scopes import has_scope, scope_definitions
from tornado import web

from ..handlers.base import MAX_BODY, OutpostAPIHandler
from . import lifecycle, store
from .config import job_config
from .model import (
    JobRequestError,
    ResultError,
    is_job_name,
    new_job_name,
    parse_job_request,
    parse_result_report,
)

#: JupyterHub 6 splits ``servers`` into ``start:``/``delete:``; 5.x has ``delete:`` only
START_SCOPES = ("start:servers",) if "start:servers" in scope_definitions else ("servers",)
DELETE_SCOPES = ("delete:servers",) if "delete:servers" in scope_definitions else ("servers",)
READ_SCOPES = ("read:servers", "access:servers")
REPORT_SCOPES = ("access:servers",)


class JobBaseHandler(OutpostAPIHandler):
    @property
    def cfg(self):
        return job_config(self.settings)

    @property
    def files(self) -> store.NotebookFiles:
        return store.NotebookFiles(self.cfg.output_dir)

    def prepare_jobs(self) -> None:
        lifecycle.rescan(self, self.cfg)

    def check_access(self, scopes, user_name: str, server_name: str | None = None) -> None:
        """404 unless the token has one of ``scopes`` for the user (or server)."""
        if not self.current_user:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        target = f"server={user_name}/{server_name}" if server_name else f"user={user_name}"
        for scope in scopes:
            if has_scope(f"{scope}!{target}", self.parsed_scopes, db=self.db):
                return
        raise web.HTTPError(404, "No access to resources or resources not found")

    def job_url(self, user_name: str, server_name: str) -> str:
        return (
            f"{self.request.protocol}://{self.request.host}"
            f"{self.hub.base_url}api{lifecycle.job_path(user_name, server_name)}"
        )

    def find_job(self, user_name: str, server_name: str):
        """``(user, spawner, record)`` of a job, else 404."""
        user = self.find_user(user_name)
        if user is None or not is_job_name(server_name) or server_name not in user.orm_spawners:
            raise web.HTTPError(404, "no such job")
        spawner = user.spawners[server_name]
        record = store.get_record(spawner)
        if record is None:
            raise web.HTTPError(404, "no such job")
        return user, spawner, record


class JobSubmitAPIHandler(JobBaseHandler):
    async def post(self):
        self.prepare_jobs()
        if not self.current_user:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        cfg = self.cfg
        try:
            request = parse_job_request(
                self.json_body(),
                cfg.default_user_options,
                confine_to_home=cfg.confine_to_home,
            )
        except JobRequestError as e:
            raise web.HTTPError(400, str(e)) from None
        owner = self.current_user.name if self.current_user.kind == "user" else None
        user_name = request.user or owner
        if user_name is None:
            raise web.HTTPError(400, "a service must name the job's 'user'")
        self.check_access(START_SCOPES, user_name)
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, "No access to resources or resources not found")
        if not self.allow_named_servers:
            raise web.HTTPError(400, "Named servers are not enabled.")

        await lifecycle.remove_old(self, user, cfg, self.files)
        key = lifecycle.request_key(request)
        active = 0
        for name, spawner, record in lifecycle.jobs_of(user):
            if lifecycle.is_active(user, name, spawner):
                if {k: v for k, v in record["request"].items() if k != "user"} == key:
                    return self._created(user.name, name)
                active += 1
        if cfg.job_server_limit_per_user and active >= cfg.job_server_limit_per_user:
            raise web.HTTPError(
                400,
                f"User {user.name} already has {active} active jobs, the most allowed "
                f"({cfg.job_server_limit_per_user}). Wait for one to finish or cancel one.",
            )
        limit = await self.get_current_user_named_server_limit()
        named = len([n for n in user.orm_spawners if n])
        if limit and named >= limit:
            raise web.HTTPError(
                400,
                f"User {user.name} already has the maximum of {limit} named servers. "
                "One must be deleted before a job can start.",
            )

        name = new_job_name()
        create = getattr(user, "get_or_create_spawner", None)
        spawner = create(name, name) if create else user.spawners[name]
        if not hasattr(spawner, "extra_state") or not hasattr(spawner, "custom_misc"):
            await lifecycle.remove(self, user, name, self.files)
            raise web.HTTPError(400, "Jobs need the OutpostSpawner as the spawner class.")
        spawner.extra_state["job"] = store.new_record(request.as_dict(), cfg.job_timeout)
        spawner.user_options = spawner.orm_spawner.user_options = request.user_options
        store.save(spawner, self.db)
        lifecycle.submit(self, user, spawner, request, cfg)
        self.log.info("job %s/%s submitted by %s", user.name, name, self.current_user.name)
        self._created(user.name, name)

    def _created(self, user_name: str, server_name: str) -> None:
        url = self.job_url(user_name, server_name)
        self.set_status(201)
        self.set_header("Location", url)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(url)


class JobAPIHandler(JobBaseHandler):
    async def get(self, user_name: str, server_name: str):
        self.prepare_jobs()
        self.check_access(READ_SCOPES, user_name, server_name)
        user, spawner, record = self.find_job(user_name, server_name)
        key = (user.name, server_name)
        view = store.job_view(key, spawner, record, self.job_url(user.name, server_name))
        if view["status"] == "stopped" and record.get("end_time") is None:
            record["end_time"] = time.time()
            store.save(spawner, self.db)
            view["end_time"] = store.job_view(key, spawner, record, "")["end_time"]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(view))

    async def delete(self, user_name: str, server_name: str):
        self.prepare_jobs()
        self.check_access(DELETE_SCOPES, user_name, server_name)
        user, _, _ = self.find_job(user_name, server_name)
        lifecycle.background(
            lifecycle.remove(self, user, server_name, self.files), f"job-remove-{server_name}"
        )
        self.set_status(204)
        self.finish()


class JobResultsAPIHandler(JobBaseHandler):
    async def post(self, user_name: str, server_name: str):
        self.prepare_jobs()
        self.check_access(REPORT_SCOPES, user_name, server_name)
        cfg = self.cfg
        body = self.json_body(max_bytes=cfg.max_notebook_bytes + 2 * MAX_BODY)
        user, spawner, record = self.find_job(user_name, server_name)
        try:
            report = parse_result_report(body, cfg.max_notebook_bytes)
        except ResultError as e:
            raise web.HTTPError(400, str(e)) from None
        if report.finished:
            record["finished_exit_code"] = report.exit_code
            record["end_time"] = time.time()
        else:
            executed = None
            if report.executed_notebook_size is not None:
                executed = {
                    "size": report.executed_notebook_size,
                    "stored": report.executed_notebook is not None,
                }
            try:
                index = store.add_result(record, report.result, executed)
            except ValueError as e:
                raise web.HTTPError(400, str(e)) from None
            if report.executed_notebook is not None:
                await self.files.write(user.name, server_name, index, report.executed_notebook)
        store.save(spawner, self.db)
        self.set_status(204)
        self.finish()


class JobNotebookAPIHandler(JobBaseHandler):
    async def get(self, user_name: str, server_name: str, index: str):
        self.prepare_jobs()
        self.check_access(READ_SCOPES, user_name, server_name)
        user, _, record = self.find_job(user_name, server_name)
        i = int(index)
        results = record["results"]
        executed = results[i].get("executed_notebook") if i < len(results) else None
        if not executed:
            raise web.HTTPError(404, "no executed notebook was reported for this result")
        if not executed.get("stored"):
            raise web.HTTPError(
                413,
                f"The executed notebook has {executed['size']} bytes, more than the Hub "
                f"keeps ({self.cfg.max_notebook_bytes}); it is on the remote system in "
                f"~/.outpostspawner-jobs/{server_name}/.",
            )
        data = await self.files.read(user.name, server_name, i)
        if data is None:
            raise web.HTTPError(404, "the executed notebook is no longer on the Hub")
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.finish(data)


handlers = [
    (r"/api/job/?", JobSubmitAPIHandler),
    (r"/api/job/([^/]+)/([^/]+)/results/?", JobResultsAPIHandler),
    (r"/api/job/([^/]+)/([^/]+)/notebooks/([0-9]{1,3})/?", JobNotebookAPIHandler),
    (r"/api/job/([^/]+)/([^/]+)/?", JobAPIHandler),
]
