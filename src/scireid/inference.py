"""``scireid.load``: a trained model that turns images into L2-normalised ReID features.

A checkpoint carries its model spec (class counts, image size, switches) and its normalisation,
so no training dataset or config file is needed to rebuild it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .data.loading import build_transforms, read_image
from .engine.checkpoint import load_weights, read_meta
from .engine.evaluation import resolve_checkpoint
from .engine.features import autocast
from .models.sci import ModelSpec, SCIModel


class Embedder:
    def __init__(self, model: SCIModel, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.model = model.eval()
        self.device = device
        self.transform = build_transforms(model.spec.height, model.spec.width, mean, std, train=False)

    @property
    def dim(self) -> int:
        return self.model.feat_dim

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image | str | Path], batch_size: int = 64) -> torch.Tensor:
        """One L2-normalised row per image (PIL images or file paths), on the CPU."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        rows = []
        for i in range(0, len(images), batch_size):
            chunk = [read_image(str(x)) if isinstance(x, (str, Path)) else x.convert("RGB")
                     for x in images[i:i + batch_size]]
            x = torch.stack([self.transform(im) for im in chunk]).to(self.device)
            with autocast(self.device):
                rows.append(self.model.embed_tensor(x).float().cpu())
        return torch.cat(rows) if rows else torch.zeros(0, self.dim)


def load(run_dir_or_checkpoint: str | Path, device: str | torch.device | None = None) -> Embedder:
    """Best checkpoint of a run directory (else its last), or a given ``.safetensors`` file."""
    from .errors import CheckpointError

    ckpt = resolve_checkpoint(run_dir_or_checkpoint)
    meta = read_meta(ckpt)
    if "spec" not in meta:
        raise CheckpointError(f"{ckpt}: not a scireid checkpoint (its metadata has no model spec); expected a run "
                              f"directory or a .safetensors written by scireid train")
    from .engine.distributed import resolve_device
    dev = resolve_device(device)
    from .models.sci import spec_from_meta
    model = SCIModel(spec_from_meta(meta, ckpt)).to(dev)
    load_weights(ckpt, model)
    cfg = meta.get("config", {}).get("data", {})
    mean, std = meta.get("pixel_mean") or cfg.get("pixel_mean"), meta.get("pixel_std") or cfg.get("pixel_std")
    if mean is None or std is None:
        raise CheckpointError(f"{ckpt}: a stage-1 checkpoint (no image normalisation recorded); load a stage-2 "
                              f"checkpoint (model_best, model_last or stage2/last) instead")
    return Embedder(model, mean, std, dev)
