"""FER tool: the Gradio app. Builds one tab per part of the tool and launches.

    python app.py [--data PATH] [--host HOST] [--port PORT]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from fer_core._validation import FERError
from fer_core.config import SAMPLE_PATH, Settings
from fer_core.labels import DISPLAY_NAMES, EMOTIONS

if TYPE_CHECKING:
    import gradio as gr

# The app must run offline: no usage analytics calls home (a user may still opt in).
# Gradio is imported inside the builders, after the settings are checked: it
# reads GRADIO_SERVER_PORT itself at import and would fail with a traceback.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TITLE = "FER tool: facial expression recognition you can see, test and correct"
#: Faces are 48x48: shown enlarged with nearest-neighbour scaling so the pixels stay crisp.
GALLERY_SCALE = 4


def _enlarge(face: np.ndarray, scale: int = GALLERY_SCALE) -> np.ndarray:
    return np.kron(face, np.ones((scale, scale), dtype=np.uint8))


def build_data_tab(table) -> None:
    """A first look at the loaded faces: counts per emotion and split, and a few faces of each emotion."""
    import gradio as gr

    from fer_core.datasets import summary

    gr.Markdown(
        f"**{table.name}**: {len(table):,} faces. Prediction, browsing and relabelling tabs build on this data."
    )
    counts = summary(table).reset_index().rename(columns={"emotion_name": "emotion"})
    gr.Dataframe(value=counts, label="Faces per emotion and split", interactive=False)
    examples = []
    labels = table.labels
    for label, emotion in enumerate(EMOTIONS):
        for row in np.flatnonzero(labels == label)[:4]:
            examples.append((_enlarge(table.images[row]), f"{DISPLAY_NAMES[emotion]} · {table.frame['sample_id'].iloc[row]}"))
    gr.Gallery(value=examples, label="A few faces of each emotion", columns=7, height="auto", object_fit="none")


def load_data(path: str | None):
    from fer_core.datasets import load_faces

    return load_faces(path or SAMPLE_PATH, progress=True)


def build_demo(table) -> "gr.Blocks":
    import gradio as gr

    with gr.Blocks(title="FER tool") as demo:
        gr.Markdown(f"# {TITLE}")
        with gr.Tab("Data"):
            build_data_tab(table)
    return demo


def get_args_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=TITLE, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=settings.data,
                        help="data set to open (folder, fer2013.csv, Parquet, hub id); default: $FER_DATA or the bundled sample")
    parser.add_argument("--host", default=settings.server_name, help="address to serve on ($GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=settings.server_port, help="port ($GRADIO_SERVER_PORT)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args = get_args_parser(settings).parse_args(argv)
    try:
        table = load_data(args.data)
    except FERError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    demo = build_demo(table)
    demo.launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
