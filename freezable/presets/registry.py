"""The preset registry: one dict of named recipes, one register function, a sorted listing with a glob.

An entry is one of three kinds of data:

* a :class:`Preset`: a recipe under its name;
* a :class:`PresetFamily`: the numbered presets of one recipe (``ultralytics.freeze_N`` for
  ``ultralytics.freeze_0`` ... ``ultralytics.freeze_42``), one entry instead of dozens of copies, each
  member made when first asked for;
* an :class:`Alias`: another name of an entry (``timm.linear_probe`` of ``linear_probe``).

:func:`list_presets` and :func:`get_preset` see every preset by its full name, each member of a family
and each alias included; each name gives one and the same :class:`Preset` every time.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Union

from torch import nn

from ..errors import PresetError, closest, type_error

__all__ = ["Preset", "PresetFamily", "Alias", "register_preset", "get_preset", "list_presets"]


@dataclass(frozen=True)
class Preset:
    """A named freezing recipe.

    Example:
        >>> Preset("my.first_conv", "freeze the first conv", {"conv1": "conv1"}, frozen=("conv1",)).frozen
        ('conv1',)
    """

    name: str  # registry key, "<source>.<family or scope>.<recipe>"
    description: str  # one line, shown by `freezable presets`
    # group name -> spec(s), in forward order; None: detected groups; a callable: model -> such a mapping
    groups: Mapping[str, Any] | Callable[[nn.Module], Mapping[str, Any]] | None = None
    frozen: tuple[str, ...] = ()  # the groups frozen by default
    train_bn: bool = False  # keep the frozen groups' norm layers trainable
    norm_eval: bool = False  # hold the body's norms with running statistics in eval, trainable or not (mmdetection)

    def __post_init__(self) -> None:
        for field_name in ("name", "description"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise type_error(f"Preset {field_name}", value, "a non-empty str")
        if self.groups is not None and not isinstance(self.groups, Mapping) and not callable(self.groups):
            raise type_error("Preset groups", self.groups, "a mapping of group name to specs, a callable, or None")
        if not isinstance(self.frozen, (tuple, list)) or not all(isinstance(v, str) for v in self.frozen):
            hint = f"did you mean ({self.frozen!r},)?" if isinstance(self.frozen, str) else ""
            raise type_error("Preset frozen", self.frozen, "a tuple of str", fix=hint)
        if not isinstance(self.train_bn, bool):
            raise type_error("Preset train_bn", self.train_bn, "a bool")
        if not isinstance(self.norm_eval, bool):
            raise type_error("Preset norm_eval", self.norm_eval, "a bool")
        if isinstance(self.groups, Mapping):
            object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))
        object.__setattr__(self, "frozen", tuple(self.frozen))
        if isinstance(self.groups, Mapping):
            missing = [g for g in self.frozen if g not in self.groups]
            if missing:
                raise PresetError(
                    f"preset {self.name!r} freezes groups it does not define: {missing}; "
                    f"{closest(missing[0], self.groups)}"
                )


@dataclass(frozen=True)
class PresetFamily:
    """The numbered presets of one recipe, ``<name>`` with ``N`` replaced by each of ``numbers``.

    Example:
        >>> family = PresetFamily("my.first_n_N", range(1, 3), lambda n: Preset(f"my.first_n_{n}", f"first {n}"))
        >>> family.names()
        ['my.first_n_1', 'my.first_n_2']
    """

    name: str  # the family's name, ending in "_N": "ultralytics.freeze_N"
    numbers: range  # the N that exist
    make: Callable[[int], Preset]  # N -> the preset of that name, with N in it

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.endswith("_N"):
            raise type_error("PresetFamily name", self.name, "a str ending in '_N'")
        if not isinstance(self.numbers, range) or not self.numbers:
            raise type_error("PresetFamily numbers", self.numbers, "a non-empty range")

    def names(self) -> list[str]:
        """Every member's name, in number order."""
        return [member_name(self.name, n) for n in self.numbers]


@dataclass(frozen=True)
class Alias:
    """Another name of a registered entry; an alias of a family is a family's name too (``timm.frozen_stages_N``)."""

    name: str  # the other name
    of: str  # the entry's own name

    def __post_init__(self) -> None:
        for value in (self.name, self.of):
            if not isinstance(value, str) or not value.strip():
                raise type_error("an alias name", value, "a non-empty str")
        if self.name.endswith("_N") != self.of.endswith("_N"):
            raise PresetError(f"alias {self.name!r} of {self.of!r}: a family's alias is a family's name (both "
                              f"ending in '_N') or neither is")


Entry = Union[Preset, PresetFamily, Alias]

