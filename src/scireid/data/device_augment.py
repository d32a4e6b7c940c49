"""Training augmentation on the device, from images decoded once (``data.device_augment``, issue #26).

The PIL path decodes, resizes and augments every image on the CPU at every epoch. Here the resized images are
decoded once into a uint8 tensor on the training device; per image, the loader only replays the random draws
that torchvision's transforms would take from the image's seed (flip, crop offset, erasing box and noise), and
the batch is flipped, padded, cropped, normalised and erased on the device. The draws are torchvision's own
calls in torchvision's order, and the pixel arithmetic is the same IEEE operations, so the batch equals the
PIL path's bit for bit (tests/test_train_speed.py).
"""
from __future__ import annotations

import logging
import sys
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .loading import read_image, seeded
from .records import Record

log = logging.getLogger(__name__)


def _geometry(transform) -> tuple[dict, int, int, int]:
    """The train Compose's pieces, the crop's height and width, and the padding."""
    p = _parts(transform)
    return (p, *p["crop"].size, _padding(p["pad"]))


def _parts(transform):
    """The train Compose's pieces, by type: their settings are the config's, whatever the preset."""
    import torchvision.transforms as T

    kinds = {T.Resize: "resize", T.RandomHorizontalFlip: "flip", T.Pad: "pad", T.RandomCrop: "crop",
             T.Normalize: "normalize", T.RandomErasing: "erase"}
    out = {name: t for t in transform.transforms for kind, name in kinds.items() if type(t) is kind}
    missing = set(kinds.values()) - set(out)
    if missing:
        raise ValueError(f"device augmentation needs the training transform's {sorted(missing)}")
    return out


class _Decoded(Dataset):
    def __init__(self, records: list[Record], resize):
        self.records, self.resize = records, resize

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.resize(read_image(self.records[i].path)), dtype=np.uint8)).permute(2, 0, 1)


def decode_all(records: list[Record], transform, device: torch.device, workers: int = 0) -> torch.Tensor:
    """(N, 3, H, W) uint8 on ``device``: every image decoded and resized (bicubic) once, as the PIL path does."""
    loader = DataLoader(_Decoded(records, _parts(transform)["resize"]), batch_size=256, num_workers=workers)
    rows = [b.to(device) for b in tqdm(loader, desc="decoding train images", leave=False, disable=not sys.stderr.isatty())]
    cache = torch.cat(rows)
    log.info("device augmentation: %d train images decoded once, %.2f GB on %s", len(cache),
             cache.numel() / 2**30, device)
    return cache


class Draws(Dataset):
    """Per (index, seed): the random draws of the PIL path's transforms, not the image."""

    def __init__(self, records: list[Record], transform):
        self.records = records
        p, self.height, self.width, self.padding = _geometry(transform)
        self.flip, self.crop, self.erase = p["flip"], p["crop"], p["erase"]
        v = self.erase.value  # as RandomErasing.forward reads it: a string means per-pixel noise
        self.erase_value = None if isinstance(v, str) else [float(x) for x in np.atleast_1d(v)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        i, seed = key
        r = self.records[i]
        h, w, pad = self.height, self.width, self.padding
        with seeded(seed):  # ImageDataset's seeding, draw for draw
            flip = bool(torch.rand(1) < self.flip.p)
            # get_params reads only the shape: a meta tensor holds no pixels
            top, left, _, _ = self.crop.get_params(torch.empty(3, h + 2 * pad, w + 2 * pad, device="meta"), (h, w))
            box, noise = (0, 0, 0, 0), torch.zeros(0)
            if torch.rand(1) < self.erase.p:
                img = torch.empty(3, h, w, device="meta")
                ei, ej, eh, ew, v = self.erase.get_params(img, scale=self.erase.scale, ratio=self.erase.ratio,
                                                          value=self.erase_value)
                if v is not img:  # torchvision's fallback after ten misses returns the image itself: nothing erased
                    box, noise = (ei, ej, eh, ew), v.expand(3, eh, ew).reshape(-1).float()
        return (i, flip, top, left, box, noise), r.pid, r.camid, r.clothes, i


def collate_draws(items):
    draws, pids, cams, clothes, idx = zip(*items)
    i, flip, top, left, box, noise = zip(*draws)
    t = torch.tensor
    return ((t(i), t(flip), t(top), t(left), t(box, dtype=torch.long).reshape(-1, 4), torch.cat(noise)),
            t(pids), t(cams), t(clothes), t(idx))


def _padding(pad) -> int:
    p = pad.padding
    vals = {p} if isinstance(p, int) else set(p)
    if len(vals) != 1 or pad.fill != 0 or pad.padding_mode != "constant":
        raise ValueError(f"device augmentation supports an equal zero padding on all sides, not {pad!r}")
    return vals.pop()


class DeviceAugment:
    """Turns a batch of draws into the augmented float batch on the cache's device."""

    def __init__(self, cache: torch.Tensor, transform):
        p, self.height, self.width, self.padding = _geometry(transform)
        self.cache = cache
        dev = cache.device
        self.mean = torch.as_tensor(p["normalize"].mean, dtype=torch.float32, device=dev).view(-1, 1, 1)
        self.std = torch.as_tensor(p["normalize"].std, dtype=torch.float32, device=dev).view(-1, 1, 1)
        self.rows, self.cols = torch.arange(self.height, device=dev), torch.arange(self.width, device=dev)

    def __call__(self, draws) -> torch.Tensor:
        dev = self.cache.device
        idx, flip, top, left, box, noise = (t.to(dev, non_blocking=True) for t in draws)
        x = self.cache[idx]
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p))
        b = torch.arange(len(idx), device=dev)
        rows = (top[:, None] + self.rows)[:, None, :, None]
        cols = (left[:, None] + self.cols)[:, None, None, :]
        x = x[b[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None], rows, cols]
        x = x.to(torch.float32).div(255).sub_(self.mean).div_(self.std)  # ToTensor, then Normalize
        i, j, h, w = box.unbind(1)
        r, c = self.rows[None, :, None], self.cols[None, None, :]
        inside = ((r >= i[:, None, None]) & (r < (i + h)[:, None, None]) &
                  (c >= j[:, None, None]) & (c < (j + w)[:, None, None]))  # B, H, W; an empty box erases nothing
        # masked_scatter fills in (b, c, row, col) order: each image's noise, channel by channel, as erase() writes it
        return x.masked_scatter_(inside[:, None].expand_as(x), noise)


def device_batches(loader: DataLoader, augment: DeviceAugment) -> Iterator:
    """The loader's batches of draws as (images on the device, pids, cams, clothes, indices)."""
    for draws, pids, cams, clothes, idx in loader:
        yield augment(draws), pids, cams, clothes, idx


__all__ = ["Draws", "DeviceAugment", "collate_draws", "decode_all", "device_batches"]
