"""Train the model candidates and the out-of-fold probabilities on one GPU, inside a fixed time budget.

    python -m tools.gpu_sweep DATA/train --val DATA/val --work DIR --results OUT --budget SECONDS

Every run is an ordinary ``python -m fer_core.train`` command (printed, and kept in each
model card), so any result can be reproduced on its own. The runs share the GPU as
parallel processes:

1. a short probe of every phase-one run at once measures the seconds per epoch under
   that contention, and sets the epochs so that the whole sweep ends inside the budget;
2. phase one: the five folds of the out-of-fold probabilities (``--folds 5
   --fold-index I``) and the recipe variants (the plain recipe under two seeds, mixup
   with CutMix, and the two quality filters, measured against each other);
3. when the folds are done, their out-of-fold file is written and phase two trains
   students on it (``--distill``), alone and with mixing.

``--plan kd --teacher A --teacher B`` trains instead the students of a teacher ensemble
(``--teacher``: knowledge distillation on every augmented batch), with the same probe.

``--plan chain`` trains the whole distillation chain of the bundled model inside the budget:
two teachers (the plain recipe, seeds 0 and 1) side by side, then two students of both
(``--teacher ... --kd-weight 0.7 --kd-temperature 2``, seeds 0 and 1). Each run plans its
own epochs with ``--time-budget`` (no probe): the teachers get the share of the budget that
their epochs took in the bundled model's chain, the students what is left.

A run still going at the deadline is stopped; its best epoch so far stays in
``best.safetensors``. ``OUT`` receives ``sweep.json`` (every run: command, epochs, val
figures), the logs and cards, the out-of-fold file, and the best models' weights.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

#: The repository root: the training runs start there, wherever the sweep was started from.
ROOT = Path(__file__).resolve().parents[1]

FOLDS = 5

#: name -> extra training options; every run is fer_vgg with the shipped recipe plus these.
VARIANTS: dict[str, list[str]] = {
    "base_s0": ["--seed", "0"],
    "base_s1": ["--seed", "1"],
    "mix": ["--mixup", "0.2", "--cutmix", "1.0", "--mix-prob", "0.8"],
    "minq03": ["--min-quality", "0.3"],
    "curriculum": ["--curriculum", "0.8,0.5,0"],
}
#: the students of ``--plan kd``: distillation weight and temperature.
KD_STUDENTS: dict[str, list[str]] = {
    "kd70_t2": ["--kd-weight", "0.7", "--kd-temperature", "2"],
    "kd90_t4": ["--kd-weight", "0.9", "--kd-temperature", "4"],
}
#: ``--plan chain``: the teachers, then their students (each student learns from both teachers).
CHAIN_TEACHERS: dict[str, list[str]] = {"teacher_s0": ["--seed", "0"], "teacher_s1": ["--seed", "1"]}
CHAIN_STUDENTS: dict[str, list[str]] = {
    "student_s0": ["--seed", "0", "--kd-weight", "0.7", "--kd-temperature", "2"],
    "student_s1": ["--seed", "1", "--kd-weight", "0.7", "--kd-temperature", "2"],
}
#: the epochs of the bundled model's chain: teachers 79, student 101 (docs/experiments.md, "Every full run").
CHAIN_EPOCHS = {"teacher": 79, "student": 101}
#: a student's epoch costs this many teacher epochs: two teachers, each on the batch and its
#: mirror (measured on the CPU: ~100-115 s against ~49 s).
KD_EPOCH_COST = 2.2
#: seconds kept back after each phase: a run's start (data from the cache) and end (model files).
PHASE_MARGIN = 25
#: phase two of the sweep: students of the out-of-fold probabilities (``--distill``).
STUDENTS: dict[str, list[str]] = {
    "distill": ["--distill-weight", "0.5"],
    "distill_mix": ["--distill-weight", "0.5", "--mixup", "0.2", "--cutmix", "1.0", "--mix-prob", "0.8"],
}


class Run:
    """One ``fer_core.train`` process with its log."""

    def __init__(self, name: str, argv: list[str], work: Path) -> None:
        self.name, self.argv = name, argv
        self.log = work / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.started = self.ended = 0.0

    def start(self) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] start {self.name}: {shlex.join(self.argv)}", flush=True)
        self.started = time.monotonic()
        with self.log.open("w") as handle:
            self.process = subprocess.Popen([sys.executable, "-m", "fer_core.train", *self.argv],
                                            stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def wait(self) -> int:
        code = self.process.wait()
        self.ended = time.monotonic()
        return code


def wait_all(runs: list[Run], deadline: float) -> None:
    while any(r.running for r in runs):
        if time.monotonic() > deadline:
            for r in runs:
                if r.running:
                    print(f"deadline: stopping {r.name}", flush=True)
                    r.stop()
            break
        time.sleep(2)
    for r in runs:
        if r.process is not None:
            r.wait()


def epoch_seconds(out: Path) -> float | None:
    """The last logged epoch's seconds of a run folder."""
    log = out / "log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return float(rows[-1]["seconds"]) if rows else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--val", required=True)
    parser.add_argument("--work", required=True, help="folder for the runs (checkpoints stay here)")
    parser.add_argument("--results", required=True,
                        help="folder for what comes back: sweep.json and results.tar.NN (split at 15 MB)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole sweep")
    parser.add_argument("--probe-steps", type=int, default=80)
    parser.add_argument("--max-steps", type=int, default=None, help="cap every epoch (smoke test of this script)")
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--keep-models", type=int, default=2, help="weights of this many best runs come back")
    parser.add_argument("--plan", choices=["sweep", "kd", "chain"], default="sweep")
    parser.add_argument("--teacher", action="append", default=[], help="teacher weights for --plan kd")
    args = parser.parse_args()

    t0 = time.monotonic()
    deadline = t0 + args.budget
    work, back = Path(args.work), Path(args.results)
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    back.mkdir(parents=True, exist_ok=True)
    common = [args.data, "--val", args.val, "--model", "fer_vgg", "--no-progress", "--threads", "1"]
    if args.max_steps:
        common += ["--max-steps", str(args.max_steps)]

    # Load once so that every run reads the data set cache.
    from fer_core.datasets import load_faces

    n_train = len(load_faces(args.data)) if not args.max_steps else 0
    load_faces(args.val)
    print(f"data ready after {time.monotonic() - t0:.0f} s", flush=True)

    if args.plan == "chain":
        runs = chain(args, common, work, deadline)
        return report(args, runs, [], work, results, back, t0, {"plan": "chain"})

    kd = args.plan == "kd"
    teachers = [a for t in args.teacher for a in ("--teacher", t)]
    variants_plan = {name: [*teachers, *extra] for name, extra in KD_STUDENTS.items()} if kd else VARIANTS
    # 1. probe: every phase-one run at once, two short epochs each.
    n_parallel = len(variants_plan) + (0 if kd else FOLDS)
    probes = [Run(f"probe_{i}", [*common, *(teachers if kd else []), "--epochs", "2", "--max-steps",
                                 str(args.probe_steps), "--ema-decay", "0", "--out", str(work / f"probe_{i}")], work)
              for i in range(n_parallel)]
    for r in probes:
        r.start()
    wait_all(probes, deadline)
    measured = [s for s in (epoch_seconds(work / f"probe_{i}") for i in range(n_parallel)) if s]
    if not measured:
        print("probe failed:\n" + probes[0].log.read_text()[-3000:], flush=True)
        return 1
    full_steps = math.ceil(n_train / 128) if n_train else (args.max_steps or 1)
    # A probe epoch is short, so its fixed costs (val, checkpoint) weigh more than in a full one;
    # yet full runs measured about 20% slower per step than their probe: plan with a margin.
    per_epoch = 1.25 * (max(measured) * full_steps / args.probe_steps if not args.max_steps else max(measured))
    remaining = deadline - time.monotonic() - 25  # the out-of-fold write and the packing
    e_main = max(2, min(args.max_epochs, int((0.97 if kd else 0.95) * remaining / per_epoch)))
    e_fold = max(2, min(120, int(0.42 * remaining / (0.8 * per_epoch))))
    print(f"probe: {per_epoch:.1f} s per epoch with {n_parallel} runs at once; {remaining:.0f} s left: "
          f"{e_main} epochs per variant, {e_fold} per fold", flush=True)

    # 2. phase one.
    oof = work / "oof5"
    folds = [] if kd else [
        Run(f"fold_{i}", [*common, "--folds", str(FOLDS), "--fold-index", str(i), "--epochs", str(e_fold),
                          "--out", str(oof)], work) for i in range(FOLDS)]
    variants = [Run(name, [*common, *extra, "--epochs", str(e_main), "--out", str(work / name)], work)
                for name, extra in variants_plan.items()]
    for r in [*folds, *variants]:
        r.start()
    wait_all(folds, deadline)
    combine = None if kd else Run("oof_combine", [*common, "--folds", str(FOLDS), "--epochs", str(e_fold), "--resume",
                                  "--out", str(oof)], work)
    if combine is not None:
        combine.start()
        wait_all([combine], deadline)

    # 3. phase two: students of the out-of-fold probabilities.
    students: list[Run] = []
    oof_file = oof / "oof_probabilities.parquet"
    left = deadline - time.monotonic() - 25
    if not kd and oof_file.is_file() and left > 0:
        e_student = max(2, min(args.max_epochs, int(0.95 * left / per_epoch)))
        print(f"phase two: {left:.0f} s left, {e_student} epochs per student", flush=True)
        students = [Run(name, [*common, *extra, "--distill", str(oof_file), "--epochs", str(e_student),
                               "--out", str(work / name)], work) for name, extra in STUDENTS.items()]
        for r in students:
            r.start()
    wait_all([*variants, *students], deadline)
    return report(args, variants, students, work, results, back, t0,
                  {"probe_seconds_per_epoch": per_epoch, "parallel_runs": n_parallel}, oof=oof)


