"""PyTorch on demand: the serving install leaves it out, training and ONNX export need it."""

from __future__ import annotations

from types import ModuleType

from fer_core._validation import FERError

__all__ = ["TRAINING_INSTALL", "TorchMissing", "torch_missing_message", "require_torch"]

#: The command that adds PyTorch (and what only training needs) to a serving install.
TRAINING_INSTALL = "pip install -r requirements-train.txt"


class TorchMissing(FERError, ImportError):
    """PyTorch is needed (training, exporting weights to ONNX) but not installed."""


def torch_missing_message(purpose: str) -> str:
    """What to tell a person whose ``purpose`` ("training", ...) needs PyTorch, which is not installed."""
    return (f"{purpose} needs PyTorch, which the serving install (requirements.txt) leaves out; "
            f"add it with `{TRAINING_INSTALL}` (or `pip install 'fer-tool[train]'`)")


def require_torch(purpose: str) -> ModuleType:
    """The ``torch`` module; :class:`TorchMissing` (a FERError and an ImportError) saying how to
    install it where it is missing."""
    try:
        import torch
    except ImportError as error:
        raise TorchMissing(torch_missing_message(purpose)) from error
    return torch
