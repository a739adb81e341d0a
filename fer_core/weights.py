"""Saving and loading model weights as safetensors with a JSON model card; pickles are refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from fer_core._io import atomic_write
from fer_core._validation import FERError
from fer_core.config import ASSETS_DIR

__all__ = ["WeightsError", "DEFAULT_WEIGHTS", "save_model", "load_model", "card_path", "member_paths", "file_sha256"]

#: The bundled trained weights, used by the app and the commands by default.
DEFAULT_WEIGHTS: Path = ASSETS_DIR / "fer_model.safetensors"
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar"}


class WeightsError(FERError):
    """A weights file is missing, not safetensors, or does not match its model card."""


def card_path(weights: str | Path) -> Path:
    """The model card that travels with a weights file: ``model.safetensors`` -> ``model.json``."""
    return Path(weights).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, as model cards record the files they depend on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_model(model: torch.nn.Module, path: str | Path, card: dict[str, Any], *,
               float_dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s weights as safetensors and ``card`` as JSON beside them.

    ``float_dtype`` (e.g. ``torch.float16``) stores the floating-point tensors in that type,
    halving the file; :func:`load_model` casts them back to the model's own type.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if float_dtype is not None:
        state = {k: v.to(float_dtype) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model": str(card.get("architecture", ""))})
    card_path(path).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path


def _check_safetensors(path: Path) -> None:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path.name}: refusing to load a pickled PyTorch file (it could run arbitrary code); "
            f"convert it to .safetensors (safetensors.torch.save_file(model.state_dict(), ...))"
        )
    with path.open("rb") as handle:
        head = handle.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Checked first:
    # the length's low byte may well be 0x80, which is also how a pickle starts.
    header_length = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and header_length + 8 <= path.stat().st_size:
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise WeightsError(f"{path.name} is a pickle/zip PyTorch file, not safetensors; refusing to unpickle it")
    raise WeightsError(f"{path.name} is not a safetensors file")


def load_model(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model named in the weights' model card and load the weights (safetensors only).

    Returns the model in eval mode and its card.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fer_core.model import create_model

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise WeightsError(f"weights file not found: {str(path)!r}")
    _check_safetensors(path)
    card_file = card_path(path)
    if not card_file.is_file():
        raise WeightsError(f"{path.name} has no model card: expected {card_file.name} beside it")
    try:
        card = json.loads(card_file.read_text())
        state = load_file(str(path), device=str(device))
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise WeightsError(f"cannot read {path.name} or its card: {err}") from None
    try:
        model = create_model(card["architecture"], num_classes=len(card["labels"]), **card.get("model_kwargs", {}))
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path.name} does not match its model card {card_file.name}: {err}") from None
    return model.to(device).eval(), card


def member_paths(path: str | Path, card: dict[str, Any]) -> list[Path]:
    """The weights of the models a card averages with on the faces it is unsure of.

    The card lists them under ``inference.members`` as ``{"file": NAME, "sha256": HEX}``: a file
    name beside ``path`` (never a path elsewhere), checked against the sha256 recorded when the
    ensemble was bundled, so a changed or truncated member is refused rather than silently used.
    """
    path = Path(path)
    entries = card.get("inference", {}).get("members") or []
    if not isinstance(entries, list):
        raise WeightsError(f"{card_path(path).name}: inference.members must be a list, got {entries!r}")
    paths = []
    for entry in entries:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise WeightsError(f"{card_path(path).name}: a member must be named by a file name beside it, got {entry!r}")
        member = path.parent / name
        if not member.is_file():
            raise WeightsError(f"{path.name} is bundled with {name}, which is missing beside it")
        if file_sha256(member) != entry.get("sha256"):
            raise WeightsError(f"{name} is not the file {path.name} was bundled with (its sha256 differs)")
        paths.append(member)
    return paths
