"""Run every evaluation protocol of a dataset on test features and print the paper's table."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..data.records import ReIDDataset
from .metrics import _evaluate_blocks, cosine_distance_blocks, summary

COLUMNS = ("R-1", "R-5", "R-10", "R-20", "mAP", "mINP")


def run_protocols(ds: ReIDDataset, feats, rerank: bool = False, chunk: int = 1024) -> dict[str, dict[str, Any]]:
    """``feats`` has one row per ``ds.test`` record. Returns {protocol: {R-1.., mAP, mINP, num_valid}}."""
    feats = np.asarray(feats.detach().cpu() if hasattr(feats, "detach") else feats, dtype=np.float32)
    if len(feats) != len(ds.test):
        raise ValueError(f"got {len(feats)} feature rows for {len(ds.test)} test images of {ds.name}")
    pids = np.array([r.pid for r in ds.test])
    cams = np.array([r.camid for r in ds.test])
    clo = np.array([r.clothes for r in ds.test])
    results: dict[str, dict[str, Any]] = {}
    for p in ds.protocols:
        galleries = [p.gallery[t] for t in p.gallery_trials] if p.gallery_trials else [p.gallery]
        rows = []
        for g in galleries:
            q = p.query
            if rerank:
                from .rerank import rerank_blocks
                blocks = rerank_blocks(feats[q], feats[g], chunk=chunk)
            else:
                blocks = cosine_distance_blocks(feats[q], feats[g], chunk)
            res = _evaluate_blocks(blocks, pids[q], pids[g], cams[q], cams[g], clo[q], clo[g], p.mode)
            rows.append(summary(res))
        out = {k: float(np.mean([r[k] for r in rows])) for k in COLUMNS}
        out["num_valid"] = int(rows[0]["num_valid"])
        out["num_query"] = int(len(p.query))
        out["mode"] = p.mode
        if len(rows) > 1:
            out["trials"] = len(rows)
        results[p.name] = out
    return results


def per_query_outcomes(ds: ReIDDataset, feats, chunk: int = 1024) -> dict[str, dict[str, list]]:
    """Per protocol (those without seeded gallery trials): each query's identity, R-1 hit and AP (None where
    the query has no valid match), for paired comparisons of two models on the same queries."""
    from .metrics import per_query_metrics
    feats = np.asarray(feats.detach().cpu() if hasattr(feats, "detach") else feats, dtype=np.float32)
    pids = np.array([r.pid for r in ds.test])
    cams = np.array([r.camid for r in ds.test])
    clo = np.array([r.clothes for r in ds.test])
    out: dict[str, dict[str, list]] = {}
    for p in ds.protocols:
        if p.gallery_trials:
            continue
        q, g = p.query, p.gallery
        m = per_query_metrics(feats[q], feats[g], pids[q], pids[g], cams[q], cams[g], clo[q], clo[g], p.mode, chunk)
        out[p.name] = {"pid": pids[q].tolist(),
                       **{k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in m.items()}}
    return out


def format_table(results: dict[str, dict[str, Any]], title: str = "") -> str:
    head = f"{'protocol':<16}" + "".join(f"{c:>8}" for c in COLUMNS) + f"{'valid q':>9}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<16}" + "".join(f"{r[c]:8.1f}" for c in COLUMNS) + f"{r['num_valid']:>9d}")
    return "\n".join(lines)


def primary_metric(results: dict[str, dict[str, Any]]) -> tuple[str, float]:
    """Model selection: cloth-changing R-1 where the dataset has it, else the first protocol's R-1."""
    for name in ("cloth-changing", "cams34"):
        if name in results:
            return name, results[name]["R-1"]
    name = next(iter(results))
    return name, results[name]["R-1"]
