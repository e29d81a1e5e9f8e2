"""Models of several parts: no stem, stage or block across two parts, and a library's own freeze function
against freezable's preset or group.

A part is a tower of a multi-part model (``vision_model``, named in its groups: ``vision_model.block3``) or a
section a library names (ultralytics' yaml ``backbone`` and ``head``, smp's ``encoder`` and ``decoder``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from freezable.groups import part_of
from freezable.inplace import freezable
from freezable.inplace import freeze as freeze_in_place
from freezable.norms import has_running_stats
from freezable.presets import list_presets

from .groups import Groups, ids, parts, shared_parameters

__all__ = ["straddle_problems", "frozen_parameters", "frozen_after", "same_frozen_problems", "held_norms",
           "library_freeze_problems"]


def straddle_problems(model: nn.Module, groups: Groups, pieces: list[str] | None = None,
                      sections: dict[str, set[int]] | None = None) -> list[str]:
    """No piece lies across two parts, and no group outside the parts holds part of one.

    Pieces are the stems, stages and blocks (or the groups named in ``pieces``: ultralytics' ``layer{i}``).
    Parts are those the group names name, each holding its umbrella group's parameters (``vision_model``), or the
    ``sections`` a library names (section -> its parameters, by identity: the yaml's ``backbone`` and ``head``).
    A piece named after its part (``vision_model.block3``) lies inside that part; any other piece touches at most
    one part and then lies inside it (a piece that touches none is a model-level one). A group that is no piece,
    no part and not named inside one (a projection, ``logit_scale``), and that does not lie inside one part
    (ultralytics' ``task_head``), holds no piece's parameter unless it holds a whole part (an umbrella over parts).
    Parameters a model ties between modules (shared embeddings) are left out.
    """
    shared = shared_parameters(model)
    own = ({part: ids(model, groups, part) - shared for part in parts(groups)} if sections is None
           else {part: found - shared for part, found in sections.items()})
    names = [g for g in groups if part_of(g)[1]] if pieces is None else [g for g in pieces if g in groups]
    held = set()
    problems = []
    for piece in names:
        mine = ids(model, groups, piece) - shared
        held |= mine
        part = part_of(piece)[0]
        touched = [p for p, found in own.items() if mine & found]
        if part and part in own:
            if not mine <= own[part]:
                problems.append(f"{piece} holds parameters outside the part {part!r}")
        elif len(touched) > 1:
            problems.append(f"{piece} holds parameters of the parts {touched}")
        elif touched and not mine <= own[touched[0]]:
            problems.append(f"{piece} holds parameters inside and outside the part {touched[0]!r}")
    for group in groups:
        named_inside = any(group == p or group.startswith(p + ".") or p.startswith(group + ".") for p in own)
        if group in names or part_of(group)[1] or named_inside:
            continue
        inside = ids(model, groups, group) - shared
        if any(inside <= found for found in own.values()) or any(inside >= found for found in own.values()):
            continue  # inside one part (a head of a section), or an umbrella over parts
        if inside & held:
            problems.append(f"{group}, outside the parts, holds parameters of a part's pieces")
    return problems


def frozen_parameters(model: nn.Module) -> set[str]:
    """The parameter names with ``requires_grad=False``."""
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def frozen_after(build: Callable[[], nn.Module], act: Callable[[nn.Module], Any]) -> set[str]:
    """The names of the parameters that are frozen after ``act`` on a freshly built model (built frozen included)."""
    model = build()
    act(model)
    return frozen_parameters(model)


def same_frozen_problems(build: Callable[[], nn.Module], theirs: Callable[[nn.Module], Any], ours: str,
                         label: str) -> list[str]:
    """The library's own ``theirs(model)`` (``model.model.freeze_backbone()``, ``model.lock_image_tower(2)``) and
    freezable's ``ours`` freeze exactly the same parameters on two fresh models.

    ``ours`` is a preset name (``open_clip.lock_image_tower_2``: ``fz.freeze(model, preset=ours)``) or a group name
    (``backbone``: ``fz.freezable(model).freeze(ours)``).
    """
    def apply(model: nn.Module) -> None:
        if ours in list_presets():
            freeze_in_place(model, preset=ours)
        else:
            freezable(model).freeze(ours)

    expected = frozen_after(build, theirs)
    try:
        got = frozen_after(build, apply)
    except Exception as e:  # noqa: BLE001 - a preset or group that does not fit is the finding
        return [f"{label}: {type(e).__name__}: {e}"]
    if got != expected:
        return [f"{label}: freezes {len(got)} parameters, the library's own {len(expected)} "
                f"(only ours: {sorted(got - expected)[:3]}, only theirs: {sorted(expected - got)[:3]})"]
    return []


def held_norms(model: nn.Module, run: Callable[[], object]) -> set[str]:
    """The norm layers with running statistics whose statistics ``run()`` (a forward in training) leaves
    bit-identical: those held in eval, and those the forward does not reach."""
    norms = {n: m for n, m in model.named_modules() if has_running_stats(m)}
    before = {n: [b.clone() for b in m.buffers(recurse=False)] for n, m in norms.items()}
    with torch.no_grad():
        run()
    return {n for n, m in norms.items() if all(torch.equal(a, b) for a, b in zip(before[n], m.buffers(recurse=False)))}


def library_freeze_problems(build: Callable[[], nn.Module], library: Callable[[nn.Module], object],
                            ours: Callable[[nn.Module], nn.Module], what: str,
                            call: Callable[[nn.Module], object]) -> list[str]:
    """The library's own freeze function and freezable freeze the same parameters and hold the same norm layers
    in eval, in training: ``library(model)`` freezes a fresh model and leaves it as that library trains it;
    ``ours(model)`` freezes another and returns what to train (the model or its wrapper), which ``train()``
    then puts in training mode; ``call`` runs a forward on each."""
    theirs_model, ours_model = build(), build()
    library(theirs_model)
    handle = ours(ours_model).train()
    problems = []
    theirs, mine = frozen_parameters(theirs_model), frozen_parameters(ours_model)
    if theirs != mine:
        problems.append(f"{what}: freezes {len(mine)} parameters, the library {len(theirs)} "
                        f"(only ours: {sorted(mine - theirs)[:3]}, only the library's: {sorted(theirs - mine)[:3]})")
    held_theirs = held_norms(theirs_model, lambda: call(theirs_model))
    held_mine = held_norms(ours_model, lambda: call(handle))
    if held_theirs != held_mine:
        problems.append(f"{what}: a forward in training leaves {len(held_mine)} norm layers' statistics alone, "
                        f"the library's {len(held_theirs)} (only ours: {sorted(held_mine - held_theirs)[:3]}, "
                        f"only the library's: {sorted(held_theirs - held_mine)[:3]})")
    return problems
