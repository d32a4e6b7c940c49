"""The demo's statistics: SCI against the baseline with intervals, and each of the paper's mechanism claims
as a row of measurements with its spread over seeds.

Inputs are the demo's per-run results: ``results[variant][seed]["mechanism"]`` as ``measure_run`` (and the
zero-shot row) write it: per-query outcomes on the test and validation splits, the clothes-information
measurements per image, SIM's attention per image, prompt decoding. Every interval is a 95% percentile
bootstrap over test identities and seeds (``bootstrap.bootstrap_mean``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .bootstrap import bootstrap_mean, excludes_zero

SETTINGS = ("general", "cloth-changing")
METRICS = {"R-1": "r1", "mAP": "ap"}
TARGET_HALF_WIDTH = 2.0  # points: the demo's power target for SCI - baseline


def _arr(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _mech(results, v: str, s: int) -> dict[str, Any]:
    return results[v][s].get("mechanism") or {}


def paired_intervals(results: dict[str, dict[int, dict[str, Any]]], seeds: list[int], key: str = "per_query"
                     ) -> list[dict[str, Any]]:
    """Each variant minus the baseline, query by query and seed by seed, in points with a 95% interval."""
    out = []
    if "baseline" not in results:
        return out
    for v in results:
        if v in ("baseline", "zero-shot"):
            continue
        ss = [s for s in seeds if s in results[v] and key in _mech(results, v, s) and key in _mech(results, "baseline", s)]
        if not ss:
            continue
        for st in SETTINGS:
            base0 = _mech(results, "baseline", ss[0])[key].get(st)
            if base0 is None:
                continue
            for m, col in METRICS.items():
                diffs = [_arr(_mech(results, v, s)[key][st][col]) - _arr(_mech(results, "baseline", s)[key][st][col])
                         for s in ss]
                ci = bootstrap_mean(diffs, np.asarray(base0["pid"]), scale=100.0)
                out.append({"variant": v, "setting": st, "metric": m, "split": "val" if key.endswith("val") else "test",
                            **ci, "queries": int(np.isfinite(diffs[0]).sum())})
    return out


def verdict(test: dict[str, Any] | None, val: dict[str, Any] | None, what: str = "SCI") -> str:
    """One plain sentence from the two splits' intervals."""
    def word(ci):
        if ci is None:
            return None
        if excludes_zero(ci):
            return "ahead" if ci["mean"] > 0 else "behind"
        return "undecided"

    def show(ci, split):
        return f"{ci['mean']:+.1f} [{ci['low']:+.1f}, {ci['high']:+.1f}] on {split}"
    if test is None:
        return f"No paired comparison of {what} with the baseline was possible."
    t, v = word(test), word(val)
    parts = show(test, "test") + (f", {show(val, 'validation')}" if val is not None else "")
    wide = [ci for ci in (test, val) if ci is not None and ci["half_width"] > TARGET_HALF_WIDTH]
    caveat = (f" (an interval is wider than ±{TARGET_HALF_WIDTH:.0f} points: too few queries or seeds to decide "
              "small differences)") if wide else ""
    than = {"ahead": "ahead of", "behind": "behind"}
    if v is None:
        if t == "undecided":
            return f"{what} and the baseline cannot be told apart: {parts}{caveat}."
        return f"{what} is {than[t]} the baseline: {parts}; there is no validation split to confirm it{caveat}."
    if t == v == "undecided":
        return f"{what} and the baseline cannot be told apart on either split: {parts}{caveat}."
    if t == v:
        return f"{what} is {than[t]} the baseline on both splits, beyond the 95% intervals: {parts}."
    return (f"The splits disagree: {what} is {t} on test and {v} on validation ({parts}); a difference the held-out "
            f"identities do not reproduce is not evidence{caveat}.")


def _per_seed(results, v: str, seeds: list[int], get) -> list[float]:
    vals = []
    for s in seeds:
        if s in results.get(v, {}):
            x = get(_mech(results, v, s))
            if x is not None:
                vals.append(float(x))
    return vals


def _spread(vals: list[float]) -> dict[str, Any] | None:
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "values": vals}


def _pooled(results, v: str, seeds: list[int], get) -> dict[str, Any] | None:
    """Two-level bootstrap of per-image values that every seed has for the same images."""
    rows = [get(_mech(results, v, s)) for s in seeds if s in results.get(v, {})]
    rows = [r for r in rows if r is not None and len(r[0])]
    if not rows or len({len(r[0]) for r in rows}) != 1:
        return None
    return bootstrap_mean([np.asarray(r[0], np.float64) for r in rows], np.asarray(rows[0][1]))


def _pooled_diff(results, a: str, b: str, seeds: list[int], get) -> dict[str, Any] | None:
    ss = [s for s in seeds if s in results.get(a, {}) and s in results.get(b, {})]
    ra = [get(_mech(results, a, s)) for s in ss]
    rb = [get(_mech(results, b, s)) for s in ss]
    if not ss or any(r is None for r in ra + rb) or len({len(r[0]) for r in ra + rb}) != 1 or not len(ra[0][0]):
        return None
    return bootstrap_mean([np.asarray(x[0], np.float64) - np.asarray(y[0], np.float64) for x, y in zip(ra, rb)],
                          np.asarray(ra[0][1]))


