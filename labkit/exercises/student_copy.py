"""Make the student copy of the notebooks: the instructor's solutions replaced by a stub (nbgrader markers).

    .venv/bin/python -m labkit.exercises.student_copy notebooks --out student/
    .venv/bin/python scripts/student_copy.py notebooks/01_double_rounding_scalar.ipynb --out student/

- In a code cell, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (both included) become
  ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the indentation of the BEGIN line.
- In markdown, everything from ``<!-- BEGIN SOLUTION -->`` to ``<!-- END SOLUTION -->`` is removed, within one
  cell or across cells (the cells in between go too); a cell left empty is dropped.
- Every output and execution count is cleared: the committed outputs are the instructor copy's nbval references,
  made with the solutions (a check cell would already say "Correct").
- nbval's test tags (``nbval-check-output`` and the other ``nbval-*`` tags) are dropped; the grader cells
  (nbgrader ``grade: true, solution: false``) are tagged ``raises-exception``, so "Run All" in JupyterLab (and
  nbclient) shows a failing check's feedback and goes on to the next cells instead of stopping there.
- Unbalanced markers stop the copy with an error naming the notebook and the cell; nothing is written into a
  source folder (the originals would be overwritten).

nbformat is needed (the ``lab`` extra); it is imported only when a copy is made.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labkit.errors import LabkitError

BEGIN_CODE, END_CODE = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_MARKDOWN, END_MARKDOWN = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
TEST_TAG_PREFIX = "nbval-"  # nbval's cell tags (nbval-check-output, nbval-ignore-output, nbval-skip, ...)
CONTINUE_TAG = "raises-exception"  # JupyterLab and nbclient run on past a cell with this tag that raises


class StudentCopyError(LabkitError, ValueError):
    """Unbalanced solution markers, or an output folder that would overwrite the source notebooks."""


def _where(notebook: str, index: int, cell) -> str:
    cell_id = f", id {cell['id']!r}" if cell.get("id") else ""
    return f"{notebook}, cell {index + 1} ({cell.get('cell_type')}{cell_id}; cells counted from 1)"


def strip_code(source: str, where: str) -> tuple[str, int]:
    """``source`` with each BEGIN/END SOLUTION region replaced by the stub; and how many regions there were."""
    lines, out, begin, count = source.splitlines(keepends=True), [], None, 0
    for number, line in enumerate(lines, 1):
        marker = line.strip()
        if marker.startswith(BEGIN_CODE):
            if begin is not None:
                raise StudentCopyError(f"{where}: line {number} opens '{BEGIN_CODE}' again before line {begin[0]}'s "
                                       f"region is closed with '{END_CODE}'.")
            begin = (number, line[: len(line) - len(line.lstrip())])
        elif marker.startswith(END_CODE):
            if begin is None:
                raise StudentCopyError(f"{where}: line {number} has '{END_CODE}' without a '{BEGIN_CODE}' before it.")
            newline = "\n" if line.endswith("\n") else ""
            out += [f"{begin[1]}{STUB[0]}\n", f"{begin[1]}{STUB[1]}{newline}"]
            begin, count = None, count + 1
        elif begin is None:
            out.append(line)
    if begin is not None:
        raise StudentCopyError(f"{where}: '{BEGIN_CODE}' on line {begin[0]} is never closed with '{END_CODE}' "
                               "(both markers must be in the same code cell).")
    return "".join(out), count


def strip_markdown(source: str, where: str, inside: bool = False) -> tuple[str, int, bool]:
    """Remove the ``<!-- BEGIN/END SOLUTION -->`` regions of one markdown cell's text.

    ``inside``: a region opened in an earlier cell is still open. Returns the kept text, how many regions
    closed in this cell, and whether a region is still open at its end.
    """
    kept, position, closed = [], 0, 0
    while True:
        begin, end = source.find(BEGIN_MARKDOWN, position), source.find(END_MARKDOWN, position)
        if inside:
            if begin >= 0 and (end < 0 or begin < end):
                raise StudentCopyError(f"{where}: '{BEGIN_MARKDOWN}' opens again before the open region is closed "
                                       f"with '{END_MARKDOWN}'.")
            if end < 0:
                return "".join(kept), closed, True
            inside, position, closed = False, end + len(END_MARKDOWN), closed + 1
        else:
            if end >= 0 and (begin < 0 or end < begin):
                raise StudentCopyError(f"{where}: '{END_MARKDOWN}' without a '{BEGIN_MARKDOWN}' before it.")
            if begin < 0:
                kept.append(source[position:])
                return "".join(kept), closed, False
            kept.append(source[position:begin])
            inside, position = True, begin + len(BEGIN_MARKDOWN)


def is_grader_cell(cell) -> bool:
    """An nbgrader test cell: graded, not a solution (it calls a grader on the student's function)."""
    nbgrader = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and bool(nbgrader.get("grade")) and not nbgrader.get("solution")


def _student_tags(cell) -> None:
    """Drop nbval's test tags; tag a grader cell ``raises-exception``; no empty tag list is left behind."""
    tags = [tag for tag in cell.metadata.get("tags", []) if not tag.startswith(TEST_TAG_PREFIX)]
    if is_grader_cell(cell) and CONTINUE_TAG not in tags:
        tags.append(CONTINUE_TAG)
    if tags:
        cell.metadata["tags"] = tags
    else:
        cell.metadata.pop("tags", None)


def strip_notebook(notebook, name: str = "notebook") -> int:
    """Remove the solutions of an ``nbformat`` notebook in place; return how many solution regions went."""
    cells, removed, opened = [], 0, None  # opened: (index, cell) where a markdown region still open began
    for index, cell in enumerate(notebook.cells):
        where, source = _where(name, index, cell), cell.get("source", "")
        if cell.cell_type == "markdown":
            text, closed, still_open = strip_markdown(source, where, opened is not None)
            removed += closed
            opened = ((index, cell) if opened is None or closed else opened) if still_open else None
            if text == source:
                cells.append(cell)
            elif text.strip():
                cell.source = text.strip("\n")
                cells.append(cell)
        elif opened is not None:  # a code or raw cell inside a markdown solution region goes with it
            if END_MARKDOWN in source:
                raise StudentCopyError(f"{where}: '{END_MARKDOWN}' must be in a markdown cell.")
        else:
            if cell.cell_type == "code":
                text, count = strip_code(source, where)
                cell.source, cell.outputs, cell.execution_count = text, [], None
                removed += count
                _student_tags(cell)
            cells.append(cell)
    if opened is not None:
        raise StudentCopyError(f"{_where(name, *opened)}: '{BEGIN_MARKDOWN}' is never closed with '{END_MARKDOWN}'.")
    notebook.cells = cells
    return removed


def find_notebooks(sources) -> list[Path]:
    """The ``.ipynb`` files named, and those directly inside the folders named (sorted, checkpoints skipped)."""
    found = []
    for source in map(Path, sources):
        if source.is_dir():
            found += sorted(p for p in source.glob("*.ipynb") if p.is_file())
        elif source.suffix == ".ipynb" and source.is_file():
            found.append(source)
        else:
            raise StudentCopyError(f"{source} is neither a notebook (.ipynb) nor a folder of notebooks.")
    if not found:
        raise StudentCopyError(f"no notebooks found in {', '.join(map(str, sources))}.")
    return found


def make_student_copy(sources, out) -> dict[Path, int]:
    """Write the student copy of every notebook in ``sources`` into ``out``; return ``{written path: solutions removed}``.

    All notebooks are checked before anything is written, so an error leaves ``out`` untouched.
    """
    import nbformat

    out = Path(out)
    notebooks = find_notebooks(sources)
    source_dirs = {p.resolve() for p in map(Path, sources) if p.is_dir()} | {p.resolve().parent for p in notebooks}
    if out.resolve() in source_dirs:
        raise StudentCopyError(f"refusing to write the student copy into the source folder {out}: it would overwrite "
                               "the instructor's notebooks; pass another folder with --out.")
    names = [p.name for p in notebooks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudentCopyError(f"two source notebooks share the names {duplicates}; copy them in separate runs.")
    stripped = []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        removed = strip_notebook(notebook, str(path))
        nbformat.validate(notebook)
        stripped.append((path, notebook, removed))
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for path, notebook, removed in stripped:
        nbformat.write(notebook, out / path.name)
        written[out / path.name] = removed
    return written


def main(argv=None) -> int:
    """Command line: ``student_copy SRC_DIR_OR_NOTEBOOKS... --out DIR``; prints one line per notebook."""
    parser = argparse.ArgumentParser(prog="python -m labkit.exercises.student_copy", description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", help="notebooks, or folders whose *.ipynb are copied")
    parser.add_argument("--out", required=True, help="the folder to write the student notebooks into")
    args = parser.parse_args(argv)
    try:
        written = make_student_copy(args.sources, args.out)
    except (StudentCopyError, OSError) as error:
        print(f"student_copy: error: {error}", file=sys.stderr)
        return 2
    for path, removed in written.items():
        print(f"{path}: {removed} solution{'s' if removed != 1 else ''} removed")
    total = sum(written.values())
    print(f"{len(written)} notebook{'s' if len(written) != 1 else ''}, "
          f"{total} solution{'s' if total != 1 else ''} removed in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
