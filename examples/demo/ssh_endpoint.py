"""The demo's SSH node "on the Outpost side".

JupyterHub's forwarder process logs in here and forwards a port on 127.0.0.1 for
every server to the address the Outpost reported, as it would through the SSH
node of a remote system. ``run_demo.py`` starts this script; it runs

- OpenSSH's sshd (``/usr/sbin/sshd``) through
  :class:`outpostspawner.testing.sshd.TestSSHD`, when it is installed, or else
- a small asyncssh server.

Either way the node has its own host key and accepts one generated client key,
kept in the directory given with ``--dir``. The client key may only open
connections to ``127.0.0.1`` (``direct-tcpip``): no shell, no commands, no remote
forwards.

Once it accepts connections, it prints one JSON line: ``kind``, ``host``,
``port``, ``username``, ``key`` (the client key's path) and ``known_hosts_line``.
It stops, and stops sshd with every process serving a connection, on SIGTERM,
SIGINT or when its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
from pathlib import Path

import asyncssh

from outpostspawner.testing.sshd import SSHD, TestSSHD, keygen

HOST = "127.0.0.1"
HOST_KEY = "ssh_host_ed25519_key"
CLIENT_KEY = "client_ed25519_key"
#: what the client key may do at an OpenSSH node (authorized_keys options)
KEY_OPTIONS = 'restrict,port-forwarding,permitopen="127.0.0.1:*",command="/bin/false"'
#: the same in sshd_config, for every connection
SSHD_RESTRICTIONS = [
    "Match all",
    "AllowTcpForwarding local",
    "PermitOpen 127.0.0.1:*",
    "ForceCommand /bin/false",
]

log = logging.getLogger("demo-ssh")


# --- OpenSSH ---------------------------------------------------------------------


def _proc_children(pid: int, recursive: bool) -> list[int]:
    """Child pids from /proc (when psutil is not installed)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        parents[int(name)] = int(data[data.rfind(b")") + 2 :].split()[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found.extend(kids)
        if recursive:
            todo.extend(kids)
    return found


class _Pid:
    def __init__(self, pid: int):
        self.pid = pid


class DemoSSHD(TestSSHD):
    """TestSSHD whose key may only forward to 127.0.0.1; works without psutil."""

    def _children(self, proc=None, recursive: bool = True) -> list:
        try:
            import psutil  # noqa: F401
        except ImportError:
            proc = proc or self.proc
            if proc is None or proc.returncode is not None:
                return []
            return [_Pid(p) for p in _proc_children(proc.pid, recursive)]
        return super()._children(proc, recursive)


async def start_openssh(workdir: Path) -> tuple[dict, DemoSSHD]:
    sshd = DemoSSHD(workdir, host=HOST, extra_config=SSHD_RESTRICTIONS)
    if not await asyncio.to_thread(sshd.client_key.exists):
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        await keygen(sshd.client_key)
    # written on every start: the key's restrictions, whatever was there before
    public = await asyncio.to_thread(lambda: sshd.client_public_key)
    line = f"{KEY_OPTIONS} {public}\n"
    await asyncio.to_thread((workdir / "authorized_keys").write_text, line)
    await sshd.start()
    info = {
        "kind": "openssh",
        "host": sshd.host,
        "port": sshd.port,
        "username": sshd.username,
        "key": str(sshd.client_key),
        "known_hosts_line": sshd.known_hosts_line.strip(),
    }
    return info, sshd


# --- asyncssh ----------------------------------------------------------------------


def _load_or_create_key(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519", comment="outpostspawner-demo")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    Path(f"{path}.pub").write_bytes(key.export_public_key())
    return key


class _Node(asyncssh.SSHServer):
    """Public-key login of one user with one key; direct-tcpip to 127.0.0.1 only."""

    def __init__(self, username: str, client_key: asyncssh.SSHKey):
        self._username = username
        self._key = client_key.public_data
        self._peer = None
        self._user = ""

    def connection_made(self, conn) -> None:
        self._peer = conn.get_extra_info("peername")
        self._user = ""

    def auth_completed(self) -> None:
        log.info("login of %s from %s accepted", self._user, self._peer)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = username == self._username and key.public_data == self._key
        if ok:
            self._user = username
        else:
            log.warning("login of %s from %s refused", username, self._peer)
        return ok

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port) -> bool:
        allowed = dest_host == HOST
        if not allowed:
            log.warning("refused a forward to %s:%s", dest_host, dest_port)
        return allowed

    def server_requested(self, listen_host, listen_port) -> bool:
        return False


async def start_asyncssh(workdir: Path) -> tuple[dict, asyncssh.SSHAcceptor]:
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    host_key = await asyncio.to_thread(_load_or_create_key, workdir / HOST_KEY)
    client_key = await asyncio.to_thread(_load_or_create_key, workdir / CLIENT_KEY)
    username = getpass.getuser()
    acceptor = await asyncssh.listen(
        HOST,
        0,
        server_host_keys=[host_key],
        server_factory=lambda: _Node(username, client_key),
        password_auth=False,
        kbdint_auth=False,
        gss_host=None,
        agent_forwarding=False,
        x509_trusted_certs=None,
        config=None,
    )
    port = acceptor.get_port()
    public = " ".join(host_key.export_public_key().decode().split()[:2])
    info = {
        "kind": "asyncssh",
        "host": HOST,
        "port": port,
        "username": username,
        "key": str(workdir / CLIENT_KEY),
        "known_hosts_line": f"[{HOST}]:{port} {public}",
    }
    return info, acceptor


# --- running -----------------------------------------------------------------------


async def _stop_on_eof(stop: asyncio.Event) -> asyncio.BaseTransport:
    class _Watcher(asyncio.Protocol):
        def eof_received(self):
            stop.set()

        def connection_lost(self, exc):
            stop.set()

    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(_Watcher, sys.stdin)
    return transport


async def run(workdir: Path, kind: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = await _stop_on_eof(stop)
    if kind == "auto":
        kind = "openssh" if os.access(SSHD, os.X_OK) else "asyncssh"
    if kind == "openssh":
        info, server = await start_openssh(workdir)
    else:
        info, server = await start_asyncssh(workdir)
    try:
        log.info("%s SSH node listening on %s:%d", info["kind"], info["host"], info["port"])
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        log.info("stopping the SSH node")
        if isinstance(server, TestSSHD):
            await server.stop()
        else:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        watcher.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="directory for keys, configuration and logs")
    p.add_argument(
        "--kind",
        choices=("auto", "openssh", "asyncssh"),
        default="auto",
        help="auto: OpenSSH when /usr/sbin/sshd exists, else asyncssh (default)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    return asyncio.run(run(Path(args.dir).resolve(), args.kind))


if __name__ == "__main__":
    sys.exit(main())
