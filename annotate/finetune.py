"""Fine-tune a model on the store's corrections in the background: one run at a time, its state on disk.

A :class:`FineTuneJob` belongs to one app: one data set (the Relabel tab's, read from a path the
training command can read too) and one folder of runs. :meth:`FineTuneJob.start`

1. writes the store's corrections of the data set (:func:`annotate.export.corrections`, the
   file ``python -m annotate.corrections`` writes) and, where the store holds votes for val
   faces, a val label file of their resolved labels (:func:`fer_core.label_sets.write_label_file`;
   a tie, *not a face* or *unsure* leaves a face out of that set);
2. starts ``python -m fer_core.train DATA --init WEIGHTS --corrections FILE [--val-labels FILE]
   ...`` (:meth:`FineTuneSettings.train_args`) in a process group of its own, at a lower CPU
   priority, its output in ``train.log``;
3. a thread waits for it, exports the new weights to the ONNX file serving needs
   (``python -m tools.export_onnx``), deletes the checkpoints, and measures the starting model and
   the new one on the val faces against both label sets (accuracy, macro-F1, as served).

Each run is a folder ``ROOT/<run id>/`` whose ``state.json`` says what it is:

==============  =====================================================================================
``running``     the training process runs (``pid``, its process group, who started it and when)
``finishing``   exporting to ONNX and measuring
``finished``    ``model.safetensors`` with its card and ONNX file, and ``figures``; may be served
``failed``      the command stopped with an error (the log says why); partial files removed
``cancelled``   cancelled by someone; partial files removed
``interrupted`` the server stopped or restarted during the run; partial files removed
==============  =====================================================================================

Only ``finished`` runs hold a model, and only a complete one: the partial files of every other
run are deleted, leaving ``state.json`` and ``train.log``. A new job on a folder whose run is
still marked running by a server that is gone (the server restarted) stops that run's process
if it still lives, and marks it ``interrupted``; the job stops its own run when the Python
process exits. At most ``keep`` ended runs are kept (:meth:`FineTuneJob.prune`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_core._io import atomic_write_text
from fer_core.config import SAMPLE_PATH
from fer_core.labels import EMOTIONS

from .errors import AnnotateError
from .export import corrections, write_table

if TYPE_CHECKING:
    from fer_core.datasets import FaceTable

    from .store import Store

__all__ = ["FineTuneSettings", "FineTuneJob", "Run", "Progress", "ACTIVE", "RESTART_MESSAGE", "VAL_LABELS_NAME",
           "measure", "shown_time"]

#: Statuses of a run whose process (training, or the ONNX export after it) may still run.
ACTIVE: tuple[str, ...] = ("running", "finishing")
#: What an ``interrupted`` run says.
RESTART_MESSAGE = "the server restarted during this training; it was stopped"
#: The name of the val label set made of the store's answers (the card's ``val_by_labels`` key).
VAL_LABELS_NAME = "answers"
#: Fewest training faces a fine-tune starts on.
MIN_TRAIN_FACES = 100
#: Fewest val faces a fine-tune is measured on.
MIN_VAL_FACES = 20
#: Ended runs kept (the newest); older ones are deleted, except those still served.
KEEP_RUNS = 3
#: Seconds a process group has between SIGTERM and SIGKILL.
KILL_GRACE_S = 10.0
#: The files a finished run keeps; the checkpoints and the best epoch's copy are deleted.
_FINISHED_FILES = ("state.json", "train.log", "corrections.csv", "val_labels.csv", "log.jsonl", "log.csv",
                   "curve.png", "model.safetensors", "model.json", "model.onnx")
#: The files an unfinished run keeps: what it was and what it printed.
_ENDED_FILES = ("state.json", "train.log")
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FineTuneSettings:
    """The fine-tuning recipe: a few epochs at a low learning rate, from the served model's weights.

    ``max_steps`` (per epoch) and ``extra_args`` (more ``fer_core.train`` flags) are for quick
    checks; ``threads`` None takes half the CPU cores, leaving the rest to serving.
    """

    epochs: int = 3
    lr: float = 3e-4
    soft_labels: bool = False
    max_steps: int | None = None
    threads: int | None = None
    seed: int = 0
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if int(self.epochs) < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be above 0, got {self.lr}")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be at least 1 (or None), got {self.max_steps}")
        if not all(isinstance(a, str) for a in self.extra_args):
            raise TypeError(f"extra_args must be strings, got {self.extra_args!r}")

    def train_args(self) -> list[str]:
        """The recipe's ``fer_core.train`` flags."""
        threads = self.threads or max(1, (os.cpu_count() or 2) // 2)
        args = ["--epochs", str(self.epochs), "--lr", str(self.lr), "--warmup-epochs", "0", "--time-budget", "none",
                "--seed", str(self.seed), "--threads", str(threads), "--no-progress"]
        if self.soft_labels:
            args.append("--soft-labels")
        if self.max_steps:
            args += ["--max-steps", str(self.max_steps)]
        return args + list(self.extra_args)


@dataclass(frozen=True)
class Progress:
    """Where a run is, from its ``log.jsonl``: the last epoch done and its val figures."""

    epoch: int  #: epochs done (0 before the first ends)
    epochs: int  #: epochs planned
    train_loss: float | None = None
    val: dict[str, dict[str, float]] = field(default_factory=dict)  #: label set -> accuracy, macro_f1


@dataclass(frozen=True)
class Run:
    """One run of a job, as its ``state.json`` says (:data:`ACTIVE` statuses, then the ended ones)."""

    folder: Path
    run_id: str
    status: str
    started_by: str
    started_at: str  #: ISO 8601, UTC
    dataset: str
    epochs: int
    init: str  #: the weights it started from
    init_name: str  #: their name in the app's catalog
    model_name: str  #: the name the new model gets in the catalog
    command: list[str] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)  #: train/val faces with votes, relabelled, labelled
    pid: int | None = None  #: the running process (the training, then the ONNX export); its process group
    proc_start: str | None = None  #: that process's start time (``/proc``), telling it from a reused pid
    owner: dict[str, Any] = field(default_factory=dict)  #: the job (server process) that runs it
    message: str = ""
    ended_at: str | None = None
    ended_by: str | None = None
    figures: dict[str, Any] | None = None  #: "current" and "new": name, then label set -> figures
    served_by: str | None = None
    served_at: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def weights(self) -> Path:
        return self.folder / "model.safetensors"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("folder")
        return data

    @classmethod
    def read(cls, folder: Path) -> Run | None:
        """The run in ``folder``; None where its state is missing or unreadable."""
        try:
            data = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)} - {"folder"}
            return cls(folder=folder, **{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError):
            return None


# ------------------------------------------------------------------------------ processes


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc/<pid>/stat``, in clock ticks since boot); None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    parts = text[text.rindex(")") + 2:].split()
    return parts[19] if len(parts) > 19 else None


