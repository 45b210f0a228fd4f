"""The job model, the remote runner and its command: real papermill, real notebooks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import psutil
import pytest

from outpostspawner.jobs import store
from outpostspawner.jobs.model import (
    MARKER_COMPLETED,
    MARKER_STARTED,
    MAX_OUTPUT_TAIL,
    JobRequestError,
    ResultError,
    deep_merge,
    is_job_name,
    new_job_name,
    parse_job_request,
    parse_notebook_result,
    parse_result_report,
    results_from_logs,
)
from outpostspawner.jobs.script import JOB_CMD, job_command, job_spec
from outpostspawner.jobs.store import job_view, new_record
from outpostspawner.testing.notebooks import write_notebook


def test_job_names_are_valid_server_names_on_jupyterhub_5_and_6():
    try:
        from jupyterhub.slugs import is_valid_safe_slug  # JupyterHub 6
    except ImportError:  # 5.x accepts any name without '/'
        is_valid_safe_slug = None
    names = {new_job_name() for _ in range(500)}
    assert len(names) == 500
    for name in names:
        assert is_job_name(name)
        assert 1 <= len(name) <= 30 and name[0].isalpha() and "--" not in name
        assert "/" not in name
        if is_valid_safe_slug is not None:
            assert is_valid_safe_slug(name), name
    assert not is_job_name("job-x") and not is_job_name("0" * 32)


def test_deep_merge_fills_in_and_copies():
    defaults = {"option": "nb", "resources": {"cpus": 1, "mem": "1G"}, "x": [1]}
    given = {"resources": {"cpus": 4}, "system": "hpc"}
    merged = deep_merge(defaults, given)
    assert merged == {
        "option": "nb",
        "resources": {"cpus": 4, "mem": "1G"},
        "system": "hpc",
        "x": [1],
    }
    merged["x"].append(2)
    merged["resources"]["mem"] = "2G"
    assert defaults == {"option": "nb", "resources": {"cpus": 1, "mem": "1G"}, "x": [1]}
    assert given == {"resources": {"cpus": 4}, "system": "hpc"}


def test_request_as_the_existing_api_takes_it():
    req = parse_job_request(
        {"user_options": {"option": "JupyterLab", "system": "hpc"}, "notebook_dirs": ["a", "a/"]},
        {"system": "default", "partition": "batch"},
    )
    assert req.user_options == {
        "option": "JupyterLab",
        "profile": "JupyterLab",
        "system": "hpc",
        "partition": "batch",
    }
    assert req.notebook_dirs == ["a"]  # each once
    assert req.notebooks == [] and req.parameters == {} and req.user is None
    # option from the configured defaults is enough
    assert parse_job_request({}, {"option": "x"}).user_options["profile"] == "x"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user_options": {}}, "Missing 'option' in user_options"),
        ([], "must be a JSON object"),
        ({"user_options": {"option": "x"}, "notebook_dir": ["a"]}, "unknown fields"),
        ({"user_options": "x"}, "'user_options' must be an object"),
        ({"user_options": {"option": 3}}, "non-empty string"),
        ({"user_options": {"option": "x"}, "notebook_dirs": "a"}, "list of paths"),
        ({"user_options": {"option": "x"}, "notebook_dirs": [1]}, "non-empty string"),
        ({"user_options": {"option": "x"}, "notebook_dirs": ["a\nb"]}, "invalid path"),
        (
            {"user_options": {"option": "x"}, "notebook_dirs": ["x"], "notebooks": ["a.ipynb"]},
            "not both",
        ),
        ({"user_options": {"option": "x"}, "notebooks": []}, "at least one"),
        ({"user_options": {"option": "x"}, "notebooks": ["a.py"]}, "end with .ipynb"),
        ({"user_options": {"option": "x"}, "parameters": []}, "must be an object"),
        ({"user_options": {"option": "x"}, "parameters": {"a b": 1}}, "identifiers"),
        ({"user_options": {"option": "x"}, "parameters": {"a": {"b": 1}}}, "string, number"),
        ({"user_options": {"option": "x"}, "parameters": {"a": float("nan")}}, "finite"),
        ({"user_options": {"option": "x"}, "user": ""}, "user name"),
    ],
)
def test_bad_requests_are_refused_with_a_message(body, message):
    with pytest.raises(JobRequestError, match=message):
        parse_job_request(body)


@pytest.mark.parametrize("path", ["/etc", "..", "../other", "a/../../b"])
def test_paths_may_be_confined_to_the_home(path):
    body = {"user_options": {"option": "x"}, "notebook_dirs": [path]}
    with pytest.raises(JobRequestError, match="leaves the home"):
        parse_job_request(body, confine_to_home=True)
    parse_job_request(body)  # allowed when not configured


def test_results_from_logs_and_a_failed_notebook_fails_the_job():
    report = {
        "exitCode": 0,  # the existing runner said 0 although a notebook failed
        "results": [
            {"notebook": "a.ipynb", "exitCode": 0, "stdout": "ok"},
            {"notebook": "b.ipynb", "exitCode": 1, "stdout": "x\n" * 200},
        ],
    }
    lines = ["noise", "Papermill Job started", json.dumps(report), "Papermill Job completed"]
    block, outcome = results_from_logs(lines)
    assert block == [json.dumps(report)]
    assert outcome["exit_code"] == 1
    assert [r["exit_code"] for r in outcome["results"]] == [0, 1]
    assert len(outcome["results"][1]["output"].splitlines()) == 50

    assert results_from_logs(["Papermill Job started", "running"]) == (
        ["Papermill Job started", "running"],
        None,
    )
    for garbage in ("{", "[]", '{"results": [1]}', '{"results": [{"notebook": "a"}]}'):
        _, outcome = results_from_logs(
            ["Papermill Job started", garbage, "Papermill Job completed"]
        )
        assert outcome is None, garbage


def test_notebook_results_are_bounded():
    result = parse_notebook_result(
        {"notebook": "a.ipynb", "exit_code": 1, "output": "y" * 10**6, "error_name": "E" * 10**5}
    )
    assert len(result["output"]) <= MAX_OUTPUT_TAIL and len(result["error_name"]) == 2048
    for bad in ({"notebook": "a", "exit_code": True}, {"notebook": "", "exit_code": 0}, 3):
        with pytest.raises(ValueError):
            parse_notebook_result(bad)


# --- the runner, through the command the remote spawner runs ---------------------


class _Results(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers["Content-Length"])
        type(self).received.append(
            (self.headers["Authorization"], json.loads(self.rfile.read(length)))
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def results_server():
    _Results.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Results)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/results", _Results.received
    server.shutdown()
    server.server_close()
    thread.join(10)


def _command(request_body: dict, python: str = sys.executable) -> list[str]:
    req = parse_job_request(request_body, confine_to_home=True)
    spec = job_spec(req, "job-test", install_papermill=False, server_command=[])
    cmd, args = job_command(spec, python=python)
    assert cmd == JOB_CMD and len(args) == 1
    return [*cmd, *args]


def _run(
    home: Path,
    request_body: dict,
    *,
    path: str = "/usr/bin:/bin",
    python: str = sys.executable,
    env: dict | None = None,
    install: bool = False,
):
    child = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8", **(env or {})}
    proc = subprocess.run(
        _command(request_body, python),
        env=child,
        cwd=str(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, results_from_logs(proc.stdout.splitlines())


@pytest.mark.slow
def test_runner_runs_notebooks_with_papermill(tmp_path, results_server):
    url, received = results_server
    home = tmp_path / "home"
    write_notebook(home / "work" / "ok.ipynb", "print('hello from ok')")
    write_notebook(home / "work" / "fails.ipynb", "raise ValueError('cell <b>broke</b>')")
    write_notebook(
        home / "work" / "sub" / "param.ipynb", "print('n is', n * 2)", parameters="n = 1"
    )
    write_notebook(
        home / "work" / ".ipynb_checkpoints" / "ok-checkpoint.ipynb", "raise SystemExit(3)"
    )
    write_notebook(home / ".local" / "hidden.ipynb", "raise SystemExit(3)")
    hostile = "$(touch PWNED); `touch PWNED2`'\".ipynb"
    write_notebook(home / "work" / hostile, "print('hostile name ran')")
    proc, (block, outcome) = _run(
        home,
        {
            "user_options": {"option": "x"},
            "notebook_dirs": ["work", "work/sub"],
            "parameters": {"n": 21},
        },
        env={"JUPYTERHUB_JOB_RESULTS_URL": url, "JUPYTERHUB_API_TOKEN": "server-token"},
    )
    assert outcome is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 1 and outcome["exit_code"] == 1
    by_name = {r["notebook"]: r for r in outcome["results"]}
    assert sorted(by_name) == sorted(
        ["work/ok.ipynb", "work/fails.ipynb", "work/sub/param.ipynb", f"work/{hostile}"]
    )
    assert by_name["work/ok.ipynb"]["exit_code"] == 0
    assert by_name["work/fails.ipynb"]["exit_code"] != 0
    assert by_name["work/fails.ipynb"]["error_name"] == "ValueError"
    assert by_name["work/fails.ipynb"]["error_message"] == "cell <b>broke</b>"
    assert by_name[f"work/{hostile}"]["exit_code"] == 0
    assert not list(tmp_path.rglob("PWNED*"))
    # the executed notebooks are kept, with the parameter injected
    out = home / ".outpostspawner-jobs" / "job-test" / "work__sub__param.ipynb"
    executed = nbformat.read(str(out), as_version=4)
    assert any("n is 42" in o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    # each result was reported to the Hub with the server's token too
    *reports, last = received
    assert sorted(r["notebook"] for _, r in reports) == sorted(by_name)
    assert last[1] == {"finished": True, "exit_code": 1}
    assert {auth for auth, _ in received} == {"token server-token"}


@pytest.mark.slow
def test_a_stopped_runner_leaves_no_papermill_and_no_kernel(tmp_path):
    """The Outpost stops a job's service by signalling its process group; papermill
    runs in a group of its own and its kernel in another: both end with the job."""
    home = tmp_path / "home"
    started = tmp_path / "started"
    # the kernel is idle in its cell (writing nothing) when the job is stopped
    write_notebook(
        home / "sleep.ipynb", f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(600)"
    )
    proc = subprocess.Popen(
        _command({"user_options": {"option": "x"}}),
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd=str(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert time.monotonic() < deadline, "the notebook did not start"
            assert proc.poll() is None, "the runner ended early"
            time.sleep(0.5)
        time.sleep(1)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("ipykernel" in " ".join(p.cmdline()) for p in children), children
        os.killpg(proc.pid, signal.SIGTERM)  # as the Outpost stops a service
        assert proc.wait(30) is not None
        _, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        for p in [*children, psutil.Process(proc.pid) if proc.poll() is None else None]:
            if p is not None and p.is_running():
                p.kill()
        proc.wait(10)


def test_runner_without_papermill_names_it(tmp_path):
    home = tmp_path / "home"
    write_notebook(home / "a.ipynb", "print(1)")
    # the same interpreter without site-packages: no papermill module, none on PATH
    bare = tmp_path / "python-bare"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    proc, (_, outcome) = _run(home, {"user_options": {"option": "x"}}, python=str(bare))
    assert outcome is not None, proc.stdout + proc.stderr
    (result,) = outcome["results"]
    assert result["error_name"] == "PapermillNotFound"
    assert "papermill is not installed" in result["error_message"]
    assert outcome["exit_code"] == 1 and proc.returncode == 1


# --- what the remote job reports, and what GET shows --------------------------------


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"finished": True},
        {"finished": True, "exit_code": 0, "extra": 1},
        {"notebook": "a.ipynb"},
        {"notebook": "a.ipynb", "exit_code": True},
        {"notebook": "a.ipynb", "exit_code": 0, "executed_notebook": 5},
        {"notebook": "a.ipynb", "exit_code": 0, "executed_notebook": "not json"},
        {"notebook": "a.ipynb", "exit_code": 0, "executed_notebook": "[1]"},
        {"notebook": "a.ipynb", "exit_code": 0, "executed_notebook_size": -1},
        {"notebook": "a.ipynb", "exit_code": 0, "duration": "slow"},
    ],
)
def test_bad_result_reports_are_refused(body):
    with pytest.raises(ResultError):
        parse_result_report(body, 1000)


def test_result_reports_keep_small_notebooks_only():
    small = parse_result_report(
        {"notebook": "a.ipynb", "exit_code": 0, "executed_notebook": '{"cells": []}'}, 100
    )
    assert small.executed_notebook == '{"cells": []}' and small.executed_notebook_size == 13
    big = parse_result_report(
        {"notebook": "a.ipynb", "exit_code": 0, "executed_notebook": '{"a": "' + "x" * 200 + '"}'},
        100,
    )
    assert big.executed_notebook is None and big.executed_notebook_size == 209
    done = parse_result_report({"finished": True, "exit_code": 1}, 100)
    assert done.finished and done.exit_code == 1 and done.result is None


class _Spawner:
    def __init__(self, active=False, pending=None, logs=(), exit_code=None):
        self.active, self.pending, self.logs, self.exit_code = (
            active,
            pending,
            list(logs),
            exit_code,
        )


def _record(**kw):
    record = new_record({"user_options": {"option": "x"}}, 3600)
    record.update(kw)
    return record


def test_job_view_statuses_and_exit_codes():
    key = ("ann", "job-0")
    ok = {
        "notebook": "a.ipynb",
        "exit_code": 0,
        "duration": 1.0,
        "error_name": "",
        "error_message": "",
        "output": "",
    }
    bad = dict(ok, notebook="b.ipynb", exit_code=1)
    store.in_flight[key] = "preparing"
    try:
        assert job_view(key, _Spawner(), _record(), "u")["status"] == "preparing"
        store.in_flight[key] = "spawning"
        assert job_view(key, _Spawner(), _record(), "u")["status"] == "spawning"
    finally:
        store.in_flight.pop(key)
    running = job_view(key, _Spawner(active=True), _record(results=[ok]), "u")
    assert running["status"] == "running" and running["exit_code"] is None
    assert running["end_time"] is None
    done = job_view(key, _Spawner(), _record(results=[ok], end_time=1e9), "u")
    assert done["exit_code"] == 0 and done["results_source"] == "callback"
    assert done["end_time"] == "2001-09-09T01:46:40Z"
    assert job_view(key, _Spawner(), _record(results=[ok, bad]), "u")["exit_code"] == 1
    failed = job_view(key, _Spawner(), _record(error="did not start"), "u")
    assert failed["exit_code"] == 1 and failed["error"] == "did not start"
    # the existing API's reading: the block between the markers, a failed notebook fails
    block = json.dumps({"exitCode": 0, "results": [{"notebook": "c.ipynb", "exitCode": 2}]})
    logs = ["noise", MARKER_STARTED, block, MARKER_COMPLETED]
    view = job_view(key, _Spawner(active=True, logs=logs), _record(), "u")
    assert view["status"] == "stopped" and view["exit_code"] == 1
    assert view["logs"] == [block] and view["results_source"] == "logs"
    # logs kept in the record after the server stopped
    view = job_view(key, _Spawner(), _record(logs=logs[:1], server_exit_code=3), "u")
    assert view["logs"] == ["noise"] and view["exit_code"] == 3


def test_executed_notebook_urls():
    record = _record()
    store.add_result(record, {"notebook": "a.ipynb"}, {"size": 10, "stored": True})
    store.add_result(record, {"notebook": "b.ipynb"}, None)
    store.add_result(record, {"notebook": "a.ipynb"}, {"size": 12, "stored": True})
    shown = job_view(("u", "j"), _Spawner(active=True), record, "http://hub/job/u/j")["results"]
    assert [
        (r["notebook"], r["executed_notebook_url"], r["executed_notebook_size"]) for r in shown
    ] == [
        ("a.ipynb", "http://hub/job/u/j/notebooks/0", 12),
        ("b.ipynb", None, None),
    ]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            'Traceback (most recent call last):\n  File "x.py", line 1\n'
            "RuntimeError: Kernel died before replying to kernel_info\n",
            ("RuntimeError", "Kernel died before replying to kernel_info"),
        ),
        ("Traceback (most recent call last):\n  ...\n"
         "jupyter_client.kernelspec.NoSuchKernel: No such kernel named r\nExit 1\n",
         ("NoSuchKernel", "No such kernel named r")),
        ("Executing: 100%|##########| 1/1\n", ("", "")),
        ("", ("", "")),
        ("Traceback (most recent call last):\n  ...\nKeyboardInterrupt\n",
         ("KeyboardInterrupt", "")),
    ],
)  # fmt: skip
def test_a_failure_without_a_failed_cell_is_named_from_papermills_output(output, expected):
    from outpostspawner.jobs import runner

    assert runner.last_exception(output) == expected
