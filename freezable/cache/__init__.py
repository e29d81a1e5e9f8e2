"""The feature cache: a fully frozen backbone's outputs, computed once per sample and then looked up.

:class:`FeatureCache` (:mod:`~freezable.cache.feature_cache`) keeps outputs in memory and on disk; it is
bound to the exact weights that filled it (:mod:`~freezable.cache.binding`), writes and reads its directory
safely (:mod:`~freezable.cache.store`), and refuses a backbone whose outputs could differ from a fresh
forward (:mod:`~freezable.cache.checks`).
"""

from .feature_cache import FeatureCache as FeatureCache

__all__ = ["FeatureCache"]
