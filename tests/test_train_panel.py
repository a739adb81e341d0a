"""The Relabel tab's "Train on corrections" panel: real fine-tunes of the bundled model on real faces and a real
store, through :class:`annotate.finetune.FineTuneJob`, :class:`ui.train_panel.TrainPanel` and the launched app."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from annotate import AnnotateError, open_store
from annotate.finetune import RESTART_MESSAGE, VAL_LABELS_NAME, FineTuneJob, FineTuneSettings, Run, _alive, _proc_start
from conftest import SHARED_FER, free_port, needs_shared
from fer_core.catalog import ModelCatalog
from fer_core.datasets import load_faces
from fer_core.labels import EMOTIONS
from fer_core.weights import DEFAULT_WEIGHTS, card_path
from ui.train_panel import TrainPanel

pytestmark = needs_shared

#: One epoch of one step: a real fine-tune in seconds.
QUICK = FineTuneSettings(epochs=1, max_steps=1, threads=1)
#: Relabelled training faces and answered val faces in every store of these tests.
TRAIN_ANSWERS, VAL_ANSWERS = 10, 20


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout copy of 15 real train faces per class (105) and 6 val faces per class (42)."""
    root = tmp_path_factory.mktemp("fine_tune") / "fer_small"
    for split, per_class in (("train", 15), ("val", 6)):
        for emotion in EMOTIONS:
            (root / split / emotion).mkdir(parents=True)
            for path in sorted((SHARED_FER / split / emotion).glob("*.png"))[:per_class]:
                shutil.copyfile(path, root / split / emotion / path.name)
    return root


@pytest.fixture(scope="module")
def table(small_set: Path):
    return load_faces(small_set, use_cache=False, progress=False)


def answered_store(path: Path, table, *, val: bool = True):
    """A store holding the faces of ``table``: 10 training faces relabelled by ann, 20 val faces answered
    (their own label, every third one 'happy' instead)."""
    store = open_store(str(path))
    store.register_faces(table.name, list(table.frame["sample_id"]), table.labels)
    split, ids = table.frame["split"].to_numpy(), table.frame["sample_id"].to_numpy()
    for row in np.flatnonzero(split == "train")[:TRAIN_ANSWERS]:
        store.record_decision("ann", table.name, ids[row], EMOTIONS[(table.labels[row] + 1) % 7])
    for i, row in enumerate(np.flatnonzero(split == "val")[:VAL_ANSWERS] if val else []):
        store.record_decision("bo", table.name, ids[row], "happy" if i % 3 == 0 else EMOTIONS[table.labels[row]])
    return store


@pytest.fixture()
def parts(small_set: Path, table, tmp_path: Path):
    """A store with answers, the app's catalog and a job on a fresh folder, with the panel over them."""
    store = answered_store(tmp_path / "answers.db", table)
    catalog = ModelCatalog()
    job = FineTuneJob(tmp_path / "fine_tune", table, data=small_set, settings=QUICK)
    yield TrainPanel(job, catalog, store), job, catalog, store
    if job.active() is not None:
        job.cancel(by="teardown")
    store.close()


def fake_run(job: FineTuneJob, run_id: str, status: str, *, model: bool, **state) -> Run:
    """A run folder as a job leaves it: ``state.json``, a log and (``model``) the bundled weights as its model."""
    folder = job.root / run_id
    folder.mkdir()
    (folder / "train.log").write_text("epoch   1  loss 1.0\n")
    if model:
        shutil.copyfile(DEFAULT_WEIGHTS, folder / "model.safetensors")
        shutil.copyfile(card_path(DEFAULT_WEIGHTS), folder / "model.json")
        card = json.loads((folder / "model.json").read_text())
        for entry in card.get("onnx", {}).values():
            shutil.copyfile(DEFAULT_WEIGHTS.parent / entry["file"], folder / entry["file"])
    started = datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC).isoformat()
    run = Run(folder=folder, run_id=run_id, status=status, started_by="ann", started_at=started, dataset=job.dataset, epochs=1, init=str(DEFAULT_WEIGHTS), init_name="fer_model",
              model_name=f"fine-tuned-{run_id}", **state)
    (folder / "state.json").write_text(json.dumps(run.to_dict()))
    return run


