"""Ranking metrics (CMC, mAP, mINP) for the general, cloth-changing and same-clothes protocols.

Only the ranks of each query's positives are needed, and two exact ways give them; each query
block takes the cheaper one, so the cost never depends much on how good the features are:

- partial: a gallery item can only change a positive's rank if it is at least as close as the
  query's farthest positive, so those candidates alone are sorted by (query, distance, gallery
  index). With good features that is a small fraction of the row.
- counting: the block's rows are value-sorted (no argsort) and a positive's rank is the number of
  closer non-junk items, found by binary search, with junk subtracted and exact ties resolved by
  gallery order. Its cost is one value sort of the block, whatever the feature quality.

Either way ties are broken by gallery order, exactly like a stable argsort of the full row.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

MODES = ("general", "cloth-changing", "same-clothes")


def _np(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def match_masks(q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(good, junk) boolean matrices for a block of queries (DESIGN.md §4)."""
    same_id = q_pids[:, None] == g_pids[None, :]
    same_cam = q_cams[:, None] == g_cams[None, :]
    if mode == "general":
        return same_id & ~same_cam, same_id & same_cam
    same_clo = q_clo[:, None] == g_clo[None, :]
    if mode == "cloth-changing":
        return same_id & ~same_cam & ~same_clo, same_id & (same_cam | same_clo)
    if mode == "same-clothes":
        return same_id & ~same_cam & same_clo, same_id & (same_cam | ~same_clo)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def pair_flags(qp, gp, qc, gc, qclo, gclo, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every same-identity (query, gallery) pair of a block, and whether it is good (else junk).

    Same-identity pairs are few (tens per query), so good/junk are decided on them alone instead
    of on dense Q x G masks.
    """
    order = np.argsort(gp, kind="stable")
    sorted_pids = gp[order]
    lo = np.searchsorted(sorted_pids, qp, "left")
    hi = np.searchsorted(sorted_pids, qp, "right")
    counts = hi - lo
    qi = np.repeat(np.arange(len(qp)), counts)
    offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    gi = order[np.repeat(lo, counts) + offs]
    same_cam = qc[qi] == gc[gi]
    if mode == "general":
        good = ~same_cam
    else:
        same_clo = qclo[qi] == gclo[gi]
        good = ~same_cam & (~same_clo if mode == "cloth-changing" else same_clo)
    return qi, gi, good


def _rank_block(dist: np.ndarray, qi: np.ndarray, gi: np.ndarray, good: np.ndarray, owned: bool = False):
    """Per query of the block: ranks (0-based, junk removed) of all its positives, grouped by query.

    A gallery item can only push a positive down if it is no farther than the query's farthest
    positive, so only those candidates are sorted, by one stable sort on (query, distance): ties keep
    gallery order, as a stable argsort of the full row would.
    """
    nq = dist.shape[0]
    n_good = np.bincount(qi[good], minlength=nq)
    dmax = np.full(nq, -np.inf)
    np.maximum.at(dmax, qi[good], dist[qi[good], gi[good]])
    d = dist if owned else dist.copy()
    d[qi[~good], gi[~good]] = np.inf  # junk leaves the ranking
    rows, cols = np.nonzero(d <= dmax[:, None])
    dv = d[rows, cols].astype(np.float64)
    lo = dv.min() if len(dv) else 0.0
    span = (dv.max() - lo + 1.0) if len(dv) else 1.0
    order = np.argsort(rows * span + (dv - lo), kind="stable")  # rows ascending, then distance, then column
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(nq))
    pos = np.arange(len(rows)) - starts[rows]
    return rows, cols, pos, n_good


COUNTING_ABOVE = 0.02  # candidate fraction of a block above which counting is cheaper than the partial sort


def _positive_ranks(dist: np.ndarray, qi: np.ndarray, gi: np.ndarray, good: np.ndarray, owned: bool, path: str,
                    qp: np.ndarray, gp: np.ndarray):
    """(query row, 0-based rank without junk) of every positive, ordered by row then rank; and n_good.

    ``qp`` are the block's query identities, ``gp`` the gallery's.
    """
    nq = dist.shape[0]
    if path == "auto":  # estimate the partial path's candidate share on a few rows of the block
        rows = np.unique(np.linspace(0, nq - 1, min(nq, 32)).astype(np.int64))
        sel = np.isin(qi, rows) & good
        dmax = np.full(nq, -np.inf)
        np.maximum.at(dmax, qi[sel], dist[qi[sel], gi[sel]])
        frac = np.count_nonzero(dist[rows] <= dmax[rows, None]) / max(len(rows) * dist.shape[1], 1)
        path = "counting" if frac > COUNTING_ABOVE else "partial"
    if path == "partial":
        rows, cols, pos, n_good = _rank_block(dist, qi, gi, good, owned)
        hit = gp[cols] == qp[rows]  # junk is gone, so a same-identity candidate is a positive
        return rows[hit], pos[hit], n_good
    if path != "counting":
        raise ValueError(f"path must be auto, partial or counting, got {path!r}")
    return _count_ranks(dist, qi, gi, good)


def _count_ranks(dist: np.ndarray, qi: np.ndarray, gi: np.ndarray, good: np.ndarray):
    nq = dist.shape[0]
    n_good = np.bincount(qi[good], minlength=nq)
    gq, gg = qi[good], gi[good]
    dg = dist[gq, gg]
    srt = np.sort(dist, axis=1)
    less = np.empty(len(gq), np.int64)
    eq = np.empty(len(gq), np.int64)
    bounds = np.searchsorted(gq, np.arange(nq + 1))  # gq is grouped by row (ascending)
    for r in range(nq):
        a, b = bounds[r], bounds[r + 1]
        if a == b:
            continue
        lo_ = np.searchsorted(srt[r], dg[a:b], "left")
        less[a:b] = lo_
        eq[a:b] = np.searchsorted(srt[r], dg[a:b], "right") - lo_
    # junk closer than the positive does not count
    jq, jg = qi[~good], gi[~good]
    if len(jq):
        dj = dist[jq, jg].astype(np.float64)
        lo = min(float(dj.min()), float(dg.min()) if len(dg) else 0.0)
        span = max(float(dj.max()), float(dg.max()) if len(dg) else 0.0) - lo + 1.0
        jkey = np.sort(jq * span + (dj - lo))
        gkey = gq * span + (dg.astype(np.float64) - lo)
        less -= np.searchsorted(jkey, gkey, "left") - np.searchsorted(jkey, gq * span, "left")
    rank = less.copy()
    # exact ties (rare): non-junk items at the same distance with a smaller gallery index come first
    for k in np.nonzero(eq > 1)[0]:
        r, p = gq[k], gg[k]
        same = np.nonzero(dist[r] == dg[k])[0]
        same = same[same < p]
        if len(same):
            junk_r = set(jg[jq == r].tolist())
            rank[k] += sum(1 for j in same.tolist() if j not in junk_r)
    order = np.lexsort((rank, gq))
    return gq[order], rank[order], n_good


def _accumulate(ranks_q, ranks, n_good, n_gallery, acc):
    valid = n_good > 0
    if not valid.any():
        return
    hit_no = np.arange(len(ranks_q)) - np.searchsorted(ranks_q, ranks_q)  # 0-based index of the hit within its query
    prec = (hit_no + 1) / (ranks + 1)
    ap = np.bincount(ranks_q, weights=prec, minlength=len(n_good))[valid] / n_good[valid]
    first = np.full(len(n_good), n_gallery, dtype=np.int64)
    np.minimum.at(first, ranks_q, ranks)
    last = np.zeros(len(n_good), dtype=np.int64)
    np.maximum.at(last, ranks_q, ranks)
    acc["ap"].append(ap)
    acc["inp"].append(n_good[valid] / (last[valid] + 1))
    acc["first"].append(first[valid])


def _finish(acc, n_gallery: int, n_query: int) -> dict[str, Any]:
    num_valid = int(sum(len(a) for a in acc["ap"]))
    if num_valid == 0:
        return {"cmc": np.zeros(n_gallery), "mAP": 0.0, "mINP": 0.0, "num_valid": 0, "num_skipped": n_query}
    first = np.concatenate(acc["first"])
    cmc = np.cumsum(np.bincount(first, minlength=n_gallery)[:n_gallery]) / num_valid
    return {"cmc": cmc, "mAP": float(np.concatenate(acc["ap"]).mean()),
            "mINP": float(np.concatenate(acc["inp"]).mean()), "num_valid": num_valid,
            "num_skipped": n_query - num_valid}


def _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    arrs = [_np(a) for a in (q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes)]
    if mode != "general" and (arrs[4] is None or arrs[5] is None):
        raise ValueError(f"mode {mode!r} needs q_clothes and g_clothes")
    if arrs[4] is None:
        arrs[4] = np.zeros(len(arrs[0]), np.int64)
        arrs[5] = np.zeros(len(arrs[1]), np.int64)
    return arrs


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, q_clothes=None, g_clothes=None,
             mode: str = "general", chunk: int = 1024, path: str = "auto") -> dict[str, Any]:
    """CMC (full length), mAP, mINP and num_valid from a Q x G distance matrix (smaller = closer).

    ``path`` (auto | partial | counting) picks the ranking method per block; all give identical results.
    """
    qp, gp, qc, gc, qclo, gclo = _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode)
    dist = _np(distmat)
    if dist.shape != (len(qp), len(gp)):
        raise ValueError(f"distmat has shape {dist.shape}, expected ({len(qp)}, {len(gp)}) from the labels")
    return _evaluate_blocks(((s, dist[s:s + chunk], False) for s in range(0, len(qp), chunk)),
                            qp, gp, qc, gc, qclo, gclo, mode, path)


def _evaluate_blocks(blocks: Iterator[tuple[int, np.ndarray, bool]], qp, gp, qc, gc, qclo, gclo, mode,
                     path: str = "auto") -> dict[str, Any]:
    acc: dict[str, list] = {"ap": [], "inp": [], "first": []}
    for s, d, owned in blocks:
        e = s + d.shape[0]
        qi, gi, good = pair_flags(qp[s:e], gp, qc[s:e], gc, qclo[s:e], gclo, mode)
        rows, ranks, ng = _positive_ranks(np.asarray(d), qi, gi, good, owned, path, qp[s:e], gp)
        _accumulate(rows, ranks, ng, len(gp), acc)
    return _finish(acc, len(gp), len(qp))


def cosine_distance_blocks(qf, gf, chunk: int = 1024) -> Iterator[tuple[int, np.ndarray, bool]]:
    """(start, 1 - cos, owned) blocks of ``chunk`` queries; the full Q x G matrix never exists."""
    import torch

    q = torch.nn.functional.normalize(torch.as_tensor(qf).float(), dim=1)
    g = torch.nn.functional.normalize(torch.as_tensor(gf).float(), dim=1)
    for s in range(0, q.shape[0], chunk):
        yield s, (1.0 - q[s:s + chunk] @ g.T).numpy(), True


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, q_clothes=None, g_clothes=None,
                      mode: str = "general", chunk: int = 1024, path: str = "auto") -> dict[str, Any]:
    """Like ``evaluate`` but from features (cosine distance), in query chunks to bound memory."""
    labels = _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode)
    return _evaluate_blocks(cosine_distance_blocks(qf, gf, chunk), *labels, mode, path)


def per_query_ap(distmat, q_pids, g_pids, q_camids, g_camids, q_clothes=None, g_clothes=None,
                 mode: str = "general", chunk: int = 1024) -> np.ndarray:
    """AP of each query (NaN where it has no valid match): for sorting queries, e.g. worst first."""
    qp, gp, qc, gc, qclo, gclo = _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode)
    dist = _np(distmat)
    out = np.full(len(qp), np.nan)
    for s in range(0, len(qp), chunk):
        d = dist[s:s + chunk]
        qi, gi, good = pair_flags(qp[s:s + chunk], gp, qc[s:s + chunk], gc, qclo[s:s + chunk], gclo, mode)
        rq, rk, ng = _positive_ranks(np.asarray(d), qi, gi, good, False, "auto", qp[s:s + chunk], gp)
        hit_no = np.arange(len(rq)) - np.searchsorted(rq, rq)
        sums = np.bincount(rq, weights=(hit_no + 1) / (rk + 1), minlength=len(ng))
        valid = ng > 0
        out[s:s + len(ng)][valid] = sums[valid] / ng[valid]
    return out


def per_query_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids, q_clothes=None, g_clothes=None,
                      mode: str = "general", chunk: int = 1024) -> dict[str, np.ndarray]:
    """R-1 hit (0/1) and AP of every query from features (cosine), NaN where the query has no valid match.

    Their means over the valid queries are ``evaluate_features``' R-1 and mAP; kept per query so that
    two models can be compared query by query (paired bootstrap, ``scireid.analysis.bootstrap``).
    """
    qp, gp, qc, gc, qclo, gclo = _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode)
    r1 = np.full(len(qp), np.nan)
    ap = np.full(len(qp), np.nan)
    for s, d, owned in cosine_distance_blocks(qf, gf, chunk):
        e = s + d.shape[0]
        qi, gi, good = pair_flags(qp[s:e], gp, qc[s:e], gc, qclo[s:e], gclo, mode)
        rq, rk, ng = _positive_ranks(np.asarray(d), qi, gi, good, owned, "auto", qp[s:e], gp)
        hit_no = np.arange(len(rq)) - np.searchsorted(rq, rq)
        sums = np.bincount(rq, weights=(hit_no + 1) / (rk + 1), minlength=len(ng))
        first = np.bincount(rq, weights=(rk == 0).astype(np.float64), minlength=len(ng))
        valid = ng > 0
        ap[s:e][valid] = sums[valid] / ng[valid]
        r1[s:e][valid] = first[valid]
    return {"r1": r1, "ap": ap}


def ranked_gallery(dist_row: np.ndarray, q_pid, q_cam, q_clo, g_pids, g_cams, g_clos, mode: str = "general") -> np.ndarray:
    """Gallery indices of one query in ranking order with its junk removed (stable: ties by gallery order)."""
    order = np.argsort(dist_row, kind="stable")
    _, junk = match_masks(np.atleast_1d(q_pid), g_pids, np.atleast_1d(q_cam), g_cams, np.atleast_1d(q_clo), g_clos, mode)
    return order[~junk[0][order]]


def summary(res: dict[str, Any], ranks=(1, 5, 10, 20)) -> dict[str, float]:
    """Percentages as the paper prints them."""
    cmc = res["cmc"]
    out = {f"R-{r}": float(100 * cmc[min(r, len(cmc)) - 1]) if len(cmc) else 0.0 for r in ranks}
    out.update({"mAP": 100 * res["mAP"], "mINP": 100 * res["mINP"], "num_valid": res["num_valid"]})
    return out
