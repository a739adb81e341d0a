"""Data augmentation on batched tensors: every face of a batch gets its own random transform.

torchvision's v2 transforms draw one set of parameters per call, so a batch would
share one crop and one rotation; here the parameters are drawn per face from a
``torch.Generator`` and applied in one ``grid_sample``, which keeps training
reproducible (seeded per epoch) and cheap on CPU and GPU alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation; a zero turns it off."""

    flip: float = 0.5  # probability of a horizontal flip
    rotate: float = 12.0  # degrees, uniform in [-rotate, rotate]
    scale: float = 0.12  # zoom factor in [1 - scale, 1 + scale]
    translate: float = 0.10  # shift, as a fraction of the side
    brightness: float = 0.25  # additive, in normalised units
    contrast: float = 0.25  # multiplicative, factor in [1 - c, 1 + c]
    erase: float = 0.5  # probability of erasing one rectangle
    erase_area: tuple[float, float] = (0.02, 0.20)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a normalised batch ``x`` (N, 1, H, W); returns a new tensor.

    Affine (flip, rotation, zoom, shift) with border replication, then
    brightness/contrast jitter, then random erasing with noise.
    """
    n, _, h, w = x.shape
    device = x.device
    dev_gen = generator
    angle = _uniform(n, -config.rotate, config.rotate, dev_gen, device) * (math.pi / 180)
    zoom = _uniform(n, 1 - config.scale, 1 + config.scale, dev_gen, device)
    flip = torch.where(torch.rand(n, generator=dev_gen, device=device) < config.flip, -1.0, 1.0)
    shift = _uniform(2 * n, -config.translate, config.translate, dev_gen, device).view(n, 2) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if config.contrast or config.brightness:
        factor = _uniform(n, 1 - config.contrast, 1 + config.contrast, dev_gen, device).view(n, 1, 1, 1)
        offset = _uniform(n, -config.brightness, config.brightness, dev_gen, device).view(n, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * factor + mean + offset

    if config.erase > 0:
        area = _uniform(n, *config.erase_area, dev_gen, device) * h * w
        aspect = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), dev_gen, device))
        eh = torch.sqrt(area * aspect).clamp(1, h - 1)
        ew = torch.sqrt(area / aspect).clamp(1, w - 1)
        top = torch.rand(n, generator=dev_gen, device=device) * (h - eh)
        left = torch.rand(n, generator=dev_gen, device=device) * (w - ew)
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = (
            (rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1))
        )
        chosen = (torch.rand(n, generator=dev_gen, device=device) < config.erase).view(n, 1, 1)
        mask = (inside & chosen).unsqueeze(1)
        noise = torch.randn(out.shape, generator=dev_gen, device=device, dtype=out.dtype)
        out = torch.where(mask, noise, out)
    return out
