"""The spawn benchmark runs end to end on a few servers, so that it cannot rot.

Its figures are not checked here (speed goals live in ``benchmarks/``): only that
a run completes, reports every figure and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_spawn_benchmark_smoke_run(tmp_path):
    results = tmp_path / "results.json"
    options = {
        "--n": "5",
        "--package": "ours",
        "--cpu-seconds": "3",
        "--settle": "1",
        "--idle-seconds": "1",
        "--max-other-load": "1000",  # the tests' own processes are not a disturbance
        "--retries": "0",
        "--quiet-timeout": "1",
        "--work": str(tmp_path / "work"),
        "--results": str(results),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", *sum(options.items(), ())],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(results.read_text())
    (run,) = report["runs"]
    assert run["ok"] and run["failures"] == 0, run
    assert run["leftovers_total"] == 0 and run["processes_after_teardown"] == 0
    assert run["hub_log"]["errors"] == 0
    steady = run["steady"]
    for figure in ("hub_cpu_percent", "api_p95_ms", "lag_p95_ms", "outpost_polls_per_s"):
        assert isinstance(steady[figure], int | float), (figure, steady)
    assert steady["api_errors"] == 0 and steady["lag_samples"] > 0
    # the ready times for the plot, and the plot (matplotlib is in the bench extra)
    times = run["spawn"]["ready_times_s"]
    assert len(times) == 5 and times == sorted(times)
    figure = results.with_suffix(".png")
    assert figure.read_bytes().startswith(b"\x89PNG"), proc.stdout[-2000:]
