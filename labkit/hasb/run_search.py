"""``labkit search``: exact bit allocation for a trained SuperNet, evaluated SubNet by SubNet (METHOD.md §6 step 4).

Reads a SuperNet run folder (``cifar10-resnet20-hasb`` or ``-uniform``): its INT checkpoint, the average Hessian
traces it recorded (``supernet.json``, the scores of the search), solves the ILP for one ω or a sweep of ω (with
the paper's neighbouring SubNets), evaluates every SubNet on the run's evaluation set (optionally after batch-norm
re-calibration), and writes ``search.csv`` and the Pareto front ``pareto.html`` into the run folder.

A search at equal cost instead of equal average bits leaves the mean free and bounds the BitOPs, e.g. by those of
uniform 3-bit: ``labkit search RUN --avg-bits none --bitops-budget uniform:3 --output search-bitops`` (issue 10:
equal average bits is not equal cost).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from labkit.errors import LabkitError
from labkit.evaluate import count_correct, fixed_subset, load_for_eval


def parse_sweep(text: str) -> np.ndarray:
    """``"2:8:0.25"`` → ω = 2.0, 2.25, …, 8.0."""
    try:
        start, stop, step = (float(part) for part in text.split(":"))
    except ValueError:
        raise LabkitError(f"--sweep {text!r} is not START:STOP:STEP, e.g. 2:8:0.25") from None
    if step <= 0 or stop < start:
        raise LabkitError(f"--sweep {text!r} needs STEP > 0 and STOP ≥ START")
    return np.round(np.arange(start, stop + step / 2, step), 6)


def pareto_file(output: str = "search") -> str:
    """The Pareto figure's file name for the results stem ``output`` (``pareto.html`` for the default)."""
    return "pareto.html" if output == "search" else f"{output}-pareto.html"


def resolve_bitops_budget(budget, costs, layers) -> float | None:
    """A BitOPs bound per image: a number as given, or ``"uniform:B"`` = the BitOPs of every searched layer in
    ``layers`` at ``B`` bits (FP32 layers of ``costs`` at 32 bits, :func:`labkit.hasb.cost.total_bitops`)."""
    if budget is None:
        return None
    if isinstance(budget, str) and budget.startswith("uniform:"):
        from labkit.hasb.cost import total_bitops

        try:
            bits = int(budget.split(":", 1)[1])
        except ValueError:
            raise LabkitError(f"--bitops-budget {budget!r}: write uniform:B with an integer B, e.g. uniform:3") from None
        return float(total_bitops(costs, dict.fromkeys(layers, bits)))
    try:
        return float(budget)
    except (TypeError, ValueError):
        raise LabkitError(f"--bitops-budget {budget!r} is neither a number of BitOPs per image nor uniform:B "
                          "(e.g. uniform:3)") from None


@torch.no_grad()
def recalibrated_accuracy(model: torch.nn.Module, accuracy, loader, batches: int) -> float:
    """``accuracy(model)`` after re-estimating the batch-norm statistics of the current SubNet on ``batches``
    training batches (cumulative average); every statistic is put back afterwards."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for index, (images, _) in enumerate(loader):
            if index >= batches:
                break
            model(images)
        model.eval()
        for m, (_, mean, var, count) in zip(norms, saved):
            if int(m.num_batches_tracked) == 0:  # not used by this SubNet: keep its statistics
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
        return accuracy(model)
    finally:
        model.eval()
        for m, (momentum, mean, var, count) in zip(norms, saved):
            m.momentum = momentum
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)


def search_run(run_dir, avg_bits: float | None = 3.0, sweep_text: str | None = None, neighbours: bool = True,
               subset: int | None = 1000, recalibrate: int = 0, bitops_budget=None, size_budget_bits=None,
               show_progress: bool = True, root=None, output: str = "search") -> list[dict]:
    """Search, evaluate and write ``search.csv`` / ``pareto.html`` for the SuperNet in ``run_dir``.

    ``avg_bits=None`` leaves the mean free (then a BitOPs or size budget must bound the search);
    ``bitops_budget`` is a number or ``"uniform:B"`` (:func:`resolve_bitops_budget`); ``output`` names the files
    (``<output>.csv``; the figure is ``pareto.html`` for the default, else ``<output>-pareto.html``), so searches
    at several budgets sit side by side in one run folder.
    """
    from labkit import data
    from labkit.hasb.cost import layer_costs
    from labkit.hasb.search import evaluate_subnets, neighbour_subnets, pareto_figure, search_bits, sweep, write_csv

    run_dir = Path(run_dir)
    record_file = run_dir / "supernet.json"
    if avg_bits is None and not sweep_text and bitops_budget is None and size_budget_bits is None:
        raise LabkitError("a search with no average-bit target needs a cost bound: pass --bitops-budget (e.g. "
                          "uniform:3) or --size-budget-bits, or give --avg-bits a number.")
    if not output or "/" in output or output.endswith(".csv"):
        raise LabkitError(f"--output {output!r} must be a plain file stem such as search-bitops (no folder, no .csv).")
    if not record_file.is_file():
        raise LabkitError(f"{run_dir} is not a SuperNet run (no supernet.json); train cifar10-resnet20-hasb or "
                          "-uniform into it first.")
    record = json.loads(record_file.read_text())
    scores = record.get("average_traces")
    if not scores:
        raise LabkitError(f"{record_file} holds no Hessian traces to score the layers with; retrain the SuperNet.")
    model, _, dataset = load_for_eval(run_dir)
    model.eval()
    bits = sorted(json.loads((run_dir / "config.json").read_text())["config"]["bits"], reverse=True)
    if dataset != "cifar10":
        raise LabkitError("labkit search evaluates CIFAR-10 SuperNets here; other data sets: use evaluate_subnets.")
    test = fixed_subset(data.cifar10("test", root=root), subset)
    costs = layer_costs(model, test[0][0].unsqueeze(0))  # one real test image: the input size the model runs on
    bitops_budget = resolve_bitops_budget(bitops_budget, costs, list(scores))
    options = dict(bitops_budget=bitops_budget, size_budget_bits=size_budget_bits, costs=costs)
    if sweep_text:
        records = sweep(scores, bits, parse_sweep(sweep_text), neighbours=neighbours, **options)
    elif neighbours:
        records = [dict(r, target_avg_bits=avg_bits) for r in neighbour_subnets(scores, bits, avg_bits, **options)]
    else:
        allocation = search_bits(scores, bits, avg_bits, **options)
        records = [{"target_avg_bits": avg_bits, "kind": "optimum", "allocation": allocation,
                    "avg_bits": float(np.mean(list(allocation.values())))}]
    loader = DataLoader(test, batch_size=256, shuffle=False)
    plain = data.cifar10("train", root=root, transform=data.cifar10_transforms(train=False))  # no random augmentation
    calibration = DataLoader(fixed_subset(plain, 2048, 0), batch_size=128, shuffle=False)

    def accuracy(m) -> float:
        correct, total = count_correct(m, loader)
        return round(100.0 * correct / max(total, 1), 4)

    measure = (lambda m: recalibrated_accuracy(m, accuracy, calibration, recalibrate)) if recalibrate else accuracy
    evaluated = evaluate_subnets(model, records, measure, show_progress=show_progress)
    write_csv(evaluated, run_dir / f"{output}.csv")
    pareto_figure(evaluated, x="avg_bits", y="accuracy", title=f"SubNets of {run_dir.name}").write_html(
        run_dir / pareto_file(output), include_plotlyjs=True)
    return evaluated
