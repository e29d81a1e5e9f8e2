"""``fz.check``: an audit of everything that can defeat freezing, run whenever a user wants proof.

It reads the model (and the optimizer, and a DDP wrapper) as they are now and changes
nothing. Each check gives plain sentences, one per problem:

* **modes**: a frozen part in training mode (someone called ``.train()`` on an inner
  module directly; the hold hook would undo it at the next forward, but the audit
  reports it now), a norm layer under ``norm_eval`` in training mode (the same cause;
  its affine parameters training is what norm_eval is for, not a problem), or, in a
  plain module, a norm layer whose parameters are all frozen but which would update
  its running statistics;
* **gradients**: a frozen parameter (``requires_grad=False``) holding a ``.grad``;
* **optimizer**: frozen parameters that ``step()`` would move (they hold a gradient;
  weight decay or momentum then move them too), frozen parameters with optimizer
  state (momentum, ``exp_avg``) that would move them as soon as they get a gradient,
  an ``LBFGS`` whose curvature history spans parameters frozen since (it moves them
  with no gradient at all), trainable parameters the optimizer lacks, parameters it
  holds twice; an optimizer that also holds frozen parameters (built from ``parameters()``)
  is ok while they get no gradient, and its row says how many it holds;
* **ddp**: a ``DistributedDataParallel`` wrapper whose synchronised parameters (those
  it registered with its reducer when it was built) differ from the trainable set;
* **drift**: frozen tensors that changed since ``freeze(..., guard=True)``;
* **checkpoint**: reentrant gradient checkpointing after a frozen part.
  ``torch.utils.checkpoint.checkpoint(..., use_reentrant=True)`` computes gradients only for the inputs
  of the checkpointed function; when everything before the first checkpointed block is frozen, that
  block's input needs no gradient, so autograd never enters the block in backward and its trainable
  parameters keep ``.grad = None`` (transformers issues #21381, #23170, #26221). It is found on models
  that use transformers' convention (a module's ``gradient_checkpointing`` flag and its
  ``_gradient_checkpointing_func``); the fixes are ``use_reentrant=False`` or
  ``model.enable_input_require_grads()``.

On a plain ``nn.Module`` a parameter is frozen when ``requires_grad`` is ``False``;
whatever needs freezable's marks (held modules, the guard) is checked where a
:class:`~freezable.Freezable` is found, at any depth.

(The module is named ``audit``, not ``check``, so that importing it can never rebind
``freezable.check`` from the function to the module.)
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from . import guard
from ._state import freeze_root, is_held, is_norm_eval, swapped_in
from .distributed import reduced_parameters
from .errors import FreezableError, shorten, type_error
from .groups import is_within
from .mixin import Freezable, tied_across_freeze
from .norms import has_running_stats
from .summary import format_table

__all__ = ["CheckReport", "check"]

_CHECKS = {
    "modes": "frozen parts and norm_eval layers in eval mode",
    "gradients": "frozen parameters hold no gradient",
    "optimizer": "optimizer holds every trainable parameter, moves no frozen one",
    "ddp": "DDP synchronises exactly the trainable parameters",
    "swaps": "modules swapped in at frozen places frozen like those they replaced",
    "drift": "guarded frozen tensors unchanged",
    "shared": "no tensor tied between a frozen and a trainable part",
    "checkpoint": "reentrant checkpointing gets gradients",
}
_MAX_NAMES = 10
_INPUT_GRAD_HOOK = "make_inputs_require_grads"  # the hook enable_input_require_grads() puts on the embeddings


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found: a row per check, each with its problems in plain sentences.

    Example:
        >>> report = CheckReport(rows=(("modes", ()), ("gradients", ("frozen parameter 'w' holds a gradient",))))
        >>> report.ok, report.problems
        (False, ["frozen parameter 'w' holds a gradient"])
    """

    rows: tuple[tuple[str, tuple[str, ...]], ...]  # (check name, its problems), in the order run
    skipped: tuple[tuple[str, str], ...] = ()  # (check name, why it was not run)
    notes: tuple[tuple[str, str], ...] = ()  # (check name, what it saw beside what it expects), shown when ok

    @property
    def ok(self) -> bool:
        """Whether no check found a problem."""
        return not self.problems

    @property
    def problems(self) -> list[str]:
        """Every problem found, one plain sentence each."""
        return [problem for _, problems in self.rows for problem in problems]

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        notes = dict(self.notes)
        results = {name: (f"ok: {notes[name]}" if name in notes else "ok") if not problems
                   else f"{len(problems)} problem(s)" for name, problems in self.rows}
        results.update((name, f"skipped: {why}") for name, why in self.skipped)
        order = list(_CHECKS) + [name for name in results if name not in _CHECKS]
        rows = [(name, _CHECKS.get(name, name), results[name]) for name in order if name in results]
        lines = format_table(("check", "expects", "result"), rows).splitlines()
        problems = self.problems
        lines.append("")
        if problems:
            lines.append(f"{len(problems)} problem(s):")
            lines += [f"- {p}" for p in problems]
        else:
            lines.append("ok: nothing defeats freezing")
        return "\n".join(lines)


