"""CNNs for 48x48 grey faces, registered by name: ``create_model("fer_resnet")``.

Every model maps ``(N, 1, 48, 48)`` float inputs (grey levels scaled by
:data:`fer_core.constants.INPUT_MEAN`/``INPUT_STD``) to ``(N, 7)`` logits, and
exposes ``forward_features`` (the last feature map, for saliency) and
``forward_head`` (global average pooling, dropout, one linear layer) so features are
reachable without surgery. That head makes the class activation map of the last feature
map equal to its Grad-CAM (:mod:`fer_core.explain`). Needs PyTorch (``requirements-train.txt``):
serving runs the exported ONNX file instead (:mod:`fer_core.export`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fer_core.labels import NUM_CLASSES

__all__ = ["FerNet", "create_model", "list_models", "MODEL_CONFIGS", "count_params"]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut, as in ResNet."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # Zero-init the last BN so each block starts as identity (Goyal et al., 2017).
        nn.init.zeros_(self.bn2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class FerNet(nn.Module):
    """A CNN for 48x48 faces: a stem at full resolution, then stages that halve the resolution.

    Parameters
    ----------
    widths : channels of each stage.
    depths : blocks per stage (``block="vgg"``: conv-BN-ReLU layers; ``"res"``: residual blocks).
    stem : channels of the stem (two 3x3 convolutions at 48x48, the second with ``stem_stride``).
    stem_stride : 2 halves the resolution in the stem, which cuts the computation about fourfold.
    dropout : before the classifier.
    """

    def __init__(
        self,
        *,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        stem: int,
        stem_stride: int = 1,
        block: str = "res",
        dropout: float = 0.3,
        num_classes: int = NUM_CLASSES,
        in_chans: int = 1,
    ) -> None:
        super().__init__()
        if block not in ("res", "vgg"):
            raise ValueError(f"block must be 'res' or 'vgg', got {block!r}")
        if len(widths) != len(depths):
            raise ValueError(f"widths {widths} and depths {depths} must have the same length")
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.stem = nn.Sequential(_conv_bn(in_chans, stem), _conv_bn(stem, stem, stride=stem_stride))
        stages: list[nn.Module] = []
        cin = stem
        for width, depth in zip(widths, depths):
            layers: list[nn.Module] = []
            if block == "res":
                for i in range(depth):
                    layers.append(BasicBlock(cin, width, stride=2 if i == 0 else 1))
                    cin = width
            else:
                layers.append(nn.MaxPool2d(2))
                for _ in range(depth):
                    layers.append(_conv_bn(cin, width))
                    cin = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 48, 48) -> the last feature map (N, C, h, w)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (N, num_classes), or the pooled features with ``pre_logits``."""
        x = self.pool(x).flatten(1)
        if pre_logits:
            return x
        return self.fc(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


#: Sizes of every registered variant.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # A plain VGG-style CNN like the reference baseline (about 1.2M parameters).
    "fer_cnn_small": dict(stem=32, widths=(64, 128, 256), depths=(2, 2, 2), block="vgg"),
    # VGG-style down to 3x3 (like the published FER2013 VGG variants), with a thin 16-channel
    # stem so the 48x48 layers stay cheap.
    "fer_vgg": dict(stem=16, widths=(64, 128, 256, 512), depths=(1, 2, 2, 2), block="vgg"),
    # fer_vgg at half the widths (1.2M parameters, about a quarter of the computation); how it
    # fared is in docs/experiments.md.
    "fer_vgg_slim": dict(stem=16, widths=(32, 64, 128, 256), depths=(1, 2, 2, 2), block="vgg"),
    # Residual, wider and deeper at low resolution where computation is cheap.
    "fer_resnet": dict(stem=32, widths=(64, 128, 256), depths=(2, 2, 2), block="res"),
    "fer_resnet_wide": dict(stem=48, widths=(96, 192, 384), depths=(2, 2, 2), block="res"),
    "fer_resnet_deep": dict(stem=32, widths=(64, 128, 256, 512), depths=(2, 2, 2, 1), block="res"),
    # The same blocks after a stride-2 stem: a quarter of the computation, for fast CPU inference.
    "fer_fastnet": dict(stem=32, stem_stride=2, widths=(64, 128, 256), depths=(2, 2, 2), block="res"),
    "fer_fastnet_wide": dict(stem=32, stem_stride=2, widths=(96, 192, 384), depths=(2, 2, 2), block="res"),
    # Tiny, for tests. Its stem has 16 channels, not 8: on some AVX-512 CPUs (an AMD EPYC with
    # avx512_bf16 and avx512_vp2intersect), PyTorch 2.14's channels-last backward pass of a 1x1
    # stride-2 convolution with 4-12 input channels crashes the process for batches of some
    # sizes (3, 15, ...). No other registered model has such a convolution.
    "fer_tiny": dict(stem=16, widths=(16, 32), depths=(1, 1), block="res", dropout=0.0),
}


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def create_model(name: str, **kwargs: Any) -> FerNet:
    """Build a registered model; keyword arguments override its sizes (``num_classes=6``)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    return FerNet(**{**MODEL_CONFIGS[name], **kwargs})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