_PRESETS: dict[str, Entry] = {}  # the registry: name -> entry (a family under its name ending in "_N")
_MADE: dict[str, Preset] = {}  # the members of families and the aliases made so far: one object per name
_NUMBERED = re.compile(r"(?P<stem>.*_)(?P<number>0|[1-9][0-9]*)")


def member_name(family: str, n: int) -> str:
    """The name of member ``n`` of the family ``family`` (whose name ends in ``_N``).

    Example:
        >>> member_name("ultralytics.freeze_N", 3)
        'ultralytics.freeze_3'
    """
    return f"{family[:-1]}{n}"


def register_preset(preset: Entry) -> Entry:
    """Adds ``preset`` (a :class:`Preset`, or a :class:`PresetFamily` or :class:`Alias`) to the registry.

    Raises:
        PresetError: one of its names is registered already, or an alias names no entry.
    """
    if not isinstance(preset, (Preset, PresetFamily, Alias)):
        raise type_error("register_preset's argument", preset, "a Preset")
    names = preset.names() if isinstance(preset, PresetFamily) else [preset.name]
    taken = [name for name in dict.fromkeys([preset.name, *names]) if _taken(name)]
    if taken:
        raise PresetError(f"a preset named {taken[0]!r} is already registered")
    if isinstance(preset, Alias) and preset.of not in _PRESETS:
        raise PresetError(f"alias {preset.name!r} names no registered preset {preset.of!r}; "
                          f"{closest(preset.of, _PRESETS)}")
    _PRESETS[preset.name] = preset
    return preset


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (a :class:`Preset` is returned as it is).

    Raises:
        PresetError: no such preset (the message names the closest ones, or the numbers a family has).

    Example:
        >>> get_preset("torchvision.alexnet.classifier_only").frozen
        ('features',)
        >>> get_preset("ultralytics.freeze_3") is get_preset("ultralytics.freeze_3")
        True
    """
    if isinstance(name, Preset):
        return name
    if not isinstance(name, str):
        raise type_error("a preset name", name, "a str")
    made = _MADE.get(name)
    if made is not None:
        return made
    entry, number = _find(name)
    if entry is None:
        raise PresetError(f"unknown preset {name!r}; {closest(name, list_presets())}")
    family = _family(entry)
    if family is not None and number not in family.numbers:
        raise PresetError(f"unknown preset {name!r}: {entry.name} takes N in {_span(family.numbers)}")
    if isinstance(entry, Preset):
        return entry
    if isinstance(entry, PresetFamily):
        made = entry.make(number)
    else:
        target = get_preset(entry.of if number is None else member_name(entry.of, number))
        made = replace(target, name=name, description=f"alias of {target.name}: {target.description}")
    if made.name != name:
        raise PresetError(f"preset family {entry.name!r} made a preset named {made.name!r} for {name!r}")
    _MADE[name] = made
    return made


def list_presets(pattern: str = "*") -> list[str]:
    """Sorted names of the presets matching the fnmatch ``pattern``, each member of a family and each alias included.

    Example:
        >>> list_presets("timm.hrnet.*")
        ['timm.hrnet.backbone']
        >>> list_presets("frozen_stages_*")
        ['frozen_stages_1', 'frozen_stages_2', 'frozen_stages_3', 'frozen_stages_4']
    """
    if not isinstance(pattern, str):
        raise type_error("pattern", pattern, "a str", fix="an fnmatch pattern such as 'timm.*'")
    return sorted(name for name in _every_name() if fnmatch.fnmatchcase(name, pattern))


def _every_name() -> Iterator[str]:
    for key, entry in _PRESETS.items():
        family = _family(entry)
        if family is None:
            yield key
        else:
            yield from (member_name(key, n) for n in family.numbers)


def _family(entry: Entry) -> PresetFamily | None:
    """The family ``entry`` is or stands for (an alias of a family), or None."""
    while isinstance(entry, Alias):
        entry = _PRESETS[entry.of]
    return entry if isinstance(entry, PresetFamily) else None


def _find(name: str) -> tuple[Entry | None, int | None]:
    """The entry that ``name`` names, and the number it gives where that entry is (or stands for) a family:
    ``(family, 3)`` for ``ultralytics.freeze_3``, whether the family has a 3 or not."""
    entry = _PRESETS.get(name)
    if entry is not None and _family(entry) is None:
        return entry, None
    match = _NUMBERED.fullmatch(name)
    entry = None if match is None else _PRESETS.get(f"{match['stem']}N")
    if entry is None or _family(entry) is None:
        return None, None
    return entry, int(match["number"])


def _taken(name: str) -> bool:
    entry, number = _find(name)
    return name in _PRESETS or (entry is not None and (number is None or number in _family(entry).numbers))


def _span(numbers: range) -> str:
    return f"{numbers.start}..{numbers[-1]}" if numbers.step == 1 else ", ".join(map(str, numbers))
