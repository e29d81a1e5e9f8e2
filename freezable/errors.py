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
    "UnknownNameError",
    "FreezeStateError",
    "PresetError",
    "DDPFreezeStateError",
    "BuiltFrozenWarning",
    "PrefixWarning",
    "close_matches",
    "closest",
    "did_you_mean",
    "describe",
    "shorten",
    "type_error",
    "unknown_group",
    "no_groups",
]


class FreezableError(ValueError):
    """A freezable call was given something it cannot use; nothing was changed."""


class FreezableTypeError(FreezableError, TypeError):
    """An argument has the wrong type (catchable as ``TypeError`` too)."""


class UnknownGroupError(FreezableError):
    """A freeze-group name that the model does not have."""


class SpecError(FreezableError):
    """A group spec that is malformed or matches nothing."""


class UnknownNameError(UnknownGroupError, SpecError):
    """A name given for a group that is neither a registered group nor a submodule or parameter name.

    ``freeze()``, ``unfreeze()`` and ``trainable=`` take group names first and any other name as a spec, so
    a name that is neither is both an unknown group and a spec that matches nothing (either class catches it).
    """


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


def close_matches(value: object, choices: Iterable[str], n: int = 3, *, of_parts: bool = True) -> list[str]:
    """The ``choices`` a mistyped ``value`` most likely meant, best first; none when nothing is close.

    Among group names (``of_parts``), a plain name asked of a model of several parts (``stage2`` where the
    groups are ``vision_model.stage2`` and ``text_model.stage2``) means each part's group of that name, in the
    order given.

    Example:
        >>> close_matches("clasifier", ["features", "classifier"])
        ['classifier']
        >>> close_matches("stage2", ["text_model.stage2", "vision_model.stage2", "logit_scale"])
        ['text_model.stage2', 'vision_model.stage2']
        >>> close_matches("x", ["features"])
        []
    """
    choices = list(dict.fromkeys(choices))
    parts = [c for c in choices if c.endswith(f".{value}")] if of_parts else []
    return parts or difflib.get_close_matches(str(value), choices, n=n, cutoff=0.5)


def closest(value: object, choices: Iterable[str], n: int = 3) -> str:
    """Says which of ``choices`` are closest to ``value``, for an error message; without a close one, lists them
    in the order given (group order, where they are groups).

    Example:
        >>> closest("clasifier", ["features", "classifier"])
        "did you mean 'classifier'?"
        >>> closest("x", [])
        'there are none'
        >>> closest("x", ["stem", "stage1", "head"])
        "valid choices: 'stem', 'stage1', 'head'"
        >>> print(closest("stage2", ["text_model.stage2", "vision_model.stage2", "logit_scale"]))
        did you mean 'text_model.stage2' or 'vision_model.stage2'? (a model of several parts names its groups
        after the part)
    """
    choices = list(dict.fromkeys(choices))
    if not choices:
        return "there are none"
    matches = close_matches(value, choices, n)
    if not matches:
        return f"valid choices: {shorten(choices)}"
    return did_you_mean(value, matches)


def did_you_mean(value: object, matches: list[str], what: str = "") -> str:
    """``did you mean 'a' or 'b'?`` for the matches :func:`close_matches` found, ``what`` before them (``"the
    group "``); where they are a plain name's groups in a model of several parts, it says so.

    Example:
        >>> did_you_mean("haed", ["head"], "the group ")
        "did you mean the group 'head'?"
    """
    note = " (a model of several parts names its groups after the part)"
    return (f"did you mean {what}{' or '.join(repr(m) for m in matches)}?"
            + note * all(m.endswith(f".{value}") for m in matches))


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
        message += ": " + no_groups(model)
    return UnknownGroupError(message)


def no_groups(model: str) -> str:
    """What to do about a model without freeze groups, for the messages that find none.

    Example:
        >>> print(no_groups("Net"))  # doctest: +ELLIPSIS
        Net has no freeze groups. Declare them in the class (freeze_groups = ...) or with register_freeze_group...
    """
    return (f"{model} has no freeze groups. Declare them in the class (freeze_groups = {{'backbone': "
            f"['features'], 'head': 'classifier'}}) or with register_freeze_group(name, *specs); for a torchvision "
            f"or timm model, fz.apply_preset(model, 'linear_probe') registers its detected groups (stem, "
            f"stage1 ..., head, backbone), or wrap it: fz.FrozenBackbone(model)")
