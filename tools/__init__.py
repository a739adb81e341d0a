"""Maintainer scripts (bundling weights, making the sample and examples, the GPU sweep).

Run them from the repository root as modules, e.g. ``python -m tools.bundle_model --help``;
they import ``fer_core`` as a package, which is importable from the root (or anywhere once
``pip install -e .`` has installed it).
"""
