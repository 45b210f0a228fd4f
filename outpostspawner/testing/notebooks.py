"""Notebooks for tests of jobs (needs ``nbformat``, which papermill brings)."""

from __future__ import annotations

from pathlib import Path


def write_notebook(path: Path, *sources: str, parameters: str | None = None) -> None:
    """Write a Python 3 notebook with one code cell per source; ``parameters`` is
    the source of a cell tagged ``parameters`` (for papermill), placed first."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
