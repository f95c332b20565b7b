"""Spatially regularised MIL, SRMIL (Yi et al., WACV 2026; code: wwyi1828/SRMIL, srmil/modeling.py,
srmil/trainer.py, srmil/config.py): a GAT masked autoencoder over the tile graph whose supernode
feeds the bag classifier.

Graph: tiles within Chebyshev distance `radius` = 2 on the tile grid (the authors' Euclidean 2.84
grid steps is the same 5 x 5 window) + self loops. The workflow's graph (graph.radius, default 1)
is used when its radius matches; otherwise the radius-2 graph is built from the bag's grid
(slidemil.mil.bag.Bag.neighbours).
Supernode: one learned node (a D-vector token) with edges to and from every tile.

x [N, D] -> reformer Linear(D, D) -> encoder: 2 GAT layers, 4 heads x 64 (concat 256), feature
dropout 0.11, attention dropout 0.15, LeakyReLU 0.2, residual, LayerNorm + PReLU.
Training step (the authors' trainer, add_node_first = False, fixed "Token" remask):
  mask M = 70% of tiles (int(0.7 N), resampled each step); x_m = x with rows M := enc_mask_token
  1. reconstruction, tile graph only: z = enc(reformer(x_m)); r = Linear(256,256,no bias)(z);
     r[M] := dec_mask_token; x_hat = dec(r) (2 GAT layers, 4 heads x 64 then 1 head -> D, the
     last without norm/activation/residual); SCE = mean_{i in M} (1 - cos(x_hat_i, x_i))^alpha
  2. masked CE: enc(reformer([x_m; s])) on tiles + supernode s; heads averaged [N+1, 64];
     logits_m = classifier(row of s), classifier = Linear(64,128)-ReLU-Dropout(0.059)-Linear(128,C)
  3. full CE: the same on [x; s] -> logits [C] (the only pass at evaluation)
  loss = (2 - w_gen) [(2 - w_ce) CE_m + w_ce CE_f] + w_gen SCE;  w_gen = 1.8, w_ce = 1:
       0.2 CE_m + 0.2 CE_f + 1.8 SCE  (`srmil_loss`, a pure function).
Instance scores [N]: the last encoder layer's attention from each tile into the supernode (full
pass), mean over heads.

Departures from the authors' code: no masked tile (a 1-tile bag, or mask_rate 0) gives SCE = 0
(theirs: NaN, the mean over no rows); residuals are kept when input and output widths match
(theirs silently drop them); SCE reconstructs the features the model receives (standardised by
the training wrapper; theirs: raw features); our GAT is plain torch (slidemil.mil.layers.gat), not
DGL; model selection is on validation loss over all epochs (theirs: validation accuracy after
epoch 60) and the training loop's AdamW has no cosine schedule; in training each pass is
recomputed in backward rather than stored (`checkpointing`, same numbers, ~1.3x the time, a third
of the memory; bags of up to 2,000 tiles are stored, their memory is small). With w_gen = 0 and mask_rate = 0
the loss is 2 (2 - w_ce + w_ce) CE = 4 CE of the plain GAT + supernode classifier (a test).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from slidemil.mil.bag import Bag
from slidemil.mil.layers.gat import GATConv
from slidemil.mil.models.base import MILModel, MilOutput, register_mil

CHECKPOINT_MIN_TILES = 2000  # smaller bags keep their activations: recomputing costs 1.3-1.6x the time


def sce_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Scaled cosine error mean_i (1 - cos(x_i, y_i))^alpha over rows of x, y [M, D]; 0 when M = 0."""
    if x.shape[0] == 0:
        return x.sum() * 0.0  # keeps the graph (and gradients) defined; the authors' mean gives NaN
    cos = (F.normalize(x, p=2, dim=-1) * F.normalize(y, p=2, dim=-1)).sum(dim=-1)
    return (1 - cos).pow(alpha).mean()


def srmil_loss(logits_masked: torch.Tensor, logits_full: torch.Tensor, x_rec: torch.Tensor,
               x_init: torch.Tensor, target: torch.Tensor, w_gen: float = 1.8, w_ce: float = 1.0,
               alpha: float = 1.0) -> torch.Tensor:
    """SRMIL's loss (srmil/trainer.py): (2 - w_gen)[(2 - w_ce) CE_m + w_ce CE_f] + w_gen SCE.

    logits_* [C] or [1, C]; x_rec, x_init [M, D] reconstructed / input features of the masked
    tiles (same row order); target: long class index.
    """
    y = target.view(1)
    ce_m = F.cross_entropy(logits_masked.view(1, -1), y)
    ce_f = F.cross_entropy(logits_full.view(1, -1), y)
    return (2 - w_gen) * ((2 - w_ce) * ce_m + w_ce * ce_f) + w_gen * sce_loss(x_rec, x_init, alpha)


