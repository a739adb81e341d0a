"""The Relabel tab's "Train on corrections" panel: fine-tune the served model on the answers, then serve it or not.

The work is in :class:`TrainPanel` (plain Python over :class:`annotate.finetune.FineTuneJob` and
:class:`fer_core.catalog.ModelCatalog`), tested without a browser; :func:`build_train_panel`
lays it out in an accordion at the bottom of the tab. The job lives in the server, not in the
page: a reload, or another visitor, sees the same run. Anyone who may annotate (the tab's
identity rules, :func:`ui.relabel_tab.annotator_for`) may start, cancel, serve or discard.
"""

import html
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotate import AnnotateError, Store
from annotate.finetune import VAL_LABELS_NAME, FineTuneJob, Run, shown_time
from ui.relabel_tab import MAX_NAME, _guarded, annotator_for

__all__ = ["TrainPanel", "PanelView", "TICK_S", "build_train_panel"]

#: Seconds between two refreshes of an open panel.
TICK_S = 3.0
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def _md(text: Any) -> str:
    """``text`` shown literally in Markdown: HTML escaped, Markdown's punctuation backslashed."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def _pct(value: Any) -> str:
    return "–" if value is None else f"{float(value):.1%}"


def _f1(value: Any) -> str:
    return "–" if value is None else f"{float(value):.3f}"


@dataclass(frozen=True)
class PanelView:
    """What the panel shows now."""

    status: str  #: Markdown: the latest run, where it is
    figures: str  #: Markdown: the served model's and the new model's val figures, or ""
    log: str  #: the training log's last lines (plain text)
    commands: str  #: the command lines of a full run
    can_start: bool
    can_cancel: bool
    can_serve: bool
    can_discard: bool


class TrainPanel:
    """The panel's actions and text, over one job (one data set), the app's model catalog and the store."""

    def __init__(self, job: FineTuneJob, catalog: Any, store: Store, *, identity: str = "name") -> None:
        self.job = job
        self.catalog = catalog
        self.store = store
        self.identity = identity

    def who(self, typed: Any, *, username: str | None = None, hf_username: str | None = None) -> str:
        """The person acting, by the Relabel tab's rules (a typed name, or the signed-in user)."""
        return annotator_for(self.identity, typed, username=username, hf_username=hf_username)

    # ------------------------------------------------------------ text

    def overview(self) -> str:
        """Markdown: what a start trains, on what, or why it cannot start here."""
        problem = self.job.problem()
        if problem:
            return f"**Training is not available here.** {_md(problem)}"
        counts = self.job.answer_counts(self.store)
        served = self.catalog.entry()
        settings = self.job.settings
        text = (f"Fine-tunes the model served now (**{_md(served.name)}**) for {settings.epochs} epoch(s) on the "
                f"answers given on **{_md(self.job.dataset)}**: {counts['train_faces']:,} training faces have "
                f"answers ({counts['relabelled']:,} relabelled, {counts['dropped']:,} not a face). ")
        if counts["val_labelled"]:
            text += (f"{counts['val_labelled']:,} val faces have a label from the answers: the new model is measured "
                     "against the original labels and against those answers. ")
        else:
            text += "No val face has a label from the answers: the new model is measured against the original labels. "
        if not counts["train_faces"]:
            text += "**Answer some training faces first.** "
        return text + ("One training at a time for the whole app, in the background: closing or reloading the page "
                       "does not stop it.")

    def view(self) -> PanelView:
        """The latest run as the panel shows it."""
        run = self.job.latest()
        ready = self.job.problem() is None
        if run is None:
            return PanelView("No training yet.", "", "", self._commands(None), ready, False, False, False)
        served_now = run.model_name == self.catalog.default
        return PanelView(self._status(run, served_now), self._figures(run), self.job.log_tail(run),
                         self._commands(run), ready and not run.active, run.active,
                         run.status == "finished" and not served_now,
                         run.status == "finished" and not served_now)

    def _status(self, run: Run, served_now: bool) -> str:
        who, when = _md(run.started_by), _md(shown_time(run.started_at))
        if run.status == "running":
            progress = self.job.progress(run)
            if not progress.epoch:
                return (f"**Training** (started by {who}, {when}): loading the data and the starting model "
                        f"{_md(run.init_name)}, then {run.epochs} epoch(s)…")
            parts = [f"**Training** (started by {who}, {when}): epoch **{progress.epoch} of {progress.epochs}**",
                     f"loss {progress.train_loss:.3f}" if progress.train_loss is not None else ""]
            for name, figures in progress.val.items():
                parts.append(f"val {self._set_name(name)}: accuracy {_pct(figures.get('accuracy'))}, macro-F1 "
                             f"{_f1(figures.get('macro_f1'))}")
            return " · ".join(p for p in parts if p)
        if run.status == "finishing":
            return (f"**Finishing** (started by {who}, {when}): exporting the new model to ONNX and measuring it on "
                    "the val faces…")
        if run.status == "finished":
            text = (f"**Finished** ({_md(shown_time(run.ended_at))}, started by {who}): the new model "
                    f"**{_md(run.model_name)}** is ready. ")
            if served_now:
                return text + f"**The app serves it now** (switched by {_md(run.served_by)}, " \
                              f"{_md(shown_time(run.served_at))})."
            if run.served_by:
                return text + (f"It was served (switched by {_md(run.served_by)}); the app serves "
                               f"**{_md(self.catalog.default)}** now.")
            return text + "*Serve it* switches the whole app to it; *Discard it* deletes it."
        if run.status == "failed":
            return (f"**The training failed** (started by {who}, {when}): {_md(run.message)}. The log below says "
                    "more; its partial files were removed.")
        if run.status == "cancelled":
            return (f"**Cancelled** by {_md(run.ended_by)} ({_md(shown_time(run.ended_at))}); the run, started by "
                    f"{who}, left no model: its partial files were removed.")
        if run.status == "interrupted":
            return (f"**Stopped**: {_md(run.message)} (started by {who}, {when}). It left no model: its partial "
                    "files were removed. Start it again.")
        return f"**{_md(run.status)}**"

    def _set_name(self, name: str) -> str:
        return "original labels" if name == "original" else "your answers" if name == VAL_LABELS_NAME else _md(name)

    def _figures(self, run: Run) -> str:
        """Markdown table: the model served when the run started, and the new one, per label set."""
        figures = run.figures or {}
        if run.status != "finished" or not figures:
            return ""
        if "error" in figures:
            return f"The new model could not be measured: {_md(figures['error'])}"
        sets = [name for name in figures["new"] if name != "name"]
        head = "| model | " + " | ".join(
            f"{self._set_name(s)} ({figures['new'][s]['faces']:,} val faces): accuracy | macro-F1" for s in sets) + " |"
        rows = [head, "|---|" + "---|---|" * len(sets)]
        for key, what in (("current", "served at the start"), ("new", "new")):
            entry = figures[key]
            cells = " | ".join(f"{_pct(entry[s]['accuracy'])} | {_f1(entry[s]['macro_f1'])}" for s in sets)
            rows.append(f"| {what}: {_md(entry['name'])} | {cells} |")
        return "\n".join(rows)

    def _commands(self, run: Run | None) -> str:
        lines = ["# A full run on the answers (the bundled model's recipe; add --init WEIGHTS to fine-tune instead):",
                 self.job.full_run_commands(self.store)]
        if run is not None and run.command:
            lines += ["", "# The panel's last fine-tune ran:", shlex.join(["python", *run.command[1:]])]
        return "\n".join(lines)

    # ------------------------------------------------------------ actions

    def _protect(self) -> list[Path]:
        """The weights old runs must not take with them: the model served now."""
        return [self.catalog.entry().weights]

    def start(self, who: str) -> Run:
        """Fine-tune the served model on the store's answers (refused while a training runs)."""
        served = self.catalog.entry()
        for removed in self.job.prune(protect=self._protect()):
            if removed.model_name in self.catalog.names() and removed.model_name != self.catalog.default:
                self.catalog.remove(removed.model_name)
        return self.job.start(self.store, init=served.weights, init_name=served.name, started_by=who,
                              protect=self._protect())

    def cancel(self, who: str) -> Run:
        return self.job.cancel(by=who)

    def _finished(self) -> Run:
        run = self.job.latest()
        if run is None or run.status != "finished":
            raise AnnotateError("there is no finished training: start one first")
        return run

    def serve(self, who: str) -> str:
        """Add the latest run's model to the catalog and serve it to everyone; returns its name."""
        run = self._finished()
        name = run.model_name
        added = name not in self.catalog.names()
        if added:
            self.catalog.add(run.weights, name=name)
        try:
            self.catalog.predictor(name)  # loads it: a model that cannot be served is not switched to
        except Exception as err:
            if added:
                self.catalog.remove(name)
            raise AnnotateError(f"the new model cannot be served: {err}") from None
        self.catalog.set_default(name)
        self.job.mark_served(run.run_id, by=who)
        return name

    def discard(self, who: str) -> str:
        """Delete the latest run's model (refused while the app serves it); returns its name."""
        run = self._finished()
        name = run.model_name
        if name == self.catalog.default:
            raise AnnotateError(f"{name} is the model the app serves now: it stays until another one is served")
        if name in self.catalog.names():
            self.catalog.remove(name)
        self.job.discard(run.run_id)
        return name


