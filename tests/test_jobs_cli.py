"""``python -m outpostspawner.jobs``: the job client against a real in-memory HTTP Hub."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from outpostspawner.jobs.cli import JobAPIError, JobClient, main, parse_parameter

TOKEN = "s3cret-t0ken-abc123"
NOTEBOOKS = ["a.ipynb", "b.ipynb"]


class FakeHub(ThreadingHTTPServer):
    """The job endpoints of the Hub, in memory.

    A job is ``preparing`` on the first GET, ``running`` on the next two (the second
    with the first result), ``stopped`` with all results after that. Options:
    ``failing`` (the last notebook fails), ``endless`` (never stops), anything else
    but ``cpu`` is refused with a 400.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        self.url = f"http://127.0.0.1:{self.server_port}"
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add_job(self, option: str = "cpu", notebooks: list[str] | None = None) -> str:
        with self.lock:
            path = f"/hub/api/job/alice/job-{len(self.jobs)}"
            self.jobs[path] = {"option": option, "notebooks": notebooks or NOTEBOOKS, "gets": 0}
        return self.url + path

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        job["gets"] += 1
        stage = job["gets"] if job["option"] != "endless" else 2
        status = {1: "preparing", 2: "running", 3: "running"}.get(stage, "stopped")
        done = {1: 0, 2: 0, 3: 1}.get(stage, len(job["notebooks"]))
        results = []
        for i, notebook in enumerate(job["notebooks"][:done]):
            failed = job["option"] == "failing" and i == len(job["notebooks"]) - 1
            results.append(
                {
                    "notebook": notebook,
                    "exit_code": 1 if failed else 0,
                    "duration": 1.25 + i,
                    "error_name": "ValueError" if failed else "",
                    "error_message": "boom" if failed else "",
                    "output": "",
                    "executed_notebook_url": None,
                }
            )
        stopped = status == "stopped"
        return {
            "status": status,
            "logs": ["Papermill Job started"],
            "exit_code": (1 if job["option"] == "failing" else 0) if stopped else None,
            "results": results,
            "start_time": "2024-01-01T00:00:00Z",
            "end_time": "2024-01-01T00:01:00Z" if stopped else None,
            "error": None,
        }


class FakeHubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else (body if isinstance(body, str) else json.dumps(body))
        data = data.encode() if isinstance(data, str) else data
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._answer(code, {"status": code, "message": message})

    def _record(self) -> bool:
        """Record the request; False (after a 403) without the right token."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "body": json.loads(raw) if raw else None,
                }
            )
        if self.headers.get("Authorization") != f"token {TOKEN}":
            self._error(403, "Missing or invalid credentials.")
            return False
        return True

    def do_POST(self) -> None:
        if not self._record():
            return
        if self.path != "/hub/api/job":
            return self._error(404, "Not Found")
        body = self.server.requests[-1]["body"]
        option = body.get("user_options", {}).get("option")
        if option is None:
            return self._error(400, "Missing 'option' in user_options")
        if option not in ("cpu", "failing", "endless"):
            return self._error(400, f"Unknown option {option!r}")
        url = self.server.add_job(option, body.get("notebooks"))
        self._answer(201, url, {"Location": url, "Content-Type": "text/plain"})

    def do_GET(self) -> None:
        if not self._record():
            return
        job = self.server.jobs.get(self.path)
        if job is None:
            return self._error(404, "no such job")
        with self.server.lock:
            view = self.server.view(job)
        self._answer(200, view, {"Content-Type": "application/json"})

    def do_DELETE(self) -> None:
        if not self._record():
            return
        if self.server.jobs.pop(self.path, None) is None:
            return self._error(404, "no such job")
        self._answer(204)


@pytest.fixture
def hub():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(5)
        server.server_close()
        thread.join(5)
        assert not thread.is_alive(), "the fake Hub did not stop"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("JUPYTERHUB_URL", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``main(argv)``: exit code, stdout, stderr; the token is never shown."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert TOKEN not in out and TOKEN not in err
    return code, out, err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("n=21", ("n", 21)),
        ("x=1.5", ("x", 1.5)),
        ("flag=true", ("flag", True)),
        ("nothing=null", ("nothing", None)),
        ("name=abc", ("name", "abc")),
        ('quoted="21"', ("quoted", "21")),
        ("eq=a=b", ("eq", "a=b")),
        ("empty=", ("empty", "")),
        ("listy=[1, 2]", ("listy", "[1, 2]")),
        ("nan=NaN", ("nan", "NaN")),
        ("huge=1e400", ("huge", "1e400")),
    ],
)
def test_parse_parameter(text, expected):
    assert parse_parameter(text) == expected
    assert type(parse_parameter(text)[1]) is type(expected[1])


def test_submit_prints_url_and_sends_the_body(hub, capsys):
    code, out, err = run(
        capsys,
        *("submit", "--hub", hub.url, "--token", TOKEN, "--option", "cpu"),
        *("--notebook", "a.ipynb", "--notebook", "sub/b.ipynb", "--user", "bob"),
        *("-p", "n=21", "-p", "name=abc", "--parameter", "flag=true"),
    )
    assert (code, err) == (0, "")
    assert out == hub.url + "/hub/api/job/alice/job-0\n"
    [request] = hub.requests
    assert request["method"] == "POST" and request["path"] == "/hub/api/job"
    assert request["authorization"] == f"token {TOKEN}"
    assert request["body"] == {
        "user_options": {"option": "cpu"},
        "notebooks": ["a.ipynb", "sub/b.ipynb"],
        "parameters": {"n": 21, "name": "abc", "flag": True},
        "user": "bob",
    }


def test_submit_dirs_user_options_and_environment(hub, capsys, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_URL", hub.url + "/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    options = '{"option": "gpu", "runtime": 2}'
    code, out, _ = run(
        capsys, "submit", "--user-options", options, "--option", "cpu", "--dir", "x", "--dir", "y"
    )
    assert code == 0 and out.startswith(hub.url)
    assert hub.requests[0]["body"] == {
        "user_options": {"option": "cpu", "runtime": 2},
        "notebook_dirs": ["x", "y"],
    }
    # the common options also work before the command; the option from --user-options
    code, _, _ = run(capsys, "--timeout", "5", "submit", "--user-options", '{"option": "cpu"}')
    assert code == 0
    assert hub.requests[1]["body"] == {"user_options": {"option": "cpu"}, "notebook_dirs": []}


def submit_wait(hub, option: str) -> list[str]:
    return ["submit", "--hub", hub.url, "--token", TOKEN, "--option", option, "--wait",
            "--interval", "0.01"]  # fmt: skip


def test_submit_wait_shows_progress_and_succeeds(hub, capsys):
    code, out, err = run(capsys, *submit_wait(hub, "cpu"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == hub.url + "/hub/api/job/alice/job-0"
    assert lines[1:] == [
        "status: stopped",
        "exit code: 0",
        "a.ipynb: ok (1.2s)",
        "b.ipynb: ok (2.2s)",
    ]
    assert err.splitlines() == [
        "status: preparing",
        "status: running",
        "  a.ipynb: ok (1.2s)",
        "status: stopped",
        "  b.ipynb: ok (2.2s)",
    ]


def test_submit_wait_returns_1_when_a_notebook_failed(hub, capsys):
    code, out, err = run(capsys, *submit_wait(hub, "failing"))
    assert code == 1
    assert "  b.ipynb: FAILED ValueError: boom (2.2s)" in err.splitlines()
    assert "exit code: 1" in out.splitlines()


def test_wait_is_bounded_by_max_wait(hub, capsys):
    url = hub.add_job("endless")
    code, out, err = run(
        capsys,
        "status",
        "--wait",
        url,
        "--token",
        TOKEN,
        *("--interval", "0.01", "--max-wait", "0.2"),
    )
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == f"error: job still running after 0.2s; it keeps running: {url}"


def test_status_summary_and_json(hub, capsys):
    url = hub.add_job("failing")
    for _ in range(2):
        hub.view(hub.jobs[url.removeprefix(hub.url)])  # skip to the first result
    code, out, err = run(capsys, "status", url, "--token", TOKEN)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["status: running", "exit code: -", "a.ipynb: ok (1.2s)"]
    code, out, _ = run(capsys, "status", "--json", url, "--token", TOKEN)
    job = json.loads(out)
    assert code == 0 and job["status"] == "stopped" and job["exit_code"] == 1
    assert [r["exit_code"] for r in job["results"]] == [0, 1]
    # a relative job URL is resolved against --hub
    code, out, _ = run(
        capsys,
        "status",
        "/hub/api/job/alice/job-0",
        "--hub",
        hub.url,
        "--token",
        TOKEN,
        "--wait",
        "--interval",
        "0.01",
    )
    assert code == 1 and "b.ipynb: FAILED ValueError: boom (2.2s)" in out


def test_cancel_sends_delete(hub, capsys):
    url = hub.add_job()
    code, out, err = run(capsys, "cancel", url, "--token", TOKEN)
    assert (code, out, err) == (0, "cancelled\n", "")
    assert [(r["method"], r["path"]) for r in hub.requests] == [
        ("DELETE", "/hub/api/job/alice/job-0")
    ]
    assert hub.jobs == {}
    code, _, err = run(capsys, "cancel", url, "--token", TOKEN)
    assert (code, err) == (2, "error: 404 no such job\n")


def test_http_errors_show_the_hubs_message(hub, capsys):
    code, out, err = run(capsys, "submit", "--hub", hub.url, "--token", TOKEN, "--option", "nope")
    assert (code, out, err) == (2, "", "error: 400 Unknown option 'nope'\n")
    with pytest.raises(JobAPIError) as e:
        JobClient(TOKEN).submit(hub.url, {"user_options": {}, "notebook_dirs": []})
    assert (e.value.status, e.value.message) == (400, "Missing 'option' in user_options")


def test_bad_token_is_an_error_and_no_token_is_shown(hub, capsys, monkeypatch):
    wrong = "wr0ng-t0ken-xyz789"
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", wrong)
    code, out, err = run(capsys, "submit", "--hub", hub.url, "--option", "cpu")
    assert (code, out, err) == (2, "", "error: 403 Missing or invalid credentials.\n")
    assert hub.requests[0]["authorization"] == f"token {wrong}"
    code, out, err = run(capsys, "status", hub.url + "/hub/api/job/alice/job-9", "--wait")
    assert code == 2 and wrong not in out + err


def test_unreachable_hub_is_an_error_without_the_token(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub_url = f"http://127.0.0.1:{port}"
    code, out, err = run(
        capsys, "submit", "--hub", hub_url, "--token", TOKEN, "--option", "cpu", "--timeout", "5"
    )
    assert code == 2 and out == "" and err.startswith("error: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dir", "x", "--notebook", "a.ipynb", "--option", "cpu"], "not allowed with argument"),
        (["--notebook", "a.ipynb"], "error: give --option (or 'option' in --user-options)"),
        (["--option", "cpu", "--user-options", "[1]"], "--user-options must be a JSON object"),
        (["--option", "cpu", "--user-options", "{"], "--user-options is not JSON"),
        (["--option", "cpu", "-p", "novalue"], "parameter 'novalue' is not NAME=VALUE"),
        (["--option", "cpu", "--interval", "0"], "'0' is not a positive number"),
    ],
)
def test_usage_errors(hub, capsys, argv, message):
    code, out, err = run(capsys, "submit", "--hub", hub.url, "--token", TOKEN, *argv)
    assert (code, out) == (2, "")
    assert message in err
    assert hub.requests == []


def test_missing_hub_or_token(hub, capsys):
    code, _, err = run(capsys, "submit", "--token", TOKEN, "--option", "cpu")
    assert (code, err) == (2, "error: no Hub URL: give --hub or set JUPYTERHUB_URL\n")
    code, _, err = run(capsys, "submit", "--hub", hub.url, "--option", "cpu")
    assert (code, err) == (2, "error: no API token: give --token or set JUPYTERHUB_API_TOKEN\n")
    assert hub.requests == []


def test_python_dash_m(hub):
    url = hub.add_job()
    env = {"JUPYTERHUB_API_TOKEN": TOKEN, "NO_PROXY": "127.0.0.1", "PATH": ""}
    cmd = [sys.executable, "-W", "ignore", "-m", "outpostspawner.jobs", "status", url]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "status: preparing\nexit code: -\n")
