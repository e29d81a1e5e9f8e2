"""The probe: one training forward, watched, that finds the frozen prefix and checks that it is a true one.

The first training forward after each change of freeze state is watched by hooks on every module and a
torch function mode that sees every torch call. The frozen prefix it accepts is:

* a chain of module calls ``c1 ... ck``, each the top-most call of a module held at inference (frozen,
  its whole subtree too) or of one without parameters and buffers (a ReLU, a pooling layer), in
  forward order;
* ``c1`` gets the model's own input, the very tensor, as its only argument, and each next one the
  previous one's output, the very tensor, as its only argument; each of these modules runs once in
  the forward, returns one tensor and has no hooks but freezable's own;
* inside the chain, torch calls read nothing but the input, tensors made inside the chain and the
  chain modules' own frozen parameters and buffers; outside it, nothing reads a tensor made inside
  the chain but its last output, and the forward returns none of them.

A forward that breaks one of these (the input given by keyword, a skip connection from inside the
prefix, a position embedding added by the model's own code) gets a shorter chain or none. The probe
also says whether the chain is pure: that it drew no random number (the RNG state did not move) and
wrote neither its input nor any of its parameters and buffers (their version counters did not move).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._inference import tensors_in
from .._state import is_held, runs_frozen

__all__ = ["Probe", "eligible", "own_hooks_only"]

_X0 = -1  # origin of the model's input in the probe's records


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def eligible(module: nn.Module) -> bool:
    """Held at inference with every parameter frozen, or without parameters and buffers (glue)."""
    return not _has_state(module) or runs_frozen(module)


def own_hooks_only(module: nn.Module) -> bool:
    """Whether ``module``'s only forward hook is freezable's hold (if held), and its forward is its class's."""
    if "forward" in module.__dict__ or module._forward_hooks:
        return False
    return len(module._forward_pre_hooks) == (1 if is_held(module) else 0)


@dataclass
class _Candidate:
    """A top-most call, in the probe's forward, of a module that may belong to the frozen prefix."""

    module: nn.Module
    own: frozenset[int]  # ids of its parameters and buffers (its whole subtree's)
    arg_from: int | None  # the argument is the model's input (_X0), candidate j's output (j), or neither (None)
    output: Any = None  # weak reference to the output, when it is one tensor
    impure_reads: str = ""  # why torch calls inside it read what the prefix may not read ("" if none)
    moved: bool = False  # it drew random numbers or wrote its input, parameters or buffers
    rng: tuple[torch.Tensor, ...] = ()
    versions: tuple[int, ...] = ()


