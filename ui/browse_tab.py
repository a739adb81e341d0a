"""The Browse tab: the loaded data set filtered by split, emotion, quality, model agreement and
duplicates, paged in a crisp gallery, with plots of the current selection and downloads.

The work is in :class:`Browser` (plain Python over an enriched :class:`FaceTable`), tested
without a browser and replayed by ``python -m benchmarks.browse``. Gradio is imported only in
:func:`build_browse_tab`.

The model's opinion (captions, the agreement filter and order, the selected face's
probabilities) is that of the model chosen in the tab: the table's own (the app's default model)
at first, or none when the app opened a large data set without it (``app.py --model-opinion``); another model of the catalog is run over the whole data set the first time it is
chosen (:func:`fer_core.browse.model_opinion`: cached on disk; 30-40 s for FER2013's 32,064
faces on two CPU cores with a bundled model), then kept.
"""

import html
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotate.labels import ANSWER_NAMES
from fer_core._validation import FERError
from fer_core.browse import (
    PROBABILITY_COLUMNS,
    SORTS,
    BrowseQuery,
    class_counts,
    filter_faces,
    has_opinion,
    histogram,
    model_opinion,
    page_of,
)
from fer_core.catalog import ModelCatalog
from fer_core.datasets import FaceTable, save_table
from fer_core.labels import DISPLAY_NAMES, EMOTIONS
from fer_core.quality import COMPONENT_COLUMNS
from ui.limits import HEAVY, TempFiles

__all__ = ["Browser", "PageView", "PAGE_SIZES", "build_browse_tab"]

#: Page sizes offered; the first is the default.
PAGE_SIZES: tuple[int, ...] = (48, 24, 96, 192)
#: The selection's downloads: one folder per selection, deleted 15 minutes after it was last handed out,
#: and the oldest first beyond 1.2 GB (the whole of FER2013 takes 350 MB as CSV and Parquet).
EXPORTS = TempFiles("browse_exports", ttl_s=900, max_bytes=1_200_000_000)
#: Other models' opinions kept in memory at once (each a copy of the table's fields, a few MB for FER2013).
KEPT_OPINIONS = 4
#: 48x48 faces are shown 4x larger with nearest-neighbour scaling, so the pixels stay crisp.
FACE_SCALE = 4
ALL = "all"
#: CSS class of the tab's filter sliders; :data:`FILTER_KEYS_JS` looks for it.
FILTER_SLIDER_CLASS = "browse-filter-slider"
#: Run once in the page (``js_on_load`` of a hidden ``gr.HTML``). Gradio's slider fires ``release``
#: when a drag ends or its number box loses focus, not on Enter nor on arrow keys; the filter
#: listens to ``release`` only, so that a drag filters once. This script makes Enter in a filter
#: slider's number box leave the box (a typed value applies), and a key that steps the slider
#: itself end like a drag (fires ``release`` when the key goes up).
FILTER_KEYS_JS = f"""
if (!window.ferBrowseFilterKeys) {{
  window.ferBrowseFilterKeys = true;
  const inFilter = (target, type) => target instanceof HTMLInputElement && target.type === type
    && target.closest(".{FILTER_SLIDER_CLASS}") !== null;
  const stepKeys = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "PageUp", "PageDown", "Home", "End"];
  document.addEventListener("keydown", (event) => {{
    if (event.key === "Enter" && inFilter(event.target, "number")) event.target.blur();
  }});
  document.addEventListener("keyup", (event) => {{
    if (stepKeys.includes(event.key) && inFilter(event.target, "range")) {{
      event.target.dispatchEvent(new PointerEvent("pointerup", {{bubbles: true}}));
    }}
  }});
}}
"""


@dataclass
class PageView:
    """One page of the current selection, ready to show."""

    faces: list[tuple[np.ndarray, str]]  # enlarged face, caption
    rows: np.ndarray  # their row positions in the table
    page: int
    pages: int
    matches: int
    seconds: float


