"""The labkit benchmark suite: every figure of the lab measured in one command, written to one JSON file.

    python benchmarks/run.py                      # full run (9 min without notebooks on 2 busy CPU cores)
    python benchmarks/run.py --quick              # fewer rounds, smaller inputs: about 3 minutes there
    python benchmarks/run.py --only hessian,search_sweep   # some groups; merged into the existing output file
    python benchmarks/run.py --skip-notebooks     # everything but the notebook smoke runs
    python benchmarks/run.py --out /tmp/r.json    # another output file (default benchmarks/results.json)

Groups (``--only``): speed_fakequant, speed_joint, speed_joint_trainer, switchboard, speed_bf16_accuracy (issue 11's
table, ``speed.py``: the default path with the other paths beside it, at 1 and 2 threads), fakequant, int8_switch,
int_switch_floor, checkpoint_size, hessian, search_sweep, scaling, data_loading, profile, notebooks. Each group
adds rows ``{name: {"value", "unit", "goal", "met"?, "label"?, "summary"?, "detail"?, "error"?}}`` to the output;
``_meta`` holds the hardware line, torch version, thread count, load averages and run time. ``write_table.py``
turns the output into the README's benchmark table.

Ratios are measured side by side: the candidates of one group run round-robin in this one process (A, B, C,
then C, B, A, …), and each ratio is the median over rounds of the ratio of the two times taken in the same
round. Benchmarks are not tests: ``met`` only says whether a figure reaches its goal on this machine.
Measurement functions come from ``foundation.py``, ``speed.py``, ``training.py``, ``loading.py`` and
``switching.py``; see ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # labkit from this checkout
sys.path.insert(0, str(HERE))  # foundation.py, training.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import foundation  # noqa: E402
import switching  # noqa: E402
import loading  # noqa: E402
import speed  # noqa: E402
import training  # noqa: E402
import labkit  # noqa: E402
from foundation import interleaved_times, median_ms, paired_ratio  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.quant.lsq import DEFAULT_PATH, use_compile, use_fake_quant_path  # noqa: E402

DEFAULT_OUT = HERE / "results.json"
REPORT = "report (no goal set)"
NOTEBOOK_GOAL_S = 180.0  # DESIGN.md: smoke profile, "each notebook in well under a few minutes on 2 CPU cores"


def row(value, unit: str, goal: str, met: bool | None = None, **extra) -> dict:
    entry = {"value": None if value is None else float(value), "unit": unit, "goal": goal}
    if met is not None:
        entry["met"] = bool(met)
    entry.update(extra)
    return entry


def r3(x: float) -> float:
    return round(float(x), 3)


# ------------------------------------------------------------------ 1. weight fake-quant vs PyTorch's fused op

def bench_fakequant(quick: bool) -> dict:
    """foundation.weight_fakequant_vs_torch_fused: ours ÷ torch._fake_quantize_learnable_per_channel_affine."""
    result = foundation.weight_fakequant_vs_torch_fused(rounds=10 if quick else 60,
                                                        channel_counts=(256,) if quick else (256, 512))
    details = result["details"]
    rows = {}
    for mode in ("compiled", "eager"):
        by_shape = details[f"{mode}_ratio_by_shape"]
        value = max(by_shape.values())
        shift_ratios = {shape: {k: v for k, v in entry["ratio"].items() if "8to4" in k and f"_{mode}_" in k}
                        for shape, entry in details["shapes"].items()}
        rows[f"fakequant_vs_torch_{mode}"] = row(
            value, "× time of torch._fake_quantize_learnable_per_channel_affine (fwd+bwd)", "≤ 0.8", value <= 0.8,
            detail={
                "value_is": f"{mode} 8-bit (Δ=0) per-channel weight fake-quant fwd+bwd, worst over the conv shapes; "
                            "median of per-round ratios"
                            + (" (use_compile(True): Inductor-fused kernels)" if mode == "compiled" else
                               " (use_compile(False): one ATen op per step)"),
                "ratio_by_shape": by_shape,
                "delta4_ratios_vs_torch_4bit": shift_ratios,
                "median_ms": {shape: entry["median_ms"] for shape, entry in details["shapes"].items()},
                "compile_s": {shape: entry["compile_s"] for shape, entry in details["shapes"].items()}
                if mode == "compiled" else None,
                "check_vs_torch_8bit": {shape: entry["check_vs_torch_8bit"] for shape, entry in details["shapes"].items()},
                "rounds": details["rounds"],
            })
    return rows


# ------------------------------------------------------------- 3. INT8 → b switch vs FP32 re-quantization

def bench_int8_switch(quick: bool) -> dict:
    """foundation.int8_switch_vs_fp32_requant: ResNet-18, 19 layers, INT8 codes → 4 bits."""
    result = foundation.int8_switch_vs_fp32_requant(rounds=10 if quick else 50)
    details = result["details"]
    headline = details["headline_fused_int8_vs_eager_fp32"]
    detail = {
        "value_is": details["value_is"],
        "layers": details["layers"],
        "weights_switched": details["weights_switched"],
        "headline_fused_int8_vs_eager_fp32": headline,
        "eager_int8_vs_eager_fp32": details["eager_int8_vs_eager_fp32"],
        "compiled_int8_vs_compiled_fp32": details["compiled_int8_vs_compiled_fp32"],
        "fp32_eager_baseline": details["fp32_eager_baseline"],
        "fp32_compiled_baseline": details["fp32_compiled_baseline"],
        "fused_equals_eager_double_round_all_layers": details["fused_equals_eager_double_round_all_layers"],
        "compile_error": details["compile_error"],
        "rounds": details["rounds"],
    }
    rows = {"int8_switch_speedup": row(result["value"], "× faster (FP32 re-quant time ÷ INT8 switch time)", "≥ 10×",
                                       result["value"] >= 10, detail=detail)}
    if headline is not None:
        worst_ms = max(headline[rule]["int8_ms"] for rule in foundation.GOAL_RULES)
        rows["int8_switch_ms"] = row(worst_ms, "ms to switch all 19 ResNet-18 layers INT8 → 4 bits (fused)",
                                     "≤ 10 ms", worst_ms <= 10,
                                     detail={"by_rule": {rule: headline[rule]["int8_ms"] for rule in headline}})
    return rows


# ------------------------------------------------------------------------------- 4. checkpoint size ratio

def bench_checkpoint_size(quick: bool) -> dict:
    """foundation._checkpoint_sizes: bytes of save_int ÷ bytes of torch.save(state_dict), bits (8,6,4,2)."""
    rows = {}
    with tempfile.TemporaryDirectory() as directory:
        for arch in ("resnet20", "resnet18"):
            for keep_first_last in (True, False):
                case = foundation._checkpoint_sizes(arch, keep_first_last, Path(directory))
                name = f"checkpoint_size_ratio_{arch}" + ("" if keep_first_last else "_all_int")
                rows[name] = row(
                    case["ratio"], "× bytes of torch.save(state_dict)", "≤ 0.27", case["ratio"] <= 0.27,
                    detail={"value_is": f"{arch}, bits (8,6,4,2), keep_first_last={keep_first_last}"
                                        + (" (the default: first/last layer FP32)" if keep_first_last else ""),
                            "int_file_bytes": case["int_file_bytes"],
                            "fp32_state_dict_bytes": case["fp32_state_dict_bytes"],
                            "int_file_parts_share_of_ratio": case["int_file_parts_share_of_ratio"]})
    return rows


# --------------------------------------------------------------------------------------- 5. Hessian traces

def bench_hessian(quick: bool) -> dict:
    """labkit.hasb.hessian.hessian_traces on an FP32 ResNet-20 vs one forward+backward over the same images."""
    from labkit.hasb.hessian import default_layers, hessian_traces

    images, probes, batch_size, rounds = (32, 1, 32, 2) if quick else (100, 2, 100, 3)
    torch.manual_seed(0)
    model = build_model("resnet20")
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(images, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (images,), generator=generator)
    layers = default_layers(model, inputs[:2])
    settings = dict(images=images, probes=probes, tolerance=None, batch_size=batch_size)

    def forward_backward():  # what one Hutchinson probe starts from: the loss and its gradient, eval mode
        model.eval()
        model.zero_grad(set_to_none=True)
        for x, y in zip(inputs.split(batch_size), labels.split(batch_size)):
            (F.cross_entropy(model(x), y) * len(y) / images).backward()
        model.zero_grad(set_to_none=True)
        model.train()

    candidates = {
        "hessian_traces_blockwise": lambda: hessian_traces(model, (inputs, labels), **settings),
        "hessian_traces_joint": lambda: hessian_traces(model, (inputs, labels), blockwise=False, **settings),
        "forward_backward": forward_backward,
    }
    forward_backward()  # warm-up
    samples = interleaved_times(candidates, rounds)
    seconds = {name: statistics.median(values) for name, values in samples.items()}
    ratio = paired_ratio(samples["hessian_traces_blockwise"], samples["forward_backward"])
    joint_ratio = paired_ratio(samples["hessian_traces_joint"], samples["forward_backward"])
    default_estimate = seconds["hessian_traces_blockwise"] * (1000 / images) * (7 / probes)
    workload = f"{images} images (batch {batch_size}) × {probes} probe(s), {len(layers)} layers"
    detail = {"workload": workload, "rounds": rounds, "median_s": {k: r3(v) for k, v in seconds.items()},
              "blockwise_ratio_per_probe": r3(ratio / probes),
              "joint_ratio_vs_fwd_bwd": r3(joint_ratio), "joint_ratio_per_probe": r3(joint_ratio / probes),
              "note": "FP32 ResNet-20 (random weights, random 32×32 images: the cost does not depend on them), "
                      "tolerance=None so exactly the stated probes run. blockwise=True is labkit's default (one "
                      "double backward per layer and batch); joint = blockwise=False (one double backward per batch)."}
    return {
        "hessian_traces_resnet20_seconds": row(
            seconds["hessian_traces_blockwise"], f"s for {workload}", REPORT,
            detail={**detail, "estimated_s_at_default_1000_images_7_probes": round(default_estimate, 1),
                    "estimate_is": "linear extrapolation (cost ∝ images × probes) of the measured time"}),
        "hessian_traces_vs_fwd_bwd": row(ratio, "× one forward+backward over the same images", REPORT, detail=detail),
    }


# ------------------------------------------------------------------------------------- 6. search sweep

def bench_search_sweep(quick: bool) -> dict:
    """labkit.hasb.search.sweep over ResNet-20 / ResNet-18 layers (as tests/test_search.py prints it)."""
    from labkit.hasb.cost import layer_costs, total_bitops
    from labkit.hasb.search import default_averages, sweep

    candidates_bits = (8, 6, 4, 2)
    repeats = 1 if quick else 3
    rng = np.random.default_rng(0)
    problems, calls = {}, {}
    for arch, size in (("resnet20", 32), ("resnet18", 224)):
        model = labkit.quantize_model(build_model(arch), example_input=torch.randn(1, 3, size, size))
        layers = list(labkit.quantized_layers(model))
        scores = {name: float(rng.lognormal()) for name in layers}
        costs = layer_costs(model, (3, size, size))
        problems[arch] = {"layers": len(layers), "scores": scores, "costs": costs}
        calls[f"{arch}_average_only"] = lambda scores=scores: sweep(scores, candidates_bits)
        if arch == "resnet20" or not quick:
            budget = total_bitops(costs, dict.fromkeys(scores, 5))
            grid = np.round(np.arange(2, 8.01, 1.0 if quick else 0.25), 10)
            problems[arch]["bitops_grid"] = len(grid)
            calls[f"{arch}_bitops_budget"] = (lambda scores=scores, costs=costs, budget=budget, grid=grid:
                                              sweep(scores, candidates_bits, grid, bitops_budget=budget, costs=costs))
    counts = {}
    samples = {name: [] for name in calls}
    for repeat in range(repeats):  # interleaved repeats
        for name in (list(calls) if repeat % 2 == 0 else list(calls)[::-1]):
            start = time.perf_counter()
            records = calls[name]()
            samples[name].append(time.perf_counter() - start)
            counts[name] = len(records)
    averages = len(default_averages(candidates_bits))
    rows = {}
    for name, values in samples.items():
        arch, kind = name.split("_", 1)
        problem = problems[arch]
        if kind == "average_only":
            what = f"{averages} averages ω = 2…8 step 0.05, with neighbour SubNets"
            row_name = f"search_sweep_{arch}_seconds"
        else:
            what = f"{problem['bitops_grid']} averages ω = 2…8 + a BitOPs budget (all layers at 5 bits), with neighbours"
            row_name = f"search_sweep_{arch}_bitops_seconds"
        rows[row_name] = row(statistics.median(values), f"s per full sweep ({problem['layers']} layers × 4 bit-widths)",
                             REPORT, detail={"sweep": what, "records": counts[name], "repeats": repeats,
                                             "samples_s": [r3(v) for v in values],
                                             "scores": "random log-normal per layer (as tests/test_search.py)"})
    return rows


# ---------------------------------------------------------------------------------------- 7. notebooks

_NOTEBOOK_CHILD = r"""
import json, re, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient
path, timeout = Path(sys.argv[1]), int(sys.argv[2])
nb = nbformat.read(path, as_version=4)
kernel = (nb.metadata.get("kernelspec") or {}).get("name", "python3")
start = time.perf_counter()
error = None
try:
    NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}}).execute()
