"""One traced forward of the backbone: which convolution each BatchNorm reads, and the held parts' inputs and outputs.

Folding needs to know that a BatchNorm reads a convolution's output, the very tensor, and that each ran once;
checking a folded copy needs the original's input and output on a real batch. Both come from one forward in
eval mode without autograd, watched by hooks that are removed, and the modes restored, afterwards.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..groups import is_within

__all__ = ["Trace", "trace_forward", "conv_bn_pairs"]


@dataclass
class Trace:
    """What one traced forward saw: conv outputs, BatchNorm inputs, held roots' first calls."""

    conv_out: dict[int, tuple[str, Any]] = field(default_factory=dict)  # id -> (name, weakref to output)
    bn_in: dict[str, str] = field(default_factory=dict)  # BatchNorm name -> name of the conv it read
    calls: dict[str, int] = field(default_factory=dict)
    io: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = field(default_factory=dict)


def trace_forward(backbone: nn.Module, roots: dict[str, nn.Module], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Trace:
    """Runs ``backbone`` once in eval mode without autograd, recording what folding needs; restores modes."""
    trace = Trace()
    handles = []

    def count(name: str) -> None:
        trace.calls[name] = trace.calls.get(name, 0) + 1

    def on_conv(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            count(name)
            if isinstance(output, torch.Tensor):  # a weak reference: activations are freed as usual
                trace.conv_out[id(output)] = (name, weakref.ref(output))
        return hook

    def on_bn(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            count(name)
            if inputs and isinstance(inputs[0], torch.Tensor):
                hit = trace.conv_out.get(id(inputs[0]))
                if hit is not None and hit[1]() is inputs[0]:  # the very tensor, not a reused address
                    trace.bn_in[name] = hit[0]
        return hook

    def on_root(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, kw: Any, output: Any) -> None:
            trace.io.setdefault(name, (inputs, kw, output))
        return hook

    for root_name, root in roots.items():
        handles.append(root.register_forward_hook(on_root(root_name), with_kwargs=True))
        for rel, m in root.named_modules(prefix=root_name):
            if isinstance(m, nn.modules.conv._ConvNd):
                handles.append(m.register_forward_hook(on_conv(rel)))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                handles.append(m.register_forward_pre_hook(on_bn(rel)))
    modes = {m: m.training for m in backbone.modules()}
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(*args, **kwargs)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for h in handles:
            h.remove()
    return trace


def conv_bn_pairs(trace: Trace, root_name: str) -> list[tuple[str, str]]:
    """Conv-BatchNorm pairs inside one held root: the BatchNorm read the conv's output; each ran once."""
    pairs = []
    for bn_name, conv_name in trace.bn_in.items():
        if is_within(bn_name, {root_name}) and is_within(conv_name, {root_name}) and trace.calls[bn_name] == 1 and trace.calls[conv_name] == 1:
            pairs.append((conv_name, bn_name))
    return pairs
