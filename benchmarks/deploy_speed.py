"""Deployment speed: embedding throughput (PyTorch vs onnxruntime) and gallery search (faiss vs numpy).

    python benchmarks/deploy_speed.py embed                    # tiny-rn 64x32 and RN50 256x128, batch 1 and 32
    python benchmarks/deploy_speed.py search --sizes 100000 1000000 --dim 1152

Search galleries are synthetic with realistic structure: identities as cluster centres, several
outfits per identity, noise, L2-normalised (the shape of real ReID features). Writes BENCHMARKS.md
sections with the machine, command and date.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), Python {platform.python_version()}"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------- embedding
def bench_embed(reps: int = 20) -> list[dict]:
    import onnxruntime as ort
    import torch

    from scireid.deploy.export import _TestForward
    from scireid.models.sci import ModelSpec, SCIModel
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for arch, h, w in (("tiny-rn", 64, 32), ("synth-clip", 64, 32), ("RN50-quickgelu", 256, 128)):
        torch.manual_seed(0)
        model = SCIModel(ModelSpec(arch, 100, 200, h, w)).eval()
        wrapper = _TestForward(model, False).eval()
        with tempfile.TemporaryDirectory() as d:
            path = f"{d}/m.onnx"
            with torch.no_grad():
                torch.onnx.export(wrapper, (torch.randn(2, 3, h, w),), path, input_names=["images"],
                                  output_names=["output"], opset_version=17, dynamic_axes={"images": {0: "b"}}, dynamo=False)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            for batch in (1, 32):
                x = np.random.default_rng(0).normal(size=(batch, 3, h, w)).astype(np.float32)
                n = max(2, reps // (4 if batch == 32 and arch.startswith("RN50") else 1))
                with torch.no_grad():
                    wrapper(torch.from_numpy(x))
                    t = time.perf_counter()
                    for _ in range(n):
                        wrapper(torch.from_numpy(x))
                    pt = n * batch / (time.perf_counter() - t)
                sess.run(["output"], {"images": x})
                t = time.perf_counter()
                for _ in range(n):
                    sess.run(["output"], {"images": x})
                ox = n * batch / (time.perf_counter() - t)
                rows.append({"arch": arch, "input": f"{h}x{w}", "batch": batch, "torch_img_s": pt, "onnx_img_s": ox})
                print(rows[-1], file=sys.stderr)
    return rows


def embed_markdown(rows: list[dict], cmd: str) -> str:
    import onnxruntime
    import torch
    L = [f"## Embedding throughput, PyTorch vs onnxruntime ({date.today().isoformat()})", "",
         f"Machine: {machine()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. Command: `{cmd}`. "
         "The whole test-time forward (SCI with SIM, L2-normalised output), random weights, fp32, images/s from "
         "repeated calls after one warm-up, both measured in one process.", "",
         "| model | input | batch | PyTorch img/s | onnxruntime img/s | ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['arch']} | {r['input']} | {r['batch']} | {r['torch_img_s']:.1f} | {r['onnx_img_s']:.1f} | "
                 f"{r['onnx_img_s'] / r['torch_img_s']:.2f}x |")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------- search
def gallery(n: int, dim: int, seed: int = 0, chunk: int = 100_000, noise: float = 0.6) -> np.ndarray:
    """20 images per identity in up to 3 outfits; the noise keeps same-identity neighbours ahead, as trained
    ReID features do (at noise 1.2 in 1152-d the 'neighbours' were barely closer than random vectors)."""
    rng = np.random.default_rng(seed)
    n_ids = max(10, n // 20)
    centres = rng.normal(size=(n_ids, dim)).astype(np.float32)
    outfits = rng.normal(size=(n_ids, 3, dim)).astype(np.float32) * 0.7
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        ids = rng.integers(0, n_ids, e - s)
        f = centres[ids] + outfits[ids, rng.integers(0, 3, e - s)] + rng.normal(size=(e - s, dim)).astype(np.float32) * noise
        out[s:e] = f / np.linalg.norm(f, axis=1, keepdims=True)
    return out


def numpy_topk(g: np.ndarray, q: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Baseline: matmul + argpartition, gallery in chunks (bounded memory)."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for s in range(0, len(g), chunk):
        sc = q @ g[s:s + chunk].T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + s], 1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return best_i


def bench_search(sizes: list[int], dim: int, n_queries: int = 256, k: int = 10,
                 kinds: tuple[str, ...] = ("exact", "ivf", "ivf-pq", "hnsw")) -> list[dict]:
    import faiss

    from scireid.deploy.index import Index
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rows = []
    for n in sizes:
        g = gallery(n, dim)
        q = g[np.random.default_rng(1).choice(n, n_queries, replace=False)] + 0.05 * np.random.default_rng(2).normal(
            size=(n_queries, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        r = {"n": n, "dim": dim, "gallery_mb": g.nbytes / 2 ** 20}
        t = time.perf_counter()
        ref = numpy_topk(g, q, k)
        r["numpy_ms_per_query"] = 1000 * (time.perf_counter() - t) / n_queries
        rows_meta = [{"path": str(i)} for i in range(n)]
        for kind in kinds:
            if kind == "hnsw" and n > 300_000 and len(kinds) > 1:
                continue  # graph construction takes a quarter of an hour at 10^6 on 2 cores: run it alone (--kinds hnsw)
            t = time.perf_counter()
            idx = Index.build(g, rows_meta, "bench", kind=kind)
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            _, ids = idx.search(q, k)
            ms = 1000 * (time.perf_counter() - t) / n_queries
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, ref)]))
            with tempfile.TemporaryDirectory() as d:
                faiss.write_index(idx.index, f"{d}/i")
                size_mb = os.path.getsize(f"{d}/i") / 2 ** 20
            r[kind] = {"build_s": build_s, "ms_per_query": ms, "recall@10": recall, "index_mb": size_mb,
                       "params": {k2: v for k2, v in idx.params.items() if k2 != "recall@10_vs_exact"}}
            if kind in ("ivf", "ivf-pq"):  # the speed / recall trade-off: more lists probed
                for nprobe in (32, 64, 128):
                    idx.index.nprobe = nprobe
                    t = time.perf_counter()
                    _, ids = idx.search(q, k)
                    ms = 1000 * (time.perf_counter() - t) / n_queries
                    rec = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, ref)]))
                    r[f"{kind} nprobe={nprobe}"] = {"build_s": build_s, "ms_per_query": ms, "recall@10": rec,
                                                    "index_mb": size_mb, "params": {"nprobe": nprobe}}
            del idx
            print(n, kind, r[kind], file=sys.stderr)
        r["peak_rss_mb"] = rss_mb()
        rows.append(r)
        del g
    return rows


def search_markdown(rows: list[dict], cmd: str) -> str:
    import faiss
    L = [f"## Gallery search ({date.today().isoformat()})", "",
         f"Machine: {machine()}; faiss {faiss.__version__}, numpy {np.__version__}. Command: `{cmd}`. Synthetic "
         "L2-normalised features with identity/outfit structure; 256 queries searched as one batch; time per query = "
         "batch time / 256; recall@10 against the exact top-10 of the numpy baseline (matmul + argpartition over the "
         "gallery in chunks).", "",
         "| gallery | dim | numpy ms/query | kind | build s | ms/query | recall@10 | index MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for kind in [k for k in r if isinstance(r[k], dict) and "ms_per_query" in r[k]]:
            x = r[kind]
            L.append(f"| {r['n']:,} | {r['dim']} | {r['numpy_ms_per_query']:.2f} | {kind} {x['params'] or ''} | "
                     f"{x['build_s']:.1f} | {x['ms_per_query']:.3f} | {x['recall@10']:.3f} | {x['index_mb']:.0f} |")
    L += ["", "Raw gallery sizes: " + ", ".join(f"{r['n']:,} x {r['dim']} = {r['gallery_mb']:.0f} MB" for r in rows) +
          f"; peak RSS of the process {max(r['peak_rss_mb'] for r in rows):.0f} MB."]
    return "\n".join(L) + "\n"


def main() -> None:
    from eval_speed import update_benchmarks_md
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("embed")
    s = sub.add_parser("search")
    s.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    s.add_argument("--dim", type=int, default=1152)
    s.add_argument("--kinds", nargs="+", default=["exact", "ivf", "ivf-pq", "hnsw"])
    a = ap.parse_args()
    if a.cmd == "embed":
        md = embed_markdown(bench_embed(), "python benchmarks/deploy_speed.py embed")
        update_benchmarks_md(md, "## Embedding throughput")
    else:
        cmd = f"python benchmarks/deploy_speed.py search --sizes {' '.join(map(str, a.sizes))} --dim {a.dim}"
        title = "## Gallery search"
        if a.kinds != ["exact", "ivf", "ivf-pq", "hnsw"]:
            cmd += f" --kinds {' '.join(a.kinds)}"
            title = f"## Gallery search, {' + '.join(a.kinds)} alone"
        md = search_markdown(bench_search(a.sizes, a.dim, kinds=tuple(a.kinds)), cmd).replace("## Gallery search", title, 1)
        update_benchmarks_md(md, title)
    print(md)


if __name__ == "__main__":
    main()
