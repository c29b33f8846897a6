"""Deployment facts of an exported model: file size, weight bytes, BitOPs and onnxruntime latency per precision.

What a user asks before shipping a precision (issue 14, item 4): how large is the file, how many bytes are the
weights, how many BitOPs does one image cost (METHOD.md §6: MACs × weight bits × activation bits), and how fast
does a standard runtime run it. :func:`export_precisions` writes the files (one per trained bit-width with
:func:`labkit.export.export_onnx`, plus the switchable one of :mod:`labkit.export_switchable`),
:func:`size_facts` reads their sizes and :func:`latency_facts` times them side by side in one process.

The honest part about latency: onnxruntime's CPU provider runs these QDQ graphs by dequantizing — every
``DequantizeLinear`` turns the INT2/INT4/INT8 weight codes into float32 and the convolutions run in float
(the activation ``QuantizeLinear → Clip → DequantizeLinear`` chains are extra float work). So time does not
fall with the bit-width: the 2-bit file is smaller on disk, not faster. What would make it fall: integer
kernels behind the QDQ pattern — onnxruntime fuses ``DequantizeLinear → Conv → QuantizeLinear`` into an int8
``QLinearConv`` only when the convolution's output is itself quantized (here a float batch norm follows it; it
would have to be folded into the conv and the output requantized), and below 8 bits a CPU needs packed
low-bit kernels (bit-serial / lookup-table GEMMs) or an accelerator with INT4/INT2 arithmetic; memory-bound
cases (large models, small batches) gain from the smaller weights first.
"""
from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from labkit.convert import quantized_layers, trained_bits
from labkit.errors import LabkitError

FP32_LABEL, SWITCHABLE_LABEL = "FP32", "switchable"


def export_precisions(model: nn.Module, folder, bits=None, switchable: bool = True,
                      fp32_model: nn.Module | None = None, example_input: torch.Tensor | None = None) -> dict:
    """Write one ONNX file per precision into ``folder``; return ``{label: path}``.

    Labels: ``"8-bit"``, ``"6-bit"``, … (``bits``: default every trained bit-width), ``"switchable"`` (one
    file for all of them) and, with ``fp32_model``, ``"FP32"`` — the float model as a plain ONNX graph, the
    reference a user would otherwise ship.
    """
    from labkit.export import default_example_input, export_onnx
    from labkit.export_switchable import export_switchable_onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    example = default_example_input(model) if example_input is None else example_input
    files = {}
    if fp32_model is not None:
        files[FP32_LABEL] = export_fp32_onnx(fp32_model, folder / "fp32.onnx", example)
    for value in (trained_bits(model) if bits is None else bits):
        files[f"{value}-bit"] = export_onnx(model, folder / f"w{value}.onnx", bits=value, example_input=example)
    if switchable:
        files[SWITCHABLE_LABEL] = export_switchable_onnx(model, folder / "switchable.onnx", example_input=example)
    return files


def export_fp32_onnx(model: nn.Module, path, example_input: torch.Tensor | None = None) -> Path:
    """The float model as a plain ONNX graph (opset 17): the reference a user would otherwise ship."""
    import warnings

    from labkit.export import default_example_input

    from labkit.export import INPUT_NAME, OUTPUT_NAME

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = default_example_input(model) if example_input is None else example_input
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return path


def _weight_bytes(path: Path) -> tuple[int, str]:
    """(bytes of the weights of the conv/linear layers as stored in the file, their element types)."""
    import onnx

    graph = onnx.load(str(path))
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT4: "int4",
             onnx.TensorProto.INT2: "int2"}
    readers = {node.input[1] for node in graph.graph.node if node.op_type in ("Conv", "Gemm") and len(node.input) > 1}
    producers = {out: node for node in graph.graph.node for out in node.output}
    initializers = {init.name: init for init in graph.graph.initializer}
    total, kinds, seen = 0, set(), set()
    for name in readers:
        stack = [name]
        while stack:  # from the Conv/Gemm weight input back to the initializers it is computed from
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in initializers:
                init = initializers[current]
                if len(init.dims) > 1:
                    total += len(init.raw_data) if init.HasField("raw_data") else init.ByteSize()
                    kinds.add(names.get(init.data_type, str(init.data_type)))
            elif current in producers:
                stack.extend(producers[current].input)
    return total, "/".join(sorted(kinds))


