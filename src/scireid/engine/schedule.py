"""Per-epoch learning-rate schedules of CLIP-ReID's CNN recipe."""
from __future__ import annotations

import math
from bisect import bisect_right


def cosine_with_warmup(epoch: int, base: float, epochs: int, warmup: int, warmup_lr: float, min_lr: float) -> float:
    """Stage 1 (timm CosineLRScheduler, t in epochs): linear warm-up from warmup_lr, then cosine to min_lr."""
    if epoch < warmup:
        return warmup_lr + epoch * (base - warmup_lr) / warmup
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * epoch / epochs))


def warmup_multistep(epoch: int, warmup: int, warmup_factor: float, milestones: list[int], gamma: float) -> float:
    """Stage 2 factor (CLIP-ReID's WarmupMultiStepLR): linear warm-up from warmup_factor, x gamma at milestones."""
    factor = 1.0
    if epoch < warmup:
        alpha = epoch / warmup
        factor = warmup_factor * (1 - alpha) + alpha
    return factor * gamma ** bisect_right(sorted(milestones), epoch)
