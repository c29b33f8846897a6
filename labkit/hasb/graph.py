"""Which quantized layer feeds which: the data-flow predecessors Transitional BN is keyed on (METHOD.md §6 step 3).

A Transitional BN after layer ``l`` keeps one BN per (bit of l's *predecessor*, bit of l) (paper Alg. A.3,
Bit-Mixer's TBN): the statistics of l's output depend on l's own bit-width and on the precision of the tensor l
reads. So the predecessor must be found in the data flow, not in the execution order: in a torchvision ResNet
block the ``downsample`` conv runs after ``conv2`` but reads the block *input*, and the next block's ``conv1``
reads the block's sum, not the downsample conv's output.

**Definition.** A *weighted layer* is any ``nn.Conv*`` / ``nn.Linear`` module (quantized or FP32). The
predecessor of a quantized layer L is found by walking back from the tensor L reads (its first argument):

- a weighted layer ends the walk: the predecessor is that layer if it is one of the quantized ``layers``, else
  ``None`` (an FP32 layer's output does not depend on any bit-width, e.g. ResNet's FP32 stem for ``layer1.0.conv1``);
- the model input, or a tensor that no input reaches (a constant, a parameter), ends the walk with ``None``;
- any other operation (BN, ReLU, pooling, flatten, padding, slicing, the quantizers, …) with one data input is
  walked through;
- an operation that combines several data tensors (a residual ``+``, ``torch.cat``, ``*``, …) is walked
  through its **main path**: the operand with the greatest *depth*, where the depth of a tensor is the number
  of weighted layers on the longest path from the model input to it; equal depths go to the first operand in
  argument order. In a residual block ``relu(bn2(conv2(…)) + shortcut(x))`` the branch through ``conv1`` and
  ``conv2`` is two layers deeper than the identity shortcut and one deeper than a ``downsample`` conv, so the
  main path is the ``conv2`` branch, whatever runs first. (A squeeze-excitation gate, ``x * gate(x)``, would be
  taken as the main path, being deeper: no model in the lab has one.)

A layer that runs more than once (shared weights) takes the predecessor of its first call.

**How the graph is found.** ``method="fx"``: ``torch.fx`` symbolic tracing (no input needed; weighted layers
and the lab's batch norms are leaves). ``method="hooks"``: one real forward pass of ``example_input`` with a
``TorchFunctionMode`` that records, for every tensor an operation returns, which tensors it was computed from
(tensor provenance; module hooks mark the weighted layers), so data-dependent control flow is followed as it
runs. ``method="auto"`` (default): ``fx`` where the model traces, else ``hooks``. ``hooks`` needs an input:
``example_input``, or a random batch of the shape the model states (``model.input_shape`` or its architecture
record, :func:`labkit.convert.known_input_shape`); never a guessed size: without either, ``ExampleInputError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.fx
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from labkit.errors import ExampleInputError, LabkitError

WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
METHODS = ("auto", "fx", "hooks")


@dataclass
class _Node:
    kind: str  # "input" (the model input), "layer" (a weighted layer), "op" (anything else)
    name: str  # the layer's qualified name, or the operation
    inputs: list[int] = field(default_factory=list)  # indices of the nodes it reads; a layer: the tensor it reads


class _Graph:
    """Nodes in topological order; ``depth`` is None for nodes no model input reaches."""

    def __init__(self):
        self.nodes: list[_Node] = []
        self.depth: list[int | None] = []

    def add(self, kind: str, name: str, inputs: Iterable[int] = ()) -> int:
        inputs = list(dict.fromkeys(inputs))
        known = [self.depth[i] for i in inputs if self.depth[i] is not None]
        if kind == "input":
            depth = 0
        elif not known:
            depth = None
        else:
            depth = max(known) + (kind == "layer")
        self.nodes.append(_Node(kind, name, inputs))
        self.depth.append(depth)
        return len(self.nodes) - 1

    def main_input(self, index: int) -> int | None:
        """The operand of node ``index`` on the main path (greatest depth, first on ties), or None."""
        best = None
        for i in self.nodes[index].inputs:
            if self.depth[i] is not None and (best is None or self.depth[i] > self.depth[best]):
                best = i
        return best

    def predecessors(self, layers: list[str]) -> dict[str, str | None]:
        wanted, result = set(layers), {}
        for node in self.nodes:
            if node.kind != "layer" or node.name not in wanted or node.name in result:
                continue
            current = node.inputs[0] if node.inputs else None
            while current is not None and self.nodes[current].kind == "op":
                current = self.main_input(current)
            found = self.nodes[current] if current is not None else None
            result[node.name] = found.name if found is not None and found.kind == "layer" and found.name in wanted \
                else None
        return {name: result.get(name) for name in layers}


# ------------------------------------------------------------------ torch.fx


class LayerTracer(torch.fx.Tracer):
    """``torch.fx`` tracer that keeps convolutions, linear layers (quantized or not), batch norms and
    :class:`~labkit.nn.ReLUWithQuantizedCopy` as leaves: their insides branch on Python state fx cannot trace (also
    used by :mod:`labkit.relu_absorption`)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        from labkit.nn import ReLUWithQuantizedCopy, SwitchableBatchNorm2d, TransitionalBatchNorm2d

        return isinstance(module, (*WEIGHTED, SwitchableBatchNorm2d, TransitionalBatchNorm2d, ReLUWithQuantizedCopy)) or \
            super().is_leaf_module(module, qualified_name)


