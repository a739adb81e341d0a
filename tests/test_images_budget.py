"""Decoding memory of fer_core.images: large files refused from their header, accepted ones bounded.

The worst cases are built here with little memory: a PNG of zeros is a zlib stream of one
compressed block repeated, so a 20,000 x 20,000 PNG takes milliseconds. Peak memory is read
in a fresh subprocess from ``VmHWM`` after resetting it (``/proc/self/clear_refs``), so the
pytest process's own size does not count.

Run as a module from the repository root to print the peak memory of every case (``tests`` is a
namespace package there, and ``fer_core`` importable, with no change to ``sys.path``)::

    .venv/bin/python -m tests.test_images_budget
"""

from __future__ import annotations

import io
import math
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fer_core._validation import ImageError
from fer_core.images import (
    DEFAULT_MAX_DECODE_BYTES,
    DEFAULT_MAX_PIXELS,
    decode_cost,
    load_image,
    probe_image,
)

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000


# --------------------------------------------------------------------------- building large files


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _zlib_zeros(length: int) -> bytes:
    """A zlib stream of ``length`` zero bytes, made without compressing them all.

    A deflate block ended by a full flush is byte-aligned and does not refer to earlier data,
    so one compressed block of 1 MiB of zeros can be repeated; Adler-32 of n zeros is
    ``(n mod 65521) << 16 | 1``.
    """
    block_size = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(block_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(length, block_size)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    end = tail.compress(bytes(rest)) + tail.flush(zlib.Z_FINISH)
    adler = ((length % 65521) << 16) | 1
    return b"\x78\xda" + block * count + end + struct.pack(">I", adler)


def zero_png(width: int, height: int, *, colour_type: int = 2, bit_depth: int = 8, transparency: bool = False) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels (colour types 0, 2, 3, 4, 6) in a few ms."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row_bytes = math.ceil(width * channels * bit_depth / 8)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    extra = _chunk(b"PLTE", bytes(3 * 256)) if colour_type == 3 else b""
    if transparency:
        extra += _chunk(b"tRNS", b"\x80" * 256)
    idat = _chunk(b"IDAT", _zlib_zeros((row_bytes + 1) * height))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + idat + _chunk(b"IEND", b"")


def ico_holding(png: bytes) -> bytes:
    """An ICO file whose one entry (the directory says 256 x 256) is ``png``, of any size."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def float_tiff(side: int, *, one_strip: bool = False) -> bytes:
    """A deflate-compressed 32-bit float TIFF of a constant image (a few hundred kB at 7,071 x 7,071)."""
    params: dict = {"compression": "tiff_adobe_deflate"}
    if one_strip:
        params["strip_size"] = side * side * 4 + 1
    return encode(Image.new("F", (side, side), 0.25), "TIFF", **params)


def smooth_rgb(width: int, height: int) -> Image.Image:
    """A smooth colour picture (gradients) of any size; compresses to little."""
    ramp = Image.linear_gradient("L")
    red = ramp.resize((width, height))
    green = ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    return Image.merge("RGB", (red, green, Image.new("L", (width, height), 90)))


# --------------------------------------------------------------------------- measuring


_CHILD = r"""
import io, sys, time
from PIL import Image
from fer_core.images import load_image

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

for fmt in ("PNG", "JPEG", "TIFF", "WEBP", "BMP"):  # warm the decoders and their libraries up
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, fmt)
    load_image(buf.getvalue())
with open(sys.argv[1], "rb") as fh:
    data = fh.read()
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # resets VmHWM to the current resident size
start = time.perf_counter()
try:
    out = load_image(data)
    result = "decoded %dx%d" % (out.shape[1], out.shape[0])
except Exception as err:
    result = "refused: %s: %s" % (type(err).__name__, err)