class Browser:
    """Filters and pages an enriched table (see :func:`fer_core.browse.enrich`).

    ``corrected``: returns the ``sample_id`` of faces whose label the relabel store changed
    (asked only when the label-status filter is used); ``history``: one face's decisions;
    ``votes``: one face's current votes per answer (typed in the Relabel tab or imported).
    Without a store all three are empty. ``catalog``: the models whose opinion may be shown
    instead of the table's (:meth:`for_model`); ``model``: the name of the model whose opinion the
    table's columns hold (default: the catalog's default). A table without a model's opinion
    (``enrich(..., model=False)``, as the app opens a large data set) has no model until one is
    chosen: :attr:`model` is then ``None``.
    """

    def __init__(self, table: FaceTable, *, corrected: Callable[[], set[str]] | None = None,
                 history: Callable[[str], pd.DataFrame] | None = None,
                 votes: Callable[[str], dict[str, int]] | None = None, catalog: ModelCatalog | None = None,
                 model: str | None = None) -> None:
        self.table = table
        self.frame = table.frame
        self.catalog = catalog
        own = model or (catalog.default if catalog is not None else None)
        self.model = own if has_opinion(table.frame) else None
        self._corrected = corrected or set
        self._history = history
        self._votes = votes
        self._scale = np.ones((FACE_SCALE, FACE_SCALE), dtype=np.uint8)
        self._lock = threading.Lock()
        self._orders: dict[tuple[str, bool], np.ndarray] = {}  # whole-table sort orders (filter_faces)
        self._others: dict[tuple[str, str, int], Browser] = {}  # (name, weights, mtime) -> that model's view
        self._computing: dict[tuple[str, str, int], threading.Lock] = {}

    # ------------------------------------------------------------ models

    def models(self) -> list[str]:
        """The names of the models whose opinion can be shown: the table's own first."""
        names = self.catalog.names() if self.catalog is not None else []
        own = [self.model] if self.model else []
        return own + [n for n in names if n != self.model]

    def for_model(self, name: str | None, *,
                  on_chunk: Callable[[int, int], None] | None = None) -> "Browser":
        """This data set seen through model ``name``'s opinion (``None``, ``""`` or the table's own: this one).

        The first time a model is asked for, it is run over every face (:func:`fer_core.browse.model_opinion`,
        cached on disk; ``on_chunk(done, total)`` reports progress); its view is then kept (the
        :data:`KEPT_OPINIONS` latest). Raises :class:`~fer_core.catalog.UnknownModel` listing the names.
        """
        if not name or name == self.model:
            return self
        if self.catalog is None:
            raise FERError(f"no model named {str(name)[:100]!r}; choose one of "
                           f"{', '.join(self.models()) or 'none (this data set carries no model opinion)'}")
        entry = self.catalog.entry(name)
        weights = Path(entry.weights)
        key = (entry.name, str(weights), weights.stat().st_mtime_ns if weights.is_file() else 0)
        with self._lock:
            view = self._others.get(key)
            if view is not None:
                return view
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:  # one computation per model, however many people ask for it at once
            with self._lock:
                view = self._others.get(key)
            if view is None:
                opinion = model_opinion(self.table, self.catalog.predictor(entry.name), on_chunk=on_chunk)
                view = Browser(self.table.with_columns(opinion), corrected=self._corrected, history=self._history,
                               votes=self._votes, model=entry.name)
                with self._lock:
                    self._others[key] = view
                    self._computing.pop(key, None)
                    while len(self._others) > KEPT_OPINIONS:
                        self._others.pop(next(iter(self._others)))
        return view

    @property
    def splits(self) -> list[str]:
        return sorted(self.frame["split"].astype(str).unique())

    def cross_split_duplicates(self) -> int:
        """Faces that have a duplicate in another split (always shown in the tab)."""
        if "dup_cross_split" not in self.frame:
            return 0
        return int(self.frame["dup_cross_split"].sum())

    def select(self, query: BrowseQuery) -> np.ndarray:
        corrected = self._corrected() if query.label_status != "any" else None
        return filter_faces(self.frame, query, corrected=corrected, orders=self._orders)

    @staticmethod
    def history_columns() -> pd.DataFrame:
        return pd.DataFrame(columns=["created_at", "annotator", "label", "undone", "strategy", "model_version"])

    def history(self, row: int) -> pd.DataFrame:
        """The relabel store's decisions on one face, oldest first (empty without a store)."""
        columns = list(self.history_columns().columns)
        if self._history is None:
            return pd.DataFrame(columns=columns)
        decisions = self._history(str(self.frame["sample_id"].iloc[row]))
        return decisions[[c for c in columns if c in decisions]].reset_index(drop=True)

    def votes(self, row: int) -> dict[str, float] | None:
        """The annotators' votes on one face as shares, keyed by display name (``None`` without votes)."""
        if self._votes is None:
            return None
        counts = self._votes(str(self.frame["sample_id"].iloc[row]))
        total = sum(counts.values())
        if not total:
            return None
        return {ANSWER_NAMES[label]: n / total for label, n in counts.items() if n}

    def caption(self, row: int) -> str:
        """Short enough for a thumbnail: label, quality, the model's opinion ("= Happy 91%" agrees,
        "≠ Sad 64%" disagrees) and the duplicate group."""
        record = self.frame.iloc[row]
        text = f"{DISPLAY_NAMES[EMOTIONS[int(record['emotion'])]]} {record.get('quality_score', float('nan')):.2f}"
        if "model_label" in self.frame:
            model = EMOTIONS[int(record["model_label"])]
            mark = "=" if bool(record["model_agrees"]) else "≠"
            text += f" {mark}{DISPLAY_NAMES[model]} {record['model_confidence']:.0%}"
        if "dup_group_size" in self.frame and int(record["dup_group_size"]) > 1:
            text += f" dup#{int(record['dup_group'])}"
        return text

    def page(self, rows: np.ndarray, page: int, page_size: int) -> PageView:
        started = time.perf_counter()
        shown, page, pages = page_of(rows, page, page_size)
        faces = [(np.kron(self.table.images[r], self._scale), self.caption(int(r))) for r in shown]
        return PageView(faces, shown, page, pages, len(rows), time.perf_counter() - started)

    def count_text(self, view: PageView) -> str:
        cross = self.cross_split_duplicates()
        model = (f" · the model's opinion: {html.escape(self.model)}" if self.model else
                 " · no model's opinion yet: choose a model" if self.catalog is not None else "")
        return (f"**{view.matches:,}** of {len(self.frame):,} faces match · page {view.page} of {view.pages} · "
                f"{cross:,} faces have a duplicate in another split{model}")

    # ------------------------------------------------------------ details and plots

    def details(self, row: int) -> tuple[np.ndarray, pd.DataFrame, dict[str, float] | None]:
        """One face large (8x), its fields as a two-column table and the model's probabilities."""
        record = self.frame.iloc[row]
        fields = pd.DataFrame({"field": [str(k) for k in record.index],
                               "value": [_plain(v) for v in record.to_numpy()]})
        fields = fields[~fields["field"].isin(PROBABILITY_COLUMNS)]
        probabilities = None
        if PROBABILITY_COLUMNS[0] in self.frame:
            probabilities = {DISPLAY_NAMES[e]: float(record[f"p_{e}"]) for e in EMOTIONS}
        large = np.kron(self.table.images[row], np.ones((8, 8), dtype=np.uint8))
        return large, fields.reset_index(drop=True), probabilities

    def plots(self, rows: np.ndarray) -> dict[str, pd.DataFrame]:
        """The data of every plot for the current selection."""
        out = {"classes": class_counts(self.frame, rows)}
        if "quality_score" in self.frame:
            out["quality"] = histogram(self.frame, rows, "quality_score")
            out["quality_by_emotion"] = histogram(self.frame, rows, "quality_score", by_emotion=True)
            parts = []
            for name in COMPONENT_COLUMNS:
                part = histogram(self.frame, rows, name, bins=10)
                part["component"] = name
                parts.append(part)
            out["components"] = pd.concat(parts, ignore_index=True)
        return out

    def export(self, rows: np.ndarray, folder: Path | None = None) -> tuple[Path, Path]:
        """The selection as CSV and Parquet (enhanced schema, images included), in ``folder``.

        Without ``folder`` they go to :data:`EXPORTS`, under a key of the data set and the rows: the
        same selection exported again hands out the files already written.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if folder is not None:
            return self._write_export(rows, folder, existed=False)
        key = EXPORTS.key(self.table.name, str(len(self.table)), self.model or "", rows.tobytes())
        with EXPORTS.claim(key) as (folder, existed):
            return self._write_export(rows, folder, existed=existed)

    def _write_export(self, rows: np.ndarray, folder: Path, *, existed: bool) -> tuple[Path, Path]:
        name = _safe_name(self.table.name)
        csv_path, parquet_path = folder / f"{name}_selection.csv", folder / f"{name}_selection.parquet"
        if not (existed and csv_path.is_file() and parquet_path.is_file()):
            selection = self.table.select(rows)
            save_table(selection, csv_path)
            save_table(selection, parquet_path)
        return csv_path, parquet_path


def _plain(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return str(value)


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]
    return cleaned or "faces"


def query_from_inputs(split: str, emotions: list[str], q_min: float, q_max: float, component_bounds: list[float],
                      label_status: str, agreement: str, duplicates: str, sort: str, seed: float) -> BrowseQuery:
    """A :class:`BrowseQuery` from the tab's widgets (component bounds as min, max pairs)."""
    components = {}
    for i, name in enumerate(COMPONENT_COLUMNS):
        lo, hi = float(component_bounds[2 * i]), float(component_bounds[2 * i + 1])
        if (lo, hi) != (0.0, 1.0):
            components[name] = (lo, hi)
    return BrowseQuery(
        split=None if split in (None, ALL) else split,
        emotions=tuple(emotions or ()),
        quality=(float(q_min), float(q_max)),
        components=components,
        label_status=label_status,
        agreement=agreement,
        duplicates=duplicates,
        sort=sort,
        seed=int(seed or 0),
    )