def size_facts(model: nn.Module, files: dict, example_input: torch.Tensor | None = None) -> list[dict]:
    """Per file: ``label``, ``file_bytes``, ``weight_bytes`` (every conv/linear weight as stored, the FP32
    first and last layers included), ``weight_types`` and ``gbitops`` (BitOPs per image / 10^9, METHOD.md §6;
    for the switchable file a list, one per trained bit-width; the FP32 file at 32 × 32 bits)."""
    from labkit.export import default_example_input
    from labkit.hasb.cost import FLOAT_BITS, layer_costs, total_bitops

    example = default_example_input(model) if example_input is None else example_input
    costs = layer_costs(model, example)
    names = list(quantized_layers(model))
    rows = []
    for label, path in files.items():
        weight_bytes, kinds = _weight_bytes(Path(path))
        if label == FP32_LABEL:
            gbitops = total_bitops(costs, {}) / 1e9
        elif label == SWITCHABLE_LABEL:
            gbitops = {b: total_bitops(costs, {name: b for name in names}) / 1e9 for b in trained_bits(model)}
        else:
            bits = int(label.split("-")[0])
            gbitops = total_bitops(costs, {name: bits for name in names}) / 1e9
        rows.append({"label": label, "file_bytes": Path(path).stat().st_size, "weight_bytes": weight_bytes,
                     "weight_types": kinds, "gbitops": gbitops, "float_bits": FLOAT_BITS})
    return rows


def _runners(files: dict, threads: int, switchable_bits) -> dict:
    """``{row label: callable(images) -> logits}``: one onnxruntime session per file, the switchable one per bit."""
    import onnxruntime

    from labkit.export_switchable import SwitchableSession

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    runners = {}
    for label, path in files.items():
        if label == SWITCHABLE_LABEL:
            session = SwitchableSession(path, options=options)
            for bits in switchable_bits or session.bit_set:
                runners[f"switchable @ {bits}-bit"] = (lambda images, s=session, b=bits: s.run(images, b))
        else:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            runners[label] = (lambda images, s=session, n=name: s.run(None, {n: images})[0])
    return runners


ROUNDS_OF_PROFILE = {"smoke": 2, "laptop": 5, "paper": 15}


def latency_facts(files: dict, image_shape=(3, 32, 32), batch_sizes=(1, 64), rounds: int | None = None,
                  min_seconds: float = 0.02, threads: int = 1, switchable_bits=None) -> dict:
    """Median onnxruntime latency (ms per batch) of every file, at every batch size, measured side by side.

    All sessions live in this one process; within a batch size the runners take turns round-robin (the order
    reversed every other round), each turn repeating its call until ``min_seconds`` pass, after one warm-up
    call each; every figure is the median over ``rounds`` (default: by ``$LABKIT_PROFILE``, 2 / 5 / 15 at
    smoke / laptop / paper). ``ratio_to`` gives each runner's median per-round
    ratio to the first fixed-precision file (``"8-bit"`` when present). Returns ``{"ms": {label: {batch: ms}},
    "ratio": {label: {batch: ratio}}, "reference": label, "rounds", "threads"}``.
    """
    import numpy as np

    if rounds is None:
        from labkit.config import profile

        rounds = ROUNDS_OF_PROFILE.get(profile(), 5)
    if rounds < 1:
        raise LabkitError(f"rounds={rounds}: time at least one round.")
    runners = _runners(files, threads, switchable_bits)
    reference = "8-bit" if "8-bit" in runners else next(iter(runners))
    generator = np.random.default_rng(0)
    ms: dict = {label: {} for label in runners}
    ratio: dict = {label: {} for label in runners}
    for batch in batch_sizes:
        images = generator.standard_normal((batch, *image_shape)).astype(np.float32)
        repeats = {}
        for label, run in runners.items():  # warm-up, and how many calls fill min_seconds
            run(images)
            start = time.perf_counter()
            run(images)
            repeats[label] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
        samples = {label: [] for label in runners}
        order = list(runners)
        gc.collect()
        for round_index in range(rounds):
            for label in order if round_index % 2 == 0 else order[::-1]:
                run, count = runners[label], repeats[label]
                start = time.perf_counter()
                for _ in range(count):
                    run(images)
                samples[label].append((time.perf_counter() - start) / count)
        for label in runners:
            ms[label][batch] = statistics.median(samples[label]) * 1e3
            ratio[label][batch] = statistics.median(a / b for a, b in zip(samples[label], samples[reference]))
    return {"ms": ms, "ratio": ratio, "reference": reference, "rounds": rounds, "threads": threads}


