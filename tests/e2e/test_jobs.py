"""End-to-end: notebook jobs through ``/hub/api/job``.

A real JupyterHub + configurable-http-proxy; the reference Outpost runs each
job's command (``misc.cmd``/``args``, allowed as a real Outpost's
``allow_override`` allows them) as a local process: a login shell, the job's
program, ``jupyterhub-singleuser`` beside it and real papermill on real
notebooks in a temporary home.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from outpostspawner.jobs.model import is_job_name
from outpostspawner.testing import ReferenceOutpost
from outpostspawner.testing.notebooks import write_notebook

from .conftest import (
    OUTPOST_CREDENTIALS,
    SINGLEUSER_COMMAND,
    HubProcess,
    restart_hub,
    start_hub,
    stop_hub,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

#: seconds a short job may take from submission to its end on a small machine
JOB_DONE = 150

JOBS_CONFIG = """
import time

c.JupyterHub.cleanup_servers = False  # the restart test leaves a job running
c.JobAPIHandlerConfig.python = {python!r}
c.JobAPIHandlerConfig.server_command = {server!r}
c.JobAPIHandlerConfig.poll_interval = 1
c.JobAPIHandlerConfig.job_server_limit_per_user = 2
c.JobAPIHandlerConfig.confine_to_home = True
c.JobAPIHandlerConfig.max_notebook_bytes = 200_000
c.JobAPIHandlerConfig.default_user_options = {{"system": {{"partition": "batch"}}}}
c.Spawner.http_timeout = 60
c.Spawner.start_timeout = 120


def custom_env(spawner, user_options):
    env = {{"HOME": {home!r}}}
    if user_options.get("e2e_no_callback"):
        env["JUPYTERHUB_JOB_RESULTS_URL"] = ""  # results only through the logs
    return env


c.OutpostSpawner.custom_env = custom_env


async def prepare_job(request, spawner):
    options = request["user_options"]
    if options.get("e2e_prepare_fail"):
        raise ValueError("no compute time left on " + options["option"])
    if options.get("e2e_no_logs"):  # an Outpost whose spawner returns no logs
        spawner.collect_logs = spawner.collect_logs_polling = False
    if options.get("e2e_timeout"):
        spawner.extra_state["job"]["deadline"] = time.time() + options["e2e_timeout"]
    await asyncio.sleep(float(options.get("e2e_prepare_delay", 0)))


c.JobAPIHandlerConfig.prepare_job = prepare_job
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    write_notebook(home / "ok" / "hello.ipynb", "print('hello from the job')")
    write_notebook(home / "param" / "double.ipynb", "print('n is', n * 2)", parameters="n = 1")
    write_notebook(home / "fails" / "broken.ipynb", "raise ValueError('cell <b>broke</b>')")
    write_notebook(home / "fails" / "big.ipynb", "print('x' * 300_000)")
    write_notebook(home / "long" / "sleep.ipynb", "import time\ntime.sleep(600)")
    write_notebook(home / "short" / "sleep.ipynb", "import time\ntime.sleep(20)\nprint('slept')")
    return home


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def job_outpost():
    async with ReferenceOutpost(
        credentials=dict([OUTPOST_CREDENTIALS]),
        command=SINGLEUSER_COMMAND,
        allow_override=["cmd", "args"],
    ) as outpost:
        yield outpost


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hubs(job_outpost, home, tmp_path_factory):
    """``{"hub": HubProcess}``: the restart test replaces the Hub."""
    config = JOBS_CONFIG.format(python=sys.executable, server=SINGLEUSER_COMMAND, home=str(home))
    holder = {
        "hub": await start_hub(
            tmp_path_factory.mktemp("jobs-hub"), job_outpost, extra_config=config
        )
    }
    try:
        yield holder
    finally:
        await stop_hub(holder["hub"])


@pytest.fixture
def hub(hubs) -> HubProcess:
    return hubs["hub"]


async def submit(hub: HubProcess, token: str, body: dict, expect: int = 201):
    resp = await hub.api("POST", "/job", token=token, body=body)
    assert resp.code == expect, f"{resp.code} {resp.text}\n{hub.log_tail()}"
    return resp


