"""Benchmark, load and evaluation harnesses of the FER tool; not part of the installed package.

Each module is a command run from the repository root, ``python -m benchmarks.X``; the product
packages (``fer_core``, ``annotate``, ``ui``) and ``app.py`` never import this package. The
figures they measured are in ``docs/benchmarks.md``.

- :mod:`benchmarks.inference`: the model's per-face, per-photo and batch speed.
- :mod:`benchmarks.app_bench`: start-up, ``predict`` and ``annotate_frame`` through a launched app.
- :mod:`benchmarks.webcam`: the webcam path's frame rate in Chromium with a fake camera.
- :mod:`benchmarks.browse`: the Browse tab's start-up, filter and page changes, memory.
- :mod:`benchmarks.load`: concurrent ``predict`` and relabel clients against a launched app.
- :mod:`benchmarks.attack`: hostile requests against a launched app, with its memory and temp folders.
- :mod:`benchmarks.store`: the relabel store under concurrent writers and killed processes.
- :mod:`benchmarks.rank_eval`: how well the relabel queue puts planted label errors first.
- :mod:`benchmarks.detectors`: recall, precision and speed of the face detectors on composed scenes.
- :mod:`benchmarks.scenes`: synthetic photos of real faces pasted at known places (used by the
  detector and inference benchmarks, the tests and ``tools/make_examples.py``).
"""