# ------------------------------------------------------------------------------ Gradio


def build_browse_tab(browser: Browser, selection_state=None) -> None:
    """The Browse tab's components and events; call inside ``gr.Blocks`` (and a ``gr.Tab``).

    ``selection_state``: a ``gr.State`` the "send to the relabel queue" button fills with the
    selected rows (the Relabel tab reads it); without it the button is hidden. The model dropdown
    (shown when ``browser`` has a catalog) chooses whose opinion the tab shows; its choices are
    read again at every page load. ``browse`` takes the model's name last (default: the table's
    own model); paging, the selected face and the downloads follow the model of the last selection.
    """
    import gradio as gr

    from fer_core.datasets import summary

    counts = summary(browser.table).reset_index().rename(columns={"emotion_name": "emotion"})
    with gr.Accordion(f"Data set {browser.table.name}: {len(browser.table):,} faces", open=False):
        gr.Dataframe(value=counts, label="Faces per emotion and split", interactive=False)

    # The page opens on every face in the default order, computed once here.
    initial_rows = browser.select(BrowseQuery())
    initial_view = browser.page(initial_rows, 1, PAGE_SIZES[0])
    widgets = _Widgets(
        **_filter_widgets(browser),
        **_face_widgets(browser, initial_view),
        **_plot_widgets(browser.plots(initial_rows)),
        **_download_widgets(show_send=selection_state is not None),
        rows_state=gr.State(initial_rows),
        page_rows_state=gr.State(initial_view.rows),
        model_state=gr.State(browser.model),
    )
    _wire_filters(browser, widgets)
    _wire_model(browser, widgets)
    _wire_pages(browser, widgets)
    _wire_selection(browser, widgets, selection_state)


