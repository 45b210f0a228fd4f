"""Run the demo: a reference JupyterHub Outpost and a JupyterHub spawning through it.

Run from the repository root with the project's virtual environment::

    python examples/demo/run_demo.py           # runs until Ctrl-C
    python examples/demo/run_demo.py --check   # start, spawn one server, stop, exit

Every server is reached through an SSH port forward: besides the Outpost and the
Hub, the demo starts an SSH node "on the Outpost side" (``ssh_endpoint.py``:
OpenSSH's sshd when ``/usr/sbin/sshd`` exists, else an asyncssh server), and the
Hub's forwarder process forwards a port on 127.0.0.1 through it to each server.

Environment:

- ``DEMO_PORT``: the Hub's public port on 127.0.0.1 (default 8000)
- ``DEMO_DATA_DIR``: database, cookie secret, SSH keys and logs (default
  ``.demo/`` in the repository root)
- ``DEMO_SSH``: ``openssh`` or ``asyncssh`` to choose the SSH node (default: auto)

The Outpost, the SSH node, JupyterHub (with its proxy and forwarder) and the
servers they start are child processes; all of them are stopped on Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import http.cookiejar
import json
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = Path(sys.executable).parent
CONFIG = HERE / "jupyterhub_config.py"
SSH_ENDPOINT = HERE / "ssh_endpoint.py"
PASSWORD = "demo"  # the DummyAuthenticator password in jupyterhub_config.py
STARTUP_TIMEOUT = 60
STOP_TIMEOUT = 30
SPAWN_TIMEOUT = 75


class DemoError(Exception):
    """Something did not start or answer as it should."""


class Shutdown(Exception):
    """SIGTERM or SIGINT arrived."""


def _on_signal(signum: int, frame: Any) -> None:
    raise Shutdown(signal.Signals(signum).name)


def _still_stopping(signum: int, frame: Any) -> None:
    print("still stopping, please wait ...", flush=True)


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def search_path() -> str:
    """PATH plus the places ``make install`` puts configurable-http-proxy and the venv."""
    extra = [str(REPO / "node_modules" / ".bin"), str(BIN)]
    return os.pathsep.join([os.environ.get("PATH", ""), *extra])


def _process_table() -> dict[int, tuple[int, int, bytes]]:
    """pid -> (parent pid, start time, state) of every process, from /proc
    (empty where there is no /proc)."""
    table: dict[int, tuple[int, int, bytes]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        table[int(name)] = (int(fields[1]), int(fields[19]), fields[0])
    return table


def descendants(pid: int) -> dict[int, int]:
    """The processes below ``pid`` (pid -> start time), including those that run
    in sessions of their own, such as the Hub's forwarder and sshd."""
    table = _process_table()
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start, _) in table.items():
            if ppid == parent and child not in found:
                found[child] = start
                todo.append(child)
    return found


