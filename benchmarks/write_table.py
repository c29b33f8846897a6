"""The README's ``## Benchmarks`` section, generated from ``benchmarks/results.json`` (never written by hand).

    python benchmarks/write_table.py                  # rewrite README.md's "## Benchmarks" section in place
    python benchmarks/write_table.py --print          # print the section instead
    python benchmarks/write_table.py --results /tmp/r.json --note "measured beside two training jobs"

Only the lines from ``## Benchmarks`` to the next ``## `` heading (or the end of the file) are replaced. Every row
of the results becomes one table row: what was measured (the row's ``label``, else its name and unit), its value,
goal and whether it is met, when it was measured (a quick run is marked), and what is beside it (the row's
``summary``: the other paths, epoch times, the load average).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEADING = "## Benchmarks"
WIDTH = 120  # prose lines of the section; table rows stay one line each
COLUMNS = ("measurement", "value", "goal", "met", "measured", "beside it (other paths, setup)")


def _short_unit(unit: str) -> str:
    unit = unit.strip()
    for prefix, short in (("×", "×"), ("ms", " ms"), ("s ", " s"), ("s/", " s"), ("images/s", " img/s")):
        if unit.startswith(prefix):
            return short
    return ""


def format_value(entry: dict) -> str:
    value = entry.get("value")
    if value is None:
        return "—"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return text + _short_unit(entry.get("unit", ""))


def format_met(entry: dict) -> str:
    if "error" in entry:
        return "error"
    if "met" not in entry:
        return "report"
    return "yes" if entry["met"] else "**no**"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_rows(results: dict) -> list[str]:
    """One Markdown table row per result row, in the order of ``results``."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, entry in results.items():
        if name.startswith("_"):
            continue
        label = entry.get("label") or f"`{name}` ({entry.get('unit', '')})"
        measured = (entry.get("measured") or "").replace("T", " ")[:16]
        if entry.get("mode") == "quick":
            measured += " (quick)"
        beside = f"`{name}`"
        if entry.get("summary"):
            beside += f"; {entry['summary']}"
        if "error" in entry:
            error_lines = [line for line in (entry["error"] or "").splitlines() if line.strip()]
            beside += f"; error: {error_lines[-1][:160] if error_lines else ''}"
        cells = (label, format_value(entry), entry.get("goal", ""), format_met(entry), measured, beside)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def _prose(text: str) -> str:
    return textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False)


def section(results: dict, note: str | None = None) -> str:
    """The whole ``## Benchmarks`` section (ending in one blank line) for ``results``."""
    meta = results.get("_meta", {})
    rows = [entry for name, entry in results.items() if not name.startswith("_")]
    met = sum(entry.get("met") is True for entry in rows)
    goals = sum("met" in entry for entry in rows)
    intro = ("One command measures everything and writes `benchmarks/results.json`; `benchmarks/write_table.py` "
             "turns it into this section (generated: do not edit by hand). Method, groups and goals: "
             "[`benchmarks/README.md`](benchmarks/README.md).")
    setup = (f"Hardware of the last run: {meta.get('hardware', 'unknown')}; default {meta.get('threads')} torch "
             f"thread(s) (the issue-11 rows set 1 and 2 themselves); load average {meta.get('load_start')} at its "
             f"start, {meta.get('load_end')} at its end. Rows keep the date of the run that measured them. Every "
             "ratio is timed side by side in one process (medians of per-round ratios); absolute times are wall "
             f"clock on a shared machine and are not comparable across runs. {met} of the {goals} rows with a goal "
             "meet it.")
    lines = [HEADING, "", _prose(intro), "",
             "```bash",
             "OMP_NUM_THREADS=1 LABKIT_DATA=../shared/data .venv/bin/python benchmarks/run.py  # --quick, --only GROUP",
             ".venv/bin/python benchmarks/write_table.py  # this section, from benchmarks/results.json",
             "```", "", _prose(setup)]
    if note:
        lines += ["", _prose(note.strip())]
    lines += [""] + table_rows(results) + [""]
    return "\n".join(lines) + "\n"


def replace_section(text: str, new_section: str) -> str:
    """``text`` with the lines from ``## Benchmarks`` up to the next ``## `` heading replaced by ``new_section``."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == HEADING]
    if len(starts) != 1:
        raise SystemExit(f"expected one line {HEADING!r} in the README, found {len(starts)}")
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    if end == len(lines):
        new_section = new_section.rstrip("\n") + "\n"
    return "".join(lines[:start]) + new_section + "".join(lines[end:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--note", default=None, help="a paragraph put above the table (e.g. the load it ran under)")
    parser.add_argument("--print", action="store_true", help="print the section, do not write the README")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    text = section(results, args.note)
    if args.print:
        sys.stdout.write(text)
    else:
        args.readme.write_text(replace_section(args.readme.read_text(), text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
