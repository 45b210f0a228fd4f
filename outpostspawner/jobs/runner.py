"""Runs a job's notebooks with papermill on the remote system.

This file is sent to the remote side as the program of the job's command (see
:mod:`outpostspawner.jobs.script`), so it uses the standard library only and
imports nothing of the package. Its one argument is the job spec, a JSON object:
``notebook_dirs``, ``notebooks``, ``parameters``, ``install_papermill``,
``output_dir``, ``server_command`` (the single-user server started beside the
job, or ``null``), ``timeout`` (seconds for all notebooks together) and
``max_notebook_bytes`` (executed notebooks up to this size are sent to the Hub).

When a server runs beside the job, the notebooks start once the Hub reports the
job ``running`` at ``JUPYTERHUB_JOB_URL`` (so the Hub has finished its start).
Each notebook's result is POSTed to ``JUPYTERHUB_JOB_RESULTS_URL`` with the
server's ``JUPYTERHUB_API_TOKEN``, then ``{"finished": true, "exit_code": n}``;
all results are also printed between the lines ``Papermill Job started`` and
``Papermill Job completed`` for Outposts that return logs. The exit status is 0
when every notebook succeeded.

Stopped (``SIGTERM``, ``SIGHUP`` or ``SIGINT``, as an Outpost stops a service),
the runner ends the notebook's papermill (its kernel follows its parent) and the
server before it exits: nothing of a cancelled job keeps running.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

SKIP_DIRS = {".ipynb_checkpoints", ".local"}
OUTPUT_TAIL = 8192
#: seconds to wait for the Hub to report the job running
WAIT_RUNNING = 300
TIMEOUT_CODE = 124


def find_notebooks(spec, home):
    """The notebooks to run, each once, in a stable order."""
    out_dir = os.path.realpath(os.path.join(home, spec["output_dir"]))
    if spec.get("notebooks"):
        found = [os.path.join(home, nb) for nb in spec["notebooks"]]
    else:
        found = []
        for top in spec.get("notebook_dirs") or ["."]:
            for root, dirs, files in os.walk(os.path.join(home, top)):
                dirs[:] = sorted(
                    d
                    for d in dirs
                    if d not in SKIP_DIRS and os.path.realpath(os.path.join(root, d)) != out_dir
                )
                found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".ipynb")]
    seen, result = set(), []
    for path in found:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            result.append(path)
    return result


def first_error(path):
    """``(ename, evalue)`` of the first failed cell of an executed notebook."""
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
        for cell in nb.get("cells", []):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    return str(output.get("ename", "")), str(output.get("evalue", ""))
    except (OSError, ValueError, AttributeError):
        pass
    return "", ""


def hub_request(variable, body=None):
    """A request to the Hub URL in ``variable`` with the server's token: the parsed
    JSON answer, or ``None`` (printed, not raised) when it fails."""
    url = os.environ.get(variable)
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        return None
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": "token " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
        return json.loads(data) if data else {}
    except (OSError, ValueError) as e:
        print("request to the Hub failed:", variable, e, flush=True)
        return None


def wait_running(deadline):
    """Wait until the Hub reports the job running (bounded)."""
    if not os.environ.get("JUPYTERHUB_JOB_URL"):
        return
    while time.time() < deadline:
        answer = hub_request("JUPYTERHUB_JOB_URL")
        if isinstance(answer, dict) and answer.get("status") in ("running", "stopped"):
            return
        time.sleep(1)
    print("the Hub did not report the job running; running the notebooks anyway", flush=True)


def papermill_command(spec):
    """The papermill command, installing papermill first when the spec allows it."""
    if importlib.util.find_spec("papermill") is not None:
        return [sys.executable, "-m", "papermill"]
    exe = shutil.which("papermill")
    if exe is None and spec.get("install_papermill"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--user", "--quiet", "papermill"],
            check=False,
        )
        exe = shutil.which("papermill") or shutil.which(
            "papermill", path=os.path.join(os.path.expanduser("~"), ".local", "bin")
        )
    return [exe] if exe else None


def failed(path, home, code, name, message):
    return {
        "notebook": os.path.relpath(path, home),
        "exit_code": code,
        "duration": 0,
        "error_name": name,
        "error_message": message,
        "output": "",
    }


#: seconds papermill has after SIGTERM before SIGKILL when the runner stops
STOP_GRACE = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Stopped(Exception):
    """The runner was told to stop."""


def _on_stop(signum, frame):
    for sig in STOP_SIGNALS:  # one stop at a time: the cleanup is not interrupted
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def end_group(proc, grace=STOP_GRACE):
    """SIGTERM the process group of ``proc``, SIGKILL it after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_notebook(command, path, out, parameters, home, timeout):
    """Run one notebook in papermill, in a process group of its own, killed on
    timeout or when the runner stops (the kernel exits with its parent)."""
    started = time.time()
    args = [*command, path, out, "--cwd", os.path.dirname(path) or home]
    if parameters:
        args += ["-y", json.dumps(parameters)]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=max(1, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        result = failed(path, home, TIMEOUT_CODE, "JobTimeout", "the job's time ran out")
        result["duration"] = round(time.time() - started, 3)
        return result
    except BaseException:  # the runner stops: papermill too
        end_group(proc)
        raise
    output = stdout.decode("utf-8", "replace")[-OUTPUT_TAIL:]
    name, message = first_error(out) if proc.returncode else ("", "")
    if proc.returncode and not name:
        name, message = last_exception(output)
    return {
        "notebook": os.path.relpath(path, home),
        "exit_code": proc.returncode,
        "duration": round(time.time() - started, 3),
        "error_name": name,
        "error_message": message[:2000],
        "output": output,
    }


def last_exception(output):
    """``(name, message)`` of the exception that ends the last traceback in
    papermill's output (a kernel that did not start fails no cell), else empty."""
    lines = output.splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not marks:
        return "", ""
    for line in reversed(lines[marks[-1] + 1 :]):
        if line and not line[0].isspace():
            name, _, message = line.partition(":")
            if name.replace(".", "").replace("_", "").isalnum():
                return name.rsplit(".", 1)[-1], message.strip()
    return "", ""


def with_executed_notebook(result, out, limit):
    """The result to send to the Hub: with the executed notebook when it is small
    enough, else with its size only."""
    try:
        size = os.path.getsize(out)
    except OSError:
        return result
    if size > limit:
        return dict(result, executed_notebook_size=size)
    with open(out, encoding="utf-8", errors="replace") as f:
        return dict(result, executed_notebook=f.read())


def main(argv):
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop)
    try:
        return run(json.loads(argv[1]))
    except Stopped as e:
        return 128 + e.args[0]


