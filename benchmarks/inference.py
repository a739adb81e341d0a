"""Inference speed: ``python -m benchmarks.inference`` prints per-face latency, throughput and photo latency.

Measured on the CPU with ``--threads`` threads (default 2), on real faces (the bundled
sample, or ``--faces DATA``) and on a 640x480 photo composed with one of them (160 px face).
Where the model card gates a second pass (the mirror, the ensemble's other models) on how
clear the first answer is, the share of faces that get it decides the speed. The bundled
sample comes from the training split, where the model is surer than on new faces, so its figures flatter the gate:
measure on faces the model never saw (``--faces ../shared/fer2013/val``).
``--architecture`` measures an untrained design (random weights, the bundled model's
inference settings) before hours go into training it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fer_core._cli import cli_main
from fer_core._validation import FERError
from fer_core.constants import ENSEMBLE_MODES, TTA_MODES
from fer_core.hardware import cpu_description

#: ``--tta`` values and the Predictor's ``tta`` and ``mirror_gap`` arguments they give (None: the
#: model card decides): as the card says, on with the card's gate, off, or every face mirrored.
TTA_CHOICES: dict[str, tuple[bool | None, float | None]] = {"card": (None, None), **TTA_MODES}


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
    """
    import torch

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
            # One model's speed: the bundled ensemble's other members are not part of the design.
            "inference": {k: v for k, v in bundled.get("inference", {}).items() if k != "members"}}
    return save_model(model, Path(folder) / f"{architecture}.safetensors", card)


