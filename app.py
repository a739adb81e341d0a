"""FER tool: the Gradio app. Builds one tab per part of the tool and launches.

    python app.py [--data PATH] [--host HOST] [--port PORT]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from fer_core._validation import FERError
from fer_core.config import SAMPLE_PATH, Settings

if TYPE_CHECKING:
    import gradio as gr

# The app must run offline: no usage analytics calls home (a user may still opt in).
# Gradio is imported inside the builders, after the settings are checked: it
# reads GRADIO_SERVER_PORT itself at import and would fail with a traceback.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TITLE = "FER tool: facial expression recognition you can see, test and correct"
#: Largest upload the server accepts; fer_core.images refuses larger files with the same limit.
MAX_UPLOAD = "25mb"


def load_data(path: str | None):
    """The data set to browse, with its quality, model and duplicate columns (cached after the first start)."""
    from fer_core.browse import enrich
    from fer_core.datasets import load_faces

    return enrich(load_faces(path or SAMPLE_PATH, progress=True), progress=True)


def build_demo(table) -> "gr.Blocks":
    import gradio as gr

    from ui.browse_tab import Browser, build_browse_tab
    from ui.predict_tab import build_predict_tab

    with gr.Blocks(title="FER tool") as demo:
        gr.Markdown(f"# {TITLE}")
        with gr.Tab("Predict"):
            build_predict_tab()
        with gr.Tab("Browse"):
            build_browse_tab(Browser(table))
    return demo


def launch(demo: "gr.Blocks", *, host: str, port: int, **kwargs) -> None:
    """Start serving ``demo`` with the app's limits (upload size)."""
    demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, **kwargs)


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
    launch(demo, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
