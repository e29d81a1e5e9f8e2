"""Oracles that detected groups are checked against, shared by the sweeps (``tools/sweep.py``) and the tests.

Each oracle reads the answer off the model or off the source library itself, never off detection, and returns the
problems it found in words (an empty list: right). One module per idea:

* ``groups``: a group's parameters, a library attribute's parameters, groups that must split a model;
* ``classifiers``: a classifier's head (``get_classifier()``, what ``reset_classifier`` replaces), its stem and
  stages, a ``features_only`` backbone against its classifier, torchvision's ``trainable_backbone_layers`` rule;
* ``order``: the order groups run in on a real input (forward pre-hooks), per model and per part;
* ``parts``: models of several parts (no stage or block across two parts) and a library's own freeze function
  against a preset or group;
* ``libraries``: smp's stage split, ultralytics' yaml sections and trainer, diffusers' blocks, torchvision's
  feature extractors.
"""