def _clothes(name: str):
    def get(m):
        pi = ((m.get("features") or {}).get(name) or {}).get("per_image")
        return (pi["hit"], pi["group"]) if pi else None
    return get


def _attention(m):
    sa = m.get("sim_attention")
    return (sa["per_image"]["trait_above_uniform"], sa["per_image"]["group"]) if sa and "per_image" in sa else None


def _decode(which: str):
    def get(m):
        pd = m.get("prompt_decoding")
        return None if not pd else pd["prototype"][f"{which}_accuracy"] - pd["T_id"][f"{which}_accuracy"]
    return get


def mechanism_claims(results: dict[str, dict[int, dict[str, Any]]], seeds: list[int]) -> list[dict[str, Any]]:
    """Each claim: per variant a measurement with its spread (and interval where per-image values exist), and
    a verdict for the variants the claim is about."""
    variants = [v for v in ("baseline", "sse", "sim", "full") if v in results]
    claims: list[dict[str, Any]] = []

    def by_seed_claim(name, measure, get, about, sign):
        cells = {v: _spread(_per_seed(results, v, seeds, get)) for v in variants}
        verdicts = {}
        for v in about:
            c = cells.get(v)
            if not c:
                continue
            vals = np.array(c["values"])
            if len(vals) > 1 and np.all(np.sign(vals) == sign) and abs(c["mean"]) > (c["std"] or 0):
                verdicts[v] = "supported (every seed, beyond the spread)"
            elif len(vals) > 1 and np.all(np.sign(vals) == -sign):
                verdicts[v] = "contradicted (every seed the other way)"
            elif len(vals) == 1:
                verdicts[v] = "one seed: " + ("in the claimed direction" if np.sign(vals[0]) == sign else "against it")
            else:
                verdicts[v] = "undecided (seeds disagree)"
        claims.append({"claim": name, "measurement": measure, "kind": "seeds", "cells": cells, "verdicts": verdicts})

    sse_rows = [v for v in ("sse", "full") if v in variants]
    by_seed_claim("SSE lowers the clothes decoded from the prototype", "prototype − T_id, clothes attributes (points)",
                  _decode("clothes"), sse_rows, -1)
    by_seed_claim("SSE raises the identity traits decoded from the prototype",
                  "prototype − T_id, identity traits (points)", _decode("identity"), sse_rows, +1)
    sim_rows = [v for v in ("sim", "full") if v in variants]
    cells = {v: _spread(_per_seed(results, v, seeds, lambda m: (m.get("features") or {}).get("sim_share")))
             for v in variants}
    claims.append({"claim": "SIM moves p'", "measurement": "|p' − p| / |p'| on test images (≥ 0.05 asked)",
                   "kind": "seeds", "cells": cells,
                   "verdicts": {v: ("supported (≥ 5% in every seed)" if min(cells[v]["values"]) >= 0.05 else
                                    "moves p' by less than 5% in some seed" if max(cells[v]["values"]) > 0 else
                                    "contradicted (p' unchanged)") for v in sim_rows if cells.get(v)}})
    cells = {v: _pooled(results, v, seeds, _attention) for v in variants}
    claims.append({"claim": "SIM's attention lands on identity traits", "measurement":
                   "attention on trait pixels − uniform attention's (share of the mass)", "kind": "interval",
                   "cells": cells, "verdicts": {v: _ci_verdict(cells[v], +1) for v in sim_rows if cells.get(v)}})
    pairs = [("sim", "baseline"), ("full", "sse" if "sse" in variants else "baseline")]
    pairs = [(a, b) for a, b in pairs if a in variants and b in variants]
    for name, key, label in (("CAL lowers what a fresh outfit probe can read", "outfit_probe", "outfit probe accuracy"),
                             ("CAL lowers same-outfit nearest neighbours", "clothes_nn", "same-outfit nearest neighbour")):
        cells = {v: _pooled(results, v, seeds, _clothes(key)) for v in variants}
        diffs = {a: (b, _pooled_diff(results, a, b, seeds, _clothes(key))) for a, b in pairs}
        claims.append({"claim": name, "measurement": f"{label} (within one person; CAL runs vs their no-CAL pair)",
                       "kind": "interval", "cells": cells, "differences": {a: {"against": b, **(d or {})}
                                                                           for a, (b, d) in diffs.items() if d},
                       "verdicts": {a: _ci_verdict(d, -1, f"vs {b}") for a, (b, d) in diffs.items() if d}})
    return claims


def _ci_verdict(ci: dict[str, Any] | None, sign: int, against: str = "") -> str:
    if not ci:
        return "not measured"
    where = f" {against}" if against else ""
    if ci.get("seeds") == 1:  # identities resampled, but no seed-to-seed spread to go by
        where += " (one seed)"
    if excludes_zero(ci):
        ok = (ci["mean"] > 0) == (sign > 0)
        return ("supported" if ok else "contradicted") + f"{where}: {ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
    return f"undecided{where}: {ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}] includes 0"


__all__ = ["paired_intervals", "verdict", "mechanism_claims", "TARGET_HALF_WIDTH"]
