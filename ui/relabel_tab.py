"""The Relabel tab: a queue of doubtful faces, one button (or key) per answer, every answer kept.

The work is in :class:`RelabelDesk` (plain Python over :mod:`annotate`), tested without a
browser; :func:`build_relabel_tab` lays out the tab. Keyboard shortcuts (1-7, n, u, s,
Backspace) come from :data:`KEYBOARD_JS`, which the app passes to ``launch(js=...)``.

Who is who: each browser session keeps a :class:`Session`. Its first Start binds it to one
annotator (:data:`IDENTITIES`: the typed name, the ``--auth`` user, or the Hugging Face
account); answers and undo go under that annotator only, undo reverses only the answers this
session gave, and an answer counts only on the face this session holds the lease of. Another
name needs an explicit *Switch annotator*.

A lost database connection (a PostgreSQL server restarting): the store reconnects for a few
seconds on its own; past that the annotator reads what happened and what to do, never a
traceback. An answer that could not be saved stays in the session (:attr:`Session.pending`)
with the time it was given, and *Retry* (key r) sends it again: saved once, never lost, never twice.
"""

import functools
import html
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from annotate import STRATEGIES, AnnotateError, Queue, QueuedFace, Store, StoreBusyError
from annotate.errors import StoreUnavailableError
from annotate.export import export_corrections, export_ferplus
from annotate.labels import ANSWER_NAMES
from annotate.pace import PAUSE_SECONDS, annotator_pace
from annotate.probabilities import oof_probabilities
from fer_core.browse import PROBABILITY_COLUMNS
from fer_core.catalog import ModelCatalog
from fer_core.datasets import FaceTable
from fer_core.labels import DISPLAY_NAMES, EMOTIONS
from ui.limits import TempFiles

__all__ = ["RelabelDesk", "Settings", "Session", "ANSWERS", "IDENTITIES", "KEYBOARD_JS", "annotator_for",
           "build_relabel_tab"]

#: The answers, in button order, with their keyboard shortcut.
ANSWERS: tuple[tuple[str, str, str], ...] = (
    *[(emotion, ANSWER_NAMES[emotion], str(i + 1)) for i, emotion in enumerate(EMOTIONS)],
    ("not_a_face", ANSWER_NAMES["not_a_face"], "n"),
    ("unsure", ANSWER_NAMES["unsure"], "u"),
    ("skip", ANSWER_NAMES["skip"], "s"),
)
#: Out-of-fold probabilities of the bundled model's training faces (``python -m fer_core.train --folds``).
FACE_SCALE = 8
#: The Relabel exports: one folder per state of the answers, deleted 15 minutes after it was last handed out.
EXPORTS = TempFiles("relabel_exports", ttl_s=900)
MAX_NAME = 80
#: How the tab knows who is answering (see :func:`annotator_for`): the typed name (open), the
#: user of ``launch(auth=...)``, or the Hugging Face account (a Space with ``hf_oauth: true``).
IDENTITIES: tuple[str, ...] = ("name", "password", "huggingface")
#: Prefix of annotator names that come from a Hugging Face account.
HF_PREFIX = "hf:"

_OTHER_KEYS = ['"Backspace": "relabel-undo"', '"r": "relabel-retry"']
KEYBOARD_JS = """
() => {
  const keys = {%s};
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const id = keys[event.key === "Backspace" ? "Backspace" : event.key.toLowerCase()];
    if (!id) return;
    let button = document.getElementById(id);
    if (button && button.tagName !== "BUTTON") button = button.querySelector("button");
    if (!button || button.offsetParent === null || button.disabled) return;  // Relabel tab not shown
    event.preventDefault();
    button.click();
  });
}
""" % ", ".join([f'"{key}": "relabel-{answer}"' for answer, _, key in ANSWERS] + _OTHER_KEYS)  # noqa: UP031 - %s keeps the JavaScript's braces literal