# ------------------------------------------------------------------------------ Gradio


def _panel_layout(identity: str, name: Any) -> dict[str, Any]:
    """The accordion's components (the tab's name box is reused when given)."""
    import gradio as gr

    with gr.Accordion("Train on corrections", open=False) as accordion:
        about = gr.Markdown()
        if name is None:
            name = gr.Textbox(label="Your name", max_length=MAX_NAME, visible=identity == "name")
        with gr.Row():
            start = gr.Button("Start training on the answers", variant="primary", scale=3)
            cancel = gr.Button("Cancel the training", variant="stop", visible=False, scale=1)
        status = gr.Markdown("No training yet.")
        figures = gr.Markdown()
        with gr.Row():
            serve = gr.Button("Serve it (switch the app to the new model)", visible=False)
            discard = gr.Button("Discard it", variant="stop", visible=False)
        log = gr.Textbox(label="Training log (last lines)", lines=8, max_lines=12, interactive=False, autoscroll=True)
        with gr.Accordion("Commands for a full run", open=False):
            commands = gr.Code(language="shell", interactive=False, label="commands")
        timer = gr.Timer(TICK_S, active=False)
    return {"accordion": accordion, "about": about, "name": name, "start": start, "cancel": cancel,
            "status": status, "figures": figures, "serve": serve, "discard": discard, "log": log,
            "commands": commands, "timer": timer}


