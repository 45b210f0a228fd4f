"""Helpers for the end-to-end tests of the three ways a server is reached (direct,
SSH forward at start, delayed tunnel through the setuptunnel callback), shared by
``test_modes.py`` and ``test_restart.py``.

The Hub is configured so that the request body of ``POST .../server`` picks the
mode per server:

- ``{}``: direct, the proxy connects to the address the Outpost reported;
- ``{"e2e_mode": "ssh"}``: the Outpost answers with the address and the Hub makes an
  SSH forward to it through the test sshd;
- ``{"e2e_mode": "tunnel", "e2e_async": True}``: the Outpost answers 202 without an
  address and later reports it to the Hub's setuptunnel endpoint with the server's
  token; the Hub then makes the SSH forward.

``"e2e_svc": True`` adds a Kubernetes Service (in the fake API server) in front of
a forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from outpostspawner.forwarder.app import TOKEN_ENV
from outpostspawner.forwarder.client import ForwarderClient
from outpostspawner.testing.fake_k8s import FakeKubernetes
from outpostspawner.testing.sshd import TestSSHD

from .conftest import NAMESPACE, HubProcess, wait_for

#: the request bodies of the three modes
MODE_BODIES = {
    "direct": {},
    "ssh": {"e2e_mode": "ssh"},
    "tunnel": {"e2e_mode": "tunnel", "e2e_async": True},
}

MODES_CONFIG = """\
def _e2e_option(spawner, key, default=None):
    return (spawner.user_options or {{}}).get(key, default)


# the request body picks the mode of each server (tests/e2e/forwarding.py)
c.OutpostSpawner.ssh_during_startup = lambda spawner: _e2e_option(spawner, "e2e_mode") in (
    "ssh",
    "tunnel",
)
c.OutpostSpawner.svc_create = lambda spawner: bool(_e2e_option(spawner, "e2e_svc", False))
c.OutpostSpawner.ssh_node = "127.0.0.1"
c.OutpostSpawner.ssh_port = {ssh_port}
c.OutpostSpawner.ssh_username = {ssh_user!r}
c.OutpostSpawner.ssh_key = {ssh_key!r}
# the node's key is written before the Hub starts; nothing else is accepted
c.OutpostSpawner.ssh_known_hosts = {known_hosts!r}
c.OutpostSpawner.ssh_forward_options = {{"StrictHostKeyChecking": "yes"}}
c.OutpostSpawner.ssh_forward_listen_address = "127.0.0.1"
# the Services go to the fake Kubernetes API of the test process
c.OutpostSpawner.k8s_api_host = {k8s_url!r}
c.OutpostSpawner.namespace = {namespace!r}
c.OutpostSpawner.svc_remove_orphans = False
# the proxy runs on this machine, not in a cluster: the Service's "DNS name" is the
# loopback address, where the forward listens on the Service's port
c.OutpostSpawner.dns_name_template = "127.0.0.1"
"""


def modes_config(sshd: TestSSHD, k8s: FakeKubernetes, known_hosts: Path) -> str:
    """The Hub configuration for the modes (appended to conftest's configuration)."""
    known_hosts.write_text(sshd.known_hosts_line)
    return MODES_CONFIG.format(
        ssh_port=sshd.port,
        ssh_user=sshd.username,
        ssh_key=str(sshd.client_key),
        known_hosts=str(known_hosts),
        k8s_url=k8s.url,
        namespace=NAMESPACE,
    )


def mode_body(mode: str, svc: bool = False) -> dict:
    body = dict(MODE_BODIES[mode])
    if svc:
        body["e2e_svc"] = True
    return body


# --- what the proxy, the forwarder and the network show ------------------------------


async def proxy_targets(hub: HubProcess) -> dict[str, str]:
    """The proxy's routes: path (without trailing slash) -> target URL."""
    resp = await hub.fetch(f"{hub.proxy_api_url}/api/routes", token=hub.proxy_token)
    assert resp.code == 200, resp.text
    return {path.rstrip("/"): route["target"] for path, route in resp.json().items()}


async def route_target(hub: HubProcess, user: str, server: str) -> tuple[str, int]:
    """Host and port the proxy sends the server's requests to."""
    path = f"/user/{user}/{server}" if server else f"/user/{user}"
    targets = await proxy_targets(hub)
    assert path in targets, sorted(targets)
    parts = urlsplit(targets[path])
    return parts.hostname, parts.port


async def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=3)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@dataclass
class Forwarder:
    """The Hub's supervised forwarder process, found through the process table, and a
    client of its control API (Unix socket and token from its command line and
    environment)."""

    pid: int
    client: ForwarderClient

    async def forwards(self) -> list[dict]:
        return await self.client.list()

    def close(self) -> None:
        self.client.close()


