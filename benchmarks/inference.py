"""Inference speed: ``python -m benchmarks.inference`` prints per-face latency, throughput and photo latency.

Measures what ships: the :class:`~fer_core.predict.Predictor` in ONNX Runtime (``--runtime``
``auto``, ``onnx`` or ``onnx-int8``), on the CPU with ``--threads`` threads (default 2), on real
faces (the bundled sample, or ``--faces DATA``) and on a 640x480 photo composed with one of them
(160 px face). Where the model card gates the second pass (the mirror) on how clear the first
answer is, the share of faces that get it decides the speed. The bundled sample comes from the
training split, where the model is surer than on new faces, so its figures flatter the gate:
measure on faces the model never saw (``--faces ../shared/fer2013/val``).
``--architecture`` measures an untrained design (random weights, the bundled model's inference
settings) before hours go into training it. ``--torch`` also times the PyTorch model, for
comparison only (serving does not run it), where PyTorch is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from fer_core._cli import cli_main
from fer_core._torch import require_torch
from fer_core._validation import FERError
from fer_core.catalog import weights_for
from fer_core.constants import TTA_MODES
from fer_core.hardware import cpu_description
from fer_core.predict import RUNTIMES

#: ``--tta`` values and the Predictor's ``tta`` and ``mirror_gap`` arguments they give (None: the
#: model card decides): as the card says, on with the card's gate, off, or every face mirrored.
TTA_CHOICES: dict[str, tuple[bool | None, float | None]] = {"card": (None, None), **TTA_MODES}

#: Batch sizes of the throughput measurement.
BATCH_SIZES = (1, 16, 64, 256, 1024)


def _times(fn: Callable[[], object], *, seconds: float, min_runs: int = 20) -> np.ndarray:
    fn()  # warm-up: first calls allocate and pick kernels
    fn()
    out = []
    start = time.perf_counter()
    while len(out) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.asarray(out)


def untrained_weights(architecture: str, widths: tuple[int, ...] | None, folder: str | Path) -> Path:
    """A randomly initialised ``architecture`` saved in ``folder`` with the bundled card's inference settings.

    Its speed is the trained model's (the same layers run), its answers are not: for ``bench`` only.
    Needs PyTorch to build the model; the Predictor then exports it to ONNX when it loads it.
    """
    torch = require_torch("measuring an untrained design (--architecture)")
    from fer_core.model import count_params, create_model
    from fer_core.weights import DEFAULT_WEIGHTS, card_path, save_model

    kwargs = {} if widths is None else {"widths": tuple(widths)}
    try:
        with torch.random.fork_rng():  # the same weights every time, and the caller's random state untouched
            torch.manual_seed(0)
            model = create_model(architecture, **kwargs).eval()
    except (ValueError, TypeError) as err:
        raise FERError(f"--architecture {architecture}: {err}") from None
    bundled = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
    card = {"architecture": architecture, "model_kwargs": {k: list(v) for k, v in kwargs.items()},
            "labels": bundled["labels"], "parameters": count_params(model), "untrained": True,
            "inference": dict(bundled.get("inference", {}))}
    return save_model(model, Path(folder) / f"{architecture}.safetensors", card)


def _batch_speed(run: Callable[[np.ndarray], object], faces: np.ndarray, *, seconds: float,
                 batch_sizes: tuple[int, ...]) -> tuple[np.ndarray, dict[int, float]]:
    """Seconds per call of ``run`` on one face at a time, going round ``faces``, and faces/s per batch size."""
    next_face = iter(np.concatenate([faces] * 1000))
    one = _times(lambda: run(next(next_face)[None]), seconds=seconds)
    pool = np.concatenate([faces] * (max(batch_sizes) // len(faces) + 1))
    throughput = {}
    for size in batch_sizes:
        batch = pool[:size]
        t = _times(lambda batch=batch: run(batch), seconds=seconds, min_runs=5)
        throughput[size] = size / float(np.median(t))
    return one, throughput


def _installed_torch() -> ModuleType | None:
    """The ``torch`` module, or None where PyTorch is not installed (the serving install)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_bench(weights: str | Path | None, faces: np.ndarray, *, threads: int, seconds: float,
                batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict[str, object] | None:
    """The PyTorch model's speed (fp32, plain pass, no mirror), for comparison: serving does not run it.

    None where PyTorch is not installed.
    """
    torch = _installed_torch()
    if torch is None:
        return None
    from fer_core.export import normalise_faces
    from fer_core.weights import load_model

    torch.set_num_threads(threads)
    model, _ = load_model(weights)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(normalise_faces(batch))).numpy()

    one, throughput = _batch_speed(run, faces, seconds=seconds, batch_sizes=batch_sizes)
    best = max(throughput, key=throughput.get)
    return {"torch_version": torch.__version__, "face_ms_median": 1000 * float(np.median(one)),
            "face_ms_p95": 1000 * float(np.percentile(one, 95)), "throughput": throughput,
            "best_batch": best, "best_faces_per_s": throughput[best]}


