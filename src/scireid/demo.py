"""``scireid demo``: synthetic data, the CLIP-ReID baseline and SCI (and the ablation rows), a report.

Every run goes through the real two-stage engine and is cached in DIR/runs, so an interrupted
demo resumes where it stopped. The report says plainly whether SCI's differences exceed the
seed-to-seed spread, whichever way they go.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .config import load_config
from .durable import atomic_write_json, atomic_write_text

log = logging.getLogger("scireid")

from .analysis.demo_report import SETTINGS, VARIANT_ROWS, render_markdown
# The CPU recipe is the `synthetic` preset, the same for every variant; only the switches differ. The demo reports
# the last epoch from its own pass over the test and validation splits (with the per-query outcomes and feature
# measurements of the same features), so the trainer does not evaluate as well.
DEMO_OVERRIDES = ["run.tensorboard=false", "stage2.eval_every=0"]
# --quick: the same recipe and schedule (fewer variants, one seed, 80 identities)
QUICK_OVERRIDES: list[str] = []


def recipe_key(overrides: list[str] | tuple[str, ...]) -> str:
    """Cached runs are reused only for the same recipe: the preset and variant files, the overrides, the data."""
    import hashlib

    from .config import PRESET_DIR
    from .data.synthetic import GENERATOR_VERSION
    h = hashlib.sha256(f"{GENERATOR_VERSION}|{DEMO_OVERRIDES}|{QUICK_OVERRIDES}|{list(overrides)}".encode())
    for p in sorted([PRESET_DIR / "synthetic.yaml", *(PRESET_DIR / "variants").glob("*.yaml"),
                     *(PRESET_DIR / "backbones").glob("*.yaml")]):
        h.update(p.read_bytes())
    return h.hexdigest()[:8]


def _demo_config(variant: str, seed: int, data_root: Path, run: Path, overrides: list[str]):
    meta = json.loads((data_root / "synthetic.json").read_text())
    return load_config("synthetic", [f"data.root={data_root}", f"run.out={run}", f"run.seed={seed}",
                                     f"data.synth_ids={meta['ids']}", f"data.synth_seed={meta['seed']}",
                                     *DEMO_OVERRIDES, *overrides], variant=variant)


def _train_one(variant: str, seed: int, data_root: Path, runs: Path, overrides: list[str]) -> dict[str, Any]:
    from .engine.trainer import train

    run = runs / f"{variant}-seed{seed}"
    done = run / "demo_result.json"
    if done.exists():
        log.info("%s seed %d: cached in %s", variant, seed, run)
        return json.loads(done.read_text()) | {"cached": True}
    cfg = _demo_config(variant, seed, data_root, run, overrides)
    t0 = time.time()
    resume = (run / "config.yaml").exists()
    res = train(cfg, resume=resume)
    res["mechanism"] = measure_mechanism(run)
    res["last"] = res["mechanism"].pop("results", res.get("last"))  # the last epoch, from the measurement pass
    if "results_val" in res["mechanism"]:
        res["last_val"] = res["mechanism"].pop("results_val")
    res["seconds"] = time.time() - t0
    atomic_write_json(done, res)
    return res


def measure_mechanism(run: Path) -> dict[str, Any]:
    """Prompt decoding; SIM attention (SIM runs) and Grad-CAM shares on trait vs garment pixels."""
    from .analysis.common import load_run
    from .analysis.mechanism import measure_run

    return measure_run(load_run(run / "model_last.safetensors", device="cpu")) or {}  # the table is last-epoch


def zero_shot_row(data_root: Path, runs: Path, overrides: list[str]) -> dict[str, Any]:
    """The pretrained CLIP's image features with no ReID training, like CLIP-ReID's zero-shot rows."""
    from .analysis.mechanism import feature_measurements, test_time_features
    from .data.loading import build_transforms
    from .data.source import load_dataset
    from .engine.trainer import model_spec
    from .eval.protocols import per_query_outcomes, run_protocols
    from .models.sci import build_model

    done = runs / "zero-shot" / "demo_result.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    cfg = _demo_config("baseline", 0, data_root, done.parent, overrides)
    ds = load_dataset(cfg)
    model = build_model(model_spec(cfg, ds), cfg.model.weights)
    d = cfg.data
    tf = build_transforms(d.height, d.width, d.pixel_mean, d.pixel_std, train=False)
    f = test_time_features(model, ds.test, tf)
    res = {"last": run_protocols(ds, f["feat"]), "weights": cfg.model.weights,
           "mechanism": {"features": feature_measurements(model, ds.test, tf, feats=f),
                         "per_query": per_query_outcomes(ds, f["feat"])}}
    val = ds.validation()
    if val is not None:
        fv = test_time_features(model, val.test, tf)["feat"]
        res["last_val"] = run_protocols(val, fv)
        res["mechanism"]["per_query_val"] = per_query_outcomes(val, fv)
    res["seconds"] = time.time() - t0
    atomic_write_json(done, res)
    return res


def _curves(run: Path) -> list[dict[str, Any]]:
    from .engine.engine import read_metrics
    return read_metrics(run / "metrics.jsonl")


def _worker_init(threads: int, verbose: bool) -> None:
    """A run in its own process: its share of the cores, and our log lines on stderr."""
    import torch

    from .logs import setup_logging
    torch.set_num_threads(threads)
    setup_logging(False)
    if not verbose:
        logging.getLogger("scireid").setLevel(logging.WARNING)


def default_jobs() -> int:
    """Runs at once: one per 1-2 cores. A small CLIP on 64x32 inputs uses two threads poorly (and decodes its
    images single-threaded), so two single-threaded runs train faster than one run on two threads."""
    import os
    return max(1, min(2, (os.cpu_count() or 1)))


def eval_ids(ids: int, quick: bool = False) -> int:
    """Test and validation identities for ``ids`` (half of which train). The full demo takes 2.5 x ids (300 at 120:
    about 3,000 queries per split), enough for a 95% interval of about ±2 points on the paired SCI - baseline
    difference (power pilot in BENCHMARKS.md); the quick demo takes ids (one seed: a smoke run, not a verdict).
    The evaluation splits cost generation and evaluation time only, never training time."""
    return max(ids - ids // 2, ids if quick else -(-5 * ids // 2))


def demo_seeds(seed: int, quick: bool, n_seeds: int = 6) -> list[int]:
    """The training seeds of the baseline and SCI: one for --quick; else ``n_seeds`` (6 by default: the seed-to-seed
    spread of SCI - baseline is ~2.5 R-1 points, so 3 seeds gave a 95% interval of +-2.6, 6 gave +-2.0;
    BENCHMARKS.md "Demo power with six seeds")."""
    return [seed] if quick else list(range(seed, seed + n_seeds))


ABLATIONS = ("sse", "sim")


def demo_runs(seeds: list[int], quick: bool, ablation_seeds: int = 2) -> list[tuple[str, int]]:
    """(variant, seed) to train: the baseline and SCI at every seed; the ablation rows (+SSE, +SIM) at the first
    ``ablation_seeds`` of them. The verdict (SCI - baseline) needs the seeds; the ablation rows show a spread."""
    variants = ["baseline", "full"] if quick else ["baseline", "sse", "sim", "full"]
    return [(v, s) for s in seeds for v in variants if v not in ABLATIONS or s in seeds[:ablation_seeds]]


def run_demo(out: str | Path = "scireid_demo", quick: bool = False, seed: int = 0,
             overrides: list[str] | tuple[str, ...] = (), ids: int = 120, jobs: int = 0, test_ids: int | None = None,
             val_ids: int | None = None, n_seeds: int = 6, ablation_seeds: int = 2) -> dict[str, Any]:
    """``jobs``: runs trained at once, each in its own process with cores / jobs threads (0: ``default_jobs``).
    ``test_ids`` / ``val_ids``: evaluation identities (default ``eval_ids(ids)``). ``n_seeds``: seeds of the
    baseline and SCI; ``ablation_seeds``: of +SSE and +SIM (``demo_runs``)."""
    from .data.synthetic import ensure_synthetic

    from .engine.rundir import check_out_dir

    out = Path(out)
    check_out_dir(out, marker=("runs", "report.md"))
    (out / "runs").mkdir(parents=True, exist_ok=True)  # marks the folder as a demo's before anything else is written
    t_start = time.time()
    from .data.synthetic import GENERATOR_VERSION
    test_ids = eval_ids(ids, quick) if test_ids is None else test_ids
    val_ids = eval_ids(ids, quick) if val_ids is None else val_ids
    data_root = out / f"data-v{GENERATOR_VERSION}-ids{ids}-test{test_ids}-val{val_ids}-seed{seed}"
    log.info("[1/3] synthetic cloth-changing data (cached in %s)", data_root)
    ensure_synthetic(data_root, ids=ids, seed=seed, test_ids=test_ids, val_ids=val_ids)
    runs = out / "runs" / f"{'quick' if quick else 'full'}-{data_root.name[5:]}-{recipe_key(overrides)}"
    seeds = demo_seeds(seed, quick, n_seeds)
    todo = demo_runs(seeds, quick, ablation_seeds)
    variants = list(dict.fromkeys(v for v, _ in todo))
    n_proc = min(jobs or default_jobs(), len(todo))
    log.info("[2/3] training %d runs (%s) with the two-stage engine, %d at a time", len(todo),
             "; ".join(f"{v} seeds {[s for w, s in todo if w == v]}" for v in variants), n_proc)
    ov = (QUICK_OVERRIDES if quick else []) + list(overrides)
    zs = zero_shot_row(data_root, runs, ov)
    results: dict[str, dict[int, dict[str, Any]]] = {"zero-shot": {s: zs for s in seeds}}
    results.update({v: {} for v in variants})
    bar = tqdm(total=len(todo), desc="demo runs", unit="run", file=sys.stderr, disable=not sys.stderr.isatty())
    if n_proc <= 1:
        for v, s in todo:
            bar.set_postfix_str(f"{v} seed {s}")
            log.info("run %d/%d: %s seed %d", todo.index((v, s)) + 1, len(todo), v, s)
            results[v][s] = _train_one(v, s, data_root, runs, ov)
            bar.update(1)
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed
        threads = max(1, (os.cpu_count() or 1) // n_proc)
        verbose = not sys.stderr.isatty()  # a terminal shows the bar; a log file gets the runs' own lines
        with ProcessPoolExecutor(n_proc, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(threads, verbose)) as pool:
            # longest runs first (SCI, then the ablations, the baseline last), so the last minutes keep both workers busy
            cost = {"full": 0, "sim": 1, "sse": 2, "baseline": 3}
            ordered = sorted(todo, key=lambda vs: (cost.get(vs[0], 0), vs[1]))
            futures = {pool.submit(_train_one, v, s, data_root, runs, ov): (v, s) for v, s in ordered}
            for done, fut in enumerate(as_completed(futures), start=1):
                v, s = futures[fut]
                results[v][s] = fut.result()  # a failed run raises here, with its own message
                bar.update(1)
                log.info("run done (%d/%d): %s seed %d", done, len(todo), v, s)
    bar.close()
    results = {v: dict(sorted(rs.items())) for v, rs in results.items()}
    log.info("[3/3] report")
    report = build_report(out, runs, results, seeds, quick, time.time() - t_start, overrides)
    log.info("report: %s", out / "report.md")
    return report


def _stats(results: dict[int, dict[str, Any]], setting: str, metric: str, key: str = "last"
           ) -> tuple[float, float, list[float]]:
    vals = [r[key][setting][metric] for r in results.values()]
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"), vals


def build_report(out: Path, runs: Path, results: dict[str, dict[int, dict[str, Any]]], seeds: list[int], quick: bool,
                 seconds: float, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for v, per_seed in results.items():
        table[v] = {st: {m: dict(zip(("mean", "std", "values"), _stats(per_seed, st, m))) for m in ("R-1", "mAP")}
                    for st in SETTINGS}
    val_table: dict[str, Any] = {}
    for v, per_seed in results.items():
        if all("last_val" in r for r in per_seed.values()):
            val_table[v] = {st: {m: dict(zip(("mean", "std", "values"), _stats(per_seed, st, m, "last_val")))
                                 for m in ("R-1", "mAP")} for st in SETTINGS}
    verdicts = paired_differences(results, seeds)
    val_verdicts = paired_differences(results, seeds, "last_val") if val_table else []
    zs = results.get("zero-shot", {})
    zero_shot_features = None
    if zs:
        zf = (next(iter(zs.values())).get("mechanism") or {}).get("features")
        zero_shot_features = {k: v for k, v in zf.items() if not isinstance(v, dict)} if zf else None
        if zf:
            for k in ("outfit_probe", "clothes_nn"):
                zero_shot_features[k] = {kk: vv for kk, vv in zf[k].items() if kk != "per_image"}
    from .analysis.demo_claims import mechanism_claims, paired_intervals
    intervals = paired_intervals(results, seeds, "per_query") + paired_intervals(results, seeds, "per_query_val")
    claims = mechanism_claims(results, seeds)
    checks = component_checks(runs, results)
    curves_png = plot_curves(out, runs, results)
    from .analysis.mechanism import mechanism_figure
    mech_png = mechanism_figure(checks, out / "mechanism.png").name if checks else None
    timing = {f"{v}-seed{s}": r.get("seconds") for v, rs in results.items() for s, r in rs.items()}
    cached = sum(1 for v, rs in results.items() if v != "zero-shot" for r in rs.values() if r.get("cached"))
    cfg = load_config("synthetic", list(overrides))
    report = {"quick": quick, "seeds": seeds, "variant_seeds": {v: list(rs) for v, rs in results.items() if v != "zero-shot"},
              "arch": cfg.model.arch, "weights": cfg.model.weights,
              "input": f"{cfg.data.height}x{cfg.data.width}", "table": table, "val_table": val_table,
              "differences_vs_baseline": verdicts, "val_differences_vs_baseline": val_verdicts,
              "zero_shot_features": zero_shot_features, "component_checks": checks, "timings_s": timing,
              "paired_intervals": intervals, "claims": claims,
              "total_s": seconds, "cached_runs": cached, "curves": curves_png, "mechanism_figure": mech_png}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    return report


def paired_differences(results: dict[str, dict[int, dict[str, Any]]], seeds: list[int], key: str = "last"
                       ) -> list[dict[str, Any]]:
    """Each variant minus the baseline of the same seed (same data order), then mean ± std over seeds.

    A difference counts as beyond the spread when every seed's difference has the same sign and the
    mean exceeds the standard deviation of the paired differences; with one seed there is no spread.
    """
    base = results.get("baseline")
    out = []
    for v, per_seed in results.items():
        if v in ("baseline", "zero-shot") or base is None:
            continue
        for st in SETTINGS:
            for m in ("R-1", "mAP"):
                diffs = [per_seed[s][key][st][m] - base[s][key][st][m] for s in seeds
                         if s in per_seed and s in base and key in per_seed[s] and key in base[s]]
                if not diffs:
                    continue
                mean = float(np.mean(diffs))
                std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan")
                if len(diffs) < 2:
                    verdict = "single seed: no spread to compare against"
                elif abs(mean) > std and (min(diffs) > 0 or max(diffs) < 0):
                    verdict = f"beyond the spread of the paired differences (std {std:.1f}, every seed {'+' if mean > 0 else '-'})"
                else:
                    verdict = f"within the spread of the paired differences (std {std:.1f})"
                out.append({"variant": v, "setting": st, "metric": m, "diff": mean, "std": std, "per_seed": diffs,
                            "verdict": verdict})
    return out


def component_checks(runs: Path, results) -> dict[str, Any]:
    """Does each part train as intended? gamma leaves 0; CAL's clothes classifier is fought."""
    import math
    checks: dict[str, Any] = {}
    for v, rs in results.items():
        if v == "zero-shot":
            continue
        for s in rs:
            recs = [r for r in _curves(runs / f"{v}-seed{s}") if r["stage"] == "stage2"]
            c: dict[str, Any] = {}
            if recs and "gamma" in recs[-1]:
                c["gamma_final"] = recs[-1]["gamma"]
            clf = [r for r in recs if "clothes_acc" in r]
            cal = [r for r in recs if "cal" in r]
            if clf:
                before = [r for r in clf if "cal" not in r]
                c["clothes_acc_before_cal"] = before[-1]["clothes_acc"] if before else None
                c["clothes_acc_last"] = clf[-1]["clothes_acc"]
            if cal:
                c["clothes_acc_first_cal_epoch"] = cal[0]["clothes_acc"]
                c["cal_loss_last"] = cal[-1]["cal"]
            within = [r for r in clf if "clothes_acc_within" in r]
            if within:
                before = [r for r in within if "cal" not in r]
                c["within_acc_before_cal"] = before[-1]["clothes_acc_within"] if before else None
                c["within_acc_last"] = within[-1]["clothes_acc_within"]
                c["within_chance"] = within[-1]["clothes_within_chance"]
            s1 = [r for r in _curves(runs / f"{v}-seed{s}") if r["stage"] == "stage1"]
            if s1 and "S_id" in s1[-1]:
                c["S_id_first"], c["S_id_last"] = s1[0]["S_id"], s1[-1]["S_id"]
                c["S_clo_first"], c["S_clo_last"] = s1[0]["S_clo"], s1[-1]["S_clo"]
            if s1:
                cfg_bs = _stage1_batch(runs / f"{v}-seed{s}")
                c["stage1_i2t_last"], c["stage1_t2i_last"] = s1[-1]["i2t"], s1[-1]["t2i"]
                c["ln_batch"] = math.log(cfg_bs)
                c["stage1_i2t_over_ln_batch"] = s1[-1]["i2t"] / math.log(cfg_bs)
                c["stage1_t2i_over_ln_batch"] = s1[-1]["t2i"] / math.log(cfg_bs)
            from .analysis.mechanism import flatten
            c.update(flatten(rs[s].get("mechanism") or {}))
            checks[f"{v}-seed{s}"] = c
    return checks