def _alive(pid: int | None, start: str | None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, where ``start`` is known, is the one that started then."""
    if not pid:
        return False
    if Path("/proc/self/stat").is_file():
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        parts = text[text.rindex(")") + 2:].split()
        return parts[0] != "Z" and (start is None or (len(parts) > 19 and parts[19] == start))
    try:  # no /proc: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _verified(pid: int | None, start: str | None) -> bool:
    """Whether ``pid`` is alive and provably the process recorded (its start time matches)."""
    return start is not None and _alive(pid, start)


def _kill_group(pid: int, popen: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL after :data:`KILL_GRACE_S` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline:
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=0.2)
                if popen.returncode is not None:
                    break
            elif not _alive(pid, None):
                break
            else:
                time.sleep(0.2)
        else:
            continue
        # The leader is gone; whatever it started in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        return


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ measuring


def measure(weights: str | os.PathLike[str], faces: FaceTable, label_sets: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy and macro-F1 of the model ``weights`` as served (ONNX) on ``faces``, per label set.

    ``label_sets`` maps a set's name to (N,) FER2013 ids, -1 where that set gives a face no
    label. Returns ``{name: {"faces", "accuracy", "macro_f1"}}``.
    """
    from fer_core.evaluate import compute_metrics
    from fer_core.predict import Predictor

    predictor = Predictor(weights, threads=1)
    ids = np.array([EMOTIONS.index(n) for n in predictor.labels], dtype=np.int64)
    predicted = ids[predictor.predict_faces(faces.images).argmax(axis=1)]
    out = {}
    for name, labels in label_sets.items():
        labels = np.asarray(labels, dtype=np.int64)
        known = labels >= 0
        metrics = compute_metrics(labels[known], predicted[known], list(EMOTIONS))
        out[name] = {"faces": metrics["n"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    return out


# ------------------------------------------------------------------------------ the job


class FineTuneJob:
    """The fine-tunes of one app: one data set, one folder of runs, one run at a time.

    Parameters
    ----------
    root : path
        The runs' folder (the app's: ``<cache dir>/fine_tune``); created when missing.
    table : FaceTable
        The data set the Relabel tab annotates (its ``name`` is the store's data set name).
    data : path, optional
        Where ``table`` was read from (the app's ``--data``): the training command reads its
        train split (and val split, without ``val``). None (the bundled sample): the job
        refuses to start, saying what it needs.
    val : path, optional
        Val faces of their own (their val split, else all of them); default: ``data``'s val split.
    settings : FineTuneSettings
        The recipe (``max_steps`` and ``extra_args`` for quick checks).
    keep : int, default=KEEP_RUNS
        Ended runs kept, newest first.
    min_train_faces : int, default=MIN_TRAIN_FACES
    """

    _instances: weakref.WeakSet[FineTuneJob] = weakref.WeakSet()

    def __init__(self, root: str | os.PathLike[str], table: FaceTable, *, data: str | os.PathLike[str] | None,
                 val: str | os.PathLike[str] | None = None, settings: FineTuneSettings | None = None,
                 keep: int = KEEP_RUNS, min_train_faces: int = MIN_TRAIN_FACES) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.table = table
        self.dataset = table.name
        self.data = None if data is None else str(data)
        self.val = None if val is None else str(val)
        self.settings = settings or FineTuneSettings()
        self.keep = max(1, int(keep))
        self.min_train_faces = int(min_train_faces)
        self._token = secrets.token_hex(8)
        self._owner = {"pid": os.getpid(), "start": _proc_start(os.getpid()), "token": self._token}
        self._lock = threading.RLock()
        self._depth = 0  #: how deep this process holds the folder's lock (only under ``_lock``)
        self._procs: dict[str, subprocess.Popen] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._val_faces: FaceTable | None = None
        FineTuneJob._instances.add(self)
        with self._locked():
            for run in self._all_runs():
                self._settle(run)

    # ------------------------------------------------------------ what it trains on

    def train_rows(self) -> np.ndarray:
        """Rows of :attr:`table` the training command trains on: its train split (else all but val)."""
        split = self.table.frame["split"].to_numpy()
        return np.flatnonzero(split == "train") if (split == "train").any() else np.flatnonzero(split != "val")

    def val_faces(self) -> FaceTable:
        """The val faces the training command measures on (``val``'s, else :attr:`table`'s val split)."""
        if self._val_faces is None:
            if self.val is None:
                self._val_faces = self.table.split("val")
            else:
                from fer_core.datasets import load_faces

                faces = load_faces(self.val, progress=False)
                self._val_faces = faces.split("val") if (faces.frame["split"] == "val").any() else faces
        return self._val_faces

    def problem(self) -> str | None:
        """Why a fine-tune cannot start here (a sentence for the page), or None when it can."""
        import importlib.util

        if self.data is None or Path(self.data).expanduser().resolve() == SAMPLE_PATH.resolve():
            return ("Training needs the data set on disk, with a train split the training command can read: start "
                    "the app with --data PATH (a Kaggle-layout folder with train/ and val/, a fer2013.csv or a "
                    "Parquet file). The bundled sample is too small to train on.")
        if importlib.util.find_spec("torch") is None:
            from fer_core._torch import torch_missing_message

            return torch_missing_message("Training on corrections") + "."
        n_train = len(self.train_rows())
        if n_train < self.min_train_faces:
            return (f"The data set {self.dataset!r} has {n_train:,} training faces; training needs at least "
                    f"{self.min_train_faces:,}.")
        if self.val is None and not (self.table.frame["split"] == "val").any():
            return (f"The data set {self.dataset!r} has no val split to measure the new model on: open a data set "
                    "with train and val splits (a folder with train/ and val/, or fer2013.csv's PublicTest rows).")
        n_val = len(self.val_faces())
        if n_val < MIN_VAL_FACES:
            return f"The val split has {n_val:,} faces; measuring a model needs at least {MIN_VAL_FACES}."
        return None

    def answer_counts(self, store: Store) -> dict[str, int]:
        """Faces with answers in the store: training faces, how many of them relabelled, val faces, labelled val."""
        resolved = store.resolved_labels(self.dataset)
        train_ids = set(self.table.frame["sample_id"].to_numpy()[self.train_rows()].astype(str))
        on_train = resolved[resolved["sample_id"].astype(str).isin(train_ids)]
        labels = self._val_labels(resolved if self.val is None else store.resolved_labels(self.val_faces().name))
        return {"train_faces": len(on_train), "relabelled": int(on_train["changed"].sum()),
                "dropped": int((on_train["resolved_label"] == "not_a_face").sum()),
                "val_faces": 0 if labels is None else len(labels[0]),
                "val_labelled": 0 if labels is None else int((labels[1] >= 0).sum())}

    def _val_labels(self, resolved: Any) -> tuple[list[str], np.ndarray] | None:
        """Sample ids of the val faces with answers and their label in the answers' set (-1: none); None: no answer."""
        val = self.val_faces()
        on_val = resolved[(resolved["dataset"] == val.name)
                          & resolved["sample_id"].astype(str).isin(set(val.frame["sample_id"].astype(str)))]
        if not len(on_val):
            return None
        labels = np.array([EMOTIONS.index(r) if r in EMOTIONS and not unsure else -1 for r, unsure in
                           zip(on_val["resolved_label"], on_val["judged_unsure"])], dtype=np.int64)
        return [str(s) for s in on_val["sample_id"]], labels

    # ------------------------------------------------------------ runs on disk

    def _all_runs(self) -> list[Run]:
        runs = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            run = Run.read(folder)
            if run is not None:
                runs.append(run)
        return sorted(runs, key=lambda r: (r.started_at, r.run_id), reverse=True)

    def runs(self) -> list[Run]:
        """Every run in the folder, newest first (runs of a server that is gone marked ``interrupted``)."""
        with self._locked():
            return [self._settle(run) for run in self._all_runs()]

    def latest(self) -> Run | None:
        """The newest run, or None."""
        runs = self.runs()
        return runs[0] if runs else None

    def get(self, run_id: str) -> Run:
        """The run ``run_id``; :class:`AnnotateError` when there is none."""
        for run in self.runs():
            if run.run_id == run_id:
                return run
        raise AnnotateError(f"no training run {str(run_id)[:40]!r} (it was discarded, or deleted as an old run)")

    def active(self) -> Run | None:
        """The run in progress, or None."""
        return next((run for run in self.runs() if run.active), None)

    def progress(self, run: Run) -> Progress:
        """Epochs done of the run's planned ones, and the last epoch's loss and val figures (``log.jsonl``)."""
        rows = []
        with contextlib.suppress(OSError):
            for line in (run.folder / "log.jsonl").read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    rows.append(json.loads(line))
        rows = [r for r in rows if isinstance(r, dict) and "epoch" in r]
        if not rows:
            return Progress(0, run.epochs)
        last = rows[-1]
        val = {"original": {"accuracy": last.get("val_accuracy"), "macro_f1": last.get("val_macro_f1")}}
        if "val2_accuracy" in last:
            val[VAL_LABELS_NAME] = {"accuracy": last.get("val2_accuracy"), "macro_f1": last.get("val2_macro_f1")}
        return Progress(int(last["epoch"]), run.epochs, last.get("train_loss"), val)

    def log_tail(self, run: Run, *, max_bytes: int = 4000) -> str:
        """The last lines of the run's ``train.log`` (at most ``max_bytes``, whole lines)."""
        path = run.folder / "train.log"
        try:
            with path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - max_bytes))
                data = handle.read()
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        if len(data) >= max_bytes and len(lines) > 1:
            lines = lines[1:]  # the first is cut
        return "\n".join(line.rsplit("\r", 1)[-1] for line in lines).strip("\n")

    # ------------------------------------------------------------ start, cancel, serve, discard

    def start(self, store: Store, *, init: str | os.PathLike[str], init_name: str, started_by: str,
              protect: Iterable[str | os.PathLike[str]] = ()) -> Run:
        """Write the corrections and val labels, start the training in the background, return the run.

        ``init``: the weights to fine-tune (the served model, ``init_name`` in the catalog).
        ``protect``: weights the pruning of old runs must keep (the models the app serves).
        Raises :class:`AnnotateError` when the job cannot train (:meth:`problem`), when a run is
        in progress (saying who started it and when), or when the store holds no answer on the
        training faces.
        """
        problem = self.problem()
        if problem:
            raise AnnotateError(problem)
        init = Path(init)
        card = self._init_card(init)
        with self._locked():
            running = self.active()
            if running is not None:
                raise AnnotateError(f"a training is already running: started by {running.started_by} at "
                                    f"{shown_time(running.started_at)} (one at a time; wait for it or cancel it)")
            self.prune(protect=[*protect, init])
            run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
            folder = self.root / run_id
            folder.mkdir()
            try:
                answers, val_labels = self._write_inputs(store, folder)
                command = self.command(folder, init=init, architecture=str(card["architecture"]),
                                       val_labels=val_labels)
                proc = self._spawn(command, folder)
                run = Run(folder=folder, run_id=run_id, status="running", started_by=started_by,
                          started_at=_now(), dataset=self.dataset, epochs=self.settings.epochs, init=str(init),
                          init_name=init_name, model_name=f"fine-tuned-{run_id}", command=command, answers=answers,
                          pid=proc.pid, proc_start=_proc_start(proc.pid), owner=dict(self._owner))
                self._save(run)
            except BaseException:
                if "proc" in locals():
                    _kill_group(proc.pid, proc)
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._procs[run_id] = proc
            thread = threading.Thread(target=self._watch, args=(run_id, proc, val_labels is not None),
                                      name=f"fine-tune {run_id}", daemon=True)
            self._threads[run_id] = thread
            thread.start()
            return run

    def cancel(self, *, by: str) -> Run:
        """Stop the run in progress (its whole process group), delete its partial files, mark it ``cancelled``."""
        with self._locked():
            run = self.active()
            if run is None:
                raise AnnotateError("no training is running")
            self._stop(run)
            return self._end(run, "cancelled", message=f"cancelled by {by}", by=by)

    def mark_served(self, run_id: str, *, by: str) -> Run:
        """Record that the finished run ``run_id`` is served now (the caller added it to the catalog)."""
        with self._locked():
            run = self.get(run_id)
            if run.status != "finished":
                raise AnnotateError(f"the run is {run.status}, not finished: it has no model to serve")
            run = replace(run, served_by=by, served_at=_now())
            self._save(run)
            return run

    def discard(self, run_id: str) -> None:
        """Delete the ended run ``run_id`` and its files (the caller takes its model out of the catalog first)."""
        with self._locked():
            run = self.get(run_id)
            if run.active:
                raise AnnotateError("this training is still running: cancel it instead")
            shutil.rmtree(run.folder, ignore_errors=True)

    def prune(self, *, protect: Iterable[str | os.PathLike[str]] = ()) -> list[Run]:
        """Delete ended runs beyond the newest :attr:`keep` (and folders without a state); returns those deleted.

        Runs whose weights are in ``protect`` (served models) are kept and not counted.
        """
        kept_weights = {Path(p).resolve() for p in protect}
        with self._locked():
            removed = []
            known = set()
            ended = []
            for run in self.runs():
                known.add(run.folder.name)
                if not run.active and run.weights.resolve() not in kept_weights:
                    ended.append(run)
            for run in ended[self.keep:]:
                shutil.rmtree(run.folder, ignore_errors=True)
                removed.append(run)
            for folder in self.root.iterdir():
                if folder.is_dir() and not folder.name.startswith(".") and folder.name not in known:
                    shutil.rmtree(folder, ignore_errors=True)  # a start that died before its state was written
            return removed

    def wait(self, timeout: float | None = None) -> Run | None:
        """Wait until this job's run in progress ends (for scripts and tests); the latest run."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.latest()

    # ------------------------------------------------------------ commands

    def command(self, folder: Path, *, init: Path, architecture: str = "fer_vgg",
                val_labels: Path | None = None) -> list[str]:
        """The ``python -m fer_core.train`` command of a fine-tune into ``folder``."""
        command = [sys.executable, "-m", "fer_core.train", str(self.data), "--out", str(folder), "--init", str(init),
                   "--model", architecture, "--corrections", str(folder / "corrections.csv"),
                   "--corrections-dataset", self.dataset]
        if self.val:
            command += ["--val", self.val]
        if val_labels is not None:
            command += ["--val-labels", str(val_labels), "--val-labels-name", VAL_LABELS_NAME]
        return command + self.settings.train_args()

    def full_run_commands(self, store: Store, *, out: str = "runs/corrected") -> str:
        """The two command lines of a full training run on the store's corrections (the bundled model's recipe)."""
        from sqlalchemy.engine import make_url

        url = make_url(store.url)
        # A server's URL is shown with its password masked; the command reads it from FER_DB_URL instead.
        db = (shlex.quote(url.database) if url.get_backend_name() == "sqlite" and url.database
              else '"$FER_DB_URL"')
        lines = [f"python -m annotate.corrections --db {db} "
                 + shlex.join(["--dataset", self.dataset, "--out", "corrections.csv"])]
        train = ["python", "-m", "fer_core.train", str(self.data or "DATA"), *(["--val", self.val] if self.val else []),
                 "--out", out, "--corrections", "corrections.csv", "--corrections-dataset", self.dataset]
        latest = next((r for r in self.runs() if (r.folder / "val_labels.csv").is_file()), None)
        if latest is not None:
            lines.append(f"# val_labels.csv: the answers on val faces, as the panel's last run wrote them "
                         f"(copy it: old runs are deleted): {shlex.quote(str(latest.folder / 'val_labels.csv'))}")
            train += ["--val-labels", "val_labels.csv", "--val-labels-name", VAL_LABELS_NAME]
        lines.append(shlex.join(train))
        return "\n".join(lines)

    # ------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This job's lock, and a file lock on the folder (another app process on the same folder waits)."""
        with self._lock:
            try:
                import fcntl
            except ImportError:  # no file locks: one process per folder
                fcntl = None
            if fcntl is None or self._depth:  # held already by this thread (flock is per open file)
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            with open(self.root / ".lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _save(self, run: Run) -> None:
        atomic_write_text(run.folder / "state.json", json.dumps(run.to_dict(), indent=1) + "\n", encoding="utf-8")

    def _settle(self, run: Run) -> Run:
        """``run`` as it is: an active run of a server that is gone is stopped and marked ``interrupted``."""
        if not run.active:
            return run
        owner = run.owner or {}
        if owner.get("token") == self._token:
            watcher = self._threads.get(run.run_id)
            if watcher is not None and watcher.is_alive():
                return run
            self._stop(run)  # its watcher died: nothing would ever end it
            return self._end(run, "failed", message="the run's monitor stopped unexpectedly; start it again")
        if owner.get("pid") != os.getpid() and _alive(owner.get("pid"), owner.get("start")):
            return run  # another app process on this folder runs it
        if _verified(run.pid, run.proc_start):
            _kill_group(int(run.pid))
        return self._end(run, "interrupted", message=RESTART_MESSAGE)

    def _end(self, run: Run, status: str, *, message: str = "", by: str | None = None,
             figures: dict[str, Any] | None = None) -> Run:
        """Write the run's final state and delete what that state does not keep."""
        keep = _FINISHED_FILES if status == "finished" else _ENDED_FILES
        run = replace(run, status=status, message=message, ended_at=_now(), ended_by=by, pid=None, proc_start=None,
                      figures=figures if status == "finished" else None)
        self._save(run)
        for path in run.folder.iterdir():
            if path.name not in keep:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        return run

    def _stop(self, run: Run) -> None:
        """Kill the run's process group (this job's child, or a verified process of another)."""
        proc = self._procs.get(run.run_id)
        if proc is not None and proc.pid == run.pid:
            if proc.poll() is None:
                _kill_group(proc.pid, proc)
        elif _verified(run.pid, run.proc_start):
            _kill_group(int(run.pid))

    def _init_card(self, init: Path) -> dict[str, Any]:
        from fer_core.model import list_models
        from fer_core.weights import read_card

        card = read_card(init)
        if list(card.get("labels", [])) != list(EMOTIONS):
            raise AnnotateError(f"the served model predicts {card.get('labels')}; training on corrections fine-tunes "
                                f"models of the seven emotions ({', '.join(EMOTIONS)})")
        if card.get("architecture") not in list_models():
            raise AnnotateError(f"the served model's architecture {card.get('architecture')!r} cannot be trained "
                                f"here (known: {', '.join(list_models())})")
        return card

    def _write_inputs(self, store: Store, folder: Path) -> tuple[dict[str, int], Path | None]:
        """The corrections file and (where val faces have answers) the val label file; the answer counts."""
        from fer_core.label_sets import write_label_file

        table = corrections(store, self.dataset)
        train_ids = set(self.table.frame["sample_id"].to_numpy()[self.train_rows()].astype(str))
        on_train = table[table["sample_id"].astype(str).isin(train_ids)]
        if not len(on_train):
            raise AnnotateError(f"the store holds no answer yet on a training face of {self.dataset!r}: answer some "
                                "faces of the train split first (the queue, or the Browse tab's selection)")
        write_table(table, folder / "corrections.csv")
        answers = {"train_faces": len(on_train), "relabelled": int(on_train["changed"].sum()),
                   "dropped": int((on_train["resolved_label"] == "not_a_face").sum()), "val_faces": 0,
                   "val_labelled": 0}
        resolved = table if self.val is None else store.resolved_labels(self.val_faces().name)
        labels = self._val_labels(resolved)
        if labels is None or not (labels[1] >= 0).any():
            return answers, None
        answers["val_faces"], answers["val_labelled"] = len(labels[0]), int((labels[1] >= 0).sum())
        return answers, write_label_file(folder / "val_labels.csv", *labels)

    def _spawn(self, command: list[str], folder: Path, *, append: bool = False) -> subprocess.Popen:
        """Start ``command`` in a process group of its own, at a lower priority, its output in ``train.log``."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        env["PYTHONPATH"] = os.pathsep.join([str(_REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        with open(folder / "train.log", "ab" if append else "wb") as log:
            if append:
                log.write(f"\n$ {shlex.join(command)}\n".encode())
                log.flush()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=_REPO, env=env, start_new_session=True)
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, 10)  # serving the app comes first
        return proc

    def _current(self, run_id: str, statuses: tuple[str, ...]) -> Run | None:
        """The run as on disk, when it is still in one of ``statuses`` (not cancelled meanwhile)."""
        run = Run.read(self.root / run_id)
        return run if run is not None and run.status in statuses else None

    def _watch(self, run_id: str, proc: subprocess.Popen, has_val_labels: bool) -> None:
        """The background thread of a run: wait, then export and measure, or record the failure."""
        try:
            self._follow(run_id, proc, has_val_labels)
        except Exception as err:  # a run is never left marked running by a thread that died
            with contextlib.suppress(Exception), self._locked():
                run = self._current(run_id, ACTIVE)
                if run is not None:
                    self._stop(run)
                    self._end(run, "failed", message=f"{type(err).__name__}: {err}"[:300])

    def _follow(self, run_id: str, proc: subprocess.Popen, has_val_labels: bool) -> None:
        code = proc.wait()
        with self._locked():
            self._procs.pop(run_id, None)
            run = self._current(run_id, ("running",))
            if run is None:
                return  # cancelled, or stopped at exit
            if code != 0 or not run.weights.is_file() or not (run.folder / "model.json").is_file():
                self._end(run, "failed", message=f"the training stopped with exit code {code}: "
                                                 + _last_error(self.log_tail(run)))
                return
            export = None
            if (_REPO / "tools" / "export_onnx.py").is_file():
                export = self._spawn([sys.executable, "-m", "tools.export_onnx", str(run.weights), "--runtime", "onnx"],
                                     run.folder, append=True)
                self._procs[run_id] = export
            run = replace(run, status="finishing", pid=None if export is None else export.pid,
                          proc_start=None if export is None else _proc_start(export.pid))
            self._save(run)
        if export is not None and export.wait() != 0:
            with self._locked():
                self._procs.pop(run_id, None)
                run = self._current(run_id, ("finishing",))
                if run is not None:
                    self._end(run, "failed", message="the new weights could not be exported to ONNX: "
                                                     + _last_error(self.log_tail(run)))
            return
        try:
            figures = self._figures(run, has_val_labels)
        except Exception as err:  # measuring is best effort: the model is there all the same
            figures = {"error": f"{type(err).__name__}: {err}"[:300]}
        with self._locked():
            self._procs.pop(run_id, None)
            run = self._current(run_id, ("finishing",))
            if run is not None:
                self._end(run, "finished", figures=figures)

    def _figures(self, run: Run, has_val_labels: bool) -> dict[str, Any]:
        """The starting model's and the new model's figures on the val faces, per label set."""
        from fer_core.label_sets import read_label_file

        val = self.val_faces()
        sets = {"original": val.labels}
        if has_val_labels:
            sets[VAL_LABELS_NAME] = read_label_file(run.folder / "val_labels.csv", val)
        return {"current": {"name": run.init_name, **measure(run.init, val, sets)},
                "new": {"name": run.model_name, **measure(run.weights, val, sets)}}

    def _stop_at_exit(self) -> None:
        """At the interpreter's exit: stop this job's run in progress and mark it ``interrupted``."""
        if not self._lock.acquire(timeout=5):  # a thread stuck in the lock: leave the run to the next start
            return
        with contextlib.suppress(Exception), self._locked():
            for run in self._all_runs():
                if run.active and (run.owner or {}).get("token") == self._token:
                    self._stop(run)
                    self._end(run, "interrupted", message=RESTART_MESSAGE)
        self._lock.release()


def _last_error(log: str) -> str:
    """The line of a log that says what went wrong (``error: ...``, else the last line)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error") or "Error:" in line]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def shown_time(iso: str | None) -> str:
    """``2025-03-01 12:00 UTC`` for an ISO time."""
    if not iso:
        return "?"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(iso)[:40]


@atexit.register
def _stop_runs_at_exit() -> None:
    for job in list(FineTuneJob._instances):
        job._stop_at_exit()
