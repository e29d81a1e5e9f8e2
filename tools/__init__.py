"""The project's own checks, kept outside the installed package (as timm keeps ``benchmark.py`` and torchvision its
``references/``): the oracles that detected groups are checked against (``tools/oracles/``), the sweeps that run them
over whole model libraries (``tools/sweep.py``, ``tools/sweeps/``) and the ecosystem report (``tools/ecosystem.py``).

``freezable`` never imports anything from here (``tests/test_imports.py`` checks it); the tests and the sweeps do.
"""