def check(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, strict: bool = False) -> CheckReport:
    """Audits ``model`` (and ``optimizer``) for anything that defeats freezing; changes nothing.

    Args:
        model: a Freezable, any module containing Freezables, a DDP wrapper, or a plain module.
        optimizer: the optimizer that trains ``model``; without it the optimizer check is skipped.
        strict: raise instead of returning a report with problems.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is ``True`` when nothing was found, ``print(report)``
        shows the table.

    Raises:
        FreezableError: ``strict`` is ``True`` and there are problems (the message lists them).
        FreezableTypeError: ``model`` is not a module, or ``optimizer`` is not an optimizer.

    Example:
        >>> import torch, freezable as fz
        >>> from torch import nn
        >>> class Net(fz.Freezable, nn.Sequential):
        ...     freeze_groups = {"body": ["0", "1"], "head": "2"}
        >>> net = Net(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).freeze("body", guard=True)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> net[1].train()  # an inner .train() call
        BatchNorm1d(...)
        >>> for problem in fz.check(net, opt).problems:
        ...     print(problem)
        frozen module '1' (BatchNorm1d) is in training mode: .train() was called on a part of the model directly; ...
        >>> net(torch.randn(3, 4)).shape  # the hold hook puts it back in eval
        torch.Size([3, 2])
        >>> net.eval()[1].weight.grad = torch.zeros(4)  # a stale gradient on a frozen parameter
        >>> for problem in fz.check(net, opt).problems:
        ...     print(problem)
        frozen parameter '1.weight' holds a gradient (.grad is a tensor): ...
        1 frozen parameter(s) are in the optimizer with a gradient, so step() moves them (its gradient): '1.weight'; ...
        >>> net[1].weight.grad = None
        >>> fz.check(net, opt).ok
        True
    """
    if not isinstance(model, nn.Module):
        raise type_error("check's model", model, "an nn.Module instance")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise type_error("optimizer", optimizer, "a torch.optim.Optimizer or None")
    if not isinstance(strict, bool):
        raise type_error("strict", strict, "a bool")

    names = _parameter_names(model)
    rows = [("modes", _modes(model)), ("gradients", _gradients(model))]
    skipped = []
    notes = []
    if optimizer is None:
        skipped.append(("optimizer", "no optimizer given"))
    else:
        rows.append(("optimizer", _optimizer(model, optimizer, names)))
        frozen = _frozen_held(optimizer)
        if frozen:
            notes.append(("optimizer", f"it also holds {frozen} frozen parameter(s), harmless while they get no "
                                       f"gradient"))
    ddps = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.parallel.DistributedDataParallel)]
    if ddps:
        rows.append(("ddp", [p for name, ddp in ddps for p in _ddp(name, ddp)]))
    swaps = [p for name, m in _freezables(model) for p in _swaps(name, m)]
    if swaps:
        rows.append(("swaps", swaps))
    rows.append(("drift", [p for name, m in _freezables(model) for p in guard.verify(m, name)]))
    if sum(1 for _ in model.named_parameters(remove_duplicate=False)) > len(names):  # tied tensors
        rows.append(("shared", _shared(model)))
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        rows.append(("checkpoint", _checkpoint(model)))
    report = CheckReport(rows=tuple((n, tuple(p)) for n, p in rows), skipped=tuple(skipped), notes=tuple(notes))
    if strict and not report.ok:
        raise FreezableError(
            f"fz.check found {len(report.problems)} problem(s):\n" + "\n".join(f"- {p}" for p in report.problems)
        )
    return report


def _swaps(prefix: str, model: Freezable) -> list[str]:
    """Modules swapped in at frozen places: a conflict (trainable parameters), or one in training mode before its
    first ``train()`` or forward since (when it is frozen and held like the one it replaced)."""
    problems = []
    root_prefix = ".".join(p for p in (prefix, _root_name(model)) if p)
    for name, module in swapped_in(model):
        full = ".".join(p for p in (root_prefix, name) if p)
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            problems.append(f"'{full}' ({type(module).__name__}) was swapped in at a frozen place with trainable "
                            f"parameters: neither frozen nor meant to train; freeze or unfreeze its group to decide")
        elif module.training:
            problems.append(f"'{full}' ({type(module).__name__}) was swapped in at a frozen place and is in training "
                            f"mode; call model.train() (or run a forward) to freeze and hold it like the one it replaced")
    return problems


