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
  file (a partly decoded JPEG is refused, never returned half grey), a header announcing
  more than ``max_pixels`` pixels in a format that cannot be decoded reduced.
- **Large images**: dimensions are read from the header before any pixel is decoded. A JPEG
  larger than ``max_pixels`` or ``max_side`` is decoded reduced by libjpeg's DCT scaling
  (``Image.draft``, 1/2, 1/4 or 1/8), so a 20,000 x 20,000 JPEG is decoded at
  2,500 x 2,500. Any result with a side above ``max_side`` is then shrunk with area
  interpolation, keeping the aspect ratio. With the default limits the largest buffers
  held at once stay well under 1 GB (at most ``max_pixels`` pixels of 4 bytes, plus the
  RGB result).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Union

import cv2
import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ._validation import ImageError

__all__ = [
    "pixels_sha256",
    "ImageSource",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "SUPPORTED_FORMATS",
    "load_image",
    "to_grey",
]

#: Anything :func:`load_image` accepts.
ImageSource = Union[str, Path, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

#: Largest encoded file accepted (bytes).
DEFAULT_MAX_BYTES: int = 25_000_000
#: Largest decoded image accepted, in pixels, unless it is a JPEG that can be decoded reduced.
DEFAULT_MAX_PIXELS: int = 50_000_000
#: Longest side of a returned image; larger results are shrunk to it.
DEFAULT_MAX_SIDE: int = 4096

#: Raster formats Pillow may open here; others (EPS through Ghostscript, PDF, ...) are refused.
SUPPORTED_FORMATS: tuple[str, ...] = (
    "JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "ICO", "TGA", "AVIF", "JPEG2000",
)

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"
_WHITE = (255, 255, 255)


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
    _check_limits(max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side)
    if isinstance(source, np.ndarray):
        pixels = _array_to_uint8_image(source)
    elif isinstance(source, Image.Image):
        pixels = _pil_to_uint8(_exif_upright(source, owned=False))
    else:
        data, name = _read_bytes(source, max_bytes=max_bytes)
        pixels = _decode_bytes(data, name=name, max_pixels=max_pixels, max_side=max_side)
    # Shrink before grey becomes RGB, so a large grey image never exists three times over.
    return _as_rgb(_fit_side(pixels, max_side), source)


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


def _check_limits(*, max_bytes: int, max_pixels: int, max_side: int) -> None:
    for name, value in (("max_bytes", max_bytes), ("max_pixels", max_pixels), ("max_side", max_side)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


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
            raise ImageError(
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
        raise ImageError(f"{name} is larger than the {_mb(max_bytes)} limit")
    return data, name


# --------------------------------------------------------------------------- decoding


def _open_header(data: bytes, *, name: str) -> Image.Image:
    """Open ``data`` lazily: only the header is parsed, no pixel is decoded."""
    buf = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if data.startswith(_JPEG_SOI):
                # Constructed directly, the JPEG plugin skips Pillow's decompression-bomb
                # check, which would refuse a 20,000 x 20,000 JPEG before draft() can reduce it.
                return JpegImagePlugin.JpegImageFile(buf)
            Image.init()
            return Image.open(buf, formats=[f for f in SUPPORTED_FORMATS if f in Image.OPEN])
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"{name} declares an image of more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels; "
            "refused as too large to decode (a possible decompression bomb)"
        ) from err
    except UnidentifiedImageError as err:
        head = data[:16]
        raise ImageError(
            f"{name} is not an image in a supported format (JPEG, PNG, GIF, WebP, BMP, TIFF, ...); "
            f"it starts with {head!r}"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        if "truncated" in str(err).lower() or isinstance(err, EOFError):
            raise ImageError(f"{name} is truncated: the file ends inside the image header") from err
        raise ImageError(f"{name} has a damaged image header: {err}") from err


def _decode_bytes(data: bytes, *, name: str, max_pixels: int, max_side: int) -> np.ndarray:
    """Decode encoded bytes into uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB, upright."""
    im = _open_header(data, name=name)
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"{name} declares an empty image ({width} x {height} pixels)")
    is_jpeg = im.format in ("JPEG", "MPO")
    too_many = width * height > max_pixels
    if is_jpeg and (too_many or max(width, height) > max_side):
        scale = min(1.0, max_side / max(width, height), math.sqrt(max_pixels / (width * height)))
        im.draft(im.mode, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        too_many = im.size[0] * im.size[1] > max_pixels
    if too_many:
        raise ImageError(
            f"{name} is {width:,} x {height:,} pixels ({width * height / 1e6:.0f} megapixels), "
            f"more than the {max_pixels / 1e6:.0f} megapixel limit; "
            + ("even decoded at 1/8 size it is too large" if is_jpeg else "save it smaller or as JPEG")
        )
    if is_jpeg and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        # No end-of-image marker after the last scan: the file was cut short. Pillow refuses
        # this by default, but not when some other code sets ImageFile.LOAD_TRUNCATED_IMAGES.
        raise ImageError(f"{name} is a truncated JPEG (the file ends before the image does)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.seek(0)
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as err:
        text = str(err)
        if "truncated" in text or isinstance(err, EOFError):
            raise ImageError(
                f"{name} is truncated: the {im.format or 'image'} file ends before the image does"
            ) from err
        raise ImageError(f"{name} could not be decoded as {im.format or 'an image'}: {text}") from err
    return _pil_to_uint8(_exif_upright(im, owned=True))


def _exif_upright(im: Image.Image, *, owned: bool) -> Image.Image:
    """Apply the EXIF orientation; ``owned`` images are turned in place, others are copied."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block must not make a readable image unreadable
        return im
    if orientation in (None, 1):
        return im
    try:
        if owned:
            ImageOps.exif_transpose(im, in_place=True)
            return im
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def _pil_to_uint8(im: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to uint8: ``(H, W)`` for grey modes, else ``(H, W, 3)`` RGB."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return np.array(im, dtype=np.uint8)
    if mode == "1":
        return np.array(im.convert("L"), dtype=np.uint8)
    if mode.startswith("I"):  # I, I;16, I;16L, I;16B, I;16N
        if mode != "I":
            im = im.convert("I")
        return _range_to_uint8(np.asarray(im), full_scale=65535.0)
    if mode == "F":
        values = np.asarray(im, dtype=np.float32)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            return _unit_to_uint8(values)
        return _range_to_uint8(values, full_scale=1.0)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA"):
        return _composite_on_white(im)
    try:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as err:
        raise ImageError(f"unsupported image mode {mode!r}: {err}") from err


def _composite_on_white(im: Image.Image) -> np.ndarray:
    """Composite an RGBA or LA image over white; LA stays grey."""
    colour_mode = "L" if im.mode == "LA" else "RGB"
    out = Image.new(colour_mode, im.size, 255 if colour_mode == "L" else _WHITE)
    out.paste(im.convert(colour_mode), (0, 0), im.getchannel("A"))
    return np.array(out, dtype=np.uint8)


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
        return _blend_on_white(u8)
    return u8


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype == np.uint16:
        return _range_to_uint8(arr, full_scale=65535.0)
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
        return _unit_to_uint8(arr)
    raise ImageError(f"unsupported image array dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")


def _unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] (NaN as 0) to uint8 by ``round(255 v)``."""
    out = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    out *= 255.0
    np.rint(out, out=out)
    return out.astype(np.uint8)


def _range_to_uint8(values: np.ndarray, *, full_scale: float) -> np.ndarray:
    """Stretch ``[min, max]`` of ``values`` to [0, 255]; a constant image maps by ``full_scale``."""
    work = values.astype(np.float32)
    finite = np.isfinite(work)
    if not finite.all():
        work[~finite] = 0.0
    lo, hi = float(work.min()), float(work.max())
    if hi > lo:
        work -= lo
        work *= 255.0 / (hi - lo)
    else:
        work[...] = min(max(lo / full_scale, 0.0), 1.0) * 255.0
    np.rint(work, out=work)
    np.clip(work, 0.0, 255.0, out=work)
    return work.astype(np.uint8)


def _blend_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite ``(H, W, 4)`` uint8 over white: ``out = (rgb a + 255 (255 - a)) / 255``, rounded."""
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    out = rgba[:, :, :3].astype(np.uint16) * alpha + 255 * (255 - alpha)
    out += 127
    out //= 255
    return out.astype(np.uint8)


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
