"""The reproduction suite of the paper's CIFAR-10 table (METHOD.md §6, Table 4) and its baselines (§7).

Every row is a named recipe plus overrides, trained at one *equal, stated budget* from the same shipped FP32
ResNet-20 and the same data, so the rows differ only in the method. :func:`run_suite` trains the rows that are
missing and resumes the ones that were interrupted; :func:`collect` reads the finished runs back into a table
for ``docs/RESULTS.md`` and the notebooks.

How the baselines are trained (issue 10, METHOD.md §5, §7): each at its best, the way its own authors would.
ALRS belongs to the paper's method: the Double Rounding rows and the ``floor`` truncation row (the same
shared-scale quantizer with only the second rounding changed, so that row isolates the rounding) use Eq. 7;
``per_bit_scale`` (MultiQuant / "Ours*"), ``any_precision`` and the dedicated LSQ models train every scale at
λ with no η_b (``alrs_scope="paper"``, :func:`labkit.train.alrs.alrs_rule_for`): a separate per-bit scale is
not shared with another precision, so ALRS has nothing to protect, and η_2 = 0.001 would leave a 2-bit scale
at 5e-7 per Adam step.

Alg. A.2 takes one optimizer step per precision (4 per batch for {8,6,4,2}), A.1 one per batch. The control
row ``8642-alrs-a1-steps`` trains A.1 with batches of 128/4 = 32: the same 10,000 images, the same
forward/backward passes and images per optimizer step (4 × 32 = 128 image-passes), and A.2's number of
optimizer steps (312), so "A.2 − A.1" can be split into "more steps" (A.1-steps − A.1) and "a step per
precision" (A.2 − A.1-steps).

A row's ``setup`` counts the changes to how it is trained; each run folder records the setup it was trained
with (``suite.json``). A published run of an older setup is kept but shown as *stale* (with ``changed``, the
reason) until ``labkit reproduce`` re-measures it; :func:`run_suite` moves such a folder aside and retrains.
"""
from __future__ import annotations

import json
import re
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
    """One trained configuration of the suite; ``setup`` > 1 with ``changed`` says what was made fair since."""

    name: str
    recipe: str
    overrides: dict = field(default_factory=dict)
    group: str = "table4"
    label: str = ""
    setup: int = 1
    changed: str = ""

    def config_overrides(self, profile: str = "laptop") -> dict:
        """The row's settings at ``profile``: the suite budget (laptop), a tiny one (smoke), the recipe's (paper)."""
        return {**PROFILE_BUDGETS[profile], **self.overrides}


_UNFAIR_LSQ = ("every bit-width's scale started from max|W| (at 2 bits about 90 % of the codes start at 0); "
               "now initialised per bit-width as a careful LSQ user would (issue 10 item 2)")

