"""Decoding of any image a user may give into an upright RGB uint8 array, with size limits.

Notation: an image is ``(H, W, 3)`` uint8 RGB unless said otherwise; ``H x W`` is its
pixel count. Sources accepted by :func:`load_image`:

- a path (``str`` or ``pathlib.Path``), ``bytes``/``bytearray``/``memoryview``, or a binary
  file-like object (anything with ``read()``): decoded with Pillow, limited to the raster
  formats in :data:`SUPPORTED_FORMATS` (no EPS or PDF, which would run external programs);
- a ``PIL.Image.Image`` (never modified);
- a numpy array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, of dtype
  uint8, uint16, bool, another integer type holding values in [0, 255], or float in [0, 1]
  (never modified).

Choices made here (the same for files, PIL images and arrays):

- **EXIF orientation** is applied, so faces are found in the upright image and boxes are
  in the upright image's coordinates.
- **Transparency** (RGBA, LA, PA, palette with a transparent index) is composited over white,
  as a browser shows it; fully transparent pixels often hold arbitrary colours, and white
  keeps a cut-out face on a plain background.
- **16- and 32-bit integer grey** (``I;16*``, ``I``) and **float grey** (``F``) files are
  mapped to 8 bits by their actual range: ``(v - min) / (max - min) * 255``, so a 12-bit
  scan stored in 16 bits does not come out nearly black, and nothing is clipped. A float
  file already within [0, 1] is scaled by 255 instead. uint16 arrays follow the same rule.
- **Animations** (GIF, WebP, APNG): the first frame.
- **Refusals** raise :class:`~fer_core._validation.ImageError` with a message for a person:
  an empty or oversized file (``max_bytes``), data in no known image format, a truncated
  file (a partly decoded JPEG is refused, never returned half grey), or an image too large
  to decode (see below). Messages name the file and the reason; they never quote the
  file's bytes.
- **Large images** are judged from the header, before any pixel is decoded:

  - a side longer than :data:`MAX_DECODED_SIDE` (32,768) or a ratio of long to short side
    above :data:`MAX_ASPECT_RATIO` (100) is refused;
  - a JPEG with more than ``max_pixels`` pixels, a side above ``max_side`` or a decoding
    cost above ``max_decode_bytes`` is decoded reduced by libjpeg's DCT scaling
    (``Image.draft``, 1/2, 1/4 or 1/8 per side): the smallest reduction that keeps the
    long side at least ``max_side``, or more if the memory bound asks for it. An 8,000 x
    8,000 JPEG is decoded at 4,000 x 4,000, a 20,000 x 20,000 one at 5,000 x 5,000;
  - any other image above ``max_pixels`` pixels or ``max_decode_bytes`` is refused.

  Any result with a side above ``max_side`` is then shrunk with area interpolation,
  keeping the aspect ratio.
- **Memory bound**: ``max_decode_bytes`` (:data:`DEFAULT_MAX_DECODE_BYTES`, 256 MB) bounds
  the peak extra memory that decoding one file or PIL image takes. It is estimated from the
  header as ``width x height`` times the bytes per pixel of Pillow's decoded mode (1 for
  ``1``/``L``/``P``, 2 for ``I;16``, 4 for ``I``/``F`` and for every colour or alpha mode,
  which Pillow holds in 4 bytes), plus the uint8 result (1 or 3 bytes per pixel), the
  shrunk RGB copy, the decoder's own buffers (a progressive or multi-scan JPEG keeps its
  DCT coefficients for the whole image, 2 bytes per sample, whatever the reduction; a TIFF
  strip or tile; WebP, AVIF and JPEG 2000 frame buffers) and two copies of the encoded
  data. For ICO files the image counted is the embedded PNG or BMP that Pillow decodes,
  read from its own header (the ICO directory claims at most 256 x 256). Conversions to
  uint8 run over bands of rows (:data:`_BAND_PIXELS` pixels), so they add no full-size
  work array. With the default limits no accepted file costs more than 256 MB on top of
  the process (measured with ``VmHWM`` in ``tests/test_images_budget.py``). numpy arrays
  are already decoded and are not subject to this bound.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import BmpImagePlugin, IcoImagePlugin, Image, PngImagePlugin

from ._validation import ImageError

__all__ = [
    "pixels_sha256",
    "ImageSource",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "DEFAULT_MAX_DECODE_BYTES",
    "MAX_DECODED_SIDE",
    "MAX_ASPECT_RATIO",
    "SUPPORTED_FORMATS",
    "ImageProbe",
    "ImageTooLarge",
    "decode_cost",
    "load_image",
    "probe_image",
    "to_grey",
]

#: Anything :func:`load_image` accepts.
ImageSource = str | Path | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray


class ImageTooLarge(ImageError):
    """An image refused from its header as too large (pixels, sides or decoding memory)."""


@dataclass(frozen=True)
class ImageProbe:
    """What :func:`probe_image` read from a header: the image as it would be decoded.

    ``width`` x ``height`` after any JPEG reduction by ``reduction`` (1, 2, 4 or 8);
    ``decode_bytes`` is :func:`decode_cost`'s estimate for :func:`load_image`;
    ``buffer_bytes`` the part held by the format's decoder (JPEG coefficients, TIFF strips...).
    """

    width: int
    height: int
    reduction: int
    format: str
    mode: str
    decode_bytes: int
    buffer_bytes: int

#: Largest encoded file accepted (bytes).
DEFAULT_MAX_BYTES: int = 25_000_000
#: Largest decoded image accepted, in pixels, unless it is a JPEG that can be decoded reduced.
DEFAULT_MAX_PIXELS: int = 50_000_000
#: Longest side of a returned image; larger results are shrunk to it.
DEFAULT_MAX_SIDE: int = 4096
#: Peak extra memory (bytes) that decoding and converting one image may take, judged from its header.
DEFAULT_MAX_DECODE_BYTES: int = 256_000_000
#: Longest side accepted from a header (after any JPEG reduction), whatever the other limits.
MAX_DECODED_SIDE: int = 32_768
#: Largest ratio of the long side to the short side of an image file accepted.
MAX_ASPECT_RATIO: int = 100

#: Raster formats Pillow may open here; others (EPS through Ghostscript, PDF, ...) are refused.
SUPPORTED_FORMATS: tuple[str, ...] = (
    "JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "ICO", "TGA", "AVIF", "JPEG2000",
)
_FORMAT_NAMES = "JPEG, PNG, GIF, WebP, BMP, TIFF, PPM, ICO, TGA, AVIF or JPEG 2000"

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"
_ICO_MAGIC = b"\x00\x00\x01\x00"
_WHITE = (255, 255, 255)
#: Pixels per band of rows in the conversions to uint8: bounds their temporary arrays (a few MB).
_BAND_PIXELS = 1 << 18
#: Memory counted for those temporaries, the decoders' small buffers and numpy's overheads.
_FIXED_COST = 16_000_000
#: Bytes per pixel of Pillow's own storage of a mode; colour and alpha modes use 4 (Storage.c).
_STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}
#: Modes returned as grey (one byte per pixel before the final RGB copy).
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
#: Decoder buffers in bytes per pixel beyond Pillow's image: libwebp's two RGBA canvases and the
#: frame handed over as bytes; libavif's YUV planes and RGB(A) buffer at up to 16 bits;
#: OpenJPEG's 32-bit samples plus Pillow's tile buffer; Python-side RLE/plain-text decoders
#: that collect the whole image before handing it over.
_DECODER_BYTES = {
    "WEBP": 12, "AVIF": 14, "JPEG2000": 24, "BMP": 2, "DIB": 2, "PPM": 8, "TGA": 0, "GIF": 0, "PNG": 0,
    "ICO": 0,  # its embedded image is judged before opening (see _ico_frame)
}
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*\"""")
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def pixels_sha256(image: np.ndarray) -> str:
    """sha256 (hex) of an image's pixels as C-ordered bytes: identifies the picture, not the file it came in."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def load_image(
    source: ImageSource,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> np.ndarray:
    """Decode ``source`` into an upright RGB image.

    Parameters
    ----------
    source : str, Path, bytes, file-like, PIL.Image.Image or np.ndarray
        The image; see the module docstring for the accepted forms.
    max_bytes : int, default=25_000_000
        Largest encoded size accepted for a path, bytes or file-like source.
    max_pixels : int, default=50_000_000
        Largest pixel count decoded. Above it a JPEG is decoded reduced (1/2, 1/4 or 1/8 per
        side) and any other format is refused, judged from the header before decoding.
    max_side : int, default=4096
        Longest side of the result; a larger image is shrunk (area interpolation) keeping
        its aspect ratio.
    max_decode_bytes : int, default=256_000_000
        Bound on the peak extra memory of decoding and converting a file or PIL image,
        estimated from its header (see the module docstring). Above it a JPEG is decoded
        reduced and any other image is refused before any pixel is decoded.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 RGB, a new array (the input is never modified), with EXIF
        orientation applied and ``max(H, W) <= max_side``.

    Raises
    ------
    ImageError
        The source cannot be decoded, is empty, truncated or too large; the message says which.
    TypeError
        ``source`` is of a type that cannot hold an image.
    """
    limits = _Limits(max_bytes, max_pixels, max_side, max_decode_bytes)
    orientation = 1
    if isinstance(source, np.ndarray):
        pixels = _array_to_uint8_image(source)
    elif isinstance(source, Image.Image):
        _check_pil_source(source, limits)
        orientation = _orientation(source)
        pixels = _pil_to_uint8(source)
    else:
        data, name = _read_bytes(source, max_bytes=max_bytes)
        pixels, orientation = _decode_bytes(data, name=name, limits=limits)
    # Shrink before turning and before grey becomes RGB, so that large buffers are never copied.
    pixels = _orient(_fit_side(pixels, max_side), orientation)
    return _as_rgb(pixels, source)


def decode_cost(im: Image.Image, *, max_side: int = DEFAULT_MAX_SIDE, encoded_bytes: int = 0,
                decoded: bool = False) -> int:
    """Peak extra memory (bytes) :func:`load_image` needs to decode and convert ``im``, from its header.

    Parameters
    ----------
    im : PIL.Image.Image
        An image opened lazily (``Image.open``), its size and mode as they will be decoded
        (after any ``draft``).
    max_side : int, default=4096
        The ``max_side`` of :func:`load_image`: the RGB copy of a larger image is shrunk.
    encoded_bytes : int, default=0
        Size of the encoded data; two copies of it are counted.
    decoded : bool, default=False
        ``im`` is already decoded: only the conversion to uint8 RGB is counted.

    Returns
    -------
    int
        The estimate in bytes; see the module docstring for what it counts.
    """
    width, height = im.size
    pixels = width * height
    channels = 1 if im.mode in _GREY_MODES else 3
    longest = max(width, height, 1)
    scale = min(1.0, max_side / longest)
    fitted = max(1, round(width * scale)) * max(1, round(height * scale))
    held = 0 if decoded else pixels * _STORAGE_BYTES.get(im.mode, 4)
    # The stages do not overlap: Pillow's image lives with the decoder's buffers, then with the
    # uint8 result; it is freed before the result is shrunk, turned and made RGB.
    stages = (
        held + (0 if decoded else _decoder_cost(im)),
        held + pixels * channels,
        pixels * channels + fitted * channels,
        fitted * (channels + 3),
    )
    return _FIXED_COST + 2 * encoded_bytes + max(stages)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma of an RGB image, as ``cv2.COLOR_RGB2GRAY`` (ITU-R BT.601).

    ``Y = 0.299 R + 0.587 G + 0.114 B``, rounded.

    Parameters
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 RGB. A grey ``(H, W)`` or ``(H, W, 1)`` uint8 image is accepted
        and returned as a copy.

    Returns
    -------
    np.ndarray
        ``(H, W)`` uint8, a new array.
    """
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"rgb must be a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got dtype {rgb.dtype}")
    if rgb.ndim == 2:
        return rgb.copy()
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        return rgb[:, :, 0].copy()
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


