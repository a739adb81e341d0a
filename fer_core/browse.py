"""Browsing a data set: the fields the browser filters on, computed once and cached, and the filters.

:func:`enrich` adds to a :class:`~fer_core.datasets.FaceTable`

- the quality fields (:mod:`fer_core.quality`), unless the data set already carries them (an
  enhanced Parquet is used as it is);
- a model's opinion of each face (:data:`OPINION_COLUMNS`; the bundled model unless told
  otherwise): ``model_label`` (FER2013 id), ``model_confidence``, ``model_agrees`` and the
  seven calibrated probabilities ``p_angry`` ... ``p_neutral``;
- duplicate groups (:mod:`fer_core.duplicates`): ``dup_group``, ``dup_kind``, ``dup_group_size``,
  ``dup_cross_split``.

These derived columns are cached under :func:`fer_core.config.default_cache_dir`, keyed by
the faces' pixels and ids, the weights file, its card and :data:`BROWSE_VERSION`, so a second
start with the same data reads them back instead of recomputing them. :func:`model_opinion`
gives another model's opinion columns alone (cached the same way), for showing the same faces
through that model's eyes.

:class:`BrowseQuery` says what a person asked for (split, emotions, quality and component
ranges, label status, model agreement, duplicates, order); :func:`filter_faces` answers it
with the matching rows in order, and :func:`page_of` cuts a page out of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fer_core._cache import cache_key, cached, write_frame
from fer_core._validation import FERError
from fer_core.datasets import FaceTable
from fer_core.labels import EMOTIONS, normalise
from fer_core.quality import COMPONENT_COLUMNS, QUALITY_COLUMNS, add_quality

__all__ = [
    "BROWSE_VERSION",
    "PROBABILITY_COLUMNS",
    "OPINION_COLUMNS",
    "has_opinion",
    "SORTS",
    "BrowseQuery",
    "enrich",
    "model_opinion",
    "filter_faces",
    "page_of",
    "class_counts",
    "histogram",
]

log = logging.getLogger(__name__)

#: Bump when the derived columns change meaning, so old cache entries are not reused.
BROWSE_VERSION = 1
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{e}" for e in EMOTIONS)
#: The columns that hold one model's opinion of each face.
OPINION_COLUMNS: tuple[str, ...] = (*PROBABILITY_COLUMNS, "model_label", "model_confidence", "model_agrees")


def has_opinion(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` carries a model's opinion (every one of :data:`OPINION_COLUMNS`)."""
    return all(column in frame for column in OPINION_COLUMNS)


#: Orders a person can ask for.
SORTS: tuple[str, ...] = (
    "quality, lowest first",
    "quality, highest first",
    "model confidence, lowest first",
    "model confidence, highest first",
    "random",
    "data set order",
)
LabelStatus = Literal["any", "original", "corrected"]
Agreement = Literal["any", "agrees", "disagrees"]
Duplicates = Literal["any", "unique", "duplicated", "cross-split"]


# --------------------------------------------------------------------------- enrichment


def _model_files(weights: Path) -> tuple[Path, ...]:
    """The files a model's answers depend on: its weights and its card (temperature, runtime, mirror gate)."""
    from fer_core.weights import card_path

    card = card_path(weights)
    return (weights, card) if card.is_file() else (weights,)


def _cache_key(table: FaceTable, weights: Path | None, has_quality: bool) -> str:
    """What the derived columns depend on: faces, ids, labels, splits, the model's files (None: no model),
    carried quality."""
    frame = table.frame
    model = _model_files(weights) if weights is not None else ("no model",)
    return cache_key(
        "browse", BROWSE_VERSION, table.images, "\0".join(frame["sample_id"].astype(str)),
        frame["emotion"].to_numpy(dtype=np.int64), frame["split"].astype(str).str.cat(sep="\0"),
        *model, "carried" if has_quality else "computed",
    )


#: Faces classified per step of the model-column progress bar.
MODEL_CHUNK = 2048


