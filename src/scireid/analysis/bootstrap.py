"""Confidence intervals by resampling what varies: test identities and training seeds.

Queries of one person are not independent (they share the person's look), so identities are the
unit that is resampled; a seed's whole training run is the other unit. Two models evaluated on the
same queries are compared query by query (paired), which removes the queries' own difficulty from
the spread.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

N_BOOT = 2000


def _group_sums(values: Sequence[np.ndarray], groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per seed and identity: sum of the valid values; per identity: how many valid values."""
    groups = np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    vals = np.stack([np.asarray(v, dtype=np.float64) for v in values])  # S, N
    valid = np.all(np.isfinite(vals), axis=0)  # a query counts only where every seed has a value
    sums = np.stack([np.bincount(inv[valid], weights=v[valid], minlength=len(uniq)) for v in vals])
    counts = np.bincount(inv[valid], minlength=len(uniq)).astype(np.float64)
    return sums, counts


def bootstrap_mean(values: Sequence[np.ndarray], groups: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = 0.95, scale: float = 1.0) -> dict[str, Any]:
    """Mean over seeds of the per-seed mean of ``values`` (one array per seed, one value per item), with a
    percentile interval from resampling identities (``groups``, shared by every seed) and seeds.

    Pass per-query differences of two models (same seed, same queries) for a paired comparison.
    NaN marks an item with no value (a query without a valid match); it is left out for every seed.
    """
    sums, counts = _group_sums(values, groups)
    n_seeds, n_groups = sums.shape
    if counts.sum() == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "half_width": float("nan"),
                "items": 0, "groups": 0, "seeds": n_seeds}
    point = float((sums.sum(1) / counts.sum()).mean()) * scale
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        m = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)
        s = rng.integers(0, n_seeds, n_seeds)
        stats[b] = ((sums[s] @ m) / max(counts @ m, 1.0)).mean()
    a = (1.0 - level) / 2
    low, high = (float(x) * scale for x in np.quantile(stats, [a, 1 - a]))
    return {"mean": point, "low": low, "high": high, "half_width": (high - low) / 2, "items": int(counts.sum()),
            "groups": int((counts > 0).sum()), "seeds": n_seeds}


def excludes_zero(ci: dict[str, Any]) -> bool:
    return bool(np.isfinite(ci["low"]) and (ci["low"] > 0 or ci["high"] < 0))


def fmt_ci(ci: dict[str, Any] | None, digits: int = 1) -> str:
    """'+3.4 [+1.2, +5.6]' (a signed mean and its interval)."""
    if not ci or not np.isfinite(ci.get("mean", float("nan"))):
        return "—"
    return f"{ci['mean']:+.{digits}f} [{ci['low']:+.{digits}f}, {ci['high']:+.{digits}f}]"


__all__ = ["bootstrap_mean", "excludes_zero", "fmt_ci", "N_BOOT"]
