"""The SSH forwarder against a real OpenSSH server: options, host keys, forwards,
reconnects, the control API and the supervised processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time

import asyncssh
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from outpostspawner.forwarder.client import ForwarderClient
from outpostspawner.forwarder.core import Forwarder, ForwarderSettings, default_ciphers
from outpostspawner.forwarder.errors import ForwardError
from outpostspawner.forwarder.known_hosts import parse
from outpostspawner.forwarder.options import (
    ConfigError,
    ForwardSpec,
    SSHTarget,
    asyncssh_options,
    check_host,
    split_options,
)
from outpostspawner.forwarder.server import make_server
from outpostspawner.forwarder.supervisor import (
    ForwarderSupervisor,
    RemoteForwarder,
    SupervisorConfig,
    shard_index,
)
from outpostspawner.testing.dummy_server import make_app
from outpostspawner.testing.sshd import free_port, keygen

# --- helpers -------------------------------------------------------------------


async def http_get(port: int, path: str = "/api", timeout: float = 5) -> dict:
    client = AsyncHTTPClient(force_instance=True)
    try:
        resp = await client.fetch(
            HTTPRequest(f"http://127.0.0.1:{port}{path}", request_timeout=timeout)
        )
        return json.loads(resp.body)
    finally:
        client.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a new server (with SO_REUSEADDR, as servers do) could listen there."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


async def eventually(check, timeout: float = 10, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(interval)


async def get_through(port: int, timeout: float = 8) -> dict:
    """GET through a forward that may be coming back right now."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await http_get(port, timeout=2)
        except (OSError, Exception):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def target_dict(sshd, **over) -> dict:
    d = {
        "host": sshd.host,
        "port": sshd.port,
        "username": sshd.username,
        "key": str(sshd.client_key),
        "options": {},
    }
    d.update(over)
    return d


def make_spec(sshd, dest_port: int, *, id="fwd-1", listen_port=0, ssh=None, **kw) -> ForwardSpec:
    body = {
        "id": id,
        "kind": "local",
        "ssh": ssh or target_dict(sshd),
        "listen_host": "127.0.0.1",
        "listen_port": listen_port,
        "dest_host": "127.0.0.1",
        "dest_port": dest_port,
    }
    body.update(kw)
    return ForwardSpec.from_dict(body)


@pytest.fixture
async def remote_http():
    """The server "behind the SSH node": a dummy single-user server on loopback."""
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(make_app("/", "bob"))
    server.add_sockets(sockets)
    yield sockets[0].getsockname()[1]
    server.stop()
    await asyncio.wait_for(server.close_all_connections(), 5)


@pytest.fixture
async def forwarder(tmp_path):
    fw = Forwarder(
        ForwarderSettings(
            known_hosts=str(tmp_path / "known_hosts"),
            keepalive_interval=0.5,
            keepalive_count_max=2,
            connect_timeout=3,
            reconnect_delay=0.1,
            reconnect_max_delay=0.5,
        )
    )
    yield fw
    await fw.close()
    assert fw.nodes == {}


# --- options (pure) ----------------------------------------------------------------


def test_reference_default_options_are_accepted():
    options, target = split_options(
        {
            "ServerAliveInterval": "15",
            "StrictHostKeyChecking": "accept-new",
            "ControlMaster": "auto",
            "ControlPersist": "yes",
            "ControlPath": "/tmp/control_node",
            "Port": "2222",
            "IdentityFile": "/keys/a",
        }
    )
    assert options == {"ServerAliveInterval": "15", "StrictHostKeyChecking": "accept-new"}
    assert target == {"Port": "2222", "IdentityFile": "/keys/a"}


@pytest.mark.parametrize(
    "name", ["ProxyCommand", "LocalCommand", "PermitLocalCommand", "ProxyJump", "Include"]
)
def test_disallowed_options_are_refused(name):
    with pytest.raises(ConfigError, match=f"SSH option '{name}' is not allowed"):
        split_options({name: "sh -c 'touch /tmp/x'"})


