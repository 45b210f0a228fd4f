"""The command the remote spawner runs for a job: ``cmd`` and ``args`` for the
start body's ``misc`` (``c.<Spawner>.cmd`` / ``args`` at the Outpost).

Nothing of the request reaches a shell unquoted: the runner's program and the
job spec (JSON) are each one ``shlex``-quoted word of a ``bash -lc`` line (a login
shell, so that the remote system's modules and PATH apply).
"""

from __future__ import annotations

import json
import shlex
from importlib import resources

from .model import JobRequest

#: the remote spawner's command (as the existing job API sets it)
JOB_CMD = ["/bin/bash", "-lc"]
#: where executed notebooks are written, relative to the home
OUTPUT_DIR = ".outpostspawner-jobs"

_RUNNER = resources.files(__package__).joinpath("runner.py").read_text(encoding="utf-8")


def job_spec(
    request: JobRequest,
    job_name: str,
    *,
    install_papermill: bool,
    server_command: list[str],
    timeout: float = 0,
    max_notebook_bytes: int = 0,
) -> dict:
    """The runner's argument (see :mod:`outpostspawner.jobs.runner`)."""
    spec = request.spec()
    spec.update(
        install_papermill=bool(install_papermill),
        output_dir=f"{OUTPUT_DIR}/{job_name}",
        server_command=list(server_command) or None,
        timeout=float(timeout),
        max_notebook_bytes=int(max_notebook_bytes),
    )
    return spec


def job_command(spec: dict, python: str = "python3") -> tuple[list[str], list[str]]:
    """``(cmd, args)`` for ``misc``: ``bash -lc 'exec python3 -c <runner> <spec>'``."""
    line = " ".join(
        ["exec", shlex.quote(python), "-c", shlex.quote(_RUNNER), shlex.quote(json.dumps(spec))]
    )
    return list(JOB_CMD), [line]