@dataclass
class _Widgets:
    """The tab's components that events read or write."""

    split: Any
    emotions: Any
    sort: Any
    seed: Any
    q_min: Any
    q_max: Any
    label_status: Any
    agreement: Any
    duplicates: Any
    model: Any
    component_sliders: list[Any]
    count: Any
    prev_button: Any
    page_number: Any
    next_button: Any
    page_size: Any
    gallery: Any
    face_large: Any
    face_probs: Any
    face_votes: Any
    face_history: Any
    face_fields: Any
    class_plot: Any
    quality_plot: Any
    quality_emotion_plot: Any
    component_plot: Any
    export_button: Any
    csv_file: Any
    parquet_file: Any
    send_button: Any
    rows_state: Any
    page_rows_state: Any
    model_state: Any  # the model whose opinion selected ``rows_state``: paging, details and downloads follow it

    @property
    def filter_inputs(self) -> list[Any]:
        """In the order :func:`_query_of` reads them."""
        return [self.split, self.emotions, self.q_min, self.q_max, *self.component_sliders, self.label_status,
                self.agreement, self.duplicates, self.sort, self.seed]


# ------------------------------------------------------------------------------ layout


def _filter_widgets(browser: Browser) -> dict[str, Any]:
    import gradio as gr

    with gr.Row():
        split = gr.Dropdown([ALL, *browser.splits], value=ALL, label="Split", scale=1, min_width=120)
        # Wide enough for the seven emotions on one line at 1280 px.
        emotions = gr.CheckboxGroup(list(EMOTIONS), label="Emotions (none ticked: all)", scale=6)
        sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="Order", scale=2, min_width=160)
        seed = gr.Number(0, label="Random seed", precision=0, minimum=0, scale=1, min_width=100)
    with gr.Row():
        q_min = gr.Slider(0, 1, value=0, step=0.01, label="Quality at least", elem_classes=[FILTER_SLIDER_CLASS])
        q_max = gr.Slider(0, 1, value=1, step=0.01, label="Quality at most", elem_classes=[FILTER_SLIDER_CLASS])
        label_status = gr.Radio(["any", "original", "corrected"], value="any", label="Label status")
        # A name typed by an API caller is checked by the handlers (a model added since the start included).
        info = ("Whose probabilities the captions, agreement, order and details show" if browser.model else
                f"None yet: choose one to classify all {len(browser.frame):,} faces (once; then cached)")
        model = gr.Dropdown(browser.models(), value=browser.model or "", label="Model's opinion",
                            allow_custom_value=True,
                            visible=browser.catalog is not None, elem_id="browse-model", min_width=160, info=info)
        agreement = gr.Radio(["any", "agrees", "disagrees"], value="any", label="Model vs label")
        duplicates = gr.Radio(["any", "unique", "duplicated", "cross-split"], value="any", label="Duplicates")
    with gr.Accordion("Component scores", open=False):
        component_sliders = []
        with gr.Row():
            for name in COMPONENT_COLUMNS:
                with gr.Column(min_width=160):
                    for bound, value in (("least", 0), ("most", 1)):
                        component_sliders.append(gr.Slider(0, 1, value=value, step=0.01, label=f"{name} at {bound}",
                                                           elem_classes=[FILTER_SLIDER_CLASS]))
    gr.HTML("", js_on_load=FILTER_KEYS_JS, visible="hidden", elem_id="browse-filter-keys")
    return {"split": split, "emotions": emotions, "sort": sort, "seed": seed, "q_min": q_min, "q_max": q_max,
            "label_status": label_status, "agreement": agreement, "duplicates": duplicates, "model": model,
            "component_sliders": component_sliders}


