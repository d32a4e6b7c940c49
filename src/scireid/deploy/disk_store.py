"""The ``pca-ivf-disk`` kind: galleries larger than RAM.

In RAM: a PCA projection (``pca_dim`` dimensions) and inverted lists over the projected rows (faiss
``IndexPreTransform(PCAMatrix, IndexIVFFlat)``, L2 in the projected space: about ``n * pca_dim * 4`` bytes).
On disk: the gallery's vectors in one ``.npy`` file (float16 or float32), read in place with plain reads;
the index never makes a second copy. A query takes ``k * k_factor`` candidates from the inverted lists and
ranks them by their exact inner product with the stored rows. The build streams the file in chunks, so the
file may be larger than RAM. The file is pinned by its size
and header; a removed row is zeroed in it, so its vector is gone.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

CHUNK = 200_000


class VectorFile:
    """Rows of a 2-D ``.npy`` file read with plain file reads, not a memory map: what is read stays in the page
    cache, not in this process's resident memory, so a 23 GB gallery does not count against its RSS.
    Indexing: a slice, or an array of row ids (read as one span when they are dense, row by row otherwise)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        m = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.offset = m.shape, m.dtype, m.offset
        del m
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return 2

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    def _span(self, start: int, stop: int) -> np.ndarray:
        n = max(0, min(stop, len(self)) - start)
        buf = os.pread(self.fd, n * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(buf, self.dtype).reshape(n, self.shape[1])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self._span(start, stop)[::step]
        ids = np.asarray(key, np.int64).reshape(-1)
        if len(ids) == 0:
            return np.zeros((0, self.shape[1]), self.dtype)
        lo, hi = int(ids.min()), int(ids.max()) + 1
        if hi - lo <= 2 * len(ids) + 64:  # dense: one read of the span
            return self._span(lo, hi)[ids - lo]
        order = np.argsort(ids, kind="stable")
        out = np.empty((len(ids), self.shape[1]), self.dtype)
        for j, i in zip(order.tolist(), ids[order].tolist()):
            out[j] = np.frombuffer(os.pread(self.fd, self.row_bytes, self.offset + i * self.row_bytes), self.dtype)
        return out


def open_store(path: str | Path, writable: bool = False):
    """The vector file: a ``VectorFile`` to read, or a writable memory map (to zero removed rows)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: the index's vector file is missing (pca-ivf-disk re-ranks from it in place)")
    try:
        m = np.load(p, mmap_mode="r+" if writable else "r")
    except (ValueError, OSError) as e:
        raise UserError(f"{p}: not a readable .npy file ({e})") from None
    if m.ndim != 2 or m.dtype not in (np.float16, np.float32):
        raise UserError(f"{p}: expected a 2-D float16 or float32 array, got {m.dtype} {m.shape}")
    if writable:
        return m
    del m
    return VectorFile(p)


def store_check(path: str | Path) -> dict[str, Any]:
    """What pins the vector file: its size and its .npy header (shape, dtype). Removal zeroes rows in place,
    so the data bytes are not pinned; hashing a 23 GB file on every load would cost minutes anyway."""
    p = Path(path)
    offset = open_store(p).offset
    with open(p, "rb") as f:
        head = hashlib.sha256(f.read(offset)).hexdigest()
    return {"path": str(p.resolve()), "size": p.stat().st_size, "header_sha256": head}


def verify_store(meta: dict[str, Any]) -> "VectorFile":
    if not Path(meta["path"]).is_file():
        raise UserError(f"{meta['path']}: the index's vector file is missing (pca-ivf-disk re-ranks from it in place)")
    now = store_check(meta["path"])
    if now["size"] != meta["size"] or now["header_sha256"] != meta["header_sha256"]:
        raise UserError(f"{meta['path']}: is not the vector file this index was built on (size or header changed); "
                        f"rebuild the index")
    return open_store(meta["path"])


def make_index(dim: int, n: int, pca_dim: int = 64, nlist: int = 0):
    import faiss
    pca_dim = min(pca_dim, dim, max(n, 1))  # n points span at most n dimensions
    nlist = nlist or max(1, min(int(2 * math.sqrt(n)), n // 39 or 1))
    # each part is owned by the C++ object that holds it, and released by its Python proxy (no double free)
    quant = faiss.IndexFlatL2(pca_dim)
    ivf = faiss.IndexIVFFlat(quant, pca_dim, nlist, faiss.METRIC_L2)
    ivf.own_fields = True
    quant.this.disown()
    pca = faiss.PCAMatrix(dim, pca_dim)
    idx = faiss.IndexPreTransform(pca, ivf)
    idx.own_fields = True
    pca.this.disown()
    ivf.this.disown()
    return idx, {"pca_dim": pca_dim, "nlist": nlist, "nprobe": 1, "k_factor": 10}


def train(index, store: "VectorFile", nlist: int, seed: int = 0) -> None:
    """PCA and k-means on a seeded sample, read from the file in sorted order."""
    n_fit = min(len(store), max(65_536, 39 * nlist))
    pick = np.sort(np.random.default_rng(seed).choice(len(store), n_fit, replace=False)) if n_fit < len(store) \
        else np.arange(len(store))
    index.train(np.ascontiguousarray(store[pick], dtype=np.float32))


def rows_of(store: "VectorFile", ids: np.ndarray) -> np.ndarray:
    """float32 rows ``ids`` of the file (read in sorted order, returned in the order asked)."""
    ids = np.asarray(ids, np.int64)
    order = np.argsort(ids, kind="stable")
    out = np.empty((len(ids), store.shape[1]), np.float32)
    out[order] = store[ids[order]]
    return out


def rerank(store: "VectorFile", q: np.ndarray, cand: np.ndarray, k: int, block: int = 16
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidates (-1: none), the best ``k``; queries in blocks,
    so that a deep candidate list never makes a (queries x candidates x dim) array of gigabytes."""
    if len(q) > block:
        parts = [rerank(store, q[s:s + block], cand[s:s + block], k, block) for s in range(0, len(q), block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    uniq, inv = np.unique(cand[cand >= 0], return_inverse=True)
    vecs = rows_of(store, uniq)
    pos = np.full(cand.shape, -1, np.int64)
    pos[cand >= 0] = inv
    s = np.einsum("qd,qkd->qk", q, vecs[np.maximum(pos, 0)])
    s = np.where(pos >= 0, s, -np.inf).astype(np.float32)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s, i = np.take_along_axis(s, top, 1), np.take_along_axis(cand, top, 1)
    return s, np.where(np.isfinite(s), i, -1)


def zero_rows(path: str | Path, ids: np.ndarray) -> None:
    """Overwrite removed rows in the file, so that their vectors are gone from the disk too."""
    m = open_store(path, writable=True)
    for s in range(0, len(ids), CHUNK):
        m[np.sort(ids[s:s + CHUNK])] = 0
    m.flush()
    del m


__all__ = ["VectorFile", "make_index", "open_store", "rerank", "rows_of", "store_check", "train", "verify_store", "zero_rows"]
