"""Train the out-of-fold probabilities and the recipe's seeds on one GPU, inside a fixed time budget.

    python -m tools.gpu_sweep DATA/train --val DATA/val --work DIR --results OUT --budget SECONDS

Every run is an ordinary ``python -m fer_core.train`` command with the shipped recipe (the
defaults; printed, and kept in each model card), so any result can be reproduced on its own.
The runs share the GPU as parallel processes:

1. a short probe of every run at once measures the seconds per epoch under that
   contention, and sets the epochs so that the whole sweep ends inside the budget;
2. the K folds of the out-of-fold probabilities (``--folds K --fold-index I``, K = 5 by
   default) and the recipe under seeds 0 and 1 train side by side;
3. when the folds are done, their out-of-fold file is written (``--folds K --resume``).

A run still going at the deadline is stopped; its best epoch so far stays in
``best.safetensors``. ``OUT`` receives ``sweep.json`` (every run: command, epochs, val
figures), the logs and cards, the out-of-fold file, and the best models' weights.
(The distillation and mixing plans this tool once ran are in docs/experiments.md; their
options are gone from ``fer_core.train``.)
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

#: name -> extra training options; every run is the shipped recipe plus these.
VARIANTS: dict[str, list[str]] = {
    "base_s0": ["--seed", "0"],
    "base_s1": ["--seed", "1"],
}
#: Seconds kept back at the end: the out-of-fold write and the packing.
END_MARGIN = 25


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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--val", required=True)
    parser.add_argument("--work", required=True, help="folder for the runs (checkpoints stay here)")
    parser.add_argument("--results", required=True,
                        help="folder for what comes back: sweep.json and results.tar.NN (split at 15 MB)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole sweep")
    parser.add_argument("--folds", type=int, default=5, help="folds of the out-of-fold probabilities")
    parser.add_argument("--probe-steps", type=int, default=80)
    parser.add_argument("--max-steps", type=int, default=None, help="cap every epoch (smoke test of this script)")
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--keep-models", type=int, default=2, help="weights of this many best runs come back")
    return parser


def probe(args: argparse.Namespace, common: list[str], work: Path, n_train: int, deadline: float) -> float | None:
    """Seconds an epoch of the recipe takes with every run of the sweep at once (None when the probe failed)."""
    n_parallel = len(VARIANTS) + args.folds
    probes = [Run(f"probe_{i}", [*common, "--epochs", "2", "--max-steps", str(args.probe_steps),
                                 "--out", str(work / f"probe_{i}")], work)
              for i in range(n_parallel)]
    for r in probes:
        r.start()
    wait_all(probes, deadline)
    measured = [s for s in (epoch_seconds(work / f"probe_{i}") for i in range(n_parallel)) if s]
    if not measured:
        print("probe failed:\n" + probes[0].log.read_text()[-3000:], flush=True)
        return None
    full_steps = math.ceil(n_train / 128) if n_train else (args.max_steps or 1)
    # A probe epoch is short, so its fixed costs (val, checkpoint) weigh more than in a full one;
    # yet full runs measured about 20% slower per step than their probe: plan with a margin.
    per_epoch = 1.25 * (max(measured) * full_steps / args.probe_steps if not args.max_steps else max(measured))
    print(f"probe: {per_epoch:.1f} s per epoch with {n_parallel} runs at once", flush=True)
    return per_epoch


def main(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    deadline = t0 + args.budget
    work, back = Path(args.work), Path(args.results)
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    back.mkdir(parents=True, exist_ok=True)
    # The sweep plans the epochs itself: no run plans its own within a time budget.
    common = [args.data, "--val", args.val, "--no-progress", "--threads", "1", "--time-budget", "none"]
    if args.max_steps:
        common += ["--max-steps", str(args.max_steps)]

    # Load once so that every run reads the data set cache.
    from fer_core.datasets import load_faces

    n_train = len(load_faces(args.data)) if not args.max_steps else 0
    load_faces(args.val)
    print(f"data ready after {time.monotonic() - t0:.0f} s", flush=True)
    per_epoch = probe(args, common, work, n_train, deadline)
    if per_epoch is None:
        return 1
    remaining = deadline - time.monotonic() - END_MARGIN
    e_main = max(2, min(args.max_epochs, int(0.95 * remaining / per_epoch)))
    e_fold = max(2, min(120, int(0.42 * remaining / (0.8 * per_epoch))))
    print(f"{remaining:.0f} s left: {e_main} epochs per variant, {e_fold} per fold", flush=True)

    oof = work / f"oof{args.folds}"
    fold_options = ["--folds", str(args.folds), "--epochs", str(e_fold), "--out", str(oof)]
    folds = [Run(f"fold_{i}", [*common, *fold_options, "--fold-index", str(i)], work) for i in range(args.folds)]
    variants = [Run(name, [*common, *extra, "--epochs", str(e_main), "--out", str(work / name)], work)
                for name, extra in VARIANTS.items()]
    for r in [*folds, *variants]:
        r.start()
    wait_all(folds, deadline)
    combine = Run("oof_combine", [*common, *fold_options, "--resume"], work)
    combine.start()
    wait_all([combine, *variants], deadline)
    return report(args, variants, work, results, back, t0,
                  {"probe_seconds_per_epoch": per_epoch, "parallel_runs": len(folds) + len(variants)}, oof=oof)


def trained_weights(out: Path) -> Path | None:
    """A run's final model, else its best epoch so far (a run stopped at a deadline has only that)."""
    for stem in ("model", "best"):
        if (out / f"{stem}.safetensors").is_file() and (out / f"{stem}.json").is_file():
            return out / f"{stem}.safetensors"
    return None