def _face_widgets(browser: Browser, initial_view: PageView) -> dict[str, Any]:
    """The match count, the pager, the gallery and the selected face's details."""
    import gradio as gr

    count = gr.Markdown(browser.count_text(initial_view))
    # The pager: buttons as tall as the labelled fields beside them (equal_height), so they line up.
    with gr.Row(equal_height=True, elem_id="browse-pager"):
        prev_button = gr.Button("◀ Previous", scale=1)
        page_number = gr.Number(1, label="Page", precision=0, minimum=1, scale=1)
        next_button = gr.Button("Next ▶", scale=1)
        page_size = gr.Dropdown(list(PAGE_SIZES), value=PAGE_SIZES[0], label="Faces per page", scale=1)
    with gr.Row(equal_height=False):
        gallery = gr.Gallery(initial_view.faces, label="Faces", columns=8, height="auto", object_fit="contain",
                             allow_preview=False, scale=3, elem_id="browse-gallery")
        with gr.Column(scale=2):
            face_large = gr.Image(label="Selected face", interactive=False, height=400, format="png")
            face_probs = gr.Label(label="Model probabilities", num_top_classes=7)
            face_votes = gr.Label(label="Annotators' votes (share of answers)", num_top_classes=9,
                                  elem_id="browse-votes")
            face_history = gr.Dataframe(browser.history_columns(), label="Decision history (relabel store)",
                                        interactive=False)
            face_fields = gr.Dataframe(pd.DataFrame(columns=["field", "value"]), label="Fields", interactive=False,
                                       max_height=400)
    return {"count": count, "prev_button": prev_button, "page_number": page_number, "next_button": next_button,
            "page_size": page_size, "gallery": gallery, "face_large": face_large, "face_probs": face_probs,
            "face_votes": face_votes,
            "face_history": face_history, "face_fields": face_fields}