def run(spec):
    home = os.path.expanduser("~")
    server = None
    if spec.get("server_command"):
        server = subprocess.Popen(spec["server_command"], stdin=subprocess.DEVNULL)
    deadline = time.time() + float(spec.get("timeout") or 86400)
    try:
        if server is not None:
            wait_running(min(deadline, time.time() + WAIT_RUNNING))
        results = []
        command = papermill_command(spec)
        notebooks = find_notebooks(spec, home)
        out_dir = os.path.join(home, spec["output_dir"])
        os.makedirs(out_dir, exist_ok=True)
        limit = int(spec.get("max_notebook_bytes") or 0)
        for path in notebooks:
            out = None
            if command is None:
                result = failed(
                    path,
                    home,
                    127,
                    "PapermillNotFound",
                    "papermill is not installed on the remote system",
                )
            elif time.time() >= deadline:
                result = failed(path, home, TIMEOUT_CODE, "JobTimeout", "the job's time ran out")
            else:
                rel = os.path.relpath(path, home)
                out = os.path.join(out_dir, rel.replace(os.sep, "__"))
                timeout = deadline - time.time()
                result = run_notebook(command, path, out, spec.get("parameters"), home, timeout)
            results.append(result)
            hub_request(
                "JUPYTERHUB_JOB_RESULTS_URL",
                with_executed_notebook(result, out, limit) if out else result,
            )
        code = 0 if all(r["exit_code"] == 0 for r in results) else 1
        hub_request("JUPYTERHUB_JOB_RESULTS_URL", {"finished": True, "exit_code": code})
        block = {
            "exitCode": code,
            "results": [dict(r, exitCode=r["exit_code"], stdout=r["output"]) for r in results],
        }
        print("Papermill Job started")
        print(json.dumps(block))
        print("Papermill Job completed", flush=True)
        return code
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
