"""End-to-end training speed on an LTCC-shaped tree: where a run's time goes, CPU or GPU, one command.

    python benchmarks/train_e2e.py                   # CPU: RN50 256x128, batch 16, a small LTCC-shaped tree
    python benchmarks/train_e2e.py --device cuda     # GPU: batch 64, bf16, LTCC's own sizes (9,576 / 493 / 7,050)

The tree has LTCC's file naming (``LTCC_ReID/{train,query,test}/PID_CLOTHES_cCAM_IDX.png``) and random 128x64
pixels; weights are random (speed does not depend on them). Measured, each for the baseline (CLIP-ReID) and SCI:

- ``loader``: the stage-2 DataLoader alone (CLIP-ReID's training transforms, ``--workers`` processes), and
  with ``data.device_augment`` (images decoded once, the batch augmented on the device: the same pixels);
- ``trunk``: the bare image trunk's step (forward, backward, Adam) on a fixed batch, no heads or losses;
- ``step``: the engine's stage-2 step alone (``Stage2Task.step`` + the optimizer step) on a fixed batch, with CAL;
- ``stage 1`` / ``stage 2``: ``scireid train`` itself through the real loader (``metrics.jsonl``'s img/s):
  the stage-1 epoch (its feature pass is included in the run's time), stage-2 epoch 1 (no CAL) and epoch 2 (CAL),
  through the PIL loader and with ``data.device_augment``;
- peak memory: the GPU's allocator peak, or the process's peak RSS on CPU.

Writes a section of BENCHMARKS.md (``--no-write``: print only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_ltcc_tree(root: Path, train: int, query: int, gallery: int, ids: int = 77, seed: int = 0) -> Path:
    """LTCC's layout and names, random pixels. Train identities get 4 outfits and 6 cameras in turn."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "LTCC_ReID"
    k = 0
    for split, n, pid0 in (("train", train, 0), ("query", query, ids), ("test", gallery, ids)):
        (base / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pid = pid0 + i % ids
            name = f"{pid:03d}_{1 + (i // ids) % 4}_c{1 + (i + (split == 'query')) % 6}_{k:06d}.png"
            Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(base / split / name)
            k += 1
    return root


def peak_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loader_rate(cfg, ds, batches: int, device: str = "cpu") -> float:
    """Batches ready on ``device``: the PIL loader, or with ``data.device_augment`` the draws plus the batch
    augmented on the device from the decoded cache (its one-time decoding is not in the rate)."""
    from scireid.engine.distributed import DistContext
    from scireid.engine.tasks import Stage2Task
    from scireid.engine.trainer import model_spec
    from scireid.models.sci import SCIModel

    task = Stage2Task(SCIModel(model_spec(cfg, ds)), ds, cfg, DistContext(device=torch.device(device)))
    task.set_epoch(0, 0)
    it = iter(task.batches())
    next(it)  # worker start-up is not throughput
    _sync(device)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        imgs = next(it)[0].to(device, non_blocking=True)
        n += len(imgs)
    _sync(device)
    return n / (time.perf_counter() - t0)


def trunk_rate(cfg, ds, device: str, batch: int, steps: int) -> float:
    from scireid.engine.features import amp_dtype
    from scireid.engine.trainer import model_spec
    from scireid.models.sci import SCIModel

    model = SCIModel(model_spec(cfg, ds)).to(device)
    opt = torch.optim.Adam(model.visual.parameters(), lr=1e-5, fused=True)
    x = torch.randn(batch, 3, cfg.data.height, cfg.data.width, device=device)
    use_amp = device.startswith("cuda") and cfg.run.amp
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=amp_dtype(cfg.run.amp_dtype), enabled=use_amp):
            loss = model.visual.trunk(x)[1].float().mean()  # the layer-4 map: no attention pool, no heads
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def step_rate(variant: str, device: str, batch: int, steps: int) -> float:
    from train_step import measure
    return measure(variant, device, batch, steps, warmup=2, compile_=False)["img_per_s"]


def e2e(variant: str, tree: Path, device: str, batch: int, steps: int, workers: int, out: Path,
        extra: tuple[str, ...] = (), tag: str = "") -> dict:
    """``scireid train`` on the tree, ``steps`` stage-2 steps an epoch; img/s from the run's own metrics."""
    from scireid.config import load_config
    from scireid.engine.engine import read_metrics
    from scireid.engine.trainer import train

    run = out / f"e2e-{variant}{tag}"
    cfg = load_config("ltcc", [f"data.root={tree}", f"run.out={run}", f"run.device={device}", "model.weights=none",
                               f"stage2.batch_size={batch}", f"data.workers={workers}", "stage1.epochs=1",
                               "stage2.epochs=2", "stage2.cal_start_epoch=1", "stage2.eval_every=0",
                               f"run.max_steps_per_epoch={steps}", "run.tensorboard=false", *extra], variant=variant)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg, stage="all")
    rows = {(r["stage"], r["epoch"]): r for r in read_metrics(run / "metrics.jsonl")}
    return {f"stage1{tag}": rows[("stage1", 1)]["img_per_s"], f"stage2_no_cal{tag}": rows[("stage2", 1)]["img_per_s"],
            f"stage2_cal{tag}": rows[("stage2", 2)]["img_per_s"], f"run_s{tag}": time.perf_counter() - t0,
            f"peak_gb{tag}": peak_memory_gb(device)}


