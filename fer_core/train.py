"""Train a FER CNN: ``python -m fer_core.train DATA --val VAL --out DIR``.

The defaults are the recipe of the bundled model (docs/model.md): ``fer_vgg``, dropout 0.5,
AdamW with weight decay 0.1, self-distillation from the weight EMA (``--self-kd 0.7``), at
most 86 epochs planned to end within a 2-hour budget. Every knob is a flag, and the model
card records the command.

Reads any data form :mod:`fer_core.datasets` reads. Per epoch it logs loss, val accuracy,
macro-F1, lr and seconds (``log.csv``, ``log.jsonl``, console), saves a resumable checkpoint
(safetensors + JSON, no pickles; see :mod:`fer_core.training.checkpoint`) and keeps the best
epoch on val. At the end it writes ``model.safetensors`` with its model card ``model.json``
and ``curve.png``.

``--corrections FILE`` trains on the labels of the annotation tool's corrections export
(``python -m annotate.corrections``; see :mod:`fer_core.training.corrections`);
``--val-labels FILE`` gives the val faces a second label set (e.g. their FER+ majority labels,
``python -m annotate.ferplus``) on which the best epoch, the mirror gate and the temperature are
chosen, and the card reports val against both (see :mod:`fer_core.training.val_labels`);
``--folds K`` trains K models instead, each on K-1 folds, and writes every training face's
out-of-fold probabilities (see :mod:`fer_core.folds`). Under ``torchrun --nproc-per-node N``
the N processes share every batch (``--batch-size`` is the whole batch) and train as one
process does: the same order, augmentation and global batches, BatchNorm over the whole batch
(:mod:`fer_core.training.sync_bn`), each process's share of the loss; the first one evaluates
and writes the files (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_core._cli import USER_ERROR, cli_main
from fer_core._torch import TorchMissing, torch_missing_message

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:  # the serving install leaves PyTorch out
    if __name__ == "__main__":
        print(f"error: {torch_missing_message('training')}", file=sys.stderr)
        sys.exit(USER_ERROR)
    raise TorchMissing(torch_missing_message("training")) from error

from fer_core._validation import FERError
from fer_core.augment import AugmentConfig, augment_batch
from fer_core.evaluate import compute_metrics
from fer_core.time_budget import (
    EpochCost,
    estimate_epoch_seconds,
    finish_reserve,
    parse_time_budget,
    plan_epochs,
)
from fer_core.training.card import card_base, model_card, plot_curve, write_logs
from fer_core.training.checkpoint import (
    check_out,
    init_weights,
    load_checkpoint,
    save_checkpoint,
    save_process_state,
)
from fer_core.training.data import LabelMap, TrainingData, load_training_data, prepare_training_data
from fer_core.training.optim import (
    CLASS_WEIGHTINGS,
    OPTIMIZERS,
    build_optimizer,
    class_weights,
    distillation_loss,
    lr_at,
    make_ema,
    teacher_probabilities,
)
from fer_core.training.sync_bn import synchronise_batchnorm
from fer_core.training.utils import (
    AMP_MODES,
    DEVICES,
    ONE_PROCESS,
    Processes,
    all_sum_tensor,
    autocast_dtype,
    backend_name,
    broadcast,
    close_processes,
    device_name,
    init_processes,
    predict_logits,
    shard,
    to_input,
)
from fer_core.training.val_labels import SECOND_PREFIX, ValLabels, check_selection, load_val_labels

if TYPE_CHECKING:
    from fer_core.datasets import FaceTable

__all__ = ["get_args_parser", "train_one_epoch", "evaluate", "train_model", "train_folds", "main",
           "autocast_dtype", "device_name"]



class _RecipeBudget(float):
    """``--time-budget``'s default (not a string, so that argparse leaves it as it is and it can be told
    from a budget given on the command line): the shipped recipe's 2 hours for one run, none for ``--folds``."""

    def __repr__(self) -> str:
        return "2h"

    __str__ = __repr__


DEFAULT_TIME_BUDGET = _RecipeBudget(7200.0)
#: Flip test-time augmentation doubles the cost of a face; it is switched on by
#: default only when it gains at least this much val accuracy.
FLIP_TTA_MIN_GAIN = 0.003


