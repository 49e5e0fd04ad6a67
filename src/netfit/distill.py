"""Knowledge-distillation losses shared by methods (plugged into the engine as extra losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(teacher || student) on temperature-softened logits, scaled by T^2 so gradients keep their size."""
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    q = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * t * t


class LogitDistiller:
    """Extra loss for ``engine.train``: ``weight * kd_loss(student, teacher(x))`` with a frozen teacher.

    Example:
        >>> distill = LogitDistiller(seed_model, weight=1.0)
        >>> engine.train(student, data, cfg, extra_losses=[distill])
    """

    def __init__(self, teacher: nn.Module, weight: float = 1.0, temperature: float = 4.0) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight = weight
        self.temperature = temperature

    def __call__(self, ctx, logits: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher.to(ctx.x.device)
        with torch.no_grad():
            target = teacher(ctx.x)
        return self.weight * kd_loss(logits, target, self.temperature)
