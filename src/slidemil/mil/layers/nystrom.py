"""Nystrom self-attention (Xiong et al., AAAI 2021, "Nystromformer") in plain torch.

Same arithmetic as lucidrains/nystrom-attention 0.0.9 (the package TransMIL imports): the
sequence is zero-padded at the front to a multiple of m landmarks; landmarks are segment means of
q and k; softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V with the pseudo-inverse from 6
Moore-Penrose iterations; plus a depthwise Conv over the sequence of values (kernel 33) as the
residual. The n x m attention is formed in blocks of query rows, and the m x n landmark attention
(attn3) one head at a time, each recomputed in backward rather than stored: neither exists whole,
so memory is O(n d + m n / h) (a 10,000-tile layer holds 10 MB of attn3, not 80 MB + its gradient),
and a bag of 50,000 tiles fits on a CPU.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


ROWS = 2048  # query rows per block of the attention product


def _rows(q: torch.Tensor, k_l: torch.Tensor, pinv: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """(softmax(q k_l^T) pinv) kv for a block of query rows q [B, h, r, d] -> [B, h, r, d]."""
    return (torch.softmax(q @ k_l.transpose(-1, -2), dim=-1) @ pinv) @ kv


def _landmark_rows(q_l: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """attn3 = softmax(q_l k^T) for a slice of heads (q_l [B, h', m, d], k, v [B, h', n, d]) ->
    (attn3 v [B, h', m, d], left attn3 [B, h', 1, n] or None for left [B, h', 1, m] or None)."""
    attn3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)
    return attn3 @ v, (left @ attn3 if left is not None else None)


def sequence_conv(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise conv along the sequence, = Conv2d(h, h, (k, 1), padding=(k // 2, 0), groups=h, bias=False)
    with `weight` [h, 1, k, 1], as a sum of k shifted copies: the CPU Conv2d unfolds [h, k, n, d]
    (0.7 GB at 10,000 tiles); this needs one output. v [B, h, n, d] -> [B, h, n, d]."""
    k = weight.shape[2]
    n = v.shape[2]
    padded = F.pad(v, (0, 0, k // 2, k // 2))
    w = weight[:, 0, :, 0]  # [h, k]
    out = padded[:, :, 0:n] * w[None, :, 0, None, None]
    for j in range(1, k):  # in place: one temporary per term, not two (same sums, same order)
        out.add_(padded[:, :, j:j + n] * w[None, :, j, None, None])
    return out


def moore_penrose_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative pseudo-inverse of x [..., m, m] (Razavi et al. 2014), as in nystrom-attention."""
    abs_x = x.abs()
    z = x.transpose(-1, -2) / (abs_x.sum(-1).max() * abs_x.sum(-2).max())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class NystromAttention(nn.Module):
    """x [B, n, dim] -> [B, n, dim]; heads x dim_head inner width, m landmarks."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, num_landmarks: int = 256,
                 pinv_iterations: int = 6, residual_kernel: int = 33, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.m, self.iters = heads, num_landmarks, pinv_iterations
        self.scale = dim_head ** -0.5
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        pad = residual_kernel // 2
        self.res_conv = nn.Conv2d(heads, heads, (residual_kernel, 1), padding=(pad, 0), groups=heads, bias=False)

    def forward(self, x: torch.Tensor, query_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (output [B, n, dim], attention of token `query_index` over all n tokens [B, n]
        averaged over heads, or None). The attention row uses the same Nystrom factors."""
        b, n, _ = x.shape
        h, m = self.heads, self.m
        pad = (m - n % m) % m
        if pad:
            x = F.pad(x, (0, 0, pad, 0))
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))  # [B, h, n', d]
        q = q * self.scale
        seg = math.ceil(n / m)
        q_l = q.reshape(b, h, m, seg, -1).sum(3) / seg  # [B, h, m, d]
        k_l = k.reshape(b, h, m, seg, -1).sum(3) / seg
        attn2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)  # [B, h, m, m]
        pinv = moore_penrose_pinv(attn2, self.iters)
        left = None  # the row of token `query_index` in softmax(Q K~^T) pinv [B, h, 1, m]
        if query_index is not None:
            qi = q[:, :, pad + query_index: pad + query_index + 1]  # [B, h, 1, d]
            left = torch.softmax(qi @ k_l.transpose(-1, -2), dim=-1) @ pinv
        grad = torch.is_grad_enabled() and q.requires_grad
        # attn3 = softmax(Q~ K^T) [B, h, m, n'] one head at a time, recomputed in backward (same
        # arithmetic per head): kv = attn3 V [B, h, m, d] and the query row left attn3 [B, h, 1, n'].
        kv_parts, row_parts = [], []
        for i in range(h):
            args = (q_l[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], None if left is None else left[:, i:i + 1])
            kv_i, row_i = checkpoint(_landmark_rows, *args, use_reentrant=False) if grad else _landmark_rows(*args)
            kv_parts.append(kv_i)
            row_parts.append(row_i)
        kv = torch.cat(kv_parts, dim=1)
        # (softmax(Q K~^T) pinv) (attn3 V) by blocks of query rows, each recomputed in backward rather
        # than stored: the [n', m] attention never exists whole (same arithmetic, row by row).
        blocks = [checkpoint(_rows, q[:, :, lo:lo + ROWS], k_l, pinv, kv, use_reentrant=False) if grad
                  else _rows(q[:, :, lo:lo + ROWS], k_l, pinv, kv) for lo in range(0, q.shape[2], ROWS)]
        out = torch.cat(blocks, dim=2) + sequence_conv(v, self.res_conv.weight)  # [B, h, n', d]
        out = self.to_out(out.transpose(1, 2).reshape(b, out.shape[2], -1))[:, -n:]
        row = None
        if left is not None:
            row = torch.cat(row_parts, dim=1)[:, :, 0, pad:].mean(1)  # [B, n]
        return out, row
