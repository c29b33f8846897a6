"""The reproduction suite of the paper's CIFAR-10 table (METHOD.md §6, Table 4) and its baselines (§7).

Every row is a named recipe plus overrides, trained at one *equal, stated budget* from the same shipped FP32
ResNet-20 and the same data, so the rows differ only in the method. :func:`run_suite` trains the rows that are
missing and resumes the ones that were interrupted; :func:`collect` reads the finished runs back into a table
for ``docs/RESULTS.md`` and the notebooks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import LabkitError

#: The paper's Table 4 numbers for ResNet-20 on CIFAR-10 (METHOD.md §6).
PAPER_TABLE4 = {
    "fp32": {32: 92.30},
    "8642": {8: 92.25, 6: 92.32, 4: 92.09, 2: 90.19},
    "432": {4: 91.79, 3: 91.83, 2: 88.88},
}

#: Goal of the reproduction issue: largest per-bit drop below our own FP32 for {8,6,4,2}.
DROP_GOAL = {8: 0.1, 6: 0.1, 4: 0.3, 2: 1.5}

#: The equal budget of every row on top of the recipe's ``laptop`` profile: one epoch of a 10,000-image
#: CIFAR-10 training subset, batch 128, Adam 5e-4, from the shipped FP32 ResNet-20, evaluated on the full
#: 10,000-image test set after the last epoch.
SUITE_BUDGET = {"epochs": 1, "train_subset": 10000, "eval_subset": None, "eval_every": 1, "checkpoint_every": 20}
#: Budget per profile: ``smoke`` only shows that every row runs (its numbers mean nothing), ``paper`` is the
#: recipe's own 200 epochs on the full training set.
PROFILE_BUDGETS = {
    "smoke": {"epochs": 1, "train_subset": 256, "eval_subset": 128, "eval_every": 1, "workers": 0},
    "laptop": SUITE_BUDGET,
    "paper": {},
}


@dataclass(frozen=True)
class Row:
    """One trained configuration of the suite."""

    name: str
    recipe: str
    overrides: dict = field(default_factory=dict)
    group: str = "table4"
    label: str = ""

    def config_overrides(self, profile: str = "laptop") -> dict:
        """The row's settings at ``profile``: the suite budget (laptop), a tiny one (smoke), the recipe's (paper)."""
        return {**PROFILE_BUDGETS[profile], **self.overrides}


ROWS: tuple[Row, ...] = (
    Row("8642-alrs-a2", "cifar10-resnet20", {}, "table4", "{8,6,4,2} Double Rounding + ALRS, Alg. A.2"),
    Row("8642-noalrs-a2", "cifar10-resnet20", {"alrs": "none"}, "table4", "{8,6,4,2} without ALRS, Alg. A.2"),
    Row("8642-alrs-a1", "cifar10-resnet20", {"algorithm": "a1"}, "table4", "{8,6,4,2} + ALRS, Alg. A.1"),
    Row("432-alrs-a2", "cifar10-resnet20-432", {}, "table4", "{4,3,2} Double Rounding + ALRS, Alg. A.2"),
    Row("432-noalrs-a2", "cifar10-resnet20-432", {"alrs": "none"}, "table4", "{4,3,2} without ALRS, Alg. A.2"),
    Row("8642-floor", "cifar10-resnet20", {"method": "floor"}, "baselines",
        "floor-truncation from INT8 (shared scale)"),
    Row("8642-per_bit_scale", "cifar10-resnet20", {"method": "per_bit_scale"}, "baselines",
        "per-bit learned scales on FP32 masters"),
    Row("8642-any_precision", "cifar10-resnet20", {"method": "any_precision"}, "baselines",
        "Any-Precision style (DoReFa weights from FP32 masters)"),
    *(Row(f"lsq-{b}", "cifar10-resnet20", {"method": "lsq", "bits": (b,)}, "dedicated",
          f"dedicated single-precision LSQ, {b}-bit") for b in (8, 6, 4, 2)),
    # What the paper leaves open (METHOD.md §4-5): the ALRS variants and the KD rows.
    Row("432-geometric-a2", "cifar10-resnet20-432", {"alrs": "geometric"}, "open",
        "{4,3,2} + ALRS geometric 0.1^k (authors' code), Alg. A.2"),
    Row("8642-alrs-gradterm-a2", "cifar10-resnet20", {"alrs_gradient_term": True}, "open",
        "{8,6,4,2} + ALRS with the Eq. 6 gradient term (floored), Alg. A.2"),
    Row("8642-alrs-pskd-a2", "cifar10-resnet20", {"kd": "pskd"}, "open",
        "{8,6,4,2} + ALRS + PS-KD, Alg. A.2"),
)


def row(name: str) -> Row:
    for candidate in ROWS:
        if candidate.name == name:
            return candidate
    raise LabkitError(f"unknown suite row {name!r}; rows: {', '.join(r.name for r in ROWS)}")


def run_suite(out_root, names=None, profile: str = "laptop", data_root=None,
              show_progress: bool = True) -> dict[str, dict]:
    """Train (or resume, or skip when finished) each row into ``out_root/<row name>``; return their metrics."""
    if profile not in PROFILE_BUDGETS:
        raise LabkitError(f"unknown profile {profile!r}; use one of {list(PROFILE_BUDGETS)}")
    from labkit.train.run import train

    out_root = Path(out_root)
    results = {}
    for entry in [row(n) for n in names] if names else ROWS:
        folder = out_root / entry.name
        if (folder / "metrics.json").is_file():
            results[entry.name] = json.loads((folder / "metrics.json").read_text())
            continue
        resume = (folder / "config.json").is_file()
        results[entry.name] = train(entry.recipe, folder, None if resume else entry.config_overrides(profile),
                                    resume=resume, profile=profile, data_root=data_root,
                                    show_progress=show_progress)
    return results


#: Where the finished suite's small files (config, metrics, log, run record) are kept in the repository.
RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results" / "suite"
_KEPT_FILES = ("config.json", "metrics.json", "log.csv", "run.json")


def publish(out_root, destination=RESULTS_DIR) -> list[str]:
    """Copy the small files of every finished row from ``out_root`` into ``destination`` (not the weights)."""
    import shutil

    out_root, destination = Path(out_root), Path(destination)
    copied = []
    for entry in ROWS:
        folder = out_root / entry.name
        if not (folder / "metrics.json").is_file():
            continue
        (destination / entry.name).mkdir(parents=True, exist_ok=True)
        for name in _KEPT_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, destination / entry.name / name)
        copied.append(entry.name)
    return copied


def _fp32_accuracy() -> float | None:
    from labkit.checkpoints import shipped

    try:
        return float(shipped("cifar10-resnet20-fp32")[1]["accuracy"]["32"])
    except Exception:  # noqa: BLE001 - the table still renders, without the drop column
        return None


def collect(root=RESULTS_DIR) -> list[dict]:
    """One record per finished row in ``root``: label, per-bit accuracy, drop vs our FP32, budget, hardware, time.

    The four dedicated single-precision LSQ rows are merged into one record (one model per bit-width).
    Rows not trained yet are left out.
    """
    root = Path(root)
    fp32 = _fp32_accuracy()
    records, dedicated = [], {}
    for entry in ROWS:
        metrics_file = root / entry.name / "metrics.json"
        if not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        run = json.loads((root / entry.name / "run.json").read_text()) if (root / entry.name / "run.json").is_file() else {}
        wall = round(sum(s.get("wall_time_s", 0.0) for s in run.get("sessions", [])), 1)
        accuracy = {int(b): float(a) for b, a in metrics["accuracy"].items()}
        if entry.group == "dedicated":
            dedicated.setdefault("accuracy", {}).update(accuracy)
            dedicated["wall_time_s"] = dedicated.get("wall_time_s", 0.0) + wall
            dedicated.update(budget=metrics["budget"], hardware=metrics["hardware"])
            continue
        records.append({"name": entry.name, "label": entry.label, "group": entry.group, "accuracy": accuracy,
                        "budget": metrics["budget"], "hardware": metrics["hardware"], "wall_time_s": wall})
    if dedicated:
        records.append({"name": "lsq-dedicated", "label": "dedicated single-precision LSQ (one model per bit)",
                        "group": "dedicated", **dedicated})
    for record in records:
        # Our FP32 accuracy is on the full 10,000-image test set: a drop is only meaningful on the same images.
        full_test = record["budget"].get("eval_images", {}).get("test") == 10000
        record["drop"] = ({b: round(fp32 - a, 2) for b, a in record["accuracy"].items()}
                          if fp32 is not None and full_test else {})
        record["fp32"] = fp32
    return records


def markdown_table(records: list[dict], bits=(32, 8, 6, 4, 3, 2), paper: dict | None = None) -> str:
    """A Markdown table: one row per record, accuracy (drop vs our FP32) per bit-width.

    ``paper`` rows ({name: {bits: accuracy}}) come first, then our FP32 model (the shipped checkpoint every row
    starts from), then the records.
    """
    head = "| configuration | " + " | ".join("FP32" if b == 32 else f"{b}-bit" for b in bits) + " | wall time |"
    lines = [head, "|---|" + "---|" * (len(bits) + 1)]
    for name, accuracy in (paper or {}).items():
        cells = [f"{accuracy[b]:.2f}" if b in accuracy else "" for b in bits]
        lines.append(f"| paper: {name} | " + " | ".join(cells) + " | |")
    fp32 = next((r["fp32"] for r in records if r.get("fp32") is not None), None)
    if fp32 is not None and 32 in bits:
        lines.append("| ours: FP32 (shipped `cifar10-resnet20-fp32`) | " + " | ".join(
            f"{fp32:.2f}" if b == 32 else "" for b in bits) + " | |")
    for record in records:
        cells = []
        for b in bits:
            if b in record["accuracy"]:
                drop = record["drop"].get(b)
                cells.append(f"{record['accuracy'][b]:.2f}" + (f" ({-drop:+.2f})" if drop is not None else ""))
            else:
                cells.append("")
        lines.append(f"| {record['label']} | " + " | ".join(cells) + f" | {record['wall_time_s'] / 60:.0f} min |")
    return "\n".join(lines)


def drop_goal_check(record: dict) -> dict[int, dict]:
    """Per bit of a {8,6,4,2} record: the measured drop vs our FP32, the goal, and by how much it is missed."""
    return {b: {"drop": record["drop"][b], "goal": goal, "met": record["drop"][b] <= goal,
                "missed_by": round(max(record["drop"][b] - goal, 0.0), 2)}
            for b, goal in DROP_GOAL.items() if b in record["drop"]}


def accuracy_figure(records: list[dict], title: str = "CIFAR-10 ResNet-20: top-1 per bit-width at one budget"):
    """Grouped bars: one colour per configuration, one group per bit-width, with the FP32 line."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for record in records:
        bits = sorted(record["accuracy"], reverse=True)
        figure.add_bar(name=record["label"], x=[f"{b}-bit" for b in bits], y=[record["accuracy"][b] for b in bits])
    fp32 = next((r["fp32"] for r in records if r.get("fp32") is not None), None)
    if fp32 is not None:
        figure.add_hline(y=fp32, line_dash="dash", annotation_text=f"our FP32 {fp32:.2f}")
    figure.update_layout(barmode="group", title=title, yaxis_title="top-1 (%)", legend_title="configuration",
                         height=480)
    return figure


def results_for_profile(settings: dict, out_root=None, show_progress: bool = False) -> tuple[list[dict], str]:
    """(records, where they come from) for a notebook: the committed suite (laptop), tiny live runs (smoke),
    or the full recipes trained now (paper). ``settings["train_rows"]`` names the rows to train live."""
    import tempfile

    profile, rows = settings["profile"], settings.get("train_rows", ())
    if profile == "laptop" or not rows:
        return collect(), (f"measured rows committed in {RESULTS_DIR.relative_to(RESULTS_DIR.parents[2])} "
                           f"(trained by `labkit reproduce` at the suite budget {SUITE_BUDGET})")
    default = tempfile.mkdtemp(prefix="labkit-suite-") if profile == "smoke" else RESULTS_DIR.parents[2] / "runs" / "suite-paper"
    out_root = Path(out_root or default)
    run_suite(out_root, None if rows == "all" else list(rows), profile=profile, show_progress=show_progress)
    note = ("smoke budget: 256 training images, one epoch, 128 test images — these numbers only show that every "
            "row runs" if profile == "smoke" else "the recipes' paper budget: 200 epochs, from the shipped FP32 model")
    return collect(out_root), f"trained just now in {out_root} ({note})"
