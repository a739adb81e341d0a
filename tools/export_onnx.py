"""Export weights to the ONNX file the app serves, beside them, named with its sha256 in their card.

    python -m tools.export_onnx                      # the bundled weights, for the runtime their card names
    python -m tools.export_onnx runs/vgg_s0/model.safetensors --runtime onnx

Writes ``<name>.onnx`` (float32) or ``<name>.int8.onnx`` (int8) beside ``<name>.safetensors``, with
the outputs ``logits`` and ``features`` (see :mod:`fer_core.export`), and records it in the card
under ``onnx.<runtime>``: file name, its sha256 and that of the weights it came from (the
Predictor checks both on load), the opset and the versions that made it. The int8 file is
deterministic for given calibration faces and ONNX Runtime version: the bundled sample, or
``--calibration DATA`` (``--calibration-faces`` of its training faces drawn with seed 0). Needs
PyTorch (``requirements-train.txt``); serving the result needs ONNX Runtime only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fer_core._cli import cli_main
from fer_core._io import atomic_write_bytes, atomic_write_text
from fer_core._torch import require_torch
from fer_core._validation import FERError
from fer_core.export import ONNX_RUNTIMES, OUTPUTS, export_onnx
from fer_core.weights import DEFAULT_WEIGHTS, WeightsError, card_path, file_sha256, read_card

#: Faces drawn from ``--calibration`` for int8 calibration.
CALIBRATION_FACES = 2000


def onnx_name(weights: Path, runtime: str) -> str:
    """The file name of ``weights``' ONNX export for ``runtime``: ``fer_model.int8.onnx`` ..."""
    return weights.stem + (".int8" if runtime == "onnx-int8" else "") + ".onnx"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("weights", nargs="?", default=str(DEFAULT_WEIGHTS),
                        help="a .safetensors file with its .json card beside it")
    parser.add_argument("--runtime", choices=["card", *ONNX_RUNTIMES], default="card",
                        help="the form to export: the runtime the card serves (inference.runtime), "
                             "float32 (onnx) or int8 (onnx-int8)")
    parser.add_argument("--calibration", default=None, metavar="DATA",
                        help="int8: calibrate on faces drawn from this data set (its train split, e.g. "
                             "../shared/fer2013/train); None: the bundled sample")
    parser.add_argument("--calibration-faces", type=int, default=CALIBRATION_FACES, metavar="N",
                        help="int8 with --calibration: faces drawn (seed 0)")
    return parser


def calibration_faces(data: str | None, count: int = CALIBRATION_FACES) -> np.ndarray | None:
    """``count`` faces of data set ``data`` (its train split, else all) drawn with seed 0, or None for
    the bundled sample; :class:`FERError` for a count below 1."""
    if data is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FERError(f"--calibration-faces must be a positive integer, got {count!r}")
    from fer_core.datasets import load_faces

    table = load_faces(data, progress=False)
    if "train" in set(table.frame["split"]):
        table = table.split("train")
    rows = np.random.default_rng(0).choice(len(table), size=min(count, len(table)), replace=False)
    return table.images[np.sort(rows)]


def calibration_args(args: argparse.Namespace) -> list[str]:
    """The command-line form of ``args``' calibration options (empty without ``--calibration``)."""
    if args.calibration is None:
        return []
    return ["--calibration", str(args.calibration), "--calibration-faces", str(args.calibration_faces)]


@cli_main
def main(args: argparse.Namespace, *, drawn: np.ndarray | None = None) -> int:
    """Export as ``args`` say; ``drawn``: the faces :func:`calibration_faces` already drew for
    ``args.calibration`` (``tools.bundle_model`` checks them before writing anything)."""
    torch = require_torch("exporting weights to ONNX")
    import onnx
    import onnxruntime

    from fer_core.predict import Predictor

    weights = Path(args.weights)
    card = read_card(weights)
    runtime = card.get("inference", {}).get("runtime", "onnx") if args.runtime == "card" else args.runtime
    if runtime not in ONNX_RUNTIMES:
        raise WeightsError(f"{card_path(weights).name} names the runtime {runtime!r}; choose --runtime from "
                           f"{list(ONNX_RUNTIMES)}")
    calibration = None
    if runtime == "onnx-int8":
        calibration = drawn if drawn is not None else calibration_faces(args.calibration, args.calibration_faces)
    data = export_onnx(weights, runtime=runtime, calibration=calibration)
    out = weights.with_name(onnx_name(weights, runtime))
    atomic_write_bytes(out, data)
    weights_sha256 = file_sha256(weights)
    bundled = weights.resolve() == DEFAULT_WEIGHTS.resolve()
    entries = {name: entry for name, entry in (card.get("onnx") or {}).items()
               if name != runtime and isinstance(entry, dict) and entry.get("weights_sha256") == weights_sha256}
    entries[runtime] = {
        "file": out.name, "sha256": file_sha256(out), "weights_sha256": weights_sha256,
        "outputs": list(OUTPUTS), "opset": onnx.load_from_string(data).opset_import[0].version,
        "made_with": {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
                      "onnxruntime": onnxruntime.__version__},
        "command": " ".join(["python -m tools.export_onnx", *([] if bundled else [str(args.weights)]),
                             "--runtime", runtime, *(calibration_args(args) if calibration is not None else [])])}
    if runtime == "onnx-int8":
        entries[runtime]["calibration"] = ("the bundled sample" if calibration is None else
                                           f"{len(calibration)} faces of {Path(args.calibration).name} (seed 0)")
    card["onnx"] = entries
    atomic_write_text(card_path(weights), json.dumps(card, indent=2) + "\n")
    predictor = Predictor(weights, runtime=runtime)
    if predictor.onnx_file != out:
        raise WeightsError(f"the Predictor did not pick up {out.name}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {runtime}, sha256 {entries[runtime]['sha256'][:16]}...) "
          f"and its entry in {card_path(weights).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
