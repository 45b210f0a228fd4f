"""End-to-end: a real JupyterHub, configurable-http-proxy and jupyterhub-singleuser,
with the reference Outpost in between."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from outpostspawner.testing import Fault

from .conftest import free_port, process_gone, tail, wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


async def assert_singleuser_api(hub, user: str, server: str, token: str) -> None:
    """The server answers its REST API through the proxy with the user's token."""
    prefix = f"/user/{user}/{server}/" if server else f"/user/{user}/"
    resp = await hub.fetch(f"{hub.url}{prefix}api/status", token=token)
    assert resp.code == 200, f"{resp.code} {resp.text[:500]}"
    status = resp.json()
    assert "started" in status and "connections" in status  # jupyter-server's status model
    resp = await hub.fetch(f"{hub.url}{prefix}api", token=token)
    assert resp.code == 200
    assert "version" in resp.json()


async def assert_stopped_cleanly(hub, record, name: str) -> None:
    """After a stop: one DELETE, no process, no Outpost entry, no proxy route."""
    assert len(hub.stop_requests(name)) == 1, [r.path for r in hub.stop_requests(name)]
    await wait_for(
        lambda: asyncio.to_thread(process_gone, record.pid),
        timeout=10,
        message=f"pid {record.pid} to exit",
    )
    assert hub.outpost.get_service(name) is None
    routes = await hub.routes()
    prefix = record.env["JUPYTERHUB_SERVICE_PREFIX"].rstrip("/")
    assert prefix not in routes, sorted(routes)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_demo_check(tmp_path):
    """``run_demo.py --check`` starts the demo, spawns a server, reaches it through
    an SSH forward and shuts down."""
    env = dict(os.environ, DEMO_PORT=str(free_port()), DEMO_DATA_DIR=str(tmp_path / "demo"))
    out = tmp_path / "demo.log"
    logf = await asyncio.to_thread(open, out, "wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "examples" / "demo" / "run_demo.py"),
            "--check",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=logf,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(REPO),
            env=env,
            start_new_session=True,
        )
    finally:
        logf.close()
    try:
        code = await asyncio.wait_for(proc.wait(), timeout=120)
    except asyncio.TimeoutError:
        # run_demo.py stops its children on SIGTERM (the Hub, then the Outpost)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=80)
        except asyncio.TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), timeout=10)
        pytest.fail(f"run_demo.py --check timed out:\n{tail(out, 80)}")
    output = await asyncio.to_thread(out.read_text)
    assert code == 0, tail(out, 80)
    assert "demo check passed" in output
    # the proxy's route led to the forward, not to the Outpost's address
    assert "check: the proxy connects to the forward 127.0.0.1:" in output


@pytest.mark.slow
async def test_default_and_named_server(hub, outpost_settings):
    user = "e2e-alice"
    token = await hub.create_user(user)

    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code in (201, 202), resp.text
    resp = await hub.api("POST", hub.server_path(user, "gpu"), body={"system": "B"})
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready(user)
    await hub.wait_ready(user, "gpu")

    await assert_singleuser_api(hub, user, "", token)
    await assert_singleuser_api(hub, user, "gpu", token)

    # what the Outpost was asked for
    starts = hub.start_requests(user)
    assert len(starts) == 2
    by_server = {}
    for req in starts:
        assert req.headers["Authorization"] == "Basic ***"  # Basic auth, redacted by the Outpost
        body = req.json
        env = body["env"]
        assert env["JUPYTERHUB_API_TOKEN"]
        assert "PATH" not in env
        # only the JUPYTERHUB_*/JUPYTER_* subset of the Hub's environment
        assert all(k.startswith(("JUPYTERHUB_", "JUPYTER_")) for k in env), sorted(env)
        assert body["user_options"]["start_id"]
        by_server[env.get("JUPYTERHUB_SERVER_NAME", "")] = body
    assert set(by_server) == {"", "gpu"}
    assert by_server["gpu"]["user_options"]["system"] == "B"
    assert "system" not in by_server[""]["user_options"]
    names = {b["name"] for b in by_server.values()}
    assert len(names) == 2, names  # unique per server
    user_id = by_server[""]["env"]["JUPYTERHUB_USER_ID"]
    assert by_server[""]["name"] == user_id
    assert by_server["gpu"]["name"] == f"{user_id}-gpu"

    records = {s: hub.outpost.get_service(b["name"]) for s, b in by_server.items()}
    for record in records.values():
        assert record is not None and record.ready and record.status is None
        assert not await asyncio.to_thread(process_gone, record.pid)
    routes = await hub.routes()
    assert {f"/user/{user}", f"/user/{user}/gpu"} <= routes, routes

    # stop both
    resp = await hub.api("DELETE", hub.server_path(user, "gpu"))
    assert resp.code in (202, 204), resp.text
    resp = await hub.api("DELETE", hub.server_path(user))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user, "gpu")
    await hub.wait_stopped(user)
    for server, record in records.items():
        await assert_stopped_cleanly(hub, record, by_server[server]["name"])
    resp = await hub.fetch(f"{hub.url}/user/{user}/api/status", token=token)
    assert resp.code != 200


