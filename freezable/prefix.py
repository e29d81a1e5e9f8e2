"""The frozen prefix of a training forward, run without autograd, and its outputs cached per sample.

Once the groups nearest the input are frozen (:class:`~freezable.ProgressiveFreezing` freezes them
front to back), the first part of every training forward computes a function of the input and of
frozen weights only. It needs no autograd and, when the inputs are fixed (no random augmentation),
gives a sample the same output every epoch. :class:`PrefixRunner` finds that part, checks that it
is a true prefix of the forward, and from then on runs it under ``torch.inference_mode()``, as a fully
frozen ``FrozenBackbone`` runs, or looks its outputs up in a :class:`~freezable.FeatureCache`.

What counts as the prefix is checked on a real forward: the first training forward after each change
(the *probe*), watched by hooks on every module and a torch function mode that sees every torch call:

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
prefix, a position embedding added by the model's own code) gets a shorter chain or none, and then
simply runs as usual. The chain is used while its modules stay frozen and in the same mode, the input
keeps its shape (but for the batch), dtype and device, and autocast stays as it was; otherwise the
next training forward probes again. It is used only when autograd is on, the input needs no gradient
and ``torch.compile`` is not tracing. The first chain module then returns the chain's output,
computed under ``torch.inference_mode()`` and cloned into a normal tensor (or looked up), and the
others pass it on. If a forward calls them otherwise than the probe saw, a forward in which nothing
was substituted yet runs as usual (and the next one probes again); one in which something was raises
:class:`~freezable.FreezableError`: the forward's structure depends on the data, which the check
cannot cover (use ``inference_prefix=False``).

Caching (``cache=True``, and sample keys given for the forward): the chain's outputs go through a
:class:`~freezable.FeatureCache` over the chain's modules (``on_mismatch="clear"``), so every guarantee of
the cache holds: bound to the exact frozen weights, one key per sample, optional input fingerprints.
A chain is cached only if it is pure: the probe saw it draw no random number (the RNG state did not
move) and write neither its input nor any of its parameters and buffers (their version counters did
not move), and FeatureCache's own checks pass (no BatchNorm without running statistics).

Where the state lives: the runner is an entry of the root module's ``__dict__`` (``_freezable_prefix``),
read by two module-level forward hooks on that module; a copy or a pickle of the model gets an
inactive runner, which the hooks ignore.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._state import is_held
from .cache import FeatureCache, check_deterministic, check_frozen
from .errors import FreezableError, PrefixWarning
from .fast import clone_outputs

__all__ = ["PrefixRunner", "PrefixWarning"]

_RUNNER = "_freezable_prefix"  # on the root module: its PrefixRunner
_X0 = -1  # origin of the model's input in the probe's records


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``value`` (nested lists, tuples and dicts)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError, RuntimeError):  # an older torch, or a device type without autocast
        return torch.is_autocast_enabled(), None


@dataclass(frozen=True)
class _Signature:
    """What a chain found by the probe holds for: the input (but for the batch) and the modes."""

    shape: tuple[int, ...]  # the input's shape without its first (batch) dimension
    dtype: torch.dtype
    device: torch.device
    autocast: tuple[Any, ...]  # (enabled, dtype) on the CPU and on the input's device type
    modes: tuple[bool, ...]  # the chain modules' training flags


def _signature(x: torch.Tensor, modules: Sequence[nn.Module]) -> _Signature:
    return _Signature(tuple(x.shape[1:]), x.dtype, x.device,
                      (_autocast_state("cpu"), _autocast_state(x.device.type)), tuple(m.training for m in modules))


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _eligible(module: nn.Module) -> bool:
    """Held at inference with every parameter frozen, or without parameters and buffers (glue)."""
    if not _has_state(module):
        return True
    return is_held(module) and not any(p.requires_grad for p in module.parameters())


def _own_hooks_only(module: nn.Module) -> bool:
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


class _Probe(TorchFunctionMode):
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
            if ctx is None and _eligible(module):
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
                for t in _tensors((args, kwargs)):
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
        for t in _tensors((args, kwargs)):
            self._read(ctx, t)
        out = func(*args, **kwargs)
        if ctx is not None:
            for t in _tensors(out):
                if self._origin(t) is None and id(t) not in self.owners:
                    self.made[id(t)] = (weakref.ref(t), ctx)
        return out

    # -- the verdict ------------------------------------------------------------------------------------

    def chain(self, returned: Any) -> tuple[list[nn.Module], bool, str]:
        """The longest valid chain, whether it is pure, and why it is not longer (or why there is none)."""
        for t in _tensors(returned):  # what the forward returns is read by the caller
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
        if not _own_hooks_only(cand.module):
            return f"{name} has forward hooks or a forward of its own"
        if cand.impure_reads:
            return f"inside {name}, {cand.impure_reads}"
        return ""

    def _name(self, module: nn.Module) -> str:
        name = next((n for n, m in self.root.named_modules() if m is module), "?")
        return f"{name!r} ({type(module).__name__})"


@dataclass
class _Run:
    """One training forward of the root while a chain is in use."""

    x0: torch.Tensor | None = None  # the model's input (None: this forward runs as usual)
    probe: _Probe | None = None
    next: int = 0  # the chain module expected next
    output: torch.Tensor | None = None  # the chain's output, once computed
    diverged: bool = False  # the forward left the chain before anything was substituted: runs as usual
    modules: list[nn.Module] = field(default_factory=list)  # the chain modules whose forward is overridden
    originals: list[Callable[..., Any]] = field(default_factory=list)  # their own forwards


class PrefixRunner:
    """Runs the frozen prefix of ``root``'s training forwards without autograd (and from a cache, with keys).

    Created by :class:`~freezable.ProgressiveFreezing` (``inference_prefix=True``); see the module
    docstring for what it checks. :meth:`invalidate` after every change of freeze state: the next training
    forward probes again. A model has one runner: a new one closes the one it had.

    Args:
        root: the module whose forward takes the input (a Freezable's freeze root).
        cache: cache the prefix's outputs for forwards run inside :meth:`keys`.
        cache_max_bytes: the cache's ``max_bytes`` (``None``: no limit).
        verify_inputs: the cache's ``verify_inputs``.
    """

    def __init__(self, root: nn.Module, *, cache: bool = False, cache_max_bytes: int | None = None,
                 verify_inputs: bool = False) -> None:
        self.root = root
        self.cache = cache
        self.cache_max_bytes = cache_max_bytes
        self.verify_inputs = verify_inputs
        self.modules: list[nn.Module] = []  # the chain in use
        self.pure = False
        self.note = "no frozen prefix yet"
        self.feature_cache: FeatureCache | None = None
        self._cached: list[nn.Module] = []  # the modules whose outputs feature_cache holds
        self._signature: _Signature | None = None
        self._needs_probe = False
        self._keys: Sequence[Hashable] | torch.Tensor | None = None
        self._runs: list[_Run | None] = []
        self._bypass = False
        self._warned = False
        self._handles = []
        previous = root.__dict__.get(_RUNNER)
        if isinstance(previous, PrefixRunner):  # one runner per model: the newest takes over
            previous.close()
        root.__dict__[_RUNNER] = self
        self._handles = [root.register_forward_pre_hook(_before_forward, with_kwargs=True),
                         root.register_forward_hook(_after_forward, always_call=True)]

    def __reduce__(self) -> tuple[Any, ...]:
        return _inactive, ()

    def __repr__(self) -> str:
        return f"PrefixRunner({self.note})"

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def close(self) -> None:
        """Removes the hooks: forwards run as usual from now on."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.root.__dict__.get(_RUNNER) is self:
            del self.root.__dict__[_RUNNER]
        self._drop("closed")

    def invalidate(self) -> None:
        """Forgets the chain: the next training forward probes again (call after every change of freeze state).

        A cache is kept aside: if the chain found next starts with the modules it caches, it is extended
        (:meth:`FeatureCache.extended <freezable.FeatureCache.extended>`) rather than filled again.
        """
        self.modules, self.pure, self._signature = [], False, None
        self.note = "waiting for the next training forward"
        self._needs_probe = True

    def _drop(self, note: str) -> None:
        self.modules, self.pure, self._signature, self.note = [], False, None, note
        self.feature_cache, self._cached = None, []

    @contextlib.contextmanager
    def keys(self, keys: Sequence[Hashable] | torch.Tensor) -> Iterator[None]:
        """Forwards inside look the prefix's outputs up by these sample keys (one per sample of the batch)."""
        previous, self._keys = self._keys, keys
        try:
            yield
        finally:
            self._keys = previous

    # -- around each forward of the root -------------------------------------------------------------------

    def before(self, args: tuple[Any, ...]) -> None:
        if self._runs or not self.active:  # a nested call of the root: as usual
            self._runs.append(None)
            return
        x0 = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if (x0 is None or x0.requires_grad or not torch.is_grad_enabled() or torch.is_inference_mode_enabled()
                or torch.compiler.is_compiling()):
            if x0 is None and self._needs_probe and torch.is_grad_enabled():
                self.note = ("no frozen prefix runs without autograd: the forward takes no tensor as its first positional "
                             "argument (inputs by keyword, as Hugging Face models take them, are not followed)")
            self._runs.append(None)
            return
        if self.modules and _signature(x0, self.modules) != self._signature:
            self._drop("the input or the modes changed")  # the cache holds outputs for other inputs
            self._needs_probe = True
        elif self.modules and not all(_eligible(m) and _own_hooks_only(m) for m in self.modules):
            self.invalidate()
        if self._needs_probe:
            self._needs_probe = False
            probe = _Probe(self.root, x0)
            self._runs.append(_Run(probe=probe))
            probe.__enter__()
            return
        if not self.modules:
            self._runs.append(None)
            return
        run = _Run(x0=x0, modules=list(self.modules))
        for i, module in enumerate(run.modules):
            run.originals.append(type(module).forward.__get__(module))
            module.__dict__["forward"] = self._override(i, module, run)
        self._runs.append(run)

    def after(self, output: Any) -> None:
        if not self._runs:
            return
        run = self._runs.pop()
        if run is None:
            return
        if run.probe is not None:
            probe, run.probe = run.probe, None
            probe.__exit__(None, None, None)
            probe.close()
            if output is not None:
                self._adopt(probe, output)
            else:  # the forward raised: probe the next one
                self._needs_probe = True
            return
        for module in run.modules:
            module.__dict__.pop("forward", None)

    def _adopt(self, probe: _Probe, output: Any) -> None:
        """Takes the chain the probe found, and a cache for it when it can be cached."""
        modules, pure, why = probe.chain(output)
        if not modules:
            self._drop(f"no frozen prefix runs without autograd: {why}")
            return
        names = {id(m): n for n, m in self.root.named_modules()}
        self.modules, self.pure = modules, pure
        self._signature = _signature(probe.x0, modules)
        shown = ", ".join(names.get(id(m), "?") for m in modules[:3]) + (" ..." if len(modules) > 3 else "")
        self.note = f"{len(modules)} module(s) run without autograd ({shown}; after them: {why})"
        if self.cache:
            self._cache_for(modules, pure, names)

    def _cache_for(self, modules: list[nn.Module], pure: bool, names: dict[int, str]) -> None:
        old, old_modules = self.feature_cache, self._cached
        self.feature_cache, self._cached = None, []
        chain = _Chain(modules)
        problem = "" if pure else ("it draws random numbers or writes its input, parameters or buffers, so its "
                                   "output for a sample is not always the same")
        if not problem:
            try:
                check_frozen(chain)
                check_deterministic(chain)
            except FreezableError as e:
                problem = str(e)
        if problem:
            self.note += "; not cached: " + problem
            if not self._warned:
                self._warned = True
                warnings.warn(f"the frozen prefix ({', '.join(names.get(id(m), '?') for m in modules)}) runs "
                              f"uncached: {problem}", PrefixWarning, stacklevel=4)
            return
        grows = old is not None and len(old_modules) < len(modules) and all(
            a is b for a, b in zip(old_modules, modules))
        if old is not None and len(old_modules) == len(modules) and all(a is b for a, b in zip(old_modules, modules)):
            self.feature_cache = old
        elif grows and len(old):
            self.feature_cache = old.extended(_Chain(modules[len(old_modules):]))
        else:
            self.feature_cache = FeatureCache(chain, max_bytes=self.cache_max_bytes, on_mismatch="clear",
                                              verify_inputs=self.verify_inputs)
        self._cached = list(modules)
        self.note += "; cached"

    # -- the overrides of the chain modules' forward, for one forward of the root ---------------------------

    def _override(self, i: int, module: nn.Module, run: _Run) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            original = run.originals[i]
            if self._bypass or run.diverged:
                return original(*args, **kwargs)
            in_place = run.next == i and len(args) == 1 and not kwargs
            if i == 0 and in_place and args[0] is run.x0:
                run.output, run.next = self._compute(run), 1
                return run.output
            if i > 0 and in_place and run.output is not None and args[0] is run.output:
                run.next = i + 1
                return run.output
            if run.next == 0:  # nothing substituted yet: this forward runs as usual, the next one probes again
                run.diverged = True
                self.invalidate()
                return original(*args, **kwargs)
            raise FreezableError(
                f"the forward called {type(module).__name__} (module {i + 1} of the frozen prefix) otherwise than on "
                f"the forward the prefix was checked on, after the prefix's output had been substituted; the "
                f"forward's structure depends on its data: create ProgressiveFreezing with inference_prefix=False"
            )

        return forward

    def _compute(self, run: _Run) -> torch.Tensor:
        self._bypass = True
        try:
            if self.feature_cache is not None and self._keys is not None:
                return self.feature_cache(run.x0, keys=self._keys)
            with torch.inference_mode():
                y = run.originals[0](run.x0)
                for module in run.modules[1:]:
                    y = module(y)
            return clone_outputs(y)
        finally:
            self._bypass = False


class _Chain(nn.Module):
    """The chain's modules in order, as one module: what a FeatureCache of the prefix runs."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


def _inactive() -> None:
    """What a copied or unpickled model gets in place of its runner: nothing (the hooks then do nothing)."""
    return None


def _before_forward(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    runner = module.__dict__.get(_RUNNER)
    if isinstance(runner, PrefixRunner) and runner.root is module:
        runner.before(args)


def _after_forward(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    runner = module.__dict__.get(_RUNNER)
    if isinstance(runner, PrefixRunner) and runner.root is module:
        runner.after(output)