def _plot_widgets(plots: dict[str, pd.DataFrame]) -> dict[str, Any]:
    import gradio as gr

    with gr.Accordion("Plots of the current selection", open=False):
        with gr.Row():
            class_plot = gr.BarPlot(plots["classes"], x="emotion", y="faces", title="Faces per emotion", sort=None)
            quality_plot = gr.BarPlot(plots.get("quality"), x="bin", y="faces", title="Quality score",
                                      x_title="quality (bin start)")
        with gr.Row():
            quality_emotion_plot = gr.BarPlot(plots.get("quality_by_emotion"), x="bin", y="faces",
                                              color="emotion", title="Quality score per emotion")
            component_plot = gr.BarPlot(plots.get("components"), x="bin", y="faces", color="component",
                                        title="Component scores")
    return {"class_plot": class_plot, "quality_plot": quality_plot, "quality_emotion_plot": quality_emotion_plot,
            "component_plot": component_plot}


def _download_widgets(*, show_send: bool) -> dict[str, Any]:
    import gradio as gr

    with gr.Row():
        export_button = gr.Button("Prepare downloads of the selection", size="sm")
        csv_file = gr.DownloadButton("Download CSV", value=None, interactive=False)
        parquet_file = gr.DownloadButton("Download Parquet", value=None, interactive=False)
        send_button = gr.Button("Send the selection to the relabel queue", size="sm", visible=show_send)
    return {"export_button": export_button, "csv_file": csv_file, "parquet_file": parquet_file,
            "send_button": send_button}


# ------------------------------------------------------------------------------ events


def _query_of(values: list[Any]) -> BrowseQuery:
    """The query of :attr:`_Widgets.filter_inputs`' values."""
    split, emotions, q_min, q_max = values[:4]
    bounds = values[4:4 + 2 * len(COMPONENT_COLUMNS)]
    rest = values[4 + 2 * len(COMPONENT_COLUMNS):]
    return query_from_inputs(split, emotions, q_min, q_max, bounds, *rest)


def _show(browser: Browser, rows: np.ndarray, page: int, size: int) -> tuple[Any, str, int, np.ndarray]:
    """Gallery faces, count text, page number and the page's rows."""
    view = browser.page(rows, page, int(size))
    return view.faces, browser.count_text(view), view.page, view.rows


def _view(browser: Browser, model: str | None, on_chunk: Callable[[int, int], None] | None = None) -> Browser:
    """``browser`` seen through model ``model``'s opinion; an unknown name is a message listing the names."""
    import gradio as gr

    try:
        return browser.for_model(model, on_chunk=on_chunk)
    except FERError as err:
        raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None


#: What the filters say when one needs a model's opinion and the data set was opened without one.
NEEDS_A_MODEL = ("Model vs label and the model-confidence orders need a model's opinion of every face: "
                 "choose a model in \"Model's opinion\" first")


def _filter_handler(browser: Browser):
    """The filters' event function (also run after a model is chosen)."""
    import gradio as gr

    def on_filter(*values):
        *filters, size, model = values
        try:
            query = _query_of(list(filters))
        except FERError as err:
            raise gr.Error(str(err), print_exception=False) from None
        view = _view(browser, model)
        try:
            rows = view.select(query)
        except FERError as err:
            message = (NEEDS_A_MODEL if view.model is None else str(err))
            raise gr.Error(html.escape(message, quote=False), print_exception=False) from None
        faces, text, page, shown = _show(view, rows, 1, size)
        plots = view.plots(rows)
        empty = pd.DataFrame({"bin": [], "faces": []})
        return (faces, text, page, rows, shown, plots["classes"], plots.get("quality", empty),
                plots.get("quality_by_emotion", empty), plots.get("components", empty),
                gr.update(value=None, interactive=False), gr.update(value=None, interactive=False), view.model)

    return on_filter


def _filter_outputs(w: _Widgets) -> list[Any]:
    return [w.gallery, w.count, w.page_number, w.rows_state, w.page_rows_state, w.class_plot, w.quality_plot,
            w.quality_emotion_plot, w.component_plot, w.csv_file, w.parquet_file, w.model_state]


def _wire_filters(browser: Browser, w: _Widgets) -> None:
    """Any filter, the order or the page size: select again, back to page 1, plots redrawn, downloads reset."""
    import gradio as gr

    # Sliders filter on release only (end of a drag, number box left or Enter, keys: FILTER_KEYS_JS),
    # never on change or input, which fire at every step of a drag.
    triggers = [w.split.change, w.emotions.change, w.sort.change, w.seed.submit, w.label_status.change,
                w.agreement.change, w.duplicates.change, w.page_size.change, w.q_min.release, w.q_max.release,
                *[s.release for s in w.component_sliders]]
    gr.on(triggers, _filter_handler(browser), [*w.filter_inputs, w.page_size, w.model], _filter_outputs(w),
          api_name="browse", show_progress="minimal")


