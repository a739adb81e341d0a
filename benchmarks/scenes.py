"""Synthetic photos with real faces pasted at known places, to measure face detection against.

A scene is a ``(height, width, 3)`` uint8 RGB image: a smooth random background with grey faces
(for example FER2013's 48 x 48 images) enlarged and pasted at non-overlapping squares, whose
``(x, y, s, s)`` boxes are returned with it. Boxes are ``(x, y, w, h)`` with ``(x, y)`` the
top-left corner, in the scene's pixels. Same faces and seed, same scene.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from fer_core.faces import FaceBox, box_xywh
from fer_core.images import to_grey

__all__ = ["box_iou", "compose_scene", "no_face_images"]


def box_iou(a: FaceBox | Sequence[float], b: FaceBox | Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (or :class:`~fer_core.faces.FaceBox`), in [0, 1]."""
    ax, ay, aw, ah = box_xywh(a)
    bx, by, bw, bh = box_xywh(b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float RGB background: a linear gradient between two colours plus smooth colour blobs."""
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    blobs = rng.normal(0, 1, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    img += 12 * cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC)
    return img.astype(np.float32)


def compose_scene(
    faces: Sequence[np.ndarray],
    *,
    seed: int,
    size: tuple[int, int] = (640, 480),
    face_size: tuple[int, int] = (80, 200),
    gap: int = 8,
    noise: float = 3.0,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A synthetic photo with real faces pasted at known, non-overlapping squares.

    The background is a gradient between two random colours plus smooth colour blobs; each face
    (grey, e.g. a FER2013 48 x 48 image) is enlarged bicubically to a random side in
    ``face_size`` and pasted at a random free place; Gaussian noise of ``noise`` grey levels is
    added over everything. Same ``faces`` and ``seed``, same scene.

    Parameters
    ----------
    faces : sequence of np.ndarray
        ``(h, w)`` uint8 grey faces (a face that finds no free place within 200 tries is left out).
    seed : int
        Seed of the scene's random generator.
    size : (int, int), default=(640, 480)
        ``(width, height)`` of the scene.
    face_size : (int, int), default=(80, 200)
        Smallest and largest side of a pasted face, inclusive.
    gap : int, default=8
        Least distance between two pasted faces.
    noise : float, default=3.0
        Standard deviation of the added noise; 0 for none.

    Returns
    -------
    scene : np.ndarray
        ``(height, width, 3)`` uint8 RGB.
    boxes : list of (x, y, s, s)
        Where each pasted face lies, in the order pasted.
    """
    width, height = size
    lo, hi = face_size
    if not 1 <= lo <= hi <= min(width, height):
        raise ValueError(f"face_size must satisfy 1 <= min <= max <= {min(width, height)}, got {face_size}")
    rng = np.random.default_rng(seed)
    img = _background(rng, height, width)
    boxes: list[tuple[int, int, int, int]] = []
    for face in faces:
        grey = to_grey(np.asarray(face)) if np.asarray(face).ndim == 3 else np.asarray(face, dtype=np.uint8)
        for _ in range(200):
            side = int(rng.integers(lo, hi + 1))
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            if all(
                x + side + gap <= bx or bx + bs + gap <= x or y + side + gap <= by or by + bs + gap <= y
                for bx, by, bs, _ in boxes
            ):
                break
        else:
            continue
        interp = cv2.INTER_CUBIC if side > grey.shape[0] else cv2.INTER_AREA
        patch = cv2.resize(grey, (side, side), interpolation=interp).astype(np.float32)
        img[y : y + side, x : x + side] = patch[..., None]
        boxes.append((x, y, side, side))
    if noise > 0:
        img += rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes


def no_face_images(seed: int, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``n`` deterministic RGB images without faces: blank, uniform noise, blurred noise, then scene backgrounds.

    ``size`` is ``(width, height)``; each image is ``(height, width, 3)`` uint8.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    out = [
        np.full((height, width, 3), 128, np.uint8),
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 4),
    ]
    while len(out) < n:
        bg = _background(rng, height, width) + rng.normal(0, 3.0, (height, width, 3)).astype(np.float32)
        out.append(np.clip(np.rint(bg), 0, 255).astype(np.uint8))
    return out[:n]
