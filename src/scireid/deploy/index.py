"""``scireid.Index``: a faiss index over L2-normalised features with its metadata in sqlite.

An index is a folder: ``index.faiss``, ``rows.sqlite`` (row -> path, box, pid, camid, clothes_id,
timestamp) and ``index.json`` (model fingerprint, kind, parameters, recall of an approximate kind
against exact search). Scores are cosine similarities (inner products of unit vectors).

Kinds: ``exact`` (IndexFlatIP: the ranking equals ``scireid.eval``'s), ``pca-flat`` (exact search in a
PCA-reduced space, the candidates re-ranked on the full vectors: ReID features have a fast-decaying
spectrum, so a few dozen dimensions find the neighbours; quick to build), ``ivf`` (inverted lists over
full vectors), ``ivf-pq`` (inverted lists with product-quantised codes: a fraction of the memory, lower
recall) and ``hnsw`` (graph search; fastest queries, slow to build on few cores).

An approximate index is tuned when built: its search knob (``k_factor``, ``nprobe`` or ``efSearch``;
for ``pca-flat`` also the PCA dimension) is doubled until recall@10 against exact search reaches the
target on 200 held-out gallery rows used as queries, which join the index only after tuning. The
cheapest setting that meets the target is the one saved.
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..durable import DiskFull, atomic_write_json, atomic_write_text, discard, is_disk_full, publish_dir, stage_dir
from .backend import check_fingerprint, file_hash
from .calibration import Calibration, StoredRows, exact_topk
from .filters import camera_groups
from .inputs import Item

log = logging.getLogger(__name__)
KINDS = ("exact", "pca-flat", "ivf", "ivf-pq", "hnsw", "pca-ivf-disk")
IVF_KINDS = ("ivf", "ivf-pq", "pca-ivf-disk")  # rows are dropped in place; ids live in the inverted lists
COLUMNS = ("path", "box", "pid", "camid", "clothes_id", "timestamp")
BRUTE_FORCE_ROWS = 50_000  # a filter keeping at most this many rows is searched exactly over them
KNOB = {"pca-flat": "k_factor", "ivf": "nprobe", "ivf-pq": "nprobe", "hnsw": "efSearch", "pca-ivf-disk": "nprobe"}


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


def check_build_options(kind: str, recall: float = 0.95, store: str = "fp32") -> None:
    """Before any work: ``index build`` embeds the whole input first."""
    if kind not in KINDS:
        raise UserError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not 0.0 < recall <= 1.0:
        raise UserError(f"--recall {recall}: expected a number in (0, 1]")
    if store not in ("fp32", "fp16"):
        raise UserError(f"--store {store!r}: expected fp32 or fp16")
    if store == "fp16" and kind != "pca-flat":
        raise UserError(f"--store fp16 applies to --kind pca-flat (its re-ranking vectors), not {kind}")


def make_faiss_index(kind: str, dim: int, n_train: int, nlist: int = 0, m: int = 0, hnsw_m: int = 32,
                     pca_dim: int = 0, store: str = "fp32"):
    faiss = _faiss()
    check_build_options(kind, store=store)
    if kind == "exact":
        return faiss.IndexFlatIP(dim), {}
    if kind == "pca-flat":
        # L2, not inner product: the PCA centres the data, which keeps L2 distances (the same ranking as
        # cosine for unit vectors) but not inner products
        pca_dim = min(pca_dim or 64, dim, max(n_train, 1))  # n points span at most n dimensions
        base = faiss.IndexPreTransform(faiss.PCAMatrix(dim, pca_dim), faiss.IndexFlatL2(pca_dim))
        if store == "fp16":  # half the memory for the re-ranking vectors (a 10^6 x 3072 gallery: 5.7 GB)
            refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
            idx = faiss.IndexRefine(base, refine)
            idx.own_refine_index = True
            refine.this.disown()
        else:
            idx = faiss.IndexRefineFlat(base)
        idx.own_fields = True
        base.this.disown()
        return _with_ids(idx), {"pca_dim": pca_dim, "k_factor": 4} | ({"store": "fp16"} if store == "fp16" else {})
    if kind == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 80
        return _with_ids(idx), {"hnsw_m": hnsw_m, "efSearch": 16}
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
        quant.this.disown()
        idx.own_fields = True
        return idx, params | {"nprobe": 1}


def _with_ids(index):
    """Row ids kept as given, so that calibration rows can be added last (IVF indexes store ids anyway)."""
    wrapped = _faiss().IndexIDMap(index)
    wrapped.own_fields = True
    index.this.disown()
    return wrapped


def set_knob(index, kind: str, value: int) -> None:
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if kind == "hnsw":
        inner.hnsw.efSearch = int(value)
    elif kind == "pca-flat":
        inner.k_factor = float(value)
    elif kind in ("ivf", "ivf-pq"):
        inner.nprobe = int(value)
    elif kind == "pca-ivf-disk":
        faiss.extract_index_ivf(index).nprobe = int(value)


class Index:
    """Build from features, add, search, save, load. ``fingerprint`` pins the model that made the features."""

    def __init__(self, faiss_index, kind: str, dim: int, fingerprint: str, rows: list[dict], params: dict[str, Any],
                 model: str = ""):
        self.index, self.kind, self.dim, self.fingerprint = faiss_index, kind, dim, fingerprint
        self.rows, self.params, self.model = rows, params, model  # rows[i] is None once row i is removed
        self.cal: Calibration | None = None  # approximate kinds: the queries their recall is measured with
        self._pos: np.ndarray | None = None  # row id -> position in the stored vectors (ID-mapped kinds)
        self.store = None  # pca-ivf-disk: the vector file (disk_store.VectorFile), read in place
        self.store_path = ""

    def __len__(self) -> int:
        return self.index.ntotal

    def row(self, i: int) -> dict:
        return self.rows[int(i)]

    @staticmethod
    def open(folder: str | Path, client=None):
        """The index in ``folder``: an ``Index``, or a ``ShardedIndex`` served by the Dask ``client``'s workers."""
        from .sharded import ShardedIndex, is_sharded
        if is_sharded(folder):
            if client is None:
                raise UserError(f"{folder} is a sharded index: it needs a Dask client (--scheduler ADDRESS or local)")
            return ShardedIndex.open(folder, client)
        return Index.load(folder)

    @property
    def settings(self) -> dict[str, Any]:
        """The index's parameters without the tuning measurements."""
        return {k: v for k, v in self.params.items()
                if k not in ("recall@10_vs_exact", "target_recall", "tuning", "calibration", "recall_measured_at_rows",
                             "scores", "jobs", "vector_file", "removed")}

    @classmethod
    def build(cls, feats: np.ndarray, rows: list[dict], fingerprint: str, kind: str = "exact", model: str = "",
              recall: float = 0.95, **kw) -> "Index":
        """``recall``: the recall@10 against exact search an approximate kind is tuned to reach."""
        if kind == "pca-ivf-disk":
            raise UserError("--kind pca-ivf-disk builds from a vector file it re-ranks from in place: "
                            "Index.build_from_file(path, rows, ...)")
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if len(feats) != len(rows):
            raise UserError(f"{len(feats)} feature rows but {len(rows)} metadata rows")
        check_build_options(kind, recall, kw.get("store", "fp32"))
        if kind == "ivf-pq" and len(feats) < 2:
            raise UserError(f"--kind ivf-pq: {len(feats)} gallery row(s), at least 2 are needed to train its codebooks; "
                            "use --kind exact")
        dim = feats.shape[1]
        pids = np.array([r.get("pid", -1) if isinstance(r, dict) else -1 for r in rows])
        cal = Calibration(feats, pids=pids) if kind != "exact" and len(feats) > 1 else None
        order = np.arange(len(feats)) if cal is None else cal.order
        n_cal = 0 if cal is None else len(cal.qi)
        pca_dims = [kw.pop("pca_dim", 0)]
        if kind == "pca-flat" and not pca_dims[0]:  # the smallest PCA dimension that meets the target
            pca_dims = [d for d in (32, 64, 128, 256, 512) if d < min(dim, len(feats))] or [min(dim, len(feats))]
        for pca_dim in pca_dims:
            out = None  # free the previous attempt before the next copy of the gallery is made
            idx, params = make_faiss_index(kind, dim, len(feats), pca_dim=pca_dim, **kw)
            if not idx.is_trained:  # k-means / PCA on a seeded sample: bounded time
                n_fit = min(len(feats), 65536 if kind == "pca-flat" else max(64 * params.get("nlist", 1),
                                                                              256 * 39 if kind == "ivf-pq" else 0))
                sample = np.random.default_rng(0).choice(len(feats), n_fit, replace=False) if n_fit < len(feats) else None
                idx.train(feats if sample is None else feats[np.sort(sample)])
            set_knob(idx, kind, params.get(KNOB.get(kind), 0))
            out = cls(idx, kind, dim, fingerprint, list(rows), params, model)
            # the held-out calibration rows go in last, after tuning, so that they are new to the index
            out._insert(feats, order[:len(feats) - n_cal], 0)
            if cal is None or out.tune(cal, recall) >= recall or pca_dim == pca_dims[-1]:
                break
        if cal is not None:
            out._add_held_out(cal, feats, order[len(feats) - n_cal:], recall)
            if kind == "ivf-pq":
                out.params["scores"] = "approximate (product-quantised codes), not exact cosines"
        return out

    def _add_held_out(self, cal: Calibration, feats, held: np.ndarray, recall: float) -> None:
        """After tuning: the calibration rows join the index, and the recall they measured is recorded."""
        self._insert(feats, held, 0)
        self.cal = cal
        self.params["calibration"] = cal.how
        self.params["recall_measured_at_rows"] = len(self) - len(held)
        if self.params["recall@10_vs_exact"] < recall:
            log.warning("%s index: recall@10 vs exact %.3f at the largest setting, below the target %.2f",
                        self.kind, self.params["recall@10_vs_exact"], recall)

    @classmethod
    def build_from_file(cls, path: str | Path, rows: list[dict] | None, fingerprint: str, kind: str = "pca-ivf-disk",
                        model: str = "", recall: float = 0.95, pids: np.ndarray | None = None, pca_dim: int = 64,
                        nlist: int = 0) -> "Index":
        """A ``pca-ivf-disk`` index over the ``.npy`` vector file at ``path``, streamed in chunks (it may be larger
        than RAM) and re-ranked from in place later. ``rows=None``: rows named by their number, identities from
        ``pids`` (whole identities are then held out to measure recall, as ``build`` does)."""
        from . import disk_store
        if kind != "pca-ivf-disk":
            raise UserError(f"--kind {kind}: only pca-ivf-disk builds from a vector file; load it and use build")
        check_build_options(kind, recall)
        store = disk_store.open_store(path)
        n, dim = store.shape
        if rows is None:
            rows = [{"path": str(i)} if pids is None else {"path": str(i), "pid": int(pids[i])} for i in range(n)]
        if len(rows) != n:
            raise UserError(f"{path}: {n} vectors but {len(rows)} metadata rows")
        if pids is None:
            pids = np.array([r.get("pid", -1) for r in rows])
        cal = Calibration(store, pids=np.asarray(pids)) if n > 1 else None
        order = np.arange(n) if cal is None else cal.order
        n_cal = 0 if cal is None else len(cal.qi)
        idx, params = disk_store.make_index(dim, n, pca_dim, nlist)
        disk_store.train(idx, store, params["nlist"])
        out = cls(idx, kind, dim, fingerprint, rows, params, model)
        out.store, out.store_path = store, str(Path(path).resolve())
        out.params["vector_file"] = disk_store.store_check(path)
        out._insert(store, order[:n - n_cal], 0, chunk=disk_store.CHUNK)
        if cal is not None:
            out.tune(cal, recall)
            out._add_held_out(cal, store, order[n - n_cal:], recall)
        return out

    def tune(self, cal: "Calibration", target: float) -> float:
        """Double the kind's search knob from its cheapest value until ``cal`` measures ``target`` recall."""
        knob = KNOB[self.kind]
        top = {"pca-flat": 256, "hnsw": 4096}.get(self.kind, self.params.get("nlist", 1))
        value, steps = self.params[knob], []
        while True:
            set_knob(self.index, self.kind, value)
            rec = cal.recall(self)  # through _search: pca-ivf-disk re-ranks there
            steps.append([value, rec] + ([self.params["k_factor"]] if self.kind == "pca-ivf-disk" else []))
            if rec >= target:
                break
            if self.kind == "pca-ivf-disk" and self.params["k_factor"] < 640 and (
                    value >= top or len(steps) > 1 and rec - steps[-2][1] < 0.003):
                # more lists no longer help: the PCA ranking is the limit, so re-rank more candidates
                self.params["k_factor"] *= 2
                continue
            if value >= top:
                break
            value = min(2 * value, top)
        self.params[knob] = value
        self.params["tuning"] = steps  # [setting, recall] tried, cheapest first
        self.params["target_recall"] = target
        self.params["recall@10_vs_exact"] = rec
        return rec

    def add(self, feats: np.ndarray, rows: list[dict], fingerprint: str) -> None:
        check_fingerprint(fingerprint, self.fingerprint, "this index")
        if self.kind == "pca-ivf-disk":
            raise UserError("pca-ivf-disk indexes re-rank from one vector file and are not extended in place; "
                            "rebuild from the grown file (Index.build_from_file)")
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise UserError(f"features have shape {feats.shape}, the index holds {self.dim}-d vectors")
        if len(feats) != len(rows):
            raise UserError(f"{len(feats)} feature rows but {len(rows)} metadata rows")
        first = len(self.rows)  # ids are never reused: removed rows leave gaps
        self._insert(feats, np.arange(len(feats)), first)
        self._pos = None
        self.rows.extend(rows)
        if self.cal is not None:  # the stored recall describes the index as it is now, not as it was built
            self.cal.extend(feats, first)
            self.params["recall@10_vs_exact"] = self.cal.recall_in(self)
            self.params["recall_measured_at_rows"] = len(self)

    def _insert(self, feats: np.ndarray, which: np.ndarray, first_id: int, chunk: int = 65536) -> None:
        """Rows ``which`` of ``feats`` get ids ``first_id + which``; in chunks, so no second copy is made."""
        for s in range(0, len(which), chunk):
            part = which[s:s + chunk]
            x = np.ascontiguousarray(feats[part], dtype=np.float32)
            if self.kind == "exact" and not self._has_idmap():  # added whole and in order: ids are positions
                self.index.add(x)
            else:
                self.index.add_with_ids(x, (part + first_id).astype(np.int64))

    def search(self, queries: np.ndarray, topk: int = 10, exclude_camids: list[int] | None = None,
               keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids), best first; ids are -1 where fewer than ``topk`` rows pass.

        ``keep`` (a mask over row ids, see ``filters.RowFilter``) and ``exclude_camids`` (one camera per
        query, -1 for none: that camera's rows are left out, as the ReID protocols do; rows without a camera
        stay) are applied inside the search: the result is the top-k among the rows that pass. For ``exact``
        it equals brute force over those rows; approximate kinds search them at their tuned setting and fall
        back to brute force over the stored vectors when few rows pass.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        topk = max(1, min(int(topk), len(self) or 1))  # more results than rows cannot exist; never allocate for them
        if keep is None and exclude_camids is None:
            return self._search(q, topk)
        live = self.live_mask()
        base = live if keep is None else live & np.asarray(keep, bool)[:len(live)]
        cams = None
        if exclude_camids is not None:
            cams = np.array([-1 if r is None else r.get("camid", -1) for r in self.rows], np.int64)
        scores = np.full((len(q), topk), -np.inf, np.float32)
        ids = np.full((len(q), topk), -1, np.int64)
        for cam, which in camera_groups(exclude_camids, len(q)).items():
            mask = base if cam < 0 or cams is None else base & ((cams != cam) | (cams < 0))
            s, i = self._search_masked(q[which], topk, mask)
            scores[which, :s.shape[1]], ids[which, :i.shape[1]] = s, i
        return scores, ids

    def _search_masked(self, q: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        n_pass = int(mask.sum())
        if n_pass == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        k = min(k, n_pass)
        if n_pass == len(self):
            return self._search(q, k)
        if self.kind == "exact":  # faiss skips the rows the selector refuses: exact over the passing rows
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
            return self.index.search(q, k, params=faiss.SearchParameters(sel=sel))
        brute = np.flatnonzero(mask)
        if n_pass > BRUTE_FORCE_ROWS:  # a broad filter: the tuned search, deeper until k rows pass
            depth = min(len(self), 4 * k)
            s, i = self._search(q, depth)
            ok = (i >= 0) & mask[np.maximum(i, 0)]
            if (ok.sum(1) >= k).all():
                top = np.argsort(~ok, axis=1, kind="stable")[:, :k]
                return np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
            log.info("filter keeps %d rows; the tuned search found fewer than %d of them, brute force over them",
                     n_pass, k)
        ti, ts = exact_topk(StoredRows(self, brute), q, k, chunk=BRUTE_FORCE_ROWS, scores=True)
        return ts, brute[ti]

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "pca-ivf-disk":  # candidates from the lists, ranked on the stored vectors
            from .disk_store import rerank
            _, cand = self.index.search(q, min(len(self), k * int(self.params.get("k_factor", 10))))
            return rerank(self.store, q, cand, k)
        scores, ids = self.index.search(q, k)
        if self.kind == "pca-flat":  # squared L2 between unit vectors -> cosine
            scores = np.where(ids >= 0, 1.0 - scores / 2.0, -np.inf).astype(np.float32)
        return scores, ids

    # ------------------------------------------------------------------ stored vectors and removal
    def live_mask(self) -> np.ndarray:
        return np.array([r is not None for r in self.rows], bool)

    def _has_idmap(self) -> bool:
        faiss = _faiss()
        return isinstance(self.index, (faiss.IndexIDMap, faiss.IndexIDMap2))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of rows ``ids`` (float32): exact for exact / ivf / hnsw, fp16-rounded for
        pca-flat's fp16 store, the decoded codes for ivf-pq."""
        faiss = _faiss()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.store is not None:
            from .disk_store import rows_of
            return rows_of(self.store, ids)
        if self.kind in ("ivf", "ivf-pq"):
            if self.index.direct_map.type == faiss.DirectMap.NoMap:
                self.index.set_direct_map_type(faiss.DirectMap.Hashtable)
            return self.index.reconstruct_batch(ids)
        if not self._has_idmap():  # a plain flat index: ids are positions
            return self.index.reconstruct_batch(ids)
        if self._pos is None:
            stored = faiss.vector_to_array(self.index.id_map)
            self._pos = np.full(len(self.rows), -1, np.int64)
            self._pos[stored] = np.arange(len(stored))
        inner = faiss.downcast_index(self.index.index)
        if self.kind == "pca-flat":
            inner = faiss.downcast_index(inner.refine_index)
        return inner.reconstruct_batch(self._pos[ids])

    def stored_ids(self) -> np.ndarray:
        """The row ids the faiss structure itself holds (checks that removal reached the codes)."""
        faiss = _faiss()
        if self.kind in IVF_KINDS:
            inv = faiss.extract_index_ivf(self.index).invlists
            return np.concatenate([np.zeros(0, np.int64)] + [  # (an empty list has no id buffer to read)
                faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy() for lst in range(inv.nlist)
                if inv.list_size(lst)])
        if self._has_idmap():
            return faiss.vector_to_array(self.index.id_map)
        return np.arange(self.index.ntotal)

    def remove(self, ids: np.ndarray) -> int:
        """Remove rows from every structure (codes, stored vectors, rows, calibration); returns how many.

        IVF kinds drop them in place; the others are re-filled from their stored vectors, keeping the trained
        parts (PCA, quantisers). Row ids are never reused, so earlier results keep their meaning.
        """
        faiss = _faiss()
        live = self.live_mask()
        ids = np.unique(np.asarray(ids, np.int64))
        ids = ids[(ids >= 0) & (ids < len(self.rows))]
        ids = ids[live[ids]]
        if len(ids) == 0:
            return 0
        if self.kind in IVF_KINDS:
            ivf = faiss.extract_index_ivf(self.index)
            if ivf.direct_map.type != faiss.DirectMap.NoMap:
                ivf.set_direct_map_type(faiss.DirectMap.NoMap)
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            if self.store is not None:  # the vectors too, in place (the file is the index's only copy)
                from .disk_store import store_check, zero_rows
                zero_rows(self.store_path, ids)  # VectorFile reads with pread: it sees the zeros, no reopening
                where = self.params["vector_file"]["path"]  # as recorded: relative when inside the index folder
                self.params["vector_file"] = store_check(self.store_path) | {"path": where}
        else:
            live[ids] = False
            left = np.flatnonzero(live)
            vecs = self.vectors(left)
            if self._has_idmap():
                self.index.reset()
            else:  # exact: positions were the ids; from now on ids are stored with the vectors
                self.index = _with_ids(faiss.IndexFlatIP(self.dim))
            for s in range(0, len(left), 65536):
                self.index.add_with_ids(vecs[s:s + 65536], left[s:s + 65536])
        for i in ids.tolist():
            self.rows[i] = None
        self._pos = None
        if self.cal is not None:
            self.cal.drop(ids, self)
            self.params["recall@10_vs_exact"] = self.cal.recall_in(self)
            self.params["recall_measured_at_rows"] = len(self)
        self.params["removed"] = int(self.params.get("removed", 0)) + len(ids)
        return len(ids)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write a new version folder ``v<N>`` (files + checksums), then switch ``CURRENT`` to it in one rename.

        A kill at any moment leaves ``CURRENT`` naming a complete version: the previous one until the
        switch, the new one after it. Stray versions are removed by the next save. Callers hold the
        folder's lock (``RunLock``), so two writers never interleave.
        """
        faiss = _faiss()
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder}: a file, expected a folder for the index")
        folder.mkdir(parents=True, exist_ok=True)
        current = _current_version(folder)
        n = 1 + max([int(p.name[1:]) for p in folder.glob("v[0-9]*") if p.name[1:].isdigit()] or [0])
        version = folder / f"v{n}"
        tmp = stage_dir(version)
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            con = sqlite3.connect(tmp / "rows.sqlite")
            con.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, path TEXT, box TEXT, pid INTEGER, camid INTEGER, "
                        "clothes_id INTEGER, timestamp TEXT)")
            con.executemany("INSERT INTO rows VALUES (?,?,?,?,?,?,?)",
                            ((i, r["path"], json.dumps(r.get("box")), r.get("pid", -1), r.get("camid", -1),
                              r.get("clothes_id", -1), r.get("timestamp", "")) for i, r in enumerate(self.rows)
                             if r is not None))
            con.commit()
            con.close()
            names = ["index.faiss", "rows.sqlite"]
            if self.cal is not None:
                self.cal.save(tmp / "calibration.npz")
                names.append("calibration.npz")
            files = {n: file_hash(tmp / n, 64) for n in names}
            meta = {"kind": self.kind, "dim": self.dim, "fingerprint": self.fingerprint, "count": len(self),
                    "next_id": len(self.rows), "params": self.params, "model": self.model, "sha256": files}
            atomic_write_json(tmp / "index.json", meta | {"meta_sha256": _meta_sha256(meta)})
            publish_dir(tmp, version)
        except BaseException as e:
            discard(tmp)
            if is_disk_full(e):
                raise DiskFull(f"no space left on the device writing the index {folder}; the index as it was before "
                               f"is intact") from None
            raise
        atomic_write_text(folder / "CURRENT", version.name + "\n")  # the switch
        for p in folder.iterdir():  # older versions, earlier crashes' leftovers, the pre-version layout
            if p != version and p.is_dir() and (p.name[:1] == "v" and p.name[1:].isdigit() or p.name.startswith(".v")):
                discard(p)
            elif current is None and p.name in ("index.faiss", "rows.sqlite", "index.json"):
                p.unlink()
        return folder

    @staticmethod
    def exists(folder: str | Path) -> bool:
        folder = Path(folder)
        return (folder / "CURRENT").is_file() or (folder / "index.json").is_file() or (folder / "shards.json").is_file()

    @classmethod
    def load(cls, folder: str | Path, verify: bool = True) -> "Index":
        """The current version; with ``verify`` its files are checked against the recorded sha256 first."""
        faiss = _faiss()
        folder = Path(folder)
        cur = _current_version(folder)
        files = folder / cur if cur else folder  # indexes written before versions: the files themselves
        need = [files / n for n in ("index.faiss", "rows.sqlite", "index.json")]
        missing = [p.name for p in need if not p.is_file()]
        if missing:
            raise UserError(f"{folder}: not a scireid index (missing {', '.join(missing)})")
        try:
            meta = json.loads((files / "index.json").read_text())
            kind, dim, fp = meta["kind"], int(meta["dim"]), meta["fingerprint"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{files / 'index.json'}: corrupt ({type(e).__name__}: {e}); rebuild the index") from None
        if verify and "meta_sha256" in meta and meta["meta_sha256"] != _meta_sha256(
                {k: v for k, v in meta.items() if k != "meta_sha256"}):
            raise UserError(f"{files / 'index.json'}: does not match the checksum recorded when the index was written "
                            f"(edited or corrupted); rebuild the index")
        if kind not in KINDS:
            raise UserError(f"{files / 'index.json'}: kind {kind!r} is not one of {', '.join(KINDS)}")
        for name, want in (meta.get("sha256") or {}).items():
            if verify and file_hash(files / name, 64) != want:
                raise UserError(f"{files / name}: does not match the checksum recorded when the index was written "
                                f"(corrupted or modified on disk); rebuild the index")
        try:
            idx = faiss.read_index(str(files / "index.faiss"))
        except RuntimeError as e:
            raise UserError(f"{files / 'index.faiss'}: unreadable ({str(e).strip().splitlines()[-1][:120]}); "
                            f"rebuild the index") from None
        try:
            con = sqlite3.connect(files / "rows.sqlite")
            stored = [(i, {"path": p, "box": json.loads(b), "pid": pid, "camid": cam, "clothes_id": clo,
                           "timestamp": ts})
                      for i, p, b, pid, cam, clo, ts in con.execute("SELECT id, path, box, pid, camid, clothes_id, "
                                                                    "timestamp FROM rows ORDER BY id")]
            con.close()
        except (sqlite3.Error, json.JSONDecodeError) as e:
            raise UserError(f"{files / 'rows.sqlite'}: unreadable ({e}); rebuild the index") from None
        n_ids = int(meta.get("next_id", len(stored)))
        if stored and not 0 <= stored[-1][0] < n_ids:
            raise UserError(f"{files / 'rows.sqlite'}: row id {stored[-1][0]} is outside the index's {n_ids} ids; "
                            f"rebuild the index")
        rows: list[dict | None] = [None] * n_ids  # the gaps are removed rows
        for i, r in stored:
            rows[i] = r
        if len(stored) != idx.ntotal:
            raise UserError(f"{folder}: index.faiss holds {idx.ntotal} vectors but rows.sqlite {len(stored)} rows")
        if meta.get("count") is not None and meta["count"] != idx.ntotal:
            raise UserError(f"{files / 'index.json'}: says {meta['count']} rows but index.faiss holds {idx.ntotal}")
        if idx.d != dim:
            raise UserError(f"{files / 'index.json'}: says dim {dim} but index.faiss holds {idx.d}-d vectors")
        params = meta.get("params", {})
        if kind in KNOB and KNOB[kind] in params:  # the tuned setting, whatever faiss serialises
            set_knob(idx, kind, params[KNOB[kind]])
        out = cls(idx, kind, dim, fp, rows, params, meta.get("model", ""))
        if kind == "pca-ivf-disk":  # a relative path is inside the index folder (the folder may move)
            from .disk_store import verify_store
            meta = dict(params.get("vector_file") or {"path": "?", "size": -1, "header_sha256": ""})
            meta["path"] = str(folder / meta["path"]) if not Path(meta["path"]).is_absolute() else meta["path"]
            out.store, out.store_path = verify_store(meta), meta["path"]
        if (files / "calibration.npz").is_file():
            out.cal = Calibration.load(files / "calibration.npz")
        return out


def clean_index_leftovers(folder: str | Path, unswitched: bool = False) -> list[Path]:
    """Under the index's lock: remove what a killed writer left inside the folder (its embedding folder, a version
    folder it never switched to, a half-written CURRENT). The current version is never touched. ``unswitched``
    (a build, where no CURRENT exists yet): complete version folders of a build killed before its switch too."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        ours = unswitched and not (folder / "CURRENT").exists() and p.is_dir() and p.name[:1] == "v" and \
            p.name[1:].isdigit() and (p / "index.json").is_file()
        if ours or p.name.startswith((".embed.", ".v", ".CURRENT.")) and p.name.endswith(".tmp"):
            discard(p)
            removed.append(p)
    return removed


def _meta_sha256(meta: dict[str, Any]) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _current_version(folder: Path) -> str | None:
    p = folder / "CURRENT"
    if not p.is_file():
        return None
    name = p.read_text().strip()
    if not (name.startswith("v") and name[1:].isdigit() and (folder / name).is_dir()):
        raise UserError(f"{p}: names {name!r}, which is not a version folder of this index; rebuild the index")
    return name


def results_table(index: Index, queries: list[Item], scores: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for q, ss, ii in zip(queries, scores, ids):
        hits = []
        for rank, (s, i) in enumerate(zip(ss, ii), start=1):
            if i < 0:
                break
            r = index.row(int(i))
            hits.append({"rank": rank, "score": float(s), "row": int(i), **r,
                         "same_identity": (None if q.pid < 0 or r.get("pid", -1) < 0 else bool(q.pid == r["pid"]))})
        out.append({"query": q.row(), "results": hits})
    return out