@pytest.mark.parametrize(
    "options, match",
    [
        ({"StrictHostKeyChecking": "no"}, "is refused: it would accept any host key"),
        ({"UserKnownHostsFile": "/dev/null"}, "is refused"),
        ({"UserKnownHostsFile": "relative/file"}, "absolute path"),
        ({"ServerAliveInterval": "soon"}, "expected a number"),
        ({"ServerAliveCountMax": "0"}, "at least 1"),
        ({"Ciphers": "+aes128-ctr"}, "prefixes are not supported"),
        ({"Ciphers": "aes128-ctr,$(reboot)"}, "invalid algorithm name"),
        ({"Compression": "maybe"}, "expected yes or no"),
        ({"ServerAliveInterval": ["15"]}, "expected a string or number"),
    ],
)
def test_invalid_option_values(options, match):
    with pytest.raises(ConfigError, match=match):
        split_options(options)


def test_options_map_to_asyncssh():
    target = SSHTarget.build(
        "node.example.org",
        22,
        "jhuboutpost",
        "/keys/a",
        {
            "serveraliveinterval": 5,
            "ServerAliveCountMax": 2,
            "ConnectTimeout": "7",
            "Ciphers": "aes256-gcm@openssh.com, aes128-ctr",
            "Compression": True,
            "User": "other",
            "Port": 2222,
        },
    )
    assert (target.username, target.port) == ("other", 2222)
    kw = asyncssh_options(target)
    assert kw["keepalive_interval"] == 5
    assert kw["keepalive_count_max"] == 2
    assert kw["connect_timeout"] == 7
    assert kw["encryption_algs"] == ["aes256-gcm@openssh.com", "aes128-ctr"]
    assert kw["compression_algs"][0] == "zlib@openssh.com"
    assert target.option("StrictHostKeyChecking", "accept-new") == "accept-new"


@pytest.mark.parametrize(
    "value", ["-oProxyCommand=x", "a b", "host;id", "", "x" * 300, "bad..dots", "-node"]
)
def test_invalid_nodes(value):
    with pytest.raises(ConfigError):
        check_host(value)


@pytest.mark.parametrize(
    "value, expected",
    [("Login01.Example.org", "login01.example.org"), ("10.0.0.1", "10.0.0.1"), ("[::1]", "::1")],
)
def test_valid_nodes(value, expected):
    assert check_host(value) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"username": "-oProxyCommand=x"}, "not a valid user name"),
        ({"username": "a b"}, "not a valid user name"),
        ({"port": 0}, "out of range"),
        ({"port": "22; reboot"}, "must be a number"),
        ({"key": "id_rsa"}, "absolute path"),
        ({"key": "/keys/a\nb"}, "control characters"),
    ],
)
def test_invalid_targets(kwargs, match):
    args = {"host": "node", "port": 22, "username": "u", "key": "/keys/a"} | kwargs
    with pytest.raises(ConfigError, match=match):
        SSHTarget.build(**args)


def test_forward_spec_validation():
    ssh = {"host": "node", "port": 22, "username": "u", "key": "/k"}
    good = {"ssh": ssh, "listen_port": 8000, "dest_host": "10.1.2.3", "dest_port": 80}
    spec = ForwardSpec.from_dict(good, forward_id="abc.local")
    assert spec.id == "abc.local" and spec.kind == "local"
    with pytest.raises(ConfigError, match="differs"):
        ForwardSpec.from_dict({**good, "id": "other"}, forward_id="abc")
    with pytest.raises(ConfigError, match="kind"):
        ForwardSpec.from_dict({**good, "kind": "dynamic"}, forward_id="abc")
    with pytest.raises(ConfigError, match="dest_host"):
        ForwardSpec.from_dict({**good, "dest_host": "-x"}, forward_id="abc")
    with pytest.raises(ConfigError, match="forward id"):
        ForwardSpec.from_dict(good, forward_id="../x")


