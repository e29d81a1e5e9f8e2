"""Integrations with training frameworks; each imports its framework only when imported itself.

* :mod:`freezable.integrations.lightning`: ``GradualUnfreezing``, a Lightning callback
  (``pip install "torch-freezable[lightning]"``).
"""
