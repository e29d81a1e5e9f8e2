"""The two rules of :class:`~freezable.ProgressiveFreezing` and their settings, checked without a model.

``"schedule"`` (FreezeOut) takes ``total_steps``, ``start`` and ``spacing``; ``"gradient"`` (AutoFreeze) takes
``window`` and ``threshold`` (see :mod:`freezable.progressive.freezing` for what they do). A callback that
builds its ProgressiveFreezing once training starts checks its arguments here first (:func:`check_options`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import FreezableError, closest, describe, type_error

__all__ = ["RULES", "SPACINGS", "check_settings", "check_options"]

RULES = ("schedule", "gradient")
SPACINGS = ("linear", "cubic")
# each rule's settings and their defaults (None: required)
_SETTINGS: dict[str, dict[str, Any]] = {
    "schedule": {"total_steps": None, "start": 0.5, "spacing": "linear"},
    "gradient": {"window": 20, "threshold": 0.1},
}


def _check_fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error(what, value, "a number in (0, 1]")
    if not 0 < value <= 1:  # NaN fails too
        raise FreezableError(f"{what} must be in (0, 1] (a fraction of the run), got {value!r}")
    return float(value)


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(what, value, "an int >= 1")
    if value < 1:
        raise FreezableError(f"{what} must be an int >= 1, got {value!r}")
    return value


def _check_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise FreezableError(f"{what} must be one of {', '.join(map(repr, choices))}, not {describe(value)}; "
                             f"{closest(value, choices)}")
    return value


def check_settings(rule: object, settings: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The rule and its full settings (defaults filled in), checked; what does not depend on the model.

    Raises:
        FreezableError: an unknown rule, a setting of the other rule, a missing ``total_steps``, or a value
            out of range.
        FreezableTypeError: a value of the wrong type.

    Example:
        >>> check_settings("schedule", {"total_steps": 100})
        ('schedule', {'total_steps': 100, 'start': 0.5, 'spacing': 'linear'})
        >>> check_settings("gradient", {"window": 10})
        ('gradient', {'window': 10, 'threshold': 0.1})
    """
    rule = _check_choice(rule, "rule", RULES)
    own = _SETTINGS[rule]
    for name in settings:
        if name not in own:
            other = next((r for r, names in _SETTINGS.items() if name in names), None)
            if other is not None:
                raise FreezableError(f"{name} is a setting of rule={other!r}, not of rule={rule!r} (whose settings are "
                                     f"{', '.join(own)})")
            raise FreezableError(f"unknown setting {name!r} of rule={rule!r}; {closest(name, own)}")
    full = {name: settings.get(name, default) for name, default in own.items()}
    if rule == "schedule":
        if full["total_steps"] is None:
            raise FreezableError("rule='schedule' needs total_steps: the number of optimizer steps the run takes")
        full["total_steps"] = _check_count(full["total_steps"], "total_steps")
        full["start"] = _check_fraction(full["start"], "start")
        full["spacing"] = _check_choice(full["spacing"], "spacing", SPACINGS)
    else:
        full["window"] = _check_count(full["window"], "window")
        threshold = full["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise type_error("threshold", threshold, "a number > 0")
        if not (math.isfinite(threshold) and threshold > 0):
            raise FreezableError(f"threshold must be a finite number > 0 (a relative change of the gradient norm, "
                                 f"0.05 to 0.2 are usual), got {threshold!r}")
        full["threshold"] = float(threshold)
    return rule, full


_OPTIONS = ("optimizer", "until", "guard", "inference_prefix", "cache", "cache_max_bytes", "verify_inputs")


def check_options(rule: object, options: Mapping[str, Any]) -> None:
    """Checks ProgressiveFreezing's keyword arguments as far as they need no model (for a callback that builds
    it once training starts); ``total_steps`` may be left out for ``"schedule"``: the run's length comes then.

    Raises:
        FreezableError: an unknown rule, an unknown argument, or a rule setting that :func:`check_settings` refuses.

    Example:
        >>> check_options("gradient", {"window": 10, "until": "stage3"})
        >>> check_options("gradient", {"windw": 10})
        Traceback (most recent call last):
        ...
        freezable.errors.FreezableError: unknown argument 'windw' of ProgressiveFreezing; did you mean 'window'?
    """
    known = (*_OPTIONS, *(name for names in _SETTINGS.values() for name in names))
    for name in options:
        if name not in known:
            raise FreezableError(f"unknown argument {name!r} of ProgressiveFreezing; {closest(name, known)}")
    settings = {k: v for k, v in options.items() if k not in _OPTIONS and v is not None}
    if rule == "schedule":
        settings.setdefault("total_steps", 1)
    check_settings(rule, settings)
