"""A command-line client for the Hub's notebook job API (``/hub/api/job``).

Usage::

    export JUPYTERHUB_URL=https://hub.example.org JUPYTERHUB_API_TOKEN=...
    # run every notebook of a directory; prints the job URL
    python -m outpostspawner.jobs submit --option gpu --dir analysis
    # two notebooks with papermill parameters (JSON scalars: 21 is a number), wait for them
    python -m outpostspawner.jobs submit --option cpu --notebook a.ipynb --notebook b.ipynb \\
        -p n=21 -p name=abc --wait
    python -m outpostspawner.jobs status "$JOB_URL"          # summary; --json for all
    python -m outpostspawner.jobs status --wait "$JOB_URL"   # exit code: the job's
    python -m outpostspawner.jobs cancel "$JOB_URL"

Exit codes: 0 success, the job's exit code (1: a notebook failed) after ``--wait``,
2 for usage and HTTP errors. Progress while waiting goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import requests


class UsageError(Exception):
    """A command line that cannot be turned into a request."""


class JobAPIError(Exception):
    """An error answer of the Hub; ``message`` is the Hub's ``message`` field if any."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class WaitTimeout(Exception):
    """The job had not stopped within ``max_wait`` seconds."""


def parse_parameter(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` as ``(name, value)``; VALUE is a JSON scalar if it parses as one
    (``21``, ``1.5``, ``true``, ``null``, ``'"21"'``), else the string itself."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise UsageError(f"parameter {text!r} is not NAME=VALUE")

    def no_constant(constant: str) -> Any:
        raise ValueError(constant)  # NaN, Infinity: not JSON

    try:
        value = json.loads(raw, parse_constant=no_constant)
    except ValueError:
        return name, raw
    if isinstance(value, (dict, list)) or (isinstance(value, float) and not math.isfinite(value)):
        return name, raw
    return name, value


def build_request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /hub/api/job`` body of the ``submit`` arguments."""
    user_options: Any = {}
    if args.user_options is not None:
        try:
            user_options = json.loads(args.user_options)
        except ValueError as e:
            raise UsageError(f"--user-options is not JSON: {e}")
        if not isinstance(user_options, dict):
            raise UsageError("--user-options must be a JSON object")
    if args.option is not None:
        user_options["option"] = args.option
    if not user_options.get("option"):
        raise UsageError("give --option (or 'option' in --user-options)")
    body: dict[str, Any] = {"user_options": user_options}
    if args.notebook:
        body["notebooks"] = list(args.notebook)
    else:
        body["notebook_dirs"] = list(args.dir or [])
    if args.parameter:
        body["parameters"] = dict(parse_parameter(p) for p in args.parameter)
    if args.user:
        body["user"] = args.user
    return body


class JobClient:
    """The job API over one ``requests`` session that sends the token."""

    def __init__(self, token: str, timeout: float = 30.0) -> None:
        self.session = requests.Session()
        # an auth callable (not a default header): a ~/.netrc entry cannot replace it
        self.session.auth = lambda r: self._authorize(r, token)
        self.timeout = timeout

    @staticmethod
    def _authorize(request: Any, token: str) -> Any:
        request.headers["Authorization"] = f"token {token}"
        return request

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            try:
                message = str(response.json()["message"])
            except (ValueError, KeyError, TypeError):
                message = response.reason or "error"
            raise JobAPIError(response.status_code, message)
        return response

    def submit(self, hub_url: str, body: dict[str, Any]) -> str:
        """Submit a job; its URL (``Location``, else the body)."""
        response = self._request("POST", hub_url.rstrip("/") + "/hub/api/job", json=body)
        url = response.headers.get("Location") or response.text.strip()
        if not url:
            raise JobAPIError(response.status_code, "the Hub answered without a job URL")
        return urljoin(response.url, url)

    def status(self, url: str) -> dict[str, Any]:
        """The job's JSON (status, logs, exit code, results, ...)."""
        response = self._request("GET", url)
        try:
            job = response.json()
        except ValueError:
            job = None
        if not isinstance(job, dict):
            raise JobAPIError(200, "the job's answer is not a JSON object")
        return job

    def cancel(self, url: str) -> None:
        """Stop and remove the job's server."""
        self._request("DELETE", url)

    def wait(
        self,
        url: str,
        on_change: Callable[[dict[str, Any] | None, dict[str, Any]], None],
        interval: float = 5.0,
        max_wait: float = 86400.0,
    ) -> dict[str, Any]:
        """Poll until the job has stopped; ``on_change(previous, job)`` whenever its
        status or number of results changes. :raises WaitTimeout: after ``max_wait``."""
        deadline = time.monotonic() + max_wait
        previous: dict[str, Any] | None = None
        while True:
            job = self.status(url)
            if previous is None or _progress_key(previous) != _progress_key(job):
                on_change(previous, job)
            if job.get("status") == "stopped":
                return job
            previous = job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"job still {job.get('status')} after {max_wait:g}s")
            time.sleep(min(interval, remaining))


def _progress_key(job: dict[str, Any]) -> tuple[Any, int]:
    return job.get("status"), len(job.get("results") or [])


def format_result(result: dict[str, Any]) -> str:
    """One line for a notebook result: ``a.ipynb: ok (1.2s)``."""
    if result.get("exit_code") == 0:
        outcome = "ok"
    elif result.get("error_name") or result.get("error_message"):
        outcome = f"FAILED {result.get('error_name', '')}: {result.get('error_message', '')}"
    else:
        outcome = f"FAILED (exit code {result.get('exit_code')})"
    duration = result.get("duration")
    suffix = f" ({duration:.1f}s)" if isinstance(duration, (int, float)) else ""
    return f"{result.get('notebook', '?')}: {outcome}{suffix}"


def format_summary(job: dict[str, Any]) -> str:
    """The readable ``status`` output."""
    code = job.get("exit_code")
    lines = [f"status: {job.get('status')}", f"exit code: {'-' if code is None else code}"]
    lines += [format_result(r) for r in job.get("results") or []]
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    return "\n".join(lines)


def _progress(previous: dict[str, Any] | None, job: dict[str, Any]) -> None:
    if previous is None or previous.get("status") != job.get("status"):
        print(f"status: {job.get('status')}", file=sys.stderr, flush=True)
    seen = len(previous.get("results") or []) if previous else 0
    for result in (job.get("results") or [])[seen:]:
        print(f"  {format_result(result)}", file=sys.stderr, flush=True)


def _job_exit_code(job: dict[str, Any]) -> int:
    code = job.get("exit_code")
    return code if isinstance(code, int) and 0 <= code <= 255 else 1


def _positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``--hub``/``--token``/``--timeout``; the command's copies (``suppress``) keep
    the values given before the command."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--hub", default=default(None), help="the Hub's URL ($JUPYTERHUB_URL)")
    parser.add_argument("--token", default=default(None), help="($JUPYTERHUB_API_TOKEN)")
    parser.add_argument(
        "--timeout", type=_positive, default=default(30.0), help="seconds per HTTP request (30)"
    )


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m outpostspawner.jobs``."""
    parser = argparse.ArgumentParser(prog="python -m outpostspawner.jobs", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="submit a job; prints its URL")
    status = commands.add_parser("status", help="show a job")
    cancel = commands.add_parser("cancel", help="stop and remove a job")
    for sub in (submit, status, cancel):
        _add_common(sub, suppress=True)
    submit.add_argument("--option", help="user_options.option: the system to run on")
    submit.add_argument("--user-options", metavar="JSON", help="more user_options (object)")
    where = submit.add_mutually_exclusive_group()
    where.add_argument("--dir", action="append", help="run every notebook of DIR (repeatable)")
    where.add_argument("--notebook", action="append", metavar="PATH", help="(repeatable)")
    submit.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE")
    submit.add_argument("--user", help="submit for this user (admin)")
    status.add_argument("job_url", metavar="JOB_URL")
    status.add_argument("--json", action="store_true", help="print the job's JSON")
    cancel.add_argument("job_url", metavar="JOB_URL")
    for sub in (submit, status):
        sub.add_argument("--wait", action="store_true", help="wait until the job has stopped")
        sub.add_argument("--interval", type=_positive, default=5.0, help="poll seconds (5)")
        sub.add_argument("--max-wait", type=_positive, default=86400.0, help="seconds (86400)")
    return parser


def _run(args: argparse.Namespace, hub: str | None, token: str) -> int:
    client = JobClient(token, timeout=args.timeout)
    if args.command == "submit":
        body = build_request_body(args)
        if not hub:
            raise UsageError("no Hub URL: give --hub or set JUPYTERHUB_URL")
        url = client.submit(hub, body)
        print(url, flush=True)
    else:
        url = args.job_url if not hub else urljoin(hub.rstrip("/") + "/", args.job_url)
        if args.command == "cancel":
            client.cancel(url)
            print("cancelled")
            return 0
    if args.wait:
        try:
            job = client.wait(url, _progress, args.interval, args.max_wait)
        except WaitTimeout as e:
            print(f"error: {e}; it keeps running: {url}", file=sys.stderr)
            return 2
    elif args.command == "submit":
        return 0
    else:
        job = client.status(url)
    print(json.dumps(job, indent=2) if getattr(args, "json", False) else format_summary(job))
    return _job_exit_code(job) if args.wait else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as e:  # --help, usage errors: argparse has printed them
        return e.code if isinstance(e.code, int) else 0
    hub = args.hub or os.environ.get("JUPYTERHUB_URL")
    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN")
    hidden = [s for s in (token, os.environ.get("JUPYTERHUB_API_TOKEN")) if s]
    try:
        if not token:
            raise UsageError("no API token: give --token or set JUPYTERHUB_API_TOKEN")
        return _run(args, hub, token)
    except (UsageError, JobAPIError, requests.RequestException) as e:
        message = str(e)
        for secret in hidden:  # never show the token, even where an error echoes it
            message = message.replace(secret, "***")
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