@dataclass(frozen=True)
class Settings:
    """What the annotator chose above the face."""

    strategy: str = "likely_label_error"
    emotions: tuple[str, ...] = ()
    quality: tuple[float, float] = (0.0, 1.0)
    second_opinion: bool = False
    opinions_needed: int = 3

    def filters(self) -> dict[str, Any]:
        return {"emotions": list(self.emotions) or None,
                "quality_range": None if self.quality == (0.0, 1.0) else self.quality}


def check_name(name: Any) -> str:
    """The annotator's name as typed (surrounding spaces removed); refuses an empty or overlong one."""
    text = str(name or "").strip()
    if not text:
        raise AnnotateError("enter your name first: every answer is kept with the name of who gave it")
    if len(text) > MAX_NAME:
        raise AnnotateError(f"a name can have at most {MAX_NAME} characters")
    return text


def annotator_for(identity: str, typed: Any = None, *, username: str | None = None,
                  hf_username: str | None = None) -> str:
    """The annotator answering, by ``identity`` (one of :data:`IDENTITIES`).

    ``"name"``: the typed name (:func:`check_name`). ``"password"``: ``username``, the user
    signed in with the app's ``--auth`` (``gr.Request.username``). ``"huggingface"``:
    ``hf:<hf_username>``, the Hugging Face account (``gr.OAuthProfile.username``). Raises
    :class:`AnnotateError` when no one is signed in; ``typed`` is ignored then.
    """
    if identity == "name":
        return check_name(typed)
    if identity == "password":
        if not username:
            raise AnnotateError("sign in first: this app asks for a user name and password")
        return check_name(username)
    if identity == "huggingface":
        if not hf_username:
            raise AnnotateError("sign in with Hugging Face first (the button above the queue)")
        return check_name(HF_PREFIX + hf_username)
    raise ValueError(f"unknown identity {identity!r}; use one of {', '.join(IDENTITIES)}")


@dataclass
class Session:
    """One browser session of the tab (kept in a ``gr.State``): who it answers as, its face, its answers."""

    annotator: str | None = None  #: bound by the first Start; changed only by :meth:`RelabelDesk.switch`
    face: QueuedFace | None = None  #: the face in front of this session (leased to :attr:`annotator`)
    decisions: list[int] = field(default_factory=list)  #: ids of the answers this session gave, oldest first
    #: ``(sample_id, label, time given)`` of an answer not saved yet (the database could not be reached)
    pending: tuple[str, str, datetime] | None = None


