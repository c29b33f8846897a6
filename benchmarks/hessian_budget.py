"""How small a Hessian budget (images × probes) still ranks ResNet-20's layers as a big one does (issue 13 item 4).

On the shipped FP32 CIFAR-10 ResNet-20 (``data/checkpoints/cifar10-resnet20-fp32.pt``), un-augmented training
images in file order (what notebook 04 reads), blockwise Hutchinson as :func:`labkit.hasb.hessian_traces` does it:
one Rademacher v per probe for every batch of the probe, each layer's own Hessian block.

Every (probe, batch of 64 images) sample vᵀH_batch v is computed once; an estimate for n images and p probes is
then the mean over the first p probes of the image-weighted mean over the first n/64 batches, exactly the
estimator of ``hessian_traces(images=n, probes=p, tolerance=None)``. Budgets are drawn from images 0–511 and
probes 0–2; the reference is independent of them: images 512–1535 and 4 other probes (4,096 image-probes). Its
own reliability is the agreement of its two disjoint halves (images 512–1023 × probes 0–1 against 1024–1535 ×
probes 2–3). Reported per budget: Spearman ρ with the reference, the layers whose "sensitive" label (≥ mean, the
paper's rule) differs, how many layers the ILP gives another bit at ω = 3 and 4 ({8,6,4,2}), and CPU seconds.

What the noise comes from: 12 more probes on the first 64 images give split-half agreements (probes 0..k−1 against
k..2k−1, same images) for k = 1…6; the same 3 probes on images 0–255 and 256–511 give the image-to-image agreement.

Run: ``OMP_NUM_THREADS=1 LABKIT_DATA=... python benchmarks/hessian_budget.py`` (about 3 CPU minutes).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labkit.checkpoints import load_shipped
from labkit.data import cifar10
from labkit.hasb.hessian import _batches, _layer_weights, _probe, default_layers
from labkit.hasb.roulette import sensitive_layers
from labkit.hasb.search import search_bits

BATCH = 64
BUDGET_IMAGES, BUDGET_PROBES = 512, 3  # the budgets compared are (n ≤ 512 images) × (p ≤ 3 probes)
REFERENCE_IMAGES, REFERENCE_PROBES = 1024, 4
EXTRA_PROBES = 12  # on the first batch only
BUDGETS = [(64, 1), (64, 2), (128, 1), (128, 2), (128, 3), (256, 1), (256, 2), (256, 3), (512, 1),
           (512, 3)]


class _Silent:
    def update(self, n=1):
        pass


def samples(model, batches, weights, seeds, blockwise=True):
    """S[probe, batch, layer] = vᵀH_batch v, the same v (seeded per probe) for every batch of a probe."""
    out = np.zeros((len(seeds), len(batches), len(weights)))
    for p, seed in enumerate(seeds):
        for b, batch in enumerate(batches):
            generator = torch.Generator().manual_seed(seed)
            values = _probe(model, weights, [batch], F.cross_entropy, torch.device("cpu"), torch.float32,
                            generator, blockwise, _Silent())
            out[p, b] = list(values.values())
    return out


def average_hmt(block, parameters):
    """|mean over probes of the mean over batches| / parameters, per layer (batches are all 64 images)."""
    return np.abs(block.mean(axis=(0, 1))) / parameters


def spearman(a, b):
    ranks = lambda x: np.argsort(np.argsort(x))
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def compare(names, estimate, reference):
    as_dict = lambda v: dict(zip(names, map(float, v)))
    sensitive = set(sensitive_layers(as_dict(estimate))) ^ set(sensitive_layers(as_dict(reference)))
    moved = {}
    for omega in (3.0, 4.0):
        a, r = search_bits(as_dict(estimate), (8, 6, 4, 2), omega), search_bits(as_dict(reference), (8, 6, 4, 2), omega)
        moved[omega] = sum(a[n] != r[n] for n in names)
    return {"spearman": round(spearman(estimate, reference), 3), "sensitive_label_differs": sorted(sensitive),
            "ilp_layers_moved_at_3_bits": moved[3.0], "ilp_layers_moved_at_4_bits": moved[4.0]}


def main(out=Path(__file__).with_name("hessian_budget_results.json")):
    torch.manual_seed(0)
    model = load_shipped("cifar10-resnet20-fp32").eval()
    data = cifar10("train", transform=cifar10("test").transform)  # un-augmented, as notebook 04
    batches = _batches(data, BUDGET_IMAGES + REFERENCE_IMAGES, BATCH)
    budget_batches, reference_batches = batches[:BUDGET_IMAGES // BATCH], batches[BUDGET_IMAGES // BATCH:]
    names = default_layers(model, batches[0][0])
    weights = _layer_weights(model, names)
    parameters = np.array([w.numel() for w in weights.values()])
    for w in weights.values():
        w.requires_grad_(True)
    cache = out.with_suffix(".npz")  # the raw samples: a rerun only re-reports
    if cache.is_file():
        stored = np.load(cache)
        budget, reference, joint, extra = stored["budget"], stored["reference"], stored["joint"], stored["extra"]
        per_image_probe, per_image_probe_joint = float(stored["per_image_probe"]), float(stored["per_image_probe_joint"])
    else:
        with torch.enable_grad():
            start = time.process_time()
            budget = samples(model, budget_batches, weights, seeds=range(BUDGET_PROBES))
            per_image_probe = (time.process_time() - start) / (BUDGET_IMAGES * BUDGET_PROBES)
            reference = samples(model, reference_batches, weights, seeds=range(100, 100 + REFERENCE_PROBES))
            start = time.process_time()
            joint = samples(model, budget_batches, weights, seeds=range(BUDGET_PROBES), blockwise=False)
            per_image_probe_joint = (time.process_time() - start) / (BUDGET_IMAGES * BUDGET_PROBES)
            extra = samples(model, budget_batches[:1], weights, seeds=range(200, 200 + EXTRA_PROBES))
        np.savez(cache, budget=budget, reference=reference, joint=joint, extra=extra, per_image_probe=per_image_probe,
                 per_image_probe_joint=per_image_probe_joint)
    truth = average_hmt(reference, parameters)
    half = len(reference_batches) // 2
    reliability = compare(names, average_hmt(reference[:2, :half], parameters),
                          average_hmt(reference[2:, half:], parameters))
    rows = []
    for images, probes in BUDGETS:
        block = budget[:probes, :images // BATCH]
        rows.append({"images": images, "probes": probes, "blockwise": True,
                     "cpu_s": round(images * probes * per_image_probe, 1),
                     **compare(names, average_hmt(block, parameters), truth)})
    for images, probes in ((256, 3), (512, 3)):
        rows.append({"images": images, "probes": probes, "blockwise": False,
                     "cpu_s": round(images * probes * per_image_probe_joint, 1),
                     **compare(names, average_hmt(joint[:probes, :images // BATCH], parameters), truth)})
    noise = {"same_3_probes_images_0-255_vs_256-511": compare(names, average_hmt(budget[:, :4], parameters),
                                                                 average_hmt(budget[:, 4:8], parameters))}
    for k in (1, 2, 3, 4, 6):
        noise[f"64_images_{k}_probes_vs_{k}_other_probes"] = compare(
            names, average_hmt(extra[:k], parameters), average_hmt(extra[k:2 * k], parameters))
        rows.append({"images": 64, "probes": k, "blockwise": True, "cpu_s": round(64 * k * per_image_probe, 1),
                     "probes_from": "the 12 extra probes", **compare(names, average_hmt(extra[:k], parameters), truth)})
    result = {"setup": {"model": "shipped cifar10-resnet20-fp32", "images": "CIFAR-10 train, un-augmented, file order",
                        "batch": BATCH, "reference": f"{REFERENCE_IMAGES} other images x {REFERENCE_PROBES} other "
                                                     "probes, blockwise", "threads": torch.get_num_threads(),
                        "cpu_s_per_image_probe": {"blockwise": round(per_image_probe, 4),
                                                  "joint": round(per_image_probe_joint, 4)}},
              "reference_split_half": reliability, "noise_sources": noise, "budgets": rows,
              "reference_ranking": [n for _, n in sorted(zip(truth, names), reverse=True)]}
    out.write_text(json.dumps(result, indent=1))
    for row in rows:
        print(row)
    print("reference halves:", reliability)
    for key, value in noise.items():
        print(key, value)
    return result


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
