"""ReLUs that run inside the next activation quantizer (an execution detail: no value or gradient changes).

In ``relu(bn1(conv1(x)))`` → ``conv2`` of a ResNet block the ReLU's output is read by one thing only, ``conv2``'s
activation quantizer, which clips its codes to ``[0, 2^b − 1]`` anyway (METHOD.md §2, Eq. 4–5). Training it as two
operations writes the ReLU's output and, in the backward, its gradient: two full-size tensors per such layer and
step that nothing else reads. Here the quantizer takes the ReLU's input instead and computes ``relu`` itself
(:func:`labkit.quant.lsq.fake_quantize` with ``relu_first=True``): on the compiled kernels inside the same loops,
forward and backward; on the eager paths as a separate ReLU, exactly as before. The values and gradients are those of
the separate ReLU bit for bit (``tests/test_relu_absorption.py``). A ResNet-20 joint {8,6,4,2} step takes ~1–2 % less
time with it (``benchmarks/relu_absorption_ab.py``: a paired interval over 40 rounds, in the README; the ``speed_joint``
benchmark row times the model with every ReLU kept beside it).

A ReLU is taken in only where that changes nothing the model computes: ``torch.fx`` traces the model, and the ReLU
must be a ``nn.ReLU`` module called once, whose output goes only to one quantized layer, itself called once, with an
unsigned LSQ activation quantizer (not DoReFa's clamp) and no padding of its own before it. Its input must be a fresh
tensor only it reads (the output of a batch norm, convolution, linear layer or sum), since the quantizer saves that
input for the backward where PyTorch's ReLU saves its output: a later in-place write to it would fail the backward.
Its module is replaced by :class:`labkit.nn.AbsorbedReLU`, an identity that names the layer doing its work, so
``print(model)`` shows where it went. A model that ``torch.fx`` cannot trace
keeps every ReLU.

A ReLU whose output a quantized layer reads *and* something else does — in ResNet-20 the ReLU after each residual sum
(and the stem's), read by the next block's ``conv1`` and its shortcut — cannot disappear, since the shortcut needs its
output. It becomes a :class:`labkit.nn.ReLUWithQuantizedCopy`: in a training step on the compiled kernels it computes
the ReLU and that layer's fake-quantized input in one loop and hands the latter to the layer's quantizer
(:func:`labkit.quant.lsq.relu_and_fake_quantize`; the same values and gradients bit for bit). The same conditions hold
for the ReLU and for that layer, except that the ReLU has exactly one other reader (reading it once; with more,
autograd would add the gradients in another order) and must not be in place. It pairs only in training mode, outside a
backward pass and outside a checkpointed segment (the layer's quantizer checks before it uses the kept output). The
layer uses the kept output only when it is called on that very tensor, unchanged: a forward pre-hook that returns
another input, or a full backward hook (which wraps the input), turns the pairing off for that call, with the same
results. fp32 and bf16 (autocast) are checked bit for bit (``tests/test_relu_pairing.py``).

A ReLU module that carries a hook when the model is quantized keeps its place (the hook keeps seeing its output).
What to know for hooks added later: the absorbing layer's forward pre-hook sees the ReLU's *input* (negatives
included), its full backward hook a ``grad_input`` already masked by the ReLU, and a hook on the
:class:`~labkit.nn.AbsorbedReLU` sees the ReLU's input. ``torch.fx`` traces one branch of Python control flow (e.g.
``if self.training``): a ReLU used differently on the other branch is not seen there. Pass ``absorb_relu=False`` to
:func:`labkit.quantize_model` to keep every ReLU a module of its own.
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from labkit.nn import AbsorbedReLU, QConv2d, QuantizedLayer, ReLUWithQuantizedCopy


def _has_hooks(module: nn.Module) -> bool:
    return any(getattr(module, name, None) for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                         "_backward_pre_hooks"))


# What may produce a ReLU's input: operations whose output is a fresh tensor (not a view of another one).
_FRESH_MODULES = (nn.modules.batchnorm._BatchNorm, nn.Conv2d, nn.Linear, QuantizedLayer)
_FRESH_FUNCTIONS = (operator.add, torch.add)


def _private_input(model: nn.Module, source) -> bool:
    """Whether the ReLU's input is a fresh tensor that only the ReLU reads, so that nothing writes to it in place
    later: an absorbed or paired ReLU saves its *input* for the backward (PyTorch's ReLU saves its output), and a later
    in-place write to that input would fail the backward. Produced by a batch norm, convolution, linear layer or a sum
    (``torch.fx`` records ``out += x`` as a sum, so its first operand must be such a tensor too), not a view and not
    the model's own input. (Convolutions: ``nn.Conv2d`` and the quantized layers.)"""
    if not isinstance(source, torch.fx.Node) or len(source.users) != 1:
        return False
    if source.op == "call_module":
        from labkit.nn import SwitchableBatchNorm2d, TransitionalBatchNorm2d

        return isinstance(model.get_submodule(source.target),
                          (*_FRESH_MODULES, SwitchableBatchNorm2d, TransitionalBatchNorm2d))
    if source.op == "call_function" and source.target in _FRESH_FUNCTIONS or \
            source.op == "call_method" and source.target == "add":
        # ``a += y`` (in place on ``a`` at run time) is traced as a sum, so ``a`` must be private as well
        return _private_input(model, source.args[0]) if source.args else False
    return False


def _reads_once(reader, node) -> bool:
    """Whether ``node`` appears once among ``reader``'s arguments (``r + r`` reads it twice)."""
    seen = []
    torch.fx.node.map_arg((reader.args, reader.kwargs), lambda n: seen.append(n) if n is node else None)
    return len(seen) == 1


def _takes_relu(model: nn.Module, reader, node, calls: dict[str, int]) -> bool:
    """Whether ``reader`` is a quantized layer, called once and on ``node``'s output alone, whose activation quantizer
    can compute a ReLU in front of it (unsigned LSQ codes) with no padding of its own first."""
    if reader.op != "call_module" or reader.args[:1] != (node,) or len(reader.args) != 1 or reader.kwargs or \
            calls[reader.target] != 1:  # a layer that runs on other inputs too would apply the ReLU there as well
        return False
    layer = model.get_submodule(reader.target)
    if not isinstance(layer, QuantizedLayer) or not layer.act_quantizer.can_absorb_relu():
        return False
    return not (isinstance(layer, QConv2d) and layer.pre_padding is not None)


def _relu_readers(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """(absorbable, paired): ``{ReLU module name: quantized layer name}`` for the ReLUs whose only reader is that layer,
    and for those the layer reads among others (the module docstring); both ``{}`` where ``torch.fx`` cannot trace."""
    from labkit.hasb.graph import LayerTracer  # here: labkit.hasb imports labkit.convert, which imports this module

    try:
        graph = LayerTracer().trace(model)
    except Exception:  # torch.fx raises many kinds (TraceError, TypeError, control flow on a Proxy, ...)
        return {}, {}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    absorbable, paired = {}, {}
    for node in graph.nodes:
        if node.op != "call_module" or type(model.get_submodule(node.target)) is not nn.ReLU:
            continue
        relu = model.get_submodule(node.target)
        if _has_hooks(relu):  # a hook on the ReLU must keep seeing its output (replacing the module would drop it)
            continue
        if calls[node.target] != 1 or len(node.args) != 1 or node.kwargs or not _private_input(model, node.args[0]):
            continue
        if len(node.users) == 1:
            (reader,) = node.users
            if _takes_relu(model, reader, node, calls):
                absorbable[node.target] = reader.target
        elif len(node.users) == 2 and not relu.inplace:
            # two readers, each reading the output once: autograd's sum of their two gradients is the one sum the
            # paired backward makes (with more, autograd would add them in another order: other bits)
            readers = [reader for reader in node.users if _takes_relu(model, reader, node, calls)]
            if readers and all(_reads_once(reader, node) for reader in node.users):
                paired[node.target] = readers[0].target
    return absorbable, paired


def absorbable_relus(model: nn.Module) -> dict[str, str]:
    """``{ReLU module name: quantized layer name}`` for every ReLU of ``model`` (already quantized) whose work its
    layer's activation quantizer can take over without changing any value (the module docstring); ``{}`` where
    ``torch.fx`` cannot trace the model."""
    return _relu_readers(model)[0]


def pairable_relus(model: nn.Module) -> dict[str, str]:
    """``{ReLU module name: quantized layer name}`` for every ReLU of ``model`` (already quantized) whose output that
    layer reads among others, so that the ReLU can compute the layer's quantized input with its own output (the module
    docstring); ``{}`` where ``torch.fx`` cannot trace the model."""
    return _relu_readers(model)[1]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def absorb_relus(model: nn.Module) -> dict[str, str]:
    """Let each ReLU of :func:`absorbable_relus` run inside its layer's activation quantizer (in place): the ReLU
    module becomes an :class:`~labkit.nn.AbsorbedReLU` and the quantizer gets ``relu_first``. Each ReLU of
    :func:`pairable_relus` becomes a :class:`~labkit.nn.ReLUWithQuantizedCopy` for its layer. Returns the mapping of
    the absorbed ReLUs."""
    absorbable, paired = _relu_readers(model)
    for relu_name, layer_name in absorbable.items():
        _replace(model, relu_name, AbsorbedReLU(layer_name))
        model.get_submodule(layer_name).act_quantizer.relu_first = True
    for relu_name, layer_name in paired.items():
        _replace(model, relu_name, ReLUWithQuantizedCopy(layer_name, model.get_submodule(layer_name)))
    return absorbable
