"""Two gloo ranks (CPU) give the loss and gradients of one process on the whole batch."""

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from slidemil.ssl.pretrain import gather_rows
from slidemil.ssl.losses import build_objective

B, D = 8, 6


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 4))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.tensor([0, 1, 1, 0, 0, 1, 0, 1])


def _loss(net, x1, x2, labels, name):
    z = F.normalize(net(torch.cat([x1, x2])), dim=1)
    b = len(x1)
    return build_objective(name)(gather_rows(z[:b]), gather_rows(z[b:]), labels=gather_rows(labels))


def _rank(rank: int, world: int, init: str, out: str, name: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        net = DistributedDataParallel(_net())
        x1, x2, labels = _batch()
        part = slice(rank * B // world, (rank + 1) * B // world)  # contiguous rows per rank, rank order
        loss = _loss(net, x1[part], x2[part], labels[part], name)
        loss.backward()
        if rank == 0:
            torch.save({"loss": loss.detach(), "grads": [p.grad for p in net.module.parameters()]}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["simclr", "weaksupcon"])
def test_two_ranks_equal_one_process(tmp_path, name):
    net = _net()
    x1, x2, labels = _batch()
    loss = _loss(net, x1, x2, labels, name)
    loss.backward()
    out = str(tmp_path / "rank0.pt")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'init'}", out, name), nprocs=2, join=True)
    got = torch.load(out)
    torch.testing.assert_close(got["loss"], loss.detach())
    for a, b in zip(got["grads"], [p.grad for p in net.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