def _root_name(model: Freezable) -> str:
    root = freeze_root(model)
    return next((name for name, child in model.named_children() if child is root), "")


def _shared(model: nn.Module) -> list[str]:
    return [s.describe() + (f" in '{name}'" if name else "")
            for name, freezable in _freezables(model) for s in tied_across_freeze(freezable)]


def _freezables(model: nn.Module) -> Iterator[tuple[str, Freezable]]:
    for name, module in model.named_modules():
        if isinstance(module, Freezable):
            yield name, module


def _parameter_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def _quote(names: list[str]) -> str:
    return shorten(names, _MAX_NAMES)


def _modes(model: nn.Module) -> list[str]:
    problems = []
    reported: list[str] = []
    for name, module in model.named_modules():
        if not module.training or is_within(name, reported):
            continue
        label = f"'{name}' ({type(module).__name__})" if name else f"the model ({type(module).__name__})"
        if is_norm_eval(module):
            problems.append(
                f"norm layer {label} is under norm_eval but in training mode: .train() was called on it directly; "
                f"freezable puts it back in eval at its next forward, but a call that skips forward hooks would "
                f"update its running statistics; call model.train(), not .train() on the layer"
            )
        elif is_held(module):
            reported.append(name)
            norms = [n for n, m in module.named_modules(prefix=name) if has_running_stats(m) and m.training]
            inside = f" with {len(norms)} norm layer(s) inside it" if norms and norms != [name] else ""
            problems.append(
                f"frozen module {label} is in training mode{inside}: .train() was called on a part of the model "
                f"directly; freezable puts it back in eval at its next forward, but a call that skips forward "
                f"hooks would use batch statistics and dropout; call model.train(), not .train() on a frozen part"
            )
        elif has_running_stats(module):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                problems.append(
                    f"norm layer {label} has frozen parameters but is in training mode: its running statistics "
                    f"update at every forward; put it in eval, or freeze it with freezable, which holds it there"
                )
    return problems


def _gradients(model: nn.Module) -> list[str]:
    return [
        f"frozen parameter '{name}' holds a gradient (.grad is a tensor): an optimizer that holds it moves it "
        f"(weight decay, momentum); set its .grad to None"
        for name, p in model.named_parameters()
        if not p.requires_grad and p.grad is not None
    ]


def _optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, names: dict[int, str]) -> list[str]:
    problems = []
    counts: Counter[int] = Counter()
    where: dict[int, list[int]] = {}
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            counts[id(p)] += 1
            where.setdefault(id(p), []).append(index)

    def name(p: torch.Tensor) -> str:
        return names.get(id(p), f"<a parameter of shape {list(p.shape)} not in the model>")

    seen: set[int] = set()
    with_grad: list[str] = []
    why_moved: dict[str, None] = {"its gradient": None}  # an ordered set
    with_state: list[str] = []
    state_keys: dict[str, None] = {}
    per_parameter = not isinstance(optimizer, torch.optim.LBFGS)  # LBFGS keeps one flat state
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if counts[id(p)] > 1:
                problems.append(
                    f"parameter '{name(p)}' is in the optimizer {counts[id(p)]} times (param groups "
                    f"{where[id(p)]}): each step updates it more than once"
                )
            if p.requires_grad:
                continue
            state = [k for k, v in optimizer.state.get(p, {}).items() if per_parameter
                     and k != "step" and isinstance(v, torch.Tensor) and v.numel() and bool(v.detach().ne(0).any())]
            if p.grad is not None:
                with_grad.append(name(p))
                if group.get("weight_decay"):
                    why_moved[f"weight decay {group['weight_decay']}"] = None
                why_moved.update(dict.fromkeys(f"its state {k}" for k in state))
            elif state:
                with_state.append(name(p))
                state_keys.update(dict.fromkeys(state))
    if with_grad:
        problems.append(
            f"{len(with_grad)} frozen parameter(s) are in the optimizer with a gradient, so step() moves them "
            f"({', '.join(why_moved)}): {_quote(with_grad)}; set their .grad to None or leave them out of the optimizer"
        )
    if with_state:
        problems.append(
            f"{len(with_state)} frozen parameter(s) have optimizer state ({', '.join(state_keys)}) that moves them "
            f"as soon as they get a gradient, and that a later unfreeze resumes from: {_quote(with_state)}; "
            f"release it: fz.release_optimizer_state(optimizer)"
        )
    if isinstance(optimizer, torch.optim.LBFGS):
        moved = _lbfgs_moves_frozen(optimizer)
        if moved:
            problems.append(
                f"LBFGS has a curvature history over {len(moved)} parameter(s) frozen since "
                f"({_quote([name(p) for p in moved])}): its next step moves them even without a gradient; build a "
                f"new LBFGS after freezing"
            )
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in counts]
    if missing:
        problems.append(
            f"{len(missing)} trainable parameter(s) are not in the optimizer: they get gradients but never "
            f"move: {_quote(missing)}; freeze them, or add them with optimizer.add_param_group"
        )
    return problems


