"""INT-h checkpoints: store only the highest-precision integers, switch precision by integer arithmetic.

``save_int`` writes a safetensors file (no pickle, so loading cannot run code) holding, per quantized
layer, the INT-h weight codes ``q_h`` (Eq. 1) and the FP32 per-channel scale ``s_h``; the per-bit
activation scales and batch norms; the FP32 first/last layers; and, as JSON metadata, the architecture,
the quantization plan and a SHA-256 of every tensor. ``load_int`` rebuilds the model; at any trained
bit-width l its weights come from the stored codes by the integer second rounding (Eq. 2) and the tied
scale ``s_h · 2^Δ`` (Eq. 3), so the rebuilt model gives the same outputs as the trained one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from labkit.convert import apply_plan, quantized_layers, set_bits, to_supernet
from labkit.errors import CheckpointError
from labkit.quant.ranges import check_bits

FORMAT = "labkit-int/1"
CODES_SUFFIX = ".weight_codes"


def _digest(tensors: dict[str, torch.Tensor], arch_json: str, plan_json: str) -> str:
    """SHA-256 over the format, the architecture and plan JSON, and every tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for text in (FORMAT, arch_json, plan_json):
        digest.update(text.encode())
        digest.update(b"\0")
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def int_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of an INT checkpoint: the model's state with every quantized weight replaced by codes."""
    layers = quantized_layers(model)
    if not layers:
        raise CheckpointError("the model has no quantized layers; call labkit.quantize_model(model) first.")
    for name, layer in layers.items():
        if not layer.weight_quantizer.nested:
            raise CheckpointError(
                f"layer {name!r} uses method={layer.method!r}, which keeps FP32 master weights: its lower "
                "precisions cannot be derived from stored integers. save_int stores 'double_rounding', 'floor' "
                "and 'lsq' models; save this one with torch.save(model.state_dict(), path)."
            )
    state = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    for name, layer in layers.items():
        del state[f"{name}.weight"]
        state[name + CODES_SUFFIX] = layer.weight_quantizer.high_codes(layer.weight).detach().cpu().contiguous()
    return pack_per_bit(state, next(iter(layers.values())).bit_set)


PER_BIT_CONTAINERS = ("per_bit", "scale", "offset")  # SwitchableBatchNorm2d.per_bit, per-bit scale/offset dicts


def _per_bit_group(key: str, bits) -> tuple[str, int] | None:
    """``("a.per_bit.*.weight", 4)`` for ``"a.per_bit.4.weight"``; None for a key that is not per bit."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        if parts[i - 1] in PER_BIT_CONTAINERS and parts[i].isdigit() and int(parts[i]) in bits:
            return ".".join(parts[:i] + ["*"] + parts[i + 1:]), int(parts[i])
    return None


def pack_per_bit(state: dict[str, torch.Tensor], bits) -> dict[str, torch.Tensor]:
    """Stack the per-bit copies of a tensor (BN statistics, activation scales) into one tensor per group.

    ``x.per_bit.8.weight`` … ``x.per_bit.2.weight`` become ``x.per_bit.*.weight`` of shape ``[len(bits), …]``
    (high to low): the same numbers, with a much smaller file header than hundreds of tiny tensors.
    """
    groups: dict[str, dict[int, torch.Tensor]] = {}
    packed = {}
    for key, value in state.items():
        group = _per_bit_group(key, bits)
        if group is None:
            packed[key] = value
        else:
            groups.setdefault(group[0], {})[group[1]] = value
    for group, members in groups.items():
        if set(members) == set(bits) and len({(m.shape, m.dtype) for m in members.values()}) == 1:
            packed[group] = torch.stack([members[b] for b in bits])
        else:  # incomplete or ragged: keep them apart
            packed.update({group.replace("*", str(b)): members[b] for b in members})
    return packed


def unpack_per_bit(tensors: dict[str, torch.Tensor], bits) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_per_bit`."""
    unpacked = {}
    for key, value in tensors.items():
        if ".*." in f".{key}." and value.shape[:1] == (len(bits),):
            for index, b in enumerate(bits):
                unpacked[key.replace("*", str(b))] = value[index].clone()
        else:
            unpacked[key] = value
    return unpacked


def save_int(model: torch.nn.Module, path) -> Path:
    """Write the INT-h checkpoint of a multi-precision ``model`` to ``path`` atomically; return the path."""
    plan = getattr(model, "labkit_quant", None)
    if plan is None:
        raise CheckpointError("the model was not made by labkit.quantize_model; quantize it first.")
    state = int_state(model)
    arch_json, plan_json = json.dumps(getattr(model, "labkit_arch", None)), json.dumps(plan)
    metadata = {"format": FORMAT, "arch": arch_json, "plan": plan_json, "sha256": _digest(state, arch_json, plan_json)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(state, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def read_int(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of an INT checkpoint, checked for format and integrity."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: check the path, or write one with labkit.save_int(model, path).")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw_metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} is not a readable labkit INT checkpoint (truncated, corrupted, or another kind of file: "
            f"{error}); re-create it with labkit.save_int from the trained model or its training checkpoint."
        ) from None
    if raw_metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a labkit INT checkpoint (format "
            f"{raw_metadata.get('format')!r}, expected {FORMAT!r}); write one with labkit.save_int."
        )
    if _digest(tensors, raw_metadata.get("arch", ""), raw_metadata.get("plan", "")) != raw_metadata.get("sha256"):
        raise CheckpointError(
            f"{path} is corrupted: its tensors or metadata do not match the checksum written with them; "
            "re-create it with labkit.save_int from the trained model or its training checkpoint."
        )
    try:
        metadata = {"arch": json.loads(raw_metadata["arch"]), "plan": json.loads(raw_metadata["plan"])}
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} has damaged metadata ({error}); re-create it with labkit.save_int.") from None
    return tensors, metadata