def _model_columns(table: FaceTable, predictor, *, progress: bool = False,
                   on_chunk: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    from tqdm.auto import tqdm

    index = [predictor.labels.index(e) for e in EMOTIONS]  # the model's class order -> FER2013 ids
    starts = range(0, len(table), MODEL_CHUNK)
    chunks = []
    for i in tqdm(starts, desc="model", unit="chunk", disable=not progress or len(starts) < 2):
        if on_chunk is not None:
            on_chunk(i, len(table))
        chunks.append(predictor.predict_faces(table.images[i:i + MODEL_CHUNK]))
    probs = (np.concatenate(chunks) if chunks else np.empty((0, len(EMOTIONS))))[:, index].astype(np.float32)
    top = probs.argmax(1)
    columns = {name: probs[:, i] for i, name in enumerate(PROBABILITY_COLUMNS)}
    columns.update(
        model_label=top.astype(np.int64),
        model_confidence=probs.max(1),
        model_agrees=top == table.labels,
    )
    return pd.DataFrame(columns)


def _duplicate_columns(table: FaceTable, *, progress: bool = False) -> pd.DataFrame:
    from fer_core.duplicates import find_duplicates

    if progress:
        log.info("searching %d faces for duplicates", len(table))
    faces = find_duplicates(table).faces
    return pd.DataFrame({
        "dup_group": faces["dup_group"].to_numpy(),
        "dup_kind": faces["dup_kind"].astype(str).to_numpy(),
        "dup_group_size": faces["dup_group_size"].to_numpy(),
        "dup_cross_split": faces["cross_split"].to_numpy(dtype=bool),
    })


def enrich(table: FaceTable, *, weights: str | Path | None = None, predictor: Any = None, use_cache: bool = True,
           progress: bool = False, model: bool = True) -> FaceTable:
    """``table`` with quality, model and duplicate columns added (see the module docstring).

    The model is ``predictor`` (a :class:`~fer_core.predict.Predictor`, for example a
    :class:`~fer_core.catalog.ModelCatalog`'s), else the one of ``weights`` (default: the bundled
    model). ``model=False`` leaves the model's columns out (the agreement filter and the
    confidence orders then say they need them): a model over a million faces takes about
    20 minutes on two CPU cores, the other columns about three (docs/scale.md). Quality
    fields a data set already carries are kept as they are. The derived columns are read from
    the cache when the same faces, ids, labels and model were enriched before. Every step reads
    the faces in batches, so a memory-mapped table stays so.
    """
    from fer_core.predict import get_predictor
    from fer_core.weights import DEFAULT_WEIGHTS

    if predictor is not None:
        weights_path = Path(predictor.weights)
    else:
        weights_path = Path(weights) if weights else DEFAULT_WEIGHTS
    has_quality = all(c in table.frame for c in ("quality_score", *COMPONENT_COLUMNS))

    def derive() -> pd.DataFrame:
        base = table if has_quality else add_quality(table, progress=progress)
        parts = [] if has_quality else [base.frame[list(QUALITY_COLUMNS)]]
        if model:
            runner = predictor if predictor is not None else get_predictor(str(weights_path) if weights else None)
            parts.append(_model_columns(table, runner, progress=progress))
        parts.append(_duplicate_columns(table, progress=progress))
        return pd.concat([p.reset_index(drop=True) for p in parts], axis=1)

    def read(path: Path) -> pd.DataFrame | None:
        derived = pd.read_parquet(path)
        return derived if len(derived) == len(table) else None

    key = _cache_key(table, weights_path, has_quality) if model else _cache_key(table, None, has_quality)
    derived, _ = cached("browse", key, derive, suffix=".parquet", read=read, write=write_frame, use_cache=use_cache)
    return table.with_columns(derived)


def model_opinion(table: FaceTable, predictor: Any, *, use_cache: bool = True, progress: bool = False,
                  on_chunk: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One model's opinion of every face of ``table``: the :data:`OPINION_COLUMNS`, (N,) rows.

    ``predictor`` is a :class:`~fer_core.predict.Predictor`; its answers are cached on disk under
    the faces, their ids and labels, and the model's weights and card, so a model is run over a
    data set once (FER2013's 32,064 faces: 30-40 s on two CPU cores for a bundled model, see
    docs/library.md). ``on_chunk(done, total)`` is called before each :data:`MODEL_CHUNK` faces
    (for a progress bar). Put the columns in place of the table's own with ``table.with_columns(...)``.
    """
    frame = table.frame
    key = cache_key("opinion", BROWSE_VERSION, table.images, "\0".join(frame["sample_id"].astype(str)),
                    frame["emotion"].to_numpy(dtype=np.int64), *_model_files(Path(predictor.weights)))

    def read(path: Path) -> pd.DataFrame | None:
        opinion = pd.read_parquet(path)
        return opinion if len(opinion) == len(table) and list(opinion.columns) == list(OPINION_COLUMNS) else None

    opinion, _ = cached("opinion", key, lambda: _model_columns(table, predictor, progress=progress, on_chunk=on_chunk),
                        suffix=".parquet", read=read, write=write_frame, use_cache=use_cache)
    return opinion


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class BrowseQuery:
    """What a person asked to see. Every field's default keeps every face."""

    split: str | None = None  # None: every split
    emotions: tuple[str, ...] = ()  # empty: every emotion
    quality: tuple[float, float] = (0.0, 1.0)  # inclusive range of quality_score
    components: dict[str, tuple[float, float]] = field(default_factory=dict)  # e.g. {"focus_score": (0, 0.3)}
    label_status: LabelStatus = "any"
    agreement: Agreement = "any"
    duplicates: Duplicates = "any"
    sort: str = "quality, lowest first"
    seed: int = 0

    def __post_init__(self) -> None:
        for lo, hi in (self.quality, *self.components.values()):
            if not (0.0 <= lo <= hi <= 1.0):
                raise FERError(f"a score range must satisfy 0 <= min <= max <= 1, got ({lo}, {hi})")
        unknown = set(self.components) - set(COMPONENT_COLUMNS)
        if unknown:
            raise FERError(f"unknown quality components {sorted(unknown)}; choose from {list(COMPONENT_COLUMNS)}")
        bad = [e for e in self.emotions if normalise(e) is None]
        if bad:
            raise FERError(f"unknown emotions {bad}; choose from {list(EMOTIONS)}")
        if self.sort not in SORTS:
            raise FERError(f"unknown order {self.sort!r}; choose one of {list(SORTS)}")
        if self.label_status not in ("any", "original", "corrected"):
            raise FERError(f"label status must be any, original or corrected, got {self.label_status!r}")
        if self.agreement not in ("any", "agrees", "disagrees"):
            raise FERError(f"model agreement must be any, agrees or disagrees, got {self.agreement!r}")
        if self.duplicates not in ("any", "unique", "duplicated", "cross-split"):
            raise FERError(f"duplicates must be any, unique, duplicated or cross-split, got {self.duplicates!r}")


def _between(values: pd.Series, bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = bounds
    if (lo, hi) == (0.0, 1.0):
        return np.ones(len(values), dtype=bool)  # the full range also keeps faces without a score
    array = values.to_numpy(dtype=np.float64)
    return (array >= lo) & (array <= hi)


def filter_faces(frame: pd.DataFrame, query: BrowseQuery, *, corrected: set[str] | None = None,
                 orders: dict[tuple[str, bool], np.ndarray] | None = None) -> np.ndarray:
    """Row positions of ``frame`` matching ``query``, in the asked order.

    ``corrected`` holds the ``sample_id`` of faces whose label the relabel store changed; the
    label-status filter needs it (``None`` counts every face as original). Faces whose sort key
    is missing come last. Ties keep the data set's order, so the result is the same every time.
    ``orders``: a dict the caller keeps for one ``frame``, where each whole-frame sort order is
    remembered once computed, so that a later query sorts in one pass instead of sorting again.
    """
    keep = np.ones(len(frame), dtype=bool)
    if query.split is not None:
        keep &= frame["split"].to_numpy() == query.split
    if query.emotions:
        ids = [EMOTIONS.index(normalise(e)) for e in query.emotions]
        keep &= np.isin(frame["emotion"].to_numpy(), ids)
    if "quality_score" in frame:
        keep &= _between(frame["quality_score"], query.quality)
    for name, bounds in query.components.items():
        if name in frame:
            keep &= _between(frame[name], bounds)
    if query.label_status != "any":
        is_corrected = frame["sample_id"].isin(corrected or set()).to_numpy()
        keep &= is_corrected if query.label_status == "corrected" else ~is_corrected
    if query.agreement != "any":
        if "model_agrees" not in frame:
            raise FERError("model agreement needs the model's predictions: enrich the table first")
        agrees = frame["model_agrees"].to_numpy(dtype=bool)
        keep &= agrees if query.agreement == "agrees" else ~agrees
    if query.duplicates != "any":
        if "dup_group_size" not in frame:
            raise FERError("the duplicates filter needs the duplicate groups: enrich the table first")
        duplicated = frame["dup_group_size"].to_numpy() > 1
        if query.duplicates == "unique":
            keep &= ~duplicated
        elif query.duplicates == "duplicated":
            keep &= duplicated
        else:
            keep &= frame["dup_cross_split"].to_numpy(dtype=bool)
    rows = np.flatnonzero(keep)
    return _order(frame, rows, keep, query, orders)


def _sort_keys(frame: pd.DataFrame, column: str, descending: bool, rows: np.ndarray | None = None) -> np.ndarray:
    keys = frame[column].to_numpy(dtype=np.float64)
    keys = keys if rows is None else keys[rows]
    if descending:
        keys = -keys
    return np.where(np.isnan(keys), np.inf, keys)  # missing scores last


def _order(frame: pd.DataFrame, rows: np.ndarray, keep: np.ndarray, query: BrowseQuery,
           orders: dict[tuple[str, bool], np.ndarray] | None) -> np.ndarray:
    if query.sort == "data set order" or len(rows) == 0:
        ordered = rows
    elif query.sort == "random":
        ordered = rows[np.random.default_rng(query.seed).permutation(len(rows))]
    else:
        column = "quality_score" if query.sort.startswith("quality") else "model_confidence"
        if column not in frame:
            raise FERError(f"ordering by {query.sort.split(',')[0]} needs the {column} column")
        descending = query.sort.endswith("highest first")
        if orders is None:
            ordered = rows[np.argsort(_sort_keys(frame, column, descending, rows), kind="stable")]
        else:
            # The whole frame's stable order, kept: the selected rows in it are the selection's stable order.
            whole = orders.get((column, descending))
            if whole is None:
                whole = orders[(column, descending)] = np.argsort(_sort_keys(frame, column, descending), kind="stable")
            ordered = whole[keep[whole]]
    if query.duplicates in ("duplicated", "cross-split") and "dup_group" in frame:
        # Members of a group side by side, groups in the order of their first member.
        groups = frame["dup_group"].to_numpy()[ordered]
        first = pd.Series(np.arange(len(ordered))).groupby(groups).transform("min").to_numpy()
        ordered = ordered[np.lexsort((np.arange(len(ordered)), first))]
    return ordered


def page_of(rows: np.ndarray, page: int, page_size: int) -> tuple[np.ndarray, int, int]:
    """The rows of page ``page`` (1-based, clamped to the pages there are), that page and the page count."""
    if page_size < 1:
        raise FERError(f"page size must be at least 1, got {page_size}")
    pages = max(1, -(-len(rows) // page_size))
    page = min(max(1, int(page)), pages)
    return rows[(page - 1) * page_size : page * page_size], page, pages


# --------------------------------------------------------------------------- plots' data


def class_counts(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """Faces per emotion among ``rows``, every emotion listed (zeros included), in FER2013 order."""
    counts = np.bincount(frame["emotion"].to_numpy()[rows], minlength=len(EMOTIONS))
    return pd.DataFrame({"emotion": list(EMOTIONS), "faces": counts.astype(int)})


def histogram(frame: pd.DataFrame, rows: np.ndarray, column: str, *, bins: int = 20,
              by_emotion: bool = False) -> pd.DataFrame:
    """Counts of ``column`` among ``rows`` in ``bins`` equal bins over [0, 1] (per emotion if asked).

    Columns: ``bin`` (its lower edge), ``faces``, and ``emotion`` when ``by_emotion``. Bins are
    half-open except the last, which holds 1.0, as :func:`numpy.histogram`'s; missing values and
    values outside [0, 1] are not counted.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    values = frame[column].to_numpy(dtype=np.float64)[rows]
    # One pass over the values (a million faces: milliseconds), every emotion at once.
    inside = (values >= 0.0) & (values <= 1.0)
    index = np.minimum(np.searchsorted(edges, values[inside], side="right") - 1, bins - 1)
    lower = edges[:-1].round(3)
    if not by_emotion:
        return pd.DataFrame({"bin": lower, "faces": np.bincount(index, minlength=bins)})
    labels = frame["emotion"].to_numpy()[rows][inside].astype(np.int64)
    counts = np.bincount(labels * bins + index, minlength=len(EMOTIONS) * bins).reshape(len(EMOTIONS), bins)
    return pd.DataFrame({"bin": np.tile(lower, len(EMOTIONS)), "faces": counts.ravel(),
                         "emotion": np.repeat(list(EMOTIONS), bins)})


def describe_face(frame: pd.DataFrame, row: int) -> dict[str, Any]:
    """Every field of one face as plain Python values (for display and JSON)."""
    record = frame.iloc[int(row)].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}


def to_json(query: BrowseQuery) -> str:
    """The query as JSON (for logs and the bench's replay)."""
    data = {k: getattr(query, k) for k in query.__dataclass_fields__}
    return json.dumps(data, default=list)
