"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with memory bounded by top-k neighbour lists.

The classic implementation builds dense (Q+G)^2 distance, rank and V matrices. Here only each
item's k1+1 nearest neighbours, the sparse V rows and one block of distance rows live at once;
distances between arbitrary pairs are recomputed from the features when needed.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def _dist_rows(feats: torch.Tensor, rows: np.ndarray, cols: torch.Tensor | None = None) -> np.ndarray:
    """Squared cosine distance rows (1 - cos)^2, normalised later by each row's maximum."""
    other = feats if cols is None else cols
    return ((1.0 - feats[torch.as_tensor(rows)] @ other.T).clamp_min(0) ** 2).numpy()


def _k_reciprocal(i: int, rank: np.ndarray, k: int) -> np.ndarray:
    fwd = rank[i, :k + 1]
    back = rank[fwd, :k + 1]
    return fwd[np.any(back == i, axis=1)]


def rerank_blocks(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                  chunk: int = 1024) -> Iterator[tuple[int, np.ndarray, bool]]:
    """(start, block, owned) of re-ranked Q x G distances, ``chunk`` queries at a time."""
    q = torch.nn.functional.normalize(torch.as_tensor(qf).float(), dim=1)
    g = torch.nn.functional.normalize(torch.as_tensor(gf).float(), dim=1)
    feats = torch.cat([q, g])
    n, nq = feats.shape[0], q.shape[0]
    kk = min(max(k1, k2) + 1, n)
    rank = np.empty((n, kk), dtype=np.int64)
    row_max = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk):
        d = _dist_rows(feats, np.arange(s, min(s + chunk, n)))
        row_max[s:s + len(d)] = d.max(1)
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(d), 1))
        pd = np.take_along_axis(d, part, 1)
        idx = np.lexsort((part, pd), axis=1)  # by distance, ties by index (a stable sort's order)
        rank[s:s + len(d)] = np.take_along_axis(part, idx, 1)
    row_max[row_max == 0] = 1.0

    # sparse V rows: weights over each item's k-reciprocal expansion set
    half = int(np.around(k1 / 2.0))
    v_idx: list[np.ndarray] = []
    v_val: list[np.ndarray] = []
    for i in range(n):
        kr = _k_reciprocal(i, rank, min(k1, kk - 1))
        exp = [kr]
        for c in kr:
            ckr = _k_reciprocal(int(c), rank, min(half, kk - 1))
            if len(np.intersect1d(ckr, kr)) > 2.0 / 3 * len(ckr):
                exp.append(ckr)
        e = np.unique(np.concatenate(exp))
        # original_dist in the classic code is column-normalised then transposed: d(i,j)^2 / max_k d(k,j)^2,
        # with d symmetric that is row j's maximum.
        w = np.exp(-(((1.0 - feats[i] @ feats[torch.as_tensor(e)].T).clamp_min(0) ** 2).numpy() / row_max[i]))
        v_idx.append(e)
        v_val.append((w / w.sum()).astype(np.float32))

    import scipy.sparse as sp

    lens = np.array([len(e) for e in v_idx])
    V = sp.csr_matrix((np.concatenate(v_val), np.concatenate(v_idx), np.concatenate([[0], np.cumsum(lens)])),
                      shape=(n, n))
    if k2 != 1:  # query expansion: average V over the k2 nearest neighbours
        rows = np.repeat(np.arange(n), k2)
        A = sp.csr_matrix((np.full(n * k2, 1.0 / k2, np.float32), (rows, rank[:, :k2].ravel())), shape=(n, n))
        V = (A @ V).tocsr()
    Vc = V.tocsc()
    for s in range(0, nq, chunk):
        e = min(s + chunk, nq)
        dq = _dist_rows(feats, np.arange(s, e), g) / row_max[s:e, None]
        out = np.empty((e - s, n - nq), dtype=np.float32)
        for r, i in enumerate(range(s, e)):
            lo, hi = V.indptr[i], V.indptr[i + 1]
            cols, vals = V.indices[lo:hi], V.data[lo:hi]
            starts, ends = Vc.indptr[cols], Vc.indptr[cols + 1]
            counts = ends - starts
            take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if len(cols) else np.zeros(0, int)
            js = Vc.indices[take]
            mins = np.minimum(np.repeat(vals, counts), Vc.data[take])
            temp_min = np.bincount(js, weights=mins, minlength=n)[nq:]
            jac = 1 - temp_min / (2.0 - temp_min)
            out[r] = jac * (1 - lambda_value) + dq[r] * lambda_value
        yield s, out, True


def rerank(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, chunk: int = 1024) -> np.ndarray:
    """Re-ranked Q x G distance matrix (the output itself is the only Q x G array)."""
    return np.concatenate([b for _, b, _ in rerank_blocks(qf, gf, k1, k2, lambda_value, chunk)])
