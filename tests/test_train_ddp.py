"""torchrun's processes train as one process does: 2 ``gloo`` processes on a few hundred real FER2013 faces.

The launched tests copy 40 training and 10 val faces of each emotion from ``../shared/fer2013``
into a Kaggle-style folder, train ``fer_tiny`` for 3 epochs of 2 steps (batch 64) in one process
and under ``python -m torch.distributed.run --standalone --nproc-per-node 2``, each process
dumping its end state (``--dump-state``), and compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, SHARED_FER, needs_shared
from fer_core.labels import EMOTIONS
from fer_core.model import create_model
from fer_core.train import Setup, compute_loss, get_args_parser, loss_denominators, main
from fer_core.training.checkpoint import process_state_path
from fer_core.training.optim import build_optimizer, class_weights, make_ema
from fer_core.training.sync_bn import GlooSyncBatchNorm, synchronise_batchnorm
from fer_core.training.utils import ONE_PROCESS, Processes, shard
from fer_core.weights import load_model

#: Faces copied per emotion from each shared split: 280 training faces, 70 val faces.
PER_CLASS = {"train": 40, "val": 10}
#: The recipe (augmentation, class weights, label smoothing, self-distillation from the weight EMA) with
#: three changes. Dropout off: each process draws its own masks for its share of the batch, which one
#: process cannot reproduce. bf16 autocast off: its rounding would hide a real difference. SGD instead of
#: AdamW: in its first steps AdamW divides every gradient by its own magnitude, so gradients that are zero
#: but for rounding (a BatchNorm's bias before another BatchNorm) move by the full learning rate in a
#: direction the summation order decides, and the losses of 1 and 2 processes part by about 1e-4
#: (measured; docs/distributed.md). With SGD they agree to float32 rounding.
RUN = ["--model", "fer_tiny", "--dropout", "0", "--batch-size", "64", "--max-steps", "2", "--epochs", "3",
       "--opt", "sgd", "--lr", "0.02", "--warmup-epochs", "0.5", "--time-budget", "none", "--amp", "off",
       "--device", "cpu", "--threads", "1", "--no-progress"]
#: Float32 sums in another order (halves of the batch, then an all-reduce) differ by a few units of
#: 1e-7; six steps compound that to about 1e-6 of the loss. Unsynchronised BatchNorm parts by 1e-3.
LOSS_RTOL = 1e-5


def _copy_faces(root: Path) -> Path:
    """A Kaggle-style folder (``train/<emotion>``, ``val/<emotion>``) of the first faces of each shared folder."""
    for split, count in PER_CLASS.items():
        for emotion in EMOTIONS:
            target = root / split / emotion
            target.mkdir(parents=True)
            for path in sorted((SHARED_FER / split / emotion).glob("*.png"))[:count]:
                shutil.copyfile(path, target / path.name)
    return root


def _torchrun(faces: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "fer_core.train", str(faces), "--out", str(out), "--cache-dir", str(out.parent / "cache"), *RUN, *extra]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """The same run in one process (in this one) and in two torchrun processes, each dumping its end state."""
    if not SHARED_FER.is_dir():
        pytest.skip("../shared/fer2013 is not present")
    root = tmp_path_factory.mktemp("ddp")
    faces = _copy_faces(root / "faces")
    threads = torch.get_num_threads()
    try:
        assert main(get_args_parser().parse_args([str(faces), "--out", str(root / "one"), "--cache-dir",
                                                  str(root / "cache"), *RUN, "--dump-state", str(root / "one_state")]
                                                 )) == 0
    finally:
        torch.set_num_threads(threads)  # --threads 1 set it for this whole process
    two = subprocess.run(_torchrun(faces, root / "two", "--dump-state", str(root / "two_state")), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    return {"faces": faces, "one": root / "one", "two": root / "two", "one_state": root / "one_state",
            "two_state": root / "two_state", "stdout": two.stdout}


@pytest.mark.slow
@needs_shared
class TestTwoGlooProcesses:
    def test_both_processes_end_with_identical_weights_ema_and_batchnorm_buffers(self, runs: dict) -> None:
        first, second = (load_file(str(process_state_path(runs["two_state"], rank))) for rank in (0, 1))
        assert first.keys() == second.keys()
        different = [key for key in first if not torch.equal(first[key], second[key])]
        assert different == []
        # What that covers: the weights, the weight EMA, and BatchNorm's running statistics in both,
        # which training moved away from their start.
        assert {"model.stem.1.1.running_var", "ema.module.stem.1.1.running_var", "ema.n_averaged"} <= first.keys()
        assert not torch.allclose(first["model.stem.1.1.running_var"], torch.ones_like(first["model.stem.1.1.running_var"]))

    def test_each_steps_loss_matches_one_process_with_the_same_global_batch(self, runs: dict) -> None:
        one = load_file(str(process_state_path(runs["one_state"], 0)))
        two = load_file(str(process_state_path(runs["two_state"], 0)))
        assert len(one["step_losses"]) == 6
        np.testing.assert_allclose(two["step_losses"].numpy(), one["step_losses"].numpy(), rtol=LOSS_RTOL)
        assert [r["train_loss"] for r in _log(runs["two"])] == pytest.approx(
            [r["train_loss"] for r in _log(runs["one"])], rel=LOSS_RTOL)
        # And the weights they end with: float32 rounding apart.
        for key in ("model.fc.weight", "model.stem.1.1.running_mean", "ema.module.fc.weight"):
            np.testing.assert_allclose(two[key].numpy(), one[key].numpy(), rtol=1e-3, atol=1e-5)

    def test_the_first_process_alone_writes_and_the_card_records_the_world_size(self, runs: dict) -> None:
        assert runs["stdout"].count("best epoch") == 1 and runs["stdout"].count("epoch   1 ") == 1
        _, card = load_model(runs["two"] / "model.safetensors")
        assert card["training"]["processes"] == 2
        assert card["training"]["distributed"]["world_size"] == 2
        assert card["training"]["distributed"]["backend"] == "gloo"
        assert card["training"]["distributed"]["epochs_by_world_size"] == {"2": 3}
        assert [r["world_size"] for r in _log(runs["two"])] == [2, 2, 2]
        _, single = load_model(runs["one"] / "model.safetensors")
        assert single["training"]["processes"] == 1 and single["training"]["distributed"] is None

    def test_a_killed_run_resumes_under_torchrun_where_it_stopped(self, runs: dict, tmp_path: Path) -> None:
        out = tmp_path / "killed"
        # Stop torchrun (SIGTERM: it ends its processes, as a preempted job's would be) once an epoch is saved.
        process = subprocess.Popen(_torchrun(runs["faces"], out), cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        checkpoint = out / "checkpoint.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None and not (
                checkpoint.is_file() and json.loads(checkpoint.read_text())["epoch"] >= 1):
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        stopped_at = json.loads(checkpoint.read_text())["epoch"]
        assert 1 <= stopped_at < 3 and not (out / "model.safetensors").exists(), "it finished before the kill"
        resumed = subprocess.run([*_torchrun(runs["faces"], out, "--dump-state", str(tmp_path / "state")), "--resume"],
                                 cwd=REPO, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        assert resumed.stdout.count(f"resuming {out} after epoch {stopped_at}") == 1
        straight = _log(runs["two"])
        assert [r["epoch"] for r in _log(out)] == [1, 2, 3]
        assert [r["train_loss"] for r in _log(out)] == pytest.approx([r["train_loss"] for r in straight], rel=1e-6)
        first, second = (load_file(str(process_state_path(tmp_path / "state", rank))) for rank in (0, 1))
        assert all(torch.equal(first[key], second[key]) for key in first)
        whole = load_file(str(process_state_path(runs["two_state"], 0)))["step_losses"]
        np.testing.assert_allclose(first["step_losses"].numpy(), whole[2 * stopped_at:].numpy(), rtol=1e-6)
        _, card = load_model(out / "model.safetensors")
        assert card["training"]["distributed"]["world_size"] == 2


def _setup(model: torch.nn.Module, labels: np.ndarray) -> Setup:
    return Setup(model, model, make_ema(model, 0.999), build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0),
                 class_weights(labels, 7, "sqrt"), None, torch.device("cpu"), None, ONE_PROCESS, 0.999)


class TestSharesOfTheBatch:
    @pytest.mark.parametrize("world_size", [1, 2, 3])
    def test_the_shares_of_a_batch_are_disjoint_and_cover_it_within_one_face(self, world_size: int) -> None:
        batch = torch.randperm(50)[:37]
        shares = [shard(batch, Processes(rank, world_size)) for rank in range(world_size)]
        assert sorted(torch.cat(shares).tolist()) == sorted(batch.tolist())
        assert max(map(len, shares)) - min(map(len, shares)) <= 1

    @pytest.mark.parametrize("soft", [False, True])
    def test_the_processes_shares_of_the_loss_sum_to_the_whole_batchs(self, val_faces, soft: bool) -> None:
        """Class weights, label smoothing, probability targets and self-distillation, on uneven shares."""
        from fer_core.training.utils import to_input

        images, labels, _ = val_faces
        torch.manual_seed(0)
        model = create_model("fer_tiny", num_classes=7).eval()  # BatchNorm of the shares would differ in training
        setup = _setup(model, labels)
        x, y = to_input(torch.from_numpy(images)), torch.from_numpy(labels)
        if soft:
            y = torch.softmax(torch.randn(len(y), 7), dim=1)
        args = argparse.Namespace(label_smoothing=0.1, self_kd=0.7, kd_temperature=2.0)
        whole = compute_loss(setup, x, y, args, step=5, total_steps=10)
        denominators = loss_denominators(setup, y)
        parts = [compute_loss(setup, shard(x, p), shard(y, p), args, step=5, total_steps=10, denominators=denominators)
                 for p in (Processes(0, 3), Processes(1, 3), Processes(2, 3))]  # 35 faces: 12, 12, 11
        assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-6)


class TestSynchronisedBatchNorm:
    def test_the_conversion_keeps_the_state_and_one_process_sees_plain_batchnorm(self, val_faces) -> None:
        from fer_core.training.utils import to_input

        torch.manual_seed(0)
        plain = create_model("fer_tiny", num_classes=7)
        synced = synchronise_batchnorm(create_model("fer_tiny", num_classes=7), torch.device("cpu"))
        synced.load_state_dict(plain.state_dict())
        assert plain.state_dict().keys() == synced.state_dict().keys()
        kinds = {type(m) for m in synced.modules() if isinstance(m, torch.nn.BatchNorm2d)}
        assert kinds == {GlooSyncBatchNorm}
        x = to_input(torch.from_numpy(val_faces[0]))
        # Without a process group (and in eval mode under one) it is BatchNorm2d, buffers and all.
        torch.testing.assert_close(synced(x), plain(x))
        torch.testing.assert_close(synced.state_dict(), plain.state_dict())