def test_shards_are_stable():
    specs = [
        {"ssh": {"host": f"n{i}", "port": 22, "username": "u", "key": "/k"}} for i in range(50)
    ]
    first = [shard_index(s, 4) for s in specs]
    assert first == [shard_index(s, 4) for s in specs]
    assert set(first) == {0, 1, 2, 3}
    assert {shard_index(s, 1) for s in specs} == {0}


# --- known_hosts (pure) -----------------------------------------------------------------


def test_known_hosts_matching():
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    pub = key.export_public_key().decode().strip()
    opub = other.export_public_key().decode().strip()
    text = f"# comment\nnode {opub}\n[node]:2222 {pub}\n*.example.org,!bad.example.org {pub}\n"
    assert parse(text, "node", 22).keys == [other.convert_to_public()]
    assert parse(text, "node", 2222).keys == [key.convert_to_public()]
    assert not parse(text, "node", 2200).known  # no fallback to the port 22 entry
    assert parse(text, "a.example.org", 22).known
    assert not parse(text, "bad.example.org", 22).known
    assert not parse("garbage line\n", "node", 22).known


def test_known_hosts_hashed_entries():
    import base64
    import hashlib
    import hmac

    key = asyncssh.generate_private_key("ssh-ed25519")
    salt = os.urandom(20)
    digest = hmac.new(salt, b"[node]:2222", hashlib.sha1).digest()
    entry = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    text = f"{entry} {key.export_public_key().decode()}"
    assert parse(text, "node", 2222).keys == [key.convert_to_public()]
    assert not parse(text, "node", 22).known


# --- forwards against the real sshd -----------------------------------------------------


async def test_aes_gcm_is_preferred_unless_ciphers_say_otherwise(
    sshd, forwarder, remote_http, monkeypatch
):
    assert default_ciphers()[:2] == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
    assert "chacha20-poly1305@openssh.com" in default_ciphers()  # offered as well
    offered = []
    connect = asyncssh.connect

    def recording_connect(*args, **kwargs):
        offered.append(kwargs.get("encryption_algs"))
        return connect(*args, **kwargs)

    monkeypatch.setattr(asyncssh, "connect", recording_connect)
    forward, _ = await forwarder.add(make_spec(sshd, remote_http))
    assert await http_get(forward["listen_port"]) == {"version": "dummy"}
    own = target_dict(sshd, options={"Ciphers": "chacha20-poly1305@openssh.com"})
    forward, _ = await forwarder.add(make_spec(sshd, remote_http, id="fwd-2", ssh=own))
    assert await http_get(forward["listen_port"]) == {"version": "dummy"}
    assert offered == [list(default_ciphers()), ["chacha20-poly1305@openssh.com"]]


async def test_forward_carries_http(sshd, forwarder, remote_http, tmp_path):
    t = time.monotonic()
    forward, created = await forwarder.add(make_spec(sshd, remote_http))
    assert created and forward["state"] == "active"
    assert time.monotonic() - t < 5
    assert await http_get(forward["listen_port"]) == {"version": "dummy"}
    # the host key was remembered (accept-new)
    line = (tmp_path / "known_hosts").read_text()
    assert line == sshd.known_hosts_line
    # the same forward again is kept, not made twice
    again, created = await forwarder.add(make_spec(sshd, remote_http))
    assert not created and again["listen_port"] == forward["listen_port"]
    assert len(forwarder.list()) == 1


async def test_forwards_share_one_connection(sshd, forwarder, remote_http):
    a, _ = await forwarder.add(make_spec(sshd, remote_http, id="a"))
    b, _ = await forwarder.add(make_spec(sshd, remote_http, id="b"))
    assert a["listen_port"] != b["listen_port"]
    assert len(forwarder.nodes) == 1
    assert next(iter(forwarder.nodes.values())).connects == 1
    assert len(sshd.connections()) == 1
    assert await http_get(b["listen_port"]) == {"version": "dummy"}