ROWS: tuple[Row, ...] = (
    Row("8642-alrs-a2", "cifar10-resnet20", {}, "table4", "{8,6,4,2} Double Rounding + ALRS, Alg. A.2"),
    Row("8642-noalrs-a2", "cifar10-resnet20", {"alrs": "none"}, "table4", "{8,6,4,2} without ALRS, Alg. A.2"),
    Row("8642-alrs-a1", "cifar10-resnet20", {"algorithm": "a1"}, "table4", "{8,6,4,2} + ALRS, Alg. A.1", setup=2,
        changed="A.1 multiplied each precision's gradients by η_b, which Adam normalises away, so its 2-bit scales "
                "stepped at λ instead of η_2·λ; now each precision's own parameters step at their ALRS rate "
                "(issue 10 item 3a)"),
    Row("432-alrs-a2", "cifar10-resnet20-432", {}, "table4", "{4,3,2} Double Rounding + ALRS, Alg. A.2"),
    Row("432-noalrs-a2", "cifar10-resnet20-432", {"alrs": "none"}, "table4", "{4,3,2} without ALRS, Alg. A.2"),
    Row("8642-alrs-a1-steps", "cifar10-resnet20", {"algorithm": "a1", "batch_size": 32}, "controls",
        "{8,6,4,2} + ALRS, Alg. A.1 at A.2's number of optimizer steps (batch 32)"),
    Row("8642-floor", "cifar10-resnet20", {"method": "floor"}, "baselines",
        "floor-truncation from INT8 (shared scale)", setup=2,
        changed="the truncated codes were dequantized at the bottom of the INT-h cells they cover, biasing every "
                "weight down by about half an l-bit step; method=floor is now the fair truncation (issue 10 item 1)"),
    Row("8642-per_bit_scale", "cifar10-resnet20", {"method": "per_bit_scale"}, "baselines",
        "per-bit learned scales on FP32 masters", setup=2,
        changed="its separate 2-bit weight scale started at max|W| and was trained at η_2·λ = 5e-7 per step by "
                "ALRS; now every scale at λ (no ALRS for the baselines) and a per-bit init (issue 10 item 2)"),
    Row("8642-any_precision", "cifar10-resnet20", {"method": "any_precision"}, "baselines",
        "Any-Precision style (DoReFa weights from FP32 masters)", setup=2,
        changed="ALRS's η_b slowed its per-bit activation scales; the baselines now train every scale at λ "
                "(issue 10 item 2)"),
    # Issue 14 item 3: the nested-integer peer. MatQuant trains one step per batch on the summed multi-bit loss
    # Σ_r λ_r·L_r with λ_r = 1 (Nair et al. 2025) — that is Alg. A.1's summed backward — with every scale at λ.
    Row("8642-matquant", "cifar10-resnet20", {"method": "matquant", "algorithm": "a1"}, "nested",
        "MatQuant-style slicing of unsigned min-max INT8 (summed multi-bit loss, one step)"),
    *(Row(f"lsq-{b}", "cifar10-resnet20", {"method": "lsq", "bits": (b,)}, "dedicated",
          f"dedicated single-precision LSQ, {b}-bit", setup=2, changed=_UNFAIR_LSQ) for b in (8, 6, 4, 2)),
    # What the paper leaves open (METHOD.md §4-5): the ALRS variants and the KD rows.
    Row("432-geometric-a2", "cifar10-resnet20-432", {"alrs": "geometric"}, "open",
        "{4,3,2} + ALRS geometric 0.1^k (authors' code), Alg. A.2"),
    Row("8642-alrs-gradterm-a2", "cifar10-resnet20", {"alrs_gradient_term": True}, "open",
        "{8,6,4,2} + ALRS with the Eq. 6 gradient term (floored), Alg. A.2", setup=2,
        changed="the Eq. 6 term averaged over weight and activation scales (2L tensors), halving it; now over the "
                "L layers' weight scales as the paper writes it (issue 10 item 4)"),
    Row("8642-alrs-pskd-a2", "cifar10-resnet20", {"kd": "pskd"}, "open",
        "{8,6,4,2} + ALRS + PS-KD, Alg. A.2"),
    # Issue 10 item 10: the opt-in remedy for weight scales that Adam drives through zero.
    Row("8642-alrs-logscale-a2", "cifar10-resnet20", {"weight_scale_update": "log"}, "open",
        "{8,6,4,2} + ALRS, Alg. A.2, weight scales by Adam on log s (opt-in)"),
)


def row(name: str) -> Row:
    for candidate in ROWS:
        if candidate.name == name:
            return candidate
    raise LabkitError(f"unknown suite row {name!r}; rows: {', '.join(r.name for r in ROWS)}")


def seed_folder(out_root, entry: Row, seed: int = 0) -> Path:
    """Where seed ``seed`` of a row is trained: ``<row>`` for seed 0, ``<row>-seed<k>`` for the others."""
    return Path(out_root) / (entry.name if seed == 0 else f"{entry.name}-seed{seed}")


STAMP = "suite.json"


def trained_setup(folder: Path, current: int = 1) -> int:
    """The setup a run folder was trained with: its ``suite.json`` stamp; without one, 1 when its ``config.json``
    predates versioned set-ups (no ``alrs_scope`` setting, i.e. before issue 10), else ``current``."""
    folder = Path(folder)
    if (folder / STAMP).is_file():
        return int(json.loads((folder / STAMP).read_text()).get("setup", 1))
    if (folder / "config.json").is_file() and "alrs_scope" not in json.loads((folder / "config.json").read_text())["config"]:
        return 1
    return current