class GAT(nn.Module):
    """A stack of GATConv; `last_plain`: the last layer has no norm, activation or residual."""

    def __init__(self, dims: list[tuple[int, int, int]], feat_drop: float, attn_drop: float,
                 negative_slope: float, last_plain: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i, (d_in, d_out, heads) in enumerate(dims):
            full = not (last_plain and i == len(dims) - 1)
            self.layers.append(GATConv(d_in, d_out, heads, feat_drop, attn_drop, negative_slope,
                                       residual=full, activation=full, norm=full))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (node features of the last layer, its attention [E, heads])."""
        alpha = x.new_zeros(0)
        for layer in self.layers:
            x, alpha = layer(x, edge_index)
        return x, alpha


def with_supernode(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """Tile edges [2, E] + supernode (index n) -> every tile and every tile -> supernode.

    The last n edges are tile i -> supernode in tile order (read as instance attention).
    """
    tiles = torch.arange(n, device=edge_index.device)
    sn = torch.full_like(tiles, n)
    return torch.cat([edge_index, torch.stack([sn, tiles]), torch.stack([tiles, sn])], dim=1)


@register_mil("srmil")
class SRMIL(MILModel):
    """GAT masked autoencoder + supernode classifier (needs a Bag with a grid or graph)."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256, heads: int = 4, feat_drop: float = 0.11,
                 attn_drop: float = 0.15, negative_slope: float = 0.2, mask_rate: float = 0.7,
                 w_gen: float = 1.8, w_ce: float = 1.0, alpha: float = 1.0, radius: int = 2,
                 cls_hidden: int = 128, cls_drop: float = 0.059, checkpointing: bool = True) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"srmil: hidden {hidden} must be a multiple of heads {heads}")
        self.heads, self.head_dim, self.radius = heads, hidden // heads, radius
        self.mask_rate, self.w_gen, self.w_ce, self.alpha = mask_rate, w_gen, w_ce, alpha
        self.checkpointing = checkpointing
        self.reformer = nn.Linear(in_dim, in_dim)
        nn.init.xavier_uniform_(self.reformer.weight, gain=1.414)
        nn.init.zeros_(self.reformer.bias)
        hd = self.head_dim
        self.encoder = GAT([(in_dim, hd, heads), (hidden, hd, heads)], feat_drop, attn_drop, negative_slope,
                           last_plain=False)
        self.encoder_to_decoder = nn.Linear(hidden, hidden, bias=False)
        nn.init.xavier_normal_(self.encoder_to_decoder.weight, gain=1.414)
        self.decoder = GAT([(hidden, hd, heads), (hidden, in_dim, 1)], feat_drop, attn_drop, negative_slope,
                           last_plain=True)
        self.enc_mask_token = nn.Parameter(torch.randn(1, in_dim) * 0.01)
        self.dec_mask_token = nn.Parameter(torch.randn(1, hidden) * 0.01)
        self.super_token = nn.Parameter(torch.randn(1, in_dim) * 0.01)
        self.classifier = nn.Sequential(nn.Linear(hd, cls_hidden), nn.ReLU(), nn.Dropout(cls_drop),
                                        nn.Linear(cls_hidden, n_classes))

    def _run(self, fn, *args):
        """fn(*args), recomputed in backward instead of stored when training with checkpointing (the
        same dropout masks: the RNG state is replayed); keeps a 10,000 x 1024 bag under 2 GiB."""
        if self.checkpointing and self.training and torch.is_grad_enabled() and len(args[0]) > CHECKPOINT_MIN_TILES:
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def graph_logits(self, x: torch.Tensor, edges_sn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles x [N, D] + supernode over edges_sn -> (logits [C], tile->supernode attention [N])."""
        return self._run(self._graph_logits, x, edges_sn)

    def _reconstruct(self, x_m: torch.Tensor, mask: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Masked tiles -> encoder -> Linear -> re-mask with dec_mask_token -> decoder: x_hat [N, D]."""
        z, _ = self.encoder(self.reformer(x_m), edges)  # tile graph only (add_node_first = False)
        rep = self.encoder_to_decoder(z)
        rep = rep.index_put((mask,), self.dec_mask_token.expand(len(mask), -1))
        return self.decoder(rep, edges)[0]

    def _graph_logits(self, x: torch.Tensor, edges_sn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        z, alpha = self.encoder(self.reformer(torch.cat([x, self.super_token])), edges_sn)
        z = z.view(n + 1, self.heads, self.head_dim).mean(dim=1)  # heads averaged [N+1, 64]
        return self.classifier(z[-1]), alpha[-n:].mean(dim=1)

    def forward(self, x: torch.Tensor | Bag) -> MilOutput:
        if not isinstance(x, Bag) or (x.grid is None and x.graph is None):
            raise ValueError("srmil needs a Bag with a tile grid (or neighbour graph)")
        feats = x.features
        n = feats.shape[0]
        edges = x.edge_index(self.radius, self_loops=True)
        edges_sn = with_supernode(edges, n)
        logits, attn = self.graph_logits(feats, edges_sn)
        out = MilOutput(logits, attn)
        if self.training:
            mask = torch.randperm(n, device=feats.device)[: int(self.mask_rate * n)]
            x_m = feats.clone()
            x_m[mask] = self.enc_mask_token.to(x_m.dtype)
            x_hat = self._run(self._reconstruct, x_m, mask, edges)
            logits_m, _ = self.graph_logits(x_m, edges_sn)
            out.aux = {"logits_masked": logits_m, "x_rec": x_hat[mask], "x_init": feats[mask]}
        return out

    def loss(self, out: MilOutput, target: torch.Tensor) -> torch.Tensor:
        if "logits_masked" not in out.aux:  # evaluation pass: bag CE only
            return F.cross_entropy(out.logits[None], target.view(1))
        return srmil_loss(out.aux["logits_masked"], out.logits, out.aux["x_rec"], out.aux["x_init"], target,
                          self.w_gen, self.w_ce, self.alpha)
