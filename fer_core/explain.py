"""Saliency: which parts of a 48x48 face drove the model's prediction (Grad-CAM).

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional feature map by
the mean gradient of the class logit with respect to it, sums the channels and keeps the
positive part. The last stage of the FER models is 3x3, too coarse to say more than "the
lower half"; the map is taken from the last stage whose output is at least
:data:`MIN_CAM_SIDE` pixels wide (6x6 for the shipped models), which localises mouth, eyes
and brows while still seeing nearly the whole network.

    >>> from fer_core.explain import grad_cam, heatmap_overlay
    >>> maps = grad_cam(predictor.model, faces)           # (N, 48, 48) in [0, 1]
    >>> picture = heatmap_overlay(faces[0], maps[0])      # (48, 48, 3) uint8
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fer_core._validation import check_face_batch
from fer_core.constants import IMAGE_SIZE, INPUT_MEAN, INPUT_STD

__all__ = ["MIN_CAM_SIDE", "grad_cam", "heatmap_overlay", "blend_heatmap"]

#: Smallest side (in feature-map cells) of the layer Grad-CAM reads.
MIN_CAM_SIDE: int = 6


def _stage_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The stem's and every stage's output, in order."""
    outputs = [model.stem(x)]
    for stage in model.stages:
        outputs.append(stage(outputs[-1]))
    return outputs


def grad_cam(model: torch.nn.Module, faces: np.ndarray, targets: np.ndarray | list[int] | None = None) -> np.ndarray:
    """Grad-CAM maps of uint8 faces ``(N, 48, 48)`` for their ``targets`` (default: the top class).

    Returns ``(N, 48, 48)`` float32 maps in [0, 1] (each scaled by its own maximum; an all-zero
    map means no region pushed towards the class). The model's weights and mode are left as
    they were.
    """
    faces = check_face_batch(faces, name="faces")
    if faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"faces must be 48x48, got {faces.shape[1:]}")
    if len(faces) == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    device = next(model.parameters()).device
    x = (torch.from_numpy(faces).float().div(255.0).sub(INPUT_MEAN).div(INPUT_STD))[:, None].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outputs = _stage_outputs(model, x)
            chosen = next(
                (out for out in reversed(outputs) if out.shape[-1] >= MIN_CAM_SIDE), outputs[-1]
            )
            chosen.retain_grad()
            logits = model.forward_head(outputs[-1])
            if targets is None:
                index = logits.argmax(1)
            else:
                index = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
                if index.shape != (len(faces),) or (index < 0).any() or (index >= logits.shape[1]).any():
                    raise ValueError(f"targets must hold one class index in [0, {logits.shape[1]}) per face")
            logits.gather(1, index[:, None]).sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    weights = chosen.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * chosen.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).float().cpu().numpy()


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
