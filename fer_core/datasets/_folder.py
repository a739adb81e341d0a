"""Reading the Kaggle folder layout: ``<root>/<split>/<emotion>/<file>`` or ``<root>/<emotion>/<file>``.

Every file is judged from its header before it is decoded, with the memory bound of
:mod:`fer_core.images` (:data:`~fer_core.images.DEFAULT_MAX_DECODE_BYTES`): a file over it is
skipped with a warning, like an unreadable one. Files reached through a symbolic link that
leads outside the data set's folder are skipped with a warning unless
``allow_outside_root=True``.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_core._validation import DatasetError, ImageError
from fer_core.constants import IMAGE_EXTENSIONS, SPLIT_ALIASES, UNSPLIT
from fer_core.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_DECODE_BYTES, ImageTooLarge, probe_image
from fer_core.labels import EMOTION_TO_ID, normalise

from ._progress import progress_bar
from ._stream import BATCH, FaceWriter
from ._table import FaceTable, build_frame, to_face48

__all__ = ["FolderFile", "list_folder", "read_folder", "decode_face_checked"]

log = logging.getLogger(__name__)

#: Peak bytes per decoded pixel on OpenCV's path (imdecode, then to_face48): 16-bit colour is
#: 8 bytes, its grey copy 2, and to_face48 brings non-8-bit grey to 8 bits through float64
#: arrays. JPEGs are 8-bit: 3 bytes of colour and 1 of grey.
_CV2_BYTES_PER_PIXEL = 32
_CV2_JPEG_BYTES_PER_PIXEL = 4
#: OpenCV's flags for a JPEG decoded reduced by libjpeg (orientation ignored, as IMREAD_UNCHANGED does).
_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


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


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, its links resolved, lies inside ``root`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False


def list_folder(root: Path, *, allow_outside_root: bool = False) -> tuple[list[FolderFile], dict[str, int]]:
    """Every image file of a folder data set with its label and split, in a fixed order.

    Class folders outside the seven emotions are left out and counted in the
    second return value as ``unknown_class:<name>``. Files that a symbolic link
    (the file itself or its split or class folder) leads outside ``root`` are
    left out and counted as ``outside_root``, unless ``allow_outside_root``.
    """
    if _is_class_level(root):
        # One split: the split is the folder's own name when it is one (``val/``).
        split_dirs = [(root, _split_of(root.name) or UNSPLIT)]
    else:
        split_dirs = [(d, _split_of(d.name) or d.name.lower()) for d in _subdirs(root) if _is_class_level(d)]
    real_root = root.resolve()
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
            linked_dir = split_dir.is_symlink() or class_dir.is_symlink()
            for path in paths:
                # os.walk does not descend into linked folders, so links can only be these.
                if not allow_outside_root and (linked_dir or path.is_symlink()) and not _inside(path, real_root):
                    skipped["outside_root"] = skipped.get("outside_root", 0) + 1
                    continue
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


def decode_face_checked(data: bytes, *, name: str = "the image data") -> np.ndarray:
    """Decode one encoded face image to 48x48 uint8 grey within the decoding memory bound.

    The header is checked first (:func:`fer_core.images.probe_image`): a JPEG too large to
    decode whole is decoded reduced by libjpeg (1/2, 1/4, 1/8), any other image whose
    decoding would exceed :data:`~fer_core.images.DEFAULT_MAX_DECODE_BYTES` is refused.

    Raises
    ------
    ImageTooLarge
        Over a limit, judged from the header (nothing decoded).
    ImageError
        Not a readable image.
    """
    if len(data) > DEFAULT_MAX_BYTES:
        raise ImageTooLarge(f"{name} is larger than the {DEFAULT_MAX_BYTES / 1e6:.0f} MB limit")
    probe = probe_image(data, name=name)
    is_jpeg = probe.format in ("JPEG", "MPO")
    per_pixel = _CV2_JPEG_BYTES_PER_PIXEL if is_jpeg else _CV2_BYTES_PER_PIXEL
    cost = probe.width * probe.height * per_pixel + probe.buffer_bytes + 2 * len(data)
    if cost > DEFAULT_MAX_DECODE_BYTES:
        raise ImageTooLarge(
            f"{name} is {probe.width:,} x {probe.height:,} pixels; decoding it as a face would take about "
            f"{cost / 1e6:.0f} MB of memory, more than the {DEFAULT_MAX_DECODE_BYTES / 1e6:.0f} MB limit"
        )
    flags = cv2.IMREAD_UNCHANGED
    if probe.reduction > 1:
        flags = _REDUCED_FLAGS[probe.reduction] | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageError(f"{name} could not be decoded")
    return to_face48(image)


def _read_and_decode(path: Path) -> np.ndarray | str:
    """The face of one file, or why it was skipped: ``"too_large"`` or ``"unreadable"``."""
    try:
        if path.stat().st_size > DEFAULT_MAX_BYTES:
            return "too_large"
        return decode_face_checked(path.read_bytes(), name=repr(path.name))
    except ImageTooLarge:
        return "too_large"
    except (OSError, ImageError, cv2.error):
        return "unreadable"


def read_folder(root: Path, *, files: list[FolderFile] | None = None, skipped: dict[str, int] | None = None,
                progress: bool = True, allow_outside_root: bool = False) -> FaceTable:
    """Decode a folder data set (see :func:`list_folder`).

    Corrupt, non-image or too large files are skipped and counted.

    ``allow_outside_root`` is passed to :func:`list_folder` when ``files`` is not given.
    """
    if files is None:
        files, skipped = list_folder(root, allow_outside_root=allow_outside_root)
    skipped = dict(skipped or {})
    _warn_listing(skipped)
    if not files:
        raise DatasetError(
            f"no face images found in {str(root)!r}: expected <emotion>/<image> or <split>/<emotion>/<image> "
            f"folders (emotions: angry, disgust, fear, happy, sad, surprise, neutral; images: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    writer = FaceWriter()
    pending: list[np.ndarray] = []
    reasons: dict[str, list[int]] = {"unreadable": [], "too_large": []}
    # cv2.imdecode releases the GIL, so two threads use both cores. Each thread decodes one
    # file at a time, so the memory bound holds per thread. Faces go to the writer in batches
    # (to disk past its limit), so a million files never sit decoded in memory at once.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        # A window of files at a time: map() would otherwise hold a future per file (1 KB each).
        decoded = (face for start in range(0, len(files), BATCH)
                   for face in pool.map(_read_and_decode, (f.path for f in files[start : start + BATCH])))
        bar = progress_bar(decoded, total=len(files), desc=f"decoding {root.name}", enable=progress)
        for i, face in enumerate(bar):
            if isinstance(face, str):
                reasons[face].append(i)
                continue
            pending.append(face)
            if len(pending) == BATCH:
                writer.append(np.stack(pending))
                pending = []
    if pending:
        writer.append(np.stack(pending))
    _warn_skipped(files, reasons, skipped)
    ok = np.ones(len(files), dtype=bool)
    ok[reasons["unreadable"] + reasons["too_large"]] = False
    if not ok.any():
        raise DatasetError(f"none of the {len(files)} image files in {str(root)!r} could be decoded")
    kept = [f for f, good in zip(files, ok) if good]
    frame = build_frame(
        [f.sample_id for f in kept], [f.label for f in kept], [f.split for f in kept], [str(f.path) for f in kept]
    )
    return FaceTable(images=writer.finish(), frame=frame, name=root.name, skipped=skipped)


def _warn_listing(skipped: dict[str, int]) -> None:
    """Warn about what :func:`list_folder` left out: unknown class folders, links leading outside."""
    unknown = {k.split(":", 1)[1]: v for k, v in skipped.items() if k.startswith("unknown_class:")}
    if unknown:
        names = ", ".join(f"{name} ({count} images)" for name, count in sorted(unknown.items()))
        warnings.warn(f"skipped class folders outside the seven emotions: {names}", stacklevel=4)
    if skipped.get("outside_root"):
        warnings.warn(
            f"skipped {skipped['outside_root']} files reached through a symbolic link that leads outside the "
            "data set folder (pass allow_outside_root=True to read them)",
            stacklevel=4,
        )


def _warn_skipped(files: list[FolderFile], reasons: dict[str, list[int]], skipped: dict[str, int]) -> None:
    """Count and warn about the files that could not be decoded, by reason."""
    unreadable, too_large = reasons["unreadable"], reasons["too_large"]
    if unreadable:
        skipped["corrupt_files"] = len(unreadable)
        examples = ", ".join(str(files[i].path) for i in unreadable[:3])
        warnings.warn(f"skipped {len(unreadable)} files that are not readable images (e.g. {examples})", stacklevel=4)
    if too_large:
        skipped["too_large_files"] = len(too_large)
        examples = ", ".join(str(files[i].path) for i in too_large[:3])
        warnings.warn(
            f"skipped {len(too_large)} files too large to decode within the "
            f"{DEFAULT_MAX_DECODE_BYTES / 1e6:.0f} MB memory limit (e.g. {examples})",
            stacklevel=4,
        )
