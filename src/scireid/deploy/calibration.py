"""What an approximate index's recall is measured with: held-out queries and their exact top-k."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError


def exact_topk(feats: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000, scores: bool = False):
    """Exact top-k row ids by inner product (and their scores), the gallery in chunks (no second copy)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(feats), chunk):
        sc = queries @ np.asarray(feats[s:s + chunk], np.float32).T
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + s], 1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return (best_i, best_s) if scores else best_i


class StoredRows:
    """Rows ``ids`` of an index's stored vectors, read a slice at a time: ``exact_topk`` over a subset of a
    gallery that may not fit in RAM. Positions returned by ``exact_topk`` index ``ids``."""

    def __init__(self, index, ids: np.ndarray):
        self.index, self.ids = index, np.asarray(ids, np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.index.vectors(self.ids[rows])


class Calibration:
    """Queries an approximate index's recall@10 is tuned and reported on, with their exact top-k.

    When the rows carry identities, whole identities are held out: their rows are the queries, and the
    tuning gallery holds none of their images, as a query of someone new to the gallery would find it.
    Otherwise held-out gallery rows are used (their people stay in the gallery; ``how`` says so). The
    held-out rows join the index only after tuning; later measurements drop them from the results.
    """

    def __init__(self, feats: np.ndarray | None, n_queries: int = 200, k: int = 10, seed: int = 0,
                 pids: np.ndarray | None = None):
        if feats is None:  # filled by ``load``
            return
        n = len(feats)
        want = max(1, min(n_queries, n // 4))
        rng = np.random.default_rng(seed)
        known = np.unique(pids[pids >= 0]) if pids is not None and len(pids) == n else np.array([])
        self.qi = None
        if len(known) >= 4:
            chosen, rows = [], 0
            for pid in rng.permutation(known):
                if rows >= want or len(chosen) >= len(known) // 2:
                    break
                chosen.append(pid)
                rows += int((pids == pid).sum())
            qi = np.flatnonzero(np.isin(pids, chosen))
            if 0 < len(qi) < n:
                self.qi = qi
                self.how = (f"held-out identities: {len(chosen)} people ({len(self.qi)} query rows) absent from the "
                            f"gallery it was tuned on")
        if self.qi is None:
            self.qi = np.sort(rng.choice(n, size=want, replace=False))
            self.how = ("held-out gallery rows (identities unknown: their people stay in the gallery, so recall for "
                        "people new to the gallery may be lower)")
        self.q = np.ascontiguousarray(feats[self.qi], dtype=np.float32)
        self.k = max(1, min(k, n - len(self.qi)))
        held = set(self.qi.tolist())
        ti, ts = exact_topk(feats, self.q, self.k + len(self.qi), scores=True)
        keep = [[j for j, x in enumerate(t) if x not in held][:self.k] for t in ti.tolist()]
        self.truth_i = np.array([[ti[r, j] for j in c] for r, c in enumerate(keep)], np.int64)
        self.truth_s = np.array([[ts[r, j] for j in c] for r, c in enumerate(keep)], np.float32)
        self.order = np.concatenate([np.setdiff1d(np.arange(n), self.qi), self.qi])

    @property
    def truth(self) -> list[set]:
        return [set(t[t >= 0].tolist()) for t in self.truth_i]

    def recall(self, index) -> float:
        """While tuning: the held-out rows are not in the index yet."""
        _, got = index.search(self.q, self.k)
        truth = self.truth
        found = [len(t & set(g[g >= 0].tolist())) for t, g in zip(truth, got)]
        return float(sum(found) / max(1, sum(len(t) for t in truth)))

    def recall_in(self, index) -> float:
        """Once the held-out rows are in the index: search deeper and drop them."""
        held = set(self.qi.tolist())
        _, got = index.search(self.q, min(len(index), self.k + len(self.qi)))
        truth = self.truth
        found = [len(t & set([j for j in g.tolist() if j >= 0 and j not in held][:self.k]))
                 for t, g in zip(truth, got)]
        return float(sum(found) / max(1, sum(len(t) for t in truth)))

    def extend(self, feats: np.ndarray, first_id: int) -> None:
        """Exact top-k over the gallery with ``feats`` added as ids ``first_id...``: merge, no full rescan."""
        ni, ns = exact_topk(feats, self.q, self.k, scores=True)
        s = np.concatenate([self.truth_s, ns], 1)
        i = np.concatenate([self.truth_i, ni + first_id], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :self.k]
        self.truth_s, self.truth_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)

    def drop(self, removed: np.ndarray, index) -> None:
        """Rows removed from ``index``: queries among them go (their features are not kept), and the exact
        top-k is recomputed over the rows left. ivf-pq keeps no exact vectors: its truth keeps the surviving
        true neighbours, so its recall counts those found."""
        gone = np.isin(self.qi, removed)
        self.q, self.qi = self.q[~gone], self.qi[~gone]
        self.truth_i, self.truth_s = self.truth_i[~gone], self.truth_s[~gone]
        if len(self.qi) == 0:
            raise UserError("every calibration query was removed; rebuild the index to measure its recall")
        if index.kind == "ivf-pq":
            out = np.isin(self.truth_i, removed)
            self.truth_i = np.where(out, -1, self.truth_i)
            self.truth_s = np.where(out, -np.inf, self.truth_s).astype(np.float32)
            return
        live = np.flatnonzero(index.live_mask())
        gallery = np.setdiff1d(live, self.qi)
        ti, self.truth_s = exact_topk(StoredRows(index, gallery), self.q, min(self.k, len(gallery)), chunk=200_000,
                                      scores=True)  # in chunks: a gallery may exceed RAM
        self.truth_i = gallery[ti]

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, q=self.q, qi=self.qi, truth_i=self.truth_i, truth_s=self.truth_s, k=np.array(self.k),
                     how=np.array(self.how))

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        try:
            z = np.load(path, allow_pickle=False)
            c = cls(None)
            c.q, c.qi, c.truth_i, c.truth_s = z["q"], z["qi"], z["truth_i"], z["truth_s"]
            c.k, c.how = int(z["k"]), str(z["how"])
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: unreadable ({e}); rebuild the index") from None
        return c


__all__ = ["Calibration", "StoredRows", "exact_topk"]
