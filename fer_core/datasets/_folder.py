"""Reading the Kaggle folder layout: ``<root>/<split>/<emotion>/<file>`` or ``<root>/<emotion>/<file>``."""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_core._validation import DatasetError
from fer_core.constants import IMAGE_EXTENSIONS, IMAGE_SIZE, SPLIT_ALIASES, UNSPLIT
from fer_core.labels import EMOTION_TO_ID, normalise

from ._progress import progress_bar
from ._table import FaceTable, build_frame, decode_face

__all__ = ["FolderFile", "list_folder", "read_folder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderFile:
    path: Path
    sample_id: str
    label: int
    split: str


def _split_of(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.strip().lower().replace("_", "").replace("-", ""))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_class_level(folder: Path) -> bool:
    """True when ``folder`` holds emotion folders directly (or any unknown class folders with images)."""
    return any(normalise(d.name) is not None for d in _subdirs(folder))


def _image_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                files.append(Path(root) / name)
    return files


def list_folder(root: Path) -> tuple[list[FolderFile], dict[str, int]]:
    """Every image file of a folder data set with its label and split, in a fixed order.

    Class folders outside the seven emotions are left out and counted in the
    second return value as ``unknown_class:<name>``.
    """
    if _is_class_level(root):
        # One split: the split is the folder's own name when it is one (``val/``).
        split_dirs = [(root, _split_of(root.name) or UNSPLIT)]
    else:
        split_dirs = [(d, _split_of(d.name) or d.name.lower()) for d in _subdirs(root) if _is_class_level(d)]
    files: list[FolderFile] = []
    skipped: dict[str, int] = {}
    for split_dir, split in split_dirs:
        for class_dir in _subdirs(split_dir):
            emotion = normalise(class_dir.name)
            paths = _image_files(class_dir)
            if emotion is None:
                if paths:
                    key = f"unknown_class:{class_dir.name}"
                    skipped[key] = skipped.get(key, 0) + len(paths)
                continue
            for path in paths:
                rel = path.relative_to(split_dir).with_suffix("").as_posix()
                files.append(FolderFile(path, f"{split}/{rel}", EMOTION_TO_ID[emotion], split))
    # Two files differing only by extension (a.png, a.jpg) would share an id: keep the suffix for those.
    seen: dict[str, int] = {}
    for f in files:
        seen[f.sample_id] = seen.get(f.sample_id, 0) + 1
    files = [
        FolderFile(f.path, f.sample_id + f.path.suffix.lower(), f.label, f.split) if seen[f.sample_id] > 1 else f
        for f in files
    ]
    return files, skipped


def _read_and_decode(path: Path) -> np.ndarray | None:
    try:
        return decode_face(path.read_bytes())
    except OSError:
        return None


def read_folder(root: Path, *, files: list[FolderFile] | None = None, skipped: dict[str, int] | None = None,
                progress: bool = True) -> FaceTable:
    """Decode a folder data set (see :func:`list_folder`); corrupt or non-image files are skipped and counted."""
    if files is None:
        files, skipped = list_folder(root)
    skipped = dict(skipped or {})
    unknown = {k.split(":", 1)[1]: v for k, v in skipped.items() if k.startswith("unknown_class:")}
    if unknown:
        names = ", ".join(f"{name} ({count} images)" for name, count in sorted(unknown.items()))
        warnings.warn(f"skipped class folders outside the seven emotions: {names}", stacklevel=3)
    if not files:
        raise DatasetError(
            f"no face images found in {str(root)!r}: expected <emotion>/<image> or <split>/<emotion>/<image> "
            f"folders (emotions: angry, disgust, fear, happy, sad, surprise, neutral; images: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    # cv2.imdecode releases the GIL, so two threads use both cores.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        decoded = pool.map(_read_and_decode, (f.path for f in files), chunksize=256)
        for i, face in enumerate(progress_bar(decoded, total=len(files), desc=f"decoding {root.name}", enable=progress)):
            if face is not None:
                images[i] = face
                ok[i] = True
    bad = int((~ok).sum())
    if bad:
        skipped["corrupt_files"] = bad
        examples = ", ".join(str(files[i].path) for i in np.flatnonzero(~ok)[:3])
        warnings.warn(f"skipped {bad} files that are not readable images (e.g. {examples})", stacklevel=3)
    if not ok.any():
        raise DatasetError(f"none of the {len(files)} image files in {str(root)!r} could be decoded")
    kept = [f for f, good in zip(files, ok) if good]
    frame = build_frame(
        [f.sample_id for f in kept], [f.label for f in kept], [f.split for f in kept], [str(f.path) for f in kept]
    )
    return FaceTable(images=images[ok], frame=frame, name=root.name, skipped=skipped)