seconds = time.perf_counter() - start
print(status("VmHWM:") - before, round(seconds, 3), result, sep="\t")
"""


def peak_extra(data: bytes, tmp: Path) -> tuple[int, float, str]:
    """Peak extra memory (bytes), seconds and outcome of ``load_image(data)`` in a fresh process."""
    path = tmp / "case.bin"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    extra, seconds, result = done.stdout.strip().split("\t", 2)
    return int(extra), float(seconds), result


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


needs_proc = pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs")


# --------------------------------------------------------------------------- the issue's cases


def _issue_cases() -> dict[str, bytes]:
    return {
        "tiff-float32-7071": float_tiff(7071),
        "ico-png-13000": ico_holding(zero_png(13_000, 13_000, colour_type=6)),
        "png-40000000x1": zero_png(40_000_000, 1),
        "png-20000": zero_png(20_000, 20_000),
        "png-rgba-6000": zero_png(6_000, 6_000, colour_type=6),
    }


ISSUE_REFUSALS = {
    "tiff-float32-7071": (r"7,071 x 7,071 pixels \(as a 32-bit float grey image it would take about "
                          r"\d+\.\d MB of memory"),
    "ico-png-13000": r"13,000 x 13,000 pixels \(169 megapixels, more than the 50 megapixel limit\)",
    "png-40000000x1": r"40,000,000 x 1 pixels: its long side is more than 100 times its short side",
    "png-20000": r"more than 178,956,970 pixels|400 megapixels",
    "png-rgba-6000": r"6,000 x 6,000 pixels \(as a colour with transparency image it would take about",
}


class TestRefusedFromTheHeader:
    @pytest.mark.parametrize("case", sorted(ISSUE_REFUSALS))
    def test_refused_quickly_with_a_clear_message(self, case: str) -> None:
        data = _issue_cases()[case]
        start = time.perf_counter()
        with pytest.raises(ImageError, match=ISSUE_REFUSALS[case]) as info:
            load_image(data)
        assert time.perf_counter() - start < 0.5  # judged from the header, nothing decoded
        assert "refused" in str(info.value)

    def test_icon_judged_by_its_embedded_png_not_its_directory(self) -> None:
        data = ico_holding(zero_png(6_000, 6_000, colour_type=6))
        assert data[6:8] == b"\x00\x00"  # the directory claims 256 x 256
        with pytest.raises(ImageError, match=r"6,000 x 6,000 pixels .*MB of memory"):
            load_image(data)
        small = ico_holding(zero_png(300, 200, colour_type=6))
        assert load_image(small).shape == (200, 300, 3)

    def test_thin_image_within_the_aspect_limit_is_decoded(self) -> None:
        out = load_image(zero_png(8_000, 80))
        assert out.shape == (41, 4096, 3)  # 100:1 is accepted, then shrunk to max_side

    def test_budget_is_a_parameter(self) -> None:
        data = zero_png(3_000, 3_000)
        assert load_image(data).shape == (3000, 3000, 3)
        with pytest.raises(ImageError, match=r"about \d+\.\d MB of memory to decode, more than the 50\.0 MB limit"):
            load_image(data, max_decode_bytes=50_000_000)
        with pytest.raises(ValueError, match="max_decode_bytes"):
            load_image(data, max_decode_bytes=0)

    def test_pil_image_not_yet_decoded_is_budgeted(self) -> None:
        lazy = Image.open(io.BytesIO(zero_png(6_000, 6_000, colour_type=6)))
        with pytest.raises(ImageError, match="6,000 x 6,000 pixels"):
            load_image(lazy)

    def test_probe_reads_the_header_only(self) -> None:
        probe = probe_image(zero_png(2_000, 1_000, colour_type=0, bit_depth=16))
        assert (probe.width, probe.height, probe.reduction, probe.format, probe.mode) == (2000, 1000, 1, "PNG", "I;16")
        assert probe.decode_bytes < DEFAULT_MAX_DECODE_BYTES
        with pytest.raises(ImageError, match="not an image in a supported format"):
            probe_image(b"root:x:0:0:root:/root:/bin/bash")


class TestDecodeCost:
    @pytest.mark.parametrize(
        ("mode", "per_pixel"),
        [("1", 4), ("L", 4), ("P", 6), ("I;16", 4), ("I", 5), ("F", 5), ("RGB", 7), ("RGBA", 7), ("CMYK", 7),
         ("LA", 5)],
    )
    def test_bytes_per_pixel_of_each_mode(self, mode: str, per_pixel: int) -> None:
        # The larger of Pillow's storage (1, 2 or 4 bytes) plus the uint8 result (1 or 3), and
        # that result plus its RGB copy (3), for an image that is not shrunk.
        header = SimpleNamespace(size=(1000, 1000), mode=mode, format="PNG", info={})
        assert decode_cost(header) - 16_000_000 == 1000 * 1000 * per_pixel

    def test_progressive_jpeg_counts_its_coefficients_at_full_size(self) -> None:
        layers = [(1, 1, 1, 0), (2, 1, 1, 1), (3, 1, 1, 1)]
        baseline = SimpleNamespace(size=(1000, 1000), mode="RGB", format="JPEG", info={}, layer=layers)
        progressive = SimpleNamespace(size=(1000, 1000), mode="RGB", format="JPEG", info={"progressive": 1},
                                      layer=layers, _full_size=(8000, 8000))
        assert decode_cost(progressive) - decode_cost(baseline) > 8000 * 8000 * 6 - 16_000_000


# --------------------------------------------------------------------------- JPEGs decoded reduced


def _composed_jpeg(side: int) -> tuple[bytes, np.ndarray]:
    """A smooth colour JPEG of ``side`` x ``side`` with a real FER2013 face pasted in, and its picture at 1/16."""
    from fixtures_scenes import fer_faces

    picture = smooth_rgb(side, side)
    face = Image.fromarray(fer_faces(1, seed=3)[0]).resize((side // 3, side // 3), Image.Resampling.BICUBIC)
    picture.paste(face.convert("RGB"), (side // 3, side // 3))
    reference = np.asarray(picture.resize((side // 16, side // 16), Image.Resampling.BOX))
    return encode(picture, "JPEG", quality=90), reference


class TestLargeJpegDecodedReduced:
    @pytest.mark.parametrize(("side", "expected"), [(7_100, 3_550), (8_000, 4_000)])
    def test_composed_photo(self, side: int, expected: int) -> None:
        data, reference = _composed_jpeg(side)
        assert len(data) < 5_000_000
        out = load_image(data)
        assert out.shape == (expected, expected, 3)  # 1/2 size: at 1/1 it would be over the limits
        small = np.asarray(Image.fromarray(out).resize(reference.shape[1::-1], Image.Resampling.BOX))
        assert np.abs(small.astype(int) - reference).mean() < 3

    def test_20000_jpeg_decoded_reduced(self) -> None:
        from fixtures_scenes import flat_jpeg

        data = flat_jpeg(20_000, 20_000)
        probe = probe_image(data)
        assert (probe.width, probe.height, probe.reduction) == (5_000, 5_000, 4)  # the last one above max_side
        assert load_image(data).shape == (4096, 4096, 3)
        probe = probe_image(data, max_decode_bytes=60_000_000)
        assert (probe.width, probe.height, probe.reduction) == (2_500, 2_500, 8)  # the budget asks for more

    def test_small_max_side_asks_for_a_stronger_reduction(self) -> None:
        from fixtures_scenes import flat_jpeg

        probe = probe_image(flat_jpeg(8_000, 4_000), max_side=1_000)
        assert (probe.width, probe.height, probe.reduction) == (1_000, 500, 8)

    @needs_proc
    @pytest.mark.slow
    @pytest.mark.parametrize("side", [7_100, 8_000])
    def test_composed_photo_peak_memory(self, tmp_path: Path, side: int) -> None:
        data, _ = _composed_jpeg(side)
        extra, _, result = peak_extra(data, tmp_path)
        assert result.startswith("decoded")
        assert extra < DEFAULT_MAX_DECODE_BYTES

    @pytest.mark.slow
    def test_progressive_jpeg_too_large_even_reduced_is_refused(self) -> None:
        # libjpeg keeps a progressive JPEG's coefficients for every pixel (2 bytes per sample),
        # whatever the reduction: 11,500 x 11,500 grey is 264 MB of them.
        data = encode(Image.new("L", (11_500, 11_500), 128), "JPEG", progressive=True)
        start = time.perf_counter()
        with pytest.raises(ImageError, match=r"even decoded at 1/8 size.*progressive or multi-scan JPEG"):
            load_image(data)
        assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- worst accepted cases


def _largest_side(header: dict, *, limit: int = DEFAULT_MAX_DECODE_BYTES, encoded: int = 2 * MB) -> int:
    """The largest square side whose :func:`decode_cost` fits ``limit`` (and the pixel limit)."""
    lo, hi = 16, math.isqrt(DEFAULT_MAX_PIXELS)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fields = {"info": {}, **header, "size": (mid, mid)}
        if "layer" in fields:
            fields["_full_size"] = (mid, mid)
        if decode_cost(SimpleNamespace(**fields), encoded_bytes=encoded) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo // 8 * 8


_RGB_LAYERS = [(1, 1, 1, 0), (2, 1, 1, 1), (3, 1, 1, 1)]


def worst_cases() -> dict[str, Callable[[], bytes]]:
    """Builders of the largest image of each format and mode that the default limits accept."""

    def side(mode: str, fmt: str, **extra: object) -> int:
        return _largest_side({"mode": mode, "format": fmt, **extra})

    s_rgb = side("RGB", "PNG")
    s_tiff = side("F", "TIFF", tag_v2={258: 32, 277: 1, 278: 10**6})
    s_prog = side("RGB", "JPEG", info={"progressive": 1}, layer=_RGB_LAYERS)
    return {
        "png-rgb": lambda: zero_png(s_rgb, s_rgb),
        "png-rgba": lambda: zero_png(s_rgb, s_rgb, colour_type=6),
        "png-palette-transparent": lambda: zero_png(*(side("P", "PNG"),) * 2, colour_type=3, transparency=True),
        "png-grey16": lambda: zero_png(*(side("I;16", "PNG"),) * 2, colour_type=0, bit_depth=16),
        "png-grey": lambda: zero_png(7_064, 7_064, colour_type=0),
        "png-1bit": lambda: zero_png(7_064, 7_064, colour_type=0, bit_depth=1),
        "tiff-float32-one-strip": lambda: float_tiff(s_tiff, one_strip=True),
        "tiff-rgb-lzw": lambda: encode(Image.new("RGB", (s_rgb - 64,) * 2, (10, 20, 30)), "TIFF",
                                       compression="tiff_lzw"),
        "jpeg-rgb-baseline": lambda: encode(smooth_rgb(s_rgb, s_rgb), "JPEG", quality=90),
        "jpeg-rgb-progressive-444": lambda: encode(smooth_rgb(s_prog, s_prog), "JPEG", progressive=True, subsampling=0),
        "jpeg-cmyk": lambda: encode(Image.new("CMYK", (s_rgb, s_rgb), (10, 20, 30, 40)), "JPEG"),
        "webp-rgba": lambda: encode(Image.new("RGBA", (side("RGBA", "WEBP"),) * 2, (1, 2, 3, 4)), "WEBP",
                                    lossless=True),
        "bmp-rgb": lambda: encode(Image.new("RGB", (2_880, 2_880), (1, 2, 3)), "BMP"),  # 24.9 MB: max_bytes
        "tga-rgba-rle": lambda: encode(Image.new("RGBA", (s_rgb, s_rgb), (1, 2, 3, 4)), "TGA", compression="tga_rle"),
        "ppm-grey16": lambda: encode(Image.new("I;16", (3_528, 3_528), 300), "PPM"),  # 24.9 MB: max_bytes
        "avif-rgb": lambda: encode(Image.new("RGB", (side("RGB", "AVIF"),) * 2, (1, 2, 3)), "AVIF", speed=10),
        "jpeg2000-rgb": lambda: encode(Image.new("RGB", (side("RGB", "JPEG2000"),) * 2, (1, 2, 3)), "JPEG2000"),
        "gif": lambda: encode(Image.new("P", (side("P", "GIF"),) * 2, 3), "GIF"),
        "ico-png-rgba": lambda: ico_holding(zero_png(s_rgb, s_rgb, colour_type=6)),
    }


@needs_proc
@pytest.mark.slow
class TestPeakMemory:
    @pytest.mark.parametrize("case", sorted(ISSUE_REFUSALS))
    def test_issue_cases_cost_almost_nothing(self, tmp_path: Path, case: str) -> None:
        extra, seconds, result = peak_extra(_issue_cases()[case], tmp_path)
        assert result.startswith("refused")
        assert extra < 20 * MB and seconds < 0.5

    @pytest.mark.parametrize("case", ["png-rgb", "png-rgba", "png-grey16", "tiff-float32-one-strip",
                                      "jpeg-rgb-progressive-444", "webp-rgba", "ico-png-rgba"])
    def test_worst_accepted_images_stay_under_the_bound(self, tmp_path: Path, case: str) -> None:
        data = worst_cases()[case]()
        extra, _, result = peak_extra(data, tmp_path)
        assert result.startswith("decoded"), result
        assert extra <= DEFAULT_MAX_DECODE_BYTES


def main() -> None:
    """Print the peak extra memory of the issue's cases and of the worst accepted case of each format."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cases = {**_issue_cases(), **worst_cases()}
        if sys.argv[1:]:
            cases = {name: made for name, made in cases.items() if name in sys.argv[1:]}
        print(f"bound: {DEFAULT_MAX_DECODE_BYTES / MB:.0f} MB")
        print(f"{'case':28s} {'file':>9s} {'estimate':>9s} {'peak':>9s} {'seconds':>8s}  outcome")
        for name, made in cases.items():
            data = made() if callable(made) else made
            try:
                estimate = f"{probe_image(data).decode_bytes / MB:.0f} MB"
            except ImageError:
                estimate = "-"
            extra, seconds, result = peak_extra(data, Path(tmp))
            print(f"{name:28s} {len(data) / 1e3:7.0f}kB {estimate:>9s} {extra / MB:6.0f} MB {seconds:8.2f}  "
                  f"{result[:110]}", flush=True)


if __name__ == "__main__":
    main()