def _find_forwarder(hub_pid: int) -> tuple[int, str, str] | None:
    try:
        children = psutil.Process(hub_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            cmdline = child.cmdline()
            if "--unix-socket" not in cmdline or child.status() == psutil.STATUS_ZOMBIE:
                continue
            token = child.environ().get(TOKEN_ENV)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if token:
            return child.pid, cmdline[cmdline.index("--unix-socket") + 1], token
    return None


async def find_forwarder(hub: HubProcess) -> Forwarder | None:
    """The forwarder child of the Hub, or ``None`` if it has none (yet)."""
    found = await asyncio.to_thread(_find_forwarder, hub.process.pid)
    if found is None:
        return None
    pid, sock, token = found
    return Forwarder(pid, ForwarderClient(unix_socket=sock, token=token, timeout=10))


async def hub_forwards(hub: HubProcess) -> list[dict]:
    """The forwards the Hub's forwarder holds now (``[]`` without a forwarder)."""
    forwarder = await find_forwarder(hub)
    if forwarder is None:
        return []
    try:
        return await forwarder.forwards()
    finally:
        forwarder.close()


def services_in(k8s: FakeKubernetes) -> dict[str, dict]:
    """The Services the Hub made (not the Hub's own Service), by name."""
    return {
        name: svc
        for (namespace, name), svc in k8s.services.items()
        if namespace == NAMESPACE
        and svc["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by")
        == "outpostspawner"
    }


# --- using a server through the proxy ----------------------------------------------------


async def use_server(hub: HubProcess, user: str, server: str, token: str) -> None:
    """Use the server through the proxy with the user's token: its REST API, and a
    websocket (jupyter-server's event stream) that receives the event of a file saved
    through the REST API."""
    prefix = f"/user/{user}/{server}/" if server else f"/user/{user}/"
    resp = await hub.fetch(f"{hub.url}{prefix}api/status", token=token)
    assert resp.code == 200, f"{user}/{server}: {resp.code} {resp.text[:300]}"
    assert "started" in resp.json()

    ws_url = "ws" + hub.url[len("http") :] + f"{prefix}api/events/subscribe"
    request = HTTPRequest(
        ws_url,
        headers={"Authorization": f"token {token}"},
        connect_timeout=10,
        request_timeout=10,
    )
    conn = await asyncio.wait_for(websocket_connect(request), timeout=15)
    try:
        path = f"e2e-{server or 'default'}.txt"
        resp = await hub.fetch(
            f"{hub.url}{prefix}api/contents/{path}",
            "PUT",
            token=token,
            body={"type": "file", "format": "text", "content": f"hello {user}/{server}"},
        )
        assert resp.code in (200, 201), f"{resp.code} {resp.text[:300]}"

        async def saved() -> dict:
            while True:
                message = await conn.read_message()
                assert message is not None, f"{user}/{server}: the websocket closed"
                event = json.loads(message)
                if event.get("path") == path and event.get("action") == "save":
                    return event

        event = await asyncio.wait_for(saved(), timeout=10)
        assert "contents_service" in event["schema_id"], event
    finally:
        conn.close()


async def wait_reachable(
    hub: HubProcess, user: str, server: str, token: str, timeout: float
) -> None:
    """Wait until the server's REST API answers through the proxy."""
    prefix = f"/user/{user}/{server}/" if server else f"/user/{user}/"

    async def answers() -> bool:
        try:
            resp = await hub.fetch(f"{hub.url}{prefix}api/status", token=token, timeout=5)
        except ConnectionError:
            return False
        return resp.code == 200

    await wait_for(
        answers,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"{user}/{server} to answer through the proxy\n{hub.log_tail()}",
    )


def start_request(hub: HubProcess, user: str, server: str):
    """The (last) start request the Outpost received for the server."""
    starts = [
        r for r in hub.start_requests(user) if r.json["env"].get("JUPYTERHUB_SERVER_NAME") == server
    ]
    if not starts:
        pytest.fail(f"no start request for {user}/{server}", pytrace=False)
    return starts[-1]
