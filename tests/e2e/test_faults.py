"""End-to-end fault tests: a real JupyterHub, configurable-http-proxy and
jupyterhub-singleuser, reached through SSH port forwards made by the Hub's
forwarder process through a real sshd, while the Outpost, the sshd or the
forwarder misbehave.

One Hub serves the whole module, and one server (``running``) stays up across the
tests: each test checks that it is reachable before and after its fault.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import psutil
import pytest
import pytest_asyncio

from outpostspawner.testing import Fault, ReferenceOutpost

from .conftest import HubProcess, process_gone, start_hub, stop_hub, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

#: how long the Outpost is down in the outage test
OUTAGE = 15
#: the Hub polls every server this often (custom_poll_interval, ms)
POLL_MS = 1000

SSH_CONFIG = """\
c.OutpostSpawner.ssh_during_startup = True
c.OutpostSpawner.svc_create = False
c.OutpostSpawner.ssh_node = {host!r}
c.OutpostSpawner.ssh_port = {port!r}
c.OutpostSpawner.ssh_username = {username!r}
c.OutpostSpawner.ssh_key = {key!r}
c.OutpostSpawner.ssh_known_hosts = {known_hosts!r}
c.OutpostSpawner.ssh_forward_listen_address = "127.0.0.1"
# notice a lost SSH connection or a dead forwarder quickly, and come back quickly
c.OutpostSpawner.ssh_keepalive_interval = 2
c.OutpostSpawner.ssh_forwarder_reconnect_delay = 0.5
c.OutpostSpawner.ssh_forwarder_reconnect_max_delay = 2
c.OutpostSpawner.custom_poll_interval = {poll_ms!r}
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ssh_hub(outpost, ssh_node, tmp_path_factory):
    """A Hub that reaches every server through an SSH forward via ``ssh_node``."""
    tmp = tmp_path_factory.mktemp("hub-faults")
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text(ssh_node.known_hosts_line)
    extra = SSH_CONFIG.format(
        host=ssh_node.host,
        port=ssh_node.port,
        username=ssh_node.username,
        key=str(ssh_node.client_key),
        known_hosts=str(known_hosts),
        poll_ms=POLL_MS,
    )
    hub = await start_hub(tmp, outpost, extra_config=extra)
    try:
        yield hub
    finally:
        if outpost.paused:  # a failed test: let the Hub stop its servers
            await outpost.resume()
        await stop_hub(hub)


@dataclass
class Running:
    """The server that stays up across the module's tests."""

    user: str
    token: str
    name: str  # its name at the Outpost
    port: int  # where the proxy connects: the forward's port


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def running(ssh_hub):
    """A running ``jupyterhub-singleuser``; the Hub stops it when the module ends."""
    hub = ssh_hub
    user = "f-run"
    token = await hub.create_user(user)
    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready(user, timeout=60)
    (start,) = hub.start_requests(user)
    name = start.json["name"]
    record = hub.outpost.get_service(name)
    assert record is not None and record.ready
    port = await route_port(hub, user)
    # the proxy goes to the forward, not to the address the Outpost reported
    assert port != record.port
    assert await forward_ports(hub) == {port}
    server = Running(user, token, name, port)
    await wait_reachable(hub, server, timeout=10)
    return server


# --- helpers ------------------------------------------------------------------------


def _forwarders(hub_pid: int) -> list[psutil.Process]:
    """The Hub's forwarder children (not zombies)."""
    found = []
    try:
        children = psutil.Process(hub_pid).children()
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if any("outpostspawner.forwarder.app" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


async def forwarder_pids(hub: HubProcess) -> list[int]:
    procs = await asyncio.to_thread(_forwarders, hub.process.pid)
    return [p.pid for p in procs]


def _listening_ports(hub_pid: int) -> set[int]:
    ports = set()
    for proc in _forwarders(hub_pid):
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN)
    return ports


async def forward_ports(hub: HubProcess) -> set[int]:
    """The TCP ports the forwarder processes listen on: one per active forward."""
    return await asyncio.to_thread(_listening_ports, hub.process.pid)


async def route_port(hub: HubProcess, user: str) -> int:
    """The port of the proxy's route to the user's default server."""
    resp = await hub.fetch(f"{hub.proxy_api_url}/api/routes", token=hub.proxy_token)
    assert resp.code == 200, resp.text
    routes = {path.rstrip("/"): route for path, route in resp.json().items()}
    target = urlsplit(routes[f"/user/{user}"]["target"])
    assert target.hostname == "127.0.0.1", target
    return target.port


async def reachable(hub: HubProcess, server: Running) -> bool:
    """The server answers its REST API through the proxy."""
    try:
        resp = await hub.fetch(
            f"{hub.url}/user/{quote(server.user)}/api/status", token=server.token, timeout=5
        )
    except ConnectionError:
        return False
    return resp.code == 200 and "started" in resp.json()


