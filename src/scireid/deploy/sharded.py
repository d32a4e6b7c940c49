"""A gallery index split into shards, each held in memory by a worker of a Dask cluster.

Why Dask (``dask.distributed``): pure Python, one ``pip install "dask[distributed]"``; the same client code
talks to an in-process ``LocalCluster`` (tests, one host with several processes) and to a cluster of many
hosts started with Dask's own commands (``dask scheduler``, ``dask worker tcp://HOST:8786``); tasks can be
pinned to the worker that holds a shard, and every shard's answer has its own timeout. Ray would serve as
well but is a far larger install and slower to start; a vector database (Milvus) needs servers this
project cannot start in CI, and would replace the faiss kinds the single-process index is tuned with.

Layout: ``INDEX/shards.json`` (the manifest) and ``INDEX/shard-000/``... Each shard is a plain scireid index
folder (``Index``), so it is versioned, checksummed, locked and kill-safe as one. Row ``r`` lives in shard
``r % S`` as that shard's row ``r // S``: ids are the same as in a single-process index of the same rows,
and exact search merged over shards equals single-process exact search. Workers read the shard folders
by path: on several hosts the index folder must be on a filesystem they share, at the same path.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..durable import atomic_write_json, discard
from .filters import RowFilter

log = logging.getLogger(__name__)
MANIFEST = "shards.json"
_CACHE: dict[str, tuple[str, Any]] = {}  # in a worker: shard folder -> (version, loaded Index)


# ---------------------------------------------------------------------- run on the workers
def _threads() -> None:
    try:
        from distributed import get_worker
        import faiss
        faiss.omp_set_num_threads(max(1, get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        pass


def _loaded(path: str):
    from .index import Index
    cur = (Path(path) / "CURRENT").read_text().strip()
    hit = _CACHE.get(path)
    if hit is None or hit[0] != cur:
        _CACHE[path] = (cur, Index.load(path))
    return _CACHE[path][1]


def _build_shard(path: str, feats: np.ndarray, rows: list[dict], fingerprint: str, kind: str, model: str,
                 recall: float, job: str) -> dict[str, Any]:
    from ..engine.rundir import RunLock
    from .index import Index
    _threads()
    with RunLock(path):
        idx = Index.build(feats, rows, fingerprint, kind=kind, model=model, recall=recall)
        idx.params["jobs"] = [job]
        idx.save(path)
    return {"count": len(idx), "recall": idx.params.get("recall@10_vs_exact"), "settings": idx.settings}


def _add_shard(path: str, feats: np.ndarray, rows: list[dict], fingerprint: str, job: str) -> dict[str, Any]:
    from ..engine.rundir import RunLock
    from .index import Index, clean_index_leftovers
    _threads()
    with RunLock(path):
        clean_index_leftovers(path)
        idx = Index.load(path)
        if job not in idx.params.get("jobs", []):  # a re-run after a kill: shards that took the rows skip them
            idx.add(feats, rows, fingerprint)
            idx.params["jobs"] = [*idx.params.get("jobs", []), job]
            idx.save(path)
    return {"count": len(idx), "next": len(idx.rows), "recall": idx.params.get("recall@10_vs_exact")}


def _remove_shard(path: str, local_ids: np.ndarray) -> dict[str, Any]:
    from ..engine.rundir import RunLock
    from .index import Index, clean_index_leftovers
    _threads()
    with RunLock(path):
        clean_index_leftovers(path)
        idx = Index.load(path)
        n = idx.remove(local_ids)
        if n:
            idx.save(path)
    return {"removed": n, "count": len(idx), "recall": idx.params.get("recall@10_vs_exact")}


def _search_shard(path: str, q: np.ndarray, k: int, row_filter: RowFilter | None,
                  exclude_camids: list[int] | None):
    _threads()
    idx = _loaded(path)
    counts: dict[str, list[int]] = {}
    keep = row_filter.mask(idx.rows, counts) if row_filter is not None and row_filter.active else None
    if exclude_camids is not None:  # rows without a camera are kept; the client counts them over all shards
        live = [r for r in idx.rows if r is not None]
        counts["--exclude-same-camera"] = [sum(1 for r in live if r.get("camid", -1) < 0), len(live)]
    s, i = idx.search(q, k, exclude_camids=exclude_camids, keep=keep)
    rows = {int(j): idx.rows[j] for j in np.unique(i[i >= 0])}
    return s, i, rows, counts


# ---------------------------------------------------------------------- the client side
def connect(scheduler: str, workers: int = 2):
    """A Dask client: ``local`` starts a cluster of ``workers`` processes on this host."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError('the dask engine needs Dask: pip install "dask[distributed]"') from None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        return Client(cluster)
    try:
        return Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as e:
        raise UserError(f"--scheduler {scheduler}: no Dask scheduler answers there ({type(e).__name__}); start one "
                        f"with 'dask scheduler' and workers with 'dask worker {scheduler}'") from None