def _add_data_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("data", help="training faces: folder, fer2013.csv, Parquet or hub id (its train split is used)")
    group.add_argument("--val", default=None, help="validation faces (its val split, else all); None: DATA's val split")
    group.add_argument("--merge", action="append", default=[], help="fold one emotion into another, e.g. disgust=angry")
    group.add_argument("--cache-dir", default=None, help="data set cache folder")
    group.add_argument("--corrections", default=None, metavar="FILE",
                       help="corrections file (CSV or Parquet) exported by `python -m annotate.corrections` "
                            "or the Relabel tab: its resolved labels correct the training faces")
    group.add_argument("--corrections-dataset", default=None, metavar="NAME",
                       help="the training faces' data set name in the corrections file; None: the loaded data "
                            "set's name, as the Relabel tab names it")
    group.add_argument("--soft-labels", action="store_true",
                       help="train on the distribution of the annotators' emotion votes (needs --corrections)")
    group.add_argument("--original-share", type=float, default=0.0, metavar="W",
                       help="with --soft-labels: give this share (0 to 1) of each face's target to its original "
                            "label and the rest to the votes, so that the model learns both label sets")
    group.add_argument("--val-labels", default=None, metavar="FILE",
                       help="a second label set for the val faces (sample_id,label CSV or Parquet, e.g. their FER+ "
                            "majority labels from `python -m annotate.ferplus`): the best epoch, the mirror gate and "
                            "the temperature are chosen on it, and the card reports val against both it and the "
                            "faces' own labels. Give it when the model learns from votes (--corrections, "
                            "--soft-labels): those labels are what such a model is trained for. None: the val "
                            "faces' own labels choose")
    group.add_argument("--val-labels-name", default=None, metavar="NAME",
                       help="the --val-labels set's name in the card and the console; None: the file's stem")


def _add_model_args(group: argparse._ArgumentGroup) -> None:
    from fer_core.model import list_models

    group.add_argument("--model", default="fer_vgg", choices=list_models(), help="architecture")
    group.add_argument("--dropout", type=float, default=0.5,
                       help="dropout before the classifier (overrides the architecture's own)")
    group.add_argument("--init", default=None, metavar="WEIGHTS",
                       help="start from these trained weights (safetensors with its card; the same architecture "
                            "and classes) instead of at random: fine-tuning")


def _add_optimisation_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--epochs", type=int, default=86, help="epochs of the schedule (with a time budget: at most)")
    group.add_argument("--time-budget", type=parse_time_budget, default=DEFAULT_TIME_BUDGET, metavar="DURATION",
                       help="end the whole run within this wall time (e.g. 2h, 90m, 7200; none: no budget): after "
                            "each epoch the schedule is planned over the epochs that fit, measured on this machine, "
                            "at most --epochs (see fer_core.time_budget); not with --folds, where the default is none")
    group.add_argument("--batch-size", type=int, default=128, help="faces per step (shared by torchrun's processes)")
    group.add_argument("--opt", default="adamw", choices=OPTIMIZERS, help="adamw, or sgd (Nesterov, momentum 0.9)")
    group.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (try 0.05 with sgd)")
    group.add_argument("--weight-decay", type=float, default=0.1, help="decoupled for adamw (try 5e-4 with sgd)")
    group.add_argument("--warmup-epochs", type=float, default=2.0, help="linear warm-up, then cosine decay to zero")
    group.add_argument("--label-smoothing", type=float, default=0.1, help="of the cross-entropy's targets")
    group.add_argument("--class-weighting", default="sqrt", choices=CLASS_WEIGHTINGS,
                       help="loss weights per class: 1/sqrt(frequency), or none")
    group.add_argument("--ema-decay", type=float, default=0.999, help="weight EMA evaluated and kept (0 turns it off)")
    group.add_argument("--self-kd", type=float, default=0.7, metavar="WEIGHT",
                       help="self-distillation: the weight EMA teaches the model on every augmented batch, its share "
                            "of the loss rising linearly from 0 to WEIGHT over the run (0 turns it off)")
    group.add_argument("--kd-temperature", type=float, default=2.0, help="softening temperature of --self-kd")
    group.add_argument("--no-augment", action="store_true", help="train on the faces as they are")
    group.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (for tests)")


