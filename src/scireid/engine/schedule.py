"""Per-epoch learning-rate schedules of CLIP-ReID, indexed as CLIP-ReID indexes them.

CLIP-ReID's loops run ``for epoch in range(1, epochs + 1)`` and step the scheduler at the start
of each epoch: stage 1 calls timm's ``CosineLRScheduler.step(epoch)`` and stage 2 calls
``WarmupMultiStepLR.step()`` (whose counter, 0 after construction, becomes the epoch number).
Both functions below therefore take the 1-indexed epoch ``t``.
"""
from __future__ import annotations

import math
from bisect import bisect_right


def cosine_with_warmup(t: int, base: float, epochs: int, warmup: int, warmup_lr: float, min_lr: float) -> float:
    """Stage 1 (timm CosineLRScheduler, t_initial=epochs, cycle_limit=1, no warm-up prefix) at epoch t."""
    if t < warmup:
        return warmup_lr + t * (base - warmup_lr) / warmup
    if t >= epochs:  # past the single cycle
        return min_lr
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t / epochs))


def warmup_multistep(t: int, warmup: int, warmup_factor: float, milestones: list[int], gamma: float) -> float:
    """Stage 2 factor (CLIP-ReID's WarmupMultiStepLR, linear) at epoch t: x gamma from the t-th epoch on."""
    factor = 1.0
    if t < warmup:
        alpha = t / warmup
        factor = warmup_factor * (1 - alpha) + alpha
    return factor * gamma ** bisect_right(sorted(milestones), t)