def facts_table(sizes: list[dict], latency: dict | None = None) -> str:
    """A Markdown table of :func:`size_facts` rows (and :func:`latency_facts` columns when given)."""
    batches = sorted({b for row in (latency or {}).get("ms", {}).values() for b in row})
    header = ["file", "file size (KiB)", "weight bytes (KiB)", "weight type", "GBitOPs / image"]
    header += [f"batch {b} (ms)" for b in batches] + [f"batch {b} ÷ {latency['reference']}" for b in batches]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sizes:
        gbitops = row["gbitops"]
        labels = [row["label"]]
        if isinstance(gbitops, dict):
            labels = [f"switchable @ {b}-bit" for b in gbitops]
        for position, label in enumerate(labels):
            first = position == 0
            value = gbitops[int(label.split("@ ")[1].split("-")[0])] if isinstance(gbitops, dict) else gbitops
            cells = [label if not isinstance(gbitops, dict) else f"{label} (one file)",
                     f"{row['file_bytes'] / 1024:.1f}" if first else "″",
                     f"{row['weight_bytes'] / 1024:.1f}" if first else "″",
                     row["weight_types"] if first else "″", f"{value:.3f}"]
            for b in batches:
                cells.append(f"{latency['ms'][label][b]:.2f}" if label in latency["ms"] else "")
            for b in batches:
                cells.append(f"{latency['ratio'][label][b]:.2f}" if label in latency["ratio"] else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ tables for notebook 06
def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (render it with ``IPython.display.Markdown``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def storage_table(path, fp32_path) -> str:
    """What the INT checkpoint at ``path`` holds, by kind (:func:`labkit.storage.storage_breakdown`), in KiB,
    with the FP32 checkpoint's size for comparison."""
    from labkit.storage import storage_breakdown

    breakdown = storage_breakdown(path)
    rows = [[kind, f"{size / 1024:.1f}"] for kind, size in breakdown.items()]
    rows.append(["FP32 checkpoint, for comparison", f"{Path(fp32_path).stat().st_size / 1024:.1f}"])
    return markdown_table(["what", "KiB"], rows)


def cost_table(costs, allocations: dict) -> str:
    """Weight storage (KiB) and GBitOPs per image of each ``{name: allocation}`` (METHOD.md §6)."""
    from labkit.hasb.cost import total_bitops, total_size_bits

    rows = [[name, f"{total_size_bits(costs, allocation) / 8 / 1024:.1f}",
             f"{total_bitops(costs, allocation) / 1e9:.3f}"] for name, allocation in allocations.items()]
    return markdown_table(["configuration", "weights (KiB)", "GBitOPs / image"], rows)


def post_training_table(records: list[dict]) -> str:
    """Top-1 accuracy (%) per bit-width of each :func:`labkit.ptq.post_training_comparison` record."""
    bits = list(records[0]["accuracy"])
    rows = [[record["label"]] + [f"{record['accuracy'][b]:.1f}" for b in bits] for record in records]
    return markdown_table(["model"] + [f"{b}-bit" for b in bits], rows)


def export_and_check(model: nn.Module, folder, precisions: dict, batches) -> list[dict]:
    """Export each ``{label: bits}`` (an int or a ``{layer: bits}`` allocation) with :func:`labkit.export.export_onnx`
    and compare it with PyTorch in onnxruntime on ``batches`` (:func:`labkit.export.verify_onnx`); one row each:
    ``label``, ``path``, the :func:`~labkit.export.qdq_summary` and the verification result."""
    from labkit.export import export_onnx, qdq_summary, verify_onnx

    rows = []
    for label, bits in precisions.items():
        path = export_onnx(model, Path(folder) / f"{label.replace(' ', '-').replace(',', '')}.onnx", bits=bits)
        rows.append({"label": label, "path": path, "summary": qdq_summary(path),
                     "check": verify_onnx(model, path, batches, bits=bits)})
    return rows


def check_table(rows: list[dict]) -> str:
    """The :func:`export_and_check` rows as a Markdown table: sizes, weight types and agreement with PyTorch."""
    table = []
    for row in rows:
        summary, check = row["summary"], row["check"]
        types = ", ".join(f"{count} × {kind.upper()}" for kind, count in sorted(summary["weight_types"].items()))
        table.append([row["label"], f"{summary['bytes'] / 1024:.1f}", f"{summary['weight_bytes'] / 1024:.1f}", types,
                      summary["opset"], f"{100 * check['top1_agreement']:.1f} %", f"{check['max_abs_diff']:.3g}",
                      f"{check['max_abs_logit']:.3g}",
                      f"{check['activation_code_mismatches']} of {check['activation_codes']:,}"])
    return markdown_table(["file", "size (KiB)", "quantized weights (KiB)", "weight tensors", "opset",
                           "top-1 agreement", "max abs logit diff", "max abs logit", "activation codes differing"],
                          table)