def chain(args: argparse.Namespace, common: list[str], work: Path, deadline: float) -> list[Run]:
    """Teachers, then their students, each phase's runs side by side, each planning its epochs by the clock."""
    left = deadline - time.monotonic() - 2 * PHASE_MARGIN
    cost = {"teacher": CHAIN_EPOCHS["teacher"], "student": CHAIN_EPOCHS["student"] * KD_EPOCH_COST}
    teacher_budget = max(1, int(left * cost["teacher"] / (cost["teacher"] + cost["student"])))
    epochs = {role: min(n, args.max_epochs) for role, n in CHAIN_EPOCHS.items()}
    teachers = [Run(name, [*common, *extra, "--epochs", str(epochs["teacher"]), "--time-budget",
                           str(teacher_budget), "--out", str(work / name)], work)
                for name, extra in CHAIN_TEACHERS.items()]
    print(f"phase one: {len(teachers)} teachers, {teacher_budget} s each", flush=True)
    for r in teachers:
        r.start()
    wait_all(teachers, time.monotonic() + teacher_budget + PHASE_MARGIN)
    weights = [trained_weights(work / r.name) for r in teachers]
    if None in weights:
        print("a teacher left no weights; no students:\n" + teachers[0].log.read_text()[-3000:], flush=True)
        return teachers
    student_budget = int(deadline - time.monotonic() - PHASE_MARGIN)
    if student_budget < 1:
        print("no time left for the students", flush=True)
        return teachers
    from_teachers = [a for w in weights for a in ("--teacher", str(w))]
    students = [Run(name, [*common, *from_teachers, *extra, "--epochs", str(epochs["student"]),
                           "--time-budget", str(student_budget), "--out", str(work / name)], work)
                for name, extra in CHAIN_STUDENTS.items()]
    print(f"phase two: {len(students)} students, {student_budget} s each", flush=True)
    for r in students:
        r.start()
    wait_all(students, deadline)
    return [*teachers, *students]