class RelabelDesk:
    """The queue(s) of one data set and what the tab shows of a face.

    ``model_version`` is recorded with every answer. ``model_name``: the model whose opinion the
    table's probability columns hold (a :class:`~fer_core.catalog.ModelCatalog` name; default the
    bundled model's name); ``oof_model``: the model whose folds made the out-of-fold probabilities
    (:data:`annotate.probabilities.OOF_PATH`, shipped with the bundled default model; default its
    name). The face's description names the one whose probabilities it shows. ``catalog``: the
    app's models, for the tab's parts that choose or add one.
    """

    def __init__(self, store: Store, table: FaceTable, *, model_version: str, model_name: str | None = None,
                 oof_model: str | None = None, catalog: ModelCatalog | None = None) -> None:
        self.store = store
        self.table = table
        self.model_version = model_version
        self.catalog = catalog
        bundled = _bundled_model_name() if model_name is None or oof_model is None else ""
        self.model_name = model_name or bundled
        self.oof_model = oof_model or bundled
        own = [c for c in PROBABILITY_COLUMNS if c in table.frame]
        # Out-of-fold rows where the shipped file has the face, the table's own model's elsewhere.
        oof, self.oof_rows = oof_probabilities(table.frame.drop(columns=own), table.images)
        from_oof = np.zeros(len(table), dtype=bool) if oof is None else ~np.isnan(oof).any(axis=1)
        self._oof_ids = set(table.frame["sample_id"].to_numpy()[from_oof].tolist())
        self.probabilities = table.frame[own].to_numpy(dtype=np.float64) if len(own) == len(PROBABILITY_COLUMNS) \
            else oof
        if self.probabilities is not None and oof is not None:
            self.probabilities[from_oof] = oof[from_oof]
        columns = [c for c in ("sample_id", "emotion", "quality_score") if c in table.frame]
        self.queue = Queue(store, table.frame[columns], dataset=table.name, probabilities=self.probabilities,
                           images=table.images)
        self._selections: dict[bytes, Queue] = {}

    def strategies(self) -> list[tuple[str, str]]:
        return [(STRATEGIES[name].title, name) for name in self.queue.strategies()]

    def queue_for(self, selection: np.ndarray | None) -> Queue:
        """The whole data set's queue, or one over a selection sent from the Browse tab (kept for reuse)."""
        if selection is None:
            return self.queue
        key = np.asarray(selection, dtype=np.int64).tobytes()
        if key not in self._selections:
            rows = np.asarray(selection, dtype=np.int64)
            columns = [c for c in ("sample_id", "emotion", "quality_score") if c in self.table.frame]
            probs = None if self.probabilities is None else self.probabilities[rows]
            self._selections = {key: Queue(self.store, self.table.frame[columns].iloc[rows], dataset=self.table.name,
                                           probabilities=probs)}
        return self._selections[key]

    # ------------------------------------------------------------ actions

    def next_face(self, name: str, settings: Settings, selection: np.ndarray | None = None) -> QueuedFace | None:
        """Lease the next face of the queue to annotator ``name`` (no session: the session methods call this)."""
        queue = self.queue_for(selection)
        return queue.next_face(check_name(name), settings.strategy, second_opinion=settings.second_opinion,
                               opinions_needed=settings.opinions_needed, **settings.filters())

    def start(self, session: Session, who: str, settings: Settings,
              selection: np.ndarray | None = None) -> QueuedFace | None:
        """Bind ``session`` to annotator ``who`` on its first start, then lease it the next face.

        A session bound to someone else is refused (:class:`AnnotateError`): changing who
        answers is :meth:`switch`, never a silent edit of the name.
        """
        who = check_name(who)
        if session.annotator is None:
            session.annotator = who
        elif session.annotator != who:
            raise AnnotateError(_switch_message(session.annotator, who))
        session.face = self.next_face(who, settings, selection)
        return session.face

    def answer(self, session: Session, label: str, settings: Settings, selection: np.ndarray | None = None,
               *, who: str | None = None) -> QueuedFace | None:
        """Record the session's answer on its face (returns after the commit), then lease the next face.

        Refused (:class:`AnnotateError`, nothing recorded) before a start, when ``who`` (the
        name typed or signed in now) is not the session's annotator, or when the session no
        longer holds the face's lease (it ran out and someone else took the face).
        """
        annotator = self._bound(session, who)
        if session.face is None:
            raise AnnotateError("there is no face in front of you: press Start")
        sample_id = session.face.sample_id
        if session.pending is None or session.pending[:2] != (sample_id, label):
            session.pending = (sample_id, label, self.store.now())
        return self._send(session, annotator, settings, selection)

    def retry(self, session: Session, who: str, settings: Settings,
              selection: np.ndarray | None = None) -> QueuedFace | None:
        """After a lost connection: send the session's unsaved answer again, then lease the next face.

        With nothing unsaved it is a Start (the face in front of the session, or the next one).
        The answer keeps the time it was first given, so one that did reach the database
        before the connection broke is not recorded twice.
        """
        if session.annotator is None or session.pending is None:
            return self.start(session, who, settings, selection)
        return self._send(session, self._bound(session, who), settings, selection)

    def _send(self, session: Session, annotator: str, settings: Settings,
              selection: np.ndarray | None) -> QueuedFace | None:
        """Save :attr:`Session.pending` (refused: nothing recorded; database unreachable: kept), then the next face."""
        sample_id, label, given_at = session.pending
        try:
            record = self.queue_for(selection).submit(annotator, sample_id, label, model_version=self.model_version,
                                                      strategy=settings.strategy, require_lease=True,
                                                      created_at=given_at)
        except StoreUnavailableError as err:
            raise StoreUnavailableError(
                f"The annotation database cannot be reached (its server may be restarting). Your answer "
                f"“{ANSWER_NAMES.get(label, label)}” on this face is kept in this tab, not saved yet: press "
                "Retry (r) in a moment. Nothing is lost."
            ) from err
        except AnnotateError:
            session.pending = None  # refused for good (the lease went to someone else): nothing to retry
            raise
        session.pending = None
        session.decisions.append(record.id)
        session.face = None
        try:
            session.face = self.next_face(annotator, settings, selection)
        except StoreUnavailableError as err:
            raise StoreUnavailableError(
                f"Your answer “{ANSWER_NAMES.get(label, label)}” is saved. The annotation database cannot be "
                "reached for your next face (its server may be restarting): press Retry (r) in a moment."
            ) from err
        return session.face

    def undo(self, session: Session, selection: np.ndarray | None = None, *,
             who: str | None = None) -> QueuedFace | None:
        """Undo this session's latest answer (never another session's) and give its face back.

        ``None``: nothing to undo.
        """
        if session.annotator is None or not session.decisions:
            return None
        annotator = self._bound(session, who)
        try:
            face = self.queue_for(selection).undo(annotator, decision_id=session.decisions[-1])
        except StoreBusyError:
            raise
        except AnnotateError:
            session.decisions.pop()  # undone some other way already: the next undo goes one further back
            raise
        session.decisions.pop()
        session.face = face
        return face

    def switch(self, session: Session) -> Session:
        """A fresh, unbound session; the faces the old annotator held go back to the queue."""
        if session.annotator is not None:
            self.store.release(session.annotator)
        return Session()

    def _bound(self, session: Session, who: str | None) -> str:
        if session.annotator is None:
            raise AnnotateError("start the queue first")
        if who is not None and check_name(who) != session.annotator:
            raise AnnotateError(_switch_message(session.annotator, check_name(who)))
        return session.annotator

    def progress_text(self, name: str, settings: Settings, selection: np.ndarray | None = None) -> str:
        """Markdown: this annotator's answers and skips in this queue, what is left, everyone's progress, their
        pace (:mod:`annotate.pace`), agreement."""
        queue = self.queue_for(selection)
        progress = queue.progress(check_name(name), settings.strategy, second_opinion=settings.second_opinion,
                                  opinions_needed=settings.opinions_needed, **settings.filters())
        agreement = progress.agreement
        mine = progress.answered + progress.skipped
        others = (f"{progress.done:,} of {progress.total:,} faces have {settings.opinions_needed} answers"
                  if settings.second_opinion else f"{progress.done:,} of {progress.total:,} faces answered by anyone")
        parts = [f"**{mine:,}** done, **{progress.remaining:,}** left for you in this queue (of {progress.total:,}): "
                 f"you answered **{progress.answered:,}** and skipped **{progress.skipped:,}**",
                 others,
                 f"{html.escape(check_name(name))}: **{progress.annotator_today}** answers today"]
        pace = annotator_pace(self.store, check_name(name), dataset=self.table.name)
        if pace is not None:
            parts.append(f"your pace: **{pace.median_seconds:.1f} s** a face (median of your last "
                         f"{pace.answers:,} timed answers; pauses over {PAUSE_SECONDS:.0f} s left out)")
        if agreement.faces:
            kappa = "n/a" if agreement.kappa is None or np.isnan(agreement.kappa) else f"{agreement.kappa:.2f}"
            parts.append(f"agreement on {agreement.faces:,} faces with 2+ answers: {agreement.agreement:.0%}, "
                         f"Fleiss' kappa {kappa}")
        text = " · ".join(parts)
        note = queue.ranking_note(settings.strategy)
        return text + (f"\n\n*Queue order: {note}.*" if note else "")  # our own words: nothing to escape

    # ------------------------------------------------------------ display

    def picture(self, face: QueuedFace) -> np.ndarray | None:
        if face.row is None:
            return None
        row = int(np.flatnonzero(self.table.frame["sample_id"].to_numpy() == face.sample_id)[0])
        return np.kron(self.table.images[row], np.ones((FACE_SCALE, FACE_SCALE), dtype=np.uint8))

    def describe(self, face: QueuedFace) -> str:
        """Markdown shown beside the face: given label, the model's top three, quality, queue position."""
        lines = [f"### Given label: **{DISPLAY_NAMES.get(face.original_label or '', face.original_label)}**",
                 f"`{html.escape(face.sample_id)}`"]
        if face.undone_label:
            lines.insert(0, f"Undid your answer **{html.escape(face.undone_label)}** on this face: answer again.")
        if face.probabilities:
            top = sorted(face.probabilities.items(), key=lambda kv: -kv[1])[:3]
            lines.append("Model's top three: " + ", ".join(f"{DISPLAY_NAMES[k]} {v:.0%}" for k, v in top)
                         + f" ({html.escape(self.probabilities_source(face.sample_id))})")
        if face.quality_score is not None:
            row = np.flatnonzero(self.table.frame["sample_id"].to_numpy() == face.sample_id)
            quality = f"Quality {face.quality_score:.2f}"
            if len(row) and "edge_score" in self.table.frame:
                record = self.table.frame.iloc[int(row[0])]
                quality += " (" + ", ".join(f"{c.replace('_score', '')} {record[c]:.2f}" for c in
                                            ("edge_score", "contrast_score", "focus_score", "brightness_score")) + ")"
            lines.append(quality)
        if face.opinions:
            counts = self.store.vote_counts(self.table.name, face.sample_id)
            shown = ", ".join(f"{ANSWER_NAMES[label]} {n}" for label, n in
                              sorted(counts.items(), key=lambda kv: -kv[1]) if n)
            lines.append(f"{face.opinions} earlier answer(s) by others: {shown}")
        return "\n\n".join(lines)

    def probabilities_source(self, sample_id: str) -> str:
        """Whose probabilities the queue has for a face: the out-of-fold ones of the bundled model's folds, or
        the model's that the table's probability columns came from."""
        if sample_id in self._oof_ids:
            return f"out-of-fold probabilities of {self.oof_model}"
        return f"probabilities of {self.model_name}"

    def exports(self, folder: Path | None = None) -> list[Path]:
        """The corrections (CSV, Parquet) and FER+-style vote counts, in ``folder``.

        Without ``folder`` they go to :data:`EXPORTS`, under a key of the decisions so far: asked
        again with no new answer, the same files are handed out instead of written again.
        """
        if folder is not None:
            return self._write_exports(folder, existed=False)
        decisions = self.store.decisions(self.table.name)
        last = int(decisions["id"].max()) if len(decisions) else 0
        with EXPORTS.claim(EXPORTS.key(self.store.url, self.table.name, str(len(decisions)), str(last))) as (
                folder, existed):
            return self._write_exports(folder, existed=existed)

    def _write_exports(self, folder: Path, *, existed: bool) -> list[Path]:
        paths = [folder / "corrections.csv", folder / "corrections.parquet", folder / "ferplus_votes.csv"]
        if not (existed and all(p.is_file() for p in paths)):
            export_corrections(self.store, paths[0], self.table.name)
            export_corrections(self.store, paths[1], self.table.name)
            export_ferplus(self.store, paths[2], self.table.name)
        return paths


