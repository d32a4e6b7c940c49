"""Training input: transforms (CLIP-ReID's CNN recipe), image reading, the P x K sampler."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .records import Record

log = logging.getLogger(__name__)


class ImageReadError(OSError):
    pass


def read_image(path: str) -> Image.Image:
    """Open as RGB or fail with the path; no retry loop (a missing file will not appear later)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from None


def build_transforms(height: int, width: int, mean: Sequence[float], std: Sequence[float], train: bool,
                     flip_prob: float = 0.5, padding: int = 10, erasing_prob: float = 0.5):
    import torchvision.transforms as T

    size = (height, width)
    interp = T.InterpolationMode.BICUBIC
    if not train:  # CLIP-ReID's val transform: T.Resize's default (bilinear) interpolation
        return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(), T.Normalize(mean, std)])
    return T.Compose([
        T.Resize(size, interpolation=interp),
        T.RandomHorizontalFlip(p=flip_prob),
        T.Pad(padding),
        T.RandomCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
        T.RandomErasing(p=erasing_prob, value="random"),  # timm's 'pixel' mode: per-pixel normal noise
    ])


class ImageDataset(Dataset):
    def __init__(self, records: list[Record], transform=None):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        """``key`` is an index, or (index, seed) from SeededSampler: then the augmentation draws its
        randomness from that seed alone, whatever worker runs it and whether or not the run resumed."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        r = self.records[i]
        img = read_image(r.path)
        if self.transform is not None:
            if seed is None:
                img = self.transform(img)
            else:
                with seeded(seed):
                    img = self.transform(img)
        return img, r.pid, r.camid, r.clothes, i


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """The block draws from torch's CPU generator seeded with ``seed``; the caller's generator state is restored.

    The CPU generator alone: torch.manual_seed also seeds every accelerator backend, which on a CUDA build costs
    ~1 ms per image (a third of the CPU demo's input pipeline); same draws."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class PKSampler(Sampler[int]):
    """P identities x K images per batch (CLIP-ReID's RandomIdentitySampler), deterministic per epoch.

    With fewer than P identities it uses them all (a smaller batch) rather than yielding nothing.
    Under DDP, each global batch of P identities is split by identity across ranks, so the union over
    ranks is exactly the single-process batch. ``start_batch`` skips batches already trained (resume).
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % num_instances:
            raise ValueError(f"batch_size {batch_size} must be a multiple of num_instances {num_instances}")
        self.pids = np.asarray(pids)
        self.k = num_instances
        uniq = np.unique(self.pids)
        if len(uniq) == 0:
            raise ValueError("PKSampler: no training identities")
        self.p = min(batch_size // num_instances, len(uniq))
        if self.p < batch_size // num_instances:
            log.warning("only %d identities for P=%d: batches hold %d identities", len(uniq), batch_size // num_instances, self.p)
        if self.p % world_size:
            raise ValueError(f"P={self.p} identities per batch cannot be split over {world_size} processes")
        self.index_by_pid = {int(p): np.flatnonzero(self.pids == p) for p in uniq}
        self.seed, self.rank, self.world = seed, rank, world_size
        self.epoch = 0
        self.start_batch = 0
        self._batches = self._make_batches()

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self._batches = self._make_batches()

    def _make_batches(self) -> list[list[list[int]]]:
        """List of batches; each batch is a list of P per-identity chunks of K indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks: dict[int, list[list[int]]] = {}
        for pid, idxs in self.index_by_pid.items():
            idxs = rng.choice(idxs, size=self.k, replace=True) if len(idxs) < self.k else rng.permutation(idxs)
            n = len(idxs) // self.k
            chunks[pid] = [idxs[j * self.k:(j + 1) * self.k].tolist() for j in range(n)]
        avail = sorted(chunks)
        batches = []
        while len(avail) >= self.p:
            chosen = rng.choice(avail, size=self.p, replace=False)
            batches.append([chunks[int(pid)].pop(0) for pid in chosen])
            avail = [pid for pid in avail if chunks[pid]]
        return batches

    def num_batches(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[int]:
        per_rank = self.p // self.world
        for batch in self._batches[self.start_batch:]:
            for chunk in batch[self.rank * per_rank:(self.rank + 1) * per_rank]:
                yield from chunk

    def __len__(self) -> int:
        return (len(self._batches) - self.start_batch) * (self.p // self.world) * self.k

    @property
    def local_batch_size(self) -> int:
        return self.p // self.world * self.k


class SeededSampler(Sampler):
    """Wraps a PKSampler to yield (index, seed), seed = f(run seed, epoch, position in the global batch
    order), so a sample gets the same augmentation under DDP as in one process, and after a resume."""

    def __init__(self, sampler: PKSampler, seed: int):
        self.sampler = sampler
        self.seed = seed

    def __iter__(self):
        s = self.sampler
        lb = s.local_batch_size
        start = s.start_batch * lb
        for lpos, idx in enumerate(s, start):
            gpos = (lpos // lb) * lb * s.world + s.rank * lb + lpos % lb
            yield idx, int(np.random.SeedSequence([self.seed, s.epoch, gpos]).generate_state(1)[0])

    def __len__(self) -> int:
        return len(self.sampler)
