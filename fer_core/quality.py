"""Quality scores for 48x48 grey faces, named as in FER2013 Enhanced.

Notation: ``N`` faces, each ``(48, 48)`` uint8 grey levels ``x``; ``K`` classes
present among the labels.

Four components, each in ``[0, 1]``, combined with
:data:`fer_core.constants.QUALITY_WEIGHTS`:

``edge_score`` (0.30): edge content, how much facial structure there is.
    Raw statistic ``edge_raw`` = mean Sobel gradient magnitude
    ``sqrt(Gx**2 + Gy**2)`` (OpenCV 3x3 Sobel, grey levels) over the 46x46
    interior pixels.
``contrast_score`` (0.30): RMS contrast, the spread of grey values.
    Raw statistic ``pixel_std`` (population standard deviation, grey levels).
``focus_score`` (0.25): sharpness (blur detection).
    Raw statistic ``focus_raw`` = variance of the 4-neighbour Laplacian over the
    46x46 interior (Pech-Pacheco et al., "Diatom autofocusing in brightfield
    microscopy", ICPR 2000); it is heavy-tailed (skewness 4.8 on FER2013
    train), so it is normalised on ``log1p(focus_raw)``.
``brightness_score`` (0.15): exposure balance.
    1 at the median mean brightness of FER2013 train (the "well exposed"
    level, 129.4, close to mid-grey), falling linearly to 0 at the 1st
    percentile (dark side) and at the 99th percentile (bright side) of
    ``pixel_mean``.

Normalisation. Thresholds tuned on large photos do not transfer to 48x48
faces, so each raw statistic ``s`` (after ``log1p`` for the focus one) is
mapped by a robust min-max between its 1st and 99th percentiles on FER2013
train, ``clip((s - p1) / (p99 - p1), 0, 1)``: every component spreads over
``[0, 1]`` on real faces (about 1 % of faces at each end are clipped). The
percentiles are the constants in :data:`QUALITY_CALIBRATION`;
:func:`calibrate` recomputes them for another copy of the data
(``python -m fer_core.quality DATA --calibrate``).

Combined score. ``quality_score = sum_c QUALITY_WEIGHTS[c] * c``, except that
a near-uniform image (``pixel_std < NEAR_UNIFORM_STD``, a blank frame) gets
``quality_score = 0``: it shows no face, whatever its brightness.

Flags. ``near_uniform`` marks such blank frames. ``few_grey_levels`` marks
faces with fewer than :data:`FEW_GREY_LEVELS` distinct grey values
(binarised or posterised copies, ``grey_levels`` holds the count).

Class balance. With labels, ``sample_weight = N / (K * n_k)`` for a face of
class ``k`` with ``n_k`` faces (scikit-learn's "balanced" weights): every
class then carries the same total weight ``N / K`` and the weights average 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fer_core._cli import cli_main
from fer_core._validation import FERError, check_face_batch
from fer_core.constants import IMAGE_SIZE, QUALITY_WEIGHTS

if TYPE_CHECKING:
    from fer_core.datasets import FaceTable

__all__ = [
    "QUALITY_CALIBRATION",
    "QUALITY_COLUMNS",
    "COMPONENT_COLUMNS",
    "NEAR_UNIFORM_STD",
    "FEW_GREY_LEVELS",
    "score_faces",
    "calibrate",
    "add_quality",
    "quality_percentiles",
    "get_args_parser",
    "main",
]

#: Percentiles of the raw statistics on FER2013 train (28,486 faces of
#: ``../shared/fer2013/train``), computed by ``calibrate(train_images)``, i.e.
#: ``python -m fer_core.quality ../shared/fer2013/train --calibrate``.
#: ``*_p1`` / ``*_p99`` are the 1st / 99th percentiles (``numpy.percentile``,
#: linear interpolation) used for the min-max of each component;
#: ``pixel_mean_p50`` is the well-exposed level of ``brightness_score``.
QUALITY_CALIBRATION: dict[str, float] = {
    "edge_raw_p1": 61.288,
    "edge_raw_p99": 212.343,
    "pixel_std_p1": 25.526,
    "pixel_std_p99": 87.355,
    "log_focus_raw_p1": 5.957,
    "log_focus_raw_p99": 8.847,
    "pixel_mean_p1": 52.007,
    "pixel_mean_p50": 129.377,
    "pixel_mean_p99": 201.050,
}

#: Below this standard deviation (grey levels, about 1 % of the 8-bit range) an
#: image is a blank frame: no face can be drawn with so little variation. The
#: least contrasted face of FER2013 train has ``pixel_std`` 9.1 (1st percentile 25.5).
NEAR_UNIFORM_STD: float = 3.0

#: A face with fewer distinct grey values than this is flagged ``few_grey_levels``.
#: 32 levels is 5 bits of grey: binarised (2 levels) and 3- or 4-bit posterised
#: copies (8, 16 levels) fall well below, while every face of FER2013 train has
#: at least 45 distinct values (0.1st percentile 88, median 218).
FEW_GREY_LEVELS: int = 32

#: The four components, in the order of :data:`fer_core.constants.QUALITY_WEIGHTS`.
COMPONENT_COLUMNS: tuple[str, ...] = tuple(QUALITY_WEIGHTS)

#: Columns of :func:`score_faces`, in order: the FER2013 Enhanced fields, then
#: raw statistics and flags of this scorer.
QUALITY_COLUMNS: tuple[str, ...] = (
    "quality_score",
    "brightness",
    "contrast",
    "edge_score",
    "focus_score",
    "brightness_score",
    "contrast_score",
    "pixel_mean",
    "pixel_std",
    "pixel_min",
    "pixel_max",
    "sample_weight",
    "edge_raw",
    "focus_raw",
    "grey_levels",
    "few_grey_levels",
    "near_uniform",
)

#: Faces scored per vectorised step (fits the CPU caches; larger is not faster).
CHUNK_SIZE: int = 1024

_PERCENTILES: tuple[int, ...] = (1, 5, 25, 50, 75, 95, 99)


# --------------------------------------------------------------------------- raw statistics


def _check_faces(images: np.ndarray) -> np.ndarray:
    """Validate ``images`` as ``(N, 48, 48)`` uint8 (one ``(48, 48)`` face accepted)."""
    images = check_face_batch(images)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"images must be {IMAGE_SIZE}x{IMAGE_SIZE} faces, got shape {images.shape}; "
            f"crop and resize faces to {IMAGE_SIZE}x{IMAGE_SIZE} first"
        )
    return images


def _row_variance(values: np.ndarray) -> np.ndarray:
    """Population variance of each row of a 2-D float32 array, shape (M,)."""
    centred = values - values.mean(axis=1, keepdims=True)
    return np.einsum("ij,ij->i", centred, centred) / values.shape[1]


def _raw_chunk(chunk: np.ndarray) -> dict[str, np.ndarray]:
    """Raw statistics of a chunk of faces ``(M, 48, 48)`` uint8, each of shape (M,)."""
    m = len(chunk)
    chunk = np.ascontiguousarray(chunk)
    flat = chunk.reshape(m, -1)
    # The faces stacked into one tall (M*48, 48) image: OpenCV filters it in one
    # call; the 3x3 kernels at interior pixels only read pixels of the same face.
    tall = chunk.reshape(m * IMAGE_SIZE, IMAGE_SIZE)
    gx = cv2.Sobel(tall, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(tall, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.magnitude(gx, gy).reshape(m, IMAGE_SIZE, IMAGE_SIZE)[:, 1:-1, 1:-1]
    laplacian = cv2.Laplacian(tall, cv2.CV_32F, ksize=1).reshape(m, IMAGE_SIZE, IMAGE_SIZE)[:, 1:-1, 1:-1]

    pixel_mean = flat.sum(axis=1, dtype=np.uint32) / flat.shape[1]
    pixel_var = _row_variance(flat.astype(np.float32))
    ordered = np.sort(flat, axis=1, kind="stable")  # radix sort for uint8: fast
    grey_levels = 1 + np.count_nonzero(ordered[:, 1:] != ordered[:, :-1], axis=1)
    return {
        "pixel_mean": pixel_mean,
        "pixel_std": np.sqrt(np.maximum(pixel_var, 0.0)).astype(np.float64),
        "pixel_min": ordered[:, 0].astype(np.int64),
        "pixel_max": ordered[:, -1].astype(np.int64),
        "grey_levels": grey_levels.astype(np.int64),
        "edge_raw": magnitude.reshape(m, -1).mean(axis=1, dtype=np.float64),
        "focus_raw": _row_variance(laplacian.reshape(m, -1)).astype(np.float64),
    }


def _raw_statistics(images: np.ndarray, *, progress: bool = False) -> dict[str, np.ndarray]:
    """Raw statistics of validated faces ``(N, 48, 48)``, each of shape (N,), computed in chunks.

    The faces may be memory-mapped (a large table): only one chunk is read at a time.
    """
    from fer_core.datasets._stream import iter_batches  # deferred: fer_core.datasets imports this module's users

    batches = iter_batches(images, size=CHUNK_SIZE)  # a memory-mapped table's pages are released as it goes
    total = -(-len(images) // CHUNK_SIZE)
    bar = tqdm(batches, total=total, desc="quality", unit="chunk", disable=not progress or total < 8)
    parts = [_raw_chunk(chunk) for _, chunk in bar]
    if not parts:  # no faces: empty columns of the right types
        one = _raw_chunk(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.uint8))
        parts = [{key: values[:0] for key, values in one.items()}]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


# --------------------------------------------------------------------------- normalisation


def _check_calibration(calibration: Mapping[str, float]) -> dict[str, float]:
    missing = sorted(set(QUALITY_CALIBRATION) - set(calibration))
    if missing:
        raise ValueError(f"calibration lacks {missing}; expected keys {sorted(QUALITY_CALIBRATION)}")
    values = {key: float(calibration[key]) for key in QUALITY_CALIBRATION}
    for stat in ("edge_raw", "pixel_std", "log_focus_raw"):
        if not values[f"{stat}_p99"] > values[f"{stat}_p1"]:
            low, high = values[f"{stat}_p1"], values[f"{stat}_p99"]
            raise ValueError(f"calibration needs {stat}_p99 > {stat}_p1, got {low} and {high}")
    if not values["pixel_mean_p1"] < values["pixel_mean_p50"] < values["pixel_mean_p99"]:
        raise ValueError(
            "calibration needs pixel_mean_p1 < pixel_mean_p50 < pixel_mean_p99, got "
            f"{values['pixel_mean_p1']}, {values['pixel_mean_p50']}, {values['pixel_mean_p99']}"
        )
    return values


def _min_max(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _components(raw: Mapping[str, np.ndarray], calibration: Mapping[str, float]) -> dict[str, np.ndarray]:
    """The four components in [0, 1] from the raw statistics, each of shape (N,)."""
    c = calibration
    mean = raw["pixel_mean"]
    mid = c["pixel_mean_p50"]
    dark = 1.0 - (mid - mean) / (mid - c["pixel_mean_p1"])
    bright = 1.0 - (mean - mid) / (c["pixel_mean_p99"] - mid)
    return {
        "edge_score": _min_max(raw["edge_raw"], c["edge_raw_p1"], c["edge_raw_p99"]),
        "contrast_score": _min_max(raw["pixel_std"], c["pixel_std_p1"], c["pixel_std_p99"]),
        "focus_score": _min_max(np.log1p(raw["focus_raw"]), c["log_focus_raw_p1"], c["log_focus_raw_p99"]),
        "brightness_score": np.clip(np.where(mean < mid, dark, bright), 0.0, 1.0),
    }


def _balanced_weights(labels: np.ndarray | None, n: int) -> np.ndarray:
    """``N / (K * n_k)`` per face (shape (N,)), or ones without labels."""
    if labels is None:
        return np.ones(n, dtype=np.float64)
    if not isinstance(labels, (np.ndarray, pd.Series, list, tuple)):
        raise TypeError(f"labels must be a numpy array, got {type(labels).__name__}")
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per image, got {labels.shape}")
    if n == 0:
        return np.ones(0, dtype=np.float64)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return n / (len(counts) * counts[inverse.reshape(-1)].astype(np.float64))


# --------------------------------------------------------------------------- public API


def score_faces(
    images: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    calibration: Mapping[str, float] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Quality fields of each face: four components, their weighted sum, raw statistics, flags.

    Parameters
    ----------
    images : (N, 48, 48) uint8, or one face (48, 48)
        Grey faces; not modified.
    labels : (N,) array, optional
        Class of each face (FER2013 ids or names). With labels,
        ``sample_weight = N / (K * n_k)`` (class-balanced, ``K`` classes
        present); without, ``sample_weight = 1``.
    calibration : dict, default=QUALITY_CALIBRATION
        Percentiles of the raw statistics used to normalise them, as returned
        by :func:`calibrate`.
    progress : bool, default=False
        Show a tqdm bar over chunks of 1,024 faces (only for 8 chunks or more).

    Returns
    -------
    pandas.DataFrame, N rows, columns :data:`QUALITY_COLUMNS`
        ``quality_score`` = ``sum_c QUALITY_WEIGHTS[c] * c`` over
        ``edge_score, contrast_score, focus_score, brightness_score`` (each in
        [0, 1]), 0 for ``near_uniform`` faces; ``brightness`` =
        ``pixel_mean / 255`` and ``contrast`` = ``pixel_std / 255`` (raw);
        ``pixel_*`` in grey levels; ``edge_raw`` (mean Sobel magnitude),
        ``focus_raw`` (variance of the Laplacian), ``grey_levels`` (distinct
        values); flags ``few_grey_levels`` and ``near_uniform``.

    Raises
    ------
    TypeError
        If ``images`` is not a numpy array.
    ValueError
        If ``images`` is not uint8 of shape (N, 48, 48) or (48, 48), or
        ``labels`` has not one value per face.

    See Also
    --------
    calibrate : recompute the normalisation percentiles.
    quality_percentiles : summary of the scores of a data set.
    """
    images = _check_faces(images)
    weights = _balanced_weights(labels, len(images))
    calib = _check_calibration(QUALITY_CALIBRATION if calibration is None else calibration)

    raw = _raw_statistics(images, progress=progress)
    components = _components(raw, calib)
    near_uniform = raw["pixel_std"] < NEAR_UNIFORM_STD
    quality = sum(QUALITY_WEIGHTS[name] * components[name] for name in COMPONENT_COLUMNS)
    quality = np.where(near_uniform, 0.0, np.clip(quality, 0.0, 1.0))

    columns = {
        "quality_score": quality,
        "brightness": raw["pixel_mean"] / 255.0,
        "contrast": raw["pixel_std"] / 255.0,
        **components,
        "pixel_mean": raw["pixel_mean"],
        "pixel_std": raw["pixel_std"],
        "pixel_min": raw["pixel_min"],
        "pixel_max": raw["pixel_max"],
        "sample_weight": weights,
        "edge_raw": raw["edge_raw"],
        "focus_raw": raw["focus_raw"],
        "grey_levels": raw["grey_levels"],
        "few_grey_levels": raw["grey_levels"] < FEW_GREY_LEVELS,
        "near_uniform": near_uniform,
    }
    return pd.DataFrame({name: columns[name] for name in QUALITY_COLUMNS})