def group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
class TestFineTune:
    @pytest.mark.slow
    def test_a_run_trains_reports_both_label_sets_and_is_served(self, parts, table) -> None:
        panel, job, catalog, store = parts
        run = panel.start("ann")
        assert run.status == "running" and run.init == str(DEFAULT_WEIGHTS) and run.init_name == "fer_model"
        assert run.answers == {"train_faces": TRAIN_ANSWERS, "relabelled": TRAIN_ANSWERS, "dropped": 0,
                               "val_faces": VAL_ANSWERS, "val_labelled": VAL_ANSWERS}
        command = run.command
        assert command[1:4] == ["-m", "fer_core.train", str(job.data)]
        for flag, value in (("--init", str(DEFAULT_WEIGHTS)), ("--epochs", "1"), ("--max-steps", "1"),
                            ("--val-labels-name", VAL_LABELS_NAME), ("--corrections-dataset", table.name)):
            assert command[command.index(flag) + 1] == value
        view = panel.view()
        assert view.status.startswith("**Training** (started by ann") and view.can_cancel and not view.can_start
        seen_epoch = False
        deadline = time.monotonic() + 600
        while job.latest().active and time.monotonic() < deadline:
            progress = job.progress(job.latest())
            seen_epoch |= progress.epoch == 1 and "epoch **1 of 1**" in panel.view().status
            time.sleep(0.5)
        run = job.wait(timeout=10)
        assert run.status == "finished", job.log_tail(run)
        # Progress as the log says it: the one epoch, its loss, val against both label sets.
        progress = job.progress(run)
        assert (progress.epoch, progress.epochs) == (1, 1) and progress.train_loss > 0
        assert set(progress.val) == {"original", VAL_LABELS_NAME}
        assert seen_epoch or "epoch   1" in job.log_tail(run)
        # Only a whole model is left: weights, card, ONNX file; no checkpoint.
        files = {p.name for p in run.folder.iterdir()}
        assert {"model.safetensors", "model.json", "model.onnx", "val_labels.csv", "corrections.csv"} <= files
        assert not {"checkpoint.json", "checkpoint.safetensors", "best.safetensors"} & files
        card = json.loads((run.folder / "model.json").read_text())
        assert set(card["training"]["val_by_labels"]) == {"original", VAL_LABELS_NAME}
        assert card["onnx"]["onnx"]["file"] == "model.onnx"
        # Figures of the model served at the start and of the new one, on both label sets.
        for key, name in (("current", "fer_model"), ("new", run.model_name)):
            entry = run.figures[key]
            assert entry["name"] == name
            assert entry["original"]["faces"] == 42 and entry[VAL_LABELS_NAME]["faces"] == VAL_ANSWERS
            for figures in (entry["original"], entry[VAL_LABELS_NAME]):
                assert 0 <= figures["accuracy"] <= 1 and 0 <= figures["macro_f1"] <= 1
        new = card["training"]["val_by_labels"]
        assert run.figures["new"]["original"]["accuracy"] == pytest.approx(new["original"]["accuracy"], abs=0.05)
        view = panel.view()
        assert view.can_serve and view.can_discard and view.can_start and not view.can_cancel
        assert "your answers (20 val faces)" in view.figures and "fer\\_model" in view.figures
        assert "python -m annotate.corrections --db" in view.commands and "python -m fer_core.train" in view.commands
        # Serving it switches the app: the catalog's default, and its predictor runs the run's ONNX file.
        assert panel.serve("ann") == run.model_name
        assert catalog.default == run.model_name
        predictor = catalog.predictor()
        assert predictor.weights == run.weights and predictor.onnx_file == run.folder / "model.onnx"
        probs = predictor.predict_faces(job.val_faces().images[:5])
        assert probs.shape == (5, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        view = panel.view()
        assert "The app serves it now" in view.status and not view.can_serve and not view.can_discard
        with pytest.raises(AnnotateError, match="model the app serves now"):
            panel.discard("ann")
        assert job.latest().served_by == "ann"

    @pytest.mark.slow
    def test_cancel_stops_the_process_group_and_leaves_no_model(self, parts) -> None:
        panel, job, catalog, store = parts
        run = panel.start("ann")
        assert _alive(run.pid, run.proc_start)
        # One training for the whole app: a second start says who started the first and when.
        with pytest.raises(AnnotateError, match=r"already running: started by ann at \d{4}-\d\d-\d\d \d\d:\d\d UTC"):
            panel.start("cy")
        cancelled = panel.cancel("cy")
        assert cancelled.status == "cancelled" and cancelled.ended_by == "cy"
        assert not _alive(run.pid, run.proc_start) and group_gone(run.pid)
        assert {p.name for p in run.folder.iterdir()} <= {"state.json", "train.log"}
        view = panel.view()
        assert "**Cancelled** by cy" in view.status and view.can_start
        assert not (view.can_serve or view.can_cancel or view.figures)
        with pytest.raises(AnnotateError, match="no finished training"):
            panel.serve("cy")
        with pytest.raises(AnnotateError, match="no training is running"):
            panel.cancel("cy")
        assert catalog.default == "fer_model"


class TestState:
    def test_a_run_of_a_server_that_is_gone_is_marked_and_offers_no_model(self, parts, table, small_set) -> None:
        panel, job, catalog, store = parts
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        run = fake_run(job, "20250301-120000-dead", "running", model=True, pid=dead.pid,
                       owner={"pid": dead.pid, "start": None, "token": "gone"})
        (run.folder / "checkpoint.safetensors").write_bytes(b"partial")
        # A live training left by a killed server: the new job stops it too.
        orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
        live = fake_run(job, "20250301-120001-live", "running", model=False, pid=orphan.pid,
                        proc_start=_proc_start(orphan.pid), owner={"pid": dead.pid, "start": None, "token": "gone"})
        try:
            restarted = FineTuneJob(job.root, table, data=small_set, settings=QUICK)
            for one in (restarted.get(run.run_id), restarted.get(live.run_id)):
                assert one.status == "interrupted" and one.message == RESTART_MESSAGE
                assert {p.name for p in one.folder.iterdir()} <= {"state.json", "train.log"}
            assert orphan.wait(timeout=30) is not None
            view = TrainPanel(restarted, catalog, store).view()
            assert "the server restarted during this training; it was stopped" in view.status
            assert not (view.can_serve or view.can_discard or view.can_cancel) and view.can_start
            assert restarted.active() is None
        finally:
            if orphan.poll() is None:
                orphan.kill()

    def test_discard_deletes_the_run_and_takes_it_out_of_the_catalog(self, parts) -> None:
        panel, job, catalog, store = parts
        run = fake_run(job, "20250301-120000-done", "finished", model=True)
        catalog.add(run.weights, name=run.model_name)
        view = panel.view()
        assert view.can_serve and view.can_discard
        assert panel.discard("ann") == run.model_name
        assert not run.folder.exists() and run.model_name not in catalog.names()
        assert panel.view().status == "No training yet."

    def test_old_runs_are_deleted_beyond_the_few_kept_but_not_the_served_one(self, parts) -> None:
        panel, job, catalog, store = parts
        served = fake_run(job, "20250301-110000-kept", "finished", model=True)
        catalog.set_default(catalog.add(served.weights, name=served.model_name))
        runs = [fake_run(job, f"20250301-12000{i}-old{i}", "cancelled", model=False) for i in range(5)]
        (job.root / "20250301-130000-junk").mkdir()  # a start that died before writing its state
        removed = job.prune(protect=panel._protect())
        left = {p.name for p in job.root.iterdir() if not p.name.startswith(".")}
        assert left == {served.run_id, *[r.run_id for r in runs[-job.keep:]]}
        assert {r.run_id for r in removed} == {r.run_id for r in runs[:-job.keep]}

    def test_names_are_escaped_in_the_status(self, parts) -> None:
        panel, job, catalog, store = parts
        fake_run(job, "20250301-120000-xss", "cancelled", model=False, ended_by="<img src=x onerror=alert(1)>*hi*")
        status = panel.view().status
        assert "<img" not in status and "&lt;img" in status and "\\*hi\\*" in status


class TestNotReady:
    def test_the_bundled_sample_says_what_training_needs(self, table, tmp_path: Path) -> None:
        job = FineTuneJob(tmp_path / "ft", table, data=None, settings=QUICK)
        store = answered_store(tmp_path / "a.db", table)
        panel = TrainPanel(job, ModelCatalog(), store)
        assert "start the app with --data PATH" in job.problem()
        assert panel.overview().startswith("**Training is not available here.**") and not panel.view().can_start
        with pytest.raises(AnnotateError, match="needs the data set on disk"):
            panel.start("ann")
        assert not any(job.root.iterdir()) or [p.name for p in job.root.iterdir()] == [".lock"]

    def test_too_few_faces_no_val_split_or_no_answers_are_refused(self, small_set, table, tmp_path: Path) -> None:
        few = FineTuneJob(tmp_path / "a", table, data=small_set, settings=QUICK, min_train_faces=1000)
        assert "105 training faces; training needs at least 1,000" in few.problem()
        train_only = table.split("train")
        assert "no val split" in FineTuneJob(tmp_path / "b", train_only, data=small_set).problem()
        job = FineTuneJob(tmp_path / "c", table, data=small_set, settings=QUICK)
        store = open_store(str(tmp_path / "empty.db"))
        with pytest.raises(AnnotateError, match="no answer yet on a training face"):
            TrainPanel(job, ModelCatalog(), store).start("ann")
        assert [p.name for p in job.root.iterdir() if not p.name.startswith(".")] == []

    def test_without_a_job_the_tab_has_no_panel(self, table, tmp_path: Path) -> None:
        import gradio as gr

        from ui.relabel_tab import RelabelDesk, build_relabel_tab

        desk = RelabelDesk(open_store(str(tmp_path / "d.db")), table, model_version="test")
        with gr.Blocks() as demo:
            build_relabel_tab(desk)
        assert "train_start" not in {fn.api_name for fn in demo.fns.values()}


@pytest.mark.slow
@pytest.mark.slow
def test_the_panel_through_the_launched_app(small_set, table, tmp_path: Path) -> None:
    import gradio as gr
    from gradio_client import Client

    from ui.relabel_tab import RelabelDesk, build_relabel_tab

    store = answered_store(tmp_path / "app.db", table)
    desk = RelabelDesk(store, table, model_version="test")
    job = FineTuneJob(tmp_path / "fine_tune", table, data=small_set, settings=QUICK)
    with gr.Blocks() as demo:
        build_relabel_tab(desk, catalog=ModelCatalog(), job=job)
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        about, status, *_ = client.predict(api_name="/train_status")
        assert "10 training faces have answers" in about and status == "No training yet."
        with pytest.raises(Exception, match="enter your name"):
            client.predict("", api_name="/train_start")
        result = client.predict("dee", api_name="/train_start")
        assert result[1].startswith("**Training** (started by dee")
        with pytest.raises(Exception, match="already running: started by dee"):
            client.predict("eve", api_name="/train_start")
        pid = job.active().pid
        status = client.predict("eve", api_name="/train_cancel")[0]
        assert "**Cancelled** by eve" in status and group_gone(pid)
        # A reload (a new client) sees the same run: the state is the server's, not the page's.
        again = Client(f"http://127.0.0.1:{port}", verbose=False)
        assert "**Cancelled** by eve" in again.predict(api_name="/train_status")[1]
    finally:
        demo.close()
        if job.active() is not None:
            job.cancel(by="teardown")


def test_full_run_commands_never_show_a_server_password(tmp_path, table):
    from types import SimpleNamespace

    job = FineTuneJob(tmp_path / "ft_cmd", table, data=None, settings=QUICK)
    server = SimpleNamespace(url="postgresql+psycopg://team:***@db.example:5432/fer")  # Store.url masks it
    shown = job.full_run_commands(server)
    assert 'python -m annotate.corrections --db "$FER_DB_URL" --dataset' in shown and "***" not in shown
    with open_store(str(tmp_path / "my answers.db")) as store:
        local = job.full_run_commands(store)
    assert f"--db '{tmp_path / 'my answers.db'}'" in local