async def wait_reachable(hub: HubProcess, server: Running, timeout: float) -> float:
    """Wait until the server answers through the proxy; returns the seconds it took."""
    tic = time.monotonic()
    await wait_for(
        lambda: reachable(hub, server),
        timeout=timeout,
        interval=0.25,
        message=lambda: f"{server.user}'s server to answer through the proxy\n{hub.log_tail()}",
    )
    return time.monotonic() - tic


def log_size(hub: HubProcess) -> int:
    return hub.log_path.stat().st_size


def log_since(hub: HubProcess, offset: int) -> str:
    with open(hub.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def polls(outpost: ReferenceOutpost, name: str, since: float = 0.0) -> list:
    """The poll requests of one service that reached the Outpost after ``since``."""
    return [
        r
        for r in outpost.requests
        if r.method == "GET" and r.path.startswith(f"/services/{quote(name)}/") and r.time >= since
    ]


async def assert_nothing_left(hub: HubProcess, user: str, forwards: set[int]) -> None:
    """No Outpost entry, no proxy route and no forward beyond ``forwards``."""
    assert hub.services_for(user) == []
    assert f"/user/{user}" not in await hub.routes()
    assert await forward_ports(hub) == forwards
    assert hub.process.returncode is None, hub.log_tail()


# --- 1. the Outpost is down ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_outpost_down_keeps_running_servers_and_fails_new_spawns(ssh_hub, running):
    """The Outpost refuses connections for 15 s: running servers are kept (failed
    polls count as running) and stay reachable; a new spawn fails at once with a
    clear message and leaves nothing behind once the Outpost is back."""
    hub, outpost = ssh_hub, ssh_hub.outpost
    await wait_reachable(hub, running, timeout=10)
    user = "f-down"
    token = await hub.create_user(user)
    offset = await asyncio.to_thread(log_size, hub)

    await outpost.pause()
    down_at = time.monotonic()
    try:
        # really unreachable: connections are refused
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(outpost.host, outpost.port)

        # a new spawn fails quickly, with a message that says what is wrong
        resp = await hub.api("POST", hub.server_path(user))
        assert resp.code == 202, resp.text
        await hub.wait_stopped(user, timeout=30)
        assert time.monotonic() - down_at < 30
        message = await hub.failed_message(user, token)
        assert "The Outpost could not be reached (start)" in message, message

        # the running server stays up (the Outpost is not in its data path) ...
        assert await reachable(hub, running)
        while (left := OUTAGE - (time.monotonic() - down_at)) > 0:
            await asyncio.sleep(min(left, 2))
            model = await hub.server_model(running.user)
            assert model is not None and model["ready"], model
        # ... although every poll failed
        log = await asyncio.to_thread(log_since, hub, offset)
        kept = [
            line
            for line in log.splitlines()
            if f"{running.user}: poll failed" in line and "treating the server as running" in line
        ]
        assert len(kept) >= OUTAGE // 2, log[-3000:]
        assert all("HTTP 599" in line for line in kept), kept[:3]  # no answer at all
    finally:
        await outpost.resume()
    up_at = time.time()

    # polls reach the Outpost again, and the server is still running and reachable
    await wait_for(
        lambda: asyncio.sleep(0, polls(outpost, running.name, since=up_at)),
        timeout=10,
        message="a poll after the Outpost came back",
    )
    model = await hub.server_model(running.user)
    assert model is not None and model["ready"], model
    assert await reachable(hub, running)
    assert outpost.get_service(running.name).status is None

    # the failed spawn never reached the Outpost and left nothing behind
    assert hub.start_requests(user) == []
    await assert_nothing_left(hub, user, {running.port})


# --- 2. the Outpost answers garbage --------------------------------------------------


@pytest.mark.parametrize(
    "answer,message",
    [
        ({"kind": "bad_json"}, "The Outpost sent an invalid answer (start): not JSON."),
        (
            {"kind": "status", "status": 200, "body": {"service": 8888}},
            "The Outpost sent an invalid answer to the start request.",
        ),
        (
            {"kind": "status", "status": 200, "body": ["127.0.0.1:8888"]},
            "The Outpost sent an invalid answer to the start request.",
        ),
        (
            {"kind": "status", "status": 200, "body": {"service": "127.0.0.1:99999"}},
            "The Outpost reported an invalid server address",
        ),
    ],
    ids=["not-json", "service-not-a-string", "list", "invalid-address"],
)
async def test_start_answered_with_garbage(ssh_hub, outpost_settings, answer, message, request):
    """The start fails with a clear message and leaves nothing behind."""
    hub = ssh_hub
    user = f"f-garbage-{request.node.callspec.id}"
    token = await hub.create_user(user)
    forwards = await forward_ports(hub)
    fault = outpost_settings.faults.add(Fault("start", count=1, **answer))

    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code == 202, resp.text
    await hub.wait_stopped(user, timeout=20)
    assert fault.hits == 1
    shown = await hub.failed_message(user, token)
    assert message in shown, shown

    # one start request, and the best-effort stop of whatever it may have created
    (start,) = hub.start_requests(user)
    name = start.json["name"]
    await wait_for(
        lambda: asyncio.sleep(0, hub.stop_requests(name)),
        timeout=10,
        message=f"the stop request for {name}",
    )
    assert len(hub.stop_requests(name)) == 1
    await assert_nothing_left(hub, user, forwards)


async def test_poll_answered_with_garbage_keeps_the_server(ssh_hub, running, outpost_settings):
    """Invalid poll answers count as failed polls: the server is kept running and
    reachable, each is logged once, and the Hub carries on."""
    hub, outpost = ssh_hub, ssh_hub.outpost
    await wait_reachable(hub, running, timeout=10)
    offset = await asyncio.to_thread(log_size, hub)
    answers = [
        {"kind": "bad_json"},
        {"kind": "status", "status": 200, "body": "running"},
        {"kind": "status", "status": 200, "body": {"status": "stopped"}},
        {"kind": "status", "status": 200, "body": {"status": True}},
        {"kind": "status", "status": 200, "body": {"status": 1.5}},
    ]
    garbage = [
        outpost_settings.faults.add(Fault("poll", count=1, match_name=running.name, **answer))
        for answer in answers
    ]

    await wait_for(
        lambda: asyncio.sleep(0, not outpost.faults.active),
        timeout=len(garbage) * POLL_MS / 1000 + 15,
        message="the garbage poll answers to be sent",
    )
    done_at = time.time()
    # a good poll after the garbage
    await wait_for(
        lambda: asyncio.sleep(0, polls(outpost, running.name, since=done_at)),
        timeout=10,
        message="a poll after the garbage answers",
    )
    await asyncio.sleep(0.5)  # let the Hub handle that answer

    # the package treats an invalid poll answer as a failed poll: the server is kept
    model = await hub.server_model(running.user)
    assert model is not None and model["ready"], model
    assert await reachable(hub, running)
    assert hub.process.returncode is None
    log = await asyncio.to_thread(log_since, hub, offset)
    kept = [
        line
        for line in log.splitlines()
        if "poll failed" in line and "treating the server as running" in line
    ]
    assert len(kept) == len(garbage), kept
    assert sum("non-JSON body" in line for line in kept) == 1, kept
    assert sum("poll answer is not a JSON object" in line for line in kept) == 1, kept
    assert sum("poll answer status has type" in line for line in kept) == 3, kept
    assert "Traceback" not in log, log[-3000:]


# --- 3. the sshd restarts ----------------------------------------------------------------


async def test_sshd_restart_forwards_recover(ssh_hub, ssh_node, running):
    """The SSH node restarts (same port, same host key): the forwarder reconnects
    and reopens the forward on the same port; the server is reachable again."""
    hub = ssh_hub
    await wait_reachable(hub, running, timeout=10)
    (pid,) = await forwarder_pids(hub)

    await ssh_node.stop()
    try:
        # the forward's port closes with the SSH connection: the proxy cannot connect
        async def closed() -> bool:
            return running.port not in await forward_ports(hub)

        await wait_for(closed, timeout=15, message="the forward to close")
        assert not await reachable(hub, running)
        await asyncio.sleep(2)  # a few failed reconnects
    finally:
        await ssh_node.start()  # the same port and host key

    took = await wait_reachable(hub, running, timeout=20)
    assert took < 20
    assert await forward_ports(hub) == {running.port}
    assert await route_port(hub, running.user) == running.port
    # a reconnect of the same forwarder process, not a restart
    assert await forwarder_pids(hub) == [pid]
    model = await hub.server_model(running.user)
    assert model is not None and model["ready"], model


# --- 4. the forwarder process is killed ---------------------------------------------------


async def test_forwarder_killed_is_restarted(ssh_hub, running):
    """SIGKILL of the forwarder process: the Hub's supervisor starts a new one and
    restores the forward; the server is reachable again."""
    hub = ssh_hub
    await wait_reachable(hub, running, timeout=10)
    (pid,) = await forwarder_pids(hub)
    offset = await asyncio.to_thread(log_size, hub)

    await asyncio.to_thread(psutil.Process(pid).send_signal, signal.SIGKILL)
    killed_at = time.monotonic()
    await wait_for(
        lambda: asyncio.to_thread(process_gone, pid),
        timeout=10,
        message=f"forwarder pid {pid} to exit",
    )

    async def new_forwarder() -> list[int]:
        pids = await forwarder_pids(hub)
        return pids if pids and pid not in pids else []

    (new_pid,) = await wait_for(new_forwarder, timeout=20, message="a new forwarder process")
    await wait_reachable(hub, running, timeout=20)
    assert time.monotonic() - killed_at < 25
    assert await forward_ports(hub) == {running.port}
    assert await forwarder_pids(hub) == [new_pid]

    async def restored() -> str:
        log = await asyncio.to_thread(log_since, hub, offset)
        return log if "restored 1 forwards" in log else ""

    log = await wait_for(restored, timeout=10, message="the supervisor to log the restore")
    assert f"(pid {pid}) exited with -9; restarting" in log, log[-3000:]
    model = await hub.server_model(running.user)
    assert model is not None and model["ready"], model