except Exception as exc:
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")  # no terminal colours
    error = text if len(text) <= 1500 else text[:500] + " … " + text[-1000:]
code_cells = sum(c.cell_type == "code" for c in nb.cells)
print("@@RESULT@@" + json.dumps({"seconds": time.perf_counter() - start, "error": error, "code_cells": code_cells}))
"""


def bench_notebooks(quick: bool, timeout: int, threads: int, directory: Path = ROOT / "notebooks") -> dict:
    """Executes every notebooks/*.ipynb with nbclient under LABKIT_PROFILE=smoke; seconds per notebook."""
    rows = {}
    environment = {**os.environ, "LABKIT_PROFILE": "smoke", "OMP_NUM_THREADS": str(threads)}
    for path in sorted(Path(directory).glob("*.ipynb")):
        name = f"notebook_{path.stem}_seconds"
        unit = "s to execute (nbclient, LABKIT_PROFILE=smoke, kernel start included)"
        goal = f"≤ {NOTEBOOK_GOAL_S:.0f} s"
        start = time.perf_counter()
        # Its own process group, ended on a timeout; the kernel (jupyter_client starts it in a session of its
        # own) watches its parent, the runner (JPY_PARENT_PID), and exits when the runner is gone.
        child = subprocess.Popen([sys.executable, "-c", _NOTEBOOK_CHILD, str(path), str(timeout)], env=environment,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, 9)
            except ProcessLookupError:
                pass
            child.communicate()
            rows[name] = row(time.perf_counter() - start, unit, goal, False,
                             error=f"timed out after {timeout} s (the whole notebook)")
            continue
        lines = [line for line in stdout.splitlines() if line.startswith("@@RESULT@@")]
        if not lines:
            rows[name] = row(time.perf_counter() - start, unit, goal, False,
                             error=f"runner exited {child.returncode}: {stderr[-1000:]}")
            continue
        outcome = json.loads(lines[-1][len("@@RESULT@@"):])
        entry = row(outcome["seconds"], unit, goal, outcome["error"] is None and outcome["seconds"] <= NOTEBOOK_GOAL_S,
                    detail={"code_cells": outcome["code_cells"], "notebook_timeout_s": timeout})
        if outcome["error"]:
            entry["error"] = outcome["error"]
        rows[name] = entry
    if not rows:
        rows["notebooks"] = row(None, "", REPORT, error="no notebooks/*.ipynb found")
    return rows


# ------------------------------------------------------------------------------------------ 8. scaling

SCALING_MODELS = {  # arch: (input size, batch, classes) — ImageNet models at small sizes to fit the CPU
    "resnet20": (32, 128, 10),
    "resnet18": (112, 8, 1000),
    "resnet50": (64, 8, 1000),
}
BIT_SETS = {1: (8,), 2: (8, 4), 3: (8, 6, 4), 4: (8, 6, 4, 2)}


def bench_scaling(quick: bool) -> dict:
    """One joint step as the bit set grows (ResNet-20) and as the model grows (ResNet-20 → 18 → 50), on the default
    fake-quant path."""
    rounds = 2 if quick else 7
    use_fake_quant_path(DEFAULT_PATH)
    models = dict(SCALING_MODELS)
    if quick:
        models = {"resnet20": (32, 16, 10), "resnet18": (64, 2, 1000), "resnet50": (64, 2, 1000)}
    candidates, shapes = {}, {}
    with tempfile.TemporaryDirectory() as out_dir:
        for arch, (size, batch, classes) in models.items():
            data = training.RandomImages(batch, size, classes)
            indices = torch.arange(batch)
            bit_counts = (1, 2, 3, 4) if arch == "resnet20" else (1, 4)
            for key, bits in [("fp32", None)] + [(f"q{k}", BIT_SETS[k]) for k in bit_counts]:
                trainer = training.make_trainer(bits, out_dir, arch, size, batch, classes)
                candidates[f"{arch}_{key}"] = (lambda t=trainer, d=data, i=indices:
                                               t.train_step(d.images, d.labels, i, epoch=0))
            shapes[arch] = {"input": f"{batch}×3×{size}×{size}", "classes": classes,
                            "parameters_M": round(sum(p.numel() for p in build_model(arch, num_classes=classes)
                                                      .parameters()) / 1e6, 2)}
        warm_start = time.perf_counter()
        for call in candidates.values():
            call()
        warm_up_s = time.perf_counter() - warm_start
        samples = interleaved_times(candidates, rounds)
    ms = {name: round(median_ms(values), 1) for name, values in samples.items()}

    def ratio(a: str, b: str, divide: float = 1.0) -> float:
        return r3(paired_ratio(samples[a], samples[b]) / divide)

    rows = {}
    arch = "resnet20"
    size, batch, _ = models[arch]
    for k, bits in BIT_SETS.items():
        rows[f"scaling_bits_{k}"] = row(
            ratio(f"{arch}_q{k}", f"{arch}_fp32", k), f"× (joint step of {k} bit-width(s) ÷ {k} FP32 steps)",
            "≤ 1.15", ratio(f"{arch}_q{k}", f"{arch}_fp32", k) <= 1.15,
            detail={"bits": list(bits), "model": f"{arch}, {shapes[arch]['input']}",
                    "goal_is": "the joint-step goal (≤ 1.15 × one FP32 step per bit-width) applied to k bit-widths",
                    "vs_fp32_step": ratio(f"{arch}_q{k}", f"{arch}_fp32"),
                    "vs_1_precision_step": ratio(f"{arch}_q{k}", f"{arch}_q1"),
                    "per_bit_width_vs_1_precision": ratio(f"{arch}_q{k}", f"{arch}_q1", k),
                    "joint_step_ms": ms[f"{arch}_q{k}"], "fp32_step_ms": ms[f"{arch}_fp32"], "rounds": rounds})
    for arch in models:
        value = ratio(f"{arch}_q4", f"{arch}_fp32", 4)
        rows[f"scaling_model_{arch}"] = row(
            value, "× (joint {8,6,4,2} step ÷ 4 FP32 steps)", "≤ 1.15", value <= 1.15,
            detail={**shapes[arch], "bits": [8, 6, 4, 2],
                    "one_precision_vs_fp32": ratio(f"{arch}_q1", f"{arch}_fp32"),
                    "four_vs_one_precision": ratio(f"{arch}_q4", f"{arch}_q1"),
                    "ms": {key: ms[f"{arch}_{key}"] for key in ("fp32", "q1", "q4")}, "rounds": rounds})
    note = ("JointTrainer.train_step (Alg. A.2: forward, backward and an Adam step per bit-width; ALRS), "
            f"{DEFAULT_PATH} fake-quant path (the default), random images; ImageNet models at small inputs and tiny "
            "batches to fit 2 CPU cores, where the per-step weight fake-quant and optimizer work (∝ parameters) weigh "
            f"more than at a real batch size. All {len(candidates)} steps run round-robin in one loop; warm-up "
            f"{warm_up_s:.0f} s.")
    for entry in rows.values():
        entry["detail"]["note"] = note
    rows["scaling_model_resnet20"]["detail"]["same_measurement_as"] = "scaling_bits_4"
    return rows


# --------------------------------------------------------------------------------------------- profile

def bench_profile(quick: bool, out_path: Path) -> dict:
    """torch.profiler and cProfile over one eager joint {8,6,4,2} step of ResNet-20 → profile_joint_step.txt."""
    from torch.profiler import ProfilerActivity, profile

    use_compile(False)
    batch = 32 if quick else 128
    data = training.RandomImages(batch)
    indices = torch.arange(batch)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = training.make_trainer((8, 6, 4, 2), out_dir, batch_size=batch, compile_quant=False)  # eager

        def step():
            trainer.train_step(data.images, data.labels, indices, epoch=0)

        step()
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        step()
        profiler.disable()
        step_s = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    fakequant = {name: 0.0 for name in ("forward", "backward")}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        if filename.endswith(os.path.join("labkit", "quant", "lsq.py")) and function in fakequant:
            fakequant[function] += cumulative
    share = sum(fakequant.values()) / step_s
    text = io.StringIO()
    text.write(f"One eager joint {{8,6,4,2}} training step (JointTrainer.train_step, Alg. A.2), ResNet-20, batch {batch}, "
               f"random 32×32 images, {torch.get_num_threads()} thread(s)\n{hardware_summary()}\n"
               f"written by benchmarks/run.py (group profile) on {datetime.datetime.now().isoformat(timespec='seconds')}\n\n")
    text.write("== torch.profiler: ops by self CPU time ==\n")
    text.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    for order in ("cumulative", "tottime"):
        text.write(f"\n\n== cProfile (another step, {step_s:.2f} s under the profiler): top 30 by {order} ==\n")
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats(order).print_stats(30)
        text.write(buffer.getvalue())
    text.write(f"\nfake-quant share of the step (cumulative time in labkit/quant/lsq.py _FakeQuantize.forward + "
               f".backward ÷ step time under cProfile): {share:.3f} "
               f"(forward {fakequant['forward']:.3f} s, backward {fakequant['backward']:.3f} s)\n")
    out_path.write_text(text.getvalue())
    return {"profile_fakequant_share": row(
        share, "fraction of one eager joint step spent in the weight/activation fake-quant autograd function",
        REPORT, detail={"file": str(out_path.relative_to(ROOT)) if out_path.is_relative_to(ROOT) else str(out_path),
                        "step_s_under_cprofile": r3(step_s),
                        "fakequant_forward_s": r3(fakequant["forward"]),
                        "fakequant_backward_s": r3(fakequant["backward"]), "batch": batch})}


# --------------------------------------------------------------- data loading: epoch slice ÷ bare steps

def bench_data_loading(quick: bool) -> dict:
    """loading.measure: FP32 ResNet-20 steps (batch 128) through the loader ÷ the same steps on premade batches."""
    chunk, rounds = (2, 3) if quick else (5, 12)
    result = loading.measure(chunk=chunk, rounds=rounds)
    rows = {}
    for mode, label in (("fp32", "plain FP32"), ("bf16_autocast", "FP32 under bf16 autocast")):
        entry = result[mode]
        common = {"chunk_steps": chunk, "rounds": rounds, "batch": result["batch"], "train_set": result["train_set"],
                  "chunk_s": entry["chunk_s"], "steps_per_s": entry["steps_per_s"],
                  "loader_only_ms_per_batch": result["loader_only_ms_per_batch"],
                  "cifar10_train_load_s": result["cifar10_train_load_s"],
                  "estimates_from_loader_only": {name: entry[f"{name}_vs_bare_from_loader_only"]
                                                 for name in ("whole_batches", "per_image_jpeg")}}
        value = entry["whole_batches_vs_bare"]
        rows[f"loader_vs_bare_steps_{mode}"] = row(
            value, "× (training steps through make_loader ÷ the same steps on premade batches)", "≤ 1.1",
            value <= 1.1,
            detail={"value_is": f"chunks of {chunk} SGD steps of a {label} ResNet-20 (batch {result['batch']}) "
                                "through the default loader (CIFAR-10 in memory, whole batches) ÷ bare chunks; "
                                f"median of {rounds} per-round ratios", **common})
        rows[f"loader_per_image_vs_bare_steps_{mode}"] = row(
            entry["per_image_jpeg_vs_bare"], "× (training steps through the per-image JPEG loader ÷ bare steps)",
            REPORT,
            detail={"value_is": f"the same {label} chunks through make_loader(cifar10('train', in_memory=False), "
                                f"whole_batches=False): JPEG decode + augmentation per image in "
                                f"{result['workers_per_image']} worker process(es)", **common})
    return rows


# ------------------------------------------------- integer switching: INT8 → b-bit ÷ a copy of the int8 bytes

def bench_int_switch_floor(quick: bool) -> dict:
    """switching.measure: all ResNet-18 layers INT8 → b-bit ÷ a plain copy of the same int8 bytes."""
    result = switching.measure(rounds=10 if quick else 40)
    rows = {}
    for rule, entry in result["by_rule"].items():
        value = entry["fast_vs_copy"]
        rows[f"int8_switch_vs_copy_{rule}"] = row(
            value, "× (INT8 → 4-bit switch of all ResNet-18 layers ÷ copying the same int8 bytes)", "≤ 2",
            value <= 2, detail={"value_is": result["value_is"], **entry, **result["common"]})
    return rows


# ------------------------------------------------------------------------------------------------ driver

SPEED_RUNNERS = {  # issue 11's table (speed.py), default path with the other paths beside it, 1 and 2 threads
    "speed_fakequant": speed.fakequant_section,
    "speed_joint": speed.joint_step_section,
    "speed_joint_trainer": speed.joint_trainer_section,
    "switchboard": speed.switchboard_section,
    "switchboard_browser": speed.switchboard_browser_section,
    "speed_bf16_accuracy": speed.bf16_accuracy_section,
}
GROUPS = tuple(SPEED_RUNNERS) + ("fakequant", "int8_switch", "int_switch_floor", "checkpoint_size", "hessian", "search_sweep",
          "scaling", "data_loading", "profile", "notebooks")


def _format_value(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}"


def format_table(results: dict) -> str:
    meta = results.get("_meta", {})
    lines = [f"labkit benchmarks: `{meta.get('command')}` ({meta.get('mode')} run, {meta.get('seconds', 0):.0f} s, "
             f"finished {meta.get('finished')})",
             f"hardware: {meta.get('hardware')}",
             f"{meta.get('threads')} torch thread(s); load average at start/end: "
             f"{meta.get('load_start')} / {meta.get('load_end')}"]
    previous = meta.get("previous_meta")
    if previous:
        lines.append(f"rows of groups it did not run are kept from `{previous.get('command')}` "
                     f"({previous.get('mode')} run, {previous.get('seconds', 0):.0f} s, finished {previous.get('finished')}; "
                     "each row's `measured` stamp says when)")
    lines.append("")
    rows = {name: entry for name, entry in results.items() if not name.startswith("_")}
    name_width = max([len(name) for name in rows] + [4])
    goal_width = max([len(entry["goal"]) for entry in rows.values()] + [4])
    header = f"{'name':{name_width}} {'value':>9}  {'goal':{goal_width}} {'met':4} unit"
    lines += [header, "-" * max(len(header) + 40, 100)]
    for name, entry in rows.items():
        met = "" if "met" not in entry else "yes" if entry["met"] else "NO"
        if "error" in entry:
            met = "ERR"
        lines.append(f"{name:{name_width}} {_format_value(entry['value']):>9}  {entry['goal']:{goal_width}} {met:4} "
                     f"{entry['unit']}")
        if "error" in entry:
            error_lines = [line for line in (entry["error"] or "").splitlines() if line.strip()]
            lines.append(f"{'':{name_width}}   error: {error_lines[-1][:200] if error_lines else ''}")  # the exception line
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller inputs (~3 minutes)")
    parser.add_argument("--only", action="append", default=[],
                        help=f"comma-separated groups to run (repeatable): {', '.join(GROUPS)}")
    parser.add_argument("--skip-notebooks", action="store_true", help="do not execute the notebooks")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see README)")
    parser.add_argument("--notebook-timeout", type=int, default=None,
                        help="seconds per notebook (default 600, --quick 300)")
    args = parser.parse_args(argv)
    selected = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = [name for name in selected if name not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    args.groups = [name for name in GROUPS if (not selected or name in selected)
                   and not (name == "notebooks" and args.skip_notebooks)]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    timeout = args.notebook_timeout or (300 if args.quick else 600)
    runners = {
        "fakequant": lambda: bench_fakequant(args.quick),
        **{group: (lambda function=function: function(args.quick)) for group, function in SPEED_RUNNERS.items()},
        "int8_switch": lambda: bench_int8_switch(args.quick),
        "int_switch_floor": lambda: bench_int_switch_floor(args.quick),
        "data_loading": lambda: bench_data_loading(args.quick),
        "checkpoint_size": lambda: bench_checkpoint_size(args.quick),
        "hessian": lambda: bench_hessian(args.quick),
        "search_sweep": lambda: bench_search_sweep(args.quick),
        "scaling": lambda: bench_scaling(args.quick),
        "profile": lambda: bench_profile(args.quick, HERE / "profile_joint_step.txt"
                                         if args.out.resolve() == DEFAULT_OUT else args.out.with_suffix(".profile.txt")),
        "notebooks": lambda: bench_notebooks(args.quick, timeout, args.threads),
    }
    results, group_seconds = {}, {}
    for group in args.groups:
        print(f"[{group}] running …", flush=True)
        group_start = time.perf_counter()
        try:
            rows = runners[group]()
        except Exception as error:  # one broken group must not hide the others
            rows = {group: row(None, "", REPORT, error=f"{type(error).__name__}: {error}",
                               detail={"traceback": traceback.format_exc()[-3000:]})}
        group_seconds[group] = round(time.perf_counter() - group_start, 1)
        stamp = {"group": group, "mode": "quick" if args.quick else "full",
                 "measured": datetime.datetime.now().isoformat(timespec="seconds")}
        for name, entry in rows.items():
            entry.update(stamp)
            results[name] = entry
        print(f"[{group}] {group_seconds[group]:.0f} s: "
              + ", ".join(f"{name}={_format_value(entry['value'])}" for name, entry in rows.items()), flush=True)
    use_fake_quant_path(DEFAULT_PATH)
    meta = {
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "mode": "quick" if args.quick else "full",
        "hardware": hardware_summary(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "groups": args.groups,
        "group_seconds": group_seconds,
        "seconds": round(time.perf_counter() - started, 1),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    output = {"_meta": meta}
    if args.out.exists() and len(args.groups) < len(GROUPS):
        # a partial run (--only / --skip-notebooks) updates its rows and keeps the others (each row has its stamp)
        try:
            previous = json.loads(args.out.read_text())
        except (OSError, ValueError):
            previous = {}
        merged_groups = set(args.groups)
        # rows of groups that no longer exist (e.g. joint_step, now speed_joint_trainer) are dropped
        output.update({name: entry for name, entry in previous.items() if not name.startswith("_")
                       and entry.get("group") in GROUPS and entry.get("group") not in merged_groups})
        meta["previous_meta"] = {k: v for k, v in previous.get("_meta", {}).items() if k != "previous_meta"}
    output.update(results)
    ordered = {"_meta": meta}
    for group in GROUPS:  # rows in group order, whichever run measured them
        ordered.update({name: entry for name, entry in output.items()
                        if not name.startswith("_") and entry.get("group") == group})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n")
    table = format_table(ordered)
    print()
    print(table)
    if args.out.resolve() == DEFAULT_OUT:
        (HERE / "results.txt").write_text(table + "\n")
    return ordered


if __name__ == "__main__":
    main()
