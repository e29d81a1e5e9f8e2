"""The errors freezable raises for a user's mistakes.

Every one is a :class:`FreezableError`, itself a :class:`ValueError`, and is
raised before anything is changed.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable

__all__ = [
    "FreezableError",
    "FreezableTypeError",
    "UnknownGroupError",
    "SpecError",
    "FreezeStateError",
    "PresetError",
    "DDPFreezeStateError",
    "BuiltFrozenWarning",
    "PrefixWarning",
    "closest",
    "describe",
    "shorten",
    "type_error",
    "unknown_group",
]


class FreezableError(ValueError):
    """A freezable call was given something it cannot use; nothing was changed."""


class FreezableTypeError(FreezableError, TypeError):
    """An argument has the wrong type (catchable as ``TypeError`` too)."""


class UnknownGroupError(FreezableError):
    """A freeze-group name that the model does not have."""


class SpecError(FreezableError):
    """A group spec that is malformed or matches nothing."""


class FreezeStateError(FreezableError):
    """A freeze state that is malformed or names what the model lacks."""


class PresetError(FreezableError):
    """An unknown preset, a duplicate one, or one that does not fit the model."""


class DDPFreezeStateError(FreezableError):
    """The freeze state changed after the model was wrapped in DistributedDataParallel."""


class BuiltFrozenWarning(UserWarning):
    """A call named parameters the model was built with frozen; they stay frozen (not an error: nothing failed)."""


class PrefixWarning(UserWarning):
    """A frozen prefix whose outputs cannot be cached (not always a sample's own); it runs uncached, without autograd."""


def shorten(names: Iterable[object], limit: int = 8) -> str:
    """The first ``limit`` names, quoted, and how many more: the one way messages list names.

    Example:
        >>> shorten(["a", "b", "c"], limit=2)
        "'a', 'b' and 1 more"
        >>> shorten([])
        ''
    """
    names = list(names)
    shown = ", ".join(repr(str(n)) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def closest(value: object, choices: Iterable[str], n: int = 3) -> str:
    """Says which of ``choices`` are closest to ``value``, for an error message.

    Example:
        >>> closest("clasifier", ["features", "classifier"])
        "did you mean 'classifier'?"
        >>> closest("x", [])
        'there are none'
        >>> print(closest("stage2", ["text_model.stage2", "vision_model.stage2", "logit_scale"]))
        did you mean 'text_model.stage2' or 'vision_model.stage2'? (a model of several parts names its groups
        after the part)
    """
    choices = sorted(set(choices))
    if not choices:
        return "there are none"
    of_parts = [c for c in choices if c.endswith(f".{value}")]  # a plain name asked of a model of several parts
    if of_parts:
        return (f"did you mean {' or '.join(repr(m) for m in of_parts)}? (a model of several parts names its groups "
                f"after the part)")
    matches = difflib.get_close_matches(str(value), choices, n=n, cutoff=0.5)
    if matches:
        return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
    return f"valid choices: {shorten(choices)}"


def describe(value: object) -> str:
    """A bad value's type and a short one-line repr, for an error message.

    A class is named in full (module and name), since passing a class where an
    instance belongs is a common slip.

    Example:
        >>> describe(["features", 3])
        "list: ['features', 3]"
        >>> describe(None)
        'NoneType: None'
        >>> describe(dict)
        'the class builtins.dict'
    """
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    return f"{type(value).__name__}: {' '.join(reprlib.repr(value).split())}"


def type_error(what: str, value: object, expected: str, fix: str = "") -> FreezableTypeError:
    """The one message for a wrong type: what was wrong, the kind expected, the value given, and the fix.

    A class given where an instance is expected gets the fix "pass an instance".

    Example:
        >>> print(type_error("train_bn", "yes", "a bool"))
        train_bn must be a bool, not str: 'yes'
        >>> print(type_error("backbone", dict, "an nn.Module instance"))
        backbone must be an nn.Module instance, not the class builtins.dict; pass an instance: dict(...)
    """
    message = f"{what} must be {expected}, not {describe(value)}"
    if isinstance(value, type):
        message += f"; pass an instance: {value.__name__}(...)"
    if fix:
        message += f"; {fix}"
    return FreezableTypeError(message)


def unknown_group(name: str, known: Iterable[str], model: str = "the model", what: str = "freeze group") -> UnknownGroupError:
    """The one message for a group name the model lacks: the closest names, or how to declare groups.

    Example:
        >>> print(unknown_group("haed", ["stem", "head"]))
        unknown freeze group 'haed'; did you mean 'head'?
        >>> print(unknown_group("backbone", [], "Net"))  # doctest: +ELLIPSIS
        unknown freeze group 'backbone'; there are none: Net has no freeze groups. Declare them ...
    """
    known = list(known)
    message = f"unknown {what} {name!r}; {closest(name, known)}"
    if not known:
        message += (
            f": {model} has no freeze groups. Declare them in the class (freeze_groups = {{'backbone': "
            f"['features'], 'head': 'classifier'}}) or with register_freeze_group(name, *specs); for a torchvision "
            f"or timm model, fz.apply_preset(model, 'linear_probe') registers its detected groups (stem, "
            f"stage1 ..., head, backbone), or wrap it: fz.FrozenBackbone(model)"
        )
    return UnknownGroupError(message)