def run_bench(*, weights: str | None, runtime: str, threads: int, seconds: float, tta: bool | None = None,
              mirror_gap: float | None = None, faces_from: str | None = None,
              batch_sizes: tuple[int, ...] = BATCH_SIZES, with_torch: bool = False) -> dict[str, object]:
    """Time the served model (the Predictor in ONNX Runtime) as ``runtime``, ``tta`` and ``mirror_gap``
    set it (None: as the model card says); ``with_torch`` adds the PyTorch model's speed (``torch``:
    a dict, or None where PyTorch is not installed)."""
    import cv2

    from benchmarks.scenes import compose_scene
    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces
    from fer_core.export import normalise_faces
    from fer_core.predict import Predictor, top_two_gap

    cv2.setNumThreads(threads)
    predictor = Predictor(weights, runtime=runtime, tta=tta, mirror_gap=mirror_gap, threads=threads)
    sample = load_faces(faces_from or SAMPLE_PATH, progress=False).images
    if len(sample) == 0:
        raise FERError(f"no faces in {faces_from}")
    # Shuffled: a data set is stored class by class, and how sure the model is (so how many
    # faces the gated mirror takes) differs by class.
    faces = sample[np.random.default_rng(0).permutation(len(sample))]
    second_pass_share = 0.0
    if predictor.tta and predictor.mirror_gap == math.inf:
        second_pass_share = 1.0
    elif predictor.tta:  # the faces whose plain pass leaves the top two logits within the gate
        plain = np.concatenate([predictor.model(normalise_faces(faces[start:start + 256]))
                                for start in range(0, len(faces), 256)])
        second_pass_share = float(np.mean(top_two_gap(plain) < predictor.mirror_gap))

    # Batch 1 goes round the faces, so a gated mirror runs as often as it would on them.
    one, throughput = _batch_speed(lambda batch: predictor.predict_faces(batch, batch_size=len(batch)), faces,
                                   seconds=seconds, batch_sizes=batch_sizes)
    photo, _ = compose_scene([sample[3 % len(sample)]], seed=0, size=(640, 480), face_size=(160, 160))
    found = predictor.predict_image(photo)
    photo_times = _times(lambda: predictor.predict_image(photo), seconds=seconds)
    best = max(throughput, key=throughput.get)
    onnx_file = predictor.onnx_file
    return {
        "runtime": predictor.runtime, "flip_tta": predictor.tta, "mirror_gap": predictor.mirror_gap,
        "second_pass_share": second_pass_share, "faces": faces_from or "bundled sample (training faces)",
        "faces_count": len(faces), "threads": threads,
        "face_ms_median": 1000 * float(np.median(one)), "face_ms_p95": 1000 * float(np.percentile(one, 95)),
        "throughput": throughput, "best_batch": best, "best_faces_per_s": throughput[best],
        "photo_ms_median": 1000 * float(np.median(photo_times)),
        "photo_ms_p95": 1000 * float(np.percentile(photo_times, 95)), "photo_faces_found": len(found),
        "weights_file": predictor.weights.name, "weights_mb": predictor.weights.stat().st_size / 1e6,
        # None: the card names no ONNX file for this runtime, so the weights were exported when loaded.
        "onnx_file": None if onnx_file is None else onnx_file.name,
        "onnx_mb": None if onnx_file is None else onnx_file.stat().st_size / 1e6,
        "cpu": cpu_description(),
        **({"torch": torch_bench(predictor.weights, faces, threads=threads, seconds=seconds,
                                 batch_sizes=batch_sizes)} if with_torch else {}),
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", default=None, help="weights to measure (default: the bundled model)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="a bundled model to measure, by name (its card's name, else its file's stem), "
                             "instead of --weights")
    parser.add_argument("--runtime", choices=list(RUNTIMES), default="auto",
                        help="ONNX Runtime in float32 (onnx) or int8 (onnx-int8); auto: the one the model card names")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--tta", choices=list(TTA_CHOICES), default="card",
                        help="the mirror as a second pass: as the model card sets it, on with the card's gate, "
                             "off, or on for every face")
    parser.add_argument("--faces", default=None, metavar="DATA",
                        help="real faces to measure on, in any form fer_core.datasets reads "
                             "(default: the bundled sample of training faces)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on each measurement")
    parser.add_argument("--architecture", default=None,
                        help="measure an untrained model of this registered architecture instead of --weights "
                             "(needs PyTorch to build it)")
    parser.add_argument("--widths", default=None, metavar="C1,C2,...",
                        help="with --architecture: channels of each stage, e.g. 32,64,128,256")
    parser.add_argument("--torch", action="store_true",
                        help="also time the PyTorch model (fp32, no mirror), for comparison only: serving does "
                             "not run it; skipped where PyTorch is not installed")
    return parser