def _fx_graph(model: nn.Module) -> _Graph:
    traced = LayerTracer().trace(model)
    graph, index = _Graph(), {}
    for node in traced.nodes:
        if node.op == "placeholder":
            index[node] = graph.add("input", node.name)
        elif node.op == "call_module" and isinstance(model.get_submodule(node.target), WEIGHTED):
            first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
            index[node] = graph.add("layer", node.target, [index[first]] if first in index else [])
        elif node.op != "output":
            index[node] = graph.add("op", str(node.target), [index[n] for n in node.all_input_nodes if n in index])
    return graph


# ------------------------------------------------------------------ tensor provenance of a real forward pass


class _Provenance(TorchFunctionMode):
    """Maps every tensor an operation returns to the graph node that made it (``id`` → node; tensors are kept
    alive for the pass, so an ``id`` is never reused)."""

    def __init__(self, graph: _Graph):
        super().__init__()
        self.graph, self.node_of, self.alive = graph, {}, []

    def mark(self, tensors, node: int) -> None:
        for tensor in tree_flatten(tensors)[0]:
            if isinstance(tensor, torch.Tensor):
                self.node_of[id(tensor)] = node
                self.alive.append(tensor)

    def nodes_of(self, values) -> list[int]:
        return [self.node_of[id(t)] for t in tree_flatten(values)[0]
                if isinstance(t, torch.Tensor) and id(t) in self.node_of]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = self.nodes_of((args, kwargs))  # before the call: an in-place op then reads the old node
        output = func(*args, **kwargs)
        if inputs:
            self.mark(output, self.graph.add("op", getattr(func, "__name__", str(func)), inputs))
        return output


def _hooks_graph(model: nn.Module, example_input) -> _Graph:
    graph = _Graph()
    mode = _Provenance(graph)
    reads: dict[int, list[int]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, WEIGHTED):
            def before(mod, args, name=name):
                reads.setdefault(id(mod), []).append(mode.nodes_of(args[:1]))

            def after(mod, args, output, name=name):
                mode.mark(output, graph.add("layer", name, reads[id(mod)].pop()))

            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), mode:
            for tensor in inputs:
                mode.mark(tensor, graph.add("input", "input"))
            model(*inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return graph


# ------------------------------------------------------------------ public


def layer_predecessors(model: nn.Module, layers: Iterable[str] | None = None, *, example_input=None,
                       method: str = "auto") -> dict[str, str | None]:
    """``{layer: predecessor}``: the quantized layer that produced the tensor each layer reads (module docstring).

    Args:
        model: the network (a ``labkit.quantize_model`` model, or any model).
        layers: the layers that count as quantized; by default the model's quantized layers. FP32 weighted
            layers end a walk with ``None``.
        example_input: a batch the model accepts (a tensor, or a tuple of positional inputs); used only by
            ``method="hooks"`` (and by ``"auto"`` when fx cannot trace the model), which otherwise takes a random
            batch of the model's stated input shape (:func:`labkit.convert.known_input_shape`).
        method: ``"auto"``, ``"fx"`` or ``"hooks"`` (module docstring).

    A layer of ``layers`` that the forward pass never runs maps to ``None``.
    """
    from labkit.convert import example_input_for, known_input_shape, quantized_layers

    if layers is None:
        layers = list(quantized_layers(model))
    layers = list(layers)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {METHODS}")
    if method in ("auto", "fx"):
        try:
            return _fx_graph(model).predecessors(layers)
        except Exception as error:  # torch.fx raises many kinds (TraceError, TypeError, control flow on a Proxy …)
            if method == "fx":
                raise LabkitError(f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: {error}); "
                                  "use method='hooks' with example_input=<a batch the model accepts>.") from error
            if example_input is None and known_input_shape(model) is None:
                raise ExampleInputError(
                    f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: {error}), so the layers' "
                    "predecessors must come from a forward pass, and the model's input shape is not known: pass "
                    "example_input=<a batch the model accepts> (e.g. one batch of your data), or set "
                    "model.input_shape = (C, H, W).") from error
    if example_input is None:
        example_input = example_input_for(model)  # the shape the model states, or ExampleInputError
    try:
        return _hooks_graph(model, example_input).predecessors(layers)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ExampleInputError(f"{type(model).__name__} did not run on the input of shape {shape} "
                                f"({type(error).__name__}: {error}); pass example_input=<a batch the model accepts>."
                                ) from error


def pointwise_convs(model: nn.Module, layers: Iterable[str] | None = None) -> list[str]:
    """The 1×1 convolutions among ``layers`` (default: every ``nn.Conv2d`` of the model), in module order.

    In ResNets these are the ``downsample`` (projection shortcut) convs and the bottleneck's reducing and expanding
    convs; in MobileNetV2 the expansion and projection convs. The authors' HASB code leaves them out of the Hessian
    list and the search (see ``exclude_pointwise`` of :func:`labkit.hasb.hessian.hessian_traces`).
    """
    chosen = None if layers is None else set(layers)
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
            and (chosen is None or name in chosen)]