# --------------------------------------------------------------------------- reading bytes


class _Limits:
    """The checked limits of one :func:`load_image` call."""

    def __init__(self, max_bytes: int, max_pixels: int, max_side: int, max_decode_bytes: int) -> None:
        for name, value in (("max_bytes", max_bytes), ("max_pixels", max_pixels), ("max_side", max_side),
                            ("max_decode_bytes", max_decode_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.max_decode_bytes = max_decode_bytes


def _mb(n: int) -> str:
    """A byte count for people: ``"512 bytes"``, ``"1.0 kB"``, ``"25.0 MB"``."""
    if n < 1000:
        return f"{n} bytes"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.1f} MB"


def _read_bytes(source: Any, *, max_bytes: int) -> tuple[bytes, str]:
    """Return the encoded bytes of a path, bytes or file-like source and a name for messages."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        name = repr(str(source))
        if not path.exists():
            raise ImageError(f"image file not found: {name} does not exist")
        if not path.is_file():
            raise ImageError(f"image path {name} is not a file")
        size = path.stat().st_size
        if size == 0:
            raise ImageError(f"image file {name} is empty (0 bytes)")
        if size > max_bytes:
            raise ImageTooLarge(
                f"image file {name} is {_mb(size)}, larger than the {_mb(max_bytes)} limit"
            )
        try:
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as err:
            raise ImageError(f"cannot read image file {name}: {err.strerror or err}") from err
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "the image data"
        data = bytes(source)
    elif hasattr(source, "read"):
        name = repr(getattr(source, "name", "the uploaded file"))
        data = source.read(max_bytes + 1)
        if isinstance(data, str):
            raise TypeError("a file-like image source must be opened in binary mode ('rb'), got text")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"read() of the image source returned {type(data).__name__}, not bytes")
        data = bytes(data)
    else:
        raise TypeError(
            "image source must be a path, bytes, a binary file object, a PIL image or a numpy "
            f"array, got {type(source).__name__}"
        )
    if len(data) == 0:
        raise ImageError(f"{name} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{name} is larger than the {_mb(max_bytes)} limit")
    return data, name


# --------------------------------------------------------------------------- decoding


def _reason(err: BaseException) -> str:
    """Pillow's text for ``err`` without anything quoted from the file (byte or string reprs)."""
    if isinstance(err, UnicodeError):
        return "a text field in it is not valid text"
    text = _QUOTED.sub("(...)", str(err))
    text = "".join(ch for ch in text if ch.isprintable())[:200].strip()
    return text or type(err).__name__


def _open_header(data: bytes, *, name: str) -> Image.Image:
    """Open ``data`` lazily: only the header is parsed, no pixel is decoded (except ICO, checked before).

    The plugins are called as ``Image.open`` calls them, but without its decompression-bomb
    check: the limits here judge the size, and that check's warning could only be silenced
    with ``warnings.catch_warnings``, which is not thread-safe (decoders run in threads).
    """
    buf = io.BytesIO(data)
    try:
        if data.startswith(_ICO_MAGIC):
            # What IcoImageFile decodes, without its warning when the directory's size is wrong.
            return IcoImagePlugin.IcoFile(buf).frame(0)
        Image.init()
        prefix = data[:16]
        for fmt in [f for f in Image.ID if f in SUPPORTED_FORMATS]:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and accept(prefix) is not True:
                continue
            buf.seek(0)
            try:
                return factory(buf, None)
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # not this format after all, as Image.open decides
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(
            f"{name} declares an image of more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels; "
            "refused as too large to decode (a possible decompression bomb)"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError, struct.error) as err:
        if "truncated" in str(err).lower() or isinstance(err, EOFError):
            raise ImageError(f"{name} is truncated: the file ends inside the image header") from err
        raise ImageError(f"{name} has a damaged image header: {_reason(err)}") from err
    raise ImageError(f"{name} is not an image in a supported format ({_FORMAT_NAMES})")


def _ico_frame(data: bytes, *, name: str) -> Image.Image:
    """The embedded image Pillow decodes when it opens an ICO file, opened lazily from its own header.

    Pillow decodes the first entry of the directory sorted by area (largest first), and it does
    so while opening the file; the directory's size fields (at most 256) say nothing of the
    embedded PNG or BMP, which may be of any size.
    """
    buf = io.BytesIO(data)
    try:
        entry = IcoImagePlugin.IcoFile(buf).entry[0]
        buf.seek(entry.offset)
        if data[entry.offset : entry.offset + 8] == PngImagePlugin._MAGIC:
            return PngImagePlugin.PngImageFile(buf)
        frame = BmpImagePlugin.DibImageFile(buf)
        frame._size = (frame.size[0], frame.size[1] // 2)  # the DIB height counts the AND mask too
        return frame
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as err:
        raise ImageError(f"{name} has a damaged icon directory: {_reason(err)}") from err


def _decoder_cost(im: Image.Image) -> int:
    """Bytes the decoder of ``im``'s format holds beyond Pillow's image (see :data:`_DECODER_BYTES`)."""
    width, height = im.size
    fmt = im.format or ""
    if fmt in ("JPEG", "MPO"):
        return _jpeg_coefficient_bytes(im)
    if fmt == "TIFF":
        return _tiff_strip_bytes(im)
    if isinstance(im, BmpImagePlugin.DibImageFile) and not isinstance(im, BmpImagePlugin.BmpImageFile):
        return width * height * 6  # an ICO's BMP entry: converted to RGBA and given its mask
    return width * height * _DECODER_BYTES.get(fmt, 8)


def _jpeg_coefficient_bytes(im: Image.Image) -> int:
    """DCT coefficients libjpeg keeps for the whole image of a progressive or multi-scan JPEG, else 0.

    They are 2 bytes per sample of each component at its own sampling, at full size whatever
    ``draft`` asked for.
    """
    width, height = getattr(im, "_full_size", im.size)
    if not (im.info.get("progressive") or getattr(im, "_scans", 1) > 1):
        return 0
    layers = getattr(im, "layer", None) or [(0, 1, 1, 0)]
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    total = 0
    for _, h, v, _ in layers:
        blocks_x = math.ceil(math.ceil(width * h / h_max) / 8) + h
        blocks_y = math.ceil(math.ceil(height * v / v_max) / 8) + v
        total += blocks_x * blocks_y * 128
    return total


def _jpeg_scan_count(data: bytes) -> int:
    """Number of scans (SOS segments) of the first image of a JPEG stream, walking its markers."""
    i, scans, size = 2, 0, len(data)
    while i + 4 <= size:
        if data[i] != 0xFF or data[i + 1] in (0x00, 0xFF) or 0xD0 <= data[i + 1] <= 0xD7:
            found = _JPEG_MARKER.search(data, i + 1)  # entropy-coded data: skip to the next marker
            if found is None:
                break
            i = found.start()
            continue
        marker = data[i + 1]
        if marker == 0xD9:
            break
        if marker == 0xDA:
            scans += 1
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return scans


def _tiff_strip_bytes(im: Image.Image) -> int:
    """libtiff's buffer for one strip or tile, plus its RGBA copy when libtiff converts (YCbCr, JPEG)."""
    tags = getattr(im, "tag_v2", {})
    width, height = im.size

    def first(tag: int, default: int) -> int:
        value = tags.get(tag, default)
        value = max(value) if isinstance(value, tuple) and value else value
        return int(value) if isinstance(value, (int, float)) and value > 0 else default

    if 322 in tags and 323 in tags:
        chunk_pixels = min(first(322, width) * first(323, height), 1 << 40)
    else:
        chunk_pixels = width * min(height, first(278, height))
    per_pixel = math.ceil(first(258, 8) * first(277, 1) / 8)
    if first(262, 0) == 6 or first(259, 1) in (6, 7):  # YCbCr or (old-style) JPEG: read as RGBA
        per_pixel += 4
    return chunk_pixels * per_pixel


_MODE_WORDS = {
    "1": "black-and-white", "L": "grey", "LA": "grey with transparency", "P": "palette",
    "PA": "palette with transparency", "RGB": "colour", "RGBA": "colour with transparency",
    "CMYK": "CMYK", "YCbCr": "colour", "I": "32-bit grey", "F": "32-bit float grey",
    "I;16": "16-bit grey", "I;16B": "16-bit grey", "I;16L": "16-bit grey", "I;16N": "16-bit grey",
}


def _dims(width: int, height: int) -> str:
    return f"{width:,} x {height:,} pixels"


def _check_shape(im: Image.Image, *, name: str) -> None:
    """Refuse an empty image, or one too thin to be a photo, from its header."""
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"{name} declares an empty image ({width} x {height} pixels)")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageTooLarge(
            f"{name} is {_dims(width, height)}: its long side is more than {MAX_ASPECT_RATIO} times its "
            "short side, too thin to hold a face; refused before decoding"
        )


def _budget_problem(im: Any, *, limits: _Limits, encoded_bytes: int) -> str | None:
    """Why ``im`` (as it would be decoded) exceeds the side, pixel or memory limits; ``None`` if it fits."""
    width, height = im.size
    if max(width, height) > MAX_DECODED_SIDE:
        return f"a side is longer than the {MAX_DECODED_SIDE:,} pixel limit"
    if width * height > limits.max_pixels:
        return (f"{width * height / 1e6:.0f} megapixels, more than the {limits.max_pixels / 1e6:.0f} "
                "megapixel limit")
    cost = decode_cost(im, max_side=limits.max_side, encoded_bytes=encoded_bytes)
    if cost > limits.max_decode_bytes:
        kind = _MODE_WORDS.get(im.mode, f"{im.mode} mode")
        return (f"as a {kind} image it would take about {_mb(cost)} of memory to decode, more than "
                f"the {_mb(limits.max_decode_bytes)} limit")
    return None


def _check_budget(im: Image.Image, *, name: str, limits: _Limits, encoded_bytes: int) -> None:
    """Refuse ``im`` before decoding when it exceeds the side, pixel or memory limits."""
    problem = _budget_problem(im, limits=limits, encoded_bytes=encoded_bytes)
    if problem is not None:
        raise ImageTooLarge(
            f"{name} is {_dims(*im.size)} ({problem}); refused before decoding: save it smaller or as JPEG"
        )


def _draft_jpeg(im: Image.Image, data: bytes, *, name: str, limits: _Limits) -> None:
    """Ask libjpeg for the reduction (1, 1/2, 1/4, 1/8) that fits the limits, or refuse.

    The smallest reduction whose long side stays at least ``max_side`` is tried first (nothing
    is lost: the result is shrunk to ``max_side`` anyway), then stronger ones while the image
    is over ``max_pixels``, :data:`MAX_DECODED_SIDE` or ``max_decode_bytes``.
    """
    width, height = im.size
    im._full_size = (width, height)  # for the coefficient buffer, which draft() does not shrink
    im._scans = 1 if im.info.get("progressive") else _jpeg_scan_count(data)
    longest = max(width, height)
    problem = None
    for factor in (1, 2, 4, 8):
        if factor < 8 and math.ceil(longest / (2 * factor)) >= limits.max_side:
            continue  # a stronger reduction still gives at least max_side
        problem = _budget_problem(_ReducedHeader(im, factor), limits=limits, encoded_bytes=len(data))
        if problem is None:
            if factor > 1:
                im.draft(im.mode, (max(1, width // factor), max(1, height // factor)))
                _check_budget(im, name=name, limits=limits, encoded_bytes=len(data))
            return
    buffered = _jpeg_coefficient_bytes(im) > 0
    raise ImageTooLarge(
        f"{name} is a JPEG of {_dims(width, height)}; even decoded at 1/8 size, "
        f"{_dims(math.ceil(width / 8), math.ceil(height / 8))}, {problem}"
        + (" (a progressive or multi-scan JPEG keeps data for every pixel while decoding)" if buffered else "")
        + "; refused before decoding"
    )


class _ReducedHeader:
    """What a JPEG header becomes under ``draft`` by ``factor``: size, mode, format, info, layers."""

    def __init__(self, im: Image.Image, factor: int) -> None:
        width, height = im.size
        self.size = (math.ceil(width / factor), math.ceil(height / factor))
        self.mode = im.mode
        self.format = im.format
        self.info = im.info
        self.layer = getattr(im, "layer", None)
        self._full_size = (width, height)
        self._scans = getattr(im, "_scans", 1)


def _open_checked(data: bytes, *, name: str, limits: _Limits) -> Image.Image:
    """Open ``data`` lazily and apply every header check; a large JPEG comes back drafted (reduced)."""
    if data.startswith(_ICO_MAGIC):
        # Pillow decodes an icon's BMP image while opening it: judge the image first.
        frame = _ico_frame(data, name=name)
        _check_shape(frame, name=name)
        _check_budget(frame, name=name, limits=limits, encoded_bytes=len(data))
        return _open_header(data, name=name)
    im = _open_header(data, name=name)
    _check_shape(im, name=name)
    if im.format in ("JPEG", "MPO"):
        _draft_jpeg(im, data, name=name, limits=limits)
    else:
        _check_budget(im, name=name, limits=limits, encoded_bytes=len(data))
    return im


def probe_image(
    data: bytes,
    *,
    name: str = "the image data",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> ImageProbe:
    """Run :func:`load_image`'s header checks on encoded ``data`` without decoding any pixel.

    Returns
    -------
    ImageProbe
        The image as :func:`load_image` would decode it: size after any JPEG reduction, the
        reduction (1, 2, 4 or 8), Pillow's format and mode, and the estimated decoding cost.

    Raises
    ------
    ImageError
        Not an image, a damaged header, or over one of the limits; the same message as
        :func:`load_image` gives.
    """
    limits = _Limits(DEFAULT_MAX_BYTES, max_pixels, max_side, max_decode_bytes)
    im = _open_checked(bytes(data), name=name, limits=limits)
    full_width = getattr(im, "_full_size", im.size)[0]
    return ImageProbe(
        width=im.size[0],
        height=im.size[1],
        reduction=max(1, round(full_width / im.size[0])),
        format=im.format or "",
        mode=im.mode,
        decode_bytes=decode_cost(im, max_side=max_side, encoded_bytes=len(data)),
        buffer_bytes=_decoder_cost(im),
    )


def _decode_bytes(data: bytes, *, name: str, limits: _Limits) -> tuple[np.ndarray, int]:
    """Decode encoded bytes into uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB and its EXIF orientation."""
    im = _open_checked(data, name=name, limits=limits)
    if im.format in ("JPEG", "MPO") and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        # No end-of-image marker after the last scan: the file was cut short. Pillow refuses
        # this by default, but not when some other code sets ImageFile.LOAD_TRUNCATED_IMAGES.
        raise ImageError(f"{name} is a truncated JPEG (the file ends before the image does)")
    try:
        im.seek(0)
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as err:
        if "truncated" in str(err) or isinstance(err, EOFError):
            raise ImageError(
                f"{name} is truncated: the {im.format or 'image'} file ends before the image does"
            ) from err
        raise ImageError(f"{name} could not be decoded as {im.format or 'an image'}: {_reason(err)}") from err
    orientation = _orientation(im)
    return _pil_to_uint8(im), orientation


def _check_pil_source(im: Image.Image, limits: _Limits) -> None:
    """Apply the header checks to a PIL image; one not yet decoded (``Image.open``) counts its decoding too."""
    name = "the PIL image"
    _check_shape(im, name=name)
    pending = bool(getattr(im, "tile", None))
    width, height = im.size
    cost = decode_cost(im, max_side=limits.max_side, decoded=not pending)
    if cost > limits.max_decode_bytes:
        raise ImageTooLarge(
            f"{name} is {_dims(width, height)}: as a {_MODE_WORDS.get(im.mode, im.mode + ' mode')} image "
            f"converting it would take about {_mb(cost)} of memory, more than the "
            f"{_mb(limits.max_decode_bytes)} limit"
        )


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of a decoded image; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block must not make a readable image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


#: EXIF orientation -> the numpy view that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` turned upright for an EXIF ``orientation`` (a view; :func:`_as_rgb` copies it)."""
    turn = _UPRIGHT.get(orientation)
    return pixels if turn is None else turn(pixels)


# --------------------------------------------------------------------------- PIL to uint8


def _row_bands(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _BAND_PIXELS // max(1, width))
    return [(top, min(top + step, height)) for top in range(0, height, step)]


def _band(im: Image.Image, top: int, bottom: int, mode: str | None = None) -> np.ndarray:
    """Rows ``top:bottom`` of ``im`` as an array, converted to ``mode`` if given."""
    part = im.crop((0, top, im.width, bottom))
    if mode is not None and part.mode != mode:
        part = part.convert(mode)
    return np.asarray(part)


def _pil_to_uint8(im: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to uint8: ``(H, W)`` for grey modes, else ``(H, W, 3)`` RGB.

    Works band by band (see :data:`_BAND_PIXELS`): the only full-size array is the result.
    """
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _pil_range_to_uint8(im)
    if mode in ("L", "1"):
        target, blend, channels = "L", False, 1
    elif mode in ("LA", "La"):
        target, blend, channels = "LA", True, 1
    elif mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        target, blend, channels = "RGBA", True, 3
    else:
        target, blend, channels = "RGB", False, 3
    width, height = im.size
    out = np.empty((height, width) if channels == 1 else (height, width, 3), dtype=np.uint8)
    try:
        for top, bottom in _row_bands(height, width):
            part = _band(im, top, bottom, target)
            out[top:bottom] = _blend_on_white(part).reshape(out[top:bottom].shape) if blend else part
    except (ValueError, OSError) as err:
        raise ImageError(f"unsupported image mode {mode!r}: {_reason(err)}") from err
    return out


def _pil_range_to_uint8(im: Image.Image) -> np.ndarray:
    """16- and 32-bit integer and float grey to uint8 by the actual range (module docstring), in two passes."""
    width, height = im.size
    bands = _row_bands(height, width)
    lo, hi, finite_count, any_nonfinite = math.inf, -math.inf, 0, False
    for top, bottom in bands:
        values = _band(im, top, bottom).astype(np.float32)
        finite = np.isfinite(values)
        if not finite.all():
            any_nonfinite = True
            values = values[finite]
        if values.size:
            finite_count += values.size
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    out = np.empty((height, width), dtype=np.uint8)
    if im.mode == "F" and finite_count and lo >= 0.0 and hi <= 1.0:
        for top, bottom in bands:
            out[top:bottom] = _unit_to_uint8(_band(im, top, bottom))
        return out
    if any_nonfinite:  # non-finite values count as 0 in the range
        lo, hi = (0.0, 0.0) if not finite_count else (min(lo, 0.0), max(hi, 0.0))
    full_scale = 1.0 if im.mode == "F" else 65535.0
    for top, bottom in bands:
        out[top:bottom] = _scale_to_uint8(_band(im, top, bottom), lo, hi, full_scale=full_scale)
    return out


def _blend_on_white(pixels: np.ndarray) -> np.ndarray:
    """Composite uint8 colour+alpha (last channel) over white: ``(c a + 255 (255 - a)) / 255``, rounded."""
    alpha = pixels[..., -1:].astype(np.uint16)
    out = pixels[..., :-1].astype(np.uint16) * alpha + 255 * (255 - alpha)
    out += 127
    out //= 255
    return out.astype(np.uint8)


# --------------------------------------------------------------------------- arrays


def _array_to_uint8_image(arr: np.ndarray) -> np.ndarray:
    """Convert a numpy image of the accepted shapes and dtypes to uint8 ``(H, W)`` or ``(H, W, 3)``.

    May return ``arr`` itself (or a view of it) when it is already uint8 grey or RGB.
    """
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(
            f"an image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"the image array is empty, shape {arr.shape}")
    u8 = _array_to_uint8(arr)
    if u8.ndim == 3 and u8.shape[2] == 4:
        return _by_rows(u8, _blend_on_white, channels=3)
    return u8


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype == np.uint16:
        lo, hi = float(arr.min()), float(arr.max())
        return _by_rows(arr, lambda rows: _scale_to_uint8(rows, lo, hi, full_scale=65535.0))
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError(
                f"an integer image array of dtype {arr.dtype} must hold values in [0, 255], "
                f"got [{lo}, {hi}]; use uint16 for 16-bit images"
            )
        return arr.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError("the float image array holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"a float image array must hold values in [0, 1], got [{lo:.4g}, {hi:.4g}]; "
                "divide by 255 if it holds 8-bit values"
            )
        return _by_rows(arr, _unit_to_uint8)
    raise ImageError(f"unsupported image array dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")


def _by_rows(arr: np.ndarray, convert: Any, channels: int | None = None) -> np.ndarray:
    """``convert`` applied to bands of rows of ``arr`` into one uint8 array (bounded temporaries)."""
    shape = arr.shape if channels is None else (*arr.shape[:2], channels)
    out = np.empty(shape, dtype=np.uint8)
    width = arr.shape[1] * (arr.shape[2] if arr.ndim == 3 else 1)
    for top, bottom in _row_bands(arr.shape[0], width):
        out[top:bottom] = convert(arr[top:bottom])
    return out


def _unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] (NaN as 0) to uint8 by ``round(255 v)``."""
    out = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    out *= 255.0
    np.rint(out, out=out)
    return out.astype(np.uint8)


def _scale_to_uint8(values: np.ndarray, lo: float, hi: float, *, full_scale: float) -> np.ndarray:
    """Stretch ``[lo, hi]`` to [0, 255] (non-finite values as 0); a constant image maps by ``full_scale``."""
    work = values.astype(np.float32)
    finite = np.isfinite(work)
    if not finite.all():
        work[~finite] = 0.0
    if hi > lo:
        work -= lo
        work *= 255.0 / (hi - lo)
    else:
        work[...] = min(max(lo / full_scale, 0.0), 1.0) * 255.0
    np.rint(work, out=work)
    np.clip(work, 0.0, 255.0, out=work)
    return work.astype(np.uint8)


def _as_rgb(pixels: np.ndarray, source: Any) -> np.ndarray:
    """``(H, W, 3)`` C-contiguous uint8 not sharing memory with ``source``."""
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if isinstance(source, np.ndarray) and np.may_share_memory(pixels, source):
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def _fit_side(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink ``pixels`` with area interpolation so that its longest side is at most ``max_side``."""
    height, width = pixels.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return pixels
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
