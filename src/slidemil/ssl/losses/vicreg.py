"""VICReg: variance-invariance-covariance regularisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views


def off_diagonal(m: Tensor) -> Tensor:
    """Flattened off-diagonal entries of a square matrix [D, D] -> [D*(D-1)]."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_loss(z1: Tensor, z2: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                eps: float = 1e-4) -> Tensor:
    """VICReg of expander outputs z1, z2 [B, D] -> scalar.

    sim_coeff * MSE(z1, z2) + std_coeff * (mean relu(1 - std(z1)) + mean relu(1 - std(z2))) / 2
    + cov_coeff * (sum offdiag(C1)^2 + sum offdiag(C2)^2) / D, std = sqrt(unbiased var + eps),
    C = centred z^T z / (B - 1). As facebookresearch/vicreg main_vicreg.py (one process).
    """
    check_views(z1, z2)
    b, d = z1.shape
    repr_loss = F.mse_loss(z1, z2)
    x, y = z1 - z1.mean(dim=0), z2 - z2.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + eps), torch.sqrt(y.var(dim=0) + eps)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x, cov_y = (x.T @ x) / (b - 1), (y.T @ y) / (b - 1)
    cov_loss = off_diagonal(cov_x).pow(2).sum().div(d) + off_diagonal(cov_y).pow(2).sum().div(d)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


@register_objective("vicreg")
class VICReg(Objective):
    """VICReg (Bardes, Ponce, LeCun, ICLR 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning").

    Inputs: z1, z2 float [B, D] expander outputs (not normalised), B >= 2. Output: scalar.
    Arithmetic: facebookresearch/vicreg `VICReg.forward` after the expander, lambda = mu = 25,
    nu = 1. Departures: the expander defaults to 2048-2048-2048 (authors: 8192 x 3) to fit small
    GPUs and the CPU demo (config `head`); no cross-rank gather (single process).
    """

    default_head = HeadSpec(hidden=2048, out=2048, layers=3, bn=True)

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0) -> None:
        super().__init__()
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff

    def forward(self, z1, z2, labels=None, t1=None, t2=None):
        return vicreg_loss(z1, z2, self.sim_coeff, self.std_coeff, self.cov_coeff)
