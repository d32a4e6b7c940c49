"""Shared by the analysis commands: a run's model, config, dataset and cached test features."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, config_from_dict
from ..data.records import ReIDDataset
from ..models.sci import ModelSpec, SCIModel


@dataclass
class LoadedRun:
    path: Path
    ckpt: Path
    cfg: Config
    model: SCIModel
    device: torch.device
    _ds: ReIDDataset | None = None
    data_fingerprint: str | None = None

    @property
    def ds(self) -> ReIDDataset:
        if self._ds is None:
            from ..data.source import load_dataset
            self._ds = load_dataset(self.cfg, self.data_fingerprint)
        return self._ds

    def out_dir(self, name: str) -> Path:
        d = (self.path if self.path.is_dir() else self.path.parent) / "analysis" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def test_features(self) -> torch.Tensor:
        """Cached per checkpoint: every analysis of a run ranks with the same features."""
        from safetensors.torch import load_file, save

        from ..engine.distributed import DistContext
        from ..engine.evaluation import test_features
        from ..durable import atomic_write_bytes
        from ..deploy.backend import file_hash
        # keyed by the checkpoint's content (and the test split), not its name: a resumed run's new model_best
        # never meets the old one's features
        key = file_hash(self.ckpt)[:16]
        cache = self.out_dir("cache") / f"{self.ckpt.stem}-{key}-{len(self.ds.test)}_test_features.safetensors"
        if cache.exists():
            f = load_file(str(cache))["feats"]
            if len(f) == len(self.ds.test):
                return f
        f = test_features(self.model, self.ds, self.cfg, DistContext(device=self.device))
        # bytes written by our own code: save_file makes its own temporary file (in Rust, beside ours), which
        # outlived a kill at its rename (found by the strace fault sweep)
        atomic_write_bytes(cache, save({"feats": f.contiguous()}))
        return f


def load_run(path: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str | None = None) -> LoadedRun:
    from ..config import apply_overrides
    from ..engine.checkpoint import load_weights, read_meta
    from ..engine.evaluation import resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    if "config" not in meta or "spec" not in meta:
        from ..errors import CheckpointError
        raise CheckpointError(f"{ckpt}: not a scireid checkpoint (no config/spec in its metadata)")
    cfg = apply_overrides(config_from_dict(meta["config"]), list(overrides))
    from ..engine.distributed import resolve_device
    dev = resolve_device(device)
    from ..models.sci import spec_from_meta
    model = SCIModel(spec_from_meta(meta, ckpt)).to(dev).eval()
    load_weights(ckpt, model)
    from ..data.source import expected_fingerprint
    return LoadedRun(Path(path), ckpt, cfg, model, dev, data_fingerprint=expected_fingerprint(meta, cfg))


def protocol_arrays(ds: ReIDDataset, name: str):
    p = ds.protocol(name)
    pids = np.array([r.pid for r in ds.test])
    cams = np.array([r.camid for r in ds.test])
    clo = np.array([r.clothes for r in ds.test])
    return p, pids, cams, clo
