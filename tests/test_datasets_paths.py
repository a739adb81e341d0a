"""Data sets that reach for too much: huge images in a folder, image paths and links leading outside."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import REPO
from fer_core.datasets import DatasetError, load_faces
from fer_core.datasets._folder import decode_face_checked, read_folder
from fer_core.datasets._parquet import read_parquet
from fer_core.images import DEFAULT_MAX_DECODE_BYTES, ImageTooLarge
from fixtures_scenes import flat_jpeg
from test_images_budget import needs_proc, zero_png


def _png(face: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, "PNG")
    return buf.getvalue()


def _faces_folder(root: Path, faces: np.ndarray, emotion: str = "happy") -> Path:
    folder = root / "train" / emotion
    folder.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(faces):
        (folder / f"face_{i}.png").write_bytes(_png(face))
    return folder


class TestFolderBudget:
    def test_huge_png_is_skipped_with_a_warning(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        folder = _faces_folder(tmp_path, images[:3])
        (folder / "huge.png").write_bytes(zero_png(20_000, 20_000))  # 1.2 GB of RGB once decoded
        (folder / "broken.png").write_bytes(b"not a png")
        with pytest.warns(UserWarning, match=r"skipped 1 files too large to decode within the 256 MB memory limit "
                                             r"\(e\.g\. .*huge\.png\)"):
            table = load_faces(tmp_path, use_cache=False, progress=False)
        assert len(table) == 3
        assert table.skipped["too_large_files"] == 1 and table.skipped["corrupt_files"] == 1
        np.testing.assert_array_equal(table.images, images[:3])

    @pytest.mark.parametrize(
        "data",
        [zero_png(7_000, 7_000), zero_png(3_000, 3_000, colour_type=0, bit_depth=16)],
        ids=["rgb-7000", "grey16-3000"],
    )
    def test_over_the_opencv_budget_is_refused_from_the_header(self, data: bytes) -> None:
        with pytest.raises(ImageTooLarge, match="MB of memory|megapixel"):
            decode_face_checked(data)

    def test_large_jpeg_decoded_reduced(self, tmp_path: Path) -> None:
        face = decode_face_checked(flat_jpeg(8_000, 8_000))
        assert face.shape == (48, 48) and abs(int(face.mean()) - 128) <= 1

    def test_small_faces_decode_as_before(self, val_faces) -> None:
        images, _, _ = val_faces
        np.testing.assert_array_equal(decode_face_checked(_png(images[0])), images[0])

    @needs_proc
    @pytest.mark.slow
    def test_peak_memory_of_a_folder_with_a_huge_png(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        folder = _faces_folder(tmp_path, images[:2])
        (folder / "huge.png").write_bytes(zero_png(20_000, 20_000))
        (folder / "big.png").write_bytes(zero_png(2_700, 2_700))  # about the largest accepted
        script = (
            "import warnings, sys\n"
            "from fer_core.datasets import load_faces\n"
            "def status(key):\n"
            "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))\n"
            "before = status('VmRSS:')\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "with warnings.catch_warnings():\n"
            "    warnings.simplefilter('ignore')\n"
            "    table = load_faces(sys.argv[1], use_cache=False, progress=False)\n"
            "print(len(table), status('VmHWM:') - before)\n"
        )
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True,
                              text=True, timeout=300, check=True)
        faces, extra = map(int, done.stdout.split())
        assert faces == 3
        assert extra < DEFAULT_MAX_DECODE_BYTES  # before: 2.3 GB for the 20,000 x 20,000 PNG


class TestFolderLinks:
    def test_link_leading_outside_is_skipped_unless_allowed(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        root = tmp_path / "data"
        folder = _faces_folder(root, images[:2])
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        (outside / "secret.png").write_bytes(_png(images[5]))
        (folder / "link_out.png").symlink_to(outside / "secret.png")
        (folder / "link_in.png").symlink_to(folder / "face_0.png")
        with pytest.warns(UserWarning, match=r"skipped 1 files reached through a symbolic link that leads outside"):
            table = load_faces(root, use_cache=False, progress=False)
        assert len(table) == 3  # two files and the link that stays inside
        assert table.skipped["outside_root"] == 1
        allowed = read_folder(root.resolve(), progress=False, allow_outside_root=True)
        assert len(allowed) == 4

    def test_linked_class_folder_outside_is_skipped(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        root = tmp_path / "data"
        _faces_folder(root, images[:2])
        outside = _faces_folder(tmp_path / "other", images[2:5], emotion="sad")
        (root / "train" / "sad").symlink_to(outside, target_is_directory=True)
        with pytest.warns(UserWarning, match="skipped 3 files reached through a symbolic link"):
            table = load_faces(root, use_cache=False, progress=False)
        assert len(table) == 2


def _parquet_with_paths(path: Path, image_paths: list[str | None], blobs: list[bytes | None]) -> None:
    image = pa.array(
        [{"bytes": blob, "path": p} for blob, p in zip(blobs, image_paths)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"image": image, "label": pa.array([3] * len(blobs), pa.int64())}), path)


class TestParquetPaths:
    def test_relative_paths_inside_the_folder_are_read(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        (tmp_path / "img").mkdir()
        for i in range(2):
            (tmp_path / "img" / f"{i}.png").write_bytes(_png(images[i]))
        _parquet_with_paths(tmp_path / "train.parquet", ["img/0.png", "img/1.png", "x.png"],
                            [None, None, _png(images[2])])
        table = read_parquet(tmp_path / "train.parquet", progress=False)
        np.testing.assert_array_equal(table.images, images[:3])

    @pytest.mark.parametrize("kind", ["absolute", "dotdot", "link"])
    def test_paths_leading_outside_are_refused_naming_the_row(self, tmp_path: Path, val_faces, kind: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
        images, _, _ = val_faces
        root = tmp_path / "data"
        root.mkdir()
        secret = tmp_path / "secret.png"
        secret.write_bytes(_png(images[0]))
        (root / "inside.png").symlink_to(secret)
        bad = {"absolute": str(secret), "dotdot": "../secret.png", "link": "inside.png"}[kind]
        _parquet_with_paths(root / "train.parquet", [None, bad], [_png(images[1]), None])
        read = []
        monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or b"")
        with pytest.raises(DatasetError,
                           match=r"train\.parquet: row 1: the image is a file path outside the data set folder"):
            read_parquet(root / "train.parquet", progress=False)
        assert read == []  # refused without reading the file
        monkeypatch.undo()
        table = read_parquet(root / "train.parquet", progress=False, allow_outside_root=True)
        np.testing.assert_array_equal(table.images, images[[1, 0]])

    def test_load_faces_refuses_them_unless_asked_and_keeps_the_two_apart_in_its_cache(
            self, tmp_path: Path, val_faces) -> None:
        from fer_core.datasets import load_faces

        images, _, _ = val_faces
        root = tmp_path / "data"
        root.mkdir()
        secret = tmp_path / "secret.png"
        secret.write_bytes(_png(images[0]))
        _parquet_with_paths(root / "train.parquet", [None, str(secret)], [_png(images[1]), None])
        cache = tmp_path / "cache"
        allowed = load_faces(root, cache_dir=cache, progress=False, allow_outside_root=True)
        np.testing.assert_array_equal(allowed.images, images[[1, 0]])
        with pytest.raises(DatasetError, match="outside the data set folder"):
            load_faces(root, cache_dir=cache, progress=False)  # not answered from the allowed load's cache

    def test_huge_image_in_parquet_is_skipped(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        pd.DataFrame({"image": [_png(images[0]), zero_png(20_000, 20_000)], "label": [3, 3]}).to_parquet(
            tmp_path / "train.parquet"
        )
        with pytest.warns(UserWarning, match="skipped 1 rows whose image is too large to decode"):
            table = load_faces(tmp_path / "train.parquet", use_cache=False, progress=False)
        assert len(table) == 1 and table.skipped["too_large_images"] == 1