def calibrate(images: np.ndarray, *, progress: bool = False) -> dict[str, float]:
    """Percentiles of the raw statistics of a set of real faces, for :data:`QUALITY_CALIBRATION`.

    Near-uniform images (blank frames) are left out.

    Parameters
    ----------
    images : (N, 48, 48) uint8
        Real faces, at least 100 that are not near-uniform (FER2013 train).
    progress : bool, default=False
        Show a tqdm bar over chunks.

    Returns
    -------
    dict[str, float]
        ``edge_raw_p1/p99``, ``pixel_std_p1/p99``, ``log_focus_raw_p1/p99``
        (of ``log1p(focus_raw)``) and ``pixel_mean_p1/p50/p99``.

    Raises
    ------
    ValueError
        If ``images`` is not (N, 48, 48) uint8, or holds fewer than 100 faces.
    """
    images = _check_faces(images)
    raw = _raw_statistics(images, progress=progress)
    keep = raw["pixel_std"] >= NEAR_UNIFORM_STD
    if keep.sum() < 100:
        raise ValueError(f"calibrate needs at least 100 faces that are not blank, got {int(keep.sum())}")
    stats = {
        "edge_raw": raw["edge_raw"][keep],
        "pixel_std": raw["pixel_std"][keep],
        "log_focus_raw": np.log1p(raw["focus_raw"][keep]),
    }
    result: dict[str, float] = {}
    for name, values in stats.items():
        low, high = np.percentile(values, [1, 99])
        result[f"{name}_p1"] = float(low)
        result[f"{name}_p99"] = float(high)
    low, mid, high = np.percentile(raw["pixel_mean"][keep], [1, 50, 99])
    result.update(pixel_mean_p1=float(low), pixel_mean_p50=float(mid), pixel_mean_p99=float(high))
    return {key: result[key] for key in QUALITY_CALIBRATION}


