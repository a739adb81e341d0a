"""BatchNorm over the whole batch of torchrun's processes, so that N processes train as one does.

With DistributedDataParallel each process sees 1/N of every batch; plain BatchNorm would
normalise with the statistics of that share (and keep per-process running statistics, so the
processes' buffers and weight EMA would drift apart). :func:`synchronise_batchnorm` replaces
every ``BatchNorm2d`` by a layer that, in training, normalises with the mean and variance of the
whole batch, summed over the processes: ``torch.nn.SyncBatchNorm`` on GPUs, and on the CPU
(``gloo``, which ``SyncBatchNorm`` refuses) :class:`GlooSyncBatchNorm`. Both keep
``BatchNorm2d``'s state-dict keys, so checkpoints and weights files do not change; in eval
mode both are plain BatchNorm and talk to no other process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["GlooSyncBatchNorm", "synchronise_batchnorm"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllSum(torch.autograd.Function):
    """A tensor summed over the processes; its gradient is the processes' gradients summed likewise."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return _AllSum.apply(grad)


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the whole batch across the processes (any backend).

    The per-channel sums of x and x^2 and the count are all-reduced (differentiably, so the
    gradient flows through the shared statistics as in ``SyncBatchNorm``); the running
    statistics are updated with the whole batch's mean and unbiased variance, identically in
    every process. Outside training, or in one process, it is ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        channels = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() / channels, dtype=torch.float32, device=x.device)
        stats = _AllSum.apply(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels:2 * channels] / n - mean * mean).clamp_min(0.0)  # biased, as BatchNorm normalises
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp_min(1.0), momentum)
        shape = (1, channels, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _to_gloo_sync(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a :class:`GlooSyncBatchNorm` holding the same state."""
    if type(module) is nn.BatchNorm2d:
        synced = GlooSyncBatchNorm(module.num_features, eps=module.eps, momentum=module.momentum,
                                   affine=module.affine, track_running_stats=module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        return synced.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _to_gloo_sync(child))
    return module


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` (changed in place where possible, and returned) with BatchNorm over the processes' whole batch:
    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlooSyncBatchNorm` elsewhere. Call it before building the
    optimizer and the weight EMA, which must hold the returned module's parameters."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_gloo_sync(module)