def _check_architecture(path, expected: dict, found: dict) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(key for key in set(expected) & set(found) if tuple(expected[key].shape) != tuple(found[key].shape))
    if missing or unexpected or shapes:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shapes", shapes)):
            if keys:
                details.append(f"{label}: {keys[:5]}{' …' if len(keys) > 5 else ''}")
        raise CheckpointError(
            f"{path} is a checkpoint for another architecture ({'; '.join(details)}); load it into the "
            "architecture it was saved from (labkit.load_int(path) rebuilds it when it was made by build_model)."
        )


@torch.no_grad()
def load_int(path, model: torch.nn.Module | None = None, bits=None) -> torch.nn.Module:
    """Rebuild a multi-precision model from an INT checkpoint, in eval mode at ``bits`` (default: highest).

    ``model`` is needed only when the checkpoint's architecture was not built by
    :func:`labkit.models.build_model`: pass an FP32 model of the same architecture (it is copied, not
    modified). A failed load raises :class:`CheckpointError` (or :class:`BitWidthError` for ``bits``)
    and changes nothing.
    """
    tensors, metadata = read_int(path)
    arch, plan = metadata["arch"], metadata["plan"]
    if bits is not None:
        check_bits(bits, allowed=plan["bits"])
    if model is None:
        if arch is None:
            raise CheckpointError(
                f"{path} was saved from a model without a registered architecture; pass "
                "model=<an FP32 model of the same architecture> to labkit.load_int."
            )
        from labkit.models import build_model_from_arch

        try:
            model = build_model_from_arch(arch)
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{path} names an architecture this lab cannot build ({error}); load it with the labkit version that "
                "wrote it, or pass model=<an FP32 model of that architecture>."
            ) from None
    else:
        if quantized_layers(model):
            raise CheckpointError("pass an FP32 model to load_int (not one already quantized): it applies the stored plan itself.")
        own_arch = getattr(model, "labkit_arch", None)
        if arch is not None and own_arch is not None and own_arch != arch:
            raise CheckpointError(f"{path} holds architecture {arch}, but the model given is {own_arch}; pass a matching model.")
        model = copy.deepcopy(model)  # the caller's model stays as it was, whatever happens below
    try:
        apply_plan(model, plan)
        if plan.get("supernet"):
            to_supernet(model)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path} is a checkpoint for another architecture ({error}); load it into the architecture it was saved "
            "from (labkit.load_int(path) rebuilds it when it was made by labkit.models.build_model)."
        ) from None
    layers = quantized_layers(model)
    expected = int_state(model)
    _check_architecture(path, expected, tensors)
    state = {key: value for key, value in unpack_per_bit(tensors, tuple(plan["bits"])).items()
             if not key.endswith(CODES_SUFFIX)}
    for name, layer in layers.items():
        codes = tensors[name + CODES_SUFFIX]
        quantizer = layer.weight_quantizer
        quantizer.scale.copy_(state[f"{name}.weight_quantizer.scale"])
        quantizer.stored_codes = codes.to(layer.weight.device)
        state[f"{name}.weight"] = codes.to(torch.float32) * quantizer.scale.detach().view(-1, *([1] * (codes.dim() - 1)))
    model.load_state_dict(state, strict=True)
    if arch is not None:
        model.labkit_arch = arch
    model.eval()
    set_bits(model, bits if bits is not None else max(plan["bits"]))
    return model


def storage_breakdown(path) -> dict[str, int]:
    """Bytes of an INT checkpoint's tensors by kind: INT-h weight codes, weight scales, per-bit activation scales,
    per-bit batch norms, FP32 layers (first/last, kept in float) — and the whole file on disk."""
    tensors, _ = read_int(path)
    kinds = {"weight codes (INT-h)": 0, "weight scales": 0, "activation scales and offsets": 0,
             "per-bit batch norms": 0, "FP32 layers and other": 0}
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if key.endswith(CODES_SUFFIX):
            kinds["weight codes (INT-h)"] += size
        elif ".weight_quantizer." in key:
            kinds["weight scales"] += size
        elif ".act_quantizer." in key:
            kinds["activation scales and offsets"] += size
        elif ".per_bit." in key or ".pairs." in key:
            kinds["per-bit batch norms"] += size
        else:
            kinds["FP32 layers and other"] += size
    kinds["file on disk"] = Path(path).stat().st_size
    return kinds
