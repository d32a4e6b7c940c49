"""Checks that need a GPU (issue #26), run by ``benchmarks/gpu_check.sh``; never needed by tests.

    python benchmarks/device_checks.py            # cuda

1. The stage-2 step (SCI, SIM and CAL on) and the stage-1 step make no host-device synchronisation: they run
   under ``torch.cuda.set_sync_debug_mode("error")``, which raises at the first one.
2. ``data.device_augment`` on the GPU gives the PIL path's batch: the largest absolute difference over 64
   augmented images (0 means bit for bit).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _sync_free(step) -> str:
    """Run ``step`` three times to warm up (cuDNN's algorithm search and the allocator may synchronise), then
    once under sync-debug mode "error"."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return "no synchronisation"
    except RuntimeError as e:
        return f"synchronised: {str(e).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def no_sync_steps(dev: torch.device) -> dict:
    from scireid.config import load_config
    from scireid.engine.distributed import DistContext
    from scireid.engine.engine import Engine
    from scireid.engine.tasks import Stage1Task, Stage2Task
    from scireid.engine.trainer import model_spec
    from scireid.models.sci import SCIModel
    from train_step import fake_dataset

    cfg = load_config("ltcc", ["stage2.batch_size=64", "model.weights=none", "run.device=cuda", "data.workers=0",
                               "run.tensorboard=false"])
    ctx, ds = DistContext(device=dev), fake_dataset()
    model = SCIModel(model_spec(cfg, ds)).to(dev)
    model.prototypes.normal_()
    task, engine = Stage2Task(model, ds, cfg, ctx), Engine(Path(tempfile.mkdtemp()), ctx, amp=True)
    epoch = cfg.stage2.cal_start_epoch  # SIM, the clothes classifier's update and CAL's loss all run
    task.set_epoch(epoch, 0)
    pids = torch.arange(16).repeat_interleave(4)
    batch = tuple(t.to(dev) for t in (torch.randn(64, 3, 256, 128), pids, torch.zeros(64, dtype=torch.long),
                                      pids * 4, torch.arange(64)))

    def stage2():
        engine._backward_step(task, task.step(batch, epoch)[0], None)
    out = {"stage2": _sync_free(stage2)}
    feats = torch.randn(len(ds.train), model.prototypes.shape[1])
    s1 = Stage1Task(model, feats, torch.tensor([r.pid for r in ds.train]), torch.tensor([r.clothes for r in ds.train]),
                    cfg, ctx)
    s1.set_epoch(0, 0)
    idx = next(iter(s1.batches()))

    def stage1():
        engine._backward_step(s1, s1.step(idx, 0)[0], None)
    out["stage1"] = _sync_free(stage1)
    return out


def device_augment_matches_pil(dev: torch.device) -> dict:
    from PIL import Image
    from torch.utils.data import DataLoader

    from scireid.data.device_augment import DeviceAugment, Draws, collate_draws, decode_all
    from scireid.data.loading import ImageDataset, build_transforms
    from scireid.data.records import Record

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    records = []
    for k in range(16):
        path = tmp / f"{k:03d}_01_c{k % 4 + 1}_{k:06d}.png"
        Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(path)
        records.append(Record(str(path), k // 2, k % 4, k))
    tf = build_transforms(256, 128, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], True, 0.5, 10, 0.5)
    keys = [(k % 16, 17 + 7919 * k) for k in range(64)]
    pil = torch.stack([ImageDataset(records, tf)[key][0] for key in keys])
    augment = DeviceAugment(decode_all(records, tf, dev), tf)
    loader = DataLoader(Draws(records, tf), batch_size=32, sampler=keys, collate_fn=collate_draws)
    gpu = torch.cat([augment(draws).cpu() for draws, *_ in loader])
    return {"max_abs_diff": float((gpu - pil).abs().max()), "bit_equal": bool(torch.equal(gpu, pil))}


def main() -> None:
    dev = torch.device("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name(0), "sync_free_steps": no_sync_steps(dev),
                      "device_augment_vs_pil": device_augment_matches_pil(dev)}, indent=1))


if __name__ == "__main__":
    main()
