"""The walkthrough notebooks as committed: small, clean, numbered, each with exercises and a profile line."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MARK = "# NBVAL_CHECK_OUTPUT"


def test_the_six_walkthrough_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    assert path.stat().st_size < 200_000, f"{path.name} is {path.stat().st_size} bytes: saved widget state or outputs?"
    notebook = nbformat.read(path, as_version=4)
    assert "widgets" not in notebook.metadata, "saved widget state: run scripts/refresh_notebook_outputs.py"
    for cell in notebook.cells:
        if cell.cell_type == "code" and not cell.source.lstrip().startswith(MARK):
            assert not cell.outputs, f"{path.name}: an unchecked cell keeps outputs:\n{cell.source[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_graded_exercises_and_names_its_profile(path):
    notebook = nbformat.read(path, as_version=4)
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    solutions = [s for s in sources if "### BEGIN SOLUTION" in s]
    assert 1 <= len(solutions) <= 3, f"{path.name}: {len(solutions)} exercises"
    assert sum("check_" in s and "feedback" in s for s in sources) >= len(solutions)
    assert any("profile(" in s or "describe(" in s for s in sources[:1]), f"{path.name}: the first code cell should print the profile"
