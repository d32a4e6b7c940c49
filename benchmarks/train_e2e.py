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
  stage 1's feature pass (timed on its own) and its second epoch, stage-2 epoch 2 (no CAL) and epoch 3 (CAL),
  through the PIL loader and with ``data.device_augment``; the first epochs hold the one-time costs;
- the whole LTCC schedule (60 + 120 epochs and the evaluations) projected from those rates;
- peak memory: the GPU's allocator peak, or the process's peak RSS on CPU.

``--compile MODE`` runs all of it with ``run.compile=true run.compile_mode=MODE``.

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


ARCH: str | None = None  # ``--arch``: another model.arch in every config (a tiny model checks this script quickly)


def arch_overrides() -> list[str]:
    return [f"model.arch={ARCH}"] if ARCH else []


def step_rate(variant: str, device: str, batch: int, steps: int, compile_mode: str | None = None) -> float:
    from train_step import measure
    return measure(variant, device, batch, steps, warmup=2 if compile_mode is None else 4,
                   compile_=compile_mode is not None, compile_mode=compile_mode or "default",
                   extra=tuple(arch_overrides()))["img_per_s"]


def e2e(variant: str, tree: Path, device: str, batch: int, steps: int, workers: int, out: Path,
        extra: tuple[str, ...] = (), tag: str = "") -> dict:
    """``scireid train`` on the tree, ``steps`` stage-2 steps an epoch; img/s from the run's own metrics."""
    import scireid.engine.trainer as trainer
    from scireid.config import load_config
    from scireid.engine.engine import read_metrics

    run = out / f"e2e-{variant}{tag}"
    feature_pass = trainer.stage1_features

    def timed_feature_pass(*a, **k):  # stage 1's one forward over the train images, outside its epochs' img/s
        t = time.perf_counter()
        r = feature_pass(*a, **k)
        _sync(device)
        timings["features_s"] = time.perf_counter() - t
        return r
    timings: dict[str, float] = {}
    trainer.stage1_features = timed_feature_pass
    cfg = load_config("ltcc", [f"data.root={tree}", f"run.out={run}", f"run.device={device}", "model.weights=none",
                               f"stage2.batch_size={batch}", f"data.workers={workers}", "stage1.epochs=2",
                               "stage2.epochs=3", "stage2.cal_start_epoch=2", "stage2.eval_every=0",
                               f"run.max_steps_per_epoch={steps}", "run.tensorboard=false", *arch_overrides(), *extra],
                      variant=variant)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train(cfg, stage="all")
    rows = {(r["stage"], r["epoch"]): r for r in read_metrics(run / "metrics.jsonl")}
    # the second epoch of each: the first holds the one-time costs (oneDNN's or cuDNN's set-up, torch.compile)
    return {f"stage1{tag}": rows[("stage1", 2)]["img_per_s"], f"stage2_no_cal{tag}": rows[("stage2", 2)]["img_per_s"],
            f"stage2_cal{tag}": rows[("stage2", 3)]["img_per_s"], f"run_s{tag}": time.perf_counter() - t0,
            f"features_s{tag}": timings["features_s"], f"peak_gb{tag}": peak_memory_gb(device)}


def ltcc_schedule_minutes(r: dict, tag: str, train_images: int) -> float:
    """LTCC's whole schedule from one run's rates: the stage-1 feature pass, stage 1's epochs, stage 2's epochs
    before CAL at the no-CAL rate and after it at the CAL rate, and every evaluation of query + gallery at the
    feature pass's forward rate. The preset's epochs and LTCC's real sizes (9,576 / 493 / 7,050)."""
    from scireid.config import load_config
    c = load_config("ltcc", [])
    n, n_eval = 9576, 493 + 7050
    fwd = train_images / r[f"features_s{tag}"]
    evals = c.stage2.epochs // c.stage2.eval_every if c.stage2.eval_every else 0
    cal_from = min(c.stage2.cal_start_epoch, c.stage2.epochs)
    s = (n / fwd + c.stage1.epochs * n / r[f"stage1{tag}"] + cal_from * n / r[f"stage2_no_cal{tag}"]
         + (c.stage2.epochs - cal_from) * n / r[f"stage2_cal{tag}"] + evals * n_eval / fwd)
    return s / 60


