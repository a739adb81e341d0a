"""Train a FER CNN: ``python -m fer_core.train DATA --val VAL --out DIR``.

Reads any data form :mod:`fer_core.datasets` reads. Per epoch it logs loss,
val accuracy, macro-F1, lr and seconds (``log.csv``, ``log.jsonl``, console),
saves a resumable checkpoint (safetensors + JSON, no pickles), and keeps the
best epoch on val. At the end it writes ``model.safetensors`` with its model
card ``model.json`` and ``curve.png``.

``--folds K`` trains K models instead, each on K-1 folds, and writes every training
face's out-of-fold probabilities (see :mod:`fer_core.folds`).

Corrections from the annotation store (``--corrections DB``, see :mod:`annotate`)
apply to the training faces only; val keeps its labels, so val accuracy stays
comparable between runs. A face whose resolved label is one of the seven emotions
trains on it; ``not_a_face`` drops the face; ``unsure``, ties and faces without
votes keep the label they came with. ``--soft-labels`` trains on the distribution
of the emotion votes instead (faces without emotion votes keep their one-hot
label). Label smoothing still applies on top of soft targets: with one to three
annotators per face most vote distributions are one-hot anyway, and the same
``--label-smoothing`` for hard and soft runs means that comparing the two measures
the targets, not a change of regularisation (pass ``--label-smoothing 0`` to train
on the bare distributions).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from fer_core._cli import cli_main
from fer_core._io import atomic_write
from fer_core._validation import FERError
from fer_core.augment import AugmentConfig, augment_batch, mix_batch, mix_targets
from fer_core.constants import IMAGE_SIZE, INPUT_MEAN, INPUT_STD
from fer_core.hardware import cpu_description, cpu_flags
from fer_core.labels import EMOTIONS, normalise
from fer_core.time_budget import EpochCost, estimate_epoch_seconds, finish_reserve, parse_duration, plan_epochs

if TYPE_CHECKING:
    from annotate.store import Store
    from fer_core.datasets import FaceTable

__all__ = [
    "get_args_parser",
    "main",
    "resolve_device",
    "to_input",
    "predict_logits",
    "LabelMap",
    "TrainingData",
    "Corrections",
    "prepare_training_data",
    "read_corrections",
    "fit",
]


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


def device_name(device: torch.device) -> str:
    """The machine a run's wall time was measured on: the GPU's name, or the CPU's with its cores and vector units."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description()


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """bf16 autocast on CUDA, and on CPUs with native bf16 (AMX/AVX512-BF16) where it measured faster."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "on":
        return torch.bfloat16
    flags = cpu_flags()
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
            if flip_tta:  # the faces and their mirrors in one call, as the Predictor does
                both = model(torch.cat([x, torch.flip(x, dims=[3])])).float()
                logits = (both[:len(x)] + both[len(x):]) / 2
            else:
                logits = model(x).float()
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


@dataclass(frozen=True)
class Corrections:
    """What the annotation store says about the training faces, row-aligned with the table."""

    labels: np.ndarray  #: (N,) FER2013 ids: the resolved emotion where there is one, else the label as given
    drop: np.ndarray  #: (N,) bool: resolved ``not_a_face``
    votes: np.ndarray  #: (N, 7) votes per emotion, FER2013 order (zeros for faces without emotion votes)
    summary: dict[str, Any]  #: counts and where they came from (for the model card)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _open_corrections_store(db: str) -> Store:
    """The annotation store at ``db`` (path or SQLAlchemy URL); FERError when it is missing or not a store."""
    from sqlalchemy.exc import DBAPIError

    from annotate.engine import create_store_engine, to_url
    from annotate.migrate import current_revision, upgrade
    from annotate.store import Store

    url = to_url(db)
    where = url.render_as_string(hide_password=True)
    database = url.database or ""
    on_disk = url.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:")
    if on_disk and not Path(database).expanduser().is_file():
        raise FERError(f"--corrections: no annotation database at {database!r}")
    engine = create_store_engine(url)
    try:
        revision = current_revision(engine)
    except DBAPIError as exc:
        engine.dispose()
        raise FERError(f"--corrections: cannot read {where} as an annotation database ({exc.orig})") from None
    if revision is None:
        engine.dispose()
        raise FERError(f"--corrections: {where} is not an annotation store (it has no annotate schema)")
    upgrade(engine)  # a store written by an older version reads like the app reads it
    return Store(engine)


def read_corrections(db: str, dataset: str, table: FaceTable) -> Corrections:
    """Apply the decisions of data set ``dataset`` in the store ``db`` to ``table``'s faces (matched by sample_id).

    Raises :class:`FERError` when the store holds other faces under the same ids (another
    label or other pixels); warns, and changes nothing, when it holds no decisions for ``dataset``.
    """
    from annotate.labels import NOT_A_FACE
    from annotate.store import content_hash

    store = _open_corrections_store(db)
    try:
        resolved = store.resolved_labels(dataset)
        known = [] if len(resolved) else sorted(set(store.resolved_labels()["dataset"]))
        url = store.url
    finally:
        store.close()
    n = len(table)
    labels = table.labels.copy()
    drop = np.zeros(n, dtype=bool)
    votes = np.zeros((n, len(EMOTIONS)), dtype=np.int64)
    summary: dict[str, Any] = {"store": url, "dataset": dataset, "faces_with_votes": 0, "relabelled": 0, "confirmed": 0,
                               "dropped": 0, "kept_original": 0, "soft_labelled": 0, "not_in_data": 0}
    if not len(resolved):
        _warn(f"the annotation store {url} holds no decisions for data set {dataset!r}"
              + (f" (it has decisions for: {', '.join(map(repr, known))}; choose one with --corrections-dataset)" if known else "")
              + "; training on the labels as given")
        return Corrections(labels, drop, votes, summary)

    row_of = pd.Series(np.arange(n), index=table.frame["sample_id"].astype(str).to_numpy())
    found = resolved["sample_id"].astype(str).isin(row_of.index).to_numpy()
    summary["not_in_data"] = int((~found).sum())
    if summary["not_in_data"]:
        _warn(f"{summary['not_in_data']} faces with votes in data set {dataset!r} of the store are not among the "
              f"training faces (val faces, or another copy of the data); they are ignored")
    resolved = resolved[found]
    rows = row_of.loc[resolved["sample_id"].astype(str)].to_numpy()
    given = [EMOTIONS[int(i)] for i in labels[rows]]
    hashes = resolved["content_sha256"].to_numpy()
    differs = [sid for sid, o, g, h, r in zip(resolved["sample_id"], resolved["original_label"], given, hashes, rows)
               if o != g or (h is not None and h != content_hash(table.images[r]))]
    if differs:
        raise FERError(f"the annotation store's data set {dataset!r} holds other faces than {table.name!r} under "
                       f"{len(differs)} of the same sample ids (another label or other pixels), e.g. {differs[:3]}; "
                       "name the right data set with --corrections-dataset")

    votes[rows] = resolved[[f"votes_{e}" for e in EMOTIONS]].to_numpy(dtype=np.int64)  # see VOTE_COLUMNS
    outcome = resolved["resolved_label"].to_numpy(dtype=object)
    # A face judged unsure keeps its given label: it counts as kept, not as confirmed.
    unsure = (resolved["judged_unsure"].to_numpy(dtype=bool) if "judged_unsure" in resolved
              else np.zeros(len(outcome), dtype=bool))
    is_emotion = np.array([r in EMOTIONS for r in outcome], dtype=bool) & ~unsure
    new = np.array([EMOTIONS.index(r) if r in EMOTIONS else -1 for r in outcome], dtype=np.int64)
    summary["faces_with_votes"] = len(rows)
    summary["relabelled"] = int((is_emotion & (new != labels[rows])).sum())
    summary["confirmed"] = int((is_emotion & (new == labels[rows])).sum())
    summary["dropped"] = int((outcome == NOT_A_FACE).sum())
    summary["kept_original"] = len(rows) - summary["relabelled"] - summary["confirmed"] - summary["dropped"]
    labels[rows[is_emotion]] = new[is_emotion]
    drop[rows[outcome == NOT_A_FACE]] = True
    return Corrections(labels, drop, votes, summary)


@dataclass(frozen=True)
class TrainingData:
    """The training faces and what a run trains on, row-aligned with ``table`` (all faces as loaded)."""

    table: FaceTable  #: the training faces
    labels: np.ndarray  #: (N,) int64 class index (after corrections and --merge)
    targets: np.ndarray | None  #: (N, C) float32 probability targets with --soft-labels, else None
    keep: np.ndarray  #: (N,) bool: the faces trained on (quality filter passed, not dropped as not_a_face)
    quality: np.ndarray  #: (N,) quality score
    corrections: dict[str, Any] | None  #: :attr:`Corrections.summary`, or None without --corrections
    distill: dict[str, Any] | None = None  #: where ``--distill`` targets came from, or None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> TrainingData:
        """The same data restricted to ``rows`` (boolean mask or positions)."""
        index = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return replace(self, table=self.table.select(index), labels=self.labels[index],
                       targets=None if self.targets is None else self.targets[index],
                       keep=self.keep[index], quality=self.quality[index])


def soft_targets(votes: np.ndarray, labels: np.ndarray, label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    """Probability targets over the training classes: normalised emotion votes, one-hot ``labels`` without votes.

    Returns the targets (N, C) float32 and which rows got a vote distribution.
    """
    k = len(label_map.names)
    merged = np.zeros((len(votes), k), dtype=np.float64)
    np.add.at(merged.T, label_map.index, votes.T.astype(np.float64))  # fold merged emotions' votes together
    total = merged.sum(axis=1)
    voted = total > 0
    targets = np.eye(k, dtype=np.float64)[labels]
    targets[voted] = merged[voted] / total[voted, None]
    return targets.astype(np.float32), voted


def read_teacher(path: str, sample_ids: np.ndarray, names: list[str]) -> np.ndarray:
    """A teacher's probabilities (N, C) for ``sample_ids``, from a Parquet file of ``sample_id`` + one column per class.

    The out-of-fold file of ``--folds`` is such a file: each face's probabilities from a
    model that never trained on it.
    """
    file = Path(path)
    if not file.is_file():
        raise FERError(f"--distill: no file at {path!r}")
    try:
        frame = pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise FERError(f"--distill: cannot read {file.name} as Parquet ({exc})") from None
    missing = [c for c in ["sample_id", *names] if c not in frame.columns]
    if missing:
        raise FERError(f"--distill: {file.name} lacks the columns {', '.join(missing)} "
                       f"(it needs sample_id and one probability column per class: {', '.join(names)})")
    frame = frame.assign(sample_id=frame["sample_id"].astype(str)).drop_duplicates("sample_id").set_index("sample_id")
    absent = pd.Index(sample_ids).difference(frame.index)
    if len(absent):
        raise FERError(f"--distill: {file.name} has no probabilities for {len(absent)} of the {len(sample_ids)} "
                       f"training faces (e.g. {absent[0]!r}); it must come from the same training data")
    probs = frame.loc[sample_ids, names].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs.sum(axis=1) <= 0).any():
        raise FERError(f"--distill: {file.name} holds probabilities that are negative, missing or all zero")
    return probs / probs.sum(axis=1, keepdims=True)


def prepare_training_data(args: argparse.Namespace, train: FaceTable, label_map: LabelMap) -> TrainingData:
    """Labels or targets and kept rows of the training faces, after ``--corrections`` and ``--min-quality``."""
    if args.soft_labels and not args.corrections:
        raise FERError("--soft-labels trains on the annotators' votes: give the annotation store with --corrections")
    fer_labels, drop, summary, targets = train.labels, np.zeros(len(train), dtype=bool), None, None
    if args.corrections:
        found = read_corrections(args.corrections, args.corrections_dataset or train.name, train)
        fer_labels, drop, summary = found.labels, found.drop, found.summary
    labels = label_map(fer_labels)
    quality = quality_of(train)
    keep = ~drop
    if args.min_quality is not None:
        keep &= quality > args.min_quality
    if args.soft_labels:
        targets, voted = soft_targets(found.votes, labels, label_map)
        summary["soft_labelled"] = int((voted & keep).sum())
    distill = None
    if args.distill:
        if not 0 < args.distill_weight <= 1:
            raise FERError(f"--distill-weight must be in (0, 1], got {args.distill_weight}")
        teacher = read_teacher(args.distill, train.frame["sample_id"].astype(str).to_numpy(), label_map.names)
        base = targets if targets is not None else np.eye(len(label_map.names))[labels]
        targets = ((1 - args.distill_weight) * base + args.distill_weight * teacher).astype(np.float32)
        distill = {"file": Path(args.distill).name, "weight": args.distill_weight,
                   "teacher_agrees_with_label": float((teacher.argmax(1) == labels).mean())}
        print(f"distilling from {distill['file']} (weight {args.distill_weight}); the teacher agrees with "
              f"{distill['teacher_agrees_with_label']:.1%} of the training labels", flush=True)
    if not keep.any():
        raise FERError("no training face is left after the corrections and the quality filter"
                       if args.corrections else f"no training face has quality above {args.min_quality}")
    if summary is not None:
        print(f"corrections from {summary['store']} (data set {summary['dataset']!r}): "
              f"{summary['relabelled']} relabelled, {summary['confirmed']} confirmed, {summary['dropped']} dropped "
              f"as not a face, {summary['kept_original']} kept as given (unsure or tied)"
              + (f", {summary['soft_labelled']} soft-labelled" if args.soft_labels else ""), flush=True)
    return TrainingData(train, labels.astype(np.int64), targets, keep, quality, summary, distill)


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
    # Both written before either replaces its file; the weights are replaced first, then their JSON.
    with atomic_write(out / "checkpoint.json") as meta_tmp, atomic_write(out / "checkpoint.safetensors") as tmp:
        save_file(tensors, str(tmp))
        meta_tmp.write_text(json.dumps(meta))


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


def _trained_model(path: str, option: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained model and its card for ``option`` (safetensors only), its errors said in the option's name."""
    from fer_core.weights import WeightsError, load_model

    try:
        return load_model(path, device=device)
    except WeightsError as err:
        raise FERError(f"{option}: {err}") from None