async def test_remove_closes_listener_and_connection(sshd, forwarder, remote_http):
    forward, _ = await forwarder.add(make_spec(sshd, remote_http))
    port = forward["listen_port"]
    assert await forwarder.remove("fwd-1") is True
    assert port_is_free(port)
    assert forwarder.nodes == {} and forwarder.list() == []
    await eventually(lambda: sshd.connections() == [], timeout=5)
    assert await forwarder.remove("fwd-1") is False


async def test_forwards_come_back_after_the_connection_dies(sshd, forwarder, remote_http):
    forward, _ = await forwarder.add(make_spec(sshd, remote_http))
    port = forward["listen_port"]
    node = next(iter(forwarder.nodes.values()))
    assert sshd.kill_connection_children() >= 1
    await eventually(lambda: node.connects >= 2, timeout=5)
    t = time.monotonic()
    assert await get_through(port) == {"version": "dummy"}
    assert time.monotonic() - t < 5
    assert forwarder.list()[0]["listen_port"] == port


async def test_keepalive_finds_a_hung_peer(sshd, forwarder, remote_http):
    forward, _ = await forwarder.add(make_spec(sshd, remote_http))
    node = next(iter(forwarder.nodes.values()))
    assert sshd.stop_connection_children() >= 1  # frozen: no FIN, no answers
    t = time.monotonic()
    await eventually(lambda: node.connects >= 2, timeout=6)
    assert time.monotonic() - t < 4  # keepalive 0.5 s x 2
    assert await get_through(forward["listen_port"]) == {"version": "dummy"}


async def test_wrong_key_fails_and_leaves_nothing(sshd, forwarder, remote_http, tmp_path):
    wrong = await keygen(tmp_path / "wrong_key")
    port = free_port()
    spec = make_spec(sshd, remote_http, listen_port=port, ssh=target_dict(sshd, key=str(wrong)))
    with pytest.raises(ForwardError) as e:
        await forwarder.add(spec)
    assert e.value.code == "auth_failed"
    assert f"{sshd.host}:{sshd.port}" in e.value.message
    assert forwarder.list() == [] and forwarder.nodes == {}
    assert port_is_free(port)
    await eventually(lambda: sshd.connections() == [], timeout=5)


async def test_missing_key_file(sshd, forwarder, remote_http, tmp_path):
    spec = make_spec(sshd, remote_http, ssh=target_dict(sshd, key=str(tmp_path / "nope")))
    with pytest.raises(ForwardError) as e:
        await forwarder.add(spec)
    assert e.value.code == "key_unreadable"
    assert forwarder.nodes == {}


async def test_unreachable_node(sshd, forwarder, remote_http):
    closed = free_port()
    spec = make_spec(sshd, remote_http, ssh=target_dict(sshd, port=closed))
    with pytest.raises(ForwardError) as e:
        await forwarder.add(spec)
    assert e.value.code == "unreachable"
    assert f"127.0.0.1:{closed}" in e.value.message
    assert forwarder.nodes == {} and forwarder.list() == []


async def test_changed_host_key_is_refused(sshd, forwarder, remote_http, tmp_path):
    await forwarder.add(make_spec(sshd, remote_http))
    await forwarder.remove("fwd-1")
    known = (tmp_path / "known_hosts").read_text()
    await sshd.new_host_key()
    await sshd.restart()
    with pytest.raises(ForwardError) as e:
        await forwarder.add(make_spec(sshd, remote_http))
    assert e.value.code == "host_key_changed"
    assert "has changed" in e.value.message and str(tmp_path / "known_hosts") in e.value.message
    assert (tmp_path / "known_hosts").read_text() == known  # never silently replaced
    assert forwarder.nodes == {}