def run_suite(out_root, names=None, profile: str = "laptop", data_root=None,
              show_progress: bool = True, seeds: int = 1) -> dict[str, dict]:
    """Train (or resume, or skip when finished) each row into ``out_root/<row name>``; return their metrics.

    ``seeds`` > 1 also trains seeds 1 … seeds−1 of every row into ``<row>-seed<k>`` (seed 0 is the recipe's own).
    A folder trained with an older setup of its row is moved aside to ``<folder>.setup<k>`` and trained again.
    Returns ``{row: metrics}`` for seed 0 and ``{"<row>-seed<k>": metrics}`` for the others.
    """
    if profile not in PROFILE_BUDGETS:
        raise LabkitError(f"unknown profile {profile!r}; use one of {list(PROFILE_BUDGETS)}")
    if seeds < 1:
        raise LabkitError(f"seeds={seeds} must be at least 1.")
    from labkit.train.run import train

    out_root = Path(out_root)
    results = {}
    for entry in [row(n) for n in names] if names else ROWS:
        for seed in range(seeds):
            folder = seed_folder(out_root, entry, seed)
            old = trained_setup(folder, entry.setup) if folder.exists() else entry.setup
            if old < entry.setup:
                aside, count = folder.with_name(f"{folder.name}.setup{old}"), 1
                while aside.exists():
                    count += 1
                    aside = folder.with_name(f"{folder.name}.setup{old}-{count}")
                folder.rename(aside)
                print(f"{folder.name}: trained with an older setup ({entry.changed}); moved to {aside.name}, "
                      "training again")
            if (folder / "metrics.json").is_file():
                results[folder.name] = json.loads((folder / "metrics.json").read_text())
                continue
            resume = (folder / "config.json").is_file()
            overrides = {**entry.config_overrides(profile), **({"seed": seed} if seed else {})}
            folder.mkdir(parents=True, exist_ok=True)
            (folder / STAMP).write_text(json.dumps({"row": entry.name, "setup": entry.setup, "seed": seed}) + "\n")
            results[folder.name] = train(entry.recipe, folder, None if resume else overrides, resume=resume,
                                         profile=profile, data_root=data_root, show_progress=show_progress)
    return results


#: Where the finished suite's small files (config, metrics, log, run record) are kept in the repository.
RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results" / "suite"
_KEPT_FILES = ("config.json", "metrics.json", "log.csv", "run.json", STAMP)


def _seed_folders(root: Path, entry: Row) -> list[Path]:
    """The finished seed folders of a row under ``root`` (seed 0 first)."""
    pattern = re.compile(rf"{re.escape(entry.name)}-seed(\d+)")
    seeds = sorted((int(m.group(1)), f) for f in root.glob(f"{entry.name}-seed*") if (m := pattern.fullmatch(f.name)))
    folders = [root / entry.name] + [f for _, f in seeds]
    return [f for f in folders if f.is_dir() and (f / "metrics.json").is_file()]


def publish(out_root, destination=RESULTS_DIR) -> list[str]:
    """Copy the small files of every finished row (all its seeds) from ``out_root`` into ``destination``."""
    import shutil

    out_root, destination = Path(out_root), Path(destination)
    copied = []
    for entry in ROWS:
        for folder in _seed_folders(out_root, entry):
            (destination / folder.name).mkdir(parents=True, exist_ok=True)
            for name in _KEPT_FILES:
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, destination / folder.name / name)
            copied.append(folder.name)
    return copied


def _fp32_accuracy() -> float | None:
    from labkit.checkpoints import shipped

    try:
        return float(shipped("cifar10-resnet20-fp32")[1]["accuracy"]["32"])
    except Exception:  # noqa: BLE001 - the table still renders, without the drop column
        return None


def _read_run(folder: Path, entry: Row) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    return {"accuracy": {int(b): float(a) for b, a in metrics["accuracy"].items()}, "budget": metrics["budget"],
            "hardware": metrics["hardware"], "setup": trained_setup(folder, entry.setup),
            "wall_time_s": round(sum(s.get("wall_time_s", 0.0) for s in run.get("sessions", [])), 1)}


