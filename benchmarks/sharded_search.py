"""One process vs a sharded index on a local Dask cluster: build time, ms/query, recall@10, in one run.

    python benchmarks/sharded_search.py --n 1000000 --dim 1152 --workers 2 --kinds exact pca-flat

The gallery is `deploy_speed.gallery` (the measured feature structure); every 10th identity is left out and
its images are the queries of people new to the gallery. Each configuration is built, timed and freed before
the next, so the machine holds one copy of the index at a time. Writes a section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from deploy_speed import gallery, machine, rss_mb  # noqa: E402

from scireid.deploy.index import Index, exact_topk  # noqa: E402
from scireid.deploy.sharded import ShardedIndex, cluster_client  # noqa: E402


def recall(ids: np.ndarray, ref: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids[:, :k].tolist(), ref.tolist())]))


def timed_search(idx, q: np.ndarray, k: int = 10) -> tuple[float, np.ndarray]:
    idx.search(q[:8], k)  # warm-up (a shard loads its index on first use)
    t = time.perf_counter()
    _, ids = idx.search(q, k)
    return 1000 * (time.perf_counter() - t) / len(q), ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["exact", "pca-flat"])
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    a = ap.parse_args()
    t = time.perf_counter()
    g, q, pids, _, qids = gallery(a.n, a.dim, "measured", labels=True)
    q = q[qids % 10 != 0][:256]
    unseen = pids % 10 == 0
    q_out = g[np.flatnonzero(unseen)[:256]]
    g, pids = np.ascontiguousarray(g[~unseen]), pids[~unseen]
    rows_meta = [{"path": str(i), "pid": int(p)} for i, p in enumerate(pids)]
    ref, ref_out = exact_topk(g, q, 10), exact_topk(g, q_out, 10)
    print(f"gallery {g.shape} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    out = []
    for kind in a.kinds:
        for engine in ("one process", f"dask, {a.workers} workers"):
            t = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix="shardbench"))
            try:
                if engine == "one process":
                    idx, ctx = Index.build(g, rows_meta, "bench", kind=kind), None
                else:
                    ctx = cluster_client("local", workers=a.workers)
                    client = ctx.__enter__()
                    idx = ShardedIndex.build(tmp / "idx", g, rows_meta, "bench", client, shards=a.workers, kind=kind)
                build_s = time.perf_counter() - t
                ms, ids = timed_search(idx, q)
                _, ids_out = idx.search(q_out, 10)
                worker_rss = ""
                if ctx is not None:
                    import psutil
                    mem = client.run(lambda: psutil.Process().memory_info().rss)
                    worker_rss = " / ".join(f"{v / 2 ** 30:.1f}" for v in mem.values())
                out.append({"kind": kind, "engine": engine, "build_s": build_s, "ms": ms,
                            "recall": recall(ids, ref), "recall_out": recall(ids_out, ref_out),
                            "claimed": idx.params.get("recall@10_vs_exact"), "worker_rss": worker_rss,
                            "client_rss_gb": rss_mb() / 1024})
                print(out[-1], file=sys.stderr, flush=True)
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
                idx = None
                shutil.rmtree(tmp, ignore_errors=True)
    cmd = "python benchmarks/sharded_search.py " + " ".join(sys.argv[1:])
    md = [f"## Gallery search over a sharded index, one host ({datetime.date.today()})", "",
          f"Machine: {machine()}. Command: `{cmd}`. Gallery: {len(g):,} x {g.shape[1]} synthetic features with the "
          f"measured structure (`deploy_speed.gallery`); 256 queries of gallery people and 256 of people left out "
          f"of the gallery, searched as one batch of 256; ms/query = batch time / 256. The Dask rows run "
          f"{a.workers} worker processes (one thread each) on this host, each holding one shard; the client "
          f"merges their top-k. Build time includes sending each shard's vectors to its worker.", "",
          "| kind | engine | build s | ms/query | recall@10 | recall@10 unseen people | claimed | worker RSS GB |",
          "|---|---|---|---|---|---|---|---|"]
    for r in out:
        c = "—" if r["claimed"] is None else f"{r['claimed']:.3f}"
        md.append(f"| {r['kind']} | {r['engine']} | {r['build_s']:.1f} | {r['ms']:.2f} | {r['recall']:.3f} | "
                  f"{r['recall_out']:.3f} | {c} | {r['worker_rss'] or '—'} |")
    text = "\n".join(md) + "\n"
    print(text)
    if a.write:
        with open(Path(__file__).parent.parent / "BENCHMARKS.md", "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
