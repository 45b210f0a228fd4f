"""A real OpenSSH server for tests, on a free loopback port.

:class:`TestSSHD` writes its own host key, client key pair and configuration into
a temporary directory and runs ``/usr/sbin/sshd -D -e -f <config>`` with them. It
accepts public-key logins of the user running the tests and allows TCP
forwarding in both directions. Example::

    async with TestSSHD(tmp_path) as sshd:
        conn = await asyncssh.connect(
            sshd.host, sshd.port, username=sshd.username,
            client_keys=[sshd.client_key], known_hosts=None,
        )

The pytest fixture ``sshd`` (in :mod:`outpostspawner.testing.plugin`) yields a
started one and stops it after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import socket
from pathlib import Path

from ..processes import stop_process

SSHD = "/usr/sbin/sshd"
_PRIVSEP_DIR = "/run/sshd"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def _run(*cmd: str, timeout: float = 20) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{cmd[0]} timed out") from None
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode(errors='replace')}")


async def keygen(path: Path, comment: str = "outpostspawner-test") -> Path:
    """Write a new ed25519 key pair (``path`` and ``path.pub``) without a passphrase."""
    await _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    return path


class TestSSHD:
    """One OpenSSH server process with its own keys and configuration.

    :param workdir: a directory for keys, configuration, pid and log files
    :param host: the loopback address to listen on
    :param extra_config: more ``sshd_config`` lines
    """

    __test__ = False  # not a test class for pytest

    def __init__(self, workdir: str | os.PathLike, *, host: str = "127.0.0.1", extra_config=()):
        self.dir = Path(workdir)
        self.host = host
        self.port = 0
        self.username = getpass.getuser()
        self.extra_config = list(extra_config)
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "client_ed25519_key"
        self.config = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._log_file = None

    @property
    def host_public_key(self) -> str:
        """The server's public host key, ``"ssh-ed25519 AAAA..."``."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    @property
    def client_public_key(self) -> str:
        return Path(f"{self.client_key}.pub").read_text().strip()

    @property
    def known_hosts_line(self) -> str:
        """This server's line for a known_hosts file."""
        return f"[{self.host}]:{self.port} {self.host_public_key}\n"

    async def new_host_key(self) -> None:
        """Replace the host key (takes effect for new connections after a restart)."""
        for p in (self.host_key, Path(f"{self.host_key}.pub")):
            p.unlink(missing_ok=True)
        await keygen(self.host_key, "outpostspawner-test-host")

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "AllowTcpForwarding yes",
            "PermitOpen any",
            "PermitListen any",
            "GatewayPorts no",
            "AllowAgentForwarding no",
            "X11Forwarding no",
            "PermitTTY no",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "MaxStartups 100:30:200",
        ]
        if os.geteuid() == 0:
            lines.append("PermitRootLogin prohibit-password")
        lines.extend(self.extra_config)
        self.config.write_text("\n".join(lines) + "\n")

    def _prepare(self) -> None:
        if os.geteuid() == 0 and not os.path.isdir(_PRIVSEP_DIR):
            os.makedirs(_PRIVSEP_DIR, mode=0o755, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        self._write_config()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()

    async def start(self, timeout: float = 20) -> TestSSHD:
        """Generate keys (first time), write the config, start sshd and wait until it
        accepts connections."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            await keygen(self.host_key, "outpostspawner-test-host")
        if not self.client_key.exists():
            await keygen(self.client_key)
            (self.dir / "authorized_keys").write_text(self.client_public_key + "\n")
        self._prepare()
        self.proc = await asyncio.create_subprocess_exec(
            SSHD,
            "-D",
            "-e",
            "-f",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            start_new_session=True,
        )
        try:
            await asyncio.wait_for(self._wait_listening(), timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_listening(self) -> None:
        while True:
            if self.proc is None or self.proc.returncode is not None:
                raise RuntimeError(f"sshd exited; log:\n{self.log()}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _children(self, proc=None, recursive: bool = True) -> list:
        import psutil

        proc = proc or self.proc
        if proc is None or proc.returncode is not None:
            return []
        try:
            return psutil.Process(proc.pid).children(recursive=recursive)
        except psutil.NoSuchProcess:
            return []

    def connection_pids(self) -> list[int]:
        """The pids of all sshd processes serving connections (not the listener);
        one connection may have more than one (privilege separation)."""
        return [p.pid for p in self._children()]

    def connections(self) -> list[int]:
        """One pid per connection: the listener's direct children."""
        import psutil

        pids = []
        for p in self._children(recursive=False):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    pids.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        return pids

    def kill_connection_children(self) -> int:
        """Kill (SIGKILL) every sshd process serving a connection; the listener keeps
        running, so clients can reconnect. Returns how many were killed."""
        return self._signal_children(signal.SIGKILL)

    def stop_connection_children(self) -> int:
        """Freeze (SIGSTOP) the processes serving connections: a peer that hangs
        without closing the TCP connection. :meth:`stop` kills them."""
        return self._signal_children(signal.SIGSTOP)

    def _signal_children(self, sig: int) -> int:
        n = 0
        for child in self._children():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child.pid, sig)
                n += 1
        return n

    async def stop(self, timeout: float = 5) -> None:
        """Stop sshd and every connection process: SIGTERM, then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is not None:
            for child in self._children(proc):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child.pid, signal.SIGKILL)
            await stop_process(proc, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def restart(self) -> None:
        """Stop and start again on the same port (e.g. after :meth:`new_host_key`)."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> TestSSHD:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()
