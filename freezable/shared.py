"""Parameters shared between a frozen and a trainable part (tied embeddings), found from the freeze marks.

One tensor cannot be both frozen and trainable. When a model ties two parameters (GPT-2's ``lm_head.weight``
is ``transformer.wte.weight``) and one owner was frozen while the other was left trainable (or the other way
round), the tensor follows the last call: a frozen part trains, or a trainable one does not.
:func:`shared_parameters` finds such tensors: those reachable under several names whose owning modules
disagree on the frozen mark. ``freeze_summary()`` lists them under its table and ``fz.check`` reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from .groups import Group, is_within

__all__ = ["Shared", "shared_parameters"]


@dataclass(frozen=True)
class Shared:
    """A tensor whose names are owned by frozen and by trainable modules."""

    frozen_names: tuple[str, ...]  # names whose owning module is marked frozen
    trainable_names: tuple[str, ...]  # names whose owning module is not
    groups: tuple[str, ...]  # the groups holding any of those names, in group order
    requires_grad: bool  # what the tensor actually is

    def describe(self) -> str:
        state = "trainable: the frozen part trains" if self.requires_grad else "frozen: the trainable part does not train"
        where = f" (groups {', '.join(self.groups)})" if self.groups else ""
        return (f"parameter '{self.frozen_names[0]}' is tied (shared) with '{self.trainable_names[0]}'{where}: one "
                f"tensor in a frozen and a trainable part, now {state}; untie them (transformers: "
                f"tie_word_embeddings=False) or freeze or unfreeze both")


def shared_parameters(root: nn.Module, groups: Mapping[str, Group], is_frozen: Callable[[nn.Module], bool]
                      ) -> list[Shared]:
    """Tensors of ``root`` named under modules that disagree on the frozen mark.

    Args:
        root: the model whose names ``groups`` use.
        groups: its freeze groups.
        is_frozen: whether a module carries the frozen mark.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
        >>> net[1].weight = net[0].weight
        >>> frozen = {id(net[0])}
        >>> [s.frozen_names for s in shared_parameters(net, {}, lambda m: id(m) in frozen)]
        [('0.weight',)]
    """
    names: dict[int, list[str]] = {}
    tensors: dict[int, nn.Parameter] = {}
    for name, param in root.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
        tensors[id(param)] = param
    found = []
    for key, all_names in names.items():
        if len(all_names) < 2:
            continue
        frozen = tuple(n for n in all_names if is_frozen(root.get_submodule(n.rpartition(".")[0])))
        trainable = tuple(n for n in all_names if n not in frozen)
        if frozen and trainable:
            holding = tuple(g for g, group in groups.items() if any(_holds(group, n) for n in all_names))
            found.append(Shared(frozen, trainable, holding, tensors[key].requires_grad))
    return found


def _holds(group: Group, name: str) -> bool:
    return name in group.parameters or is_within(name, group.modules)
