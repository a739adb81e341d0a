"""Exact, near and mirrored duplicate faces of a data set, within and across splits.

FER2013 holds the same face more than once (byte-identical copies, re-encoded, re-cropped by a
pixel or two, brightened, a few mirrored), some across splits. Notation: ``N`` faces, each
``(48, 48)`` uint8; a pair is two faces ``row_a < row_b``.

Kinds of pairs:

``exact``: the same 2,304 bytes (equal blake2b digests of the pixels).
``near``: not exact, perceptual hashes at Hamming distance ``<= max_distance``.
``mirrored``: neither of the above, and each face's hash is within ``max_distance`` of the
    hash of the other face's mirror image (left-right flip). One direction is not enough
    (frontal faces are nearly symmetric); the pair's distance is the larger of the two,
    ``max(d(h_a, m_b), d(m_a, h_b))``, so that it is symmetric.

Perceptual hash: the 64-bit pHash of ``imagehash.phash`` (the face resized to 32x32 with
Lanczos, 2-D DCT-II, the 8x8 lowest frequencies compared with their median), bit for bit.
:func:`perceptual_hashes` computes it for all faces at once: one Pillow resize per face, the
DCT as two products with an 8x32 matrix. The mirror image's hash needs no second resize:
resizing commutes with the flip, and flipping negates the DCT coefficients of odd horizontal
frequency. The median splits the 64 bits in half, so distances between faces are even.

:data:`MAX_DISTANCE` (4) was chosen on ``../shared/fer2013`` by pixel correlation and contact
sheets at each distance: at 4 nearly every pair is the same face, at 6 about one pair in eight
is two people (``docs/experiments.md``, "Duplicate faces").

Groups: connected components over all pairs, so a face and its copy's copy share a group even
when their own distance is larger. ``dup_group`` numbers the groups 0, 1, ... by their first
face, -1 for a face with no duplicate (``dup_group_size`` 1, ``dup_kind`` ""); ``dup_kind``
is the closest kind of pair the face is in (``exact``, then ``near``, then ``mirrored``);
``cross_split`` marks faces whose group holds more than one split.

Search: pairs within ``k`` bits are found by bands (multi-index hashing): the 64 bits are cut
into ``k + 1`` bands, two hashes within ``k`` bits agree exactly on at least one band, so only
faces sharing a band's value are compared. When that would mean more than :data:`_BAND_LIMIT`
candidate pairs (a large ``k``, or many faces) the search uses multi-index hashing with one-bit
variants on ``k // 2 + 1`` wider bands (:func:`_mih_search`): the same pairs, in time about
linear in ``N`` for hashes that spread (a million faces: docs/scale.md); it never checks every
pair. ``method="brute"`` (every pair, in blocks of 256 x 4,096 faces) is kept to check the
others. Hashes and digests are computed in batches, so the faces may be memory-mapped.

Cache: the pairs (rows, distance, kind) are kept by :mod:`fer_core._cache`, keyed by the
faces' pixels and ids, ``max_distance``, ``mirrors`` and :data:`DUPLICATES_VERSION`. Groups,
splits and labels are rebuilt from the table on each call, so a relabelled copy of the same
faces reuses the entry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from fer_core._cache import cache_key, cached, write_frame
from fer_core._cli import cli_main
from fer_core._validation import FERError, check_face_batch
from fer_core.constants import IMAGE_SIZE

if TYPE_CHECKING:
    from fer_core.datasets import FaceTable

__all__ = [
    "DUPLICATES_VERSION",
    "FACE_COLUMNS",
    "KINDS",
    "MAX_DISTANCE",
    "PAIR_COLUMNS",
    "DuplicateReport",
    "find_duplicates",
    "format_summary",
    "get_args_parser",
    "main",
    "perceptual_hashes",
    "pixel_digests",
]

log = logging.getLogger(__name__)

#: Bump when the pairs found for the same faces change (hash, rule), so old cache entries are not reused.
DUPLICATES_VERSION: int = 1
#: Largest pHash Hamming distance of a near or mirrored pair, chosen on FER2013 (docs/experiments.md).
MAX_DISTANCE: int = 4
#: Pair kinds, closest first.
KINDS: tuple[str, ...] = ("exact", "near", "mirrored")
#: Columns of :attr:`DuplicateReport.pairs`, in order.
PAIR_COLUMNS: tuple[str, ...] = (
    "row_a",
    "row_b",
    "sample_id_a",
    "sample_id_b",
    "split_a",
    "split_b",
    "label_a",
    "label_b",
    "distance",
    "kind",
    "cross_split",
    "labels_agree",
    "dup_group",
)
#: Columns of :attr:`DuplicateReport.faces`, in order.
FACE_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "split",
    "emotion",
    "dup_group",
    "dup_kind",
    "dup_group_size",
    "cross_split",
    "group_labels_agree",
)

_HASH_SIZE = 8  # imagehash.phash defaults: 8x8 low frequencies of a 32x32 resize
_RESIZED = _HASH_SIZE * 4
_ROW_BLOCK = 256  # faces compared per block: 256 x 4,096 fits the CPU caches
_COL_BLOCK = 4096
#: Candidate pairs above which the band search gives way to brute force (memory: about 50 bytes each).
_BAND_LIMIT = 8_000_000
_SPLIT_ORDER = ("train", "val", "test", "unsplit")


# --------------------------------------------------------------------------- hashes


def _dct_matrix() -> np.ndarray:
    """The first 8 rows of the unnormalised DCT-II of length 32 (``scipy.fftpack.dct`` type 2)."""
    n = np.arange(_RESIZED)
    k = np.arange(_HASH_SIZE)
    return 2.0 * np.cos(np.pi * k[:, None] * (2 * n[None, :] + 1) / (2 * _RESIZED))


def _pack(low: np.ndarray) -> np.ndarray:
    """Bits ``coefficient > median`` of each face's 8x8 low frequencies as uint64, row-major, first bit highest."""
    flat = low.reshape(len(low), -1)
    bits = flat > np.median(flat, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def perceptual_hashes(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """64-bit pHash of each face and of its mirror image, bit for bit as ``imagehash.phash``.

    Parameters
    ----------
    images : (N, 48, 48) uint8, or one face (48, 48)
        Grey faces (any size is accepted; FER faces are 48x48).

    Returns
    -------
    hashes, mirrored : (N,) uint64 each
        ``hashes[i]`` packs ``imagehash.phash(face).hash`` row by row (first bit highest);
        ``mirrored[i]`` is the same for ``face[:, ::-1]``. The Hamming distance of two hashes
        is ``numpy.bitwise_count(a ^ b)``.
    """
    from fer_core.datasets._stream import iter_batches

    images = check_face_batch(images)
    hashes, mirrored = np.zeros(len(images), np.uint64), np.zeros(len(images), np.uint64)
    size = (_RESIZED, _RESIZED)
    dct = _dct_matrix()
    flip = np.where(np.arange(_HASH_SIZE) % 2 == 1, -1.0, 1.0)  # a flipped row: odd frequencies change sign
    # In batches, so that a million (memory-mapped) faces never need their 32x32 copies at once.
    for start, batch in iter_batches(images):
        small = np.empty((len(batch), _RESIZED, _RESIZED), np.float64)
        for i, face in enumerate(batch):
            small[i] = np.asarray(Image.fromarray(face).resize(size, Image.Resampling.LANCZOS))
        # low[n] = D @ small[n] @ D.T, (face, vertical frequency, horizontal frequency). numpy's own
        # einsum loops, not BLAS: on a busy machine BLAS threads made this 10 times slower.
        low = np.einsum("li,nik->nlk", dct, np.einsum("nij,kj->nik", small, dct))
        hashes[start : start + len(batch)] = _pack(low)
        mirrored[start : start + len(batch)] = _pack(low * flip)
    return hashes, mirrored


def pixel_digests(images: np.ndarray) -> np.ndarray:
    """blake2b digest (16 bytes) of each face's pixels, ``(N,)`` of dtype ``S16``; equal digests: exact copies."""
    from fer_core.datasets._stream import iter_batches

    images = check_face_batch(images)
    digests = np.zeros(len(images), dtype="S16")
    for start, batch in iter_batches(images):
        digests[start : start + len(batch)] = [
            hashlib.blake2b(np.ascontiguousarray(face).tobytes(), digest_size=16).digest() for face in batch
        ]
    return digests


# --------------------------------------------------------------------------- pairs


def _mirror_check(
    hashes: np.ndarray, mirrored: np.ndarray, i: np.ndarray, j: np.ndarray, max_distance: int
) -> np.ndarray:
    """Rows ``i, j, distance`` of the candidate pairs whose both mirror directions are within the distance."""
    d = np.maximum(np.bitwise_count(hashes[i] ^ mirrored[j]), np.bitwise_count(mirrored[i] ^ hashes[j]))
    keep = d <= max_distance
    return np.stack([i[keep], j[keep], d[keep].astype(np.int64)], axis=1)


def _brute_pairs(
    hashes: np.ndarray, mirrored: np.ndarray | None, max_distance: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_close_pairs` by brute force above the diagonal, in blocks of 256 x 4,096 faces."""
    n = len(hashes)
    direct: list[np.ndarray] = []
    mirror: list[np.ndarray] = []
    xor = np.empty((_ROW_BLOCK, _COL_BLOCK), np.uint64)
    count = np.empty((_ROW_BLOCK, _COL_BLOCK), np.uint8)
    close = np.empty((_ROW_BLOCK, _COL_BLOCK), bool)

    def scan(block: np.ndarray, others: np.ndarray, start: int, col: int) -> tuple[np.ndarray, ...]:
        rows, cols = len(block), len(others)
        x = np.bitwise_xor(block[:, None], others[None, :], out=xor[:rows, :cols])
        d = np.bitwise_count(x, out=count[:rows, :cols])
        hit = np.less_equal(d, max_distance, out=close[:rows, :cols])
        if start + rows > col:  # a block across the diagonal: keep j > i only
            hit &= np.arange(col, col + cols)[None, :] > np.arange(start, start + rows)[:, None]
        i, j = np.nonzero(hit)
        return i + start, j + col, d[i, j].astype(np.int64)

    for start in range(0, n, _ROW_BLOCK):
        block = hashes[start : start + _ROW_BLOCK]
        for col in range(start, n, _COL_BLOCK):
            direct.append(np.stack(scan(block, hashes[col : col + _COL_BLOCK], start, col), axis=1))
            if mirrored is not None:
                i, j, _ = scan(block, mirrored[col : col + _COL_BLOCK], start, col)
                mirror.append(_mirror_check(hashes, mirrored, i, j, max_distance))
    empty = np.zeros((0, 3), np.int64)
    return (np.concatenate([empty, *direct]), np.concatenate([empty, *mirror]))


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of ``max_distance + 1`` bands of nearly equal width covering the 64 bits."""
    count = max_distance + 1
    widths = [64 // count + (1 if b < 64 % count else 0) for b in range(count)]
    shifts = 64 - np.cumsum(widths)
    return [(int(shift), width) for shift, width in zip(shifts, widths)]


def _expand(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``p`` repeated ``count[p]`` times, and ``first[p] + 0 .. count[p] - 1`` beside them."""
    total = int(count.sum())
    p = np.repeat(np.arange(len(count)), count)
    return p, first[p] + np.arange(total) - np.repeat(np.cumsum(count) - count, count)


def _same_band(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)``, ``i < j``, with ``keys[i] == keys[j]``."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    end = np.searchsorted(ordered, ordered, side="right")
    p, q = _expand(np.arange(1, len(keys) + 1), end - np.arange(1, len(keys) + 1))
    a, b = order[p], order[q]
    return np.minimum(a, b), np.maximum(a, b)


def _across_bands(keys_a: np.ndarray, keys_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)``, ``i < j``, with ``keys_a[i] == keys_b[j]``."""
    order = np.argsort(keys_b, kind="stable")
    ordered = keys_b[order]
    low = np.searchsorted(ordered, keys_a, side="left")
    i, q = _expand(low, np.searchsorted(ordered, keys_a, side="right") - low)
    j = order[q]
    keep = i < j
    return i[keep], j[keep]


def _band_candidates(keys_a: np.ndarray, keys_b: np.ndarray | None) -> int:
    """How many ``(i, j)`` share a band value (ordered pairs, self-pairs included): the work of a band."""
    ordered = np.sort(keys_a if keys_b is None else keys_b)
    return int((np.searchsorted(ordered, keys_a, side="right") - np.searchsorted(ordered, keys_a, side="left")).sum())


def _band_pairs(
    hashes: np.ndarray, mirrored: np.ndarray | None, max_distance: int, *, limit: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_close_pairs` by bands; ``None`` when more than ``limit`` candidates would be checked.

    Two hashes within ``k`` bits agree exactly on at least one of ``k + 1`` bands (pigeonhole),
    so the faces sharing a band's value are the only candidates.
    """
    n = len(hashes)
    if max_distance >= 64:
        return None
    keys = []
    for shift, width in _bands(max_distance):
        mask = np.uint64((1 << width) - 1)
        band = (hashes >> np.uint64(shift)) & mask
        keys.append((band, None if mirrored is None else (mirrored >> np.uint64(shift)) & mask))
    if limit is not None:
        total = sum(_band_candidates(a, None) // 2 + (0 if m is None else _band_candidates(a, m)) for a, m in keys)
        if total > limit:
            return None
    direct, mirror = [np.zeros((0, 3), np.int64)], [np.zeros((0, 3), np.int64)]
    for band, band_m in keys:
        i, j = _same_band(band)
        d = np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.int64)
        keep = d <= max_distance
        direct.append(np.stack([i[keep], j[keep], d[keep]], axis=1))
        if band_m is not None:
            mirror.append(_mirror_check(hashes, mirrored, *_across_bands(band, band_m), max_distance))

    def unique(rows: list[np.ndarray]) -> np.ndarray:  # a pair found in several bands counts once
        found = np.concatenate(rows)
        _, first = np.unique(found[:, 0] * n + found[:, 1], return_index=True)
        return found[first]

    return unique(direct), unique(mirror)


def _mih_bands(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of ``max_distance // 2 + 1`` bands: two hashes within ``k`` bits differ by at most
    one bit on at least one of them (pigeonhole: ``k // (k // 2 + 1) <= 1``)."""
    return _bands(max_distance // 2)


def _mih_search(query: np.ndarray, base: np.ndarray, max_distance: int, *,
                budget: int = 4_000_000) -> np.ndarray:
    """Rows ``i, j, distance`` (``i < j``) with ``d(query[i], base[j]) <= max_distance``, each pair once.

    Multi-index hashing with radius 1 (Norouzi et al., "Fast search in Hamming space with
    multi-index hashing", CVPR 2012): for each band, each query's band value and its one-bit
    variants are looked up in the base's sorted band values; only the faces found there are
    compared on all 64 bits. The work grows with ``N`` times the faces sharing a band value, not
    with ``N**2``; the lookups run in slices of at most ``budget`` candidates, so memory stays bounded.
    """
    n = len(base)
    found = [np.zeros((0, 3), np.int64)]
    for shift, width in _mih_bands(max_distance):
        mask = np.uint64((1 << width) - 1)
        band_q = (query >> np.uint64(shift)) & mask
        band_b = (base >> np.uint64(shift)) & mask
        order = np.argsort(band_b, kind="stable")
        ordered = band_b[order]
        for flip in [0, *(1 << b for b in range(width))]:
            keys = band_q ^ np.uint64(flip)
            low = np.searchsorted(ordered, keys, side="left")
            count = np.searchsorted(ordered, keys, side="right") - low
            ends = np.cumsum(count)
            start = 0
            while start < len(keys):  # slices of queries holding at most `budget` candidates
                stop = max(start + 1, int(np.searchsorted(ends, ends[start] - count[start] + budget, side="right")))
                i, q = _expand(low[start:stop], count[start:stop])
                i, j = i + start, order[q]
                keep = i < j
                i, j = i[keep], j[keep]
                d = np.bitwise_count(query[i] ^ base[j]).astype(np.int64)
                close = d <= max_distance
                found.append(np.stack([i[close], j[close], d[close]], axis=1))
                start = stop
    rows = np.concatenate(found)
    _, first = np.unique(rows[:, 0] * n + rows[:, 1], return_index=True)  # found in several bands: once
    return rows[first]


def _mih_pairs(hashes: np.ndarray, mirrored: np.ndarray | None, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_close_pairs` by multi-index hashing (:func:`_mih_search`), for data sets too large for bands."""
    direct = _mih_search(hashes, hashes, max_distance)
    if mirrored is None:
        return direct, np.zeros((0, 3), np.int64)
    one_way = _mih_search(hashes, mirrored, max_distance)  # d(h_i, m_j) within; the other direction next
    mirror = _mirror_check(hashes, mirrored, one_way[:, 0], one_way[:, 1], max_distance)
    return direct, mirror


def _close_pairs(
    hashes: np.ndarray, mirrored: np.ndarray | None, max_distance: int, *, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` within ``max_distance``: direct ``(M, 3)`` and mirrored ``(K, 3)`` rows ``i, j, distance``.

    A mirrored pair needs ``d(h_i, m_j)`` and ``d(m_i, h_j)`` within the distance; its distance
    is the larger. ``method``: ``bands`` (exact match on one of ``k + 1`` bands, fast while few
    faces share band values), ``mih`` (multi-index hashing with one-bit variants on
    ``k // 2 + 1`` wider bands: more lookups, far fewer candidates, for large data sets),
    ``brute`` (every pair, quadratic) or ``auto`` (bands unless more than :data:`_BAND_LIMIT`
    candidates, then mih; never quadratic). All give the same pairs.
    """
    if method not in ("auto", "bands", "mih", "brute"):
        raise ValueError(f"method must be auto, bands, mih or brute, got {method!r}")
    if method == "brute":
        return _brute_pairs(hashes, mirrored, max_distance)
    if method in ("auto", "bands"):
        found = _band_pairs(hashes, mirrored, max_distance, limit=_BAND_LIMIT if method == "auto" else None)
        if found is not None:
            return found
        if method == "bands":  # only max_distance >= 64: every pair is within it
            return _brute_pairs(hashes, mirrored, max_distance)
    return _mih_pairs(hashes, mirrored, max_distance)


def _exact_pairs(digests: np.ndarray) -> np.ndarray:
    """Every pair ``i < j`` of faces with equal digests, ``(M, 2)``."""
    order = np.argsort(digests, kind="stable")
    ordered = digests[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(ordered)])
    pairs = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        members = np.sort(order[start : start + size])
        a, b = np.triu_indices(size, k=1)
        pairs.append(np.stack([members[a], members[b]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def _compute_pairs(images: np.ndarray, max_distance: int, mirrors: bool) -> pd.DataFrame:
    """Raw pairs ``row_a, row_b, distance, kind`` of a batch of faces, sorted by rows."""
    n = len(images)
    hashes, mirrored = perceptual_hashes(images)
    exact = _exact_pairs(pixel_digests(images))
    direct, mirror = _close_pairs(hashes, mirrored if mirrors else None, max_distance)

    def keys(rows: np.ndarray) -> np.ndarray:
        return rows[:, 0].astype(np.int64) * n + rows[:, 1]

    # Identical faces have identical hashes, so every exact pair is also a direct pair at distance 0.
    near = direct[~np.isin(keys(direct), keys(exact))]
    mirror = mirror[~np.isin(keys(mirror), keys(direct))]
    frame = pd.DataFrame({
        "row_a": np.concatenate([exact[:, 0], near[:, 0], mirror[:, 0]]).astype(np.int64),
        "row_b": np.concatenate([exact[:, 1], near[:, 1], mirror[:, 1]]).astype(np.int64),
        "distance": np.concatenate([np.zeros(len(exact), np.int64), near[:, 2], mirror[:, 2]]).astype(np.int64),
        "kind": np.repeat(np.array(KINDS, dtype=object), [len(exact), len(near), len(mirror)]),
    })
    return frame.sort_values(["row_a", "row_b"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- groups and report


def _groups(n: int, row_a: np.ndarray, row_b: np.ndarray) -> np.ndarray:
    """Connected component of each face over the pairs: 0, 1, ... by first face, -1 alone.

    Union-find in whole-array steps (hooking and pointer jumping, as in Shiloach and Vishkin's
    parallel algorithm): each round hooks the larger root of every pair whose roots differ
    under the smaller, then points every face at its root; pairs inside one tree are dropped.
    Roots only ever get a smaller parent, so a group's root is its first face. A few rounds
    suffice even for millions of pairs.
    """
    parent = np.arange(n)
    a, b = np.asarray(row_a, dtype=np.int64), np.asarray(row_b, dtype=np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        if not len(a):
            break
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # pointer jumping: every face at its tree's root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots = parent
    sizes = np.bincount(roots, minlength=n)
    grouped = sizes[roots] > 1
    group = np.full(n, -1, dtype=np.int64)
    firsts = np.unique(roots[grouped])  # sorted roots = first rows of the groups
    group[grouped] = np.searchsorted(firsts, roots[grouped])
    return group


def _split_rank(split: str) -> tuple[int, str]:
    """Sort key of split names: train, val, test, unsplit, then any other by name."""
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def _split_pair(a: str, b: str) -> str:
    """``"train-val"`` for ``("val", "train")``: the two splits of a pair, in split order."""
    first, second = sorted((a, b), key=_split_rank)
    return f"{first}-{second}"


@dataclass(frozen=True)
class DuplicateReport:
    """The duplicate pairs and groups of a table's faces.

    Attributes
    ----------
    pairs : pandas.DataFrame, columns :data:`PAIR_COLUMNS`
        One row per pair ``row_a < row_b`` (positions in the table): ids, splits, labels (FER2013
        ids), ``distance`` (pHash Hamming distance, 0 for exact pairs), ``kind`` (``exact``,
        ``near``, ``mirrored``), ``cross_split``, ``labels_agree`` and the pair's ``dup_group``.
    faces : pandas.DataFrame, columns :data:`FACE_COLUMNS`, one row per face in table order
        ``dup_group`` (-1 alone), ``dup_kind`` (closest kind of the face's pairs, "" alone),
        ``dup_group_size`` (1 alone), ``cross_split`` (its group holds several splits),
        ``group_labels_agree`` (every face of its group has the same label).
    max_distance : int
        Largest pHash distance of a near or mirrored pair.
    mirrors : bool
        Whether mirrored copies were looked for.
    from_cache : bool
        Whether the pairs were read from the cache.
    """

    pairs: pd.DataFrame
    faces: pd.DataFrame
    max_distance: int
    mirrors: bool
    from_cache: bool = False

    def summary(self) -> dict[str, Any]:
        """Counts as plain Python values (JSON-ready).

        Keys: ``faces``, ``max_distance``, ``mirrors``, ``pairs``, ``exact_pairs``,
        ``near_pairs``, ``mirrored_pairs``, ``groups``, ``faces_in_groups``, ``largest_group``,
        ``cross_split_pairs`` (total), ``cross_split_faces``, ``cross_split`` (per split pair
        such as ``"train-val"``, every pair of the table's splits listed: ``exact``, ``near``,
        ``mirrored``, ``total`` pairs), ``label_disagreements`` (pairs whose labels differ, per
        kind and ``total``), ``groups_with_label_disagreement``.
        """
        pairs, faces = self.pairs, self.faces
        kinds = pairs["kind"].to_numpy()
        per_kind = {kind: int((kinds == kind).sum()) for kind in KINDS}
        grouped = faces[faces["dup_group"] >= 0]
        present = sorted(faces["split"].astype(str).unique(), key=_split_rank)
        cross: dict[str, dict[str, int]] = {}
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                cross[_split_pair(a, b)] = {**{kind: 0 for kind in KINDS}, "total": 0}
        crossing = pairs[pairs["cross_split"]]
        for (a, b, kind), count in crossing.groupby(["split_a", "split_b", "kind"]).size().items():
            entry = cross.setdefault(_split_pair(a, b), {**{k: 0 for k in KINDS}, "total": 0})
            entry[kind] += int(count)
            entry["total"] += int(count)
        disagree = pairs[~pairs["labels_agree"]]["kind"].to_numpy()
        disagreements = {kind: int((disagree == kind).sum()) for kind in KINDS}
        disagreements["total"] = len(disagree)
        return {
            "faces": len(faces),
            "max_distance": self.max_distance,
            "mirrors": self.mirrors,
            "pairs": len(pairs),
            "exact_pairs": per_kind["exact"],
            "near_pairs": per_kind["near"],
            "mirrored_pairs": per_kind["mirrored"],
            "groups": int(grouped["dup_group"].nunique()),
            "faces_in_groups": len(grouped),
            "largest_group": int(faces["dup_group_size"].max()) if len(faces) else 0,
            "cross_split_pairs": len(crossing),
            "cross_split_faces": int(faces["cross_split"].sum()),
            "cross_split": cross,
            "label_disagreements": disagreements,
            "groups_with_label_disagreement": int(
                grouped.loc[~grouped["group_labels_agree"], "dup_group"].nunique()
            ),
        }


def _report(
    table: FaceTable, raw: pd.DataFrame, *, max_distance: int, mirrors: bool, from_cache: bool
) -> DuplicateReport:
    """Pairs and faces frames from the raw pairs and the table's ids, splits and labels."""
    frame = table.frame
    n = len(table)
    ids = frame["sample_id"].astype(str).to_numpy()
    splits = frame["split"].astype(str).to_numpy()
    labels = frame["emotion"].to_numpy(dtype=np.int64)
    a = raw["row_a"].to_numpy(dtype=np.int64)
    b = raw["row_b"].to_numpy(dtype=np.int64)
    group = _groups(n, a, b)

    sizes = np.ones(n, dtype=np.int64)
    grouped = group >= 0
    counts = np.bincount(group[grouped], minlength=1)
    sizes[grouped] = counts[group[grouped]]
    rank = np.full(n, len(KINDS), dtype=np.int64)
    kind_rank = pd.Categorical(raw["kind"], categories=list(KINDS)).codes.astype(np.int64)
    np.minimum.at(rank, a, kind_rank)
    np.minimum.at(rank, b, kind_rank)
    dup_kind = np.array([*KINDS, ""], dtype=object)[rank]
    members = pd.DataFrame({"group": group[grouped], "split": splits[grouped], "label": labels[grouped]})
    per_group = members.groupby("group").agg(splits=("split", "nunique"), labels=("label", "nunique"))
    cross_split = np.zeros(n, dtype=bool)
    labels_agree = np.ones(n, dtype=bool)
    if grouped.any():
        cross_split[grouped] = per_group["splits"].to_numpy()[group[grouped]] > 1
        labels_agree[grouped] = per_group["labels"].to_numpy()[group[grouped]] == 1

    faces = pd.DataFrame({
        "sample_id": ids,
        "split": splits,
        "emotion": labels,
        "dup_group": group,
        "dup_kind": dup_kind,
        "dup_group_size": sizes,
        "cross_split": cross_split,
        "group_labels_agree": labels_agree,
    })
    pairs = pd.DataFrame({
        "row_a": a,
        "row_b": b,
        "sample_id_a": ids[a],
        "sample_id_b": ids[b],
        "split_a": splits[a],
        "split_b": splits[b],
        "label_a": labels[a],
        "label_b": labels[b],
        "distance": raw["distance"].to_numpy(dtype=np.int64),
        "kind": raw["kind"].to_numpy(dtype=object),
        "cross_split": splits[a] != splits[b],
        "labels_agree": labels[a] == labels[b],
        "dup_group": group[a],
    })
    return DuplicateReport(pairs=pairs, faces=faces, max_distance=max_distance, mirrors=mirrors,
                           from_cache=from_cache)


# --------------------------------------------------------------------------- cache


def _cache_key(table: FaceTable, max_distance: int, mirrors: bool) -> str:
    """Pairs depend on the pixels, the rule and the row order (ids); labels and splits are not in the key."""
    ids = "\0".join(table.frame["sample_id"].astype(str))
    return cache_key("duplicates", DUPLICATES_VERSION, max_distance, mirrors, table.images, ids)


def _read_pairs(path: Path, n: int) -> pd.DataFrame | None:
    """Raw pairs stored at ``path``, or None when they do not fit a table of ``n`` faces."""
    raw = pd.read_parquet(path)
    fits = list(raw.columns) == ["row_a", "row_b", "distance", "kind"] and (
        raw.empty or (int(raw[["row_a", "row_b"]].to_numpy().max()) < n and raw["kind"].isin(KINDS).all())
    )
    if not fits:
        log.warning("ignoring a duplicates cache entry that does not fit the table: %s", path)
        return None
    return raw


# --------------------------------------------------------------------------- public API


def _check_max_distance(max_distance: Any) -> int:
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)) or not 0 <= max_distance <= 64:
        raise FERError(f"max_distance must be a whole number of bits from 0 to 64, got {max_distance!r}")
    return int(max_distance)


def find_duplicates(
    table: FaceTable,
    *,
    max_distance: int = MAX_DISTANCE,
    mirrors: bool = True,
    use_cache: bool = True,
) -> DuplicateReport:
    """Exact, near and mirrored duplicate pairs of a table's faces, and their groups.

    Parameters
    ----------
    table : FaceTable
        The faces; their ``sample_id``, ``split`` and ``emotion`` fill the report.
    max_distance : int, default=MAX_DISTANCE (4)
        Largest pHash Hamming distance (0 to 64) of a near or mirrored pair; measured on
        FER2013 (docs/experiments.md). Exact pairs are found at any setting.
    mirrors : bool, default=True
        Also look for mirror-image copies.
    use_cache : bool, default=True
        Read the pairs from, and write them to, the cache under
        :func:`fer_core.config.default_cache_dir` (keyed by the faces' pixels and ids,
        ``max_distance``, ``mirrors`` and :data:`DUPLICATES_VERSION`).

    Returns
    -------
    DuplicateReport
        ``pairs``, ``faces`` (one row per face, table order) and ``summary()``.

    Raises
    ------
    TypeError
        If ``table`` is not a :class:`~fer_core.datasets.FaceTable`.
    FERError
        If ``max_distance`` is not an integer from 0 to 64.
    """
    from fer_core.datasets import FaceTable

    if not isinstance(table, FaceTable):
        raise TypeError(f"table must be a FaceTable (see fer_core.load_faces), got {type(table).__name__}")
    max_distance = _check_max_distance(max_distance)
    mirrors = bool(mirrors)
    if table.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):  # pragma: no cover - FaceTable checks it
        raise FERError(f"faces must be {IMAGE_SIZE}x{IMAGE_SIZE}, got {table.images.shape[1:]}")

    raw, from_cache = cached(
        "duplicates", _cache_key(table, max_distance, mirrors),
        lambda: _compute_pairs(table.images, max_distance, mirrors),
        suffix=".parquet", read=lambda path: _read_pairs(path, len(table)), write=write_frame, use_cache=use_cache,
    )
    return _report(table, raw, max_distance=max_distance, mirrors=mirrors, from_cache=from_cache)


# --------------------------------------------------------------------------- command line


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_core.duplicates",
        description="Find exact, near and mirrored duplicate faces of a FER2013 copy, within and across splits.",
    )
    parser.add_argument(
        "data", metavar="DATA", help="data set: Kaggle folder tree, fer2013.csv, Parquet file or hub id"
    )
    parser.add_argument(
        "--max-distance", metavar="K", type=int, default=MAX_DISTANCE,
        help=f"largest pHash Hamming distance of a near or mirrored pair (default: {MAX_DISTANCE}, measured)",
    )
    parser.add_argument("--no-mirrors", action="store_true", help="do not look for mirror-image copies")
    parser.add_argument("--no-cache", action="store_true", help="recompute even if the pairs are cached")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="OUT", default=None, help="write the summary as JSON to this file")
    out.add_argument(
        "--pairs", metavar="OUT", default=None, help="write the pairs table to this .csv or .parquet file"
    )
    return parser


def format_summary(summary: dict[str, Any], name: str = "") -> str:
    """The summary as a few lines for people; the cross-split count is always there."""
    mirrors = "mirrored copies included" if summary["mirrors"] else "mirrored copies not looked for"
    title = f"duplicates in {name}" if name else "duplicates"
    lines = [
        f"{title}: {summary['faces']:,} faces, pHash distance <= {summary['max_distance']}, {mirrors}",
        (
            f"  pairs: {summary['pairs']:,} ({summary['exact_pairs']:,} exact, {summary['near_pairs']:,} near, "
            f"{summary['mirrored_pairs']:,} mirrored)"
        ),
        (
            f"  groups: {summary['groups']:,} holding {summary['faces_in_groups']:,} faces "
            f"(largest {summary['largest_group']})"
        ),
        (
            f"  cross-split duplicates: {summary['cross_split_pairs']:,} pairs, "
            f"{summary['cross_split_faces']:,} faces in groups spanning splits"
        ),
    ]
    for split_pair, counts in summary["cross_split"].items():
        lines.append(
            f"    {split_pair}: {counts['total']:,} pairs ({counts['exact']:,} exact, {counts['near']:,} near, "
            f"{counts['mirrored']:,} mirrored)"
        )
    disagree = summary["label_disagreements"]
    lines.append(
        f"  label disagreements: {disagree['total']:,} pairs ({disagree['exact']:,} exact, {disagree['near']:,} near, "
        f"{disagree['mirrored']:,} mirrored), in {summary['groups_with_label_disagreement']:,} groups"
    )
    return "\n".join(lines)


def _pairs_writer(path: str) -> str:
    kind = Path(path).suffix.lower()
    if kind not in (".csv", ".parquet"):
        raise FERError(f"cannot write {Path(path).name}: choose a .csv or .parquet file name for --pairs")
    if not Path(path).expanduser().parent.is_dir():
        raise FERError(f"cannot write {path}: the folder {Path(path).parent} does not exist")
    return kind


@cli_main
def main(args: argparse.Namespace) -> int:
    from fer_core.datasets import load_faces

    _check_max_distance(args.max_distance)
    pairs_kind = _pairs_writer(args.pairs) if args.pairs is not None else None
    if args.json is not None and not Path(args.json).expanduser().parent.is_dir():
        raise FERError(f"cannot write {args.json}: the folder {Path(args.json).parent} does not exist")
    table = load_faces(args.data)
    start = time.perf_counter()
    report = find_duplicates(
        table, max_distance=args.max_distance, mirrors=not args.no_mirrors, use_cache=not args.no_cache
    )
    seconds = time.perf_counter() - start
    summary = report.summary()
    print(format_summary(summary, table.name))
    source = "read from the cache" if report.from_cache else "computed"
    print(f"  {source} in {seconds:.2f} s")
    if args.json is not None:
        Path(args.json).expanduser().write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote the summary to {args.json}")
    if args.pairs is not None:
        out = Path(args.pairs).expanduser()
        if pairs_kind == ".csv":
            report.pairs.to_csv(out, index=False)
        else:
            report.pairs.to_parquet(out, index=False)
        print(f"wrote {len(report.pairs):,} pairs to {args.pairs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
