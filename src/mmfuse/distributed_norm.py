"""BatchNorm over the global batch under DDP on any device, CPU included.

Under DDP each process normalises over its own share of the batch (32 of the demo's 64 images on 2
processes), so its statistics, and the training trajectory, differ from one process's. PyTorch's
SyncBatchNorm fixes that on GPUs only ("SyncBatchNorm layers only work with GPU modules"); this one
sums each channel's count, sum and sum of squares over the processes with the autograd-aware
`torch.distributed.nn` all-reduce, so the forward pass and the gradients equal those of one process
on the whole batch. Outside DDP training it is plain BatchNorm.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn


# The differentiable all-reduce is marked deprecated in favour of a private module without autograd.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated")


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats and distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        count = x.new_tensor([x.numel() / x.shape[1]])
        local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
        total = all_reduce(local)  # summed over processes; its backward sums the gradients too
        channels = x.shape[1]
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        self._update_running(mean.detach(), var.detach(), float(n.detach()))
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0)
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, n: float) -> None:
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / max(n - 1.0, 1.0)  # as BatchNorm: running_var is the unbiased estimate
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)


def to_global(module: nn.Module) -> int:
    """Make every plain BatchNorm2d of `module` a GlobalBatchNorm2d in place; how many."""
    return _retype(module, nn.BatchNorm2d, GlobalBatchNorm2d)


def to_plain(module: nn.Module) -> int:
    """Undo `to_global`: saved and exported models hold plain BatchNorm2d (ONNX, Conv+BN folding)."""
    return _retype(module, GlobalBatchNorm2d, nn.BatchNorm2d)


def _retype(module: nn.Module, old: type, new: type) -> int:
    # Only the class changes: the parameters, buffers and hooks stay the same objects, so an
    # optimizer or DDP wrapper built before or after sees the same tensors.
    changed = 0
    for layer in module.modules():
        if type(layer) is old:
            layer.__class__ = new
            changed += 1
    return changed
