"""The model as ONNX, the form it is served in: exported from its PyTorch weights, quantised to int8
where the runtime says so, with the last feature maps as a second output.

Notation: N faces; K classes; C channels of the last feature map, h x w its cells (3 x 3 for
``fer_vgg``). The graph takes ``x`` (N, 1, 48, 48), the normalised faces, and gives

- ``logits`` (N, K);
- ``features`` (N, C, h, w): the last feature maps, the input of the global average pooling
  before the linear classifier (as the int8 model sees them, where it is quantised), from which
  :mod:`fer_core.explain` computes saliency with no PyTorch.

Exporting needs PyTorch (``requirements-train.txt``) and the ``onnx`` package; running the
result needs ONNX Runtime only.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np

from fer_core._torch import require_torch
from fer_core._validation import FERError, check_face_batch
from fer_core.constants import IMAGE_SIZE, INPUT_MEAN, INPUT_STD

__all__ = ["ONNX_RUNTIMES", "OUTPUTS", "export_onnx", "quantize_int8", "with_feature_output", "normalise_faces"]

#: The ONNX forms of a model: float32, or int8 (static QDQ quantisation, per-channel weights).
ONNX_RUNTIMES = ("onnx", "onnx-int8")
#: The outputs of every exported graph, in order.
OUTPUTS = ("logits", "features")


def normalise_faces(faces: np.ndarray) -> np.ndarray:
    """uint8 faces (N, 48, 48) as the model's input (N, 1, 48, 48) float32: grey / 255, standardised."""
    return ((faces.astype(np.float32) / 255.0 - INPUT_MEAN) / INPUT_STD)[:, None]


def export_onnx(weights: str | Path | None = None, *, runtime: str = "onnx",
                calibration: np.ndarray | None = None) -> bytes:
    """The ONNX graph (bytes) of the model in ``weights`` (default: the bundled ones) for ``runtime``
    (one of :data:`ONNX_RUNTIMES`), with the outputs :data:`OUTPUTS`. ``calibration``: the uint8
    faces (N, 48, 48) int8 is calibrated on (default: the bundled sample; see :func:`quantize_int8`).

    Raises :class:`~fer_core._torch.TorchMissing` (a FERError) where PyTorch is not installed.
    """
    if runtime not in ONNX_RUNTIMES:
        raise FERError(f"unknown ONNX runtime {runtime!r}; choose one of {list(ONNX_RUNTIMES)}")
    torch = require_torch("exporting weights to ONNX (weights whose card names no ONNX file)")
    from fer_core.weights import load_model

    model, _ = load_model(weights)
    buffer = io.BytesIO()
    example = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        # The TorchScript-based exporter handles this plain CNN without the extra onnxscript
        # dependency the newer exporter needs; its deprecation notice is noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (example,), buffer, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    data = buffer.getvalue()
    if runtime == "onnx-int8":
        data = quantize_int8(data, calibration)
    return with_feature_output(data)


def quantize_int8(onnx_model: bytes, calibration: np.ndarray | None = None) -> bytes:
    """Static int8 quantisation (QDQ, per-channel weights, min-max ranges) of a graph with the one output
    ``logits``, calibrated on the uint8 faces ``calibration`` (N, 48, 48); default: the bundled sample
    of real faces. The more faces, the steadier the activation ranges: ``tools.bundle_model
    --calibration`` draws them from a training set. Deterministic for given faces and ONNX Runtime version."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces

    if calibration is None:
        calibration = load_faces(SAMPLE_PATH, progress=False).images
    faces = normalise_faces(check_face_batch(calibration, name="calibration faces"))

    class SampleFaces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": faces[i:i + 50]} for i in range(0, len(faces), 50)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        src, pre, out = (Path(folder) / name for name in ("model.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_model)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), SampleFaces(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


def with_feature_output(onnx_model: bytes) -> bytes:
    """The graph with a second output ``features``: the input of its one ``GlobalAveragePool`` node
    (in an int8 graph, the dequantised maps that node reads). The logits are computed as before.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_model)
    graph = model.graph
    if [output.name for output in graph.output] != ["logits"]:
        raise FERError(f"expected a graph with the one output 'logits', got {[o.name for o in graph.output]}")
    pools = [node for node in graph.node if node.op_type == "GlobalAveragePool"]
    if len(pools) != 1:
        raise FERError(f"expected one GlobalAveragePool before the classifier, found {len(pools)}")
    maps = pools[0].input[0]
    inferred = onnx.shape_inference.infer_shapes(model)
    shape = next((info.type.tensor_type.shape for info in inferred.graph.value_info if info.name == maps), None)
    dims = ["n"] + [dim.dim_value or None for dim in shape.dim[1:]] if shape is not None else None
    graph.node.append(helper.make_node("Identity", [maps], ["features"], name="features"))
    graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, dims))
    onnx.checker.check_model(model)
    return model.SerializeToString()
