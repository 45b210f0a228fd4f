"""``c.JobAPIHandlerConfig``: the settings of the job API."""

from __future__ import annotations

import os

from traitlets import Any, Bool, Dict, Float, Integer, List, Unicode, default
from traitlets.config import Configurable


class JobAPIHandlerConfig(Configurable):
    """Settings of ``/hub/api/job``, e.g. ``c.JobAPIHandlerConfig.job_timeout = 7200``.

    The first six names and defaults are those of the existing job API, so its
    configuration keeps working.
    """

    job_server_limit_per_user = Integer(
        10,
        help="How many jobs of one user may be active at once (0: no limit). "
        "JupyterHub's ``named_server_limit_per_user`` applies as well.",
    ).tag(config=True)

    poll_interval = Float(
        10,
        help="Seconds between the polls of a job's server (its ``custom_poll_interval``).",
    ).tag(config=True)

    job_timeout = Float(
        3600,
        help="Seconds a job may run; then its server is stopped. A finished job's "
        "server is removed, to make room, by the next submission after "
        "``job_timeout + 60`` seconds since its start.",
    ).tag(config=True)

    default_user_options = Dict(
        help="``user_options`` under those of the request: keys the request lacks "
        "are filled in, nested dicts merged.",
    ).tag(config=True)

    prepare_job = Any(
        None,
        allow_none=True,
        help="""A callable ``(request, spawner)``, may be async, run before the job's
        server starts; ``request`` is the validated job request as a dict
        (``user_options``, ``notebook_dirs``, ``notebooks``, ``parameters``, ``user``).
        It may change the spawner (e.g. ``spawner.custom_misc``). An exception fails
        the job with its message.""",
    ).tag(config=True)

    install_papermill = Bool(
        False,
        help="Install papermill with ``pip install --user`` on the remote system when "
        "it is missing there. Off: a missing papermill is a failed result naming it.",
    ).tag(config=True)

    confine_to_home = Bool(
        False,
        help="Refuse notebook paths that are absolute or leave the user's home.",
    ).tag(config=True)

    server_command = List(
        Unicode(),
        default_value=["jupyterhub-singleuser"],
        help="The single-user server run beside the job, so that the Hub sees the "
        "server start and can reach it; a login shell's PATH applies.",
    ).tag(config=True)

    python = Unicode(
        "python3",
        help="The Python on the remote system that runs the job's program.",
    ).tag(config=True)

    max_notebook_bytes = Integer(
        5 * 1024 * 1024,
        help="Executed notebooks up to this size are sent to the Hub and can be "
        "downloaded; larger ones stay on the remote system (a 413 says so).",
    ).tag(config=True)

    output_dir = Unicode(
        help="Where the Hub keeps executed notebooks (default ``outpostspawner-jobs`` "
        "in the Hub's working directory).",
    ).tag(config=True)

    @default("output_dir")
    def _output_dir_default(self) -> str:
        return os.path.join(os.getcwd(), "outpostspawner-jobs")


_configs: dict[int, JobAPIHandlerConfig] = {}


def job_config(settings: dict) -> JobAPIHandlerConfig:
    """The job API's settings for the Hub application of ``settings``."""
    config = settings.get("config")
    key = id(config)
    if key not in _configs:
        _configs[key] = JobAPIHandlerConfig(config=config)
    return _configs[key]