def trained_weights(out: Path) -> Path | None:
    """A run's final model, else its best epoch so far (a run stopped at a deadline has only that)."""
    for stem in ("model", "best"):
        if (out / f"{stem}.safetensors").is_file() and (out / f"{stem}.json").is_file():
            return out / f"{stem}.safetensors"
    return None


def report(args: argparse.Namespace, variants: list[Run], students: list[Run], work: Path, results: Path,
           back: Path, t0: float, extra: dict[str, Any], oof: Path | None = None) -> int:
    """Write ``sweep.json`` and pack the logs, cards and the best runs' weights into ``back``."""
    summary: dict[str, Any] = {"budget_s": args.budget, "wall_s": round(time.monotonic() - t0, 1), **extra, "runs": {}}
    ranked = []
    for r in [*variants, *students]:
        out = work / r.name
        card_file = out / "model.json" if (out / "model.json").is_file() else out / "best.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] \
            if (out / "log.jsonl").is_file() else []
        best = max(rows, key=lambda row: row["val_accuracy"]) if rows else None
        summary["runs"][r.name] = {
            "command": "python -m fer_core.train " + shlex.join(r.argv), "finished": (out / "model.json").is_file(),
            "epochs_done": len(rows), "best_epoch": best and best["epoch"], "best_val_accuracy": best and best["val_accuracy"],
            "best_val_macro_f1": best and best["val_macro_f1"], "wall_s": round(r.ended - r.started, 1),
            "val_metrics": card.get("val_metrics"), "calibration": card.get("calibration"),
        }
        if best and (out / "best.safetensors").is_file():
            ranked.append((best["val_accuracy"], r.name))
        for name in ("log.csv", "model.json", "curve.png"):
            if (out / name).is_file():
                (results / "runs" / r.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(out / name, results / "runs" / r.name / name)
        shutil.copy(r.log, results / "runs" / f"{r.name}.log")
    if oof is not None and (oof / "folds.json").is_file():
        summary["folds"] = json.loads((oof / "folds.json").read_text())
        shutil.copy(oof / "oof_probabilities.parquet", results / "oof_probabilities.parquet")
    ranked.sort(reverse=True)
    summary["ranking"] = ranked
    (results / "sweep.json").write_text(json.dumps(summary, indent=2))
    shutil.copy(results / "sweep.json", back / "sweep.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1)[:3000], flush=True)
    for acc, name in ranked:
        print(f"{name:12s} val {acc:.4f}", flush=True)

    # One archive, in pieces of at most 15 MB: the device tool brings back 8 files of 16 MiB.
    archive = work / "results.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(results, arcname="sweep")
        for _, name in ranked[:args.keep_models]:
            # A run stopped at the deadline has no model.safetensors, but its best epoch so far is kept.
            weights = trained_weights(work / name)
            tar.add(weights, arcname=f"sweep/models/{name}.safetensors")
            tar.add(weights.with_suffix(".json"), arcname=f"sweep/models/{name}.json")
    data = archive.read_bytes()
    piece = 15 * 1000 * 1000
    for i in range(0, len(data), piece):
        (back / f"results.tar.{i // piece:02d}").write_bytes(data[i:i + piece])
    print(f"results: {len(data) / 1e6:.1f} MB in {math.ceil(len(data) / piece)} pieces", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
