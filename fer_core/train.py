"""Train a FER CNN: ``python -m fer_core.train DATA --val VAL --out DIR``.

Reads any data form :mod:`fer_core.datasets` reads. Per epoch it logs loss,
val accuracy, macro-F1, lr and seconds (``log.csv``, ``log.jsonl``, console),
saves a resumable checkpoint (safetensors + JSON, no pickles), and keeps the
best epoch on val. At the end it writes ``model.safetensors`` with its model
card ``model.json`` and ``curve.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_core._validation import FERError
from fer_core.augment import AugmentConfig, augment_batch
from fer_core.constants import IMAGE_SIZE, INPUT_MEAN, INPUT_STD
from fer_core.labels import EMOTIONS, normalise

__all__ = ["get_args_parser", "main", "resolve_device", "to_input", "predict_logits", "LabelMap"]


# ---------------------------------------------------------------- labels


class LabelMap:
    """FER2013 ids -> training class indices, with ``--merge disgust=angry`` folding classes together."""

    def __init__(self, merges: list[str] | None = None) -> None:
        target = {e: e for e in EMOTIONS}
        for spec in merges or []:
            source, sep, dest = spec.partition("=")
            src, dst = normalise(source), normalise(dest)
            if not sep or src is None or dst is None or src == dst:
                raise FERError(f"--merge expects SOURCE=TARGET with two different emotions, e.g. disgust=angry; got {spec!r}")
            target[src] = dst
        self.names: list[str] = [e for e in EMOTIONS if target[e] == e]
        self.index = np.array([self.names.index(target[e]) for e in EMOTIONS], dtype=np.int64)

    def __call__(self, fer_ids: np.ndarray) -> np.ndarray:
        return self.index[np.asarray(fer_ids, dtype=np.int64)]


# ---------------------------------------------------------------- tensors


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FERError("--device cuda was asked for but no CUDA GPU is available")
    if name not in ("cpu", "cuda"):
        raise FERError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """bf16 autocast on CUDA, and on CPUs with native bf16 (AMX/AVX512-BF16) where it measured faster."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "on":
        return torch.bfloat16
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else None


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 faces (N, 48, 48) -> normalised float (N, 1, 48, 48), channels-last."""
    x = images.unsqueeze(1).float().div_(255.0).sub_(INPUT_MEAN).div_(INPUT_STD)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: np.ndarray | torch.Tensor, *, device: torch.device, batch_size: int = 512,
    flip_tta: bool = False, amp: torch.dtype | None = None,
) -> np.ndarray:
    """Logits (N, K) of a model on uint8 faces (N, 48, 48); with ``flip_tta`` averaged with the mirror image."""
    model.eval()
    data = torch.as_tensor(images)
    out = []
    for start in range(0, len(data), batch_size):
        x = to_input(data[start:start + batch_size].to(device))
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x).float()
            if flip_tta:
                logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
        out.append(logits.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


# ---------------------------------------------------------------- data


def _load(path: str, *, cache_dir: str | None):
    from fer_core.datasets import load_faces

    return load_faces(path, cache_dir=cache_dir)


def load_training_data(args: argparse.Namespace):
    """Training and validation tables: DATA's train split (or all of it), VAL's val split (or all of it)."""
    data = _load(args.data, cache_dir=args.cache_dir)
    splits = set(data.frame["split"])
    train = data.split("train") if "train" in splits else data.select(data.frame["split"].to_numpy() != "val")
    if args.val:
        val_data = _load(args.val, cache_dir=args.cache_dir)
        val = val_data.split("val") if "val" in set(val_data.frame["split"]) else val_data
    elif "val" in splits:
        val = data.split("val")
    else:
        raise FERError(f"{args.data} has no 'val' split: give validation faces with --val")
    if len(train) == 0:
        raise FERError(f"{args.data} holds no training faces")
    return train, val


def quality_of(table) -> np.ndarray:
    if "quality_score" in table.frame.columns:
        return table.frame["quality_score"].to_numpy(dtype=np.float64)
    from fer_core.quality import score_faces

    return score_faces(table.images)["quality_score"].to_numpy(dtype=np.float64)


def curriculum_threshold(epoch: int, epochs: int, stages: list[float]) -> float:
    """Minimum quality in force at ``epoch``: the stages split the epochs into equal parts."""
    if not stages:
        return -math.inf
    return stages[min(len(stages) - 1, epoch * len(stages) // max(epochs, 1))]


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor:
    """Loss weights per class: ``none``, ``sqrt`` (inverse square root of frequency) or ``balanced``."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    counts = np.maximum(counts, 1)
    if mode == "none":
        weights = np.ones(num_classes)
    elif mode == "sqrt":
        weights = 1 / np.sqrt(counts)
    elif mode == "balanced":
        weights = 1 / counts
    else:
        raise FERError(f"unknown class weighting {mode!r}; choose none, sqrt or balanced")
    weights = weights / (weights * counts).sum() * counts.sum()  # average weight per face stays 1
    return torch.tensor(weights, dtype=torch.float32)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(out: Path, *, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Everything needed to continue exactly: weights, EMA, optimizer buffers, counters (safetensors + JSON)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_state = optimizer.state_dict()
    for pid, buffers in opt_state["state"].items():
        for name, value in buffers.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{name}"] = value.detach().cpu().contiguous()
    meta = {**state, "param_groups": opt_state["param_groups"]}
    save_file(tensors, str(out / ".checkpoint.safetensors.part"))
    (out / ".checkpoint.json.part").write_text(json.dumps(meta))
    os.replace(out / ".checkpoint.safetensors.part", out / "checkpoint.safetensors")
    os.replace(out / ".checkpoint.json.part", out / "checkpoint.json")


def load_checkpoint(out: Path, *, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((out / "checkpoint.json").read_text())
    tensors = load_file(str(out / "checkpoint.safetensors"), device=str(device))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt_state: dict[str, Any] = {"state": {}, "param_groups": meta.pop("param_groups")}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict(opt_state)
    return meta


# ---------------------------------------------------------------- training


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases (1-D parameters).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    raise FERError(f"unknown optimizer {args.opt!r}; choose sgd or adamw")


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def val_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    pred = logits.argmax(1)
    classes = list(range(num_classes))
    return {
        "val_accuracy": float(accuracy_score(labels, pred)),
        "val_macro_f1": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0)),
        "val_recall": [float(r) for r in recall_score(labels, pred, labels=classes, average=None, zero_division=0)],
    }