async def test_strict_mode_needs_a_known_key(sshd, forwarder, remote_http, tmp_path):
    known = tmp_path / "prepared_known_hosts"
    options = {"StrictHostKeyChecking": "yes", "UserKnownHostsFile": str(known)}
    spec = make_spec(sshd, remote_http, ssh=target_dict(sshd, options=options))
    with pytest.raises(ForwardError) as e:
        await forwarder.add(spec)
    assert e.value.code == "host_key_unknown"
    assert not known.exists()
    known.write_text(sshd.known_hosts_line)
    forward, _ = await forwarder.add(spec)
    assert await http_get(forward["listen_port"]) == {"version": "dummy"}


async def test_port_in_use(sshd, forwarder, remote_http):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ForwardError) as e:
            await forwarder.add(make_spec(sshd, remote_http, listen_port=port))
    assert e.value.code == "port_in_use"
    assert forwarder.nodes == {}


async def test_remote_forward(sshd, forwarder, remote_http):
    spec = make_spec(
        sshd, remote_http, kind="remote", listen_host="127.0.0.1", listen_port=free_port()
    )
    forward, _ = await forwarder.add(spec)
    # sshd listens on the "remote" side and connections come back to remote_http
    assert await http_get(forward["listen_port"]) == {"version": "dummy"}
    await forwarder.remove(spec.id)
    await eventually(lambda: port_is_free(forward["listen_port"]), timeout=5)


async def test_kept_forward_waits_for_the_node(sshd, forwarder, remote_http):
    await sshd.stop()
    forward, created = await forwarder.add(make_spec(sshd, remote_http), keep=True)
    assert created and forward["state"] == "down" and forward["error"]["error"] == "unreachable"
    await sshd.start()
    port = await eventually(
        lambda: forwarder.list()[0]["state"] == "active" and forwarder.list()[0]["listen_port"],
        timeout=5,
    )
    assert await http_get(port) == {"version": "dummy"}


# --- the control API ---------------------------------------------------------------------


@pytest.fixture
async def api(forwarder):
    sockets = bind_sockets(0, "127.0.0.1")
    server = make_server(forwarder, "s3cret")
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    yield url
    server.stop()
    await asyncio.wait_for(server.close_all_connections(), 5)


async def test_api_needs_the_token(api, sshd, remote_http):
    bad = ForwarderClient(api, token="wrong")
    try:
        assert (await bad.health())["status"] == "ok"  # health is public
        with pytest.raises(ForwardError) as e:
            await bad.list()
        assert e.value.code == "unauthorized"
        with pytest.raises(ForwardError):
            await bad.add(make_spec(sshd, remote_http).to_dict())
    finally:
        bad.close()


async def test_api_add_list_remove(api, sshd, remote_http):
    client = ForwarderClient(api, token="s3cret")
    try:
        spec = make_spec(sshd, remote_http).to_dict()
        forward, created = await client.add(spec)
        assert created and await http_get(forward["listen_port"]) == {"version": "dummy"}
        assert [f["id"] for f in await client.list()] == ["fwd-1"]
        assert (await client.get("fwd-1"))["state"] == "active"
        with pytest.raises(ForwardError) as e:
            await client.add({**spec, "ssh": {**spec["ssh"], "options": {"ProxyCommand": "x"}}})
        assert e.value.code == "invalid" and "ProxyCommand" in e.value.message
        assert await client.remove("fwd-1") is True
        assert await client.get("fwd-1") is None
    finally:
        client.close()


async def test_api_client_keeps_its_connection(api, sshd, remote_http):
    client = ForwarderClient(api, token="s3cret")
    try:
        assert (await client.health())["status"] == "ok"
        (conn,) = client._idle
        await client.list()
        assert client._idle == [conn]  # the same connection again
        # requests at once get connections of their own, kept for later
        await asyncio.gather(*(client.list() for _ in range(5)))
        assert 1 <= len(client._idle) <= 5
    finally:
        client.close()
    assert client._idle == []