def _alive(procs: dict[int, int]) -> dict[int, int]:
    """Those of ``procs`` that still run (same start time, not a zombie)."""
    table = _process_table()
    return {
        pid: start
        for pid, start in procs.items()
        if pid in table and table[pid][1] == start and table[pid][2] != b"Z"
    }


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Demo:
    """The child processes of the demo and how to start and stop them.

    :param data_dir: where the Hub keeps its state and the logs go
    :param port: the Hub's public port
    :param quiet: send the children's logs to files in ``data_dir`` instead of the terminal
    """

    def __init__(self, data_dir: Path, port: int, quiet: bool):
        self.data_dir = data_dir
        self.port = port
        self.quiet = quiet
        self.url = f"http://127.0.0.1:{port}"
        self.outpost: subprocess.Popen | None = None
        self.ssh: subprocess.Popen | None = None
        self.hub: subprocess.Popen | None = None
        self.outpost_url = ""
        self.credentials = ""
        self.ssh_info: dict[str, Any] = {}
        self.known_hosts = data_dir / "ssh_known_hosts"
        self.proxy_api_url = ""
        self.proxy_token = ""
        self.path = search_path()

    # --- starting ----------------------------------------------------------------

    def _popen(
        self,
        cmd: list[str],
        log_name: str,
        *,
        pipe_stdout: bool = False,
        pipe_stdin: bool = False,
        **kwargs: Any,
    ) -> subprocess.Popen:
        """Start a child; its output goes to the terminal, or with ``quiet`` to a
        log file in the data dir."""
        log = open(self.data_dir / log_name, "ab") if self.quiet else None  # noqa: SIM115
        try:
            # a session of its own: Ctrl-C reaches only this script, which then
            # stops the children in order (Hub first, so it can stop its servers)
            return subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdout else log,
                stderr=log,
                start_new_session=True,
                **kwargs,
            )
        finally:
            if log is not None:
                log.close()

    def start_outpost(self, credentials: str) -> None:
        self.credentials = credentials
        singleuser = [str(BIN / "jupyterhub-singleuser")]
        if os.geteuid() == 0:
            singleuser.append("--allow-root")  # jupyter-server refuses root without it
        # the credentials travel in the environment, not on the command line
        # (which every local user can read)
        launcher = (
            "import os, sys\n"
            "from outpostspawner.testing.__main__ import main\n"
            "creds = os.environ.pop('DEMO_OUTPOST_CREDENTIALS')\n"
            "sys.exit(main([*sys.argv[1:], '--credentials', creds]))\n"
        )
        cmd = [
            sys.executable,
            "-c",
            launcher,
            "--port",
            "0",
            "--list-extras",  # the check compares the proxy's target with the addresses
            "--command",
            shlex.join(singleuser),
            "--log-file-dir",
            str(self.data_dir / "services"),
        ]
        env = dict(os.environ, PATH=self.path, DEMO_OUTPOST_CREDENTIALS=credentials)
        self.outpost = self._popen(cmd, "outpost.log", pipe_stdout=True, env=env)
        line = self._read_line(self.outpost, STARTUP_TIMEOUT)
        match = re.search(r"outpost listening on (\S+)", line)
        if not match:
            raise DemoError(f"the Outpost did not start (it said {line!r})")
        self.outpost_url = match.group(1)

    def start_ssh(self) -> None:
        """The SSH node the Hub's forwarder logs in to; its host key goes into the
        forwarder's known_hosts file, so the key is verified from the start."""
        cmd = [sys.executable, str(SSH_ENDPOINT), "--dir", str(self.data_dir / "ssh")]
        kind = os.environ.get("DEMO_SSH", "")
        if kind:
            cmd += ["--kind", kind]
        # its stdin stays open while this script runs: should the script be
        # killed, the SSH node notices and stops sshd
        self.ssh = self._popen(cmd, "ssh.log", pipe_stdout=True, pipe_stdin=True)
        line = self._read_line(self.ssh, STARTUP_TIMEOUT)
        try:
            info = json.loads(line)
        except ValueError:
            info = None
        needed = {"kind", "host", "port", "username", "key", "known_hosts_line"}
        if not isinstance(info, dict) or not needed <= set(info):
            raise DemoError(f"the SSH node did not start (it said {line!r})")
        self.ssh_info = info
        tmp = self.known_hosts.with_suffix(".tmp")
        tmp.write_text(info["known_hosts_line"] + "\n")
        tmp.replace(self.known_hosts)

    @staticmethod
    def _read_line(proc: subprocess.Popen, timeout: float) -> str:
        """The first line the process prints, waiting at most ``timeout`` seconds."""
        assert proc.stdout is not None
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(min(left, 0.5)):
                    if proc.poll() is not None or left <= 0:
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.decode("utf-8", "replace").strip()

    def start_hub(self, credentials: str) -> None:
        chp = shutil.which("configurable-http-proxy", path=self.path)
        if chp is None:
            raise DemoError(
                "configurable-http-proxy not found: run `make install` "
                "(or `npm install` in the repository root)"
            )
        hub_port = free_port()
        proxy_api_port = free_port()
        self.proxy_api_url = f"http://127.0.0.1:{proxy_api_port}"
        # the proxy's API token, so that --check can read the proxy's routes
        self.proxy_token = secrets.token_hex(32)
        env = dict(
            os.environ,
            PATH=self.path,
            DEMO_PORT=str(self.port),
            DEMO_HUB_PORT=str(hub_port),
            DEMO_PROXY_API_PORT=str(proxy_api_port),
            DEMO_DATA_DIR=str(self.data_dir),
            DEMO_OUTPOST_URL=self.outpost_url,
            DEMO_OUTPOST_CREDENTIALS=credentials,
            CONFIGPROXY_AUTH_TOKEN=self.proxy_token,
        )
        if self.ssh_info:
            env.update(
                DEMO_SSH_PORT=str(self.ssh_info["port"]),
                DEMO_SSH_USER=self.ssh_info["username"],
                DEMO_SSH_KEY=self.ssh_info["key"],
                DEMO_SSH_KNOWN_HOSTS=str(self.known_hosts),
            )
        cmd = [str(BIN / "jupyterhub"), "-f", str(CONFIG)]
        self.hub = self._popen(cmd, "jupyterhub.log", env=env, cwd=self.data_dir)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        # the Hub itself first, then through the proxy
        for url in (f"http://127.0.0.1:{hub_port}/hub/api/", f"{self.url}/hub/api/"):
            self._wait_http(url, deadline)

    def _wait_http(self, url: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            for proc, name in self._children():
                if proc is not None and proc.poll() is not None:
                    raise DemoError(f"{name} exited with status {proc.returncode}")
            try:
                status, _ = request(url, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise DemoError(f"JupyterHub did not answer at {url} within {STARTUP_TIMEOUT} s")

    def _children(self) -> list[tuple[subprocess.Popen, str]]:
        named = (
            (self.hub, "JupyterHub"),
            (self.ssh, "the SSH node"),
            (self.outpost, "the Outpost"),
        )
        return [(proc, name) for proc, name in named if proc is not None]

    def all_running(self) -> bool:
        return all(proc.poll() is None for proc, _ in self._children())

    # --- stopping ----------------------------------------------------------------

    @staticmethod
    def _stop(proc: subprocess.Popen | None, name: str) -> None:
        """SIGTERM, wait, then SIGKILL the process and its process group; then
        the processes it started in sessions of their own, should they outlive it."""
        if proc is None:
            return
        below = descendants(proc.pid)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop within {STOP_TIMEOUT} s, killing it", flush=True)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            print(f"{name} (pid {proc.pid}) did not exit", flush=True)
        if proc.stdout is not None:
            proc.stdout.close()
        Demo._stop_leftovers(below, name)

    @staticmethod
    def _stop_leftovers(procs: dict[int, int], name: str) -> None:
        """Give processes a few seconds to end by themselves (the forwarder ends
        when the Hub is gone), then SIGTERM and SIGKILL them."""
        for sig, wait in ((None, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            left = _alive(procs)
            if not left:
                return
            if sig is not None:
                print(f"stopping {len(left)} leftover process(es) of {name}", flush=True)
                for pid in left:
                    try:
                        os.kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            deadline = time.monotonic() + wait
            while _alive(procs) and time.monotonic() < deadline:
                time.sleep(0.1)
        left = _alive(procs)
        if left:
            print(f"processes {sorted(left)} of {name} did not exit", flush=True)

    def _stop_leftover_proxy(self) -> None:
        """The Hub removes the proxy's pid file when it stops the proxy; a file
        left behind means the proxy may still run."""
        pid_file = self.data_dir / "jupyterhub-proxy.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"configurable-http-proxy" in cmdline:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
        pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the Hub (which stops its servers, forwards, forwarder and proxy),
        then the SSH node, then the Outpost."""
        self._stop(self.hub, "JupyterHub")
        self._stop_leftover_proxy()
        self._stop(self.ssh, "the SSH node")
        self._stop(self.outpost, "the Outpost")

    def show_logs(self) -> None:
        if self.quiet:
            for name in ("outpost.log", "ssh.log", "jupyterhub.log"):
                print(f"--- {name} (last lines) ---\n{tail(self.data_dir / name)}", flush=True)


# --- the non-interactive check ---------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def request(
    url: str,
    method: str = "GET",
    *,
    token: str | None = None,
    body: Any = None,
    opener: urllib.request.OpenerDirector | None = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15,
) -> tuple[int, str]:
    """Send a request; returns the status and the body text for any status."""
    headers = dict(headers or {})
    data = None
    if token:
        headers["Authorization"] = f"token {token}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with (opener or urllib.request.build_opener(_NoRedirect)).open(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode("utf-8", "replace")


def _host_port(value: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(value if "//" in value else f"//{value}")
    return parsed.hostname or "", parsed.port or 0


def proxy_target(demo: Demo, user: str) -> tuple[str, int]:
    """Where configurable-http-proxy sends the requests for ``user``'s server."""
    status, text = request(f"{demo.proxy_api_url}/api/routes", token=demo.proxy_token)
    if status != 200:
        raise DemoError(f"could not read the proxy's routes ({status})")
    for path, route in json.loads(text).items():
        if path.rstrip("/") == f"/user/{user}":
            return _host_port(route["target"])
    raise DemoError(f"the proxy has no route for {user}'s server")


def outpost_addresses(demo: Demo) -> set[tuple[str, int]]:
    """The addresses of the servers the Outpost runs for this Hub."""
    auth = base64.b64encode(demo.credentials.encode()).decode("ascii")
    status, text = request(f"{demo.outpost_url}/", headers={"Authorization": f"Basic {auth}"})
    if status != 200:
        raise DemoError(f"could not list the Outpost's services ({status})")
    return {_host_port(s["service"]) for s in json.loads(text) if s.get("service")}


def check_forward(demo: Demo, user: str) -> tuple[str, int]:
    """The proxy must reach the server through the forward on 127.0.0.1, not at
    the address the Outpost reported."""
    target = proxy_target(demo, user)
    remote = outpost_addresses(demo)
    if not remote:
        raise DemoError("the Outpost lists no running server")
    if target in remote or target[0] != "127.0.0.1":
        raise DemoError(
            f"the proxy connects to {target[0]}:{target[1]} directly, not through the SSH forward"
        )
    ssh = demo.ssh_info
    where = ", ".join(f"{h}:{p}" for h, p in sorted(remote))
    print(
        f"check: the proxy connects to the forward 127.0.0.1:{target[1]}, which leads "
        f"through the {ssh['kind']} SSH node {ssh['host']}:{ssh['port']} to the server "
        f"at {where}",
        flush=True,
    )
    return target


def wait_closed(address: tuple[str, int], timeout: float = 10) -> None:
    """Wait until nothing listens at ``address`` any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=2):
                pass
        except OSError:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"the forward {address[0]}:{address[1]} is still open")
        time.sleep(0.2)


def check(demo: Demo) -> None:
    """Log a user in, start a server through the Outpost, reach it through the
    proxy and the SSH forward, stop it and check that the forward is gone."""
    base = demo.url
    user = f"demo-{secrets.token_hex(3)}"
    api = f"{base}/hub/api"

    # log in through the login form, as a browser would
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)
    status, page = request(f"{base}/hub/login", opener=browser)
    match = re.search(r'name="_xsrf"\s+value="([^"]+)"', page)
    if status != 200 or not match:
        raise DemoError(f"no login form at {base}/hub/login ({status})")
    form = {"username": user, "password": PASSWORD, "_xsrf": match.group(1)}
    status, _ = request(f"{base}/hub/login", "POST", form=form, opener=browser)
    if status != 302:
        raise DemoError(f"login as {user} failed ({status})")
    print(f"check: logged in as {user}", flush=True)

    # an API token for the user, by user name and password
    status, text = request(
        f"{api}/users/{user}/tokens",
        "POST",
        body={"auth": {"username": user, "password": PASSWORD}, "note": "demo check"},
    )
    if status not in (200, 201):
        raise DemoError(f"could not get an API token ({status}): {text[:200]}")
    token = json.loads(text)["token"]

    status, text = request(f"{api}/users/{user}/server", "POST", token=token, body={"system": "B"})
    if status not in (201, 202):
        raise DemoError(f"starting the server failed ({status}): {text[:200]}")
    print("check: server requested", flush=True)
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while True:
        status, text = request(f"{api}/users/{user}", token=token)
        server = json.loads(text).get("servers", {}).get("") if status == 200 else None
        if server and server.get("ready"):
            break
        if not server and status == 200:
            raise DemoError("the server failed to start; see the Hub's log")
        if time.monotonic() > deadline:
            raise DemoError(f"the server was not ready within {SPAWN_TIMEOUT} s")
        time.sleep(0.5)

    status, text = request(f"{base}/user/{user}/api/status", token=token)
    if status != 200:
        raise DemoError(f"the server did not answer through the proxy ({status})")
    print(f"check: server answered through the proxy: {json.loads(text)}", flush=True)
    forward = check_forward(demo, user)

    status, text = request(f"{api}/users/{user}/server", "DELETE", token=token)
    if status not in (202, 204):
        raise DemoError(f"stopping the server failed ({status}): {text[:200]}")
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        status, text = request(f"{api}/users/{user}", token=token)
        if status == 200 and "" not in json.loads(text).get("servers", {}):
            break
        if time.monotonic() > deadline:
            raise DemoError(f"the server did not stop within {STOP_TIMEOUT} s")
        time.sleep(0.3)
    wait_closed(forward)
    print("check: server stopped, its forward is closed", flush=True)


# --- main ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="start everything, spawn and stop one server through the API, then exit",
    )
    args = parser.parse_args(argv)
    port = int(os.environ.get("DEMO_PORT", "8000"))
    data_dir = Path(os.environ.get("DEMO_DATA_DIR") or REPO / ".demo").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # the Hub's credentials at the Outpost, fresh for every run
    credentials = f"hub:{secrets.token_hex(16)}"

    demo = Demo(data_dir, port, quiet=args.check)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    code = 0
    try:
        demo.start_outpost(credentials)
        demo.start_ssh()
        demo.start_hub(credentials)
        if args.check:
            check(demo)
            print("demo check passed", flush=True)
        else:
            ssh = demo.ssh_info
            kind = "OpenSSH sshd" if ssh["kind"] == "openssh" else "an asyncssh server"
            print(
                "\n"
                f"  JupyterHub with a JupyterHub Outpost is running at {demo.url}/\n"
                f"  Log in with any user name and password '{PASSWORD}'.\n"
                "  Every server is reached through an SSH port forward: the Hub's\n"
                f"  forwarder logs in to the SSH node {ssh['host']}:{ssh['port']} ({kind},\n"
                "  standing in for the Outpost's side) and forwards a port on 127.0.0.1\n"
                "  to each server.\n"
                f"  Data and logs: {data_dir}\n"
                "  Press Ctrl-C to stop.\n",
                flush=True,
            )
            while demo.all_running():
                time.sleep(0.5)
            print("a child process exited; stopping the demo", flush=True)
            code = 1
    except Shutdown:
        print("\nstopping the demo ...", flush=True)
        code = 1 if args.check else 0
    except DemoError as e:
        print(f"demo failed: {e}", file=sys.stderr, flush=True)
        demo.show_logs()
        code = 1
    finally:
        signal.signal(signal.SIGINT, _still_stopping)
        signal.signal(signal.SIGTERM, _still_stopping)
        demo.stop()
    print("demo stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
