"""End-to-end: the three ways a server becomes reachable, in a real JupyterHub with
configurable-http-proxy, real ``jupyterhub-singleuser`` servers, a real OpenSSH
node, the Hub's supervised forwarder process and a fake Kubernetes API server.

(a) direct: the proxy connects to the address the Outpost reported;
(b) SSH forward at start (``ssh_during_startup``) with a Kubernetes Service;
(c) delayed tunnel: an async start, the address reported later to the Hub's
    setuptunnel endpoint with the server's own token, then an SSH forward and a
    Kubernetes Service.

Each server is used through the proxy (REST and a websocket), then stopped, and
nothing may be left: no process, no listener, no forward, no Service, no Outpost
entry.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import pytest_asyncio

from .conftest import process_gone, start_hub, stop_hub, wait_for
from .forwarding import (
    hub_forwards,
    mode_body,
    modes_config,
    port_listening,
    route_target,
    services_in,
    start_request,
    use_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hub(outpost, ssh_node, k8s, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub-modes")
    hub = await start_hub(
        tmp, outpost, extra_config=modes_config(ssh_node, k8s, tmp / "known_hosts")
    )
    try:
        yield hub
    finally:
        await stop_hub(hub)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("mode", "svc"),
    [("direct", False), ("ssh", True), ("tunnel", True)],
    ids=["direct", "ssh-at-start", "delayed-tunnel"],
)
async def test_server_reached_used_and_cleaned_up(hub, k8s, ssh_node, outpost_settings, mode, svc):
    user, server = f"modes-{mode}", "work"
    token = await hub.create_user(user)
    if mode == "tunnel":
        # the Outpost reports the address after this delay (the start waits for it)
        outpost_settings.start_delay = 0.5
    resp = await hub.api("POST", hub.server_path(user, server), body=mode_body(mode, svc))
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready(user, server)

    start = start_request(hub, user, server)
    name, start_id = start.json["name"], start.json["user_options"]["start_id"]
    record = hub.outpost.get_service(name)
    assert record is not None and record.ready and record.status is None
    assert not await asyncio.to_thread(process_gone, record.pid)
    host, port = await route_target(hub, user, server)
    forward_id = f"{start_id}.local"

    if mode == "direct":
        # the proxy connects to the Outpost's address; no forward, no Service
        assert (host, port) == (record.host, record.port)
        assert forward_id not in {f["id"] for f in await hub_forwards(hub)}
        assert services_in(k8s) == {}
    else:
        # the proxy connects to the forward, not to the Outpost's address
        assert host == "127.0.0.1"
        assert port != record.port
        forwards = {f["id"]: f for f in await hub_forwards(hub)}
        assert forward_id in forwards, forwards
        forward = forwards[forward_id]
        assert forward["state"] == "active", forward
        assert forward["kind"] == "local"
        assert forward["listen_port"] == port
        assert (forward["dest_host"], forward["dest_port"]) == (record.host, record.port)
        assert (forward["ssh"]["host"], forward["ssh"]["port"]) == ("127.0.0.1", ssh_node.port)
        # the connection to the node is an sshd child process
        assert ssh_node.connections()
        # the Service in front of the forward exists while the server runs
        services = services_in(k8s)
        assert len(services) == 1, services
        (service,) = services.values()
        assert service["spec"]["ports"][0]["port"] == port
        assert service["spec"]["selector"] == {"component": "hub", "release": "e2e"}
        annotations = service["metadata"]["annotations"]
        assert user in annotations.values() and server in annotations.values(), annotations
    if mode == "tunnel":
        # the start was async, and the address came through the setuptunnel callback
        assert start.headers.get("Execution-Type") == "async"
        assert record.async_start and record.address_reported == 202
    else:
        assert record.address_reported is None

    await use_server(hub, user, server, token)

    # stop: nothing is left
    resp = await hub.api("DELETE", hub.server_path(user, server))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user, server)
    assert len(hub.stop_requests(name)) == 1
    await wait_for(
        lambda: asyncio.to_thread(process_gone, record.pid),
        timeout=10,
        message=f"pid {record.pid} to exit",
    )
    assert hub.outpost.get_service(name) is None
    assert hub.services_for(user) == []
    assert not await port_listening(port)
    assert not await port_listening(record.port)
    assert forward_id not in {f["id"] for f in await hub_forwards(hub)}
    assert services_in(k8s) == {}
    path = f"/user/{user}/{server}"
    assert path not in await hub.routes()
    resp = await hub.fetch(f"{hub.url}{path}/api/status", token=token)
    assert resp.code != 200


@pytest.mark.timeout(120)
async def test_server_that_dies_is_cleaned_up_by_the_poll(hub, k8s, outpost_settings):
    """A forwarded server whose process dies at the Outpost: the Hub's poll notices,
    and its forward, its Service and its Outpost entry are removed, although
    JupyterHub does not call the spawner's stop() for a server that is gone."""
    user, server = "modes-dies", "work"
    await hub.create_user(user)
    outpost_settings.start_delay = 0.5
    resp = await hub.api("POST", hub.server_path(user, server), body=mode_body("tunnel", True))
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready(user, server)
    start = start_request(hub, user, server)
    name, start_id = start.json["name"], start.json["user_options"]["start_id"]
    record = hub.outpost.get_service(name)
    _, port = await route_target(hub, user, server)
    assert f"{start_id}.local" in {f["id"] for f in await hub_forwards(hub)}
    assert len(services_in(k8s)) == 1

    os.killpg(record.pid, signal.SIGKILL)
    await asyncio.wait_for(record.process.wait(), timeout=10)
    # conftest's poll_interval is 5 s
    await hub.wait_stopped(user, server, timeout=20)
    await wait_for(
        lambda: asyncio.sleep(0, hub.outpost.get_service(name) is None),
        timeout=10,
        message="the Outpost entry to go",
    )
    assert len(hub.stop_requests(name)) == 1
    assert not await port_listening(port)
    assert f"{start_id}.local" not in {f["id"] for f in await hub_forwards(hub)}
    assert services_in(k8s) == {}
    assert f"/user/{user}/{server}" not in await hub.routes()
