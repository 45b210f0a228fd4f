"""Notebook jobs: notebooks run with papermill on a remote system through an Outpost.

- :mod:`.model`: the job request (validated), job server names and results
- :mod:`.runner`: the program that runs the notebooks on the remote side
- :mod:`.script`: the command the remote spawner runs (``custom_misc`` ``cmd``/``args``)
- :mod:`.config`: ``c.JobAPIHandlerConfig``
- :mod:`.store`: where a job's record and executed notebooks live; what ``GET`` shows
- :mod:`.lifecycle`: preparing, starting, timing out and removing a job's server
- :mod:`.handler`: the ``/hub/api/job`` endpoints
- :mod:`.cli`: ``python -m outpostspawner.jobs submit|status|cancel``
"""

from .config import JobAPIHandlerConfig

__all__ = ["JobAPIHandlerConfig"]
