"""Deployment facts of the shipped CIFAR-10 ResNet-20: ONNX file size, weight bytes, BitOPs, onnxruntime latency.

Run ``python benchmarks/deployment.py [--quick] [--rounds N] [--threads N] [--out PATH]`` (from any directory).
It exports the FP32 model (plain ONNX, the reference), every trained precision of ``cifar10-resnet20``
(8/6/4/2 bits, :func:`labkit.export.export_onnx`: INT8 / INT4 / INT2 weight initializers) and the switchable
file (:func:`labkit.export_switchable.export_switchable_onnx`), then times every file in onnxruntime's CPU
provider at batch 1 and 64, side by side in this one process (:func:`labkit.deployment.latency_facts`: round-robin,
order reversed every other round, medians over rounds). Writes ``deployment_results.json`` and
``deployment_results.md`` (the Markdown table and the setup) next to this script, or ``--out PATH`` (+ ``.md``).
About 1 minute on a 2-core machine; nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Import labkit from this checkout whatever the current directory is (and even if the installed copy is stale).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import labkit  # noqa: E402
from labkit.checkpoints import load_shipped  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.deployment import export_precisions, facts_table, latency_facts, size_facts  # noqa: E402

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE.parent / "data" / "checkpoints" / "cifar10-resnet20.safetensors"

NOTE = """**Why latency does not fall with the bits here.** onnxruntime's CPU provider runs these QDQ graphs by
dequantizing: each `DequantizeLinear` turns the INT8/INT4/INT2 weight codes into float32 and the convolutions run in
float, and the activation `QuantizeLinear → Clip → DequantizeLinear` chains are extra float work — so every QDQ file
is slower than the plain FP32 graph, and the 2-bit file is smaller on disk, not faster. The switchable file also
re-derives every layer's codes from the INT8 codes on each run (a few hundred small integer ops), which costs a
fixed time per call: large at batch 1, small at batch 64. What would make latency fall with the bits: integer
kernels behind the QDQ pattern — onnxruntime fuses `DequantizeLinear → Conv → QuantizeLinear` into an int8
`QLinearConv` only when a convolution's output is quantized again (here a float batch norm follows each conv; it
would have to be folded into the conv and the output requantized); below 8 bits, packed low-bit kernels
(bit-serial or lookup-table GEMMs) or an accelerator with INT4/INT2 arithmetic; and for the switchable file,
deriving the weights once per switch instead of once per call."""


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, short turns: for checking the script")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per batch size (default 21)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes (default 1,64)")
    parser.add_argument("--out", default=str(HERE / "deployment_results.json"), help="JSON output file")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 21)
    batches = tuple(int(b) for b in args.batches.split(","))
    torch.set_num_threads(args.threads)
    started, load_start = time.time(), load_average()

    model = labkit.load_int(CHECKPOINT)
    fp32 = load_shipped("cifar10-resnet20-fp32")
    with tempfile.TemporaryDirectory(prefix="labkit-deployment-") as folder:
        files = export_precisions(model, folder, fp32_model=fp32)
        sizes = size_facts(model, files)
        latency = latency_facts(files, batch_sizes=batches, rounds=rounds, threads=args.threads,
                                min_seconds=0.005 if args.quick else 0.05)
    import onnx
    import onnxruntime

    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "checkpoint": CHECKPOINT.name, "hardware": hardware_summary(), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "provider": "CPUExecutionProvider",
            "ort_threads": args.threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "rounds": rounds,
            "batches": list(batches), "mode": "quick" if args.quick else "full",
            "load_average_start": load_start, "load_average_end": load_average(),
            "seconds": round(time.time() - started, 1), "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"_meta": meta, "sizes": sizes, "latency": latency}, indent=2) + "\n")
    table = facts_table(sizes, latency)
    setup = (f"Measured {meta['measured']} by `benchmarks/deployment.py` ({meta['mode']}): {meta['checkpoint']}, "
             f"{meta['hardware']}, onnx {meta['onnx']}, onnxruntime {meta['onnxruntime']} "
             f"(CPUExecutionProvider, {args.threads} intra-op thread), random inputs 3×32×32, median of {rounds} "
             f"interleaved rounds per batch size, load average {load_start} → {meta['load_average_end']}. "
             "Weight bytes: every conv/linear weight as stored (the FP32 first and last layers included); BitOPs: "
             "MACs × weight bits × activation bits per image, FP32 layers at 32 × 32.")
    out.with_suffix(".md").write_text(f"# Deployment facts: CIFAR-10 ResNet-20 in onnxruntime\n\n{setup}\n\n{table}\n\n"
                                      f"{NOTE}\n")
    print(setup, "", table, "", NOTE, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
