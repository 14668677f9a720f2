"""GlobalBatchNorm2d: under 2-process gloo DDP, each process's output and the summed gradients equal
one process's BatchNorm over the whole batch (what PyTorch's SyncBatchNorm does on GPUs only)."""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mmfuse.distributed_norm import GlobalBatchNorm2d, to_global, to_plain

pytestmark = pytest.mark.skipif(sys.platform != "linux" and not (dist.is_available() and dist.is_gloo_available()),
                                reason="this platform cannot run torch.distributed with gloo")


def batch_and_norm() -> tuple[torch.Tensor, nn.BatchNorm2d]:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, 4) * 2 + 1
    norm = nn.BatchNorm2d(3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return x, norm


def one_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, norm = batch_and_norm()
    to_global(norm)
    share = x[[0, 2, 4]] if rank == 0 else x[[1, 3]]  # unequal shares, as images with their rows
    share.requires_grad_(True)
    y = norm(share)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    torch.save({"y": y.detach(), "grad_x": share.grad, "grad_w": norm.weight.grad, "grad_b": norm.bias.grad,
                "running_mean": norm.running_mean, "running_var": norm.running_var}, f"{out}/rank{rank}.pt")
    # Both ranks past their last collective before either closes its sockets: a rank that tore down
    # while its peer was still finishing the backward's all-reduce aborted the peer (SIGABRT, 2 in 15
    # runs on a loaded machine).
    dist.barrier()
    dist.destroy_process_group()


def test_global_batchnorm_equals_one_process_on_the_whole_batch(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(one_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    x, norm = batch_and_norm()
    x.requires_grad_(True)
    y = norm(x)
    order = [0, 2, 4, 1, 3]
    weights = torch.cat([torch.arange(3 * 48).reshape(3, 3, 4, 4), torch.arange(2 * 48).reshape(2, 3, 4, 4)])
    (y[order] * weights).sum().backward()

    torch.testing.assert_close(torch.cat([ranks[0]["y"], ranks[1]["y"]]), y[order].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([ranks[0]["grad_x"], ranks[1]["grad_x"]]), x.grad[order], atol=1e-4, rtol=1e-4)
    # DDP would average the parameters' gradients; the sum of the two processes' is the whole batch's.
    torch.testing.assert_close(ranks[0]["grad_w"] + ranks[1]["grad_w"], norm.weight.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(ranks[0]["grad_b"] + ranks[1]["grad_b"], norm.bias.grad, atol=1e-3, rtol=1e-4)
    for rank in ranks:
        torch.testing.assert_close(rank["running_mean"], norm.running_mean)
        torch.testing.assert_close(rank["running_var"], norm.running_var)


def test_outside_ddp_it_is_plain_batchnorm_and_converts_back():
    x, norm = batch_and_norm()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), norm)
    expected = model(x)
    assert to_global(model) == 1 and type(model[1]) is GlobalBatchNorm2d
    torch.testing.assert_close(model(x), expected)
    assert to_plain(model) == 1 and type(model[1]) is nn.BatchNorm2d
