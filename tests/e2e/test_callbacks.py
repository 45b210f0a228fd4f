"""The Hub endpoints the remote side calls, in a real JupyterHub: scopes and hostile input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


async def pending_record(hub, user: str):
    """Wait until the Outpost holds the start of ``user``'s default server."""

    async def found():
        starts = hub.start_requests(user)
        return hub.outpost.get_service(starts[-1].json["name"]) if starts else None

    return await wait_for(found, timeout=20, message=f"start request for {user}")


async def test_events_while_pending_and_remote_failure(hub, outpost_settings):
    user = "cb-events"
    token = await hub.create_user(user)
    outpost_settings.start_delay = 30
    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code == 202, resp.text
    record = await pending_record(hub, user)
    server_token = record.env["JUPYTERHUB_API_TOKEN"]
    events_url = record.env["JUPYTERHUB_EVENTS_URL"]
    assert events_url == f"{hub.hub_url}/hub/api/users/progress/events/{user}"

    # the user's own (non-server) token and another user's token are refused
    other = await hub.create_user("cb-events-other")
    resp = await hub.fetch(events_url, "POST", token=other, body={"message": "x"})
    assert resp.code in (403, 404), resp.code

    resp = await hub.fetch(
        events_url,
        "POST",
        token=server_token,
        body={"progress": 60, "message": "queued", "html_message": "<img src=x onerror=alert(1)>"},
    )
    assert resp.code == 204, resp.text
    resp = await hub.api("GET", f"/users/progress/events/{user}")
    assert resp.code == 200, resp.text
    state = resp.json()
    assert state["active"] is True and state["ready"] is False
    (queued,) = [e for e in state["events"] if e.get("message") == "queued"]
    assert queued["html_message"] == "&lt;img src=x onerror=alert(1)&gt;"

    # malformed events change nothing
    for body in ({"progress": "lots"}, ["x"], {"failed": "yes"}):
        resp = await hub.fetch(events_url, "POST", token=server_token, body=body)
        assert resp.code == 400, (body, resp.code)

    # the remote side fails the start: the user sees the reason, nothing is left
    resp = await hub.fetch(
        events_url,
        "POST",
        token=server_token,
        body={"failed": True, "message": "no <nodes> free"},
    )
    assert resp.code == 204, resp.text
    await hub.wait_stopped(user)
    resp = await hub.fetch(
        f"{hub.url}/hub/api/users/{user}/server/progress",
        token=token,
    )
    assert "no &lt;nodes&gt; free" in resp.text, resp.text[:2000]
    await wait_for(
        lambda: asyncio.sleep(0, hub.outpost.get_service(record.name) is None),
        timeout=10,
        message="the Outpost entry to go",
    )
    assert len(hub.stop_requests(record.name)) == 1


async def test_hostile_callback_bodies(hub, outpost_settings):
    user = "cb-hostile"
    await hub.create_user(user)
    outpost_settings.start_delay = 30
    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code == 202, resp.text
    record = await pending_record(hub, user)
    token = record.env["JUPYTERHUB_API_TOKEN"]
    tunnel_url = record.env["JUPYTERHUB_SETUPTUNNEL_URL"]
    hostile = [
        {"service": "host;id:80"},
        {"service": "$(touch /tmp/pwned):22"},
        {"service": "-oProxyCommand=touch:22"},
        {"service": "127.0.0.1:0"},
        {"service": "127.0.0.1:65536"},
        {"service": "127.0.0.1:8080", "ssh_forward_options": {"ProxyCommand": "touch /tmp/x"}},
        {"service": "127.0.0.1:8080", "ssh_node": "-oLocalCommand=id"},
        {"service": "127.0.0.1:8080", "ssh_key": "/etc/shadow"},
        {"service": ["127.0.0.1:8080"]},
        "127.0.0.1:8080",
    ]
    for body in hostile:
        resp = await hub.fetch(tunnel_url, "POST", token=token, body=body)
        assert resp.code == 400, (body, resp.code, resp.text)
    resp = await hub.http.fetch(
        tunnel_url,
        method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        body=b"{not json",
        raise_error=False,
    )
    assert resp.code == 400
    resp = await hub.http.fetch(
        tunnel_url,
        method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        body=b'{"service": "' + b"a" * (10 * 1024 * 1024) + b'"}',
        raise_error=False,
        request_timeout=30,
    )
    assert resp.code in (400, 413), resp.code
    # the start is still pending and the Hub healthy
    model = await hub.server_model(user)
    assert model and model["pending"] == "spawn", model
    resp = await hub.api("GET", "/")
    assert resp.code == 200
    assert not await asyncio.to_thread(Path("/tmp/pwned").exists)

    resp = await hub.api("DELETE", hub.server_path(user))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user)
    assert hub.outpost.get_service(record.name) is None