def _frozen_held(optimizer: torch.optim.Optimizer) -> int:
    """How many frozen parameters the optimizer holds (each once)."""
    return len({id(p) for group in optimizer.param_groups for p in group["params"] if not p.requires_grad})


def _lbfgs_moves_frozen(optimizer: torch.optim.LBFGS) -> list[torch.Tensor]:
    """The frozen parameters on which LBFGS's flat history (directions, steps) is not zero."""
    params = optimizer.param_groups[0]["params"]
    state = optimizer.state.get(params[0], {}) if params else {}
    history = [t for t in [*state.get("old_dirs", []), *state.get("old_stps", []), state.get("d")]
               if isinstance(t, torch.Tensor)]
    moved, offset = [], 0
    for p in params:
        if not p.requires_grad and any(bool(t[offset:offset + p.numel()].ne(0).any()) for t in history):
            moved.append(p)
        offset += p.numel()
    return moved


def _ddp(prefix: str, ddp: nn.parallel.DistributedDataParallel) -> list[str]:
    registered = reduced_parameters(ddp)
    ignored = set(getattr(ddp, "parameters_to_ignore", ()))
    trainable = {id(p): n for n, p in ddp.module.named_parameters() if p.requires_grad and n not in ignored}
    where = f"DDP wrapper '{prefix}'" if prefix else "the DDP wrapper"
    if registered is None:  # a torch without the reducer's buckets: compare counts
        count = ddp._get_ddp_logging_data().get("num_parameter_tensors")
        if count is not None and count != len(trainable):
            return [f"{where} synchronises {count} parameter tensors but {len(trainable)} are trainable: "
                    f"build DistributedDataParallel after freezing"]
        return []
    frozen_synced = [n for n, p in ddp.module.named_parameters() if id(p) in registered and id(p) not in trainable]
    unsynced = [n for i, n in trainable.items() if i not in registered]
    problems = []
    if frozen_synced:
        problems.append(
            f"{where} synchronises {len(frozen_synced)} parameter(s) that are now frozen: {_quote(frozen_synced)}; "
            f"backward fails waiting for their gradients unless find_unused_parameters=True; build "
            f"DistributedDataParallel after freezing"
        )
    if unsynced:
        problems.append(
            f"{where} does not synchronise {len(unsynced)} trainable parameter(s): {_quote(unsynced)}; their "
            f"gradients are not averaged across processes and the replicas drift apart; build "
            f"DistributedDataParallel after unfreezing"
        )
    return problems


def _reentrant(module: nn.Module) -> bool:
    func = getattr(module, "_gradient_checkpointing_func", None)
    return (getattr(module, "gradient_checkpointing", False) is True and isinstance(func, functools.partial)
            and func.keywords.get("use_reentrant") is True)


def _checkpoint(model: nn.Module) -> list[str]:
    """A sentence when reentrant checkpointing starts after a frozen part and would train nothing inside.

    Example:
        >>> import functools, torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).requires_grad_(False)
        >>> net[1].weight.requires_grad_(True)
        Parameter containing: ...
        >>> net[1].gradient_checkpointing = True
        >>> net[1]._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True)
        >>> print(_checkpoint(net)[0][:80])
        reentrant gradient checkpointing (use_reentrant=True) starts at '1' after a froz
    """
    flagged = [(n, m) for n, m in model.named_modules() if _reentrant(m)]
    blocks = [(n, m) for n, m in flagged if not any(o != n and is_within(o, {n}) for o, _ in flagged)]
    if not blocks:
        return []
    first, _ = blocks[0]
    if any(getattr(h, "__name__", "") == _INPUT_GRAD_HOOK for m in model.modules() for h in m._forward_hooks.values()):
        return []
    before: list[bool] = []
    for name, param in model.named_parameters():
        if first and is_within(name, {first}):  # (a block at the root has nothing before it)
            break
        before.append(param.requires_grad)
    inside = [n for b, m in blocks for n, p in m.named_parameters(prefix=b) if p.requires_grad]
    if any(before) or not inside:
        return []
    return [
        f"reentrant gradient checkpointing (use_reentrant=True) starts at '{first}' after a frozen part: that "
        f"block's input needs no gradient, so the {len(inside)} trainable parameter(s) inside the checkpointed "
        f"blocks get none (.grad stays None; first: '{inside[0]}'); checkpoint with use_reentrant=False "
        f"(gradient_checkpointing_enable(gradient_checkpointing_kwargs={{'use_reentrant': False}})) or call "
        f"model.enable_input_require_grads()"
    ]