class Probe(TorchFunctionMode):
    """Records one forward: the candidate calls, and which tensors every torch call reads."""

    def __init__(self, root: nn.Module, x0: torch.Tensor) -> None:
        super().__init__()
        self.root = root
        self.x0 = x0
        self.busy = False  # our own bookkeeping runs torch calls too: not recorded
        self.open: list[tuple[nn.Module, int | None]] = []  # open calls: (module, candidate index if one)
        self.candidates: list[_Candidate] = []
        self.calls: Counter[int] = Counter()  # id(module) -> calls
        self.made: dict[int, tuple[weakref.ref, int]] = {}  # id(tensor) -> (tensor, candidate that made it)
        self.outputs: dict[int, tuple[weakref.ref, set[int]]] = {}  # id(tensor) -> (tensor, candidates it is the output of)
        # reads of tensors made in candidate j from outside j: (reading candidate or None, j, candidates it is the output of)
        self.reads: list[tuple[int | None, int, frozenset[int]]] = []
        self.trains: list[tuple[int, nn.Module]] = []  # (candidates so far, module) for calls of modules that train
        self.owners = {id(t): (t, m) for m in root.modules()
                       for t in [*m._parameters.values(), *m._buffers.values()] if t is not None}
        self.handles: list[Any] = []
        for module in root.modules():
            if module is not root:
                self.handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._exit, always_call=True))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    # -- what a tensor is ---------------------------------------------------------------------------------

    def _origin(self, t: torch.Tensor) -> int | None:
        """The candidate that made ``t``, ``_X0`` for the model's input, else ``None``."""
        if t is self.x0:
            return _X0
        hit = self.made.get(id(t))
        return hit[1] if hit is not None and hit[0]() is t else None

    def _output_of(self, t: torch.Tensor) -> frozenset[int]:
        hit = self.outputs.get(id(t))
        return frozenset(hit[1]) if hit is not None and hit[0]() is t else frozenset()

    def _context(self) -> int | None:
        return next((index for _, index in self.open if index is not None), None)

    def _read(self, ctx: int | None, t: torch.Tensor) -> None:
        origin = self._origin(t)
        if origin is not None and origin != _X0 and origin != ctx:
            self.reads.append((ctx, origin, self._output_of(t)))
        if ctx is None or origin is not None:
            return
        cand = self.candidates[ctx]
        owner = self.owners.get(id(t))
        if owner is not None and owner[0] is t:
            if t.requires_grad or id(t) not in cand.own:
                cand.impure_reads = cand.impure_reads or "it reads a parameter or buffer of another module"
            return
        cand.impure_reads = cand.impure_reads or "it reads a tensor made outside the frozen prefix"

    # -- hooks ------------------------------------------------------------------------------------------

    def _enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.busy = True
        try:
            self.calls[id(module)] += 1
            ctx = self._context()
            index = None
            if ctx is None and eligible(module):
                index = len(self.candidates)
                arg_from = None
                if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
                    if index == 0 and args[0] is self.x0:
                        arg_from = _X0
                    elif index and index - 1 in self._output_of(args[0]):
                        arg_from = index - 1
                own = frozenset(id(t) for t in [*module.parameters(), *module.buffers()])
                self.candidates.append(_Candidate(module, own, arg_from, rng=self._rng(),
                                                  versions=self._versions(module)))
            elif ctx is None and any(p is not None and p.requires_grad for p in module._parameters.values()):
                self.trains.append((len(self.candidates), module))
            if index is not None:  # a module's own calls read what it reads (a container only passes it on)
                for t in tensors_in((args, kwargs)):
                    self._read(index, t)
            self.open.append((module, index))
        finally:
            self.busy = False

    def _exit(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.busy = True
        try:
            while self.open and self.open[-1][0] is not module:  # an inner call that raised
                self.open.pop()
            if not self.open:
                return
            _, index = self.open.pop()
            if index is None:
                return
            cand = self.candidates[index]
            cand.moved = any(not torch.equal(a, b) for a, b in zip(cand.rng, self._rng())) or (
                cand.versions != self._versions(module))
            cand.rng = ()
            if isinstance(output, torch.Tensor):
                cand.output = weakref.ref(output)
                ref, owners = self.outputs.get(id(output), (None, set()))
                if ref is None or ref() is not output:
                    owners = set()
                owners.add(index)
                self.outputs[id(output)] = (weakref.ref(output), owners)
                if self._origin(output) is None:
                    self.made[id(output)] = (weakref.ref(output), index)
        finally:
            self.busy = False

    def _rng(self) -> tuple[torch.Tensor, ...]:
        states = [torch.random.get_rng_state()]
        if self.x0.is_cuda:
            states.append(torch.cuda.get_rng_state(self.x0.device))
        return tuple(states)

    def _versions(self, module: nn.Module) -> tuple[int, ...]:
        return (self.x0._version, *(t._version for t in module.parameters()), *(t._version for t in module.buffers()))

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.busy:
            return func(*args, **kwargs)
        ctx = self._context()
        for t in tensors_in((args, kwargs)):
            self._read(ctx, t)
        out = func(*args, **kwargs)
        if ctx is not None:
            for t in tensors_in(out):
                if self._origin(t) is None and id(t) not in self.owners:
                    self.made[id(t)] = (weakref.ref(t), ctx)
        return out

    # -- the verdict ------------------------------------------------------------------------------------

    def chain(self, returned: Any) -> tuple[list[nn.Module], bool, str]:
        """The longest valid chain, whether it is pure, and why it is not longer (or why there is none)."""
        for t in tensors_in(returned):  # what the forward returns is read by the caller
            self._read(None, t)
        n, why = 0, ""
        for i, cand in enumerate(self.candidates):
            why = self._structural(i, cand)
            if why:
                break
            n = i + 1
        trains = next((m for at, m in self.trains if at == n), None)
        if trains is not None:
            why = f"{self._name(trains)} trains"
        why = why or "nothing else runs"
        for k in range(n, 0, -1):
            escape = next(((ctx, j) for ctx, j, outs in self.reads
                           if (ctx is None or ctx >= k) and j < k and (k - 1) not in outs), None)
            if escape is None:
                chain = self.candidates[:k]
                if not any(_has_state(c.module) for c in chain):
                    break
                return [c.module for c in chain], not any(c.moved for c in chain), why
            why = (f"a tensor made inside {self._name(self.candidates[escape[1]].module)} is read outside the frozen "
                   f"prefix (a skip connection, or the model's own code uses it)")
        if not any(_has_state(c.module) for c in self.candidates[:max(n, 1)]):
            why = "the forward does not start with a frozen module" + (
                f" ({why})" if why and why != "nothing else runs" else "")
        return [], False, why

    def _structural(self, i: int, cand: _Candidate) -> str:
        name = self._name(cand.module)
        if self.calls[id(cand.module)] != 1:
            return f"{name} runs more than once in the forward"
        if cand.arg_from != (_X0 if i == 0 else i - 1):
            what = "the model's input" if i == 0 else "the previous frozen module's output"
            return f"{name} does not take {what} as its only argument"
        if cand.output is None:
            return f"{name} does not return one tensor"
        if not own_hooks_only(cand.module):
            return f"{name} has forward hooks or a forward of its own"
        if cand.impure_reads:
            return f"inside {name}, {cand.impure_reads}"
        return ""

    def _name(self, module: nn.Module) -> str:
        name = next((n for n, m in self.root.named_modules() if m is module), "?")
        return f"{name!r} ({type(module).__name__})"
