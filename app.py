"""FER tool: the Gradio app. Builds one tab per part of the tool and launches.

    python app.py [--data PATH] [--host HOST] [--port PORT]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fer_core._validation import FERError
from fer_core.config import SAMPLE_PATH, Settings

if TYPE_CHECKING:
    import gradio as gr

# The app must run offline: no usage analytics calls home (a user may still opt in).
# Gradio is imported inside the builders, after the settings are checked: it
# reads GRADIO_SERVER_PORT itself at import and would fail with a traceback.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's queue rebuilds a pandas summary of up to 10,000 past events after every event (for
# its monitoring page): 2-9 ms of CPU per request here once the log fills. Every 100 events is
# plenty for that page (gradio/queueing.py reads this variable).
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

APP_DIR = Path(__file__).resolve().parent
TITLE = "FER tool: facial expression recognition you can see, test and correct"
#: Largest upload the server accepts; fer_core.images refuses larger files with the same limit.
MAX_UPLOAD = "25mb"


def load_data(path: str | None):
    """The data set to browse, with its quality, model and duplicate columns (cached after the first start)."""
    from fer_core.browse import enrich
    from fer_core.datasets import load_faces

    return enrich(load_faces(path or SAMPLE_PATH, progress=True), progress=True)


def open_annotations(db: str | None = None):
    """The relabel store: ``db`` (path or URL), else ``$FER_DB_URL``, else ``/data`` or beside the app."""
    from annotate import default_db_url, open_store

    return open_store(db or default_db_url(cwd=APP_DIR))


def build_demo(table, store=None) -> "gr.Blocks":
    """The app over an enriched table (:func:`load_data`) and a relabel store (default: :func:`open_annotations`)."""
    import gradio as gr

    from fer_core.predict import get_predictor
    from ui.browse_tab import Browser, build_browse_tab
    from ui.predict_tab import build_predict_tab
    from ui.relabel_tab import RelabelDesk, build_relabel_tab

    store = store if store is not None else open_annotations()

    def corrected() -> set[str]:
        resolved = store.resolved_labels(table.name)
        return set(resolved.loc[resolved["changed"].astype(bool), "sample_id"])

    def history(sample_id: str):
        decisions = store.decisions(table.name)
        return decisions[decisions["sample_id"] == sample_id]

    with gr.Blocks(title="FER tool") as demo:
        gr.Markdown(f"# {TITLE}")
        selection = gr.State(None)  # rows the Browse tab sends to the Relabel tab
        with gr.Tab("Predict"):
            build_predict_tab()
        with gr.Tab("Browse"):
            build_browse_tab(Browser(table, corrected=corrected, history=history), selection)
        with gr.Tab("Relabel"):
            build_relabel_tab(RelabelDesk(store, table, model_version=get_predictor().model_name), selection)
    return demo


def launch(demo: "gr.Blocks", *, host: str, port: int, **kwargs) -> None:
    """Start serving ``demo`` with the app's limits (upload size, queue), layout fixes and keyboard shortcuts.

    Queue (chosen with ``python -m ui.load``, figures in the README's "Load"): every event
    without its own limit, ``predict`` included, runs at most ``concurrency`` calls at a time
    (Gradio's ``GRADIO_DEFAULT_CONCURRENCY_LIMIT`` overrides it, as ``ui.load --concurrency``
    does); at most ``max_size`` events wait, beyond that a caller is told at once that the
    queue is full instead of waiting minutes.
    """
    from ui.relabel_tab import KEYBOARD_JS

    concurrency = "not_set" if os.environ.get("GRADIO_DEFAULT_CONCURRENCY_LIMIT") else 2
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    # Layout: the Browse gallery shows each whole face, crisp, in as many columns as fit, and
    # grows with the page instead of scrolling inside itself both ways; on a phone, small
    # buttons (the Relabel answers, the Browse pager) sit several to a row, not one per row,
    # and the photo boxes shrink to a 4:3 photo's height at that width (no blank bands).
    css = """
    #browse-gallery .grid-wrap .grid-container { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important; }
    #browse-gallery .grid-wrap.fixed-height { max-height: none !important; min-height: 0 !important; }
    #browse-gallery .grid-wrap .thumbnail-item > img { object-fit: contain !important; image-rendering: pixelated; }
    #browse-gallery .grid-wrap .caption-label { max-width: 100%; font-size: 11px; padding: 1px 4px; }
    @media (max-width: 640px) {
      .row > button.sm { min-width: min(72px, 100%) !important; }
      #browse-pager > * { min-width: 40% !important; flex: 1 1 40% !important; }
      #predict-photo, #predict-annotated { height: 330px !important; }
      .prose h1 { font-size: 1.3rem; }
    }
    """
    kwargs.setdefault("css", css)
    demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, js=KEYBOARD_JS, **kwargs)


def get_args_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=TITLE, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=settings.data,
                        help="data set to open (folder, fer2013.csv, Parquet, hub id); default: $FER_DATA or the bundled sample")
    parser.add_argument("--host", default=settings.server_name, help="address to serve on ($GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=settings.server_port, help="port ($GRADIO_SERVER_PORT)")
    parser.add_argument("--db", default=settings.db_url,
                        help="relabel store: SQLite file or database URL ($FER_DB_URL); default: "
                             "/data/fer_annotations.db when /data exists, else fer_annotations.db beside app.py")
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
        store = open_annotations(args.db)
    except FERError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    demo = build_demo(table, store)
    launch(demo, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