@functools.cache
def _bundled_model_name() -> str:
    """The name of the bundled default model (whose folds made the shipped out-of-fold probabilities)."""
    from fer_core.catalog import model_name
    from fer_core.weights import DEFAULT_WEIGHTS, read_card

    return model_name(DEFAULT_WEIGHTS, read_card(DEFAULT_WEIGHTS))


def _switch_message(bound: str, other: str) -> str:
    return (f"this tab answers as {bound!r}, not {other!r}: press 'Switch annotator' to answer under another name "
            "(your answers so far stay under yours)")


def settings_from_inputs(strategy: str, emotions: list[str], q_min: float, q_max: float, second: bool,
                         needed: float) -> Settings:
    if float(q_min) > float(q_max):
        raise AnnotateError(f"the quality range is empty: at least {q_min} but at most {q_max}")
    return Settings(strategy=strategy, emotions=tuple(emotions or ()), quality=(float(q_min), float(q_max)),
                    second_opinion=bool(second), opinions_needed=max(2, int(needed or 3)))


# ------------------------------------------------------------------------------ Gradio


def build_relabel_tab(desk: RelabelDesk, selection_state: Any = None, identity: str = "name", *,
                      catalog: Any = None, job: Any = None) -> None:
    """The Relabel tab's components and events; call inside ``gr.Blocks`` (and a ``gr.Tab``).

    ``selection_state``: the Browse tab's ``gr.State`` of selected rows, when that tab can send
    its selection here. ``identity`` (:data:`IDENTITIES`): ``"name"`` (the typed name; open to
    anyone), ``"password"`` (the app is launched with ``auth=``: the annotator is the signed-in
    user) or ``"huggingface"`` (a Space with ``hf_oauth: true``: a sign-in button, the annotator
    is ``hf:<username>``). With sign-in, exporting everyone's answers needs a signed-in user.
    Endpoints: ``relabel_start``, ``relabel_<answer>``, ``relabel_undo`` and ``relabel_retry``
    (parameters: name, faces, then the queue settings), ``relabel_switch`` and ``relabel_export``. ``catalog`` (default
    ``desk.catalog``) and ``job`` (an :class:`annotate.finetune.FineTuneJob` over the desk's data
    set) add the *Train on corrections* panel (:mod:`ui.train_panel`); without both it is not shown.
    """
    import gradio as gr

    if identity not in IDENTITIES:
        raise ValueError(f"unknown identity {identity!r}; use one of {', '.join(IDENTITIES)}")
    model = html.escape(desk.model_name)
    source_note = (f"Model probabilities: out-of-fold for {desk.oof_rows:,} training faces, {model}'s "
                   "for the others." if desk.oof_rows else
                   f"Model probabilities: {model}'s (on its own training faces they are overconfident).")
    prompt = "Enter your name and start the queue." if identity == "name" else "Sign in, then start the queue."
    on = _handlers(desk, identity, prompt)
    with gr.Row():
        if identity == "huggingface":
            gr.LoginButton(scale=1)
        if identity == "name":
            name = gr.Textbox(label="Your name", placeholder="kept with every answer", max_length=MAX_NAME, scale=2)
        else:
            name = gr.Textbox(on["signed_in"], label="Signed in as", placeholder="not signed in", interactive=False,
                              scale=2)
        strategy = gr.Dropdown(desk.strategies(), value=desk.queue.strategies()[0], label="Queue", scale=2)
    ui = _tab_layout(desk, source_note, prompt)
    session = gr.State(Session())
    selection_input = selection_state if selection_state is not None else gr.State(None)
    inputs = [session, name, ui["scope"], selection_input, strategy, *ui["settings"]]
    outputs = [ui["image"], ui["text"], ui["progress"], session]
    view = dict(fn=functools.partial(_identity_view, identity), inputs=[session], outputs=[name, ui["switch"]],
                api_visibility="private")
    ui["start"].click(on["start"], inputs, outputs, api_name="relabel_start").then(**view)
    for (answer, _, _), button in zip(ANSWERS, ui["answers"]):
        button.click(on["answer"](answer), inputs, outputs, api_name=f"relabel_{answer}", show_progress="hidden",
                     trigger_mode="once")
    ui["undo"].click(on["undo"], inputs, outputs, api_name="relabel_undo", show_progress="hidden", trigger_mode="once")
    ui["retry"].click(on["retry"], inputs, outputs, api_name="relabel_retry", show_progress="hidden",
                      trigger_mode="once").then(**view)
    ui["switch"].click(on["switch"], [session], [session, *outputs[:3]], api_name="relabel_switch").then(**view)
    ui["export"].click(on["export"], None, [ui["files"]], api_name="relabel_export")
    from ui.train_panel import build_train_panel

    build_train_panel(desk, catalog=catalog if catalog is not None else getattr(desk, "catalog", None), job=job,
                      identity=identity, name=name)


