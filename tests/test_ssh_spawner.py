"""OutpostSpawner with the built-in SSH forwarder, against the reference Outpost and
a real OpenSSH server on loopback (which stands in for the remote SSH node)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from outpostspawner import OutpostSpawnError
from outpostspawner.forwarder import supervisor
from outpostspawner.ssh import hook_up_forwarder_log
from outpostspawner.testing.dummy_server import make_app
from outpostspawner.testing.sshd import free_port, keygen


async def http_get(port: int, path: str = "/api", timeout: float = 10) -> dict:
    """GET through the forward; retried, as JupyterHub does, while the server behind
    it is still starting (the reference Outpost runs it as a process)."""
    deadline = time.monotonic() + timeout
    client = AsyncHTTPClient(force_instance=True)
    try:
        while True:
            try:
                resp = await client.fetch(f"http://127.0.0.1:{port}{path}", request_timeout=5)
                return json.loads(resp.body)
            except (OSError, HTTPClientError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        client.close()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def eventually(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture(autouse=True)
async def stop_forwarders():
    yield
    await supervisor.shutdown_all()


def ssh_traits(sshd, tmp_path, **kw) -> dict:
    traits = {
        "ssh_during_startup": True,
        "svc_create": False,
        "ssh_node": sshd.host,
        "ssh_port": sshd.port,
        "ssh_username": sshd.username,
        "ssh_key": str(sshd.client_key),
        "ssh_known_hosts": str(tmp_path / "known_hosts"),
        "ssh_forward_listen_address": "127.0.0.1",
        "ssh_keepalive_interval": 1.0,
        "ssh_connect_timeout": 3.0,
        "ssh_forwarder_reconnect_delay": 0.1,
    }
    traits.update(kw)
    return traits


def api_path(record) -> str:
    return urlsplit(record.env["JUPYTERHUB_SERVICE_URL"]).path + "api"


async def test_start_through_ssh(sshd, tmp_path, outpost_spawner_factory, reference_outpost):
    spawner = outpost_spawner_factory(**ssh_traits(sshd, tmp_path))
    url = await spawner.start()
    record = reference_outpost.get_service(spawner.outpost_name)
    assert url == f"http://127.0.0.1:{spawner.port}"
    assert spawner.port != record.port
    assert await http_get(spawner.port, api_path(record)) == {"version": "dummy"}

    info = spawner.get_state()["port_forward_info"]
    assert info["forward"] is True and info["service"] == record.address
    assert info["ssh"]["host"] == sshd.host and info["ssh"]["key"] == str(sshd.client_key)
    assert "PRIVATE KEY" not in json.dumps(spawner.get_state())
    assert (tmp_path / "known_hosts").read_text() == sshd.known_hosts_line

    backend = spawner._forwarder()
    assert len(backend.processes()) == 1
    assert list(backend.registry.specs) == [info["forward_id"]]

    await spawner.stop()
    assert port_is_free(spawner.port or info["local_port"])
    assert backend.registry.specs == {}
    assert await backend.list() == []
    assert reference_outpost.services == {}


async def test_forwards_of_many_servers_share_the_connection(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost
):
    first = outpost_spawner_factory(user="alice", **ssh_traits(sshd, tmp_path))
    spawners = [first] + [
        outpost_spawner_factory(user=name, db=first.user.db, **ssh_traits(sshd, tmp_path))
        for name in ("bob", "carol")
    ]
    await asyncio.gather(*(s.start() for s in spawners))
    assert len(sshd.connections()) == 1
    for s in spawners:
        record = reference_outpost.get_service(s.outpost_name)
        assert (await http_get(s.port, api_path(record)))["version"] == "dummy"
    await asyncio.gather(*(s.stop() for s in spawners))
    await eventually(lambda: sshd.connections() == [], timeout=5)


async def test_wrong_key_is_a_clear_spawn_failure(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost
):
    wrong = await keygen(tmp_path / "wrong")
    port = free_port()
    spawner = outpost_spawner_factory(**ssh_traits(sshd, tmp_path, ssh_key=str(wrong)))
    spawner.custom_port = port
    with pytest.raises(OutpostSpawnError) as e:
        await spawner.start()
    message = str(e.value)
    assert f"{sshd.host}:{sshd.port}" in message and "login was refused" in message
    assert str(wrong) not in message  # paths stay in the log
    assert reference_outpost.services == {}
    backend = spawner._forwarder()
    assert backend.registry.specs == {} and await backend.list() == []
    assert port_is_free(port)
    await eventually(lambda: sshd.connections() == [], timeout=5)


async def test_unreachable_node_is_a_clear_spawn_failure(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost
):
    closed = free_port()
    spawner = outpost_spawner_factory(**ssh_traits(sshd, tmp_path, ssh_port=closed))
    with pytest.raises(OutpostSpawnError, match=f"127.0.0.1:{closed}.*cannot be reached"):
        await spawner.start()
    assert reference_outpost.services == {}
    assert await spawner._forwarder().list() == []


@pytest.mark.parametrize(
    "options, match",
    [
        ({"ProxyCommand": "nc %h %p"}, "'ProxyCommand' is not allowed"),
        ({"StrictHostKeyChecking": "no"}, "StrictHostKeyChecking=no is refused"),
    ],
)
async def test_refused_options_fail_before_any_connection(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost, options, match
):
    spawner = outpost_spawner_factory(**ssh_traits(sshd, tmp_path, ssh_forward_options=options))
    with pytest.raises(OutpostSpawnError, match=match):
        await spawner.start()
    assert spawner._forwarder().processes() == []
    assert reference_outpost.services == {}


async def test_hooks_are_resolved_once_with_their_arguments(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost
):
    calls = []

    def ssh_node(spawner):
        calls.append("node")
        return "ssh-node-internal"

    def ssh_node_mapping(spawner, ssh_node):
        calls.append(("mapping", ssh_node))
        return sshd.host

    async def ssh_key(spawner, port_forward_info):
        calls.append(("key", port_forward_info["service"]))
        return str(sshd.client_key)

    def ssh_forward_options(spawner):
        return {"ServerAliveInterval": "5", "ControlMaster": "auto", "Port": str(sshd.port)}

    traits = ssh_traits(
        sshd,
        tmp_path,
        ssh_node=ssh_node,
        ssh_node_mapping=ssh_node_mapping,
        ssh_key=ssh_key,
        ssh_port=22,  # replaced by the Port option
        ssh_forward_options=ssh_forward_options,
    )
    spawner = outpost_spawner_factory(**traits)
    await spawner.start()
    record = reference_outpost.get_service(spawner.outpost_name)
    assert calls == ["node", ("mapping", "ssh-node-internal"), ("key", record.address)]
    assert spawner.port_forward_info["ssh_node"] == "ssh-node-internal"
    ssh = spawner.port_forward_info["ssh"]
    assert ssh["host"] == sshd.host and ssh["port"] == sshd.port
    assert ssh["options"]["ServerAliveInterval"] == "5"
    assert "ControlMaster" not in ssh["options"]
    await spawner.stop()


async def test_hub_restart_rebuilds_the_forward(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost
):
    traits = ssh_traits(sshd, tmp_path, ssh_recreate_at_start=True)
    first = outpost_spawner_factory(**traits)
    await first.start()
    record = reference_outpost.get_service(first.outpost_name)
    state = first.get_state()
    port = first.port

    await supervisor.shutdown_all()  # the Hub (and its forwarder) is gone
    assert port_is_free(port)

    calls = []
    traits["ssh_node"] = lambda spawner: calls.append("node") or sshd.host
    second = outpost_spawner_factory(**traits)
    second.load_state(state)
    assert await second.poll() is None
    assert calls == []  # rebuilt from the stored settings
    assert await http_get(port, api_path(record)) == {"version": "dummy"}
    assert second.get_state()["port_forward_info"]["forward"] is True
    await second.stop()
    assert port_is_free(port)
    assert reference_outpost.services == {}


async def test_remote_forward_back_to_the_hub(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost
):
    # a stand-in for the Hub API that the remote forward leads to
    sockets = bind_sockets(0, "127.0.0.1")
    hub_api = HTTPServer(make_app("/", "hub"))
    hub_api.add_sockets(sockets)
    hub_port = sockets[0].getsockname()[1]
    try:
        spawner = outpost_spawner_factory(
            ssh_create_remote_forward=True,
            ssh_remote_node=sshd.host,
            ssh_remote_port=sshd.port,
            ssh_remote_username=sshd.username,
            ssh_remote_key=str(sshd.client_key),
            ssh_known_hosts=str(tmp_path / "known_hosts"),
            ssh_remote_forward_listen_address="127.0.0.1",
            ssh_remote_forward_port=0,
            ssh_remote_forward_target=f"127.0.0.1:{hub_port}",
        )
        await spawner.start()
        remote = spawner.port_forward_info["remote"]
        assert remote["remote_port"] > 0
        # on the SSH node, the remote port leads back to the "Hub"
        assert await http_get(remote["remote_port"]) == {"version": "dummy"}
        await spawner.stop()
        assert "remote" not in spawner.port_forward_info
        await eventually(lambda: port_is_free(remote["remote_port"]), timeout=5)
    finally:
        hub_api.stop()
        await asyncio.wait_for(hub_api.close_all_connections(), 5)


@pytest.fixture
async def standalone_forwarder(tmp_path):
    """``python -m outpostspawner.forwarder --listen`` as its own process."""
    token = tmp_path / "forwarder-token"
    token.write_text("standalone-secret\n")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outpostspawner.forwarder",
        "--listen",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token),
        "--known-hosts",
        str(tmp_path / "standalone_known_hosts"),
        "--ready-line",
        "--log-level",
        "WARNING",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(b'{"ready": true')
        yield f"http://127.0.0.1:{port}", str(token)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def test_standalone_forwarder_keeps_forwards_over_a_hub_restart(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost, standalone_forwarder
):
    url, token_file = standalone_forwarder
    traits = ssh_traits(
        sshd,
        tmp_path,
        ssh_forwarder_mode="remote",
        ssh_forwarder_url=url,
        ssh_forwarder_token_file=token_file,
        ssh_recreate_at_start=True,
    )
    first = outpost_spawner_factory(**traits)
    await first.start()
    record = reference_outpost.get_service(first.outpost_name)
    assert await http_get(first.port, api_path(record)) == {"version": "dummy"}
    state = first.get_state()

    await supervisor.shutdown_all()  # the Hub restarts; the standalone forwarder does not
    assert await http_get(first.port, api_path(record)) == {"version": "dummy"}
    pids = sshd.connections()
    assert len(pids) == 1

    second = outpost_spawner_factory(**traits)
    second.load_state(state)
    assert await second.poll() is None  # the existing forward is kept
    assert sshd.connections() == pids
    forwards = await second._forwarder().list()
    assert [f["id"] for f in forwards] == [state["port_forward_info"]["forward_id"]]
    await second.stop()
    assert await second._forwarder().list() == []
    assert port_is_free(first.port)


async def test_remote_mode_needs_url_and_token(
    sshd, tmp_path, outpost_spawner_factory, reference_outpost
):
    spawner = outpost_spawner_factory(**ssh_traits(sshd, tmp_path, ssh_forwarder_mode="remote"))
    with pytest.raises(OutpostSpawnError, match="ssh_forwarder_url"):
        await spawner.start()
    assert reference_outpost.services == {}
    assert not (tmp_path / "known_hosts").exists()


def test_forwarder_log_goes_to_the_hub_log():
    """The supervisor's records reach JupyterHub's log handlers (INFO included)."""

    logger = logging.getLogger("outpostspawner.forwarder")
    saved = logger.parent
    records: list[logging.LogRecord] = []
    app_log = logging.getLogger("test-forwarder-log-app")
    app_log.propagate = False
    app_log.setLevel(logging.INFO)
    handler = logging.Handler()
    handler.emit = records.append
    app_log.addHandler(handler)
    try:
        logger.parent = logging.root
        hook_up_forwarder_log(app_log)
        assert logger.parent is app_log
        supervisor.log.info("restored %d forwards", 2)
        assert [r.getMessage() for r in records] == ["restored 2 forwards"]
        # once hooked up (or configured elsewhere), another logger changes nothing
        hook_up_forwarder_log(logging.getLogger("test-forwarder-log-other"))
        assert logger.parent is app_log
    finally:
        logger.parent = saved
        app_log.removeHandler(handler)
