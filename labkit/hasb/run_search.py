"""``labkit search``: exact bit allocation for a trained SuperNet, evaluated SubNet by SubNet (METHOD.md §6 step 4).

Reads a SuperNet run folder (``cifar10-resnet20-hasb`` or ``-uniform``): its INT checkpoint, the average Hessian
traces it recorded (``supernet.json``, the scores of the search), solves the ILP for one ω or a sweep of ω (with
the paper's neighbouring SubNets), evaluates every SubNet on the run's evaluation set (optionally after batch-norm
re-calibration), and writes ``search.csv`` and the Pareto front ``pareto.html`` into the run folder.
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
               show_progress: bool = True, root=None) -> list[dict]:
    """Search, evaluate and write ``search.csv`` / ``pareto.html`` for the SuperNet in ``run_dir``."""
    from labkit import data
    from labkit.hasb.cost import layer_costs
    from labkit.hasb.search import evaluate_subnets, neighbour_subnets, pareto_figure, search_bits, sweep, write_csv

    run_dir = Path(run_dir)
    record_file = run_dir / "supernet.json"
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
    write_csv(evaluated, run_dir / "search.csv")
    pareto_figure(evaluated, x="avg_bits", y="accuracy", title=f"SubNets of {run_dir.name}").write_html(
        run_dir / "pareto.html", include_plotlyjs=True)
    return evaluated