def _code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def plot_curve(log: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [r["train_loss"] for r in log], label="train loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [r["val_accuracy"] for r in log], label="val accuracy")
    ax2.plot(epochs, [r["val_macro_f1"] for r in log], label="val macro-F1")
    ax2.set_xlabel("epoch"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    from fer_core.model import list_models

    parser = argparse.ArgumentParser(prog="python -m fer_core.train", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("data", help="training faces: folder, fer2013.csv, Parquet or hub id (its train split is used)")
    data.add_argument("--val", default=None, help="validation faces (its val split, else all); default: DATA's val split")
    data.add_argument("--min-quality", type=float, default=None, help="train only on faces with quality_score above this")
    data.add_argument("--curriculum", default=None,
                      help="quality stages over equal parts of the epochs, e.g. 0.8,0.5,0 (trains on faces above each)")
    data.add_argument("--merge", action="append", default=[], help="fold one emotion into another, e.g. disgust=angry")
    data.add_argument("--cache-dir", default=None, help="data set cache folder")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="fer_fastnet", choices=list_models(), help="architecture")
    model.add_argument("--dropout", type=float, default=None, help="override the architecture's dropout")
    run = parser.add_argument_group("optimisation")
    run.add_argument("--epochs", type=int, default=75)
    run.add_argument("--batch-size", type=int, default=128)
    run.add_argument("--opt", default="adamw", help="adamw or sgd (Nesterov, momentum 0.9)")
    run.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (try 0.1 with sgd)")
    run.add_argument("--weight-decay", type=float, default=0.05, help="decoupled for adamw (try 5e-4 with sgd)")
    run.add_argument("--warmup-epochs", type=float, default=2.0)
    run.add_argument("--label-smoothing", type=float, default=0.1)
    run.add_argument("--class-weighting", default="sqrt", help="none, sqrt or balanced")
    run.add_argument("--ema-decay", type=float, default=0.999, help="weight EMA evaluated and kept (0 turns it off)")
    run.add_argument("--no-augment", action="store_true", help="train on the faces as they are")
    run.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (for tests)")
    env = parser.add_argument_group("run")
    env.add_argument("--out", required=True, help="output folder: checkpoint, logs, model")
    env.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    env.add_argument("--seed", type=int, default=0)
    env.add_argument("--device", default="auto", help="auto, cpu or cuda")
    env.add_argument("--amp", default="auto", help="bf16 autocast: auto (where the hardware has it), on or off")
    env.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    env.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except FERError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from fer_core.model import count_params, create_model
    from fer_core.weights import save_model

    out = Path(args.out)
    if args.resume and not (out / "checkpoint.json").is_file():
        raise FERError(f"--resume: no checkpoint in {out}")
    if not args.resume and (out / "checkpoint.json").is_file():
        raise FERError(f"{out} already holds a run: add --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = autocast_dtype(device, args.amp)
    stages = [float(s) for s in args.curriculum.split(",")] if args.curriculum else []

    label_map = LabelMap(args.merge)
    train, val = load_training_data(args)
    quality = quality_of(train)
    keep = quality > args.min_quality if args.min_quality is not None else np.ones(len(train), dtype=bool)
    train_images = torch.from_numpy(train.images[keep]).to(device)
    train_labels = torch.from_numpy(label_map(train.labels[keep])).to(device)
    train_quality = quality[keep]
    if len(train_labels) == 0:
        raise FERError(f"no training face has quality above {args.min_quality}")
    val_labels = label_map(val.labels)
    num_classes = len(label_map.names)

    torch.manual_seed(args.seed)
    kwargs = {} if args.dropout is None else {"dropout": args.dropout}
    model = create_model(args.model, num_classes=num_classes, **kwargs).to(device).to(memory_format=torch.channels_last)
    ema = make_ema(model, args.ema_decay if args.ema_decay > 0 else 0.0)
    optimizer = build_optimizer(model, args)
    loss_weights = class_weights(train_labels.cpu().numpy(), num_classes, args.class_weighting).to(device)
    augment = None if args.no_augment else AugmentConfig()

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_accuracy": -1.0, "best_epoch": 0, "log": [],
                             "args": vars(args), "seconds": 0.0}
    if args.resume:
        state = load_checkpoint(out, model=model, ema=ema, optimizer=optimizer, device=device)
        print(f"resuming {out} after epoch {state['epoch']}", flush=True)

    steps_per_epoch = math.ceil(len(train_labels) / args.batch_size)
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    print(f"{args.model}: {count_params(model) / 1e6:.2f}M parameters; {len(train_labels)} training faces, "
          f"{len(val_labels)} val faces; {num_classes} classes; device {device}, autocast {amp}", flush=True)

    for epoch in range(state["epoch"], args.epochs):
        start = time.perf_counter()
        model.train()
        # Seeds derived from (seed, epoch): a resumed run draws exactly what the first run would have.
        torch.manual_seed(args.seed * 1000 + epoch)
        generator = torch.Generator(device=device).manual_seed(args.seed * 1000 + epoch)
        allowed = torch.from_numpy(train_quality >= curriculum_threshold(epoch, args.epochs, stages)).to(device)
        pool = torch.nonzero(allowed).squeeze(1)
        order = pool[torch.randperm(len(pool), generator=generator, device=device)]
        n_steps = min(steps_per_epoch, math.ceil(len(order) / args.batch_size))
        total_loss, seen = 0.0, 0
        bar = tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, disable=args.no_progress)
        for i in bar:
            index = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = to_input(train_images[index])
            if augment is not None:
                x = augment_batch(x, augment, generator).contiguous(memory_format=torch.channels_last)
            y = train_labels[index]
            lr = lr_at(state["step"], total_steps, warmup, args.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=loss_weights, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update_parameters(model)
            state["step"] += 1
            total_loss += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
        evaluated = ema.module if args.ema_decay > 0 else model
        logits = predict_logits(evaluated, val.images, device=device, amp=amp)
        metrics = val_metrics(logits, val_labels, num_classes)
        seconds = time.perf_counter() - start
        state["seconds"] += seconds
        row = {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), **metrics, "lr": lr,
               "seconds": round(seconds, 2), "train_faces": int(len(order))}
        state["log"].append(row)
        state["epoch"] = epoch + 1
        if metrics["val_accuracy"] > state["best_accuracy"]:
            state["best_accuracy"], state["best_epoch"] = metrics["val_accuracy"], epoch + 1
            save_model(evaluated, out / "best.safetensors", {**_card_base(args, label_map), "epoch": epoch + 1})
        save_checkpoint(out, model=model, ema=ema, optimizer=optimizer, state=state)
        _write_logs(out, state["log"])
        print(f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  val acc {metrics['val_accuracy']:.4f}  "
              f"macro-F1 {metrics['val_macro_f1']:.4f}  lr {lr:.4g}  {seconds:.1f}s", flush=True)

    _finish(out, args, state, label_map, train, val, device, count_params(model))
    return 0


def _write_logs(out: Path, log: list[dict[str, Any]]) -> None:
    import csv

    with (out / "log.jsonl").open("w") as handle:
        for row in log:
            handle.write(json.dumps(row) + "\n")
    with (out / "log.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_accuracy", "val_macro_f1", "lr", "seconds"])
        for row in log:
            writer.writerow([row["epoch"], f"{row['train_loss']:.5f}", f"{row['val_accuracy']:.5f}",
                             f"{row['val_macro_f1']:.5f}", f"{row['lr']:.6g}", row["seconds"]])