class cluster_client:
    """``with cluster_client(scheduler, workers) as client``: a local cluster started here is stopped on exit."""

    def __init__(self, scheduler: str, workers: int = 2):
        self.scheduler, self.workers = scheduler, workers

    def __enter__(self):
        self.client = connect(self.scheduler, self.workers)
        return self.client

    def __exit__(self, *exc) -> None:
        cluster = self.client.cluster if self.scheduler == "local" else None
        self.client.close()
        if cluster is not None:
            cluster.close()


def is_sharded(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


class ShardedIndex:
    """Build, add, remove and search shards through a Dask client; ``search`` merges the shards' top-k."""

    def __init__(self, folder: str | Path, manifest: dict[str, Any], client):
        self.folder, self.manifest, self.client = Path(folder).resolve(), manifest, client
        self.kind, self.dim = manifest["kind"], manifest["dim"]
        self.fingerprint, self.model = manifest["fingerprint"], manifest.get("model", "")
        self.params = manifest.setdefault("params", {})
        self._rows: dict[int, dict] = {}  # the rows of the last search's results
        self._place = self._placement()

    @property
    def n_shards(self) -> int:
        return int(self.manifest["shards"])

    def shard_path(self, s: int) -> str:
        return str(self.folder / f"shard-{s:03d}")

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def settings(self) -> dict[str, Any]:
        return {"engine": "dask", "shards": self.n_shards, **self.manifest.get("settings", {})}

    def _placement(self) -> dict[int, str]:
        """Shard -> worker address, fixed for this object's life: a worker that leaves takes its shards down."""
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            raise UserError("the Dask cluster has no workers; start some with 'dask worker SCHEDULER'")
        return {s: workers[s % len(workers)] for s in range(self.n_shards)}

    def _run(self, fn, per_shard: dict[int, tuple], timeout: float, partial: bool = False):
        """Submit ``fn(*args)`` to each shard's worker; results by shard, and the shards that failed."""
        alive = set(self.client.scheduler_info()["workers"])
        futures, down = {}, {}
        for s, args in per_shard.items():
            w = self._place[s]
            if w not in alive:
                down[s] = f"its worker {w} left the cluster"
                continue
            # big arrays go straight to the shard's worker, not through the scheduler's task graph
            args = tuple(self.client.scatter(x, workers=[w], hash=False) if isinstance(x, np.ndarray) and
                         x.nbytes > 2 ** 20 else x for x in args)
            futures[s] = self.client.submit(fn, *args, workers=[w], allow_other_workers=False, pure=False,
                                            key=f"{fn.__name__}-{s}-{uuid.uuid4().hex[:8]}")
        out = {}
        for s, f in futures.items():
            try:
                out[s] = f.result(timeout=timeout)
            except TimeoutError:
                f.cancel()
                down[s] = f"no answer from worker {self._place[s]} within {timeout:g} s"
            except UserError as e:
                down[s] = str(e)
            except Exception as e:  # a worker lost mid-task, or an error inside it
                down[s] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''} on {self._place[s]}"
        if down and not partial:
            s = min(down)
            more = f" (and {len(down) - 1} more shard(s))" if len(down) > 1 else ""
            raise UserError(f"shard {s} ({self.shard_path(s)}) is down: {down[s]}{more}")
        return out, down

    # ------------------------------------------------------------------ build / open
    @classmethod
    def build(cls, folder: str | Path, feats: np.ndarray, rows: list[dict], fingerprint: str, client,
              shards: int = 2, kind: str = "exact", model: str = "", recall: float = 0.95, job: str = "build",
              timeout: float = 3600) -> "ShardedIndex":
        from .index import check_build_options
        check_build_options(kind, recall)
        if shards < 1:
            raise UserError(f"--shards {shards}: expected at least 1")
        if len(feats) < shards:
            raise UserError(f"{len(feats)} rows cannot fill {shards} shards")
        folder = Path(folder).resolve()
        if is_sharded(folder):
            raise UserError(f"{folder} already holds a sharded index; use 'scireid index add' or another folder")
        for p in folder.glob("shard-*"):  # an earlier build killed before its manifest: never switched to
            discard(p)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"engine": "dask", "shards": shards, "kind": kind, "dim": int(feats.shape[1]),
                    "fingerprint": fingerprint, "model": model, "count": 0, "next_id": len(rows), "params": {}}
        self = cls(folder, manifest, client)
        per = {s: (self.shard_path(s), np.ascontiguousarray(feats[s::shards], np.float32), list(rows[s::shards]),
                   fingerprint, kind, model, recall, job) for s in range(shards)}
        res, _ = self._run(_build_shard, per, timeout)
        self._after_write(res)
        self.manifest["settings"] = res[0]["settings"]
        self.params["jobs"] = [job]
        self.save()  # the switch: a folder without the manifest is no index
        return self

    @classmethod
    def open(cls, folder: str | Path, client) -> "ShardedIndex":
        import json
        p = Path(folder) / MANIFEST
        try:
            manifest = json.loads(p.read_text())
            int(manifest["shards"]), manifest["kind"], manifest["dim"], manifest["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{p}: not a readable shard manifest ({type(e).__name__}: {e})") from None
        missing = [s for s in range(int(manifest["shards"])) if not (Path(folder) / f"shard-{s:03d}").is_dir()]
        if missing:
            raise UserError(f"{p}: shard {missing[0]} ({Path(folder) / f'shard-{missing[0]:03d}'}) is missing")
        return cls(folder, manifest, client)

    def save(self) -> None:
        atomic_write_json(self.folder / MANIFEST, self.manifest)

    def _after_write(self, res: dict[int, dict]) -> None:
        self.manifest["count"] = int(sum(r["count"] for r in res.values()))
        recalls = {s: r.get("recall") for s, r in res.items() if r.get("recall") is not None}
        if recalls:  # every shard is tuned on its own held-out people; the index is as good as its worst shard
            self.params["recall@10_vs_exact"] = min(recalls.values())
            self.params["recall@10_per_shard"] = [recalls[s] for s in sorted(recalls)]

    # ------------------------------------------------------------------ add / remove
    def add(self, feats: np.ndarray, rows: list[dict], fingerprint: str, job: str = "add",
            timeout: float = 3600) -> None:
        from .backend import check_fingerprint
        check_fingerprint(fingerprint, self.fingerprint, "this index")
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise UserError(f"features have shape {feats.shape}, the index holds {self.dim}-d vectors")
        if len(feats) != len(rows):
            raise UserError(f"{len(feats)} feature rows but {len(rows)} metadata rows")
        if job in self.params.get("jobs", []):
            raise UserError(f"{self.folder}: these inputs were already added (job {job}); nothing to do")
        first, S = int(self.manifest["next_id"]), self.n_shards
        gid = first + np.arange(len(rows))
        per = {}
        for s in range(S):
            which = np.flatnonzero(gid % S == s)
            if len(which):
                per[s] = (self.shard_path(s), np.ascontiguousarray(feats[which], np.float32),
                          [rows[i] for i in which], fingerprint, job)
        res, _ = self._run(_add_shard, per, timeout)
        counts = self._counts(set(range(S)) - set(res), timeout)
        self._after_write(res | counts)
        self.manifest["next_id"] = first + len(rows)  # last: a re-run after a kill assigns the same ids
        self.params["jobs"] = [*self.params.get("jobs", []), job]
        self.save()

    def remove(self, ids: np.ndarray, timeout: float = 3600) -> int:
        ids = np.unique(np.asarray(ids, np.int64))
        S = self.n_shards
        per = {s: (self.shard_path(s), ids[ids % S == s] // S) for s in range(S) if (ids % S == s).any()}
        res, _ = self._run(_remove_shard, per, timeout)
        counts = self._counts(set(range(S)) - set(res), timeout)
        self._after_write(res | counts)
        self.params["removed"] = int(self.params.get("removed", 0)) + sum(r["removed"] for r in res.values())
        self.save()
        return sum(r["removed"] for r in res.values())

    def _counts(self, shards: set[int], timeout: float) -> dict[int, dict]:
        res, _ = self._run(_shard_summary, {s: (self.shard_path(s),) for s in shards}, timeout)
        return res

    def rows_where(self, pid: int | None = None, paths: set[str] | None = None, timeout: float = 600) -> np.ndarray:
        """Global ids of the rows of identity ``pid`` or with a path in ``paths``."""
        res, _ = self._run(_find_rows, {s: (self.shard_path(s), pid, paths) for s in range(self.n_shards)}, timeout)
        return np.array(sorted(int(j) * self.n_shards + s for s, local in res.items() for j in local), np.int64)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, topk: int = 10, exclude_camids: list[int] | None = None,
               row_filter: RowFilter | None = None, partial: bool = False, timeout: float = 60
               ) -> tuple[np.ndarray, np.ndarray]:
        """Merged (scores, global ids), best first. With ``partial``, shards that are down are left out and
        named in ``self.missing`` (with a warning); otherwise a shard that is down is an error naming it."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(int(topk), len(self) or 1))
        per = {s: (self.shard_path(s), q, k, row_filter, exclude_camids) for s in range(self.n_shards)}
        res, down = self._run(_search_shard, per, timeout, partial=partial)
        self.missing = [self.shard_path(s) for s in sorted(down)]
        if down:
            log.warning("partial result: %d of %d shards did not answer (%s)", len(down), self.n_shards,
                        "; ".join(f"shard {s}: {why}" for s, why in sorted(down.items())))
        S, scores, ids, self._rows, counts = self.n_shards, [], [], {}, {}
        for s, (sc, li, rows, c) in sorted(res.items()):
            for key, (m, t) in c.items():
                counts[key] = [counts.get(key, [0, 0])[0] + m, counts.get(key, [0, 0])[1] + t]
            gi = np.where(li >= 0, li * S + s, -1)
            scores.append(np.where(li >= 0, sc, -np.inf))
            ids.append(gi)
            self._rows.update({j * S + s: r for j, r in rows.items()})
        cams = counts.pop("--exclude-same-camera", None)
        if cams and cams[1] and cams[0] == cams[1]:
            raise UserError(f"--exclude-same-camera: the index {self.folder} knows no camera for any of its rows; "
                            f"rebuild it from files named by a dataset scheme or a CSV manifest with a camid column")
        if cams and cams[0]:
            log.warning("--exclude-same-camera: %d of %d gallery rows have no camera and are always kept", *cams)
        from .filters import warn_missing
        warn_missing(counts)
        if not ids:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        sc, gi = np.concatenate(scores, 1), np.concatenate(ids, 1)
        order = np.lexsort((np.where(gi < 0, np.iinfo(np.int64).max, gi), -sc), axis=1)[:, :k]
        return np.take_along_axis(sc, order, 1).astype(np.float32), np.take_along_axis(gi, order, 1)

    def row(self, i: int) -> dict:
        return self._rows[int(i)]


def _shard_summary(path: str) -> dict[str, Any]:
    idx = _loaded(path)
    return {"count": len(idx), "recall": idx.params.get("recall@10_vs_exact")}


def _find_rows(path: str, pid: int | None, paths: set[str] | None) -> list[int]:
    idx = _loaded(path)
    return [i for i, r in enumerate(idx.rows) if r is not None and (
        (pid is not None and r.get("pid", -1) == pid) or (paths is not None and r["path"] in paths))]


__all__ = ["ShardedIndex", "cluster_client", "connect", "is_sharded"]
