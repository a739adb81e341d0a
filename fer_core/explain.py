"""Saliency: which parts of a 48x48 face drove the model's prediction (CAM, which is Grad-CAM here).

Notation: N faces, K classes; ``A`` (N, C, h, w), the last feature maps (3 x 3 cells for
``fer_vgg``); ``w`` (K, C), the weights of the linear classifier. Every model of
:mod:`fer_core.model` ends in global average pooling, dropout (the identity at inference) and
that linear layer, so the logit of class c is ``y_c = sum_k w[c, k] mean_ij A[k, i, j] + b_c``.

- CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016):
  ``ReLU(sum_k w[c, k] A_k)``, here scaled by its own maximum.
- Grad-CAM (Selvaraju et al., ICCV 2017) on the last feature maps weights each channel by the
  spatial mean of ``dy_c / dA_k``, which for that head is ``w[c, k] / (h w)`` in every cell:
  ``ReLU(sum_k w[c, k] / (h w) A_k)``, the CAM divided by a positive constant. Once each map
  is scaled by its maximum, the two are the same map.

So saliency needs only the ONNX model's second output (the last feature maps, see
:mod:`fer_core.export`) and the classifier weights: no gradient, no PyTorch. :func:`grad_cam` also
takes a PyTorch model, where it computes Grad-CAM by backpropagation (the reference the tests
compare the CAM with).

    >>> from fer_core.explain import grad_cam, heatmap_overlay
    >>> maps = grad_cam(predictor.model, faces)           # (N, 48, 48) in [0, 1]
    >>> picture = heatmap_overlay(faces[0], maps[0])      # (48, 48, 3) uint8
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from fer_core._validation import check_face_batch
from fer_core.constants import IMAGE_SIZE
from fer_core.export import normalise_faces

__all__ = ["class_activation_maps", "grad_cam", "heatmap_overlay", "blend_heatmap"]


def _check_faces(faces: np.ndarray) -> np.ndarray:
    faces = check_face_batch(faces, name="faces")
    if faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"faces must be 48x48, got {faces.shape[1:]}")
    return faces


def _check_targets(targets: Any, n: int, k: int) -> np.ndarray | None:
    if targets is None:
        return None
    index = np.asarray(targets)
    if index.shape != (n,) or not np.issubdtype(index.dtype, np.integer) or (index < 0).any() or (index >= k).any():
        raise ValueError(f"targets must hold one class index in [0, {k}) per face, got {targets!r}")
    return index.astype(np.int64)


def _to_face_size(cam: np.ndarray) -> np.ndarray:
    """Maps (N, h, w) >= 0, upsampled bilinearly (half-pixel centres) to (N, 48, 48), each over its maximum."""
    if cam.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        cam = np.stack([cv2.resize(m, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR) for m in cam])
    peak = np.maximum(cam.reshape(len(cam), -1).max(axis=1), 1e-12)[:, None, None]
    return (cam / peak).astype(np.float32)


def class_activation_maps(feature_maps: np.ndarray, classifier: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """CAM of each face for its target class, at the size of a face.

    Parameters
    ----------
    feature_maps : (N, C, h, w)
        The last feature maps, before global average pooling.
    classifier : (K, C)
        The weights of the linear classifier over the pooled maps.
    targets : (N,)
        A class index per face.

    Returns
    -------
    (N, 48, 48) float32 in [0, 1]: ``ReLU(sum_k classifier[t, k] feature_maps[:, k])``, upsampled
    bilinearly and scaled by its own maximum (an all-zero map: no region pushed towards the class).
    """
    maps = np.asarray(feature_maps, dtype=np.float32)
    weights = np.asarray(classifier, dtype=np.float32)
    if maps.ndim != 4 or weights.ndim != 2 or maps.shape[1] != weights.shape[1]:
        raise ValueError(f"feature_maps (N, C, h, w) and classifier (K, C) must share C, "
                         f"got {maps.shape} and {weights.shape}")
    index = _check_targets(targets, len(maps), len(weights))
    if len(maps) == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", weights[index], maps), 0)
    return _to_face_size(cam)


def grad_cam(model: Any, faces: np.ndarray, targets: np.ndarray | list[int] | None = None) -> np.ndarray:
    """Saliency maps of uint8 faces ``(N, 48, 48)`` for their ``targets`` (default: the top class).

    ``model`` is a predictor's ONNX model (``predictor.model``, a
    :class:`~fer_core.predict.OnnxModel`): the map is the CAM of its last feature maps, which for
    these models is Grad-CAM (see the module notes); or a PyTorch model of :mod:`fer_core.model`:
    Grad-CAM of its last feature maps by backpropagation, leaving its weights and mode as they were.

    Returns ``(N, 48, 48)`` float32 maps in [0, 1] (each scaled by its own maximum; an all-zero
    map means no region pushed towards the class).
    """
    faces = _check_faces(faces)
    x = normalise_faces(faces)
    if hasattr(model, "feature_maps") and hasattr(model, "classifier"):
        index = _check_targets(targets, len(faces), len(model.classifier))
        if len(faces) == 0:
            return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        if index is None:
            index = model(x).argmax(axis=1)
        return class_activation_maps(model.feature_maps(x), model.classifier, index)
    return _torch_grad_cam(model, x, targets)


def _torch_grad_cam(model: Any, x: np.ndarray, targets: Any) -> np.ndarray:
    """Grad-CAM of a PyTorch model's last feature maps (``forward_features``), by backpropagation."""
    from fer_core._torch import require_torch

    torch = require_torch("Grad-CAM of a PyTorch model")
    if len(x) == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    device = next(model.parameters()).device
    inputs = torch.from_numpy(x).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            maps = model.forward_features(inputs)
            maps.retain_grad()
            logits = model.forward_head(maps)
            index = _check_targets(targets, len(x), logits.shape[1])
            index = logits.argmax(1) if index is None else torch.as_tensor(index, device=device)
            logits.gather(1, index[:, None]).sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    weights = maps.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps.detach()).sum(1)).float().cpu().numpy()
    return _to_face_size(cam)


def heatmap_overlay(face: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """A grey face ``(H, W)`` with its map ``(h, w)`` in [0, 1] as a colour overlay: ``(H, W, 3)`` RGB."""
    rgb = np.repeat(np.asarray(face, dtype=np.uint8)[..., None], 3, axis=2)
    return blend_heatmap(rgb, cam, alpha=alpha)


def blend_heatmap(rgb: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend a map in [0, 1] (resized to ``rgb``) over an RGB uint8 image, "jet" colours.

    Cold regions (map near 0) are left mostly as they were, so the face stays readable.
    """
    height, width = rgb.shape[:2]
    cam = cv2.resize(np.clip(cam, 0, 1).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    weight = (alpha * (0.25 + 0.75 * cam))[..., None]
    return (rgb * (1 - weight) + colours * weight).round().clip(0, 255).astype(np.uint8)