def job_path(url: str) -> str:
    """``/job/{user}/{server}`` of a job URL."""
    return urlsplit(url).path.split("/hub/api", 1)[1]


async def job(hub: HubProcess, url: str, token: str) -> dict:
    resp = await hub.api("GET", job_path(url), token=token)
    assert resp.code == 200, f"{resp.code} {resp.text}"
    return resp.json()


async def wait_job(hub, url, token, status="stopped", timeout=JOB_DONE) -> dict:
    async def reached():
        view = await job(hub, url, token)
        return view if view["status"] == status else None

    return await wait_for(
        reached, timeout=timeout, interval=0.5, message=lambda: f"job {status}\n{hub.log_tail()}"
    )


async def nothing_left(hub: HubProcess, user: str) -> None:
    """No service of the user at the Outpost and no process of one."""

    async def gone():
        return not hub.services_for(user)

    await wait_for(gone, timeout=30, message=lambda: f"{user}'s services to be gone")


async def test_jobs_report_their_results_by_callback(hub):
    """Two jobs at once, from the user's own token: one succeeds (with a papermill
    parameter), one has a failing cell. No logs come from the Outpost: the results
    arrive only through the callback."""
    token = await hub.create_user("job-ann")
    ok = await submit(
        hub,
        token,
        {
            "user_options": {"option": "cluster-a", "e2e_no_logs": True},
            "notebooks": ["ok/hello.ipynb", "param/double.ipynb"],
            "parameters": {"n": 21},
        },
    )
    bad = await submit(
        hub,
        token,
        {"user_options": {"option": "cluster-a", "e2e_no_logs": True}, "notebook_dirs": ["fails"]},
    )
    url = ok.text
    assert ok.headers["Location"] == url and url.startswith(hub.url + "/hub/api/job/job-ann/")
    assert is_job_name(url.rsplit("/", 1)[1])
    view = await job(hub, url, token)
    assert view["status"] in ("preparing", "spawning", "running")
    assert view["exit_code"] is None

    done = await wait_job(hub, url, token)
    assert done["exit_code"] == 0, done
    assert done["results_source"] == "callback" and done["logs"] == []
    by_name = {r["notebook"]: r for r in done["results"]}
    assert sorted(by_name) == ["ok/hello.ipynb", "param/double.ipynb"]
    assert all(r["exit_code"] == 0 and r["duration"] > 0 for r in done["results"])
    assert done["start_time"] < done["end_time"]
    # the executed notebook, parameter injected, from the Hub
    nb_url = by_name["param/double.ipynb"]["executed_notebook_url"]
    resp = await hub.api("GET", job_path(nb_url), token=token)
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("application/x-ipynb+json")
    outputs = [o for c in resp.json()["cells"] for o in c.get("outputs", [])]
    assert any("n is 42" in "".join(o.get("text", "")) for o in outputs)  # text: str or lines

    failed = await wait_job(hub, bad.text, token)
    assert failed["exit_code"] == 1
    big, broken = failed["results"]  # in path order
    assert broken["notebook"] == "fails/broken.ipynb" and broken["exit_code"] != 0
    assert broken["error_name"] == "ValueError"
    assert broken["error_message"] == "cell <b>broke</b>"
    # an executed notebook over max_notebook_bytes stays on the remote system
    assert big["exit_code"] == 0 and big["executed_notebook_size"] > 200_000
    resp = await hub.api("GET", job_path(big["executed_notebook_url"]), token=token)
    assert resp.code == 413 and "more than the Hub keeps" in resp.json()["message"]
    # the start body: the merged user_options and the job's command
    (start, *_) = [r.json for r in hub.start_requests("job-ann")]
    assert start["user_options"]["system"] == {"partition": "batch"}
    assert start["user_options"]["profile"] == "cluster-a"
    assert start["misc"]["cmd"] == ["/bin/bash", "-lc"]
    assert start["env"]["JUPYTERHUB_JOB_RESULTS_URL"].endswith("/results")
    await nothing_left(hub, "job-ann")


