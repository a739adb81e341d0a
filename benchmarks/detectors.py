"""Face detector benchmark: recall, precision and speed of each backend on composed scenes.

    python -m benchmarks.detectors [--faces DIR] [--scenes 50] [--no-face 20] [--backends mtcnn yunet]

Builds ``--scenes`` seeded scenes (:func:`benchmarks.scenes.compose_scene`: 2-4 faces from
``--faces`` pasted at 80-200 px on a 640 x 480 background) and ``--no-face`` images without
faces (:func:`benchmarks.scenes.no_face_images`), runs :func:`fer_core.faces.detect` with each
backend on all of them, and prints one row per backend: recall (a pasted face is found when a
box has IoU >= ``--iou`` with its square), precision, boxes on the background, boxes inside a
pasted photo that match no square (second faces in FER2013 images), the mean IoU of the FER crop
(:func:`fer_core.faces.crop_square`) with the pasted square, false boxes per no-face image and
milliseconds per image. The figures, and the threshold and crop searches run on these scenes,
are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.scenes import box_iou, compose_scene, no_face_images
from fer_core import FERError
from fer_core._cli import cli_main
from fer_core.faces import (
    BACKENDS,
    DEFAULT_SCORE_THRESHOLDS,
    DetectorUnavailable,
    FaceBox,
    crop_square,
    detect,
    get_detector,
)
from fer_core.images import load_image, to_grey

__all__ = ["get_args_parser", "main"]


def _list_face_files(folder: Path) -> list[Path]:
    suffixes = {".png", ".jpg", ".jpeg", ".bmp"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command line of ``python -m benchmarks.detectors``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detectors",
        description="Recall, precision and speed of each face detector backend on seeded scenes made "
        "of real FER2013 faces pasted onto synthetic backgrounds.",
        add_help=add_help,
    )
    data = parser.add_argument_group("scenes")
    data.add_argument("--faces", default="../shared/fer2013/val", type=Path,
                      help="folder (searched recursively) of face images to paste (default: %(default)s)")
    data.add_argument("--scenes", default=50, type=int, help="scenes with faces (default: %(default)s)")
    data.add_argument("--no-face", default=20, type=int, help="images without faces (default: %(default)s)")
    data.add_argument("--faces-per-scene", default=(2, 4), type=int, nargs=2, metavar=("MIN", "MAX"),
                      help="faces pasted per scene (default: 2 4)")
    data.add_argument("--face-size", default=(80, 200), type=int, nargs=2, metavar=("MIN", "MAX"),
                      help="side of a pasted face in px (default: 80 200)")
    data.add_argument("--size", default=(640, 480), type=int, nargs=2, metavar=("W", "H"),
                      help="scene size (default: 640 480)")
    data.add_argument("--seed", default=0, type=int, help="seed of the scenes (default: %(default)s)")
    run = parser.add_argument_group("detectors")
    run.add_argument("--backends", default=sorted(BACKENDS), nargs="+", choices=sorted(BACKENDS),
                     help="backends to run (default: all)")
    run.add_argument("--score-threshold", default=None, type=float,
                     help="score threshold for every backend (default: each backend's own, "
                          f"{DEFAULT_SCORE_THRESHOLDS})")
    run.add_argument("--iou", default=0.3, type=float,
                     help="a detection finds a pasted face when their IoU is at least this (default: %(default)s)")
    run.add_argument("--threads", default=1, type=int, help="OpenCV threads (default: %(default)s)")
    return parser


def bench_backend(
    name: str,
    scenes: list[tuple[np.ndarray, list[tuple[int, int, int, int]]]],
    blanks: list[np.ndarray],
    *,
    score_threshold: float | None,
    iou: float,
) -> dict[str, Any]:
    """Run backend ``name`` on every scene and no-face image; the figures of one printed row."""
    get_detector(name, score_threshold)  # build outside the timing
    detect(scenes[0][0] if scenes else blanks[0], backend=name, score_threshold=score_threshold)
    n_true = n_found = n_false = n_inside = n_boxes = 0
    crop_ious: list[float] = []
    elapsed = 0.0
    for scene, truth in scenes:
        start = time.perf_counter()
        found = detect(scene, backend=name, score_threshold=score_threshold)
        elapsed += time.perf_counter() - start
        n_true += len(truth)
        n_boxes += len(found)
        used: set[int] = set()
        for square in truth:
            scored = [(box_iou(square, f), i) for i, f in enumerate(found) if i not in used]
            best, index = max(scored, default=(0.0, -1))
            if best >= iou:
                used.add(index)
                n_found += 1
                crop_ious.append(box_iou(square, crop_square(found[index])))
        for i, f in enumerate(found):
            if i in used:
                continue
            # A box mostly inside a pasted photo is a face of that photo (several FER2013 images
            # hold a second or off-centre face): neither a hit nor a false box.
            inside = max(_overlap_fraction(f, square) for square in truth) if truth else 0.0
            if inside >= 0.5:
                n_inside += 1
            else:
                n_false += 1
    blank_boxes = 0
    for img in blanks:
        start = time.perf_counter()
        blank_boxes += len(detect(img, backend=name, score_threshold=score_threshold))
        elapsed += time.perf_counter() - start
    n_images = len(scenes) + len(blanks)
    return {
        "backend": name,
        "threshold": get_detector(name, score_threshold).score_threshold,
        "faces": n_true,
        "recall": n_found / n_true if n_true else float("nan"),
        "precision": n_found / (n_found + n_false) if n_found + n_false else float("nan"),
        "false_boxes": n_false,
        "boxes_inside_pasted": n_inside,
        "crop_iou_mean": float(np.mean(crop_ious)) if crop_ious else float("nan"),
        "crop_iou_median": float(np.median(crop_ious)) if crop_ious else float("nan"),
        "false_per_no_face_image": blank_boxes / len(blanks) if blanks else float("nan"),
        "ms_per_image": 1000.0 * elapsed / n_images if n_images else float("nan"),
    }


def _overlap_fraction(box: FaceBox, square: Sequence[int]) -> float:
    sx, sy, ss, _ = square
    iw = max(0, min(box.x + box.w, sx + ss) - max(box.x, sx))
    ih = max(0, min(box.y + box.h, sy + ss) - max(box.y, sy))
    return iw * ih / max(1, box.area)


@cli_main
def main(args: argparse.Namespace) -> int:
    """Run the benchmark in ``args``; return the process exit status (2 on a user error, said on stderr)."""
    files = _list_face_files(args.faces) if args.faces.is_dir() else []
    if not files:
        raise FERError(f"no face images (.png, .jpg) found under {str(args.faces)!r}; "
                       "pass --faces DIR, e.g. a FER2013 split folder")
    lo, hi = args.faces_per_scene
    if not 1 <= lo <= hi:
        raise FERError(f"--faces-per-scene needs 1 <= MIN <= MAX, got {lo} {hi}")
    rng = np.random.default_rng(args.seed)
    size = tuple(args.size)
    scenes = []
    for i in range(args.scenes):
        count = int(rng.integers(lo, hi + 1))
        picked = rng.choice(len(files), size=min(count, len(files)), replace=False)
        faces = [to_grey(load_image(files[j])) for j in picked]
        scenes.append(compose_scene(faces, seed=args.seed * 100_003 + i, size=size, face_size=tuple(args.face_size)))
    blanks = no_face_images(args.seed + 1, args.no_face, size)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(args.threads)
    try:
        n_faces = sum(len(b) for _, b in scenes)
        print(f"{len(scenes)} scenes of {size[0]}x{size[1]} with {n_faces} pasted faces "
              f"({args.face_size[0]}-{args.face_size[1]} px, from {args.faces}), {len(blanks)} "
              f"no-face images, seed {args.seed}, {args.threads} OpenCV thread(s); "
              f"a face is found when a box has IoU >= {args.iou} with its pasted square")
        header = (f"{'backend':8} {'thresh':>6} {'recall':>7} {'precision':>9} {'false':>5} "
                  f"{'in-photo':>8} {'cropIoU':>7} {'false/no-face img':>17} {'ms/img':>7}")
        print(header)
        for name in args.backends:
            try:
                r = bench_backend(name, scenes, blanks, score_threshold=args.score_threshold, iou=args.iou)
            except DetectorUnavailable as err:
                print(f"{name:8} unavailable: {err}")
                continue
            print(f"{r['backend']:8} {r['threshold']:6.2f} {r['recall']:7.3f} {r['precision']:9.3f} "
                  f"{r['false_boxes']:5d} {r['boxes_inside_pasted']:8d} {r['crop_iou_mean']:7.3f} "
                  f"{r['false_per_no_face_image']:17.3f} {r['ms_per_image']:7.1f}")
    finally:
        cv2.setNumThreads(threads)
    print("false: boxes on the background; in-photo: boxes inside a pasted photo that match no "
          "pasted square (second faces in FER2013 images); cropIoU: mean IoU of the FER crop "
          "(crop_square) with the pasted square, over found faces")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
