"""Ranking-metric speed and memory against two peers computed in the same process.

    python benchmarks/eval_speed.py            # Market and MSMT17 scales, writes BENCHMARKS.md section
    python benchmarks/eval_speed.py --only market

Peers (written here, with our AP definition so results can be compared exactly):
  loop:    a per-query loop in the style of Simple-CCReID's evaluator (argsort each row, filter)
  argsort: a vectorised evaluator on a full-row np.argsort (the approach of torchreid's Cython one)
Each scale runs in a fresh subprocess so its peak memory (max RSS) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def market_like(nq, ng, n_ids, n_distractors, dim, seed=0, noise=2.0):
    """Query/gallery ids, 6 cameras, 1-3 outfits per id, features = id centre + outfit + noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids + 1, dim)).astype(np.float32)
    outfits = rng.normal(size=(n_ids + 1, 3, dim)).astype(np.float32) * 0.6
    n_out = rng.integers(1, 4, n_ids + 1)
    q_pids = rng.integers(1, n_ids + 1, nq)
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, ng - n_distractors), np.zeros(n_distractors, int)])
    q_cams, g_cams = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    q_clo = rng.integers(0, 3, nq) % n_out[q_pids]
    g_clo = rng.integers(0, 3, ng) % n_out[g_pids]

    def feats(p, c):
        f = np.empty((len(p), dim), np.float32)
        for s in range(0, len(p), 8192):
            e = s + 8192
            f[s:e] = centres[p[s:e]] + outfits[p[s:e], c[s:e]] + noise * rng.normal(size=(len(p[s:e]), dim)).astype(np.float32)
        f[p == 0] = rng.normal(size=((p == 0).sum(), dim)).astype(np.float32) * 1.2
        return f
    return feats(q_pids, q_clo), feats(g_pids, g_clo), q_pids, g_pids, q_cams, g_cams, q_clo, g_clo


def masks_for(mode, qp, gp, qc, gc, qclo, gclo):
    from scireid.eval.metrics import match_masks
    return match_masks(np.atleast_1d(qp), gp, np.atleast_1d(qc), gc, np.atleast_1d(qclo), gclo, mode)


