"""Knowledge-distillation losses shared by methods (plugged into the engine as extra losses)."""

from __future__ import annotations

import copy
import hashlib

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(teacher || student) on temperature-softened logits, scaled by T^2 so gradients keep their size."""
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    q = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * t * t


class CachedTeacher:
    """A frozen teacher's logits, remembered per training input when the step knows the batch's ids
    (``StepContext.ids``: the sample, and on augmented data the version drawn), so an input costs one teacher
    pass per run instead of one per epoch (with random shifts, once per shift drawn: on 28x28 images 49
    versions). In eval mode a sample's logits do not depend on the rest of its batch.

    Example:
        >>> teacher = CachedTeacher(seed_model)
        >>> target = teacher(ctx.x, ctx.ids)  # ids None: computed every time
    """

    MAX_VALUES = 2**26  # logits remembered at most (256 MB in float32); larger splits are recomputed every time

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._logits: torch.Tensor | None = None
        self._known: torch.Tensor | None = None
        self._channels_last: nn.Module | None = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, ids: torch.Tensor | None = None, channels_last: bool = False) -> torch.Tensor:
        """The teacher's logits of ``x`` (``ids``: see the class); ``channels_last``: the student trains in that
        layout (``StepContext.channels_last``), and so does a copy of the teacher (a MobileNetV2's forward on
        CPU is a third faster in it); the model given keeps its layout (saving weights needs contiguous ones)."""
        teacher = self._channels_last_copy() if channels_last else self.teacher
        teacher = teacher.to(x.device)
        if ids is None:
            return teacher(x)
        ids = ids.to(x.device)
        if self._known is not None:
            self._logits, self._known = self._logits.to(x.device), self._known.to(x.device)
        known = torch.zeros_like(ids, dtype=torch.bool)
        if self._known is not None:
            inside = ids < len(self._known)
            known[inside] = self._known[ids[inside]]
        if bool(known.all()):
            return self._logits[ids]
        fresh = teacher(x[~known])
        if not self._remember(ids[~known], fresh):
            return teacher(x) if bool(known.any()) else fresh
        return self._logits[ids]

    def _channels_last_copy(self) -> nn.Module:
        if self._channels_last is None:
            self._channels_last = copy.deepcopy(self.teacher).to(memory_format=torch.channels_last)
        return self._channels_last

    def _remember(self, ids: torch.Tensor, logits: torch.Tensor) -> bool:
        """Store ``logits`` of samples ``ids``, growing the table to the largest id; False when it would be too
        large (then nothing is remembered)."""
        size = int(ids.max()) + 1
        if self._logits is None or len(self._logits) < size:
            if size * logits.shape[1] > self.MAX_VALUES:
                return False
            table, known = (
                logits.new_zeros(size, logits.shape[1]),
                torch.zeros(size, dtype=torch.bool, device=ids.device),
            )
            if self._logits is not None:
                table[: len(self._logits)], known[: len(self._known)] = self._logits, self._known
            self._logits, self._known = table, known
        self._logits[ids] = logits.to(self._logits.dtype)
        self._known[ids] = True
        return True


class LogitDistiller:
    """Extra loss for ``engine.train``: ``weight * kd_loss(student, teacher(x))`` with a frozen teacher; give
    several trainings one ``CachedTeacher`` of the same teacher and each sample's logits are computed once.

    Example:
        >>> distill = LogitDistiller(seed_model, weight=1.0)
        >>> engine.train(student, data, cfg, extra_losses=[distill])
    """

    def __init__(self, teacher: nn.Module | CachedTeacher, weight: float = 1.0, temperature: float = 4.0) -> None:
        self.teacher = teacher if isinstance(teacher, CachedTeacher) else CachedTeacher(teacher)
        self.weight = weight
        self.temperature = temperature

    def __call__(self, ctx, logits: torch.Tensor) -> torch.Tensor:
        return self.weight * kd_loss(logits, self.teacher(ctx.x, ctx.ids, ctx.channels_last), self.temperature)

    def signature(self) -> str:
        """The loss as a checkpoint records it: weight, temperature and the teacher's exact weights (a digest),
        so a training resumed with another teacher is refused instead of mixing two teachers' lessons."""
        return f"kd(weight={self.weight:g}, T={self.temperature:g}, teacher={weights_digest(self.teacher.teacher)})"


def weights_digest(model: nn.Module) -> str:
    """A short SHA-256 of a module's state (names, shapes, dtypes and bytes of every parameter and buffer)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
