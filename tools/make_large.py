"""Make a large test data set from real faces: each face repeated, lightly transformed, to N faces.

    python -m tools.make_large ../shared/fer2013 --faces 100000 --out /work/runs/million/f100k --form parquet
    python -m tools.make_large ../shared/fer2013 --faces 1000000 --out /work/runs/million/f1m --form folder

Face ``i`` is a copy of source face ``i mod M`` (``M`` real faces, in the order
:func:`fer_core.datasets.load_faces` reads them): copy 0 is the real face untouched, so the real
data set's own duplicates are all there; every later copy is transformed with its own seeded
random draw (:func:`transform`): shifted by up to :data:`MAX_SHIFT` pixels, scaled by up to
2 %, rotated by up to 2 degrees, mirrored with probability 1/2, its brightness and contrast
changed and grey noise added. Such a copy is often, not always, within the duplicate search's
pHash distance of its source (a mirrored one is found as ``mirrored``): the large data set
has many real near-duplicates without every repeat being one. Every copy keeps its source's
split and label; its ``sample_id`` is the source's with ``~c<copy>`` appended.

Forms: ``parquet`` writes shards of :data:`SHARD_FACES` faces named ``<split>-<k>-of-<n>.parquet``
(an ``image`` column of PNG bytes as ``datasets`` writes it, ``emotion``, ``split``,
``sample_id``), ``folder`` the Kaggle layout ``<split>/<emotion>/<id>.png``. The same command
gives the same files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from fer_core._cli import cli_main
from fer_core._validation import FERError
from fer_core.constants import IMAGE_SIZE
from fer_core.datasets import FaceTable, load_faces, save_table
from fer_core.datasets._table import build_frame
from fer_core.labels import EMOTIONS

#: Largest shift of a copy, in pixels, each way.
MAX_SHIFT = 1
#: Faces per Parquet shard.
SHARD_FACES = 50_000
_BATCH = 4096


def transform(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light random change of one 48x48 uint8 face: shift, scale, rotation, mirror, brightness, contrast, noise."""
    centre = (IMAGE_SIZE / 2 - 0.5, IMAGE_SIZE / 2 - 0.5)
    matrix = cv2.getRotationMatrix2D(centre, float(rng.uniform(-2, 2)), float(rng.uniform(0.98, 1.02)))
    matrix[:, 2] += rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, 2)
    moved = cv2.warpAffine(face, matrix, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.5:
        moved = moved[:, ::-1]
    values = moved.astype(np.float32) * rng.uniform(0.9, 1.1) + rng.uniform(-15, 15)
    values += rng.normal(0.0, rng.uniform(1.0, 4.0), values.shape).astype(np.float32)
    return np.clip(values, 0, 255).round().astype(np.uint8)


def make_faces(images: np.ndarray, index: np.ndarray, *, seed: int) -> np.ndarray:
    """Faces ``index`` of the large data set made from ``images`` (M, 48, 48): see the module docstring."""
    m = len(images)
    out = np.empty((len(index), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for k, i in enumerate(index.tolist()):
        source = images[i % m]
        out[k] = source if i < m else transform(source, np.random.default_rng([seed, i]))
    return out


def _rows(table: FaceTable, index: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Source rows and sample ids of faces ``index``."""
    m = len(table)
    ids = table.frame["sample_id"].astype(str).to_numpy()[index % m]
    return index % m, [sid if c == 0 else f"{sid}~c{c}" for sid, c in zip(ids, (index // m).tolist())]


def write_parquet(table: FaceTable, faces: int, out: Path, *, seed: int) -> None:
    """Shards of :data:`SHARD_FACES` faces per split, ``<split>-<k>-of-<n>.parquet``, in ``out``."""
    m = len(table)
    splits = table.frame["split"].astype(str).to_numpy()
    order = np.argsort(splits[np.arange(faces) % m], kind="stable")  # faces of each split together
    names = splits[np.arange(faces) % m][order]
    for split in dict.fromkeys(names):
        chosen = order[names == split]
        count = -(-len(chosen) // SHARD_FACES)
        for k in range(count):
            part = chosen[k * SHARD_FACES : (k + 1) * SHARD_FACES]
            rows, ids = _rows(table, part)
            frame = build_frame(ids, table.labels[rows], [split] * len(part), [f"copy:{i}" for i in part])
            shard = FaceTable(images=make_faces(table.images, part, seed=seed), frame=frame, name=out.name)
            save_table(shard, out / f"{split}-{k:05d}-of-{count:05d}.parquet")
            print(f"  {split} shard {k + 1}/{count}: {len(part):,} faces", flush=True)


def write_folder(table: FaceTable, faces: int, out: Path, *, seed: int) -> None:
    """The Kaggle layout ``<split>/<emotion>/<id>.png`` in ``out`` (the id's ``/`` become ``_``)."""
    splits = table.frame["split"].astype(str).to_numpy()
    for split in dict.fromkeys(splits):
        for emotion in EMOTIONS:
            (out / split / emotion).mkdir(parents=True, exist_ok=True)

    def save(item: tuple[Path, np.ndarray]) -> None:
        ok, data = cv2.imencode(".png", item[1])
        item[0].write_bytes(data.tobytes())

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        for start in range(0, faces, _BATCH):
            stop = min(start + _BATCH, faces)
            index = np.arange(start, stop)
            pixels = make_faces(table.images, index, seed=seed)
            rows, ids = _rows(table, index)
            paths = [out / splits[r] / EMOTIONS[table.labels[r]] / (sid.replace("/", "_") + ".png")
                     for r, sid in zip(rows, ids)]
            list(pool.map(save, zip(paths, pixels)))
            if (start // _BATCH) % 25 == 0:
                print(f"  {stop:,}/{faces:,} faces", flush=True)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.make_large", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", help="real faces in any form fer_core.datasets reads (../shared/fer2013)")
    parser.add_argument("--faces", type=int, required=True, help="faces to write")
    parser.add_argument("--out", required=True, help="folder to write (created; must be empty)")
    parser.add_argument("--form", choices=("parquet", "folder"), default="parquet", help="data form to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the transformations")
    return parser


@cli_main
def main(args: argparse.Namespace) -> int:
    if args.faces < 1:
        raise FERError(f"--faces must be at least 1, got {args.faces}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FERError(f"{out} is not empty; give a new folder")
    table = load_faces(args.data)
    table = FaceTable(images=np.ascontiguousarray(table.images), frame=table.frame, name=table.name)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"writing {args.faces:,} faces from {len(table):,} real ones to {out} ({args.form})", flush=True)
    (write_parquet if args.form == "parquet" else write_folder)(table, args.faces, out, seed=args.seed)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
