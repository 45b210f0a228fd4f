"""Plots of spawn benchmark results (``run.py``'s JSON): servers ready over time,
one line per package and one panel per number of servers, and the Hub's CPU per
poll against the number of servers.

    python benchmarks/plot.py benchmarks/results-polling-300.json \\
        benchmarks/results-polling-1000.json --out benchmarks/polling.png

Needs matplotlib (the ``bench`` extra). ``run.py`` calls :func:`plot` itself
after a run when matplotlib is installed, writing the PNG next to its JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """The successful runs of every report."""
    runs = []
    for path in paths:
        report = json.loads(path.read_text())
        runs.extend(run for run in report.get("runs", []) if run.get("ok"))
    return runs


def cpu_per_poll_us(run: dict[str, Any]) -> float | None:
    """Hub CPU microseconds per poll in the steady window."""
    steady = run.get("steady") or {}
    percent, rate = steady.get("hub_cpu_percent"), steady.get("outpost_polls_per_s")
    if not percent or not rate:
        return None
    return percent / 100 / rate * 1e6


def request_cost() -> float | None:
    """The CPU of one prepared kept-alive request from ``request-cost.json``
    (``request_cost.py``), in µs, if it was measured."""
    path = Path(__file__).with_name("request-cost.json")
    try:
        summary = json.loads(path.read_text())["summary"]
        return float(summary["prepared"]["cpu_us_per_request_median"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plot(runs: list[dict[str, Any]], out: Path, request_cost_us: float | None = None) -> Path:
    """Write the figure of ``runs`` to ``out`` (PNG) and return its path;
    ``request_cost_us`` draws the cost of one request as a reference line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    sizes = sorted({run["n"] for run in runs})
    packages = sorted({run["package"] for run in runs})
    colors = {p: f"C{i}" for i, p in enumerate(packages)}
    fig, axes = plt.subplots(
        1, len(sizes) + 1, figsize=(4.2 * (len(sizes) + 1), 3.6), squeeze=False
    )
    axes = axes[0]
    for ax, n in zip(axes, sizes, strict=False):
        labelled = set()
        for run in (r for r in runs if r["n"] == n):
            times = run["spawn"].get("ready_times_s")
            if not times:
                continue
            package = run["package"]
            ax.step(
                [0, *times],
                range(len(times) + 1),
                where="post",
                color=colors[package],
                alpha=0.8,
                label=None if package in labelled else package,
            )
            labelled.add(package)
        ax.set_title(f"N = {n:,}")
        ax.set_xlabel("seconds since the first start request")
        ax.set_ylabel("servers ready")
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(loc="lower right")
    ax = axes[-1]
    for package in packages:
        by_n: dict[int, list[float]] = {}
        for run in runs:
            cost = cpu_per_poll_us(run)
            if run["package"] == package and cost is not None:
                by_n.setdefault(run["n"], []).append(cost)
        if by_n:
            ns = sorted(by_n)
            medians = [statistics.median(by_n[n]) for n in ns]
            ax.plot(ns, medians, "o-", color=colors[package], label=f"{package} (median)")
    if request_cost_us:
        ax.axhline(request_cost_us, color="grey", linestyle="--", label="one kept-alive request")
    ax.set_title("Hub CPU per poll")
    ax.set_xlabel("servers polled every second")
    ax.set_ylabel("µs of Hub CPU per poll")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="run.py JSON reports")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    print(f"written: {plot(load(args.results), args.out, request_cost())}")


if __name__ == "__main__":
    main()
