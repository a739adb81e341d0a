"""Tests of fer_core.images: decoding every form of image a user may give, and refusing bad ones."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from fer_core._validation import FERError, ImageError
from fer_core.images import load_image, to_grey
from fixtures_scenes import (
    REPO,
    astronaut,
    astronaut_forms,
    encode,
    exif_jpeg,
    fer_val_files,
    flat_jpeg,
    needs_fer,
    png_header_only,
)

GREY_FORMS = {"pil-L", "pil-LA", "pil-I;16", "pil-I", "pil-F", "np-grey", "np-grey1", "np-uint16"}


def _expected(name: str) -> np.ndarray:
    rgb = astronaut()
    if name in GREY_FORMS:
        return np.repeat(to_grey(rgb)[:, :, None], 3, axis=2)
    return rgb


def _check_rgb(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == (*shape, 3)
    assert out.flags.c_contiguous


class TestLoadImageForms:
    @pytest.mark.parametrize("name", sorted(astronaut_forms()))
    def test_pil_modes_and_array_dtypes(self, name: str) -> None:
        source = astronaut_forms()[name]
        out = load_image(source)
        _check_rgb(out, (512, 512))
        # Lossless forms come back exactly; P (256 colours) and YCbCr (rounding) nearly.
        tolerance = {"pil-P": 8.0, "pil-YCbCr": 1.5}.get(name, 0.0)
        assert np.abs(out.astype(int) - _expected(name)).mean() <= tolerance

    @pytest.mark.parametrize(
        ("mode", "fmt"),
        [("RGB", "PNG"), ("RGB", "JPEG"), ("RGB", "BMP"), ("RGB", "WEBP"), ("RGB", "GIF"), ("RGBA", "PNG"),
         ("RGBA", "WEBP"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("I;16", "TIFF"),
         ("F", "TIFF"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "JPEG"), ("1", "PNG")],
    )
    def test_encoded_files(self, mode: str, fmt: str) -> None:
        rgb = astronaut()
        grey = to_grey(rgb)
        special = {
            "I;16": Image.fromarray(grey.astype(np.uint16) * 257),
            "F": Image.fromarray(grey.astype(np.float32) / 255),
            "P": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        }
        image = special.get(mode) or Image.fromarray(rgb).convert(mode)
        data = encode(image, fmt)
        assert Image.open(io.BytesIO(data)).mode in (mode, "RGB", "P", "RGBA", "I;16B")
        out = load_image(data)
        _check_rgb(out, (512, 512))
        grey_mode = mode in ("L", "LA", "I;16", "F", "1")
        if grey_mode:
            assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
        if mode != "1":  # binary images are dithered
            expected = _expected("np-grey" if grey_mode else "np-rgb")
            assert np.abs(out.astype(int) - expected).mean() < 12

    @pytest.mark.parametrize("carrier", ["path", "str", "bytes", "bytearray", "memoryview", "file", "pil-file"])
    def test_carriers(self, tmp_path: Path, carrier: str) -> None:
        data = encode(Image.fromarray(astronaut()), "PNG")
        path = tmp_path / "astronaut.png"
        path.write_bytes(data)
        source = {
            "path": path, "str": str(path), "bytes": data, "bytearray": bytearray(data),
            "memoryview": memoryview(data), "file": io.BytesIO(data), "pil-file": Image.open(path),
        }[carrier]
        assert np.array_equal(load_image(source), astronaut())

    @pytest.mark.parametrize("orientation", [3, 6, 8])
    def test_exif_orientation_applied(self, orientation: int) -> None:
        out = load_image(exif_jpeg(astronaut(), orientation))
        _check_rgb(out, (512, 512))
        assert np.abs(out.astype(int) - astronaut()).mean() < 4  # upright, up to JPEG loss

    def test_exif_orientation_of_pil_image_leaves_it_unchanged(self) -> None:
        image = Image.open(io.BytesIO(exif_jpeg(astronaut()[:, :300], 6)))
        before = image.size
        out = load_image(image)
        assert out.shape == (512, 300, 3)
        assert image.size == before and image.getexif().get(0x0112) == 6

    def test_rgba_composited_on_white(self) -> None:
        rgba = np.zeros((4, 4, 4), np.uint8)
        rgba[..., 0] = 200
        rgba[0, :, 3] = 0  # fully transparent row: white
        rgba[1, :, 3] = 255  # opaque row: its colour
        rgba[2, :, 3] = 128  # half: halfway to white
        out = load_image(rgba)
        assert (out[0] == 255).all()
        assert (out[1] == (200, 0, 0)).all()
        assert np.allclose(out[2].astype(int), (228, 127, 127), atol=1)
        from_png = load_image(encode(Image.fromarray(rgba), "PNG"))
        assert np.array_equal(from_png, out)

    def test_palette_transparency_composited_on_white(self) -> None:
        image = Image.new("P", (8, 8), 1)
        image.putpalette([0, 0, 0, 10, 20, 30] + [0, 0, 0] * 254)
        image.paste(0, (0, 0, 4, 8))
        image.info["transparency"] = 0
        out = load_image(encode(image, "PNG", transparency=0))
        assert (out[:, :4] == 255).all()
        assert (out[:, 4:] == (10, 20, 30)).all()

    @pytest.mark.parametrize("dtype", [np.uint16, np.int32])
    def test_16_bit_scaled_by_actual_range(self, dtype: type) -> None:
        ramp = np.tile(np.linspace(1000, 5000, 64).astype(dtype), (16, 1))  # a 12-bit-like scan
        source = ramp if dtype == np.uint16 else Image.fromarray(ramp)
        out = load_image(source)[:, :, 0]
        assert out.min() == 0 and out.max() == 255  # stretched, not clipped nor left dark
        assert (np.diff(out[0].astype(int)) >= 0).all()

    def test_16_bit_png_file(self) -> None:
        ramp = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (8, 1))
        out = load_image(encode(Image.fromarray(ramp), "PNG"))
        assert out.min() == 0 and out.max() == 255

    def test_animated_gif_first_frame(self) -> None:
        frames = [Image.new("RGB", (20, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
        data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert Image.open(io.BytesIO(data)).n_frames == 2
        out = load_image(data)
        assert out.shape == (10, 20, 3)
        assert tuple(out[5, 5]) == (255, 0, 0)

    @pytest.mark.parametrize(
        "array",
        [np.zeros((5, 6), np.uint8), np.zeros((5, 6, 1), np.uint8), np.zeros((5, 6, 3), np.uint8),
         np.zeros((5, 6, 4), np.uint8), np.ones((5, 6), bool), np.full((5, 6), 0.5, np.float32),
         np.full((5, 6, 3), 7, np.int64)],
        ids=["grey", "grey1", "rgb", "rgba", "bool", "float32", "int64"],
    )
    def test_array_input_untouched_and_not_shared(self, array: np.ndarray) -> None:
        before = array.copy()
        out = load_image(array)
        _check_rgb(out, (5, 6))
        assert np.array_equal(array, before)
        assert not np.shares_memory(out, array)
        out[...] = 99
        assert np.array_equal(array, before)

    def test_non_contiguous_view(self) -> None:
        view = astronaut()[::2, ::-2]
        out = load_image(view)
        _check_rgb(out, (256, 256))
        assert np.array_equal(out, view)

    @needs_fer
    def test_fer_face_png(self) -> None:
        path = fer_val_files()[0]
        out = load_image(path)
        assert out.shape == (48, 48, 3)
        assert np.array_equal(out[:, :, 0], np.asarray(Image.open(path)))


class TestLoadImageLimits:
    def test_downscaled_to_max_side_keeping_aspect(self) -> None:
        wide = np.zeros((100, 5000, 3), np.uint8)
        out = load_image(wide, max_side=4096)
        assert out.shape == (82, 4096, 3)
        assert load_image(astronaut(), max_side=100).shape == (100, 100, 3)

    def test_downscale_uses_area_interpolation(self) -> None:
        stripes = np.zeros((64, 64), np.uint8)
        stripes[:, ::2] = 255  # one-pixel stripes average to grey; nearest would keep 0 or 255
        out = load_image(stripes, max_side=32)
        assert np.abs(out.astype(int) - 128).max() <= 1

    def test_file_larger_than_max_bytes(self, tmp_path: Path) -> None:
        path = tmp_path / "astronaut.png"
        path.write_bytes(encode(Image.fromarray(astronaut()), "PNG"))
        with pytest.raises(ImageError, match=r"astronaut.png' is [\d.]+ [kM]B, larger than the 1\.0 kB limit"):
            load_image(path, max_bytes=1000)
        with pytest.raises(ImageError, match="larger than"):
            load_image(path.read_bytes(), max_bytes=1000)
        with pytest.raises(ImageError, match="larger than"):
            load_image(io.BytesIO(path.read_bytes()), max_bytes=1000)

    @pytest.mark.parametrize(("width", "height"), [(20_000, 20_000), (8_000, 8_000)])
    def test_png_bomb_header_refused_before_decoding(self, width: int, height: int) -> None:
        data = png_header_only(width, height)
        assert len(data) < 200
        start = time.perf_counter()
        with pytest.raises(ImageError, match=r"megapixel limit|too large to decode"):
            load_image(data)
        assert time.perf_counter() - start < 0.5

    def test_no_raw_pil_bomb_error_escapes(self) -> None:
        with pytest.raises(ImageError) as info:
            load_image(png_header_only(30_000, 30_000))
        assert not isinstance(info.value, Image.DecompressionBombError)
        assert isinstance(info.value, FERError)

    def test_huge_jpeg_decoded_reduced_with_draft(self) -> None:
        data = flat_jpeg(20_000, 20_000)  # 400 megapixels: Pillow alone would refuse or need 1.2 GB
        start = time.perf_counter()
        out = load_image(data)
        assert time.perf_counter() - start < 5
        assert max(out.shape[:2]) <= 4096 and out.shape[0] == out.shape[1]
        assert 127 <= out.min() and out.max() <= 129

    def test_huge_jpeg_uses_little_memory(self, tmp_path: Path) -> None:
        path = tmp_path / "huge.jpg"
        path.write_bytes(flat_jpeg(20_000, 20_000))
        script = (
            "import resource, sys\n"
            "from fer_core.images import load_image\n"
            "import numpy as np\n"
            "load_image(np.zeros((8, 8), np.uint8))\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"out = load_image({str(path)!r})\n"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(out.shape[0], (after - before) // 1024)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
        )
        side, extra_mb = map(int, result.stdout.split())
        assert side <= 4096
        assert extra_mb < 300  # a full decode would need 400 MB grey + 1.2 GB RGB

    def test_jpeg_above_max_pixels_even_at_eighth_is_refused(self) -> None:
        with pytest.raises(ImageError, match="even decoded at 1/8 size"):
            load_image(flat_jpeg(4_000, 4_000), max_pixels=100_000)

    def test_large_jpeg_within_limits_downscaled(self) -> None:
        out = load_image(flat_jpeg(6_400, 3_200), max_side=1000)
        assert out.shape == (500, 1000, 3)

    @pytest.mark.parametrize("name", ["max_bytes", "max_pixels", "max_side"])
    def test_bad_limits(self, name: str) -> None:
        with pytest.raises(ValueError, match=name):
            load_image(astronaut(), **{name: 0})


class TestLoadImageErrors:
    def test_zero_byte_file(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
        with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
            load_image(path)

    @pytest.mark.parametrize("source", [b"", io.BytesIO(b"")], ids=["bytes", "file"])
    def test_zero_bytes(self, source: object) -> None:
        with pytest.raises(ImageError, match="empty"):
            load_image(source)

    def test_text_file_renamed_jpg(self, tmp_path: Path) -> None:
        path = tmp_path / "holiday.jpg"
        path.write_text("Dear diary, today I took a photo.\n")
        with pytest.raises(ImageError, match=r"holiday\.jpg.*not an image in a supported format \(JPEG, PNG") as info:
            load_image(path)
        assert "Dear" not in str(info.value) and "diary" not in str(info.value)

    @pytest.mark.parametrize(
        "content",
        [b"root:x:0:0:root:/root:/bin/bash\n", b"%PDF-1.7 secret", b"\x89PNG\r\n\x1a\nsecret-token-1234"],
        ids=["passwd", "pdf", "png-magic"],
    )
    def test_message_never_quotes_the_file(self, content: bytes) -> None:
        with pytest.raises(ImageError) as info:
            load_image(content)
        message = str(info.value)
        assert "root" not in message and "secret" not in message and "b'" not in message
        assert "supported format" in message or "damaged" in message or "truncated" in message

    def test_damaged_chunk_name_not_echoed(self) -> None:
        # The pixel data split in two IDAT chunks, the second one's type damaged: Pillow's own
        # text quotes that type from the file as a bytes repr ("broken PNG file (chunk b'SE-R')").
        import struct
        import zlib

        data = encode(Image.fromarray(astronaut()[:64, :64]), "PNG")
        start = data.index(b"IDAT") - 4
        length = struct.unpack(">I", data[start : start + 4])[0]
        payload = data[start + 8 : start + 8 + length]

        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        half = len(payload) // 2
        damaged = data[:start] + chunk(b"IDAT", payload[:half]) + chunk(b"SE-R", payload[half:]) + chunk(b"IEND", b"")
        with pytest.raises(ImageError, match="could not be decoded as PNG") as info:
            load_image(damaged)
        assert "SE-R" not in str(info.value) and "b'" not in str(info.value)

    def test_eps_not_opened(self) -> None:
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
        with pytest.raises(ImageError, match="not an image in a supported format"):
            load_image(eps)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ImageError, match="not found"):
            load_image(tmp_path / "nope.png")

    def test_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ImageError, match="not a file"):
            load_image(tmp_path)

    @pytest.mark.parametrize("fraction", [0.3, 0.9, 0.999])
    @pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
    def test_truncated_file(self, fmt: str, fraction: float) -> None:
        data = encode(Image.fromarray(astronaut()), fmt)
        with pytest.raises(ImageError, match="truncated"):
            load_image(data[: int(len(data) * fraction)])

    def test_truncated_header(self) -> None:
        data = encode(Image.fromarray(astronaut()), "JPEG")
        with pytest.raises(ImageError, match="truncated"):
            load_image(data[:100])

    def test_truncated_progressive_jpeg(self) -> None:
        data = encode(Image.fromarray(astronaut()), "JPEG", progressive=True)
        with pytest.raises(ImageError, match="truncated"):
            load_image(data[: len(data) // 2])

    def test_truncated_jpeg_refused_even_if_pillow_told_to_accept(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
        data = encode(Image.fromarray(astronaut()), "JPEG")
        with pytest.raises(ImageError, match="truncated JPEG"):
            load_image(data[: len(data) // 2])
        assert load_image(data).shape == (512, 512, 3)

    def test_jpeg_with_trailing_bytes_accepted(self) -> None:
        data = encode(Image.fromarray(astronaut()), "JPEG") + b"\x00vendor trailer"
        assert load_image(data).shape == (512, 512, 3)

    @pytest.mark.parametrize(
        ("array", "match"),
        [(np.zeros((4, 4, 2), np.uint8), r"shape"), (np.zeros((0, 4), np.uint8), "empty"),
         (np.full((4, 4), 255.0), r"\[0, 1\].*divide by 255"), (np.full((4, 4), np.nan), "NaN"),
         (np.full((4, 4), 300, np.int32), r"\[0, 255\]"), (np.zeros((4, 4), np.complex64), "dtype"),
         (np.zeros((2, 4, 4, 3), np.uint8), "shape")],
        ids=["2-channels", "empty", "float-0-255", "nan", "int-300", "complex", "4d"],
    )
    def test_bad_arrays(self, array: np.ndarray, match: str) -> None:
        with pytest.raises(ImageError, match=match):
            load_image(array)

    @pytest.mark.parametrize("source", [None, 3.5, ["a.png"]], ids=["none", "float", "list"])
    def test_wrong_type(self, source: object) -> None:
        with pytest.raises(TypeError, match="image source must be"):
            load_image(source)  # type: ignore[arg-type]

    def test_text_mode_file(self, tmp_path: Path) -> None:
        path = tmp_path / "a.txt"
        path.write_text("hello")
        with path.open("r") as fh, pytest.raises(TypeError, match="binary mode"):
            load_image(fh)  # type: ignore[arg-type]


class TestToGrey:
    def test_matches_opencv_and_bt601(self) -> None:
        rgb = astronaut()
        grey = to_grey(rgb)
        assert grey.shape == (512, 512) and grey.dtype == np.uint8
        assert np.array_equal(grey, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        luma = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])
        assert np.abs(grey - luma).max() <= 1.0

    def test_input_untouched_and_grey_passthrough(self) -> None:
        rgb = astronaut()
        before = rgb.copy()
        grey = to_grey(rgb)
        assert np.array_equal(rgb, before)
        again = to_grey(grey)
        assert np.array_equal(again, grey) and not np.shares_memory(again, grey)
        assert np.array_equal(to_grey(grey[:, :, None]), grey)

    @pytest.mark.parametrize(
        ("value", "error", "match"),
        [([[1, 2]], TypeError, "numpy array"), (np.zeros((4, 4, 3), np.float32), ValueError, "uint8"),
         (np.zeros((4, 4, 4), np.uint8), ValueError, r"\(H, W, 3\)")],
    )
    def test_bad_input(self, value: object, error: type, match: str) -> None:
        with pytest.raises(error, match=match):
            to_grey(value)  # type: ignore[arg-type]
