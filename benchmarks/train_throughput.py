"""Training throughput: ``python -m benchmarks.train_throughput [DATA] --processes 1 2`` prints faces/s.

Runs the real training command (``python -m fer_core.train``: the recipe's model, loss,
self-distillation and augmentation) for a few short epochs (``--max-steps``) in 1 process, and
under ``torchrun --standalone --nproc-per-node N`` for each N of ``--processes``, then reads
each run's ``log.jsonl``: an epoch's training seconds are its ``seconds`` less its
``val_seconds``, its faces ``min(steps x batch, training faces)``. The first epoch (kernel
choice, allocation, the process group's first messages) is left out; the figure is the faces of
the other epochs over their seconds. ``--device cuda`` gives each process a GPU (``nccl``);
``--device cpu`` runs ``gloo`` processes of ``--threads`` threads each. How to read the figures:
docs/distributed.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fer_core._cli import cli_main
from fer_core._validation import FERError
from fer_core.config import SAMPLE_PATH

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", nargs="?", default=str(SAMPLE_PATH),
                        help="training faces (any form fer_core.train reads); default: the bundled 350-face sample, "
                             "which holds 2 full batches of 128: give ../shared/fer2013 for longer epochs")
    parser.add_argument("--val", default=str(SAMPLE_PATH), help="val faces (evaluated each epoch, not timed)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1], metavar="N",
                        help="the numbers of processes to measure (1: a plain run; more: torchrun)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="one GPU per process with cuda")
    parser.add_argument("--model", default="fer_vgg", help="architecture (fer_core.train --model)")
    parser.add_argument("--batch-size", type=int, default=128, help="faces per step, shared by the processes")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (--max-steps)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not counted")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per process; None: torch's default")
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"), help="fer_core.train --amp")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one, deleted)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    return parser


def train_command(args: argparse.Namespace, processes: int, out: Path) -> list[str]:
    """The command line of one measured run: ``python -m fer_core.train``, under torchrun for several processes."""
    launch = [sys.executable, "-m", "fer_core.train"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
        "-m", "fer_core.train"]
    command = [*launch, args.data, "--val", args.val, "--out", str(out), "--model", args.model,
               "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--epochs", str(args.epochs),
               "--time-budget", "none", "--device", args.device, "--amp", args.amp, "--no-progress"]
    return command + (["--threads", str(args.threads)] if args.threads else [])


def throughput(log: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Faces per second of training over the epochs of ``log`` after the first (the first alone if it is all)."""
    counted = log[1:] or log
    faces = sum(min(row["steps"] * batch_size, row["train_faces"]) for row in counted)
    seconds = sum(row["seconds"] - row["val_seconds"] for row in counted)
    steps = sum(row["steps"] for row in counted)
    return {"faces_per_second": faces / seconds, "seconds_per_step": seconds / steps, "faces": faces,
            "seconds": round(seconds, 3), "epochs_counted": len(counted)}


def measure(args: argparse.Namespace, processes: int, folder: Path) -> dict[str, Any]:
    """Run the training command in ``processes`` processes into ``folder``/pN and return its throughput."""
    out = folder / f"p{processes}"
    done = subprocess.run(train_command(args, processes, out), cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise FERError(f"the run in {processes} process(es) failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {"processes": processes, "device": args.device, "threads": args.threads, **throughput(log, args.batch_size)}


@cli_main
def main(args: argparse.Namespace) -> int:
    from fer_core.hardware import cpu_description

    if min(args.processes) < 1 or args.steps < 1 or args.epochs < 1:
        raise FERError("--processes, --steps and --epochs must be at least 1")
    print(f"{args.model}, batch {args.batch_size} in all, at most {args.steps} steps x {args.epochs} epochs (the "
          f"first not counted), device {args.device}; CPU: {cpu_description()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        for n in args.processes:
            result = measure(args, n, folder)
            results.append(result)
            print(f"{n} process(es): {result['faces_per_second']:.1f} faces/s, "
                  f"{result['seconds_per_step'] * 1000:.0f} ms/step ({result['faces']} faces timed)", flush=True)
    base = results[0]["faces_per_second"]
    print("processes | faces/s | speed-up over the first")
    for result in results:
        print(f"{result['processes']} | {result['faces_per_second']:.1f} | {result['faces_per_second'] / base:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