def _merge_seeds(runs: list[dict]) -> dict:
    """One record from the seeds of a row: mean accuracy per bit, its sample sd (2+ seeds), summed wall time."""
    import statistics

    bits = sorted({b for r in runs for b in r["accuracy"]}, reverse=True)
    accuracy = {b: round(statistics.fmean(r["accuracy"][b] for r in runs if b in r["accuracy"]), 4) for b in bits}
    record = {"accuracy": accuracy, "budget": runs[0]["budget"], "hardware": runs[0]["hardware"],
              "wall_time_s": round(sum(r["wall_time_s"] for r in runs), 1), "seeds": len(runs),
              "setup": min(r["setup"] for r in runs)}
    if len(runs) > 1:
        record["accuracy_sd"] = {b: round(statistics.stdev([r["accuracy"][b] for r in runs if b in r["accuracy"]]), 4)
                                 for b in bits if sum(b in r["accuracy"] for r in runs) > 1}
    return record


def collect(root=RESULTS_DIR) -> list[dict]:
    """One record per finished row in ``root``: label, per-bit accuracy, drop vs our FP32, budget, hardware, time.

    The four dedicated single-precision LSQ rows are merged into one record (one model per bit-width). A row
    with several seeds (``<row>-seed<k>`` folders) gives the mean and ``accuracy_sd``. A row trained with an older
    setup than its :class:`Row` says carries ``stale`` (why): its numbers are kept but no longer stand.
    Rows not trained yet are left out.
    """
    root = Path(root)
    fp32 = _fp32_accuracy()
    records, dedicated = [], {}
    for entry in ROWS:
        runs = [_read_run(folder, entry) for folder in _seed_folders(root, entry)]
        if not runs:
            continue
        merged = _merge_seeds(runs)
        stale = entry.changed if merged["setup"] < entry.setup else ""
        if entry.group == "dedicated":
            dedicated.setdefault("accuracy", {}).update(merged["accuracy"])
            dedicated.setdefault("accuracy_sd", {}).update(merged.get("accuracy_sd", {}))
            dedicated["wall_time_s"] = dedicated.get("wall_time_s", 0.0) + merged["wall_time_s"]
            dedicated["seeds"] = min(dedicated.get("seeds", merged["seeds"]), merged["seeds"])
            dedicated["stale"] = dedicated.get("stale") or stale
            dedicated.update(budget=merged["budget"], hardware=merged["hardware"])
            continue
        records.append({"name": entry.name, "label": entry.label, "group": entry.group, "stale": stale,
                        **{k: v for k, v in merged.items() if k != "setup"}})
    if dedicated:
        if not dedicated["accuracy_sd"]:
            del dedicated["accuracy_sd"]
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
        if record.get("stale"):  # its numbers came from a set-up that was not fair: not shown as a result
            cells = ["stale" if b in record["accuracy"] else "" for b in bits]
            lines.append(f"| {record['label']} *(to be re-measured with the fair set-up)* | " + " | ".join(cells)
                         + " | |")
            continue
        cells = []
        sd = record.get("accuracy_sd", {})
        for b in bits:
            if b in record["accuracy"]:
                drop = record["drop"].get(b)
                cells.append(f"{record['accuracy'][b]:.2f}" + (f" ± {sd[b]:.2f}" if b in sd else "")
                             + (f" ({-drop:+.2f})" if drop is not None else ""))
            else:
                cells.append("")
        seeds = f" ({record['seeds']} seeds)" if record.get("seeds", 1) > 1 else ""
        lines.append(f"| {record['label']}{seeds} | " + " | ".join(cells) + f" | {record['wall_time_s'] / 60:.0f} min |")
    return "\n".join(lines)


def drop_goal_check(record: dict) -> dict[int, dict]:
    """Per bit of a {8,6,4,2} record: the measured drop vs our FP32, the goal, and by how much it is missed."""
    return {b: {"drop": record["drop"][b], "goal": goal, "met": record["drop"][b] <= goal,
                "missed_by": round(max(record["drop"][b] - goal, 0.0), 2)}
            for b, goal in DROP_GOAL.items() if b in record["drop"]}


def accuracy_figure(records: list[dict], title: str = "CIFAR-10 ResNet-20: top-1 per bit-width at one budget"):
    """Grouped bars: one colour per configuration, one group per bit-width, with the FP32 line (stale rows left out)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for record in records:
        if record.get("stale"):  # measured with a set-up that was not fair (see collect)
            continue
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
