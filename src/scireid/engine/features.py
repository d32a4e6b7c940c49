"""Feature extraction in dataset order, sharded over ranks and gathered."""
from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data.loading import ImageDataset
from .distributed import DistContext, gather_rows


def amp_dtype(name: str = "bf16") -> torch.dtype:
    """bf16 where the GPU supports it (else fp16); ``fp16`` always fp16 (CLIP-ReID's regime, with a GradScaler)."""
    if name == "fp16" or not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool = True, dtype: str = "bf16"):
    """Mixed precision on GPU (see ``amp_dtype``); CPU runs in fp32."""
    if device.type != "cuda" or not enabled:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=amp_dtype(dtype))


@torch.no_grad()
def extract(fn, records, transform, ctx: DistContext, batch_size: int = 128, workers: int = 0, flip: bool = False,
            amp: bool = True, desc: str = "features") -> torch.Tensor:
    """``fn(images) -> (B, D)`` over ``records``; rows in record order on every rank."""
    n = len(records)
    per = (n + ctx.world - 1) // ctx.world
    lo, hi = min(ctx.rank * per, n), min((ctx.rank + 1) * per, n)
    ds = Subset(ImageDataset(records, transform), range(lo, hi))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=ctx.device.type == "cuda")
    rows = []
    bar = tqdm(loader, desc=desc, leave=False, disable=not (ctx.is_main and sys.stderr.isatty()))
    for imgs, *_ in bar:
        imgs = imgs.to(ctx.device, non_blocking=True)
        with autocast(ctx.device, amp):
            f = fn(imgs).float()
            if flip:
                f = f + fn(torch.flip(imgs, dims=[3])).float()
        rows.append(f)
    dim = rows[0].shape[1] if rows else _probe_dim(fn, transform, records, ctx)
    local = torch.cat(rows) if rows else torch.zeros(0, dim, device=ctx.device)
    if ctx.enabled:  # pad to equal blocks for all_gather, then cut back to n rows
        pad = torch.zeros(per - local.shape[0], dim, device=local.device)
        local = gather_rows(torch.cat([local, pad]), ctx)
        keep = torch.cat([torch.arange(r * per, r * per + max(0, min(per, n - r * per))) for r in range(ctx.world)])
        local = local[keep]
    return local.cpu()


def _probe_dim(fn, transform, records, ctx) -> int:
    img = ImageDataset(records[:1], transform)[0][0][None].to(ctx.device)
    return fn(img).shape[1]
