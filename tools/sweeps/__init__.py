"""The sweeps behind ``python tools/sweep.py``: one module per source, one report format (``report``).

* ``classifiers``: every torchvision model and every timm classifier (or ``features_only`` backbone), on the meta
  device;
* ``hf``: transformers' sequence- and image-classification architectures, from their default configs;
* ``libraries``: one tiny model per family of smp, ultralytics, diffusers and torchvision's feature extractors;
* ``multipart``: Hugging Face and open_clip models of several parts.
"""
