"""The walkthrough notebooks as committed: small, clean, numbered, each with exercises and a profile line."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK_TAG = "nbval-check-output"  # nbval's cell tag for "compare the committed outputs" (its `# NBVAL_CHECK_OUTPUT`)


def is_checked(cell) -> bool:
    return CHECK_TAG in cell.metadata.get("tags", [])


def test_the_six_walkthrough_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    assert path.stat().st_size < 200_000, f"{path.name} is {path.stat().st_size} bytes: saved widget state or outputs?"
    notebook = nbformat.read(path, as_version=4)
    assert "widgets" not in notebook.metadata, "saved widget state: run scripts/refresh_notebook_outputs.py"
    for cell in notebook.cells:
        if cell.cell_type == "code" and not is_checked(cell):
            assert not cell.outputs, f"{path.name}: an unchecked cell keeps outputs:\n{cell.source[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_test_markers_are_cell_tags_not_comments_students_read(path):
    """nbval reads its markers from cell tags too: the sources carry no `# NBVAL_...` lines, and the checked cells
    (tagged, with committed outputs) are still there for nbval to compare."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell in code:
        comments = [line for line in cell.source.splitlines() if line.lstrip("# ").startswith("NBVAL_")]
        assert not comments, f"{path.name}: nbval marker in a cell's source, move it into the cell's tags: {comments}"
    checked = [cell for cell in code if is_checked(cell)]
    assert checked, f"{path.name}: no cell tagged {CHECK_TAG!r}: nbval --nbval-lax would compare nothing"
    for cell in checked:
        assert cell.outputs, f"{path.name}: a cell tagged {CHECK_TAG!r} has no committed outputs:\n{cell.source[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_graded_exercises_and_names_its_profile(path):
    notebook = nbformat.read(path, as_version=4)
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    solutions = [s for s in sources if "### BEGIN SOLUTION" in s]
    assert 1 <= len(solutions) <= 3, f"{path.name}: {len(solutions)} exercises"
    assert sum("check_" in s and "feedback" in s for s in sources) >= len(solutions)
    assert any("profile(" in s or "describe(" in s for s in sources[:1]), f"{path.name}: the first code cell should print the profile"
