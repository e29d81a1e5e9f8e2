"""Progressive freezing: the staged groups frozen front to back while a model trains.

:class:`ProgressiveFreezing` (:mod:`~freezable.progressive.freezing`) decides when each group freezes, by one
of two rules whose settings :mod:`~freezable.progressive.settings` checks. Once the frozen groups form a true
prefix of the forward, :mod:`~freezable.progressive.prefix` runs them without autograd (or from a cache),
after :mod:`~freezable.progressive.probe` has checked, on a real forward, that they are one.
"""

from .freezing import ProgressiveFreezing as ProgressiveFreezing
from .settings import check_options as check_options

__all__ = ["ProgressiveFreezing", "check_options"]