def add_quality(table: FaceTable, *, progress: bool = False) -> FaceTable:
    """A new table with the quality columns of its faces added, class-balanced by ``emotion``."""
    scores = score_faces(table.images, labels=table.frame["emotion"].to_numpy(), progress=progress)
    return table.with_columns(scores)


def quality_percentiles(frame: pd.DataFrame) -> pd.DataFrame:
    """Percentiles p1, p5, p25, p50, p75, p95, p99 of each component and of ``quality_score``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of :func:`score_faces` (or a table frame holding its columns).

    Returns
    -------
    pandas.DataFrame, 5 rows x 7 columns
        Rows ``edge_score, contrast_score, focus_score, brightness_score,
        quality_score``; columns ``p1 ... p99``.
    """
    names = [*COMPONENT_COLUMNS, "quality_score"]
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks quality columns {missing}; score it with score_faces first")
    values = np.percentile(frame[names].to_numpy(dtype=np.float64), _PERCENTILES, axis=0)
    return pd.DataFrame(values.T, index=names, columns=[f"p{p}" for p in _PERCENTILES])


# --------------------------------------------------------------------------- command line


def _parse_split(text: str) -> tuple[float, float, float]:
    """Read ``"70/15/15"`` (train/val/test percentages summing to 100) as fractions ``(0.7, 0.15, 0.15)``."""
    parts = str(text).strip().split("/")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"expected three percentages train/val/test like 70/15/15, got {text!r}"
        )
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"percentages must be numbers like 70/15/15, got {text!r}") from None
    if any(not np.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"percentages must be between 0 and 100, got {text!r}")
    if abs(sum(values) - 100.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"percentages must sum to 100, got {text!r} (sum {sum(values):g})")
    if values[0] == 0:
        raise argparse.ArgumentTypeError(f"the train percentage must be above 0, got {text!r}")
    train, val, test = (v / 100.0 for v in values)
    return (train, val, test)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_core.quality",
        description="Score the quality of every face of a FER2013 copy and write the enhanced table.",
    )
    parser.add_argument(
        "data", metavar="DATA", help="data set: Kaggle folder tree, fer2013.csv, Parquet file or hub id"
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", metavar="FILE", default=None,
        help="enhanced table to write: .parquet, .csv or .jsonl "
        "(required unless --bench or --calibrate)",
    )
    split = parser.add_argument_group("splitting")
    split.add_argument(
        "--split-stratified", metavar="A/B/C", type=_parse_split, default=None,
        help="re-split by emotion into train/val/test percentages, e.g. 70/15/15 "
        "(default: keep the data set's splits)",
    )
    split.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default: 0)")
    tools = parser.add_argument_group("tools")
    tools.add_argument(
        "--bench", action="store_true", help="print scoring speed (faces/s) on the loaded faces"
    )
    tools.add_argument(
        "--bench-repeats", type=int, default=5, metavar="R",
        help="timed repeats of --bench, median reported (default: 5)",
    )
    tools.add_argument(
        "--calibrate", action="store_true",
        help="print the percentile constants (QUALITY_CALIBRATION) computed on the loaded faces",
    )
    return parser


