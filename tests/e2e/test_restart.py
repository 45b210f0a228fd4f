"""End-to-end: a Hub restart with running servers in every mode.

20 named servers of 4 users (7 direct, 7 with an SSH forward made at start and a
Kubernetes Service, 6 with a delayed tunnel reported through the setuptunnel
callback) run real ``jupyterhub-singleuser`` processes. The Hub runs with
``cleanup_servers = False`` and ``ssh_recreate_at_start = True``; it is stopped
with SIGTERM (its proxy and its forwarder process end with it), one server's
process is killed at the Outpost while the Hub is down, and a new Hub process
starts on the same database, cookie secret, configuration and ports.

Afterwards every surviving server is reachable through the new proxy within
seconds, with the same start and without a stop at the Outpost, and the dead one
was noticed by the Hub's first poll and cleaned up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

import pytest
import pytest_asyncio

from .conftest import process_gone, restart_hub, start_hub, stop_hub, wait_for
from .forwarding import (
    find_forwarder,
    hub_forwards,
    mode_body,
    modes_config,
    port_listening,
    route_target,
    services_in,
    start_request,
    use_server,
    wait_reachable,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

USERS = ["restart-ann", "restart-bob", "restart-cyd", "restart-dan"]
SERVERS_PER_USER = 5
#: the mode of each of the 20 servers, in order
MODES = ["direct"] * 7 + ["ssh"] * 7 + ["tunnel"] * 6
#: seconds a surviving server may take to answer through the proxy once the new Hub is up
REACHABLE_AFTER_RESTART = 5

RESTART_CONFIG = """
# leave the servers running when the Hub stops, rebuild their forwards when it is back
c.JupyterHub.cleanup_servers = False
c.OutpostSpawner.ssh_recreate_at_start = True
c.Spawner.poll_interval = 2
# 20 single-user servers start at once on a small machine
c.Spawner.http_timeout = 120
c.Spawner.start_timeout = 120
"""


@dataclass
class Server:
    user: str
    name: str
    mode: str
    token: str = ""
    outpost_name: str = ""
    start_id: str = ""
    record: object = None
    target: tuple[str, int] = ("", 0)

    @property
    def forward_id(self) -> str:
        return f"{self.start_id}.local"

    @property
    def svc(self) -> bool:
        return self.mode == "ssh"

    def __str__(self) -> str:
        return f"{self.user}/{self.name} ({self.mode})"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hubs(outpost, ssh_node, k8s, tmp_path_factory):
    """A list holding the running Hub; a restart replaces it. The last one is stopped
    at the end (the servers it leaves running end with the Outpost fixture)."""
    tmp = tmp_path_factory.mktemp("hub-restart")
    config = modes_config(ssh_node, k8s, tmp / "known_hosts") + RESTART_CONFIG
    holder = [await start_hub(tmp, outpost, extra_config=config)]
    try:
        yield holder
    finally:
        await stop_hub(holder[-1])


async def metric(hub, name: str) -> float:
    resp = await hub.fetch(f"{hub.hub_url}/hub/metrics", token=hub.api_token)
    assert resp.code == 200, resp.code
    for line in resp.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    pytest.fail(f"metric {name} not found", pytrace=False)


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_hub_restart_keeps_servers_in_every_mode(hubs, k8s, outpost_settings):
    hub = hubs[-1]
    t0 = time.monotonic()
    # the Outpost reports the tunnels' addresses after this delay (all starts take it)
    outpost_settings.start_delay = 0.5
    tokens = {user: await hub.create_user(user) for user in USERS}
    servers = [
        Server(USERS[i % len(USERS)], f"s{i:02d}", mode, token=tokens[USERS[i % len(USERS)]])
        for i, mode in enumerate(MODES)
    ]

    # start all 20 at once
    async def start(s: Server) -> None:
        resp = await hub.api("POST", hub.server_path(s.user, s.name), body=mode_body(s.mode, s.svc))
        assert resp.code in (201, 202), f"{s}: {resp.code} {resp.text}"

    await asyncio.gather(*(start(s) for s in servers))
    await asyncio.gather(*(hub.wait_ready(s.user, s.name, timeout=150) for s in servers))
    t_started = time.monotonic()

    for s in servers:
        start_req = start_request(hub, s.user, s.name)
        s.outpost_name = start_req.json["name"]
        s.start_id = start_req.json["user_options"]["start_id"]
        s.record = hub.outpost.get_service(s.outpost_name)
        assert s.record is not None and s.record.status is None, s
        s.target = await route_target(hub, s.user, s.name)
        if s.mode == "direct":
            assert s.target == (s.record.host, s.record.port), s
        else:
            assert s.target[1] != s.record.port, s  # the forward, not the Outpost's address
    await asyncio.gather(*(use_server(hub, s.user, s.name, s.token) for s in servers))
    forwarded = [s for s in servers if s.mode != "direct"]
    forwards = {f["id"]: f for f in await hub_forwards(hub)}
    assert set(forwards) == {s.forward_id for s in forwarded}
    assert set(services_in(k8s)) == {f"jupyter-{s.user}--{s.name}" for s in servers if s.svc}
    assert await metric(hub, "outpostspawner_active_forwards") == len(forwarded)
    old_forwarder = await find_forwarder(hub)
    assert old_forwarder is not None
    old_forwarder.close()
    requests_before = len(hub.outpost.requests)

    # stop the Hub: the servers stay, the proxy and the forwarder end with it
    await stop_hub(hub)
    t_stopped = time.monotonic()
    await wait_for(
        lambda: asyncio.to_thread(process_gone, old_forwarder.pid),
        timeout=15,
        message="the forwarder to end with the Hub",
    )
    await wait_for(
        lambda: asyncio.to_thread(process_gone, hub.proxy_pid),
        timeout=15,
        message="the proxy to end with the Hub",
    )
    for s in forwarded:
        assert not await port_listening(s.target[1]), f"{s}: forward still listening"
    stops = [r for r in hub.outpost.requests if r.method == "DELETE"]
    assert stops == [], [r.path for r in stops]
    for s in servers:
        assert hub.outpost.get_service(s.outpost_name) is s.record
        assert s.record.status is None, s

    # meanwhile one server dies at the Outpost (an SSH-forwarded one with a Service)
    dead = next(s for s in servers if s.mode == "ssh")
    survivors = [s for s in servers if s is not dead]
    os.killpg(dead.record.pid, signal.SIGKILL)
    await asyncio.wait_for(dead.record.process.wait(), timeout=10)
    assert dead.record.status is not None

    # a new Hub on the same database, cookie secret, configuration and ports
    hub = await restart_hub(hub)
    hubs.append(hub)
    t_restarted = time.monotonic()

    # every survivor answers through the new proxy within a few seconds
    await asyncio.gather(
        *(
            wait_reachable(hub, s.user, s.name, s.token, timeout=REACHABLE_AFTER_RESTART)
            for s in survivors
        )
    )
    t_reachable = time.monotonic()
    await asyncio.gather(*(use_server(hub, s.user, s.name, s.token) for s in survivors))

    # none was stopped or started again: same Outpost entry, process and start_id
    assert not [r for r in hub.outpost.requests[requests_before:] if r.method == "POST"]
    for s in survivors:
        assert hub.stop_requests(s.outpost_name) == [], s
        record = hub.outpost.get_service(s.outpost_name)
        assert record is s.record and record.start_id == s.start_id, s
        assert record.status is None and not await asyncio.to_thread(process_gone, record.pid)
        model = await hub.server_model(s.user, s.name)
        assert model is not None and model["ready"], (s, model)
        assert model["state"]["start_id"] == s.start_id, (s, model["state"])
        # the proxy route leads where it did before: the Outpost's address or the forward
        assert await route_target(hub, s.user, s.name) == s.target, s

    # the forwards were rebuilt in a new forwarder process, on the same ports
    new_forwarder = await find_forwarder(hub)
    assert new_forwarder is not None and new_forwarder.pid != old_forwarder.pid
    try:
        forwards = {f["id"]: f for f in await new_forwarder.forwards()}
    finally:
        new_forwarder.close()
    survivors_forwarded = [s for s in survivors if s.mode != "direct"]
    assert set(forwards) == {s.forward_id for s in survivors_forwarded}
    for s in survivors_forwarded:
        forward = forwards[s.forward_id]
        assert forward["state"] == "active", forward
        assert forward["listen_port"] == s.target[1]
        assert forward["dest_port"] == s.record.port
    # the Services were kept (not made again)
    assert set(services_in(k8s)) == {f"jupyter-{s.user}--{s.name}" for s in survivors if s.svc}

    # the dead one: noticed by the first poll and cleaned up
    await hub.wait_stopped(dead.user, dead.name, timeout=30)
    await wait_for(
        lambda: asyncio.sleep(0, hub.outpost.get_service(dead.outpost_name) is None),
        timeout=10,
        message="the dead server's Outpost entry to go",
    )
    assert len(hub.stop_requests(dead.outpost_name)) == 1
    assert not await port_listening(dead.target[1])
    assert dead.forward_id not in {f["id"] for f in await hub_forwards(hub)}
    assert f"jupyter-{dead.user}--{dead.name}" not in services_in(k8s)
    assert f"/user/{dead.user}/{dead.name}" not in await hub.routes()
    resp = await hub.fetch(f"{hub.url}/user/{dead.user}/{dead.name}/api/status", token=dead.token)
    assert resp.code != 200

    assert await metric(hub, "outpostspawner_active_forwards") == len(survivors_forwarded)
    rebuilt = await metric(
        hub, 'outpostspawner_tunnel_rebuilds_total{outcome="ok",reason="hub_restart"}'
    )
    assert rebuilt == len(survivors_forwarded)
    print(
        f"\nstart of 20 servers {t_started - t0:.1f}s; Hub down {t_restarted - t_stopped:.1f}s "
        f"(stop to API answering); all survivors reachable {t_reachable - t_restarted:.2f}s "
        f"after that; total {time.monotonic() - t0:.1f}s"
    )
