"""The models an app or a script can choose by name: the bundled ones, and any added while it runs.

A model is a ``.safetensors`` file with its ``.json`` card beside it (and the ONNX file the card
names, for serving without PyTorch). Its name is the card's ``name`` field, else the file's stem
(``fer_model`` for ``fer_core/assets/fer_model.safetensors``). Every ``*.safetensors`` in the
assets folder that has a card is bundled; the default is :data:`fer_core.weights.DEFAULT_WEIGHTS`
unless the catalog is told otherwise.

A name is shown in the app and typed by API callers, so it may hold only letters, digits, spaces
and ``_ . + - ( ) @ : ,`` (at most :data:`MAX_NAME` characters); a card with another name is refused.

A :class:`ModelCatalog` is shared by every visitor of the app: adding a model or changing the
default (the Relabel tab's training panel does both) changes what everyone is served next.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_core._validation import FERError
from fer_core.config import ASSETS_DIR

__all__ = ["ModelEntry", "ModelCatalog", "UnknownModel", "model_name", "bundled_models", "check_model_name",
           "weights_for", "MAX_NAME"]

#: Longest model name.
MAX_NAME = 80
_NAME = re.compile(rf"\w[\w .+()@:,-]{{0,{MAX_NAME - 1}}}")


class UnknownModel(FERError):
    """A model name the catalog does not hold; the message lists the names it does."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalog."""

    name: str
    weights: Path
    card: dict[str, Any]
    bundled: bool  #: shipped in the assets folder (not added while the app runs)

    @property
    def trained_on(self) -> str:
        """Which labels trained it, as its card says (``original labels`` for cards that predate the field)."""
        return str(self.card.get("training", {}).get("trained_on", "original labels"))


def check_model_name(name: Any) -> str:
    """``name`` if it may name a model (see the module docstring); :class:`FERError` quoting it otherwise."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise FERError(f"a model name may hold letters, digits, spaces and _ . + - ( ) @ : , (at most {MAX_NAME} "
                       f"characters, starting with a letter or digit), got {str(name)[:100]!r}")
    return name


def model_name(weights: str | Path, card: dict[str, Any]) -> str:
    """The name a model goes by: its card's ``name``, else its file's stem (checked by :func:`check_model_name`)."""
    return check_model_name(str(card.get("name") or Path(weights).stem))


def bundled_models(folder: Path = ASSETS_DIR) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name, weights, card)`` of every ``*.safetensors`` in ``folder`` that has a card, sorted by name."""
    from fer_core.weights import card_path, read_card

    found = []
    for weights in sorted(folder.glob("*.safetensors")):
        if card_path(weights).is_file():
            card = read_card(weights)
            found.append((model_name(weights, card), weights, card))
    return sorted(found, key=lambda item: item[0])


def weights_for(weights: str | Path | None, model: str | None, *, folder: Path = ASSETS_DIR) -> str | None:
    """The weights a command serves: ``weights`` (``--weights FILE``), else those of the bundled model called
    ``model`` (``--model NAME``), else None (the bundled default). Both given: :class:`FERError`;
    an unknown name: :class:`UnknownModel` listing the names."""
    if weights and model:
        raise FERError("give --weights FILE or --model NAME, not both")
    if not model:
        return None if weights is None else str(weights)
    return str(ModelCatalog(folder=folder).entry(model).weights)


class ModelCatalog:
    """Named models and the default one, with one cached :class:`~fer_core.predict.Predictor` each.

    Parameters
    ----------
    default_weights : path, optional
        The model served when no name is given (``--weights`` / ``FER_WEIGHTS``); it joins the
        catalog under its own name when it is not bundled. Default: the bundled default model.
    folder : path, default=ASSETS_DIR
        Where the bundled models are found.
    """

    def __init__(self, default_weights: str | Path | None = None, *, folder: Path = ASSETS_DIR) -> None:
        from fer_core.weights import DEFAULT_WEIGHTS, read_card

        self._lock = threading.Lock()
        self._entries: dict[str, ModelEntry] = {
            name: ModelEntry(name, weights, card, True) for name, weights, card in bundled_models(folder)
        }
        default = Path(default_weights) if default_weights is not None else DEFAULT_WEIGHTS
        card = read_card(default)
        name = model_name(default, card)
        known = self._entries.get(name)
        if known is None or known.weights.resolve() != default.resolve():
            self._entries[name] = ModelEntry(name, default, card, False)
        self._default = name
        self._predictors: dict[str, Any] = {}

    def names(self) -> list[str]:
        """Every model's name, the default first."""
        with self._lock:
            return [self._default] + sorted(n for n in self._entries if n != self._default)

    @property
    def default(self) -> str:
        with self._lock:
            return self._default

    def entry(self, name: str | None = None) -> ModelEntry:
        """The model called ``name`` (``None`` or ``""``: the default); :class:`UnknownModel` otherwise."""
        with self._lock:
            key = name or self._default
            found = self._entries.get(key)
            if found is None:
                raise UnknownModel(f"no model named {str(key)[:100]!r}; choose one of {', '.join(sorted(self._entries))}")
            return found

    def predictor(self, name: str | None = None) -> Any:
        """The :class:`~fer_core.predict.Predictor` of model ``name`` (built once, then shared)."""
        from fer_core.predict import Predictor

        entry = self.entry(name)
        with self._lock:
            cached = self._predictors.get(entry.name)
        if cached is not None and cached[0] == entry.weights:
            return cached[1]
        predictor = Predictor(entry.weights)
        with self._lock:
            self._predictors[entry.name] = (entry.weights, predictor)
        return predictor

    def add(self, weights: str | Path, *, name: str | None = None) -> str:
        """Add a model (for example one just trained) and return its name; a bundled name cannot be replaced."""
        from fer_core.weights import read_card

        weights = Path(weights)
        card = read_card(weights)
        name = check_model_name(name) if name else model_name(weights, card)
        with self._lock:
            known = self._entries.get(name)
            if known is not None and known.bundled:
                raise FERError(f"{name!r} is a bundled model's name; give the new model another")
            self._entries[name] = ModelEntry(name, weights, card, False)
            self._predictors.pop(name, None)
        return name

    def set_default(self, name: str) -> None:
        """Serve model ``name`` when no model is asked for."""
        entry = self.entry(name)
        with self._lock:
            self._default = entry.name

    def remove(self, name: str) -> None:
        """Forget a model added while running; bundled models and the default stay."""
        entry = self.entry(name)
        with self._lock:
            if entry.bundled or entry.name == self._default:
                raise FERError(f"{name!r} is {'bundled' if entry.bundled else 'the default model'} and stays")
            self._entries.pop(entry.name, None)
            self._predictors.pop(entry.name, None)