def _format_calibration(calibration: Mapping[str, float]) -> str:
    lines = ["QUALITY_CALIBRATION: dict[str, float] = {"]
    lines += [f'    "{key}": {value:.3f},' for key, value in calibration.items()]
    lines.append("}")
    return "\n".join(lines)


def _bench(images: np.ndarray, *, repeats: int) -> str:
    score_faces(images[:CHUNK_SIZE])  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        score_faces(images)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    rate = len(images) / median if median > 0 else float("inf")
    return f"scored {len(images)} faces: median {median:.3f} s over {repeats} runs, {rate:,.0f} faces/s"


@cli_main
def main(args: argparse.Namespace) -> int:
    if args.out is None and not (args.bench or args.calibrate):
        raise FERError("--out FILE is required unless --bench or --calibrate is given")
    if args.bench_repeats < 1:
        raise FERError(f"--bench-repeats must be at least 1, got {args.bench_repeats}")
    from fer_core.datasets import load_faces, save_table, stratified_split

    table = load_faces(args.data)
    if args.split_stratified is not None:
        table = stratified_split(table, args.split_stratified, seed=args.seed)
    if args.calibrate:
        print(_format_calibration(calibrate(table.images, progress=True)))
    if args.bench:
        print(_bench(table.images, repeats=args.bench_repeats))
    if args.out is not None:
        table = add_quality(table, progress=True)
        path = save_table(table, args.out)
        frame = table.frame
        print(
            f"wrote {len(frame)} faces to {path}; near_uniform: {int(frame['near_uniform'].sum())}, "
            f"few_grey_levels: {int(frame['few_grey_levels'].sum())}"
        )
        with pd.option_context("display.float_format", "{:.3f}".format):
            print(quality_percentiles(frame).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