def build_train_panel(desk: Any, *, catalog: Any = None, job: FineTuneJob | None = None, identity: str = "name",
                      name: Any = None) -> TrainPanel | None:
    """The "Train on corrections" accordion; call inside the Relabel tab (``gr.Blocks``).

    ``desk``: the tab's :class:`~ui.relabel_tab.RelabelDesk` (its store); ``catalog``: the app's
    :class:`~fer_core.catalog.ModelCatalog`; ``job``: the app's :class:`~annotate.finetune.FineTuneJob`
    over the desk's data set. Without a catalog or a job nothing is shown (returns None).
    ``name``: the tab's name box (who acts, as for answers); without one the panel has its own.
    Endpoints: ``train_status``, ``train_start``, ``train_cancel``, ``train_serve``, ``train_discard``
    (the last four take the name).
    """
    import gradio as gr

    if catalog is None or job is None:
        return None
    if job.dataset != desk.table.name:
        raise ValueError(f"the job trains on {job.dataset!r}, the tab annotates {desk.table.name!r}")
    panel = TrainPanel(job, catalog, desk.store, identity=identity)
    w = _panel_layout(identity, name)
    accordion, about, name, timer = w["accordion"], w["about"], w["name"], w["timer"]
    status, figures, log, commands = w["status"], w["figures"], w["log"], w["commands"]
    start, cancel, serve, discard = w["start"], w["cancel"], w["serve"], w["discard"]
    shown = [status, figures, log, commands, start, cancel, serve, discard]

    def show() -> list[Any]:
        view = panel.view()
        return [view.status, view.figures, view.log, view.commands, gr.update(interactive=view.can_start),
                gr.update(visible=view.can_cancel), gr.update(visible=view.can_serve),
                gr.update(visible=view.can_discard)]

    def who(typed: Any, request: Any, profile: Any) -> str:
        return panel.who(typed, username=getattr(request, "username", None),
                         hf_username=getattr(profile, "username", None))

    @_guarded
    def opened() -> list[Any]:
        return [panel.overview(), *show(), gr.Timer(active=True)]

    @_guarded
    def closed() -> Any:
        return gr.Timer(active=False)

    @_guarded
    def tick() -> list[Any]:
        return show()

    @_guarded
    def on_start(request: gr.Request, profile: gr.OAuthProfile | None, typed: Any) -> list[Any]:
        panel.start(who(typed, request, profile))
        gr.Info("Training started: this panel follows it; it runs on if you close the page.")
        return [panel.overview(), *show(), gr.Timer(active=True)]

    @_guarded
    def on_cancel(request: gr.Request, profile: gr.OAuthProfile | None, typed: Any) -> list[Any]:
        panel.cancel(who(typed, request, profile))
        return show()

    @_guarded
    def on_serve(request: gr.Request, profile: gr.OAuthProfile | None, typed: Any) -> list[Any]:
        served = panel.serve(who(typed, request, profile))
        gr.Info(f"The app serves {served} now.")
        return show()

    @_guarded
    def on_discard(request: gr.Request, profile: gr.OAuthProfile | None, typed: Any) -> list[Any]:
        panel.discard(who(typed, request, profile))
        return show()

    light = dict(show_progress="hidden", concurrency_limit=None)
    accordion.expand(opened, None, [about, *shown, timer], api_name="train_status", **light)
    accordion.collapse(closed, None, [timer], api_visibility="private", **light)
    timer.tick(tick, None, shown, api_visibility="private", **light)
    start.click(on_start, [name], [about, *shown, timer], api_name="train_start", trigger_mode="once")
    cancel.click(on_cancel, [name], shown, api_name="train_cancel", trigger_mode="once")
    serve.click(on_serve, [name], shown, api_name="train_serve", trigger_mode="once")
    discard.click(on_discard, [name], shown, api_name="train_discard", trigger_mode="once")
    return panel
