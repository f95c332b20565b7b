"""DINO-style self-distillation with a centred, sharpened EMA teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views


def dino_loss(s1: Tensor, s2: Tensor, t1: Tensor, t2: Tensor, center: Tensor, student_temp: float = 0.1,
              teacher_temp: float = 0.04) -> Tensor:
    """DINO cross-entropy of student logits s1, s2 [B, K] against teacher logits t1, t2 [B, K] -> scalar.

    q = softmax((t - center) / teacher_temp) (detached), loss = mean over the two cross-view
    terms (q1 vs s2, q2 vs s1) of mean_b sum_k -q log softmax(s / student_temp); center [K] or [1, K].
    Two global crops, no multi-crop: as facebookresearch/dino `DINOLoss.forward` with ncrops = 2.
    """
    check_views(s1, s2)
    check_views(t1, t2)
    q = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in (t1, t2)]
    logp = [F.log_softmax(s / student_temp, dim=-1) for s in (s1, s2)]
    terms = [torch.sum(-q[0] * logp[1], dim=-1).mean(), torch.sum(-q[1] * logp[0], dim=-1).mean()]
    return (terms[0] + terms[1]) / 2


@register_objective("dino")
class DINO(Objective):
    """DINO-style (Caron et al., ICCV 2021, "Emerging Properties in Self-Supervised Vision
    Transformers"): the student matches the centred, sharpened output of an EMA teacher.

    forward(s1, s2, t1=..., t2=...): student and teacher head outputs [B, K]. Output: scalar.
    The centre (a buffer [1, K], momentum 0.9) is an explicit argument of `dino_loss`; the module
    passes its buffer and `after_step` updates it from the teacher outputs. Departures: two
    global crops only (no multi-crop), fixed teacher temperature 0.04 (no warm-up), head
    MLP 2048 -> 4096 prototypes without the weight-normalised last layer (paper: 65536).
    """

    teacher = True
    keeps_teacher = True  # DINO evaluates the teacher
    default_head = HeadSpec(hidden=2048, out=4096, layers=3)

    def __init__(self, out_dim: int = 4096, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, z1, z2, labels=None, t1=None, t2=None):
        if t1 is None or t2 is None:
            raise ValueError("dino needs the teacher's outputs t1, t2")
        return dino_loss(z1, z2, t1, t2, self.center, self.student_temp, self.teacher_temp)

    @torch.no_grad()
    def after_step(self, t1, t2):
        batch_center = torch.cat([t1, t2]).mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
