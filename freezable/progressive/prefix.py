"""The frozen prefix of a training forward, run without autograd, and its outputs cached per sample.

Once the groups nearest the input are frozen (:class:`~freezable.ProgressiveFreezing` freezes them
front to back), the first part of every training forward computes a function of the input and of
frozen weights only. It needs no autograd and, when the inputs are fixed (no random augmentation),
gives a sample the same output every epoch. :class:`PrefixRunner` finds that part, checks that it
is a true prefix of the forward, and from then on runs it under ``torch.inference_mode()``, as a fully
frozen ``FrozenBackbone`` runs, or looks its outputs up in a :class:`~freezable.FeatureCache`.

What counts as the prefix is checked on a real forward, the first training forward after each change
(the *probe*, :mod:`freezable.progressive.probe`: a chain of frozen modules, each taking the previous one's
output, whose tensors nothing else reads). A forward without a chain simply runs as usual. The chain is
used while its modules stay frozen and in the same mode, the input keeps its shape (but for the batch),
dtype and device, and autocast stays as it was; otherwise the next training forward probes again. It is used only when autograd is on, the input needs no gradient
and ``torch.compile`` is not tracing. The first chain module then returns the chain's output,
computed under ``torch.inference_mode()`` and cloned into a normal tensor (or looked up), and the
others pass it on. If a forward calls them otherwise than the probe saw, a forward in which nothing
was substituted yet runs as usual (and the next one probes again); one in which something was raises
:class:`~freezable.FreezableError`: the forward's structure depends on the data, which the check
cannot cover (use ``inference_prefix=False``).

Caching (``cache=True``, and sample keys given for the forward): the chain's outputs go through a
:class:`~freezable.FeatureCache` over the chain's modules (``on_mismatch="clear"``), so every guarantee of
the cache holds: bound to the exact frozen weights, one key per sample, optional input fingerprints.
A chain is cached only if the probe found it pure (no random number drawn, nothing written) and
FeatureCache's own checks pass (:mod:`freezable.cache.checks`: no BatchNorm without running statistics).

Where the state lives: the runner is an entry of the root module's ``__dict__`` (``_freezable_prefix``),
read by two module-level forward hooks on that module; a copy or a pickle of the model gets an
inactive runner, which the hooks ignore.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._inference import run_without_autograd
from ..cache import FeatureCache
from ..cache.checks import check_cacheable
from ..errors import FreezableError, PrefixWarning
from .probe import Probe, eligible, own_hooks_only

__all__ = ["PrefixRunner"]

_RUNNER = "_freezable_prefix"  # on the root module: its PrefixRunner


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


@dataclass
class _Run:
    """One training forward of the root while a chain is in use."""

    x0: torch.Tensor | None = None  # the model's input (None: this forward runs as usual)
    probe: Probe | None = None
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
        elif self.modules and not all(eligible(m) and own_hooks_only(m) for m in self.modules):
            self.invalidate()
        if self._needs_probe:
            self._needs_probe = False
            probe = Probe(self.root, x0)
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

    def _adopt(self, probe: Probe, output: Any) -> None:
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
        chain = nn.Sequential(*modules)  # what the cache runs
        problem = "" if pure else ("it draws random numbers or writes its input, parameters or buffers, so its "
                                   "output for a sample is not always the same")
        if not problem:
            try:
                check_cacheable(chain)
            except FreezableError as e:
                problem = str(e)
        if problem:
            self.note += "; not cached: " + problem
            if not self._warned:
                self._warned = True
                warnings.warn(f"the frozen prefix ({', '.join(names.get(id(m), '?') for m in modules)}) runs "
                              f"uncached: {problem}", PrefixWarning, stacklevel=4)
            return
        starts_alike = old is not None and len(old_modules) <= len(modules) and all(
            a is b for a, b in zip(old_modules, modules))
        if starts_alike and len(old_modules) == len(modules):
            self.feature_cache = old
        elif starts_alike and len(old):  # the chain grew: run only the new modules over the cached outputs
            self.feature_cache = old.extended(nn.Sequential(*modules[len(old_modules):]))
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
        """The chain's output for the forward's input: looked up, or computed as a fully frozen FrozenBackbone
        runs (without autograd, cloned into a normal tensor)."""
        self._bypass = True
        try:
            if self.feature_cache is not None and self._keys is not None:
                return self.feature_cache(run.x0, keys=self._keys)
            return run_without_autograd(_run_chain, (run,), {})
        finally:
            self._bypass = False


def _run_chain(run: _Run) -> torch.Tensor:
    """The chain on the forward's input: the first module's own forward (its call is under way), then the others."""
    y = run.originals[0](run.x0)
    for module in run.modules[1:]:
        y = module(y)
    return y


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