def _add_run_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--out", required=True, help="output folder: checkpoint, logs, model")
    group.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    group.add_argument("--folds", type=int, default=None, metavar="K",
                       help="train K models on K-1 folds each and write out-of-fold probabilities "
                            "of every training face")
    group.add_argument("--fold-index", type=int, default=None, metavar="I",
                       help="with --folds: train fold I alone (run the folds in parallel processes; "
                            "then --folds K --resume combines them)")
    group.add_argument("--seed", type=int, default=0,
                       help="of the weights, the order of the faces and the augmentation")
    group.add_argument("--device", default="auto", choices=DEVICES, help="auto: a CUDA GPU where there is one")
    group.add_argument("--amp", default="auto", choices=AMP_MODES,
                       help="bf16 autocast: auto (where the hardware has it), on or off")
    group.add_argument("--threads", type=int, default=None, help="CPU threads; None: all cores")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--dump-state", default=None, metavar="DIR",
                       help="at the end of training, each process writes its weights, weight EMA (BatchNorm buffers "
                            "included) and every step's loss to DIR/rank_<R>.safetensors: to check that torchrun's "
                            "processes ended alike and match a run in one process (docs/distributed.md)")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_core.train", description=__doc__.splitlines()[0],
                                     epilog="The defaults are the recipe of the bundled model (docs/model.md).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, add_help=add_help)
    _add_data_args(parser.add_argument_group("data"))
    _add_model_args(parser.add_argument_group("model"))
    _add_optimisation_args(parser.add_argument_group("optimisation"))
    _add_run_args(parser.add_argument_group("run"))
    return parser


# ---------------------------------------------------------------- one epoch


@dataclass
class Setup:
    """A run's model and what trains it, built once (:func:`_setup`)."""

    model: nn.Module  #: what the loss is computed with: the model, wrapped in DDP under torchrun
    module: nn.Module  #: the model itself
    ema: torch.optim.swa_utils.AveragedModel  #: the weight EMA (evaluated and kept when --ema-decay > 0)
    optimizer: torch.optim.Optimizer
    loss_weights: torch.Tensor  #: (C,) class weights
    augment: AugmentConfig | None
    device: torch.device
    amp: torch.dtype | None
    processes: Processes
    ema_decay: float
    step_losses: list[float] = field(default_factory=list)  #: every step's loss (the whole batch's) in this run

    @property
    def evaluated(self) -> nn.Module:
        """The weights evaluated and kept: the EMA's, or the model's own without one."""
        return self.ema.module if self.ema_decay > 0 else self.module


def epoch_steps(faces: int, args: argparse.Namespace, world_size: int = 1) -> int:
    """Optimisation steps in an epoch of ``faces`` faces.

    A last batch too small to share between processes is left out.
    """
    steps = math.ceil(faces / args.batch_size)
    if world_size > 1 and faces - (steps - 1) * args.batch_size < world_size:
        steps -= 1
    return min(steps, args.max_steps) if args.max_steps else steps


