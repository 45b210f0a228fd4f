"""Notebook jobs: notebooks run with papermill on a remote system through an Outpost.

- :mod:`.model`: the job request (validated), job server names and results
- :mod:`.runner`: the program that runs the notebooks on the remote side
- :mod:`.script`: the command the remote spawner runs (``custom_misc`` ``cmd``/``args``)
"""