def _widths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise FERError(f"--widths must be whole numbers separated by commas, got {text!r}") from None
    if not widths or min(widths) < 1 or max(widths) > 4096:
        raise FERError(f"--widths must be between 1 and 4096 channels each, got {text!r}")
    return widths


@cli_main
def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fer_bench_") as folder:
        if args.widths and not args.architecture:
            raise FERError("--widths goes with --architecture")
        if args.architecture and (args.weights or args.model):
            raise FERError("give --weights or --model (a trained model) or --architecture (an untrained design), "
                           "not both")
        weights = (str(untrained_weights(args.architecture, _widths(args.widths), folder))
                   if args.architecture else weights_for(args.weights, args.model))
        tta, mirror_gap = TTA_CHOICES[args.tta]
        r = run_bench(weights=weights, runtime=args.runtime, threads=args.threads, seconds=args.seconds,
                      tta=tta, mirror_gap=mirror_gap, faces_from=args.faces, with_torch=args.torch)
    if args.architecture:
        print(f"untrained {args.architecture}"
              + (f" with widths {args.widths}" if args.widths else "") + " (random weights: speed only)")
    if not r["flip_tta"]:
        second = "none"
    elif r["mirror_gap"] == math.inf:
        second = "its mirror, for every face"
    else:
        second = (f"its mirror, where the top two logits lie within {r['mirror_gap']:g}: "
                  f"{100 * r['second_pass_share']:.1f}% of these faces")
    print(f"cpu: {r['cpu']}")
    print(f"runtime {r['runtime']} (ONNX Runtime), flip TTA {'on' if r['flip_tta'] else 'off'}, "
          f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}")
    print(f"second pass: {second}")
    print(f"faces: {r['faces']} ({r['faces_count']})")
    print(f"per face, batch 1:        median {r['face_ms_median']:.3f} ms   p95 {r['face_ms_p95']:.3f} ms")
    for size, rate in r["throughput"].items():
        print(f"throughput, batch {size:5d}: {rate:8.0f} faces/s")
    print(f"best batch {r['best_batch']}: {r['best_faces_per_s']:.0f} faces/s")
    print(f"640x480 photo, one face:  median {r['photo_ms_median']:.1f} ms   p95 {r['photo_ms_p95']:.1f} ms "
          f"(faces found: {r['photo_faces_found']})")
    onnx = (f"{r['onnx_file']} {r['onnx_mb']:.2f} MB" if r["onnx_file"] is not None
            else "none bundled, exported from the weights when loaded")
    print(f"model files: ONNX {onnx}; weights {r['weights_file']} {r['weights_mb']:.2f} MB")
    if "torch" in r:
        t = r["torch"]
        if t is None:
            print("PyTorch (not served, for comparison): not installed, not measured")
        else:
            print(f"PyTorch {t['torch_version']} fp32, no mirror (not served, for comparison): "
                  f"per face, batch 1 median {t['face_ms_median']:.3f} ms   p95 {t['face_ms_p95']:.3f} ms; "
                  f"best batch {t['best_batch']}: {t['best_faces_per_s']:.0f} faces/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
