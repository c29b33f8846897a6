"""Re-execute notebooks at the smoke profile and keep only the outputs nbval compares.

Cells tagged ``nbval-check-output`` (in the cell's metadata ``"tags"``: nbval's equivalent of a
``# NBVAL_CHECK_OUTPUT`` comment, kept out of the source so students don't read it) hold deterministic results whose
committed outputs ``pytest --nbval-lax`` compares; every other output is dropped so the repository holds no stale
numbers. Usage::

    LABKIT_DATA=../shared/data python scripts/refresh_notebook_outputs.py notebooks/0*.ipynb
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

CHECK_TAG = "nbval-check-output"


def refresh(path: Path, timeout: int = 1800) -> int:
    notebook = nbformat.read(path, as_version=4)
    os.environ["LABKIT_PROFILE"] = "smoke"
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return strip_unchecked(notebook, path)


def strip_unchecked(notebook, path: Path) -> int:
    """Drop the outputs of unchecked cells; number the code cells (nbval skips unnumbered cells with outputs)."""
    kept = 0
    for number, cell in enumerate((c for c in notebook.cells if c.cell_type == "code"), start=1):
        if CHECK_TAG in cell.metadata.get("tags", []):
            kept += 1
            cell.execution_count = number
            for output in cell.outputs:
                if output.get("output_type") == "execute_result":
                    output["execution_count"] = number
        else:
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    notebook.metadata.pop("widgets", None)  # saved widget state (MBs of bundled JavaScript): never committed
    nbformat.write(notebook, path)
    return kept


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: kept the outputs of {refresh(Path(name))} checked cells")
