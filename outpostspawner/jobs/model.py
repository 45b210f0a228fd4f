"""The job request a client POSTs, job server names, and the results a job reports.

Everything here is remote or client input: it is validated and bounded, and a
problem becomes a :class:`JobRequestError` (shown to the client as a 400) or a
:class:`ResultError`, never an unhandled exception.
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

#: job server names: valid under JupyterHub 6's server-name rule (1-30 characters,
#: lowercase letters, digits and single hyphens, starting with a letter) and 5.x's
JOB_NAME_PREFIX = "job-"
_JOB_NAME = re.compile(r"job-[0-9a-f]{24}")

MAX_NOTEBOOKS = 100
MAX_PATH = 1024
MAX_PARAMETERS = 100
MAX_PARAMETER_VALUE = 4096
#: lines of a notebook's output kept in its result
OUTPUT_TAIL_LINES = 50
MAX_OUTPUT_TAIL = 16 * 1024
MAX_ERROR_TEXT = 2048

MARKER_STARTED = "Papermill Job started"
MARKER_COMPLETED = "Papermill Job completed"

_FIELDS = {"user_options", "notebook_dirs", "notebooks", "parameters", "user"}
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


class JobRequestError(ValueError):
    """A job request that cannot be accepted; the message is for the client."""


class ResultError(ValueError):
    """A result report that is malformed."""


def new_job_name() -> str:
    """A random job server name, e.g. ``job-3f2a...`` (28 characters)."""
    return JOB_NAME_PREFIX + secrets.token_hex(12)


def is_job_name(name: str) -> bool:
    """Whether ``name`` is a job server name made by :func:`new_job_name`."""
    return bool(_JOB_NAME.fullmatch(name))


def deep_merge(defaults: dict, given: dict) -> dict:
    """``given`` with the keys of ``defaults`` it lacks filled in, nested dicts merged.

    Neither argument is modified.
    """
    result = copy.deepcopy(given)
    for key, value in defaults.items():
        if key not in result:
            result[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(result[key], dict):
            result[key] = deep_merge(value, result[key])
    return result


def _check_path(value: Any, what: str, confine: bool) -> str:
    if not isinstance(value, str) or not value:
        raise JobRequestError(f"every entry of '{what}' must be a non-empty string")
    if len(value) > MAX_PATH or any(c in value for c in "\0\n\r"):
        raise JobRequestError(f"invalid path in '{what}'")
    path = posixpath.normpath(value)
    if confine and (posixpath.isabs(path) or path == ".." or path.startswith("../")):
        raise JobRequestError(f"the path {json.dumps(value)[:200]} in '{what}' leaves the home")
    return path


def _check_paths(value: Any, what: str, confine: bool) -> list[str]:
    if not isinstance(value, list):
        raise JobRequestError(f"'{what}' must be a list of paths")
    if len(value) > MAX_NOTEBOOKS:
        raise JobRequestError(f"'{what}' may name at most {MAX_NOTEBOOKS} paths")
    paths = []
    for item in value:
        path = _check_path(item, what, confine)
        if path not in paths:
            paths.append(path)
    return paths


def _check_parameters(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise JobRequestError("'parameters' must be an object")
    if len(value) > MAX_PARAMETERS:
        raise JobRequestError(f"'parameters' may have at most {MAX_PARAMETERS} entries")
    for name, val in value.items():
        if not _PARAM_NAME.fullmatch(name):
            raise JobRequestError("parameter names must be Python identifiers")
        if isinstance(val, float) and val != val:  # NaN
            raise JobRequestError(f"parameter {name!r} must be a finite number")
        if not (val is None or isinstance(val, str | int | float | bool)):
            raise JobRequestError(f"parameter {name!r} must be a string, number, boolean or null")
        if isinstance(val, str) and (len(val) > MAX_PARAMETER_VALUE or "\0" in val):
            raise JobRequestError(f"parameter {name!r} is too long or invalid")
    return dict(value)


@dataclass
class JobRequest:
    """A validated job request.

    :param user_options: the merged ``user_options`` (``option`` copied to ``profile``)
    :param notebook_dirs: directories searched for ``*.ipynb`` (``[]``: the home)
    :param notebooks: notebooks named one by one (instead of ``notebook_dirs``)
    :param parameters: papermill parameters (``-p name value``) for every notebook
    :param user: the user the job is for, when an administrator submits for another
    """

    user_options: dict
    notebook_dirs: list[str] = field(default_factory=list)
    notebooks: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    user: str | None = None

    def as_dict(self, with_user: bool = True) -> dict:
        """The request as JSON data (what ``prepare_job`` gets, what is stored)."""
        data = {
            "user_options": copy.deepcopy(self.user_options),
            "notebook_dirs": list(self.notebook_dirs),
            "notebooks": list(self.notebooks),
            "parameters": dict(self.parameters),
        }
        if with_user:
            data["user"] = self.user
        return data

    def spec(self) -> dict:
        """What the remote runner needs (:mod:`outpostspawner.jobs.runner`)."""
        return {
            "notebook_dirs": self.notebook_dirs,
            "notebooks": self.notebooks,
            "parameters": self.parameters,
        }


def parse_job_request(
    body: Any, default_user_options: dict | None = None, *, confine_to_home: bool = False
) -> JobRequest:
    """Validate a ``POST /hub/api/job`` body.

    :param body: the parsed JSON body
    :param default_user_options: merged under the body's ``user_options``
    :param confine_to_home: refuse absolute paths and paths that leave the home
    :raises JobRequestError: with a message for the client
    """
    if not isinstance(body, dict):
        raise JobRequestError("the body must be a JSON object")
    unknown = sorted(set(map(str, body)) - _FIELDS)
    if unknown:
        shown = ", ".join(json.dumps(k)[:50] for k in unknown[:5])
        raise JobRequestError(f"unknown fields: {shown}")
    given = body.get("user_options", {})
    if not isinstance(given, dict):
        raise JobRequestError("'user_options' must be an object")
    user_options = deep_merge(default_user_options or {}, given)
    option = user_options.get("option")
    if option is None:
        raise JobRequestError("Missing 'option' in user_options")
    if not isinstance(option, str) or not option:
        raise JobRequestError("'option' in user_options must be a non-empty string")
    user_options["profile"] = option
    if "notebook_dirs" in body and "notebooks" in body:
        raise JobRequestError("give 'notebook_dirs' or 'notebooks', not both")
    dirs = _check_paths(body.get("notebook_dirs", []), "notebook_dirs", confine_to_home)
    notebooks = _check_paths(body.get("notebooks", []), "notebooks", confine_to_home)
    if "notebooks" in body and not notebooks:
        raise JobRequestError("'notebooks' must name at least one notebook")
    for nb in notebooks:
        if not nb.endswith(".ipynb"):
            raise JobRequestError("every entry of 'notebooks' must end with .ipynb")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or not user or len(user) > 255):
        raise JobRequestError("'user' must be a user name")
    return JobRequest(
        user_options=user_options,
        notebook_dirs=dirs,
        notebooks=notebooks,
        parameters=_check_parameters(body.get("parameters", {})),
        user=user,
    )


# --- results ------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise ResultError(f"'{what}' must be an integer")
    return value


def _text(value: Any, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ResultError("text fields must be strings")
    return value[-limit:]


def parse_notebook_result(value: Any) -> dict:
    """A validated, bounded result of one notebook.

    Accepts the runner's fields (``notebook``, ``exit_code``, ``duration``,
    ``error_name``, ``error_message``, ``output``) and the existing job API's
    ``exitCode``/``stdout``.
    """
    if not isinstance(value, dict):
        raise ResultError("a notebook result must be an object")
    notebook = value.get("notebook")
    if not isinstance(notebook, str) or not notebook or len(notebook) > MAX_PATH:
        raise ResultError("'notebook' must be a path")
    code = value.get("exit_code", value.get("exitCode"))
    duration = value.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 <= duration < 10**9
    ):
        raise ResultError("'duration' must be a number of seconds")
    output = _text(value.get("output", value.get("stdout")), MAX_OUTPUT_TAIL)
    return {
        "notebook": notebook,
        "exit_code": _int(code, "exit_code"),
        "duration": duration,
        "error_name": _text(value.get("error_name"), MAX_ERROR_TEXT),
        "error_message": _text(value.get("error_message"), MAX_ERROR_TEXT),
        "output": "\n".join(output.splitlines()[-OUTPUT_TAIL_LINES:]),
    }


def job_exit_code(results: list[dict]) -> int:
    """0 when every notebook succeeded (or there were none), else 1."""
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


def results_from_logs(lines: list[str]) -> tuple[list[str], dict | None]:
    """Read the block the runner prints between the markers, as the existing job
    API's clients expect it.

    :returns: the log lines between the markers (all lines when there is no
        complete block) and ``{"exit_code", "results"}`` when the block holds a
        valid report, else ``None``
    """
    try:
        end = max(i for i, line in enumerate(lines) if line.strip() == MARKER_COMPLETED)
        start = max(i for i, line in enumerate(lines[:end]) if line.strip() == MARKER_STARTED)
    except ValueError:  # a marker is missing
        return lines, None
    block = lines[start + 1 : end]
    try:
        report = json.loads("\n".join(block))
        if not isinstance(report, dict) or not isinstance(report.get("results"), list):
            raise ResultError("the report must be an object with a 'results' list")
        results = [parse_notebook_result(r) for r in report["results"][:MAX_NOTEBOOKS]]
    except (ValueError, RecursionError):
        return block, None
    # a failed notebook fails the job, whatever the report's own exit code says
    code = job_exit_code(results)
    if "exitCode" in report and report["exitCode"] != 0:
        code = 1
    return block, {"exit_code": code, "results": results}


@dataclass
class ResultReport:
    """One report of the remote job to ``.../results``: a notebook's result (with
    its executed notebook, or only that notebook's size when it was too large),
    or the end of the job (``finished``)."""

    result: dict | None = None
    executed_notebook: str | None = None
    executed_notebook_size: int | None = None
    finished: bool = False
    exit_code: int | None = None


def parse_result_report(body: Any, max_notebook_bytes: int) -> ResultReport:
    """Validate a report of the remote job.

    :raises ResultError: with a message for the caller
    """
    if not isinstance(body, dict):
        raise ResultError("the report must be a JSON object")
    if body.get("finished") is True:
        if set(body) - {"finished", "exit_code"}:
            raise ResultError("a 'finished' report has only 'finished' and 'exit_code'")
        return ResultReport(finished=True, exit_code=_int(body.get("exit_code"), "exit_code"))
    notebook = body.get("executed_notebook")
    size = body.get("executed_notebook_size")
    if notebook is not None:
        if not isinstance(notebook, str):
            raise ResultError("'executed_notebook' must be the notebook's text")
        size = len(notebook.encode("utf-8", "surrogatepass"))
        if size > max_notebook_bytes:
            notebook = None  # kept on the remote system only, as the runner does
        else:
            try:
                if not isinstance(json.loads(notebook), dict):
                    raise ValueError
            except (ValueError, RecursionError):
                raise ResultError("'executed_notebook' is not a notebook") from None
    elif size is not None:
        size = _int(size, "executed_notebook_size")
        if size < 0:
            raise ResultError("'executed_notebook_size' must be >= 0")
    return ResultReport(
        result=parse_notebook_result(body),
        executed_notebook=notebook,
        executed_notebook_size=size,
    )
