"""The structure of trained ReID features, which the search benchmark's synthetic galleries copy.

    python benchmarks/feature_structure.py RUN DATA      # e.g. a full demo's full-seed0 run and its data

Embeds every test image of DATA (a synthetic set) with RUN and measures: the norm of the mean feature;
the variance between identities, between one identity's outfits and within one outfit (unbiased
estimates of the nested model's components, not the raw spread of small groups' means); the
eigenvalue spectrum (top 400 eigenvalues, participation ratio, components for 95% of the variance,
the tail's power law). Writes benchmarks/feature_structure.json, which deploy_speed.py's "measured"
galleries copy.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def structure(f: np.ndarray, pids: np.ndarray, clothes: np.ndarray) -> dict:
    f = f.astype(np.float64)
    mu = f.mean(0)
    ids = np.unique(pids)
    # variance components of the nested model identity > outfit > image, corrected for the noise that
    # small groups leave in their means (method of moments; identity means weigh their outfits equally)
    groups = {i: [f[(pids == i) & (clothes == c)] for c in np.unique(clothes[pids == i])] for i in ids}
    n_img = sum(len(x) for gs in groups.values() for x in gs)
    n_out = sum(len(gs) for gs in groups.values())
    within = sum(np.sum((x - x.mean(0)) ** 2) for gs in groups.values() for x in gs) / (n_img - n_out)
    outfit_terms, between_terms, inv_k, noise_in_id = [], [], [], []
    for gs in groups.values():
        means = np.stack([x.mean(0) for x in gs])
        m_id, k = means.mean(0), len(gs)
        between_terms.append(np.sum((m_id - mu) ** 2))
        inv_k.append(1 / k)
        noise_in_id.append(np.mean([within / len(x) for x in gs]) / k)
        if k > 1:
            outfit_terms += [np.sum((m - m_id) ** 2) / (1 - 1 / k) - within / len(x) for m, x in zip(means, gs)]
    outfit = float(np.mean(outfit_terms))
    between = (np.mean(between_terms) * len(ids) / (len(ids) - 1) - outfit * np.mean(inv_k) - np.mean(noise_in_id))
    ev = np.linalg.eigvalsh(np.cov((f - mu).T))[::-1]
    ev = np.clip(ev[:min(400, len(f) - 1, f.shape[1])], 1e-12, None)
    tail = np.arange(len(ev) // 4, len(ev))  # the tail's power law, to extend the spectrum to more dimensions
    tail_alpha = -np.polyfit(np.log(tail + 1.0), np.log(ev[tail]), 1)[0]
    return {"images": len(f), "identities": len(ids), "outfits": n_out, "mean_norm": float(np.linalg.norm(mu)),
            "between": float(between), "outfit": outfit, "within": float(within),
            "participation_ratio": participation_ratio(ev), "dims_95": dims_95(ev),
            "tail_alpha": float(tail_alpha), "spectrum": (ev / ev.sum()).tolist()}


def participation_ratio(ev: np.ndarray) -> float:
    """The effective number of dimensions: (sum of eigenvalues)^2 / sum of their squares."""
    return float(ev.sum() ** 2 / (ev ** 2).sum())


def dims_95(ev: np.ndarray) -> int:
    return int(np.searchsorted(np.cumsum(ev) / ev.sum(), 0.95)) + 1


def main() -> None:
    import json
    from datetime import date

    import scireid
    from scireid.data.datasets import build_dataset
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "feature_structure.json"))
    a = ap.parse_args()
    ds = build_dataset("synthetic", a.data)
    f = scireid.load(a.run).embed([r.path for r in ds.test], batch_size=128).numpy()
    s = structure(f, np.array([r.pid for r in ds.test]), np.array([r.clothes for r in ds.test]))
    s = {"command": f"python benchmarks/feature_structure.py {a.run} {a.data}", "date": date.today().isoformat(),
         "dim": int(f.shape[1])} | s
    Path(a.out).write_text(json.dumps(s, indent=1) + "\n")
    for k, v in s.items():
        if k != "spectrum":
            print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