def load_teachers(paths: list[str], names: list[str], device: torch.device) -> list[nn.Module]:
    """Teacher models for ``--teacher`` (safetensors with their cards), frozen, on ``device``."""
    teachers = []
    for path in paths:
        model, card = _trained_model(path, "--teacher", device)
        if list(card["labels"]) != names:
            raise FERError(f"--teacher: {Path(path).name} predicts {card['labels']}, the run trains {names}")
        teachers.append(model.to(memory_format=torch.channels_last).requires_grad_(False))
    return teachers


@torch.no_grad()
def teacher_probabilities(teachers: list[nn.Module], x: torch.Tensor, temperature: float,
                          amp: torch.dtype | None) -> torch.Tensor:
    """The teachers' softened probabilities on the batch the student sees, averaged over teachers and mirror images.

    The mirror costs one more forward pass and makes each teacher's answer steadier
    (flip TTA gains 0.3-0.4 points of val accuracy on these models).
    """
    total = torch.zeros((), device=x.device)
    for teacher in teachers:
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            both = teacher(torch.cat([x, torch.flip(x, dims=[3])])).float()
        total = total + F.softmax(both / temperature, dim=1).view(2, len(x), -1).mean(0)
    return total / len(teachers)


def distillation_loss(logits: torch.Tensor, soft: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence from a teacher's softened probabilities; T^2 keeps the gradients' scale (Hinton et al., 2015)."""
    log_probs = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_probs, soft, reduction="batchmean") * temperature * temperature


def init_from(model: nn.Module, path: str, architecture: str, names: list[str]) -> None:
    """Start ``model`` from trained weights (``--init``): same architecture and classes, safetensors only."""
    trained, card = _trained_model(path, "--init")
    if card["architecture"] != architecture or list(card["labels"]) != names:
        raise FERError(f"--init: {Path(path).name} is a {card['architecture']} for {card['labels']}; "
                       f"this run trains a {architecture} for {names}")
    model.load_state_dict(trained.state_dict())


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


def _sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
    data.add_argument("--corrections", default=None, metavar="DB",
                      help="annotation store (path or SQLAlchemy URL) whose resolved labels correct the training faces")
    data.add_argument("--corrections-dataset", default=None, metavar="NAME",
                      help="the training faces' data set name in the store; None: the loaded data set's name, "
                           "as the relabelling tab names it")
    data.add_argument("--soft-labels", action="store_true",
                      help="train on the distribution of the annotators' emotion votes (needs --corrections)")
    data.add_argument("--distill", default=None, metavar="PARQUET",
                      help="mix a teacher's probabilities per face (sample_id + one column per class, e.g. the "
                           "out-of-fold file of --folds) into the targets")
    data.add_argument("--distill-weight", type=float, default=0.5,
                      help="share of the teacher's probabilities in the targets with --distill")
    data.add_argument("--teacher", action="append", default=[], metavar="WEIGHTS",
                      help="distil from this trained model (safetensors with its card; repeat for an ensemble): "
                           "the student also matches its probabilities on every augmented batch")
    data.add_argument("--kd-weight", type=float, default=0.7, help="share of the distillation loss with --teacher")
    data.add_argument("--kd-temperature", type=float, default=2.0,
                      help="softening temperature with --teacher or --self-kd")
    data.add_argument("--self-kd", type=float, default=0.0, metavar="WEIGHT",
                      help="self-distillation: the weights' moving average (--ema-decay) teaches the model on every "
                           "augmented batch, its share of the loss rising linearly from 0 to WEIGHT over the run "
                           "(one more forward pass per batch, no trained teacher needed)")
    data.add_argument("--init", default=None, metavar="WEIGHTS",
                      help="start from these trained weights (fine-tuning; same architecture) instead of at random")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="fer_fastnet", choices=list_models(), help="architecture")
    model.add_argument("--dropout", type=float, default=None, help="override the architecture's dropout")
    run = parser.add_argument_group("optimisation")
    run.add_argument("--epochs", type=int, default=75, help="epochs of the schedule (with --time-budget: at most)")
    run.add_argument("--time-budget", type=parse_duration, default=None, metavar="DURATION",
                     help="end the whole run within this wall time (e.g. 2h, 90m, 7200): after each epoch the "
                          "schedule is planned over the epochs that fit, measured on this machine, "
                          "at most --epochs (see fer_core.time_budget)")
    run.add_argument("--batch-size", type=int, default=128)
    run.add_argument("--opt", default="adamw", help="adamw or sgd (Nesterov, momentum 0.9)")
    run.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (try 0.1 with sgd)")
    run.add_argument("--weight-decay", type=float, default=0.05, help="decoupled for adamw (try 5e-4 with sgd)")
    run.add_argument("--warmup-epochs", type=float, default=2.0)
    run.add_argument("--label-smoothing", type=float, default=0.1)
    run.add_argument("--class-weighting", default="sqrt", help="none, sqrt or balanced")
    run.add_argument("--ema-decay", type=float, default=0.999, help="weight EMA evaluated and kept (0 turns it off)")
    run.add_argument("--no-augment", action="store_true", help="train on the faces as they are")
    run.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup with Beta(ALPHA, ALPHA) (0: off)")
    run.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="CutMix with Beta(ALPHA, ALPHA) (0: off)")
    run.add_argument("--mix-prob", type=float, default=1.0, help="share of batches mixed when --mixup/--cutmix is on")
    run.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (for tests)")
    env = parser.add_argument_group("run")
    env.add_argument("--out", required=True, help="output folder: checkpoint, logs, model")
    env.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    env.add_argument("--folds", type=int, default=None, metavar="K",
                     help="train K models on K-1 folds each and write out-of-fold probabilities of every training face")
    env.add_argument("--fold-index", type=int, default=None, metavar="I",
                     help="with --folds: train fold I alone (run the folds in parallel processes; "
                          "then --folds K --resume combines them)")
    env.add_argument("--seed", type=int, default=0)
    env.add_argument("--device", default="auto", help="auto, cpu or cuda")
    env.add_argument("--amp", default="auto", help="bf16 autocast: auto (where the hardware has it), on or off")
    env.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    env.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@cli_main
def main(args: argparse.Namespace) -> int:
    if args.folds is not None and args.time_budget is not None:
        raise FERError("--time-budget plans one run's epochs; with --folds give each fold --epochs instead")
    if args.fold_index is not None and args.folds is None:
        raise FERError("--fold-index picks one fold of a --folds run: give --folds K too")
    if args.folds is not None:
        from fer_core.folds import train_folds

        return train_folds(args)
    return _train(args)


def _check_out(out: Path, resume: bool) -> None:
    if resume and not (out / "checkpoint.json").is_file():
        raise FERError(f"--resume: no checkpoint in {out}")
    if not resume and (out / "checkpoint.json").is_file():
        raise FERError(f"{out} already holds a run: add --resume to continue it, or choose another --out")


def _train(args: argparse.Namespace) -> int:
    started = time.monotonic()  # a time budget counts the data loading too
    out = Path(args.out)
    _check_out(out, args.resume)
    label_map = LabelMap(args.merge)
    train, val = load_training_data(args)
    data = prepare_training_data(args, train, label_map)
    fit(args, out, data, val, label_map, resume=args.resume, started=started)
    return 0


def fit(args: argparse.Namespace, out: Path, data: TrainingData, val: FaceTable, label_map: LabelMap, *, resume: bool,
        card_extra: dict[str, Any] | None = None, started: float | None = None) -> dict[str, Any]:
    """Train on ``data``'s kept faces, checkpointing into ``out`` (continuing its checkpoint when ``resume``).

    Writes the model and its card (``card_extra`` merged into the card's ``training``); returns the card.
    ``started`` (``time.monotonic()``) is when this run began, for ``args.time_budget``; default: now.
    """
    started = time.monotonic() if started is None else started
    from tqdm.auto import tqdm

    from fer_core.model import count_params, create_model
    from fer_core.weights import save_model

    _check_out(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = autocast_dtype(device, args.amp)
    stages = [float(s) for s in args.curriculum.split(",")] if args.curriculum else []

    keep = data.keep
    train_images = torch.from_numpy(data.table.images[keep]).to(device)
    train_labels = torch.from_numpy(data.labels[keep]).to(device)
    # Probability targets (--soft-labels) or class indices: F.cross_entropy takes either.
    train_targets = train_labels if data.targets is None else torch.from_numpy(data.targets[keep]).to(device)
    train_quality = data.quality[keep]
    if len(train_labels) == 0:
        raise FERError(f"no training face left to train on in {out}")
    val_labels = label_map(val.labels)
    num_classes = len(label_map.names)

    torch.manual_seed(args.seed)
    kwargs = {} if args.dropout is None else {"dropout": args.dropout}
    model = create_model(args.model, num_classes=num_classes, **kwargs).to(device).to(memory_format=torch.channels_last)
    if args.init and not resume:
        init_from(model, args.init, args.model, label_map.names)
    ema = make_ema(model, args.ema_decay if args.ema_decay > 0 else 0.0)
    optimizer = build_optimizer(model, args)
    loss_weights = class_weights(train_labels.cpu().numpy(), num_classes, args.class_weighting).to(device)
    augment = None if args.no_augment else AugmentConfig()
    teachers = load_teachers(args.teacher, label_map.names, device) if args.teacher else []
    if teachers and not 0 < args.kd_weight <= 1:
        raise FERError(f"--kd-weight must be in (0, 1], got {args.kd_weight}")
    if args.self_kd:
        if not 0 < args.self_kd <= 1:
            raise FERError(f"--self-kd must be in (0, 1], got {args.self_kd}")
        if teachers:
            raise FERError("--self-kd and --teacher are two kinds of distillation: choose one")
        if args.ema_decay <= 0:
            raise FERError("--self-kd distils from the weights' moving average: it needs --ema-decay above 0")

    budget = getattr(args, "time_budget", None)
    if args.epochs < 1:
        raise FERError(f"--epochs must be at least 1, got {args.epochs}")
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_accuracy": -1.0, "best_epoch": 0, "log": [],
                             "args": vars(args), "seconds": 0.0, "wall_seconds_used": 0.0,
                             "planned_epochs": args.epochs}
    if resume:
        state = load_checkpoint(out, model=model, ema=ema, optimizer=optimizer, device=device)
        print(f"resuming {out} after epoch {state['epoch']}", flush=True)
    used_before = state.get("wall_seconds_used", 0.0)

    def wall_seconds_used() -> float:
        return used_before + time.monotonic() - started

    steps_per_epoch = math.ceil(len(train_labels) / args.batch_size)
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)

    def schedule(epochs: int) -> tuple[int, int]:
        """Total steps and warm-up steps of a run of ``epochs`` epochs."""
        # The schedule spans the steps actually taken: a quality curriculum trains on fewer faces
        # in its early stages, and the learning rate must still reach the end of its decay.
        epoch_steps = [min(steps_per_epoch, math.ceil(int((train_quality >= curriculum_threshold(e, epochs, stages)).sum())
                                                      / args.batch_size)) for e in range(epochs)]
        total = sum(epoch_steps)
        return total, int(args.warmup_epochs * total / max(epochs, 1))

    # Without a budget the plan is --epochs; with one, it is planned again after every epoch.
    planned = min(state.get("planned_epochs", args.epochs), args.epochs) if budget else args.epochs
    total_steps, warmup = schedule(planned)
    mixing = args.mixup > 0 or args.cutmix > 0
    print(f"{args.model}: {count_params(model) / 1e6:.2f}M parameters; {len(train_labels)} training faces, "
          f"{len(val_labels)} val faces; {num_classes} classes; device {device}, autocast {amp}", flush=True)

    while state["epoch"] < planned:
        epoch = state["epoch"]
        start = time.perf_counter()
        model.train()
        # Seeds derived from (seed, epoch): a resumed run draws exactly what the first run would have.
        torch.manual_seed(args.seed * 1000 + epoch)
        generator = torch.Generator(device=device).manual_seed(args.seed * 1000 + epoch)
        allowed = torch.from_numpy(train_quality >= curriculum_threshold(epoch, planned, stages)).to(device)
        pool = torch.nonzero(allowed).squeeze(1)
        order = pool[torch.randperm(len(pool), generator=generator, device=device)]
        n_steps = min(steps_per_epoch, math.ceil(len(order) / args.batch_size))
        mix_rng = np.random.default_rng(args.seed * 1000 + epoch)
        total_loss, seen = 0.0, 0
        bar = tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{planned}", leave=False, disable=args.no_progress)
        for i in bar:
            index = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = to_input(train_images[index])
            if augment is not None:
                x = augment_batch(x, augment, generator).contiguous(memory_format=torch.channels_last)
            y = train_targets[index]
            if mixing and mix_rng.random() < args.mix_prob:
                x, partner, lam = mix_batch(x, mixup=args.mixup, cutmix=args.cutmix, rng=mix_rng, generator=generator)
                y = mix_targets(y, partner, lam, num_classes)
            lr = lr_at(state["step"], total_steps, warmup, args.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=loss_weights, label_smoothing=args.label_smoothing)
            if teachers:
                # Knowledge distillation (Hinton et al., 2015): match the teachers' softened
                # probabilities on the same augmented batch; T^2 keeps the gradients' scale.
                t = args.kd_temperature
                soft = teacher_probabilities(teachers, x, t, amp)
                loss = (1 - args.kd_weight) * loss + args.kd_weight * distillation_loss(logits, soft, t)
            elif args.self_kd:
                # Self-distillation from the weights' moving average (a "mean teacher"), with
                # its share rising over the run as in progressive self-knowledge distillation
                # (Kim et al., 2021): early on the average knows little, later it is the
                # steadier model, and its soft targets temper FER2013's noisy labels.
                share = args.self_kd * min(1.0, state["step"] / max(total_steps - 1, 1))
                t = args.kd_temperature
                soft = teacher_probabilities([ema.module.eval()], x, t, amp)
                loss = (1 - share) * loss + share * distillation_loss(logits, soft, t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update_parameters(model)
            state["step"] += 1
            total_loss += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
        val_start = time.perf_counter()
        evaluated = ema.module if args.ema_decay > 0 else model
        logits = predict_logits(evaluated, val.images, device=device, amp=amp)
        metrics = val_metrics(logits, val_labels, num_classes)
        seconds = time.perf_counter() - start
        state["seconds"] += seconds
        row = {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), **metrics, "lr": lr,
               "seconds": round(seconds, 2), "train_faces": int(len(order)), "steps": n_steps,
               "val_seconds": round(time.perf_counter() - val_start, 3), "planned_epochs": planned}
        state["log"].append(row)
        state["epoch"] = epoch + 1
        if metrics["val_accuracy"] > state["best_accuracy"]:
            state["best_accuracy"], state["best_epoch"] = metrics["val_accuracy"], epoch + 1
            save_model(evaluated, out / "best.safetensors", {**_card_base(args, label_map), "epoch": epoch + 1})
        if budget:
            planned = _plan(state, budget, wall_seconds_used(), args.epochs, steps_per_epoch)
            total_steps, warmup = schedule(planned)
        state["planned_epochs"] = planned
        state["wall_seconds_used"] = wall_seconds_used()
        save_checkpoint(out, model=model, ema=ema, optimizer=optimizer, state=state)
        _write_logs(out, state["log"])
        print(f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  val acc {metrics['val_accuracy']:.4f}  "
              f"macro-F1 {metrics['val_macro_f1']:.4f}  lr {lr:.4g}  {seconds:.1f}s"
              + (f"  (plan: {planned} epochs; {_clock(wall_seconds_used())} of {_clock(budget)} used)"
                 if budget else ""), flush=True)
    if budget and state["epoch"] < args.epochs:
        print(f"time budget: {state['epoch']} of at most {args.epochs} epochs fit in {_clock(budget)}", flush=True)

    card = _finish(out, args, state, label_map, data, val, device, count_params(model), card_extra or {})
    if budget:
        print(f"time budget: the run took {_clock(wall_seconds_used())} of {_clock(budget)}", flush=True)
    return card


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


def _finish(out: Path, args: argparse.Namespace, state: dict[str, Any], label_map: LabelMap, data: TrainingData,
            val, device: torch.device, n_params: int, card_extra: dict[str, Any]) -> dict[str, Any]:
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
            "train_faces": int(len(data)), "faces_trained_on": int(data.keep.sum()), "val_faces": int(len(val)),
            "command": "python -m fer_core.train " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "epochs": state["epoch"], "best_epoch": state["best_epoch"], "seed": args.seed,
            "wall_seconds": round(state["seconds"], 1),
            "time_budget": ({"seconds": args.time_budget, "max_epochs": args.epochs,
                             "wall_seconds_used": round(state.get("wall_seconds_used", 0.0), 1)}
                            if getattr(args, "time_budget", None) else None),
            "device": str(device), "device_name": device_name(device),
            "augment": asdict(AugmentConfig()) if not args.no_augment else None,
            "mix": {"mixup": args.mixup, "cutmix": args.cutmix, "prob": args.mix_prob} if args.mixup or args.cutmix else None,
            "distill": data.distill,
            "init": {"file": Path(args.init).name, "sha256": _sha256(args.init)} if args.init else None,
            "teachers": [{"file": Path(p).name, "sha256": _sha256(p)} for p in args.teacher] or None,
            "kd": {"weight": args.kd_weight, "temperature": args.kd_temperature} if args.teacher else None,
            "self_kd": ({"weight": args.self_kd, "temperature": args.kd_temperature, "teacher": "weight EMA",
                         "ramp": "linear from 0 over the run"} if args.self_kd else None),
            "label_smoothing": args.label_smoothing,
            "corrections": data.corrections,
            "soft_labels": data.targets is not None,
            **card_extra,
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
    return card


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