async def test_results_through_the_logs_only(hub):
    """The remote side cannot reach the results callback: the results come from
    the ``collect_logs`` block, as the existing job API reads them."""
    token = await hub.create_user("job-bob")
    resp = await submit(
        hub,
        token,
        {"user_options": {"option": "cluster-b", "e2e_no_callback": True}, "notebook_dirs": ["ok"]},
    )
    done = await wait_job(hub, resp.text, token)
    assert done["results_source"] == "logs", done
    assert done["exit_code"] == 0
    assert [r["notebook"] for r in done["results"]] == ["ok/hello.ipynb"]
    # the logs are cut to the block between the markers, as the existing API does
    block = json.loads("\n".join(done["logs"]))
    assert block["exitCode"] == 0 and block["results"][0]["notebook"] == "ok/hello.ipynb"
    await nothing_left(hub, "job-bob")


async def test_cancel_a_running_job(hub):
    token = await hub.create_user("job-cyd")
    resp = await submit(
        hub, token, {"user_options": {"option": "c"}, "notebooks": ["long/sleep.ipynb"]}
    )
    await wait_job(hub, resp.text, token, status="running")
    (record,) = hub.services_for("job-cyd")
    resp2 = await hub.api("DELETE", job_path(resp.text), token=token)
    assert resp2.code == 204

    async def removed():
        return (await hub.api("GET", job_path(resp.text), token=token)).code == 404

    await wait_for(removed, timeout=60, message="the cancelled job to be removed")
    await nothing_left(hub, "job-cyd")
    assert record.process.returncode is not None
    user = (await hub.api("GET", "/users/job-cyd")).json()
    assert user["servers"] == {}


async def test_a_job_is_stopped_at_its_timeout(hub):
    token = await hub.create_user("job-dan")
    resp = await submit(
        hub,
        token,
        {"user_options": {"option": "d", "e2e_timeout": 20}, "notebooks": ["long/sleep.ipynb"]},
    )
    await wait_job(hub, resp.text, token, status="running")
    done = await wait_job(hub, resp.text, token, timeout=90)
    assert done["exit_code"] == 1
    assert "timeout" in done["error"]
    await nothing_left(hub, "job-dan")


async def test_prepare_job_failure_fails_the_job_and_starts_nothing(hub):
    token = await hub.create_user("job-eve")
    resp = await submit(hub, token, {"user_options": {"option": "e", "e2e_prepare_fail": True}})
    done = await wait_job(hub, resp.text, token, timeout=30)
    assert done["exit_code"] == 1
    assert "no compute time left on e" in done["error"]
    assert hub.start_requests("job-eve") == []


async def test_reuse_limits_and_other_users(hub):
    """Jobs held in their preparation (no process starts) show reuse and limits."""
    token = await hub.create_user("job-fay")
    other = await hub.create_user("job-gus")
    hold = {"option": "f", "e2e_prepare_delay": 60}
    first = await submit(hub, token, {"user_options": hold, "notebook_dirs": ["ok"]})
    again = await submit(hub, token, {"user_options": hold, "notebook_dirs": ["ok"]})
    assert again.text == first.text  # the same active job
    second = await submit(hub, token, {"user_options": hold, "notebook_dirs": ["param"]})
    assert second.text != first.text
    assert (await job(hub, first.text, token))["status"] == "preparing"
    limit = await submit(hub, token, {"user_options": hold, "notebook_dirs": ["fails"]}, expect=400)
    assert "2 active jobs" in limit.json()["message"]
    # another user's token sees nothing of them, and cannot submit for this user
    for method in ("GET", "DELETE"):
        resp = await hub.api(method, job_path(first.text), token=other)
        assert resp.code == 404, resp.text
    resp = await hub.api(
        "POST",
        "/job/job-fay/" + first.text.rsplit("/", 1)[1] + "/results",
        token=other,
        body={"finished": True, "exit_code": 0},
    )
    assert resp.code == 404
    await submit(hub, other, {"user_options": hold, "user": "job-fay"}, expect=404)
    # an administrator (the test service, admin:servers) may submit for the user
    await submit(
        hub,
        hub.api_token,
        {"user_options": {"option": "f"}, "user": "job-gus", "notebooks": ["ok/hello.ipynb"]},
    )
    for url in (first.text, second.text):
        assert (await hub.api("DELETE", job_path(url), token=token)).code == 204

    async def all_removed():
        user = (await hub.api("GET", "/users/job-fay")).json()
        return user["servers"] == {} and not hub.start_requests("job-fay")

    await wait_for(all_removed, timeout=60, message="the held jobs to be removed")
    assert hub.start_requests("job-fay") == []