def _handlers(desk: RelabelDesk, identity: str, prompt: str) -> dict[str, Any]:
    """The tab's event functions. Gradio passes each the ``gr.Request`` and ``gr.OAuthProfile``
    it asks for by type (who is signed in), then the inputs: the session, the name box, the
    faces radio, the Browse selection and the queue settings."""
    import gradio as gr

    def who(typed: Any, request: Any, profile: Any) -> str:
        return annotator_for(identity, typed, username=getattr(request, "username", None),
                             hf_username=getattr(profile, "username", None))

    def signed_in(request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> str:
        """The signed-in annotator for the name box, on every page load ("" when no one is)."""
        try:
            return who(None, request, profile)
        except AnnotateError:
            return ""

    def show(face: QueuedFace | None, state: Session, settings: Settings, selection):
        text = desk.progress_text(state.annotator, settings, selection)
        if face is None:
            return None, "**Nothing left in this queue for you.** Change the queue or its filters.", text, state
        return desk.picture(face), desk.describe(face), text, state

    @_guarded
    def start(request: gr.Request, profile: gr.OAuthProfile | None, state, typed, scope_value, selection, *values):
        settings = settings_from_inputs(*values)
        chosen = _selection_of(scope_value, selection)
        return show(desk.start(state, who(typed, request, profile), settings, chosen), state, settings, chosen)

    def answer(label):
        @_guarded
        def run(request: gr.Request, profile: gr.OAuthProfile | None, state, typed, scope_value, selection, *values):
            settings = settings_from_inputs(*values)
            chosen = _selection_of(scope_value, selection)
            face = desk.answer(state, label, settings, chosen, who=who(typed, request, profile))
            return show(face, state, settings, chosen)
        return run

    @_guarded
    def undo(request: gr.Request, profile: gr.OAuthProfile | None, state, typed, scope_value, selection, *values):
        settings = settings_from_inputs(*values)
        chosen = _selection_of(scope_value, selection)
        face = desk.undo(state, chosen, who=who(typed, request, profile) if state.annotator else None)
        if face is None:
            gr.Info("Nothing to undo: this tab has no answer of yours left to undo.")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return show(face, state, settings, chosen)

    @_guarded
    def retry(request: gr.Request, profile: gr.OAuthProfile | None, state, typed, scope_value, selection, *values):
        settings = settings_from_inputs(*values)
        chosen = _selection_of(scope_value, selection)
        return show(desk.retry(state, who(typed, request, profile), settings, chosen), state, settings, chosen)

    @_guarded
    def switch(state):
        return desk.switch(state), None, prompt, ""

    @_guarded
    def export(request: gr.Request, profile: gr.OAuthProfile | None):
        if identity != "name":
            who(None, request, profile)  # everyone's answers go to signed-in users only
        return [str(p) for p in desk.exports()]

    return {"signed_in": signed_in, "start": start, "answer": answer, "undo": undo, "retry": retry,
            "switch": switch, "export": export}


def _selection_of(scope_value: str, selection: Any) -> np.ndarray | None:
    """The Browse tab's selected rows when the tab works on them, else ``None`` (the whole data set)."""
    if scope_value != "whole data set":
        if selection is None or len(selection) == 0:
            raise AnnotateError("the Browse tab has no selection yet: filter there and press "
                                "'Send the selection to the relabel queue'")
        return np.asarray(selection)
    return None


def _identity_view(identity: str, state: Session) -> tuple[Any, Any]:
    """Updates of the name box and the switch button: a bound session's name is locked until it switches."""
    import gradio as gr

    bound = state.annotator is not None
    if identity != "name":
        return gr.skip(), gr.update(visible=bound)
    box = gr.update(interactive=False, value=state.annotator) if bound else gr.update(interactive=True)
    return box, gr.update(visible=bound)


def _guarded(fn):
    """``fn`` with :class:`FERError` (AnnotateError, bad settings, a database out of reach) shown as a
    message, never a traceback; another database error too, with what to do.

    ``functools.wraps`` keeps ``fn``'s signature, so Gradio still passes ``gr.Request`` and
    ``gr.OAuthProfile`` to it. The message is escaped: Gradio renders it as HTML.
    """
    import gradio as gr
    from sqlalchemy.exc import DBAPIError

    from fer_core._validation import FERError

    @functools.wraps(fn)
    def run(*args):
        try:
            return fn(*args)
        except FERError as err:
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        except DBAPIError as err:
            reason = html.escape((str(err.orig).strip().splitlines() or ["no reason given"])[0], quote=False)
            raise gr.Error(f"The annotation database failed ({reason}). An answer not saved is kept in this tab: "
                           "press Retry (r) in a moment.", print_exception=False) from None
    return run


def _tab_layout(desk: RelabelDesk, source_note: str, prompt: str) -> dict[str, Any]:
    """The tab's components below the name and queue row, by role."""
    import gradio as gr

    ui: dict[str, Any] = {}
    # The filters fold away: on a phone they would fill two screens before the first face.
    with gr.Accordion("Filters: given label, quality, second opinion, faces", open=False):
        emotions = gr.CheckboxGroup(list(EMOTIONS), label="Given label (none ticked: all)")
        with gr.Row():
            q_min = gr.Slider(0, 1, value=0, step=0.01, label="Quality at least")
            q_max = gr.Slider(0, 1, value=1, step=0.01, label="Quality at most")
            second = gr.Checkbox(False, label="Second opinion",
                                 info="Show faces others answered, until they have N answers")
            needed = gr.Number(3, label="N answers per face", precision=0, minimum=2, maximum=20)
            ui["scope"] = gr.Radio(["whole data set", "Browse tab's selection"], value="whole data set", label="Faces")
    ui["settings"] = [emotions, q_min, q_max, second, needed]
    with gr.Row():
        ui["start"] = gr.Button("Start / refresh the queue", variant="primary", scale=3)
        ui["switch"] = gr.Button("Switch annotator", size="sm", visible=False, scale=1)
    gr.Markdown(source_note + " Keys: 1-7 emotions, n not a face, u unsure, s skip, Backspace undo.")
    ui["progress"] = gr.Markdown()
    with gr.Row(equal_height=False):
        ui["image"] = gr.Image(label="Face", interactive=False, height=400, format="png", scale=3)
        with gr.Column(scale=3):
            ui["text"] = gr.Markdown(prompt)
            with gr.Row():
                # min_width small enough for the seven emotions to share one row beside the face.
                ui["answers"] = [gr.Button(f"{title} ({key})", elem_id=f"relabel-{answer}", size="sm",
                                           variant="secondary", min_width=60)
                                 for answer, title, key in ANSWERS[:7]]
            with gr.Row():
                ui["answers"] += [gr.Button(f"{title} ({key})", elem_id=f"relabel-{answer}", size="sm",
                                            variant="secondary")
                                  for answer, title, key in ANSWERS[7:]]
                ui["undo"] = gr.Button("Undo (Backspace)", elem_id="relabel-undo", size="sm")
                ui["retry"] = gr.Button("Retry (r)", elem_id="relabel-retry", size="sm")
    with gr.Accordion("Export the corrections", open=False):
        ui["export"] = gr.Button("Prepare the exports", size="sm")
        ui["files"] = gr.File(label="corrections (CSV, Parquet) and FER+-style vote counts", file_count="multiple",
                              interactive=False)
    return ui