def _card_base(args: argparse.Namespace, label_map: LabelMap) -> dict[str, Any]:
    """What is needed to rebuild the model from its weights."""
    return {"architecture": args.model, "model_kwargs": {} if args.dropout is None else {"dropout": args.dropout},
            "labels": label_map.names}


#: Flip test-time augmentation doubles the cost of a face; it is switched on by
#: default only when it gains at least this much val accuracy.
FLIP_TTA_MIN_GAIN = 0.003


def _finish(out: Path, args: argparse.Namespace, state: dict[str, Any], label_map: LabelMap, train, val,
            device: torch.device, n_params: int) -> None:
    """Write the best epoch as ``model.safetensors`` with its card (metrics, calibration), and the curve."""
    from fer_core.calibration import expected_calibration_error, fit_temperature, softmax
    from fer_core.model import MODEL_CONFIGS
    from fer_core.weights import load_model, save_model

    best, _ = load_model(out / "best.safetensors", device=device)
    val_labels = label_map(val.labels)
    k = len(label_map.names)
    plain_logits = predict_logits(best, val.images, device=device)
    flip_logits = predict_logits(best, val.images, device=device, flip_tta=True)
    plain, flip = val_metrics(plain_logits, val_labels, k), val_metrics(flip_logits, val_labels, k)
    use_flip = flip["val_accuracy"] - plain["val_accuracy"] >= FLIP_TTA_MIN_GAIN
    chosen = flip_logits if use_flip else plain_logits
    temperature = fit_temperature(chosen, val_labels)
    base = _card_base(args, label_map)
    card = {
        **base,
        "config": {k_: list(v) if isinstance(v, tuple) else v
                   for k_, v in {**MODEL_CONFIGS[args.model], **base["model_kwargs"]}.items()},
        "parameters": n_params,
        "fer2013_id_to_class": label_map.index.tolist(),
        "input": {"size": [IMAGE_SIZE, IMAGE_SIZE], "channels": 1, "scale": "grey level / 255",
                  "mean": INPUT_MEAN, "std": INPUT_STD, "crop": "whole 48x48 face, FER2013 framing"},
        "training": {
            "data": args.data, "val": args.val or f"{args.data} (val split)",
            "train_faces": int(len(train)), "val_faces": int(len(val)),
            "command": "python -m fer_core.train " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "epochs": args.epochs, "best_epoch": state["best_epoch"], "seed": args.seed,
            "wall_seconds": round(state["seconds"], 1), "device": str(device),
            "augment": asdict(AugmentConfig()) if not args.no_augment else None,
        },
        "val_metrics": {"plain": plain, "flip_tta": flip},
        "inference": {"flip_tta": bool(use_flip), "flip_tta_min_gain": FLIP_TTA_MIN_GAIN},
        "calibration": {
            "temperature": temperature, "fitted_on": "val",
            "ece_before": expected_calibration_error(softmax(chosen), val_labels),
            "ece_after": expected_calibration_error(softmax(chosen, temperature), val_labels),
        },
        "code_version": _code_version(),
        "torch": torch.__version__,
    }
    save_model(best, out / "model.safetensors", card)
    plot_curve(state["log"], out / "curve.png")
    print(f"best epoch {state['best_epoch']}: val accuracy {plain['val_accuracy']:.4f} "
          f"(flip TTA {flip['val_accuracy']:.4f}, {'on' if use_flip else 'off'} by default), "
          f"macro-F1 {plain['val_macro_f1']:.4f}; temperature {temperature:.3f}, ECE "
          f"{card['calibration']['ece_before']:.4f} -> {card['calibration']['ece_after']:.4f}; "
          f"wrote {out / 'model.safetensors'}")


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