async def test_api_client_replaces_a_closed_connection(forwarder):
    sockets = bind_sockets(0, "127.0.0.1")
    server = make_server(forwarder, "s3cret")
    server.add_sockets(sockets)
    client = ForwarderClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", token="s3cret")
    try:
        assert await client.list() == []
        # the forwarder closes its connections (e.g. it restarted)
        await asyncio.wait_for(server.close_all_connections(), 5)
        assert await client.list() == []
    finally:
        client.close()
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


async def test_api_client_times_out_and_reports_bad_answers(tmp_path):
    answers = {
        "silent": b"",
        "garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
        "not json": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        "closed": None,
    }

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        answer = answers[mode]
        if answer is None:
            writer.close()
            return
        writer.write(answer)
        if mode != "silent":
            writer.close()

    server = await asyncio.start_unix_server(serve, str(tmp_path / "s"))
    client = ForwarderClient(unix_socket=str(tmp_path / "s"), token="t", timeout=0.5)
    try:
        for mode in answers:
            t = time.monotonic()
            with pytest.raises(ForwardError) as e:
                await client.list()
            assert e.value.code == "unavailable", mode
            assert time.monotonic() - t < 3
        assert client._idle == []
        missing = ForwarderClient(unix_socket=str(tmp_path / "nothing"), token="t")
        with pytest.raises(ForwardError) as e:
            await missing.health()
        assert e.value.code == "unavailable" and "cannot be reached" in e.value.message
        # a token that would break the request is refused before anything is sent
        broken = ForwarderClient(unix_socket=str(tmp_path / "s"), token="a\r\nX-Evil: 1")
        with pytest.raises(ForwardError) as e:
            await broken.list()
        assert e.value.code == "unavailable" and "token" in e.value.message
    finally:
        client.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


async def test_api_client_reads_chunked_and_unsized_answers():
    from outpostspawner.forwarder.client import _read_answer

    async def read(raw: bytes):
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await _read_answer(reader, "GET")

    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3\r\n{"a\r\n4;x=y\r\n": 1\r\n1\r\n}\r\n0\r\n\r\n'
    )
    assert await read(chunked) == (200, b'{"a": 1}', True)
    unsized = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n{}"
    assert await read(unsized) == (404, b"{}", False)
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    assert await read(old) == (200, b"{}", False)


async def test_remote_forwarder_restores_after_its_restart(api, tmp_path, sshd, remote_http):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    remote = RemoteForwarder(api, str(token), check_interval=3600)
    try:
        spec = make_spec(sshd, remote_http).to_dict()
        await remote.add(spec)
        await remote.check()
        # the standalone forwarder "restarts": same URL, new instance, no forwards
        client = ForwarderClient(api, token="s3cret")
        await client.remove("fwd-1")
        client.close()
        health = await remote._client.health()
        remote._instance = "an-older-instance"
        await remote.check()
        assert remote._instance == health["instance"]
        assert [f["id"] for f in await remote.list()] == ["fwd-1"]
        assert await remote.remove("fwd-1") is True
    finally:
        await remote.close()