def e2e_fresh(variant: str, tree: Path, device: str, batch: int, steps: int, workers: int, out: Path,
              tag: str = "", compile_mode: str | None = None) -> dict:
    """``e2e`` in a fresh process: run after others in one process, SCI's first stage-2 epoch measured up to 40%
    slower on CPU (the allocator's state; peak RSS 5.5 against 3.8 GB), which is the process, not the method."""
    import subprocess
    cmd = [sys.executable, __file__, "--device", device, "--batch", str(batch), "--steps", str(steps), "--workers",
           str(workers), "--tree", str(tree), "--child", variant, tag or "-", str(out), *(["--arch", ARCH] if ARCH else [])]
    if compile_mode:
        cmd += ["--compile", compile_mode]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-3000:]}")
    if os.environ.get("TORCH_LOGS"):  # what torch.compile said (recompiles, graph breaks, skipped CUDA graphs)
        lines = [ln for ln in p.stderr.splitlines() if "torch/_" in ln or "cudagraph" in ln.lower()]
        print(f"[{variant} {tag or 'pil'}] " + "\n".join(lines[-40:]), file=sys.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, help="stage-2 batch (default 64 on GPU, 16 on CPU)")
    ap.add_argument("--steps", type=int, help="stage-2 steps per epoch and for the step timings (GPU 60, CPU 4)")
    ap.add_argument("--workers", type=int, default=min(14, max(0, (os.cpu_count() or 1) - 2)))
    ap.add_argument("--tree", type=Path, help="an existing LTCC-shaped tree (default: generate one)")
    ap.add_argument("--compile", metavar="MODE", help="run.compile=true with this run.compile_mode in every run and "
                    "step timed (default, reduce-overhead, ...): the compiled stage-1 text encoder and stage-2 trunk")
    ap.add_argument("--loaders", choices=("both", "pil", "dev"), default="both",
                    help="the end-to-end runs through the PIL loader, with data.device_augment, or both")
    ap.add_argument("--variants", default="baseline,full", help="comma-separated variants (default baseline,full)")
    ap.add_argument("--runs-only", action="store_true",
                    help="only the end-to-end runs and the projection: no loader, bare-trunk or step-alone timings")
    ap.add_argument("--arch", help="another model.arch (e.g. tiny-rn: checks the script in seconds); not for figures")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "TAG", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    global ARCH
    ARCH = a.arch
    if a.child:  # one run in a process of its own (e2e_fresh)
        variant, tag, out = a.child
        if tag == "step":
            print(json.dumps({"step": step_rate(variant, a.device, a.batch, a.steps, a.compile)}))
            return
        tag = "" if tag == "-" else tag
        extra = ("data.device_augment=true",) if tag == "_dev" else ()
        if a.compile:
            extra += ("run.compile=true", f"run.compile_mode={a.compile}")
        print(json.dumps(e2e(variant, a.tree, a.device, a.batch, a.steps, a.workers, Path(out), extra, tag)))
        return
    variants = [v for v in a.variants.split(",") if v]
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
        tags = {"both": ("", "_dev"), "pil": ("",), "dev": ("_dev",)}[a.loaders]
        for i, variant in enumerate(variants):
            cfg = load_config("ltcc", [f"data.root={tree}", "model.weights=none", f"stage2.batch_size={batch}",
                                       f"data.workers={a.workers}", f"run.device={a.device}", *arch_overrides()],
                              variant=variant)
            ds = load_dataset(cfg)
            r = {} if a.runs_only else e2e_fresh(variant, tree, a.device, batch, steps, a.workers, tmp, "step",
                                                 a.compile)
            if i == 0 and not a.runs_only:  # the loader and the bare trunk do not depend on the variant
                r["loader"] = loader_rate(cfg, ds, max(steps, 8))
                dev_cfg = load_config("ltcc", [f"data.root={tree}", "model.weights=none", f"stage2.batch_size={batch}",
                                               f"data.workers={a.workers}", "data.device_augment=true", *arch_overrides()],
                                      variant=variant)
                r["loader_dev"] = loader_rate(dev_cfg, ds, max(steps, 8), a.device)
                r["trunk"] = trunk_rate(cfg, ds, a.device, batch, steps)
            for tag in tags:
                r |= e2e_fresh(variant, tree, a.device, batch, steps, a.workers, tmp, tag, a.compile)
                r[f"fwd{tag}"] = sizes[0] / r[f"features_s{tag}"]
                r[f"ltcc_min{tag}"] = ltcc_schedule_minutes(r, tag, sizes[0])
            res[variant] = r
            print(variant, json.dumps(r), flush=True)
    from eval_speed import cpu_model, publish
    where = torch.cuda.get_device_name(0) if gpu else f"{os.cpu_count()} CPU cores ({cpu_model()}, {platform.machine()})"
    dtype = "bf16 autocast" if gpu else "fp32"
    cmd = ("python benchmarks/train_e2e.py" + (f" --device {a.device}" if gpu else "")
           + (f" --compile {a.compile}" if a.compile else "") + (f" --loaders {a.loaders}" if a.loaders != "both" else "")
           + (f" --variants {a.variants}" if a.variants != "baseline,full" else "")
           + (" --runs-only" if a.runs_only else "") + (f" --arch {a.arch}" if a.arch else ""))
    both = "baseline" in res and "full" in res
    names = {"baseline": "baseline", "full": "SCI"}
    lines = [f"## End-to-end training speed, {'GPU' if gpu else 'CPU'}, {where} ({date.today().isoformat()})", "",
             f"Machine: {where}; torch {torch.__version__}. Command: `{cmd}`. {a.arch or 'RN50'} (random init) at 256x128, batch "
             f"{batch}, {dtype}, {a.workers} loader workers; an LTCC-shaped tree of {sizes[0]:,} / {sizes[1]:,} / "
             f"{sizes[2]:,} random 128x64 images; {steps} stage-2 steps per timed epoch. Images/s.", "",
             "| measurement | " + " | ".join(names.get(v, v) for v in variants)
             + (" | SCI over baseline (time) |" if both else " |"),
             "|---|" + "---|" * (len(variants) + both)]

    def row(name: str, key: str, rate: bool = True, fmt: str = ",.1f", delta: bool = True) -> None:
        if not any(key in r for r in res.values()):
            return
        cells = [format(res[v][key], fmt) if key in res[v] else "—" for v in variants]
        if both:
            b, f = res["baseline"].get(key), res["full"].get(key)
            cells.append("" if not delta else "—" if b is None or f is None
                         else f"{100 * ((b / f if rate else f / b) - 1):+.1f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    row("loader alone (training transforms)", "loader")
    row("loader alone, `data.device_augment` (decoded once, augmented on the device)", "loader_dev")
    row("bare trunk step (forward, backward, Adam)", "trunk")
    row("engine step alone (stage 2, CAL on for SCI)", "step")
    for tag in tags:
        how = "" if tag == "" else ", `data.device_augment`"
        row(f"stage 1's feature pass (one forward of the train images){how}", f"fwd{tag}")
        row(f"stage 1 epoch 2, end to end (cached features){how}", f"stage1{tag}")
        row(f"stage 2 epoch 2, end to end (no CAL){how}", f"stage2_no_cal{tag}")
        row(f"stage 2 epoch 3, end to end (CAL in SCI){how}", f"stage2_cal{tag}")
    for tag in tags:
        name = "PIL loader" if tag == "" else "`data.device_augment`"
        row(f"whole LTCC schedule (60 + 120 epochs, 12 evaluations) projected, minutes, {name}", f"ltcc_min{tag}",
            rate=False)
    mem = "GPU memory (allocator peak)" if gpu else "peak RSS of the run's own process"
    for tag in tags:
        name = "PIL loader" if tag == "" else "`data.device_augment`"
        row(f"{mem}, {name}, GB", f"peak_gb{tag}", fmt=".1f", delta=False)
    lines.append("")
    publish(lines, not a.no_write)


if __name__ == "__main__":
    main()