async def test_server_list_flavors_and_recreate_scopes(hub, outpost_settings):
    user = "cb-list"
    user_token = await hub.create_user(user)
    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready(user)
    (start,) = hub.start_requests(user)
    expected = f"{start.json['env']['JUPYTERHUB_USER_ID']}_{start.json['name']}_{start.json['user_options']['start_id']}"

    outpost = hub.outpost_service_token
    resp = await hub.fetch(f"{hub.hub_url}/hub/api/servers", token=outpost)
    assert resp.code == 200, resp.text
    assert expected in resp.json()
    # without the custom scope: refused
    resp = await hub.fetch(f"{hub.hub_url}/hub/api/servers", token=user_token)
    assert resp.code == 403

    flavors = {"small": {"max": 4, "current": 1, "display_name": "<b>small</b>"}}
    url = f"{hub.hub_url}/hub/api/outpostflavors/system-a"
    resp = await hub.fetch(url, "POST", token=user_token, body=flavors)
    assert resp.code == 403
    resp = await hub.fetch(url, "POST", token=outpost, body=flavors)
    assert resp.code == 204, resp.text
    for bad in (["x"], {"small": 3}):
        resp = await hub.fetch(url, "POST", token=outpost, body=bad)
        assert resp.code == 400
    resp = await hub.fetch(
        f"{hub.hub_url}/hub/api/outpostflavors/-oProxyCommand", "POST", token=outpost, body={}
    )
    assert resp.code == 400
    resp = await hub.fetch(f"{hub.hub_url}/hub/api/outpostflavors", token=user_token)
    assert resp.code == 200
    # validated and normalized: the known fields only, with their defaults
    small = {"max": 4, "current": 1, "weight": 0, "display_name": "<b>small</b>", "description": ""}
    assert resp.json() == {"system-a": {"small": small}}

    resp = await hub.fetch(f"{hub.hub_url}/hub/api/recreateforward/node1.example", token=outpost)
    assert resp.code == 202 and resp.json() == {"tunnels": 0}
    resp = await hub.fetch(f"{hub.hub_url}/hub/api/recreateforward/node1", token=user_token)
    assert resp.code == 403
    resp = await hub.fetch(f"{hub.hub_url}/hub/api/recreateforward/-oX", token=outpost)
    assert resp.code == 400

    # a failure reported for a running server stops it
    record = hub.outpost.get_service(start.json["name"])
    resp = await hub.fetch(
        record.env["JUPYTERHUB_EVENTS_URL"],
        "POST",
        token=record.env["JUPYTERHUB_API_TOKEN"],
        body={"failed": True, "message": "node crashed"},
    )
    assert resp.code == 204, resp.text
    await hub.wait_stopped(user)
    assert hub.outpost.get_service(start.json["name"]) is None


async def test_metrics_on_hub_metrics(hub, outpost_settings):
    """The package's metrics are served with JupyterHub's own."""
    user = "cb-metrics"
    await hub.create_user(user)
    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready(user)
    resp = await hub.fetch(f"{hub.hub_url}/hub/metrics", token=hub.api_token)
    assert resp.code == 200, resp.code
    text = resp.text
    assert (
        'outpostspawner_outpost_request_duration_seconds_count{action="start",status="200"}' in text
    )
    assert "outpostspawner_active_forwards" in text
    assert "outpostspawner_forwarder_restarts_total" in text
    resp = await hub.api("DELETE", hub.server_path(user))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user)
