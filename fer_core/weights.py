"""Saving and loading model weights as safetensors with a JSON model card; pickles are refused.

A card may name ONNX files exported from its weights (``python -m tools.export_onnx``), one per
inference runtime, under ``onnx``: ``{"onnx-int8": {"file": NAME, "sha256": HEX, "weights_sha256":
HEX, ...}}``. Serving reads the card and such a file only, with ONNX Runtime: PyTorch is needed
to build the model itself (:func:`load_model`), for training and for exporting.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_core._io import atomic_write
from fer_core._torch import require_torch
from fer_core._validation import FERError
from fer_core.config import ASSETS_DIR

if TYPE_CHECKING:
    import torch

__all__ = ["WeightsError", "DEFAULT_WEIGHTS", "save_model", "load_model", "read_card", "read_tensor", "card_path",
           "bundled_onnx", "file_sha256"]

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

    The card's ``onnx`` entry, if any, is left out: those files belong to other weights.
    ``float_dtype`` (e.g. ``torch.float16``) stores the floating-point tensors in that type,
    halving the file; :func:`load_model` casts them back to the model's own type.
    """
    from safetensors.torch import save_file

    path = Path(path)
    # ONNX files the card names were exported from other weights than these.
    card = {key: value for key, value in card.items() if key != "onnx"}
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


def read_card(path: str | Path | None = None) -> dict[str, Any]:
    """The model card of a safetensors weights file (default: the bundled weights), checked to be
    readable; the weights themselves are not loaded (no PyTorch needed)."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise WeightsError(f"weights file not found: {str(path)!r}")
    _check_safetensors(path)
    card_file = card_path(path)
    if not card_file.is_file():
        raise WeightsError(f"{path.name} has no model card: expected {card_file.name} beside it")
    try:
        card = json.loads(card_file.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
        raise WeightsError(f"cannot read the model card {card_file.name}: {err}") from None
    if not isinstance(card, dict) or not isinstance(card.get("labels"), list) or "architecture" not in card:
        raise WeightsError(f"{card_file.name} is not a model card: it needs 'architecture' and a list of 'labels'")
    return card


def read_tensor(path: str | Path, name: str) -> np.ndarray:
    """One tensor of a safetensors file as a float32 (or its own integer type) NumPy array, without PyTorch."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            if name not in handle.keys():
                raise WeightsError(f"{Path(path).name} holds no tensor {name!r}")
            tensor = handle.get_tensor(name)
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"cannot read {Path(path).name}: {err}") from None
    return tensor.astype(np.float32) if np.issubdtype(tensor.dtype, np.floating) else tensor


def load_model(path: str | Path | None = None, *,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model named in the weights' model card and load the weights (safetensors only).

    Returns the model in eval mode and its card. Needs PyTorch (``requirements-train.txt``):
    serving reads the ONNX file the card names instead (:func:`bundled_onnx`).
    """
    require_torch("building the PyTorch model from its weights")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fer_core.model import create_model

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    card = read_card(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"cannot read {path.name}: {err}") from None
    try:
        model = create_model(card["architecture"], num_classes=len(card["labels"]), **card.get("model_kwargs", {}))
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path.name} does not match its model card {card_path(path).name}: {err}") from None
    return model.to(device).eval(), card


def bundled_onnx(path: str | Path, card: dict[str, Any], runtime: str) -> Path | None:
    """The ONNX file the card of ``path`` names for ``runtime`` (``"onnx"`` or ``"onnx-int8"``), beside
    the weights and checked by sha256 against the card: its own, and that of the weights it was
    exported from. None where the card names none for that runtime.
    """
    path = Path(path)
    entries = card.get("onnx") or {}
    if not isinstance(entries, dict):
        raise WeightsError(f"{card_path(path).name}: 'onnx' must map runtimes to files, got {entries!r}")
    entry = entries.get(runtime)
    if entry is None:
        return None
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise WeightsError(f"{card_path(path).name}: an ONNX file must be named by a file name beside it, "
                           f"got {entry!r}")
    onnx_file = path.parent / name
    if not onnx_file.is_file():
        raise WeightsError(f"{card_path(path).name} names {name}, which is missing beside {path.name}: copy it "
                           f"there, or export it again with `python -m tools.export_onnx {path}`")
    if file_sha256(onnx_file) != entry.get("sha256"):
        raise WeightsError(f"{name} is not the file {card_path(path).name} names (its sha256 differs); "
                           f"export it again with `python -m tools.export_onnx {path}`")
    if file_sha256(path) != entry.get("weights_sha256"):
        raise WeightsError(f"{name} was exported from other weights than {path.name}; "
                           f"export it again with `python -m tools.export_onnx {path}`")
    return onnx_file