def peer_loop(dist, qp, gp, qc, gc, qclo, gclo, mode):
    """Simple-CCReID style: per query, argsort the row, drop junk, read the hits."""
    G = dist.shape[1]
    cmc = np.zeros(G)
    aps, inps, valid = [], [], 0
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        good, junk = masks_for(mode, qp[i], gp, qc[i], gc, qclo[i], gclo)
        good, junk = good[0][order], junk[0][order]
        hits = good[~junk]
        if not hits.any():
            continue
        valid += 1
        pos = np.flatnonzero(hits)
        aps.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1)))
        inps.append(len(pos) / (pos[-1] + 1))
        cmc[pos[0]:] += 1
    return {"cmc": cmc / valid, "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)), "num_valid": valid}


def peer_argsort(dist, qp, gp, qc, gc, qclo, gclo, mode):
    """torchreid style, vectorised: full-row stable argsort of the whole Q x G matrix."""
    idx = np.argsort(dist, axis=1, kind="stable")
    good, junk = masks_for(mode, qp, gp, qc, gc, qclo, gclo)
    good = np.take_along_axis(good, idx, 1)
    keep = ~np.take_along_axis(junk, idx, 1)
    rank = np.cumsum(keep, axis=1) - 1
    hit = good & keep
    n_good = hit.sum(1)
    v = n_good > 0
    cum_hits = np.cumsum(hit, axis=1)
    prec = np.where(hit, cum_hits / (rank + 1), 0.0)
    ap = prec.sum(1)[v] / n_good[v]
    first = np.where(hit.any(1), np.argmax(hit, 1), 0)
    first_rank = rank[np.arange(len(rank)), first][v]
    last = hit.shape[1] - 1 - np.argmax(hit[:, ::-1], 1)
    last_rank = rank[np.arange(len(rank)), last][v]
    G = dist.shape[1]
    cmc = np.cumsum(np.bincount(first_rank, minlength=G)[:G]) / v.sum()
    return {"cmc": cmc, "mAP": float(ap.mean()), "mINP": float((n_good[v] / (last_rank + 1)).mean()), "num_valid": int(v.sum())}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scale(scale: str, dim: int) -> dict:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    from scireid.eval.metrics import evaluate, evaluate_features

    if scale == "market":
        data = market_like(3368, 15913, 750, 6617, dim)
    else:
        data = market_like(11659, 82161, 3060, 0, dim, seed=1)
    qf, gf, *labels = data
    rss0 = peak_rss_mb()
    out = {"scale": scale, "queries": len(qf), "gallery": len(gf), "dim": dim}
    t = time.perf_counter()
    res = {m: evaluate_features(qf, gf, *labels, mode=m, chunk=512) for m in ("general", "cloth-changing")}
    out["ours_features_both_modes_s"] = time.perf_counter() - t
    for m in ("general", "cloth-changing"):
        t = time.perf_counter()
        evaluate_features(qf, gf, *labels, mode=m, chunk=512)
        out[f"ours_features_{m}_s"] = time.perf_counter() - t
    out["cc_over_general"] = out["ours_features_cloth-changing_s"] / out["ours_features_general_s"]
    out["peak_rss_mb_features_path"] = peak_rss_mb()
    out["rss_before_mb"] = rss0
    out["mAP"] = {m: res[m]["mAP"] for m in res}
    out["R-1"] = {m: float(res[m]["cmc"][0]) for m in res}
    if scale == "market":  # peers need the full matrix: only at this scale
        q = torch.nn.functional.normalize(torch.from_numpy(qf), dim=1)
        g = torch.nn.functional.normalize(torch.from_numpy(gf), dim=1)
        t = time.perf_counter()
        dist = (1 - q @ g.T).numpy()
        out["distmat_s"] = time.perf_counter() - t
        for m in ("general", "cloth-changing"):
            t = time.perf_counter()
            ours = evaluate(dist, *labels, mode=m)
            out[f"ours_distmat_{m}_s"] = time.perf_counter() - t
            t = time.perf_counter()
            a = peer_argsort(dist, *labels, m)
            out[f"peer_argsort_{m}_s"] = time.perf_counter() - t
            t = time.perf_counter()
            b = peer_loop(dist, *labels, m)
            out[f"peer_loop_{m}_s"] = time.perf_counter() - t
            same = all(np.array_equal(ours["cmc"], p["cmc"]) and abs(ours["mAP"] - p["mAP"]) < 1e-12 and
                       abs(ours["mINP"] - p["mINP"]) < 1e-12 and ours["num_valid"] == p["num_valid"] for p in (a, b))
            out[f"identical_{m}"] = bool(same)
        t = time.perf_counter()
        np.argsort(dist, axis=1)
        out["argsort_alone_s"] = time.perf_counter() - t
    return out


def torchreid_cython():
    """torchreid's Cython evaluator if it is importable here (pip install torchreid, built with Cython)."""
    try:
        from torchreid.metrics.rank_cylib.rank_cy import evaluate_cy  # type: ignore
        return evaluate_cy
    except Exception:
        return None


def run_sweep() -> dict:
    """Market scale, feature quality from near-perfect to random: evaluation time must not blow up."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    from scireid.eval.metrics import evaluate

    cy = torchreid_cython()
    rows = []
    warm = np.random.default_rng(9).random((512, 4096)).astype(np.float32)
    np.argsort(warm, axis=1), np.sort(warm, axis=1)  # first-call costs out of the first row
    for noise in (0.3, 2.0, 2.5, 2.8, 3.1, 3.5, 6.0, None):
        qf, gf, *labels = market_like(3368, 15913, 750, 6617, 256, noise=noise or 1.0)
        if noise is None:  # an untrained model: random features
            rng = np.random.default_rng(5)
            qf, gf = rng.normal(size=qf.shape).astype(np.float32), rng.normal(size=gf.shape).astype(np.float32)
        q = torch.nn.functional.normalize(torch.from_numpy(qf), dim=1)
        g = torch.nn.functional.normalize(torch.from_numpy(gf), dim=1)
        dist = (1 - q @ g.T).numpy()
        r = {"noise": noise if noise is not None else "random"}
        for path in ("auto", "partial", "counting"):
            times = []
            for _ in range(2):  # best of two: the first call of a row pays page faults
                t = time.perf_counter()
                res = evaluate(dist, *labels, mode="general", path=path)
                times.append(time.perf_counter() - t)
            r[f"{path}_s"] = min(times)
            r.setdefault("mAP", res["mAP"])
            r.setdefault("R-1", float(res["cmc"][0]))
            assert res["mAP"] == r["mAP"]
        t = time.perf_counter()
        np.argsort(dist, axis=1)
        r["full_argsort_s"] = time.perf_counter() - t
        if cy is not None:
            qp, gp, qc, gc = labels[:4]
            t = time.perf_counter()
            cmc, mAP = cy(dist.astype(np.float32), qp.astype(np.int64), gp.astype(np.int64), qc.astype(np.int64),
                          gc.astype(np.int64), 50, False, True)[:2]
            r["torchreid_cython_s"] = time.perf_counter() - t
            r["torchreid_mAP"] = float(mAP)
        rows.append(r)
        print(json.dumps(r), file=sys.stderr)
    return {"rows": rows, "cython": cy is not None}


def sweep_markdown(sw: dict, cmd: str) -> str:
    lines = [f"## Evaluation cost vs feature quality ({date.today().isoformat()})", "",
             f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), numpy {np.__version__}. "
             f"Command: `{cmd}`. Market scale (3,368 x 15,913), general mode, on the Q x G matrix; the features get "
             "noisier row by row, the last row is random (an untrained model). `auto` is what `evaluate` does: "
             "per query block it picks the partial sort (good features) or counting (poor features); the other two "
             "columns force one method. Results are identical across methods (asserted).", "",
             "| mAP | R-1 | scireid auto | partial only | counting only | one full-row argsort | torchreid Cython |",
             "|---|---|---|---|---|---|---|"]
    for r in sw["rows"]:
        cy = f"{r['torchreid_cython_s']:.2f} s" if "torchreid_cython_s" in r else "not built here"
        lines.append(f"| {100 * r['mAP']:.1f}% | {100 * r['R-1']:.1f}% | {r['auto_s']:.2f} s | {r['partial_s']:.2f} s | "
                     f"{r['counting_s']:.2f} s | {r['full_argsort_s']:.2f} s | {cy} |")
    worst = max(r["auto_s"] / r["full_argsort_s"] for r in sw["rows"])
    lines += ["", f"Worst case of `auto` relative to one full-row argsort of the same matrix: {worst:.2f}x."]
    if not sw["cython"]:
        lines.append("torchreid's Cython evaluator could not be imported on this machine, so it is not in the table: "
                     "the only torchreid on PyPI (0.2.5, `pip download torchreid`) ships no `rank_cy.pyx` to build, "
                     "and nothing else can be fetched here. The full-row argsort column is the cost floor such an "
                     "evaluator sorts through.")
    return "\n".join(lines) + "\n"


def write_markdown(results: list[dict], cmd: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [f"## Evaluation speed ({date.today().isoformat()})", "",
             f"Machine: {os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, numpy {np.__version__}. "
             f"Command: `{cmd}`. Features are synthetic with Market-like id/camera statistics (see the script); "
             "times are wall-clock seconds in one process.", ""]
    for r in results:
        lines.append(f"### {r['scale']} scale: {r['queries']} x {r['gallery']}, {r['dim']}-d features")
        lines.append("")
        lines.append("| what | general | cloth-changing |")
        lines.append("|---|---|---|")
        lines.append(f"| scireid `evaluate_features` (distances in query chunks + ranking) | "
                     f"{r['ours_features_general_s']:.2f} s | {r['ours_features_cloth-changing_s']:.2f} s |")
        if "ours_distmat_general_s" in r:
            lines.append(f"| scireid `evaluate` on the Q x G matrix | {r['ours_distmat_general_s']:.2f} s | "
                         f"{r['ours_distmat_cloth-changing_s']:.2f} s |")
            lines.append(f"| peer: vectorised full-row argsort | {r['peer_argsort_general_s']:.2f} s | "
                         f"{r['peer_argsort_cloth-changing_s']:.2f} s |")
            lines.append(f"| peer: per-query loop (Simple-CCReID style) | {r['peer_loop_general_s']:.2f} s | "
                         f"{r['peer_loop_cloth-changing_s']:.2f} s |")
            lines.append(f"| results identical to both peers | {r['identical_general']} | {r['identical_cloth-changing']} |")
        lines.append("")
        extra = f"; computing the Q x G matrix took {r['distmat_s']:.2f} s and np.argsort of it alone {r['argsort_alone_s']:.2f} s" \
            if "distmat_s" in r else ""
        lines.append(f"Cloth-changing / general time ratio: {r['cc_over_general']:.2f}. Peak RSS of the process "
                     f"{r['peak_rss_mb_features_path']:.0f} MB (of which {r['rss_before_mb']:.0f} MB held the features "
                     f"and Python before evaluating){extra}. mAP general {100 * r['mAP']['general']:.1f}, "
                     f"cloth-changing {100 * r['mAP']['cloth-changing']:.1f}.")
        lines.append("")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name: the project's machine differs between sessions, and so do its figures."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def publish(lines: list[str], write: bool) -> None:
    """Print a section (its first line is the title) and, with ``write``, put it into BENCHMARKS.md."""
    md = "\n".join(lines)
    print(md)
    if write:
        update_benchmarks_md(md, lines[0])


def update_benchmarks_md(section: str, title: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nNumbers from `benchmarks/`; each section names its machine, command and date.\n\n"
    start = text.find(title)
    if start >= 0:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section.rstrip() + "\n" + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["market", "msmt"])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sweep", action="store_true", help="only the feature-quality sweep at Market scale")
    a = ap.parse_args()
    if a.sweep:
        md = sweep_markdown(run_sweep(), "python benchmarks/eval_speed.py --sweep")
        print(md)
        update_benchmarks_md(md, "## Evaluation cost vs feature quality")
        return
    if a.child:
        print(json.dumps(run_scale(a.child, a.dim)))
        return
    results = []
    for scale in ([a.only] if a.only else ["market", "msmt"]):
        p = subprocess.run([sys.executable, __file__, "--child", scale, "--dim", str(a.dim)], capture_output=True,
                           text=True, check=True)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(r, indent=1))
        results.append(r)
    cmd = "python benchmarks/eval_speed.py" + (f" --only {a.only}" if a.only else "")
    md = write_markdown(results, cmd)
    print(md)
    if not a.only:
        update_benchmarks_md(md, "## Evaluation speed")


if __name__ == "__main__":
    main()
