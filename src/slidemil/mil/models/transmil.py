"""TransMIL (Shao et al., NeurIPS 2021, "TransMIL: Transformer based correlated multiple instance
learning for whole slide image classification"; code: szc19990412/TransMIL, models/TransMIL.py).

x [N, D] -> h = ReLU(W_1 x) [N, H] (H = 512); tokens = [cls; h] [1+N, H]
-> TransLayer (pre-LayerNorm Nystrom self-attention + residual; 8 heads x H/8, H/2 landmarks,
   6 pseudo-inverse iterations, value-conv residual, dropout 0.1)
-> PPEG: the N tile tokens on a 2-D canvas, + depthwise convs 7x7, 5x5, 3x3 (+ identity)
-> TransLayer -> LayerNorm -> cls token -> Linear(H, C) = logits [C].
Instance scores [N]: the cls token's row of the last layer's Nystrom attention, mean over heads.

Departures from the authors' code:
- PPEG places each tile at its own position on the tile grid (rows and columns without tiles are
  dropped so that separate tissue pieces do not blow up the canvas; empty cells are zeros that
  never become tokens). The authors pack the N tokens in input order into a ceil(sqrt N)^2 square
  padded with copies of the first tokens, so their "positions" are arbitrary. Without a grid, or
  when the compacted canvas has more than 4N cells, we fall back to that square packing (in
  raster order, zero-padded, no copies).
- Tokens are sorted into raster order (row, col) first, so the output does not depend on the
  order the tiles arrive in (with a grid: permutation invariant).
- Nystrom attention is our plain-torch copy of lucidrains/nystrom-attention 0.0.9 (same
  arithmetic, slidemil.mil.layers.nystrom), not the package.
- In training each transformer layer is recomputed in backward rather than stored
  (`checkpointing`; same numbers, more time, half the memory).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from slidemil.mil.bag import Bag
from slidemil.mil.layers.nystrom import NystromAttention
from slidemil.mil.models.base import MILModel, MilOutput, bag_features, register_mil


def canvas_positions(grid: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(order [N], flat canvas cell of each ordered token [N], H, W) for the PPEG canvas.

    With a grid: raster order by (row, col); rows/columns without tiles dropped. Falls back to a
    ceil(sqrt N)^2 square in input/raster order when there is no grid or the canvas exceeds 4N cells.
    """
    if grid is not None:
        grid = np.asarray(grid, dtype=np.int64)
        order = np.lexsort((grid[:, 0], grid[:, 1]))  # rows, then columns
        cols = np.unique(grid[:, 0], return_inverse=True)[1].reshape(-1)
        rows = np.unique(grid[:, 1], return_inverse=True)[1].reshape(-1)
        hgt, wid = int(rows.max()) + 1, int(cols.max()) + 1
        if hgt * wid <= max(4 * n, 16):
            return order, (rows * wid + cols)[order], hgt, wid
    else:
        order = np.arange(n)
    side = int(math.ceil(math.sqrt(n)))
    return order, np.arange(n), side, side


class PPEG(nn.Module):
    """Pyramid position encoding: depthwise convs 7/5/3 + identity over a [H, W] token canvas."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, tokens: torch.Tensor, cells: torch.Tensor, hgt: int, wid: int) -> torch.Tensor:
        """tokens [N, dim] at flat canvas cells [N] -> [N, dim]."""
        dim = tokens.shape[1]
        canvas = tokens.new_zeros(hgt * wid, dim).index_copy(0, cells, tokens)
        canvas = canvas.T.reshape(1, dim, hgt, wid)
        out = self.proj(canvas) + canvas + self.proj1(canvas) + self.proj2(canvas)
        return out.reshape(dim, hgt * wid).T[cells]


class TransLayer(nn.Module):
    """x + NystromAttention(LayerNorm(x)); also returns the cls token's attention row."""

    def __init__(self, dim: int, heads: int, landmarks: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads=heads, dim_head=dim // heads, num_landmarks=landmarks,
                                     pinv_iterations=6, dropout=dropout)

    def forward(self, x: torch.Tensor, want_row: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, row = self.attn(self.norm(x), query_index=0 if want_row else None)
        return x + out, row


@register_mil("transmil")
class TransMIL(MILModel):
    """Two Nystrom transformer layers around a grid-aware PPEG; cls-token readout."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 512, heads: int = 8,
                 landmarks: int | None = None, dropout: float = 0.1, checkpointing: bool = True) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"transmil: hidden {hidden} must be a multiple of heads {heads}")
        self.checkpointing = checkpointing
        self.fc1 = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden))
        landmarks = landmarks or hidden // 2
        self.layer1 = TransLayer(hidden, heads, landmarks, dropout)
        self.pos_layer = PPEG(hidden)
        self.layer2 = TransLayer(hidden, heads, landmarks, dropout)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def _run(self, layer: nn.Module, *args):
        """layer(*args), recomputed in backward instead of stored when training with checkpointing
        (dropout replayed: same numbers); a layer's Nystrom intermediates are ~0.5 GB at 10,000 tiles."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, x: torch.Tensor | Bag) -> MilOutput:
        feats = bag_features(x)
        n = feats.shape[0]
        order, cells, hgt, wid = canvas_positions(x.grid if isinstance(x, Bag) else None, n)
        order_t = torch.from_numpy(order).to(feats.device)
        h = self.fc1(feats[order_t])[None]  # [1, N, H] in raster order
        h = torch.cat([self.cls_token, h], dim=1)  # [1, 1+N, H]
        h, _ = self._run(self.layer1, h)
        cells_t = torch.from_numpy(np.asarray(cells, dtype=np.int64)).to(feats.device)
        h = torch.cat([h[:, :1], self.pos_layer(h[0, 1:], cells_t, hgt, wid)[None]], dim=1)
        h, row = self._run(self.layer2, h, True)
        logits = self.fc2(self.norm(h)[0, 0])  # [C]
        scores = torch.empty(n, device=feats.device, dtype=row.dtype)
        scores[order_t] = row[0, 1:]  # back to input order
        return MilOutput(logits, scores)
