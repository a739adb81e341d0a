"""FER tool: the Gradio app. Builds one tab per part of the tool and launches.

    python app.py [--data PATH] [--weights FILE] [--host HOST] [--port PORT]

Settings come from the command line, else from the environment (read once, by
:meth:`fer_core.config.Settings.from_env`).
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fer_core._validation import FERError
from fer_core.config import SAMPLE_PATH, Settings, parse_auth

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
#: Gradio's copies of uploads and downloads: swept every 10 minutes, deleted an hour after they were
#: made, and all of them when the app stops.
DELETE_CACHE = (600, 3600)
#: Sessions Gradio keeps at most (each holds a copy of the components' settings); idle ones go
#: sooner (ui.limits.SessionJanitor).
SESSION_CAPACITY = 2000
#: When the Browse tab's model opinion is computed (``--model-opinion``, see :func:`load_data`).
MODEL_OPINION_CHOICES = ("auto", "at-start", "when-chosen")
#: Faces up to which ``auto`` runs the default model over the data set at start: a few minutes on two
#: CPU cores (about 900 faces/s); a million faces would hold the start for about 20 minutes.
OPINION_AT_START_MAX = 250_000
#: Events that may wait in the queue in all; heavy ones (images) have a smaller share of their own.
QUEUE_MAX_SIZE = 256


@contextmanager
def step(what: str):
    """Say on the console what start-up does now, and how long it took."""
    print(f"{what} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    yield
    print(f"{what}: done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def load_data(path: str | None, *, allow_outside_root: bool = False, weights: str | None = None, catalog=None,
              model_opinion: str = "auto"):
    """The data set to browse, with its quality, model and duplicate columns (cached after the first start).

    ``allow_outside_root``: follow links and Parquet image paths that leave the data set's folder.
    The model columns hold the opinion of ``catalog``'s default model (a
    :class:`~fer_core.catalog.ModelCatalog`), else of ``weights`` (default: the bundled model).
    ``model_opinion`` (:data:`MODEL_OPINION_CHOICES`): ``at-start`` computes them now,
    ``when-chosen`` leaves them to the Browse tab's model menu, ``auto`` computes them now for
    data sets of at most :data:`OPINION_AT_START_MAX` faces.
    """
    from fer_core.browse import enrich
    from fer_core.datasets import load_faces

    if model_opinion not in MODEL_OPINION_CHOICES:
        raise FERError(f"--model-opinion must be one of {', '.join(MODEL_OPINION_CHOICES)}, got {model_opinion!r}")
    table = load_faces(path or SAMPLE_PATH, progress=True, allow_outside_root=allow_outside_root)
    with_model = model_opinion == "at-start" or (model_opinion == "auto" and len(table) <= OPINION_AT_START_MAX)
    if not with_model:
        print(f"{len(table):,} faces: the model's opinion is computed when a model is chosen in the Browse tab "
              "(--model-opinion at-start computes it now)", file=sys.stderr)
        return enrich(table, progress=True, model=False)
    if catalog is not None:
        return enrich(table, predictor=catalog.predictor(), progress=True)
    return enrich(table, weights=weights, progress=True)


def open_annotations(db: str | None = None):
    """The relabel store: ``db`` (path or URL), else ``/data`` or beside the app.

    See :func:`open_annotations_saying`.
    """
    return open_annotations_saying(db)[0]


def open_annotations_saying(db: str | None = None):
    """The relabel store (as :func:`open_annotations`), and a warning when its answers will not be kept.

    ``db`` is the ``--db`` flag or ``$FER_DB_URL`` as :class:`~fer_core.config.Settings` read it; the
    environment is not read again here. Logs which database is used and why; the warning (``/data``
    exists but cannot be written) is logged too, loudly, and is for the page.
    """
    from annotate import open_store
    from annotate.engine import choose_default_db, to_url

    if db:
        store = open_store(db)
        shown = to_url(db).render_as_string(hide_password=True)
        print(f"relabel store: using {shown} (--db or FER_DB_URL)", file=sys.stderr)
        return store, None
    choice = choose_default_db({}, cwd=APP_DIR)  # $FER_DB_URL was read by Settings and given as ``db``
    print(f"relabel store: {choice.reason}", file=sys.stderr)
    if choice.warning:
        print(f"WARNING: {choice.warning}", file=sys.stderr)
    return open_store(choice.url), choice.warning


def build_demo(table, store=None, *, identity: str = "name", notice: str | None = None,
               weights: str | None = None, catalog=None, data: str | None = None) -> gr.Blocks:
    """The app over an enriched table (:func:`load_data`) and a relabel store.

    ``store`` defaults to :func:`open_annotations` of ``$FER_DB_URL`` (read through
    :class:`~fer_core.config.Settings`). ``identity``: who an annotator is
    (``ui.relabel_tab.IDENTITIES``: the typed name, the signed-in user of ``--auth``, or the
    Hugging Face account on a Space). ``notice``: a warning shown above the tabs (for example:
    answers will not be kept). ``catalog``: the models the tabs choose from by name (a
    :class:`~fer_core.catalog.ModelCatalog`; default: the bundled ones, with ``weights`` as the
    default model when given); ``table``'s model columns are its default model's opinion.
    ``data``: the path ``table`` was read from, which the Relabel tab's *Train on corrections*
    panel trains on (without it the panel says what it needs).
    """
    import gradio as gr

    from annotate.finetune import FineTuneJob
    from fer_core.catalog import ModelCatalog
    from fer_core.config import default_cache_dir
    from ui.browse_tab import Browser, build_browse_tab
    from ui.predict_tab import build_predict_tab
    from ui.relabel_tab import RelabelDesk, build_relabel_tab

    catalog = catalog if catalog is not None else ModelCatalog(weights)
    default = catalog.default  # the model whose opinion the table carries (load_data)
    predictor = catalog.predictor(default)
    store = store if store is not None else open_annotations(Settings.from_env().db_url)
    # Built at start: a training the last run of the server left behind is marked stopped.
    job = FineTuneJob(default_cache_dir() / "fine_tune", table, data=data)

    def corrected() -> set[str]:
        resolved = store.resolved_labels(table.name)
        return set(resolved.loc[resolved["changed"].astype(bool), "sample_id"])

    def history(sample_id: str):
        return store.decisions(table.name, sample_id=sample_id)

    def votes(sample_id: str) -> dict[str, int]:
        return store.vote_counts(table.name, sample_id)

    with gr.Blocks(title="FER tool", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(f"# {TITLE}")
        if notice:
            gr.Markdown(f"**Warning:** {html.escape(notice)}", elem_id="app-notice")
        selection = gr.State(None)  # rows the Browse tab sends to the Relabel tab
        with gr.Tab("Predict"):
            build_predict_tab(catalog)
        with gr.Tab("Browse"):
            build_browse_tab(Browser(table, corrected=corrected, history=history, votes=votes, catalog=catalog,
                                     model=default), selection)
        with gr.Tab("Relabel"):
            build_relabel_tab(RelabelDesk(store, table, model_version=predictor.model_name, model_name=default,
                                          catalog=catalog), selection, identity=identity, catalog=catalog, job=job)
    return demo


def launch(demo: gr.Blocks, *, host: str, port: int, **kwargs) -> None:
    """Start serving ``demo`` with the app's limits (upload and request size, queues, sessions, temp files).

    Queue (chosen with ``python -m benchmarks.load``, figures in the README's "Load"): events that decode
    images and run the model share one group (``ui.limits.HEAVY``) of ``concurrency`` calls at a
    time and at most ``HEAVY_WAITING`` waiting; every other event runs at most ``concurrency``
    calls at a time (Gradio's ``GRADIO_DEFAULT_CONCURRENCY_LIMIT`` overrides it, as
    ``benchmarks.load --concurrency`` does). Beyond the places, a caller is told at once that the queue
    is full instead of waiting minutes, and a burst of one kind leaves the others their places.
    """
    from starlette.middleware import Middleware

    from ui.limits import (
        HEAVY,
        HEAVY_WAITING,
        BlockedRoutes,
        BodySizeLimit,
        SessionJanitor,
        UploadQuota,
        light_sessions,
        limit_waiting,
    )
    from ui.relabel_tab import KEYBOARD_JS

    concurrency = "not_set" if os.environ.get("GRADIO_DEFAULT_CONCURRENCY_LIMIT") else 2
    demo.queue(default_concurrency_limit=concurrency, max_size=QUEUE_MAX_SIZE)
    limit_waiting(demo._queue, {HEAVY: HEAVY_WAITING})
    janitor = SessionJanitor()
    app_kwargs = kwargs.pop("app_kwargs", {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(BodySizeLimit),
                                Middleware(UploadQuota), Middleware(BlockedRoutes), Middleware(janitor.wrap)]
    kwargs.setdefault("css", CSS)
    kwargs.setdefault("state_session_capacity", SESSION_CAPACITY)
    block = not kwargs.pop("prevent_thread_lock", False)
    demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, js=KEYBOARD_JS,
                app_kwargs=app_kwargs, prevent_thread_lock=True, **kwargs)
    light_sessions(demo.state_holder)
    demo.session_janitor = janitor
    janitor.start(demo)
    if block:
        demo.block_thread()


# Layout: the Browse gallery shows each whole face, crisp, in as many columns as fit, and grows
# with the page instead of scrolling inside itself both ways; on a phone, small buttons (the
# Relabel answers, the Browse pager) sit several to a row, not one per row, and the photo boxes
# shrink to a 4:3 photo's height at that width (no blank bands).
CSS = """
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


def load_models(weights: str | None):
    """The models the tabs choose from (a :class:`~fer_core.catalog.ModelCatalog` of the bundled ones), with
    ``weights`` as the default when given, and the default's predictor loaded.

    Raises :class:`fer_core.weights.WeightsError` (a ``FERError``) naming ``--weights`` when the
    file is missing or not usable, so that the app stops with one line instead of a traceback.
    """
    from fer_core.catalog import ModelCatalog
    from fer_core.weights import WeightsError

    try:
        catalog = ModelCatalog(weights)
        catalog.predictor()
    except WeightsError as err:
        raise WeightsError(f"--weights (or FER_WEIGHTS): {err}") from None
    return catalog


def get_args_parser(settings: Settings) -> argparse.ArgumentParser:
    """The app's command line; each flag defaults to its setting from the environment."""
    parser = argparse.ArgumentParser(description=TITLE, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=settings.data,
                        help="data set to open (folder, fer2013.csv, Parquet, hub id); "
                             "default: $FER_DATA or the bundled sample")
    parser.add_argument("--weights", default=settings.weights, metavar="FILE",
                        help="default model: a .safetensors file with its .json card beside it ($FER_WEIGHTS); "
                             "the bundled models stay choosable by name; default: the bundled weights")
    parser.add_argument("--host", default=settings.server_name, help="address to serve on ($GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=settings.server_port, help="port ($GRADIO_SERVER_PORT)")
    parser.add_argument("--db", default=settings.db_url,
                        help="relabel store: SQLite file or database URL ($FER_DB_URL); default: "
                             "/data/fer_annotations.db when /data exists, else fer_annotations.db beside app.py")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="follow links in a data set folder and Parquet image paths that lead outside the data "
                             "set's folder (by default they are skipped or refused)")
    parser.add_argument("--model-opinion", choices=MODEL_OPINION_CHOICES, default="auto",
                        help="when the default model classifies every face for the Browse tab: at-start, or "
                             "when-chosen in the tab's model menu; auto: at start for data sets of at most "
                             f"{OPINION_AT_START_MAX:,} faces")
    parser.add_argument("--auth", default=settings.auth, metavar="USER:PASS",
                        help="sign-in: only these users (comma-separated USER:PASS pairs) may use the app, and "
                             "each annotator is the signed-in user ($FER_AUTH); default: open to all, annotators "
                             "type their name (on a Space with hf_oauth, they sign in with Hugging Face)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Read the settings, load the model, data set and relabel store, and serve until stopped; 2 on a user error."""
    try:
        settings = Settings.from_env()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args = get_args_parser(settings).parse_args(argv)
    from ui.limits import port_in_use

    # Start-up steps of the libraries (fer_core, annotate) go to the console with the app's own.
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    for name in ("fer_core", "annotate", "ui"):
        logging.getLogger(name).setLevel(logging.INFO)

    try:
        users = parse_auth(args.auth)
    except ValueError as err:
        print(f"error: --auth: {err}", file=sys.stderr)
        return 2
    identity = "password" if users else "huggingface" if settings.hf_oauth else "name"

    if port_in_use(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is already in use: stop the program using it, or "
              "choose another port with --port (or GRADIO_SERVER_PORT)", file=sys.stderr)
        return 2
    try:
        with step(f"loading the model ({args.weights or 'the bundled weights'})"):
            catalog = load_models(args.weights)
        with step(f"loading the data set ({args.data or 'the bundled sample'})"):
            table = load_data(args.data, allow_outside_root=args.allow_outside_root, catalog=catalog,
                              model_opinion=args.model_opinion)
        with step("opening the relabel store"):
            store, notice = open_annotations_saying(args.db)
    except FERError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with step("building the tabs (model, detector, relabel queue)"):
        demo = build_demo(table, store, identity=identity, notice=notice, catalog=catalog, data=args.data)
    with step(f"starting the server on http://{args.host}:{args.port}"):
        launch(demo, host=args.host, port=args.port, prevent_thread_lock=True, auth=users or None)
    # `docker stop` and process managers send SIGTERM: stop as on Ctrl-C, so that Gradio deletes the
    # uploads and downloads of this run and the exit handlers run.
    signal.signal(signal.SIGTERM, _interrupt)
    demo.block_thread()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