def _wire_model(browser: Browser, w: _Widgets) -> None:
    """A model chosen: its opinion of every face (computed the first time, with a progress bar), then the
    selection again as the filters say; the choices read again at every page load."""
    import gradio as gr

    def on_model(model, progress=gr.Progress()):  # noqa: B008 - how Gradio hands an event its progress bar
        def on_chunk(done: int, total: int) -> None:
            progress((done, total), desc=f"{model}: classifying every face", unit="faces")

        _view(browser, model, on_chunk)

    # One model's first run at a time: it takes the CPU for a while (30-40 s for FER2013).
    w.model.input(on_model, [w.model], None, api_visibility="private", show_progress="full",
                  show_progress_on=[w.gallery], concurrency_id="browse_model", concurrency_limit=1) \
        .success(_filter_handler(browser), [*w.filter_inputs, w.page_size, w.model], _filter_outputs(w),
                 api_visibility="private", show_progress="minimal")
    gr.on(None, lambda: gr.update(choices=browser.models()), None, [w.model], api_visibility="private",
          show_progress="hidden", queue=False)


def _wire_pages(browser: Browser, w: _Widgets) -> None:
    """Previous, next, a typed page number, and a face selected in the gallery."""
    import gradio as gr

    def on_page(rows, page, size, model, step):
        view = _view(browser, model)
        if rows is None:
            rows = view.select(BrowseQuery())
        return _show(view, rows, int(page or 1) + step, size)

    def on_select(shown, model, evt: gr.SelectData):
        if shown is None or evt.index is None or not 0 <= evt.index < len(shown):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        view = _view(browser, model)
        row = int(shown[evt.index])
        large, fields, probabilities = view.details(row)
        label = f"Probabilities of {view.model}" if view.model else "Model probabilities"
        return large, gr.update(value=probabilities, label=label), fields, view.history(row), view.votes(row)

    inputs = [w.rows_state, w.page_number, w.page_size, w.model_state]
    outputs = [w.gallery, w.count, w.page_number, w.page_rows_state]
    w.prev_button.click(lambda r, p, s, m: on_page(r, p, s, m, -1), inputs, outputs, api_visibility="private",
                        show_progress="minimal")
    w.next_button.click(lambda r, p, s, m: on_page(r, p, s, m, +1), inputs, outputs, api_name="next_page",
                        show_progress="minimal")
    w.page_number.submit(lambda r, p, s, m: on_page(r, p, s, m, 0), inputs, outputs, api_visibility="private",
                         show_progress="minimal")
    w.gallery.select(on_select, [w.page_rows_state, w.model_state],
                     [w.face_large, w.face_probs, w.face_fields, w.face_history, w.face_votes],
                     api_visibility="private", show_progress="hidden")


def _wire_selection(browser: Browser, w: _Widgets, selection_state) -> None:
    """The whole selection: sent to the relabel queue, or written out for download."""
    import gradio as gr

    def on_send(rows):
        rows = browser.select(BrowseQuery()) if rows is None else rows
        gr.Info(f"{len(rows):,} faces sent: in the Relabel tab, choose \"Browse tab's selection\" and start.")
        return rows

    def on_export(rows, model):
        view = _view(browser, model)
        rows = view.select(BrowseQuery()) if rows is None else rows
        csv_path, parquet_path = view.export(rows)
        return (gr.update(value=str(csv_path), interactive=True, label=f"Download CSV ({len(rows):,} faces)"),
                gr.update(value=str(parquet_path), interactive=True, label=f"Download Parquet ({len(rows):,} faces)"))

    if selection_state is not None:
        w.send_button.click(on_send, [w.rows_state], [selection_state], api_name="send_to_queue")
    # Writing a large selection takes memory: it shares the budget of the other heavy events.
    w.export_button.click(on_export, [w.rows_state, w.model_state], [w.csv_file, w.parquet_file],
                          api_name="export_selection", concurrency_id=HEAVY)
