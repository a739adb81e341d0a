"""The model probabilities the relabel queue ranks by: out-of-fold where shipped, else the model's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fer_core.browse import PROBABILITY_COLUMNS
from fer_core.config import ASSETS_DIR
from fer_core.images import pixels_sha256
from fer_core.labels import EMOTIONS

__all__ = ["OOF_PATH", "oof_probabilities"]

#: Out-of-fold probabilities of the FER2013 training faces, shipped with the model.
OOF_PATH: Path = ASSETS_DIR / "fer2013_train_oof.parquet"


def oof_probabilities(frame: pd.DataFrame, images: np.ndarray | None = None,
                      path: Path = OOF_PATH) -> tuple[np.ndarray | None, int]:
    """Probabilities for the queue: out-of-fold ones where shipped, else the bundled model's.

    Returns the ``(N, 7)`` array aligned with ``frame`` (FER2013 order) and how many rows came
    from the out-of-fold file. A model is overconfident on its own training faces, which hides
    their label errors; the out-of-fold file holds what a model that never saw each face thought.
    Where the file carries ``content_hash`` and ``images`` are given, a row counts only when
    the face under that ``sample_id`` has the same pixels (another data set may reuse the names).
    """
    probs = frame[list(PROBABILITY_COLUMNS)].to_numpy(dtype=np.float64) if PROBABILITY_COLUMNS[0] in frame else None
    if not path.is_file():
        return probs, 0
    oof = pd.read_parquet(path)
    oof = oof.drop_duplicates("sample_id").set_index("sample_id")
    hit = frame["sample_id"].isin(oof.index).to_numpy().copy()
    if images is not None and "content_hash" in oof.columns:
        rows = np.flatnonzero(hit)
        expected = oof.loc[frame["sample_id"].to_numpy()[rows], "content_hash"].to_numpy()
        same = np.array([pixels_sha256(images[r]) for r in rows], dtype=object) == expected
        hit[rows[~same]] = False
    if probs is None:
        probs = np.full((len(frame), len(EMOTIONS)), np.nan)
    probs[hit] = oof.loc[frame["sample_id"][hit], list(EMOTIONS)].to_numpy(dtype=np.float64)
    return probs, int(hit.sum())