async def run_cli(hub: HubProcess, token: str, *argv: str) -> tuple[int, str, str]:
    """``python -m outpostspawner.jobs ARGV`` against the Hub, the token in the env."""
    env = {**os.environ, "JUPYTERHUB_URL": hub.url, "JUPYTERHUB_API_TOKEN": token}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outpostspawner.jobs", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), JOB_DONE)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert token not in out.decode() + err.decode()
    return proc.returncode, out.decode(), err.decode()


async def test_the_command_line_client(hub):
    """``submit --wait`` shows progress and ends with the job's exit code; ``status``
    and ``cancel`` act on the job's URL."""
    token = await hub.create_user("job-ike")
    code, out, err = await run_cli(
        hub, token, "submit", "--option", "cli", "--notebook", "param/double.ipynb",
        "--notebook", "fails/broken.ipynb", "-p", "n=21", "--wait", "--interval", "1",
    )  # fmt: skip
    assert code == 1, f"{out}\n{err}\n{hub.log_tail()}"
    url = out.splitlines()[0]
    assert url.startswith(hub.url + "/hub/api/job/job-ike/")
    assert "status: running" in err and "param/double.ipynb: ok" in err
    assert "fails/broken.ipynb: FAILED ValueError: cell <b>broke</b>" in out
    code, out, _ = await run_cli(hub, token, "status", "--json", url)
    assert code == 0 and json.loads(out)["exit_code"] == 1
    code, out, _ = await run_cli(hub, token, "cancel", url)
    assert (code, out.strip()) == (0, "cancelled")

    async def removed():
        return (await hub.api("GET", job_path(url), token=token)).code == 404

    await wait_for(removed, timeout=60, message="the job to be removed")
    code, _, err = await run_cli(hub, token, "status", url)
    assert code == 2 and "404" in err
    await nothing_left(hub, "job-ike")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user_options": {}}, "Missing 'option' in user_options"),
        ({"user_options": {"option": "x"}, "notebook_dirs": "ok"}, "list of paths"),
        ({"user_options": {"option": "x"}, "notebooks": ["/etc/passwd.ipynb"]}, "leaves the home"),
        ({"user_options": {"option": "x"}, "notebook_dirs": ["../.."]}, "leaves the home"),
        ({"user_options": {"option": "x"}, "parameters": {"a b": 1}}, "identifiers"),
        ({"user_options": {"option": "x"}, "command": "rm -rf ~"}, "unknown fields"),
        ([1, 2], "JSON object"),
    ],
)
async def test_bad_bodies_are_refused_and_start_nothing(hub, hal, body, message):
    resp = await submit(hub, hal, body, expect=400)
    assert message in resp.json()["message"]
    user = (await hub.api("GET", "/users/job-hal")).json()
    assert user["servers"] == {}
    assert hub.start_requests("job-hal") == []


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hal(hubs):
    return await hubs["hub"].create_user("job-hal")


async def test_a_job_survives_a_hub_restart(hubs):
    """Last in the module: it replaces the Hub."""
    hub = hubs["hub"]
    token = await hub.create_user("job-ivy")
    resp = await submit(
        hub, token, {"user_options": {"option": "i"}, "notebooks": ["short/sleep.ipynb"]}
    )
    await wait_job(hub, resp.text, token, status="running")
    (record,) = hub.services_for("job-ivy")
    await stop_hub(hub)
    hub = hubs["hub"] = await restart_hub(hub)
    done = await wait_job(hub, resp.text, token)
    assert done["exit_code"] == 0, done
    assert [r["notebook"] for r in done["results"]] == ["short/sleep.ipynb"]
    assert len(hub.start_requests("job-ivy")) == 1  # started once, not again
    await nothing_left(hub, "job-ivy")
    assert record.process.returncode is not None