def loss_denominators(setup: Setup, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """What the means of a global batch's loss divide by: the cross-entropy's (the summed class weights of
    ``y`` (B,) class indices, as ``F.cross_entropy`` with weights does; B for ``y`` (B, C) probabilities)
    and the distillation's (B)."""
    if y.ndim == 1:
        return setup.loss_weights[y].sum(), len(y)
    return torch.tensor(float(len(y)), device=y.device), len(y)


def compute_loss(setup: Setup, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, *,
                 step: int, total_steps: int,
                 denominators: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """Cross-entropy (class weights, label smoothing; ``y`` class indices or probabilities) plus self-distillation.

    ``denominators`` (:func:`loss_denominators` of the global batch; default: of ``y``) makes the
    result this process's share of the global batch's loss: the processes' shares sum to the
    loss one process computes on the whole batch.
    """
    ce_total, count = loss_denominators(setup, y) if denominators is None else denominators
    with torch.autocast(setup.device.type, dtype=setup.amp or torch.float32, enabled=setup.amp is not None):
        logits = setup.model(x)
    loss = F.cross_entropy(logits.float(), y, weight=setup.loss_weights, label_smoothing=args.label_smoothing,
                           reduction="sum") / ce_total
    if args.self_kd:
        # Self-distillation from the weights' moving average (a "mean teacher"), its share rising
        # over the run as in progressive self-knowledge distillation (Kim et al., 2021): early on the
        # average knows little, later it is the steadier model, and its soft targets temper
        # FER2013's noisy labels.
        share = args.self_kd * min(1.0, step / max(total_steps - 1, 1))
        soft = teacher_probabilities(setup.ema.module.eval(), x, args.kd_temperature, setup.amp)
        kd = distillation_loss(logits, soft, args.kd_temperature) * len(x) / count  # batchmean -> share of the batch
        loss = (1 - share) * loss + share * kd
    return loss


def _process_batch(setup: Setup, images: torch.Tensor, batch: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of a global ``batch`` (B,) of face indices: the model input and the indices.

    The augmentation is drawn for the whole global batch from ``generator``, which every process
    seeds alike, so a face gets the same transform whatever the number of processes (each process
    augments the whole batch, a small cost next to the model's).
    """
    x = to_input(images[batch])
    if setup.augment is not None:
        x = augment_batch(x, setup.augment, generator)
    mine = shard(x, setup.processes).contiguous(memory_format=torch.channels_last)
    return mine, shard(batch, setup.processes)


def train_one_epoch(setup: Setup, images: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace, *,
                    epoch: int, step: int, total_steps: int, warmup: int, planned: int) -> dict[str, Any]:
    """One pass over ``images`` (N, 48, 48) uint8 with ``targets`` (N,) or (N, C), in an order seeded by (seed, epoch).

    Under torchrun every process draws the same order and global batches, trains on its share
    (:func:`fer_core.training.utils.shard`) and backpropagates its share of the global batch's
    loss times the world size (DDP averages the gradients): the gradient of one process's step.
    Returns the mean training loss, the steps taken, the last learning rate and the next step's
    number; the steps' losses are appended to ``setup.step_losses``.
    """
    from tqdm.auto import tqdm

    device, processes = setup.device, setup.processes
    # Seeds derived from (seed, epoch): a resumed run draws exactly what the first run would have. The
    # global generator (dropout) gets one stream per process; process 0's is that of a run in one process.
    torch.manual_seed(args.seed * 1000 + epoch + 7919 * processes.rank)
    generator = torch.Generator(device=device).manual_seed(args.seed * 1000 + epoch)
    order = torch.randperm(len(images), generator=generator, device=device)  # the same in every process
    n_steps = epoch_steps(len(order), args, processes.world_size)
    setup.model.train()
    losses = torch.zeros(n_steps, dtype=torch.float64, device=device)  # this process's shares, summed below
    sizes, lr = [], args.lr
    bar = tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{planned}", leave=False,
               disable=args.no_progress or not processes.is_main)
    for i in bar:
        batch = order[i * args.batch_size:(i + 1) * args.batch_size]
        x, mine = _process_batch(setup, images, batch, generator)
        lr = lr_at(step, total_steps, warmup, args.lr)
        for group in setup.optimizer.param_groups:
            group["lr"] = lr
        loss = compute_loss(setup, x, targets[mine], args, step=step, total_steps=total_steps,
                            denominators=loss_denominators(setup, targets[batch]))
        setup.optimizer.zero_grad(set_to_none=True)
        (loss * processes.world_size).backward()
        setup.optimizer.step()
        setup.ema.update_parameters(setup.module)
        step += 1
        losses[i] = loss.detach()
        sizes.append(len(batch))
        if not bar.disable and (i % 10 == 0 or i == n_steps - 1):  # .item() waits for the GPU: not every step
            bar.set_postfix(loss=f"{losses[i].item() * processes.world_size:.3f}")
    losses = all_sum_tensor(losses, processes).cpu()
    setup.step_losses.extend(losses.tolist())
    weights = torch.tensor(sizes, dtype=torch.float64)
    return {"train_loss": float((losses * weights).sum() / weights.sum().clamp_min(1)), "steps": n_steps,
            "lr": lr, "train_faces": len(order), "world_size": processes.world_size, "step": step}


@torch.inference_mode()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, names: list[str], *, device: torch.device,
             amp: torch.dtype | None = None, flip_tta: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Val accuracy, macro-F1 and per-class recall (:func:`fer_core.evaluate.compute_metrics`) and the logits (N, C)."""
    logits = predict_logits(model, images, device=device, amp=amp, flip_tta=flip_tta)
    metrics = compute_metrics(labels, logits.argmax(1), names)
    return {"val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"],
            "val_recall": list(metrics["per_class_recall"].values())}, logits


# ---------------------------------------------------------------- a run


def _setup(args: argparse.Namespace, out: Path, data: TrainingData, label_map: LabelMap, device: torch.device,
           processes: Processes, resume: bool) -> tuple[Setup, dict[str, Any]]:
    """The model, its EMA and optimizer (from the checkpoint when ``resume``), and the run's counters."""
    from fer_core.model import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kwargs = {} if args.dropout is None else {"dropout": args.dropout}
    module = create_model(args.model, num_classes=len(label_map.names), **kwargs)
    if args.init and not resume:
        init_weights(module, args.init, architecture=args.model, names=label_map.names)
    if processes.distributed:  # BatchNorm over the whole batch, as in one process
        module = synchronise_batchnorm(module, device)
    module = module.to(device).to(memory_format=torch.channels_last)
    ema = make_ema(module, max(args.ema_decay, 0.0))
    optimizer = build_optimizer(module, args.opt, lr=args.lr, weight_decay=args.weight_decay)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_accuracy": -1.0, "best_epoch": 0, "log": [],
                             "args": vars(args), "seconds": 0.0, "wall_seconds_used": 0.0,
                             "planned_epochs": args.epochs}
    if resume:
        state = load_checkpoint(out, model=module, ema=ema, optimizer=optimizer, device=device)
        if processes.is_main:
            print(f"resuming {out} after epoch {state['epoch']}", flush=True)
    model = nn.parallel.DistributedDataParallel(module) if processes.distributed else module
    weights = class_weights(data.labels[data.keep], len(label_map.names), args.class_weighting).to(device)
    setup = Setup(model, module, ema, optimizer, weights, None if args.no_augment else AugmentConfig(), device,
                  autocast_dtype(device, args.amp), processes, args.ema_decay)
    return setup, state


def _clock(seconds: float) -> str:
    """``1:05:09`` for 3909 seconds."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _plan(state: dict[str, Any], budget: float, used: float, max_epochs: int, steps_per_epoch: int) -> int:
    """The run's epochs in all, planned from the epochs logged in ``state`` and the time left of ``budget``."""
    costs = [EpochCost(r["steps"], r["seconds"] - r["val_seconds"], r["val_seconds"])
             for r in state["log"] if "steps" in r]
    epoch_seconds = estimate_epoch_seconds(costs, steps_per_epoch)
    return plan_epochs(done=state["epoch"], max_epochs=max_epochs, seconds_left=budget - used - finish_reserve(costs),
                       epoch_seconds=epoch_seconds)


def _end_epoch(setup: Setup, args: argparse.Namespace, out: Path, state: dict[str, Any], row: dict[str, Any], *,
               val: FaceTable, val_labels: ValLabels, label_map: LabelMap, planned: int,
               wall_used: Callable[[], float], steps_per_epoch: int, start: float) -> int:
    """The first process's end of an epoch: val, the best epoch's weights, the plan, checkpoint and logs.

    The best epoch is the one with the highest val accuracy on the labels that choose
    (``--val-labels``, else the val faces' own). Returns the planned epochs of the run.
    """
    from fer_core.weights import save_model

    val_start = time.perf_counter()
    metrics, logits = evaluate(setup.evaluated, val.images, val_labels.original, label_map.names,
                               device=setup.device, amp=setup.amp)
    metrics.update(val_labels.epoch_metrics(logits, label_map.names))
    seconds = time.perf_counter() - start
    state["seconds"] += seconds
    row.update({**metrics, "seconds": round(seconds, 2), "val_seconds": round(time.perf_counter() - val_start, 3),
                "planned_epochs": planned})
    row = {"epoch": state["epoch"], **row}
    state["log"].append(row)
    chosen_on = metrics[f"{SECOND_PREFIX}accuracy" if val_labels.second is not None else "val_accuracy"]
    if chosen_on > state["best_accuracy"]:
        state["best_accuracy"], state["best_epoch"] = chosen_on, state["epoch"]
        save_model(setup.evaluated, out / "best.safetensors",
                   {**card_base(args, label_map.names), "epoch": state["epoch"]})
    if args.time_budget:
        planned = _plan(state, args.time_budget, wall_used(), args.epochs, steps_per_epoch)
    state["planned_epochs"] = planned
    state["wall_seconds_used"] = wall_used()
    save_checkpoint(out, model=setup.module, ema=setup.ema, optimizer=setup.optimizer, state=state)
    write_logs(out, state["log"])
    second = (f"  {val_labels.name} acc {metrics[SECOND_PREFIX + 'accuracy']:.4f}  "
              f"macro-F1 {metrics[SECOND_PREFIX + 'macro_f1']:.4f}" if val_labels.second is not None else "")
    print(f"epoch {state['epoch']:3d}  loss {row['train_loss']:.4f}  val acc {metrics['val_accuracy']:.4f}  "
          f"macro-F1 {metrics['val_macro_f1']:.4f}{second}  lr {row['lr']:.4g}  {seconds:.1f}s"
          + (f"  (plan: {planned} epochs; {_clock(wall_used())} of {_clock(args.time_budget)} used)"
             if args.time_budget else ""), flush=True)
    return planned


def train_model(args: argparse.Namespace, out: Path, data: TrainingData, val: FaceTable, label_map: LabelMap, *,
                device: torch.device, processes: Processes = ONE_PROCESS, resume: bool = False,
                card_extra: dict[str, Any] | None = None, started: float | None = None,
                val_labels: ValLabels | None = None) -> dict[str, Any] | None:
    """Train on ``data``'s kept faces, checkpointing into ``out`` (continuing its checkpoint when ``resume``).

    Writes the model and its card (``card_extra`` merged into the card's ``training``) and returns
    the card (None in the processes other than the first). ``started`` (``time.monotonic()``) is
    when this run began, for ``args.time_budget``; default: now. ``val_labels`` (default: the val
    faces' own labels alone) says which labels choose the best epoch, the mirror gate and the
    temperature (:mod:`fer_core.training.val_labels`).
    """
    started = time.monotonic() if started is None else started
    val_labels = ValLabels(label_map(val.labels)) if val_labels is None else val_labels
    check_out(out, resume)
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
    setup, state = _setup(args, out, data, label_map, device, processes, resume)
    check_selection(state, val_labels, resume)
    images = torch.from_numpy(data.table.images[data.keep]).to(device)
    labels = torch.from_numpy(data.labels[data.keep]).to(device)
    # Probability targets (--soft-labels) or class indices: F.cross_entropy takes either.
    targets = labels if data.targets is None else torch.from_numpy(data.targets[data.keep]).to(device)
    if len(labels) == 0:
        raise FERError(f"no training face left to train on in {out}")
    steps_per_epoch = epoch_steps(len(labels), args, processes.world_size)
    used_before = state.get("wall_seconds_used", 0.0)

    def wall_used() -> float:
        """Wall seconds of every run of ``out`` so far (carried across --resume in the checkpoint)."""
        return used_before + time.monotonic() - started

    # Without a budget the plan is --epochs; with one, it is planned again after every epoch.
    planned = min(state.get("planned_epochs", args.epochs), args.epochs) if args.time_budget else args.epochs
    if processes.is_main:
        from fer_core.model import count_params

        print(f"{args.model}: {count_params(setup.module) / 1e6:.2f}M parameters; {len(labels)} training faces, "
              f"{len(val)} val faces; {len(label_map.names)} classes; device {device}"
              + (f" x {processes.world_size} processes" if processes.distributed else "")
              + f", autocast {setup.amp}", flush=True)
    while state["epoch"] < planned:
        start = time.perf_counter()
        total_steps = planned * steps_per_epoch
        row = train_one_epoch(setup, images, targets, args, epoch=state["epoch"], step=state["step"],
                              total_steps=total_steps, warmup=int(args.warmup_epochs * total_steps / max(planned, 1)),
                              planned=planned)
        state["step"], state["epoch"] = row.pop("step"), state["epoch"] + 1
        if processes.is_main:
            planned = _end_epoch(setup, args, out, state, row, val=val, val_labels=val_labels, label_map=label_map,
                                 planned=planned, wall_used=wall_used, steps_per_epoch=steps_per_epoch, start=start)
        planned = broadcast(planned, processes)
    if args.dump_state:
        save_process_state(Path(args.dump_state), processes.rank, model=setup.module, ema=setup.ema,
                           step_losses=setup.step_losses)
    if not processes.is_main:
        broadcast(None, processes)  # wait for the first process to write the model
        return None
    return _finish(args, out, setup, state, label_map, data, val, val_labels, card_extra or {}, wall_used)


def _choose_inference(best: nn.Module, val: FaceTable, val_labels: ValLabels, names: list[str], *,
                      device: torch.device) -> tuple[dict[str, Any], dict[str, Any], bool, np.ndarray]:
    """The best epoch's val metrics without and with the mirror, whether the mirror is kept (it gains at least
    :data:`FLIP_TTA_MIN_GAIN` on the labels that choose), and the logits (N, C) as served."""
    plain, plain_logits = evaluate(best, val.images, val_labels.original, names, device=device)
    flip, flip_logits = evaluate(best, val.images, val_labels.original, names, device=device, flip_tta=True)
    plain.update(val_labels.epoch_metrics(plain_logits, names))
    flip.update(val_labels.epoch_metrics(flip_logits, names))
    key = "val_accuracy" if val_labels.second is None else f"{SECOND_PREFIX}accuracy"
    use_flip = flip[key] - plain[key] >= FLIP_TTA_MIN_GAIN
    return plain, flip, use_flip, flip_logits if use_flip else plain_logits


def _calibrate(logits: np.ndarray, val_labels: ValLabels) -> dict[str, Any]:
    """The temperature fitted to the logits (N, C) as served, on the labels that choose; the ECE before and after."""
    from fer_core.calibration import expected_calibration_error, fit_temperature, softmax

    chosen, labels = val_labels.selection(logits)
    temperature = fit_temperature(chosen, labels)
    return {"temperature": temperature,
            "fitted_on": "val" if val_labels.second is None else f"val, {val_labels.name} labels ({len(labels)} faces)",
            "ece_before": expected_calibration_error(softmax(chosen), labels),
            "ece_after": expected_calibration_error(softmax(chosen, temperature), labels)}


def _finish(args: argparse.Namespace, out: Path, setup: Setup, state: dict[str, Any], label_map: LabelMap,
            data: TrainingData, val: FaceTable, val_labels: ValLabels, card_extra: dict[str, Any],
            wall_used: Callable[[], float]) -> dict[str, Any]:
    """Write the best epoch as ``model.safetensors`` with its card (metrics, calibration), and the curve."""
    from fer_core.model import count_params
    from fer_core.weights import load_model, save_model

    budget = args.time_budget
    if budget and state["epoch"] < args.epochs:
        print(f"time budget: {state['epoch']} of at most {args.epochs} epochs fit in {_clock(budget)}", flush=True)
    device = setup.device
    best, _ = load_model(out / "best.safetensors", device=device)
    plain, flip, use_flip, chosen = _choose_inference(best, val, val_labels, label_map.names, device=device)
    calibration = _calibrate(chosen, val_labels)
    by_labels = val_labels.by_labels(chosen, label_map.names)
    card = model_card(args, label_map=label_map, data=data, val_faces=len(val), state=state, device=device,
                      world_size=setup.processes.world_size, n_params=count_params(setup.module),
                      val_metrics={"plain": plain, "flip_tta": flip},
                      inference={"flip_tta": bool(use_flip), "flip_tta_min_gain": FLIP_TTA_MIN_GAIN},
                      calibration=calibration, extra=card_extra,
                      selection={"selected_on": val_labels.name, "val_by_labels": by_labels},
                      backend=backend_name(setup.processes))
    save_model(best, out / "model.safetensors", card)
    plot_curve(state["log"], out / "curve.png", second=None if val_labels.second is None else val_labels.name)
    chosen_on = "" if val_labels.second is None else f" (chosen on the {val_labels.name} labels)"
    print(f"best epoch {state['best_epoch']}{chosen_on}: val accuracy "
          f"{plain['val_accuracy']:.4f} (flip TTA {flip['val_accuracy']:.4f}, {'on' if use_flip else 'off'} by "
          f"default), macro-F1 {plain['val_macro_f1']:.4f}; temperature {calibration['temperature']:.3f}, ECE "
          f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}; wrote {out / 'model.safetensors'}")
    if val_labels.second is not None:
        print("val as served: " + "; ".join(f"{name} labels: accuracy {m['accuracy']:.4f}, macro-F1 "
                                            f"{m['macro_f1']:.4f} ({m['faces']} faces)"
                                            for name, m in by_labels.items()))
    if budget:
        print(f"time budget: the run took {_clock(wall_used())} of {_clock(budget)}", flush=True)
    broadcast(None, setup.processes)
    return card


# ---------------------------------------------------------------- folds


def train_folds(args: argparse.Namespace, device: torch.device) -> int:
    """``--folds K``: K models, each on K-1 folds, and the out-of-fold probabilities of every training face."""
    from fer_core import folds

    k, only = args.folds, args.fold_index
    folds.check_fold_args(k, only)
    out = Path(args.out)
    folds.check_out(out, args.resume, only)
    label_map = LabelMap(args.merge)
    train, val = load_training_data(args)
    data = prepare_training_data(args, train, label_map)
    val_labels = load_val_labels(args, val, label_map)
    assignment = folds.assign_folds(train.labels, k, args.seed)
    plan = folds.make_plan(args, data, label_map, assignment)
    folds.check_plan(out, plan, args.resume or (only is not None and (out / folds.PLAN_FILE).is_file()))
    parts = []
    for fold in range(k) if only is None else [only]:
        fold_dir = out / f"fold_{fold}"
        if (fold_dir / folds.OOF_FILE).is_file():
            print(f"fold {fold + 1}/{k}: finished, skipped", flush=True)
            parts.append(folds.read_fold_oof(fold_dir))
            continue
        held_out = np.flatnonzero(assignment == fold)
        if not folds.fold_trained(fold_dir):
            resume = (fold_dir / "checkpoint.json").is_file()
            print(f"fold {fold + 1}/{k}: {'resuming' if resume else 'training on'} {len(data) - len(held_out)} "
                  f"faces, holding out {len(held_out)}", flush=True)
            subset = data.subset(assignment != fold)
            folds.write_train_ids(fold_dir, subset)
            train_model(argparse.Namespace(**{**vars(args), "out": str(fold_dir), "resume": resume}), fold_dir,
                        subset, val, label_map, device=device, resume=resume, val_labels=val_labels,
                        card_extra={"fold": fold, "folds": k, "held_out_faces": len(held_out)})
        parts.append(folds.fold_oof(fold_dir, data, held_out, fold, label_map.names, device))
    if only is not None:
        print(f"fold {only + 1}/{k} finished; once every fold is, `--folds {k} --resume` (without --fold-index) "
              f"writes the combined files in {out}", flush=True)
        return 0
    folds.combine(out, parts, data, label_map, assignment, args, plan)
    return 0


# ---------------------------------------------------------------- main


def _check_args(args: argparse.Namespace) -> None:
    """Option values that cannot work, refused before any data is read."""
    if args.epochs < 1:
        raise FERError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise FERError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.fold_index is not None and args.folds is None:
        raise FERError("--fold-index picks one fold of a --folds run: give --folds K too")
    if args.init and not Path(args.init).is_file():
        raise FERError(f"--init: no file at {args.init!r}")
    if args.val_labels and not Path(args.val_labels).expanduser().is_file():
        raise FERError(f"--val-labels: no file at {args.val_labels!r} (write the FER+ labels of the val faces with "
                       "`python -m annotate.ferplus VOTES --data VAL --out FILE`)")
    if args.val_labels_name and not args.val_labels:
        raise FERError("--val-labels-name names the --val-labels set: give --val-labels FILE too")
    if args.self_kd:
        if not 0 < args.self_kd <= 1:
            raise FERError(f"--self-kd must be in (0, 1] (or 0: off), got {args.self_kd}")
        if args.ema_decay <= 0:
            raise FERError("--self-kd distils from the weights' moving average: it needs --ema-decay above 0 "
                           "(or --self-kd 0)")
        if args.kd_temperature <= 0:
            raise FERError(f"--kd-temperature must be above 0, got {args.kd_temperature}")


def _time_budget(args: argparse.Namespace) -> float | None:
    """The budget in seconds: the default applies to one run; a budget given with ``--folds`` is refused."""
    if isinstance(args.time_budget, _RecipeBudget):  # not given: the default
        return None if args.folds is not None else float(args.time_budget)
    if args.folds is not None and args.time_budget is not None:
        raise FERError("--time-budget plans one run's epochs; with --folds give each fold --epochs instead")
    return args.time_budget


@cli_main
def main(args: argparse.Namespace) -> int:
    _check_args(args)
    args.time_budget = _time_budget(args)
    processes, device = init_processes(args.device)
    try:
        if args.folds is not None:
            if processes.distributed:
                raise FERError("--folds trains its models one after another in one process; under torchrun, "
                               "start one process per fold with --fold-index instead")
            return train_folds(args, device)
        started = time.monotonic()  # a time budget counts the data loading too
        out = Path(args.out)
        check_out(out, args.resume)
        label_map = LabelMap(args.merge)
        train, val = load_training_data(args)
        data = prepare_training_data(args, train, label_map, verbose=processes.is_main)
        val_labels = load_val_labels(args, val, label_map)
        train_model(args, out, data, val, label_map, device=device, processes=processes, resume=args.resume,
                    started=started, val_labels=val_labels)
        return 0
    finally:
        close_processes(processes)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