def _run_summary(r: Run, out: Path) -> tuple[dict[str, Any], float | None]:
    """What ``sweep.json`` says of one run, and its best val accuracy (None before its first epoch)."""
    card_file = out / "model.json" if (out / "model.json").is_file() else out / "best.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] \
        if (out / "log.jsonl").is_file() else []
    best = max(rows, key=lambda row: row["val_accuracy"]) if rows else None
    return {
        "command": "python -m fer_core.train " + shlex.join(r.argv), "finished": (out / "model.json").is_file(),
        "epochs_done": len(rows), "best_epoch": best and best["epoch"],
        "best_val_accuracy": best and best["val_accuracy"],
        "best_val_macro_f1": best and best["val_macro_f1"], "wall_s": round(r.ended - r.started, 1),
        "val_metrics": card.get("val_metrics"), "calibration": card.get("calibration"),
    }, best and best["val_accuracy"]


def report(args: argparse.Namespace, runs: list[Run], work: Path, results: Path, back: Path, t0: float,
           extra: dict[str, Any], oof: Path | None = None) -> int:
    """Write ``sweep.json`` and pack the logs, cards and the best runs' weights into ``back``."""
    summary: dict[str, Any] = {"budget_s": args.budget, "wall_s": round(time.monotonic() - t0, 1), **extra, "runs": {}}
    ranked = []
    for r in runs:
        out = work / r.name
        summary["runs"][r.name], best = _run_summary(r, out)
        if best is not None and (out / "best.safetensors").is_file():
            ranked.append((best, r.name))
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
    pack(work, results, back, [name for _, name in ranked[:args.keep_models]])
    return 0


def pack(work: Path, results: Path, back: Path, models: list[str]) -> None:
    """One archive of ``results`` and the named runs' weights, in pieces of at most 15 MB
    (the device tool brings back 8 files of 16 MiB)."""
    archive = work / "results.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(results, arcname="sweep")
        for name in models:
            # A run stopped at the deadline has no model.safetensors, but its best epoch so far is kept.
            weights = trained_weights(work / name)
            tar.add(weights, arcname=f"sweep/models/{name}.safetensors")
            tar.add(weights.with_suffix(".json"), arcname=f"sweep/models/{name}.json")
    data = archive.read_bytes()
    piece = 15 * 1000 * 1000
    for i in range(0, len(data), piece):
        (back / f"results.tar.{i // piece:02d}").write_bytes(data[i:i + piece])
    print(f"results: {len(data) / 1e6:.1f} MB in {math.ceil(len(data) / piece)} pieces", flush=True)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