async def test_ip_literals_are_resolved_without_the_thread_pool():
    from unittest import mock

    from outpostspawner.forwarder.app import resolve_ip_literals_inline

    loop = asyncio.get_running_loop()
    resolve_ip_literals_inline(loop)
    try:
        with mock.patch.object(loop, "run_in_executor", side_effect=AssertionError("thread")):
            for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
                infos = await loop.getaddrinfo(
                    host, 8080, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
                assert [(i[0], i[4][:2]) for i in infos] == [(family, (host, 8080))]
            with pytest.raises(AssertionError, match="thread"):
                await loop.getaddrinfo("localhost", 8080, type=socket.SOCK_STREAM)
    finally:
        del loop.getaddrinfo  # the loop's own method again


# --- supervised processes -------------------------------------------------------------


async def test_supervisor_restarts_a_dead_forwarder(sshd, remote_http, tmp_path):
    config = SupervisorConfig(reconnect_delay=0.1, restart_delay=0.1, log_level="WARNING")
    supervisor = ForwarderSupervisor(config)
    try:
        options = {"UserKnownHostsFile": str(tmp_path / "kh")}
        ssh = target_dict(sshd, options=options)
        spec = make_spec(sshd, remote_http, ssh=ssh, listen_port=free_port()).to_dict()
        assert supervisor.processes() == []  # started on first use
        forward, _ = await supervisor.add(spec)
        (process,) = supervisor.processes()
        assert await http_get(forward["listen_port"]) == {"version": "dummy"}
        os.kill(process.pid, signal.SIGKILL)
        await eventually(
            lambda: supervisor.processes() and supervisor.processes()[0] is not process,
            timeout=10,
        )
        assert await get_through(forward["listen_port"]) == {"version": "dummy"}
        assert [f["id"] for f in await supervisor.list()] == ["fwd-1"]
        assert await supervisor.remove("fwd-1") is True
        assert port_is_free(forward["listen_port"])
    finally:
        await supervisor.close()
    assert supervisor.processes() == []
    assert process.proc.returncode is not None
    assert process.dir == ""  # removed


async def test_private_directories_are_removed_at_exit(sshd, remote_http, tmp_path):
    from outpostspawner.forwarder import supervisor as sup

    supervisor = ForwarderSupervisor(SupervisorConfig(log_level="WARNING"))
    try:
        options = {"UserKnownHostsFile": str(tmp_path / "kh")}
        spec = make_spec(sshd, remote_http, ssh=target_dict(sshd, options=options)).to_dict()
        await supervisor.add(spec)
        (process,) = supervisor.processes()
        assert process.dir in sup._DIRS
        assert await asyncio.to_thread(os.path.isdir, process.dir)
        # what runs when the Hub exits without stopping the children
        sup._remove_dirs()
        assert process.dir not in sup._DIRS
        assert not await asyncio.to_thread(os.path.exists, process.dir)
    finally:
        await supervisor.close()


async def test_supervisor_failed_add_leaves_nothing(sshd, remote_http, tmp_path):
    supervisor = ForwarderSupervisor(SupervisorConfig(log_level="ERROR"))
    try:
        wrong = await keygen(tmp_path / "wrong")
        spec = make_spec(sshd, remote_http, ssh=target_dict(sshd, key=str(wrong))).to_dict()
        with pytest.raises(ForwardError) as e:
            await supervisor.add(spec)
        assert e.value.code == "auth_failed"
        assert supervisor.registry.specs == {}
        assert await supervisor.list() == []
    finally:
        await supervisor.close()


async def test_cancelled_add_during_the_start_leaves_nothing(sshd, remote_http, tmp_path):
    import glob
    import tempfile

    pattern = os.path.join(tempfile.gettempdir(), "outpostspawner-forwarder-*")
    before = set(glob.glob(pattern))
    supervisor = ForwarderSupervisor(SupervisorConfig(log_level="WARNING"))
    try:
        options = {"UserKnownHostsFile": str(tmp_path / "kh")}
        spec = make_spec(sshd, remote_http, ssh=target_dict(sshd, options=options)).to_dict()
        task = asyncio.ensure_future(supervisor.add(spec))
        await asyncio.sleep(0.05)  # the forwarder process is starting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert supervisor.registry.specs == {}
        # the start is shared and goes on; a later add uses the same process
        forward, _ = await supervisor.add({**spec, "id": "fwd-2"})
        assert len(supervisor.processes()) == 1
        assert [f["id"] for f in await supervisor.list()] == ["fwd-2"]
    finally:
        await supervisor.close()
    assert supervisor.processes() == []
    assert set(glob.glob(pattern)) <= before
