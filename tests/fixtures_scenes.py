"""Test scenes made of real faces: the astronaut photo in many encodings, FER2013 faces pasted on backgrounds."""

from __future__ import annotations

import functools
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from benchmarks.scenes import box_iou, compose_scene
from fer_core.faces import FaceBox, crop_square
from fer_core.images import to_grey

REPO = Path(__file__).resolve().parents[1]
FER_VAL = REPO.parent / "shared" / "fer2013" / "val"

needs_fer = pytest.mark.skipif(not FER_VAL.is_dir(), reason=f"{FER_VAL} (real FER2013 faces) is not present")

#: The astronaut's face as YuNet (178, 63, 90, 113) and MTCNN (182, 63, 87, 111) box it, rounded:
#: from the hairline to the chin, cheek to cheek. Checked by eye on the photo.
ASTRONAUT_FACE: tuple[int, int, int, int] = (180, 63, 89, 112)


def astronaut() -> np.ndarray:
    """The 512 x 512 RGB astronaut photo from scikit-image (one face, Eileen Collins)."""
    return skimage.data.astronaut()


@functools.lru_cache(maxsize=1)
def fer_val_files() -> tuple[Path, ...]:
    """Every FER2013 validation PNG, sorted."""
    return tuple(sorted(FER_VAL.glob("*/*.png")))


def fer_faces(n: int, *, seed: int) -> list[np.ndarray]:
    """``n`` distinct FER2013 validation faces ``(48, 48)`` uint8, picked by ``seed``."""
    files = fer_val_files()
    picked = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
    return [np.asarray(Image.open(files[i]).convert("L")) for i in picked]


def fer_scene(
    seed: int, *, n_faces: int | None = None, face_size: tuple[int, int] = (80, 200)
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[np.ndarray]]:
    """A 640 x 480 scene with 2-4 (or ``n_faces``) FER2013 faces pasted at known squares.

    Returns the RGB scene, the pasted squares ``(x, y, s, s)`` and the pasted 48 x 48 faces
    (in the same order; a face that found no free place is dropped from both).
    """
    count = n_faces if n_faces is not None else int(np.random.default_rng(seed).integers(2, 5))
    faces = fer_faces(count, seed=seed)
    scene, squares = compose_scene(faces, seed=seed, face_size=face_size)
    return scene, squares, faces[: len(squares)]


def match_faces(
    squares: list[tuple[int, int, int, int]], found: list[FaceBox], *, min_iou: float
) -> list[FaceBox | None]:
    """For each pasted square, the found box whose FER crop (:func:`crop_square`) overlaps it best,
    if that IoU is at least ``min_iou``; each box is used once."""
    used: set[int] = set()
    out: list[FaceBox | None] = []
    for square in squares:
        scored = [(box_iou(square, crop_square(f)), i) for i, f in enumerate(found) if i not in used]
        best, index = max(scored, default=(0.0, -1))
        if best >= min_iou:
            used.add(index)
            out.append(found[index])
        else:
            out.append(None)
    return out


def outside_squares(squares: list[tuple[int, int, int, int]], found: list[FaceBox]) -> list[FaceBox]:
    """Found boxes whose area lies mostly (over half) outside every pasted square: false boxes."""
    false = []
    for f in found:
        inside = 0.0
        for sx, sy, side, _ in squares:
            iw = max(0, min(f.x + f.w, sx + side) - max(f.x, sx))
            ih = max(0, min(f.y + f.h, sy + side) - max(sy, f.y))
            inside = max(inside, iw * ih / f.area)
        if inside < 0.5:
            false.append(f)
    return false


def gradient(height: int = 480, width: int = 640) -> np.ndarray:
    """A smooth RGB gradient, no face."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([255 * xx / width, 255 * yy / height, np.full_like(xx, 120)], axis=2)
    return img.astype(np.uint8)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose pixels are stored turned so that EXIF ``orientation`` makes ``rgb`` upright again."""
    stored = {
        1: rgb,
        3: np.rot90(rgb, 2),
        6: np.rot90(rgb, 1),  # shown after turning 90 degrees clockwise
        8: np.rot90(rgb, -1),  # shown after turning 90 degrees counter-clockwise
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(np.ascontiguousarray(stored)), "JPEG", quality=92, exif=exif.tobytes())


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels but holds almost no data (a bomb header)."""
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def flat_jpeg(width: int, height: int) -> bytes:
    """A valid baseline grey JPEG of flat grey 128 at any size, made without encoding its pixels.

    The headers come from a 16 x 16 JPEG written by Pillow (standard Huffman tables); every 8 x 8
    block of a flat image codes as DC difference 0 (``00``) then end-of-block (``1010``), so four
    blocks are the three bytes ``28 a2 8a``. A 20,000 x 20,000 image is 4.7 MB and made in ms.
    """
    if width % 8 or height % 8 or (width // 8) * (height // 8) % 4:
        raise ValueError("width and height must be multiples of 8 with a block count divisible by 4")
    small = encode(Image.new("L", (16, 16), 128), "JPEG", quality=75)
    out, i = [b"\xff\xd8"], 2
    while True:
        marker = small[i + 1]
        length = struct.unpack(">H", small[i + 2 : i + 4])[0]
        segment = bytearray(small[i : i + 2 + length])
        if marker == 0xC0:  # SOF0: height then width
            segment[5:7] = struct.pack(">H", height)
            segment[7:9] = struct.pack(">H", width)
        out.append(bytes(segment))
        i += 2 + length
        if marker == 0xDA:
            break
    if small[i:-2] != b"\x28\xa2\x8a":
        raise RuntimeError("unexpected entropy-coded data from Pillow; cannot build the flat JPEG")
    blocks = (width // 8) * (height // 8)
    out.append(b"\x28\xa2\x8a" * (blocks // 4))
    out.append(b"\xff\xd9")
    return b"".join(out)


def astronaut_forms() -> dict[str, object]:
    """The astronaut as PIL images of many modes and numpy arrays of many dtypes (same face)."""
    rgb = astronaut()
    grey = to_grey(rgb)
    pil = Image.fromarray(rgb)
    rgba = np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])
    palette = pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    return {
        "pil-RGB": pil,
        "pil-RGBA": pil.convert("RGBA"),
        "pil-L": Image.fromarray(grey),
        "pil-LA": Image.fromarray(grey).convert("LA"),
        "pil-P": palette,
        "pil-I;16": Image.fromarray(grey.astype(np.uint16) * 257),
        "pil-I": Image.fromarray(grey.astype(np.int32) * 1000 + 5000),
        "pil-F": Image.fromarray(grey.astype(np.float32) / 255),
        "pil-CMYK": pil.convert("CMYK"),
        "pil-YCbCr": pil.convert("YCbCr"),
        "np-grey": grey,
        "np-grey1": grey[:, :, None],
        "np-rgb": rgb,
        "np-rgba": rgba,
        "np-uint16": grey.astype(np.uint16) * 257,
        "np-float": rgb.astype(np.float64) / 255,
    }