async def test_failed_start_shows_escaped_error(hub, outpost_settings):
    user = "e2e-fail"
    token = await hub.create_user(user)
    message = "quota <b>exceeded</b> & no <script>x</script>"
    outpost_settings.faults.add(Fault("start", "419", body=message, count=1))

    # keep the start pending for a moment, so the page's event stream is open
    resp = await hub.api("POST", hub.server_path(user), body={"e2e_delay": 2})
    assert resp.code == 202, resp.text
    events = await hub.progress(user, token)
    failed = [e for e in events if e.get("failed")]
    assert failed, events
    final = failed[-1]
    assert message in final["message"]  # plain text stays plain text
    for event in events:
        assert "<b>" not in event.get("html_message", ""), event
        assert "<script>" not in event.get("html_message", ""), event
    assert "quota &lt;b&gt;exceeded&lt;/b&gt; &amp; no &lt;script&gt;" in final["html_message"]

    # the stream opened after the failure shows it too
    await hub.wait_stopped(user)
    events = await hub.progress(user, token)
    assert events and events[-1]["failed"], events
    assert "quota &lt;b&gt;exceeded" in events[-1]["html_message"]

    # nothing is left at the Outpost
    (start,) = hub.start_requests(user)
    assert hub.outpost.get_service(start.json["name"]) is None
    assert hub.services_for(user) == []


async def test_cancel_pending_start(hub, outpost_settings):
    user = "e2e-cancel"
    await hub.create_user(user)
    outpost_settings.start_delay = 60

    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code == 202, resp.text

    async def started():
        records = hub.services_for(user)
        return records[0] if records and records[0].pid else None

    record = await wait_for(started, timeout=15, message="the Outpost to start the process")
    assert not record.ready
    model = await hub.server_model(user)
    assert model is not None and model["pending"] == "spawn"

    resp = await hub.api("DELETE", hub.server_path(user))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user)
    await wait_for(
        lambda: asyncio.to_thread(process_gone, record.pid),
        timeout=15,
        message=f"pid {record.pid} to exit",
    )
    assert hub.services_for(user) == []
    assert len(hub.stop_requests(record.name)) == 1
    assert f"/user/{user}" not in await hub.routes()


@pytest.mark.slow
async def test_slow_start_within_default_start_timeout(hub, outpost_settings):
    """A start that takes 25 s at the Outpost succeeds under the default start_timeout."""
    user = "e2e-slow"
    token = await hub.create_user(user)
    outpost_settings.start_delay = 25

    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code == 202, resp.text
    await asyncio.sleep(10)
    model = await hub.server_model(user)
    assert model is not None and model["pending"] == "spawn", model
    await hub.wait_ready(user, timeout=55)
    await assert_singleuser_api(hub, user, "", token)

    (start,) = hub.start_requests(user)
    record = hub.outpost.get_service(start.json["name"])
    resp = await hub.api("DELETE", hub.server_path(user))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user)
    await assert_stopped_cleanly(hub, record, start.json["name"])


async def test_async_start_address_by_callback(hub, outpost_settings):
    """start_async: the Outpost answers 202, later POSTs the address to the Hub's
    setuptunnel endpoint with the server's token, and the server becomes ready."""
    user = "e2e-async"
    token = await hub.create_user(user)
    outpost_settings.start_delay = 0.5
    resp = await hub.api("POST", hub.server_path(user), body={"e2e_async": True})
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready(user)
    await assert_singleuser_api(hub, user, "", token)
    (start,) = hub.start_requests(user)
    assert start.headers.get("Execution-Type") == "async"
    record = hub.outpost.get_service(start.json["name"])
    assert record.address_reported == 202

    # another user's token may not report an address for this server
    other = await hub.create_user("e2e-async-other")
    resp = await hub.fetch(
        f"{hub.url}/hub/api/users/{user}/setuptunnel",
        method="POST",
        token=other,
        body={"service": "127.0.0.1:1"},
    )
    assert resp.code in (403, 404), resp.code

    resp = await hub.api("DELETE", hub.server_path(user))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user)
    await assert_stopped_cleanly(hub, record, start.json["name"])
