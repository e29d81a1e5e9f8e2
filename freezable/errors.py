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
    "closest",
    "describe",
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


def closest(value: object, choices: Iterable[str], n: int = 3) -> str:
    """Says which of ``choices`` are closest to ``value``, for an error message.

    Example:
        >>> closest("clasifier", ["features", "classifier"])
        "did you mean 'classifier'?"
        >>> closest("x", [])
        'there are none'
    """
    choices = sorted(set(choices))
    if not choices:
        return "there are none"
    matches = difflib.get_close_matches(str(value), choices, n=n, cutoff=0.5)
    if matches:
        return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
    shown = ", ".join(repr(c) for c in choices[:8])
    more = f" and {len(choices) - 8} more" if len(choices) > 8 else ""
    return f"valid choices: {shown}{more}"


def describe(value: object) -> str:
    """A bad value's type and a short one-line repr, for an error message.

    Example:
        >>> describe(["features", 3])
        "list ['features', 3]"
        >>> describe(None)
        'NoneType None'
    """
    return f"{type(value).__name__} {' '.join(reprlib.repr(value).split())}"
