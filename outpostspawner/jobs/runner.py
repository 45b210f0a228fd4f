"""Runs a job's notebooks with papermill on the remote system.

This file is sent to the remote side as the program of the job's command (see
:mod:`outpostspawner.jobs.script`), so it uses the standard library only and
imports nothing of the package. Its one argument is the job spec, a JSON object:
``notebook_dirs``, ``notebooks``, ``parameters``, ``install_papermill``,
``output_dir`` and ``server_command`` (the single-user server started beside the
job, or ``null``).

Each notebook's result is POSTed to ``JUPYTERHUB_JOB_RESULTS_URL`` with the
server's ``JUPYTERHUB_API_TOKEN``, and all results are printed between the lines
``Papermill Job started`` and ``Papermill Job completed`` for Outposts that
return logs. The exit status is 0 when every notebook succeeded.
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


def report(result):
    """POST one notebook's result to the Hub; failures are printed, not raised."""
    url = os.environ.get("JUPYTERHUB_JOB_RESULTS_URL")
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        return
    request = urllib.request.Request(
        url,
        data=json.dumps(result).encode(),
        method="POST",
        headers={"Authorization": "token " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except (OSError, ValueError) as e:
        print("could not report the result of", result["notebook"], "to the Hub:", e)


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


def run_notebook(command, path, out, parameters, home):
    started = time.time()
    args = [*command, path, out, "--cwd", os.path.dirname(path) or home]
    if parameters:
        args += ["-y", json.dumps(parameters)]
    proc = subprocess.run(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = proc.stdout.decode("utf-8", "replace")[-OUTPUT_TAIL:]
    name, message = first_error(out) if proc.returncode else ("", "")
    return {
        "notebook": os.path.relpath(path, home),
        "exit_code": proc.returncode,
        "duration": round(time.time() - started, 3),
        "error_name": name,
        "error_message": message,
        "output": output,
    }


def main(argv):
    spec = json.loads(argv[1])
    home = os.path.expanduser("~")
    server = None
    if spec.get("server_command"):
        server = subprocess.Popen(spec["server_command"], stdin=subprocess.DEVNULL)
    try:
        results = []
        command = papermill_command(spec)
        notebooks = find_notebooks(spec, home)
        out_dir = os.path.join(home, spec["output_dir"])
        os.makedirs(out_dir, exist_ok=True)
        for path in notebooks:
            if command is None:
                result = {
                    "notebook": os.path.relpath(path, home),
                    "exit_code": 127,
                    "duration": 0,
                    "error_name": "PapermillNotFound",
                    "error_message": "papermill is not installed on the remote system",
                    "output": "",
                }
            else:
                rel = os.path.relpath(path, home)
                out = os.path.join(out_dir, rel.replace(os.sep, "__"))
                result = run_notebook(command, path, out, spec.get("parameters"), home)
            results.append(result)
            report(result)
        code = 0 if all(r["exit_code"] == 0 for r in results) else 1
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