def e2e_fresh(variant: str, tree: Path, device: str, batch: int, steps: int, workers: int, out: Path,
              tag: str = "") -> dict:
    """``e2e`` in a fresh process: run after others in one process, SCI's first stage-2 epoch measured up to 40%
    slower on CPU (the allocator's state; peak RSS 5.5 against 3.8 GB), which is the process, not the method."""
    import subprocess
    cmd = [sys.executable, __file__, "--device", device, "--batch", str(batch), "--steps", str(steps), "--workers",
           str(workers), "--tree", str(tree), "--child", variant, tag or "-", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, help="stage-2 batch (default 64 on GPU, 16 on CPU)")
    ap.add_argument("--steps", type=int, help="stage-2 steps per epoch and for the step timings (GPU 60, CPU 4)")
    ap.add_argument("--workers", type=int, default=min(14, max(0, (os.cpu_count() or 1) - 2)))
    ap.add_argument("--tree", type=Path, help="an existing LTCC-shaped tree (default: generate one)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "TAG", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:  # one run in a process of its own (e2e_fresh)
        variant, tag, out = a.child
        if tag == "step":
            print(json.dumps({"step": step_rate(variant, a.device, a.batch, a.steps)}))
            return
        tag = "" if tag == "-" else tag
        extra = ("data.device_augment=true",) if tag == "_dev" else ()
        print(json.dumps(e2e(variant, a.tree, a.device, a.batch, a.steps, a.workers, Path(out), extra, tag)))
        return
    gpu = a.device.startswith("cuda")
    batch, steps = a.batch or (64 if gpu else 16), a.steps or (60 if gpu else 4)
    if gpu:
        torch.backends.cudnn.benchmark = True
    from scireid.config import load_config
    from scireid.data.source import load_dataset

    with tempfile.TemporaryDirectory(prefix="scireid_e2e_") as tmp:
        tmp = Path(tmp)
        sizes = (9576, 493, 7050) if gpu else (320, 40, 120)
        tree = a.tree or make_ltcc_tree(tmp / "tree", *sizes)
        res: dict[str, dict] = {}
        for variant in ("baseline", "full"):
            cfg = load_config("ltcc", [f"data.root={tree}", "model.weights=none", f"stage2.batch_size={batch}",
                                       f"data.workers={a.workers}", f"run.device={a.device}"], variant=variant)
            ds = load_dataset(cfg)
            r = e2e_fresh(variant, tree, a.device, batch, steps, a.workers, tmp, "step")
            if variant == "baseline":
                r["loader"] = loader_rate(cfg, ds, max(steps, 8))
                dev_cfg = load_config("ltcc", [f"data.root={tree}", "model.weights=none", f"stage2.batch_size={batch}",
                                               f"data.workers={a.workers}", "data.device_augment=true"], variant=variant)
                r["loader_dev"] = loader_rate(dev_cfg, ds, max(steps, 8), a.device)
                r["trunk"] = trunk_rate(cfg, ds, a.device, batch, steps)
            r |= e2e_fresh(variant, tree, a.device, batch, steps, a.workers, tmp)
            r |= e2e_fresh(variant, tree, a.device, batch, steps, a.workers, tmp, "_dev")
            res[variant] = r
            print(variant, json.dumps(r), flush=True)
    b, f = res["baseline"], res["full"]
    where = torch.cuda.get_device_name(0) if gpu else f"{os.cpu_count()} CPU cores ({platform.machine()})"
    dtype = "bf16 autocast" if gpu else "fp32"
    cmd = "python benchmarks/train_e2e.py" + (f" --device {a.device}" if gpu else "")
    lines = [f"## End-to-end training speed, {'GPU' if gpu else 'CPU'} ({date.today().isoformat()})", "",
             f"Machine: {where}; torch {torch.__version__}. Command: `{cmd}`. RN50 (random init) at 256x128, batch "
             f"{batch}, {dtype}, {a.workers} loader workers; an LTCC-shaped tree of {sizes[0]:,} / {sizes[1]:,} / "
             f"{sizes[2]:,} random 128x64 images; {steps} stage-2 steps per timed epoch. Images/s.", "",
             "| measurement | baseline | SCI | SCI over baseline (time) |", "|---|---|---|---|"]

    def row(name: str, key: str) -> None:
        if key in b and key in f:
            lines.append(f"| {name} | {b[key]:,.1f} | {f[key]:,.1f} | {100 * (b[key] / f[key] - 1):+.1f}% |")
        else:
            lines.append(f"| {name} | {b[key]:,.1f} | — | — |")
    row("loader alone (training transforms)", "loader")
    row("loader alone, `data.device_augment` (decoded once, augmented on the device)", "loader_dev")
    row("bare trunk step (forward, backward, Adam)", "trunk")
    row("engine step alone (stage 2, CAL on for SCI)", "step")
    row("stage 1, end to end (cached features)", "stage1")
    row("stage 2 epoch 1, end to end (no CAL)", "stage2_no_cal")
    row("stage 2 epoch 2, end to end (CAL in SCI)", "stage2_cal")
    row("stage 2 epoch 1, end to end, `data.device_augment`", "stage2_no_cal_dev")
    row("stage 2 epoch 2, end to end, `data.device_augment`", "stage2_cal_dev")
    mem = "GPU memory (allocator peak)" if gpu else "peak RSS of the run's own process"
    lines += [f"| {mem}, GB | {b['peak_gb']:.1f} | {f['peak_gb']:.1f} | |", ""]
    from eval_speed import publish
    publish(lines, not a.no_write)


if __name__ == "__main__":
    main()