def run_bench(*, weights: str | None, runtime: str, threads: int, seconds: float, tta: bool | None = None,
              mirror_gap: float | None = None, ensemble: bool | None = None, faces_from: str | None = None,
              batch_sizes: tuple[int, ...] = (1, 16, 64, 256, 1024)) -> dict[str, object]:
    import cv2
    import torch

    from benchmarks.scenes import compose_scene
    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces
    from fer_core.predict import Predictor, top_two_gap

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    predictor = Predictor(weights, runtime=runtime, tta=tta, mirror_gap=mirror_gap, ensemble=ensemble, threads=threads)
    sample = load_faces(faces_from or SAMPLE_PATH, progress=False).images
    if len(sample) == 0:
        raise FERError(f"no faces in {faces_from}")
    # Shuffled: a data set is stored class by class, and how sure the model is (so how many
    # faces the gated mirror takes) differs by class.
    faces = sample[np.random.default_rng(0).permutation(len(sample))]
    pool = np.concatenate([faces] * (max(batch_sizes) // len(faces) + 1))
    second_pass_share = third_pass_share = 0.0
    if predictor.second_pass and predictor.mirror_gap == math.inf:
        second_pass_share, third_pass_share = 1.0, 1.0 if predictor.third_pass_views else 0.0
    elif predictor.second_pass:
        plain = Predictor(weights, runtime=runtime, tta=False, ensemble=False, threads=threads)
        second = top_two_gap(plain.logits(faces)) < predictor.mirror_gap
        second_pass_share = float(np.mean(second))
        if predictor.third_pass_views:
            after_second = Predictor(weights, runtime=runtime, tta=tta, mirror_gap=mirror_gap, ensemble=ensemble,
                                     threads=threads, third_pass_views=[]).logits(faces)
            third_pass_share = float(np.mean(second & (top_two_gap(after_second) < predictor.third_pass_gap)))

    # Batch 1 goes round the faces, so a gated mirror runs as often as it would on them.
    next_face = iter(np.concatenate([faces] * 1000))
    one = _times(lambda: predictor.predict_faces(next(next_face)[None]), seconds=seconds)
    throughput = {}
    for size in batch_sizes:
        batch = pool[:size]
        t = _times(lambda batch=batch, size=size: predictor.predict_faces(batch, batch_size=size),
                   seconds=seconds, min_runs=5)
        throughput[size] = size / float(np.median(t))
    photo, squares = compose_scene([sample[3]], seed=0, size=(640, 480), face_size=(160, 160))
    found = predictor.predict_image(photo)
    photo_times = _times(lambda: predictor.predict_image(photo), seconds=seconds)
    files = predictor.weights_files
    best = max(throughput, key=throughput.get)
    return {
        "runtime": predictor.runtime, "flip_tta": predictor.tta, "tta_views": list(predictor.tta_views),
        "mirror_gap": predictor.mirror_gap, "third_pass_views": list(predictor.third_pass_views),
        "third_pass_gap": predictor.third_pass_gap, "third_pass_share": third_pass_share,
        "ensemble_members": len(predictor.members), "second_pass_share": second_pass_share, "faces": faces_from or "bundled sample (training faces)",
        "faces_count": len(faces), "threads": threads,
        "face_ms_median": 1000 * float(np.median(one)), "face_ms_p95": 1000 * float(np.percentile(one, 95)),
        "throughput": throughput, "best_batch": best, "best_faces_per_s": throughput[best],
        "photo_ms_median": 1000 * float(np.median(photo_times)), "photo_ms_p95": 1000 * float(np.percentile(photo_times, 95)),
        "photo_faces_found": len(found), "weights_mb": sum(os.path.getsize(f) for f in files) / 1e6,
        "weights_files": len(files),
        "cpu": cpu_description(),
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", default=None, help="weights to measure (default: the bundled model)")
    parser.add_argument("--runtime", default="auto", help="auto, torch or onnx")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--tta", choices=list(TTA_CHOICES), default="card",
                        help="test-time augmentation (the mirror, or the views the card names): as the model "
                             "card sets it, on with the card's gate, off, or on for every face")
    parser.add_argument("--ensemble", choices=list(ENSEMBLE_MODES), default="card",
                        help="the other models the card bundles for the second pass: as the card says, or off "
                             "(this model alone)")
    parser.add_argument("--faces", default=None, metavar="DATA",
                        help="real faces to measure on, in any form fer_core.datasets reads "
                             "(default: the bundled sample of training faces)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on each measurement")
    parser.add_argument("--architecture", default=None,
                        help="measure an untrained model of this registered architecture instead of --weights")
    parser.add_argument("--widths", default=None, metavar="C1,C2,...",
                        help="with --architecture: channels of each stage, e.g. 32,64,128,256")
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
        if args.architecture and args.weights:
            raise FERError("give --weights (a trained model) or --architecture (an untrained design), not both")
        weights = (str(untrained_weights(args.architecture, _widths(args.widths), folder))
                   if args.architecture else args.weights)
        tta, mirror_gap = TTA_CHOICES[args.tta]
        r = run_bench(weights=weights, runtime=args.runtime, threads=args.threads, seconds=args.seconds,
                      tta=tta, mirror_gap=mirror_gap, ensemble=ENSEMBLE_MODES[args.ensemble],
                      faces_from=args.faces)
    if args.architecture:
        print(f"untrained {args.architecture}"
              + (f" with widths {args.widths}" if args.widths else "") + " (random weights: speed only)")
    models = r["ensemble_members"] + 1
    views = r["tta_views"]
    # "its mirror", or the views by name where the card adds shifted ones.
    named = ", ".join(views)
    view_words = ("its mirror", "their mirrors") if views == ["flip"] else (f"its views {named}", f"their views {named}")
    looks = ([view_words[0]] if views else []) + (
        [f"{models - 1} more model{'s' if models > 2 else ''}" + (f" and {view_words[1]}" if views else "")]
        if models > 1 else [])
    if not looks:
        second = "none"
    elif r["mirror_gap"] == math.inf:
        second = f"{' and '.join(looks)}, for every face"
    else:
        second = (f"{' and '.join(looks)}, where the top two logits lie within {r['mirror_gap']:g}: "
                  f"{100 * r['second_pass_share']:.1f}% of these faces")
    print(f"cpu: {r['cpu']}")
    tta_words = "flip TTA off" if not views else "flip TTA on" if views == ["flip"] else f"TTA on ({len(views)} views)"
    print(f"runtime {r['runtime']}, {tta_words}, "
          f"{models} model{'s' if models > 1 else ''}, {r['threads']} threads")
    print(f"second pass: {second}")
    if r["third_pass_views"]:
        more = ", ".join(r["third_pass_views"])
        if r["mirror_gap"] == math.inf:
            print(f"third pass: its views {more}, for every face")
        else:
            within = "" if r["third_pass_gap"] == math.inf else (
                f", where the averaged top two logits still lie within {r['third_pass_gap']:g}")
            print(f"third pass: its views {more} on faces of the second pass{within}: "
                  f"{100 * r['third_pass_share']:.1f}% of these faces")
    print(f"faces: {r['faces']} ({r['faces_count']})")
    print(f"per face, batch 1:        median {r['face_ms_median']:.3f} ms   p95 {r['face_ms_p95']:.3f} ms")
    for size, rate in r["throughput"].items():
        print(f"throughput, batch {size:5d}: {rate:8.0f} faces/s")
    print(f"best batch {r['best_batch']}: {r['best_faces_per_s']:.0f} faces/s")
    print(f"640x480 photo, one face:  median {r['photo_ms_median']:.1f} ms   p95 {r['photo_ms_p95']:.1f} ms "
          f"(faces found: {r['photo_faces_found']})")
    print(f"weights: {r['weights_mb']:.2f} MB in {r['weights_files']} file{'s' if r['weights_files'] > 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
