"""The Data tab: a first look at the loaded faces (counts per emotion and split, a few faces each)."""

from __future__ import annotations

import numpy as np

from fer_core.labels import DISPLAY_NAMES, EMOTIONS

__all__ = ["GALLERY_SCALE", "enlarge", "build_data_tab"]

#: Faces are 48x48: shown enlarged with nearest-neighbour scaling so the pixels stay crisp.
GALLERY_SCALE = 4


def enlarge(face: np.ndarray, scale: int = GALLERY_SCALE) -> np.ndarray:
    return np.kron(face, np.ones((scale, scale), dtype=np.uint8))


def build_data_tab(table) -> None:
    """Counts per emotion and split, and a few faces of each emotion; call inside ``gr.Blocks``."""
    import gradio as gr

    from fer_core.datasets import summary

    gr.Markdown(f"**{table.name}**: {len(table):,} faces.")
    counts = summary(table).reset_index().rename(columns={"emotion_name": "emotion"})
    gr.Dataframe(value=counts, label="Faces per emotion and split", interactive=False)
    examples = []
    labels = table.labels
    for label, emotion in enumerate(EMOTIONS):
        for row in np.flatnonzero(labels == label)[:4]:
            examples.append((enlarge(table.images[row]), f"{DISPLAY_NAMES[emotion]} · {table.frame['sample_id'].iloc[row]}"))
    gr.Gallery(value=examples, label="A few faces of each emotion", columns=7, height="auto", object_fit="none")
