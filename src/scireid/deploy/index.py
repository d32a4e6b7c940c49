"""``scireid.Index``: a faiss index over L2-normalised features with its metadata in sqlite.

An index is a folder: ``index.faiss``, ``rows.sqlite`` (row -> path, box, pid, camid, clothes_id,
timestamp) and ``index.json`` (model fingerprint, kind, parameters, recall of an approximate kind
against exact search). Scores are cosine similarities (inner products of unit vectors).

Kinds: ``exact`` (IndexFlatIP: the ranking equals ``scireid.eval``'s), ``ivf`` (inverted lists over
full vectors: fast at 10^6 with high recall), ``ivf-pq`` (inverted lists with product-quantised codes:
a fraction of the memory, lower recall) and ``hnsw`` (graph search; slow to build on few cores).
"""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io_utils import atomic_write, atomic_write_json
from .backend import check_fingerprint
from .inputs import Item

KINDS = ("exact", "ivf", "ivf-pq", "hnsw")
COLUMNS = ("path", "box", "pid", "camid", "clothes_id", "timestamp")


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - a base dependency
        raise UserError("faiss is not installed: pip install faiss-cpu") from None
    return faiss


def _pq_m(dim: int) -> int:
    """Sub-quantisers: about 4 dimensions each, dividing dim."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0 and m <= 64:
            return m
    return 1


def make_faiss_index(kind: str, dim: int, n_train: int, nlist: int = 0, m: int = 0, hnsw_m: int = 32):
    faiss = _faiss()
    if kind == "exact":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 80
        idx.hnsw.efSearch = 128
        return idx, {"hnsw_m": hnsw_m, "efSearch": 128}
    if kind in ("ivf", "ivf-pq"):
        nlist = nlist or max(1, min(int(math.sqrt(max(n_train, 1))), n_train // 39 or 1))
        quant = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            idx = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            params = {"nlist": nlist}
        else:
            m = m or _pq_m(dim)
            nbits = 8 if n_train >= 256 * 39 else max(1, min(8, int(math.log2(max(n_train // 39, 2)))))
            idx = faiss.IndexIVFPQ(quant, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            params = {"nlist": nlist, "m": m, "nbits": nbits}
        idx.nprobe = min(nlist, max(16, nlist // 16))
        return idx, params | {"nprobe": idx.nprobe, "own_quantizer": quant}
    raise UserError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")


class Index:
    """Build from features, add, search, save, load. ``fingerprint`` pins the model that made the features."""

    def __init__(self, faiss_index, kind: str, dim: int, fingerprint: str, rows: list[dict], params: dict[str, Any],
                 model: str = ""):
        self.index, self.kind, self.dim, self.fingerprint = faiss_index, kind, dim, fingerprint
        self.rows, self.params, self.model = rows, params, model

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, feats: np.ndarray, rows: list[dict], fingerprint: str, kind: str = "exact", model: str = "",
              **kw) -> "Index":
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if len(feats) != len(rows):
            raise UserError(f"{len(feats)} feature rows but {len(rows)} metadata rows")
        idx, params = make_faiss_index(kind, feats.shape[1], len(feats), **kw)
        quant = params.pop("own_quantizer", None)
        if not idx.is_trained:  # k-means on a seeded sample: 64 points per list is plenty, and bounded time
            n_fit = min(len(feats), max(64 * params.get("nlist", 1), 256 * 39 if kind == "ivf-pq" else 0))
            sample = np.random.default_rng(0).choice(len(feats), n_fit, replace=False) if n_fit < len(feats) else None
            idx.train(feats if sample is None else feats[np.sort(sample)])
        out = cls(idx, kind, feats.shape[1], fingerprint, [], params, model)
        out._quant = quant  # the IVF index does not own its quantizer in Python: keep it alive
        out.add(feats, rows, fingerprint)
        if kind != "exact" and len(feats) > 1:
            out.params["recall@10_vs_exact"] = out.recall_vs_exact(feats)
        return out

    def add(self, feats: np.ndarray, rows: list[dict], fingerprint: str) -> None:
        check_fingerprint(fingerprint, self.fingerprint, "this index")
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise UserError(f"features have shape {feats.shape}, the index holds {self.dim}-d vectors")
        self.index.add(feats)
        self.rows.extend(rows)

    def search(self, queries: np.ndarray, topk: int = 10, exclude_camids: list[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids), best first; ids are -1 where fewer than ``topk`` results exist.

        With ``exclude_camids`` (one camera per query, -1 for none), results from the query's own camera
        are dropped, as the ReID protocols do.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if exclude_camids is None:
            return self.index.search(q, min(topk, max(len(self), 1)))
        scores = np.full((len(q), topk), -np.inf, np.float32)
        ids = np.full((len(q), topk), -1, np.int64)
        cams = np.array([r.get("camid", -1) for r in self.rows])
        k = min(len(self), topk * 4)
        todo = np.arange(len(q))
        while len(todo):
            s, i = self.index.search(q[todo], k)
            left = []
            for row, (qi, ss, ii) in enumerate(zip(todo, s, i)):
                keep = (ii >= 0) & ((cams[np.maximum(ii, 0)] != exclude_camids[qi]) | (exclude_camids[qi] < 0))
                ss, ii = ss[keep][:topk], ii[keep][:topk]
                if len(ii) < topk and k < len(self):
                    left.append(qi)
                    continue
                scores[qi, :len(ss)], ids[qi, :len(ii)] = ss, ii
            todo = np.array(left, dtype=np.int64)
            k = min(len(self), k * 4)
        return scores, ids

    def recall_vs_exact(self, feats: np.ndarray, n_queries: int = 200, k: int = 10, seed: int = 0) -> float:
        """Share of the exact top-k found by this index, database vectors as queries."""
        faiss = _faiss()
        rng = np.random.default_rng(seed)
        qi = rng.choice(len(feats), size=min(n_queries, len(feats)), replace=False)
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(np.ascontiguousarray(feats, dtype=np.float32))
        k = min(k, len(feats))
        _, truth = exact.search(feats[qi], k)
        _, got = self.index.search(np.ascontiguousarray(feats[qi], dtype=np.float32), k)
        return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got)]))

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        faiss = _faiss()
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder}: a file, expected a folder for the index")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "index.faiss", lambda tmp: faiss.write_index(self.index, tmp))

        def write_rows(tmp: str) -> None:
            con = sqlite3.connect(tmp)
            con.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, path TEXT, box TEXT, pid INTEGER, camid INTEGER, "
                        "clothes_id INTEGER, timestamp TEXT)")
            con.executemany("INSERT INTO rows VALUES (?,?,?,?,?,?,?)",
                            ((i, r["path"], json.dumps(r.get("box")), r.get("pid", -1), r.get("camid", -1),
                              r.get("clothes_id", -1), r.get("timestamp", "")) for i, r in enumerate(self.rows)))
            con.commit()
            con.close()
        atomic_write(folder / "rows.sqlite", write_rows)
        atomic_write_json(folder / "index.json", {"kind": self.kind, "dim": self.dim, "fingerprint": self.fingerprint,
                                                  "count": len(self), "params": self.params, "model": self.model})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Index":
        faiss = _faiss()
        folder = Path(folder)
        need = [folder / n for n in ("index.faiss", "rows.sqlite", "index.json")]
        missing = [p.name for p in need if not p.is_file()]
        if missing:
            raise UserError(f"{folder}: not a scireid index (missing {', '.join(missing)})")
        meta = json.loads((folder / "index.json").read_text())
        idx = faiss.read_index(str(folder / "index.faiss"))
        con = sqlite3.connect(folder / "rows.sqlite")
        rows = [{"path": p, "box": json.loads(b), "pid": pid, "camid": cam, "clothes_id": clo, "timestamp": ts}
                for p, b, pid, cam, clo, ts in con.execute("SELECT path, box, pid, camid, clothes_id, timestamp "
                                                          "FROM rows ORDER BY id")]
        con.close()
        if len(rows) != idx.ntotal:
            raise UserError(f"{folder}: index.faiss holds {idx.ntotal} vectors but rows.sqlite {len(rows)} rows")
        return cls(idx, meta["kind"], meta["dim"], meta["fingerprint"], rows, meta.get("params", {}), meta.get("model", ""))


def results_table(index: Index, queries: list[Item], scores: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for q, ss, ii in zip(queries, scores, ids):
        hits = []
        for rank, (s, i) in enumerate(zip(ss, ii), start=1):
            if i < 0:
                break
            r = index.rows[int(i)]
            hits.append({"rank": rank, "score": float(s), "row": int(i), **r,
                         "same_identity": (None if q.pid < 0 or r.get("pid", -1) < 0 else bool(q.pid == r["pid"]))})
        out.append({"query": q.row(), "results": hits})
    return out