def _stage1_batch(run: Path) -> int:
    import yaml
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return int(cfg["stage1"]["batch_size"])


def plot_curves(out: Path, runs: Path, results) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(24, 4))
    for v, rs in results.items():
        if v == "zero-shot":
            continue
        for i, s in enumerate(rs):
            recs = [r for r in _curves(runs / f"{v}-seed{s}") if r["stage"] == "stage2"]
            ep = [r["epoch"] for r in recs]
            lab = VARIANT_ROWS[v] if i == 0 else None
            color = {"baseline": "C0", "sse": "C1", "sim": "C2", "full": "C3"}[v]
            total = [r["id"] + r["tri"] + r["i2t"] + r.get("cal", 0.0) for r in recs]
            axes[0].plot(ep, total, color=color, label=lab, alpha=0.8)
            ev = [(r["epoch"], r["eval"]) for r in recs if "eval" in r] or (
                [(recs[-1]["epoch"], rs[s]["last"])] if recs and rs[s].get("last") else [])
            axes[1].plot([e for e, _ in ev], [x["general"]["R-1"] for _, x in ev], "o-", color=color, label=lab, alpha=0.8)
            axes[2].plot([e for e, _ in ev], [x["cloth-changing"]["R-1"] for _, x in ev], "o-", color=color, label=lab,
                         alpha=0.8)
            g = [(r["epoch"], abs(r["gamma"])) for r in recs if "gamma" in r]
            if g:
                axes[3].plot(*zip(*g), color=color, label=lab, alpha=0.8)
            c = [(r["epoch"], r["clothes_acc"]) for r in recs if "clothes_acc" in r]
            if c:
                axes[4].plot(*zip(*c), color=color, label=lab, alpha=0.8)
                on = [r["epoch"] for r in recs if "cal" in r]
                if on and i == 0:
                    axes[4].axvline(on[0] - 0.5, color=color, ls=":", lw=1)
    from .analysis.report import save_epoch_figure
    titles = ("stage-2 training loss", "general R-1 (%)", "cloth-changing R-1 (%)", "|gamma| (SIM gate)",
              "clothes-classifier accuracy (dotted: CAL starts)")
    return save_epoch_figure(fig, axes, titles, out / "curves.png", dpi=90).name
