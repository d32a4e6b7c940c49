"""Deployment speed: embedding throughput (PyTorch vs onnxruntime) and gallery search (faiss vs numpy).

    python benchmarks/deploy_speed.py embed                    # tiny-rn 64x32 and RN50 256x128, batch 1 and 32
    python benchmarks/deploy_speed.py search --sizes 100000 1000000 --structures measured
    python benchmarks/deploy_speed.py search --sizes 1000000 --kinds hnsw --title "Gallery search, hnsw"

Search galleries are synthetic with the structure measured on trained ReID features (see SHARES and
STRUCTURES below). Writes BENCHMARKS.md sections with the machine, command and date.
"""
from __future__ import annotations

import argparse
import json
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
# The structure of trained ReID features, measured by feature_structure.py on the full demo's SCI model
# (seed 0) over its 1,828 test images: variance between identities, between one identity's outfits and
# within one outfit, the common mean, and the eigenvalue spectrum (participation ratio 16.4; 95% of the
# variance in 35 components).
MEASURED = json.loads((ROOT / "benchmarks" / "feature_structure.json").read_text())
SHARES = {k: MEASURED[k] for k in ("between", "outfit", "within")}
MEAN_NORM = MEASURED["mean_norm"]
STRUCTURES = ("measured",   # the measured eigenvalues, continued by the tail's power law
              "flatter",    # (1 + j/20)^-1.5: participation ratio 118, 7x the measured one
              "isotropic")  # every direction equal: the worst case for any index


def spectrum(dim: int, structure: str) -> np.ndarray:
    if structure == "measured":
        ev = np.asarray(MEASURED["spectrum"][:dim])
        j = np.arange(len(ev), dim)
        lam = np.concatenate([ev, ev[-1] * ((j + 1) / len(ev)) ** -MEASURED["tail_alpha"]])
    elif structure == "flatter":
        lam = (1 + np.arange(dim) / 20.0) ** -1.5
    else:
        lam = np.ones(dim)
    return lam / lam.sum()


def gallery(n: int, dim: int, structure: str = "measured", n_queries: int = 256, seed: int = 0,
            chunk: int = 100_000, labels: bool = False) -> tuple[np.ndarray, ...]:
    """(gallery, queries): 20 images per identity on average, each in one of 3 outfits; queries are new
    images of gallery identities in outfits they wear in the gallery (a new sighting, not a copy of a row).
    Components are drawn with the spectrum of ``structure`` and turned by one random rotation."""
    rng = np.random.default_rng(seed)
    sd = {k: np.sqrt(v * spectrum(dim, structure)).astype(np.float32) for k, v in SHARES.items()}
    rot = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
    mean = np.zeros(dim, np.float32)
    mean[-1] = MEAN_NORM  # off the high-variance axes: unit vectors vary across their mean direction, not along it
    n_ids = max(10, n // 20)
    centres = rng.normal(size=(n_ids, dim)).astype(np.float32) * sd["between"]
    outfits = rng.normal(size=(n_ids, 3, dim)).astype(np.float32) * sd["outfit"]

    pids, worn = np.empty(n, np.int64), np.empty(n, np.int64)

    def draw(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, outfit = rng.integers(0, n_ids, m), rng.integers(0, 3, m)
        f = mean + centres[ids] + outfits[ids, outfit] + rng.normal(size=(m, dim)).astype(np.float32) * sd["within"]
        f = f @ rot
        return f / np.linalg.norm(f, axis=1, keepdims=True), ids, outfit
    g = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        g[s:e], pids[s:e], worn[s:e] = draw(e - s)
    if labels:  # twice the queries, with their identities, so a caller can drop some people from the gallery
        qf, qids, _ = draw(2 * n_queries)
        return g, qf, pids, worn, qids
    return g, draw(n_queries)[0]


def index_bytes(index) -> int:
    import faiss
    total = [0]

    def count(buf) -> int:
        total[0] += len(buf)
        return len(buf)
    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total[0]


def real_features(path: str, n_queries: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries) from a ``scireid embed`` output: a seeded sample of rows held out as queries."""
    from scireid.deploy.embed import load_features
    f = np.asarray(load_features(path)[0], np.float32)
    held = np.zeros(len(f), bool)
    held[np.random.default_rng(0).choice(len(f), n_queries, replace=False)] = True
    return f[~held], f[held]


def bench_search(sizes: list[int], dim: int, structures: list[str], kinds: list[str], k: int = 10,
                 target: float = 0.95, store: str = "fp32", features: str | None = None) -> list[dict]:
    """Each approximate kind is built with ``Index.build(recall=target)``, which tunes its knob on held-out
    gallery rows; its recall here is measured on the benchmark's own queries against the numpy baseline.
    With ``features`` (a ``scireid embed`` output) the gallery is those features instead of synthetic ones."""
    import faiss

    from scireid.deploy.index import KNOB, Index, exact_topk, set_knob
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rows = []
    if features:
        structures, sizes = [Path(features).name], [0]
    for structure in structures:
        for n in sizes:
            t = time.perf_counter()
            q_out, pids = None, None
            if features:
                g, q = real_features(features)
            else:  # every 10th identity left out of the gallery: its images are queries of people new to it
                g, q, pids, _, qids = gallery(n, dim, structure, labels=True)
                q = q[qids % 10 != 0][:256]  # new sightings of gallery identities
                unseen = pids % 10 == 0
                q_out = g[np.flatnonzero(unseen)[:256]]
                g, pids = np.ascontiguousarray(g[~unseen]), pids[~unseen]
            n, dim = g.shape
            r = {"n": n, "dim": dim, "structure": structure, "gallery_mb": g.nbytes / 2 ** 20,
                 "gen_s": time.perf_counter() - t, "kinds": []}
            t = time.perf_counter()
            ref = exact_topk(g, q, k)
            r["numpy_ms_per_query"] = 1000 * (time.perf_counter() - t) / len(q)
            ref_out = exact_topk(g, q_out, k) if q_out is not None else None
            meta = [{"path": str(i)} | ({"pid": int(pids[i])} if pids is not None else {}) for i in range(n)]
            for kind in kinds:
                t = time.perf_counter()
                idx = Index.build(g, meta, "bench", kind=kind, recall=target,
                                  **({"store": store} if kind == "pca-flat" else {}))
                build_s = time.perf_counter() - t
                index_mb = index_bytes(idx.index) / 2 ** 20
                settings = [idx.params.get(KNOB.get(kind))]
                if kind in KNOB and 2 * settings[0] <= idx.params.get("nlist", 2 * settings[0]):
                    settings.append(2 * settings[0])  # the trade-off one step further
                for value in settings:
                    if value is not None:
                        set_knob(idx.index, kind, value)
                    idx.search(q[:8], k)  # warm-up
                    t = time.perf_counter()
                    _, ids = idx.search(q, k)
                    ms = 1000 * (time.perf_counter() - t) / len(q)
                    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids.tolist(), ref.tolist())]))
                    recall_out = None
                    if ref_out is not None:
                        _, ids_out = idx.search(q_out, k)
                        recall_out = float(np.mean([len(set(a) & set(b)) / k
                                                    for a, b in zip(ids_out.tolist(), ref_out.tolist())]))
                    params = idx.settings
                    if value is not None:
                        params[KNOB[kind]] = value
                    r["kinds"].append({"kind": kind, "params": params, "build_s": build_s, "ms_per_query": ms,
                                       "recall@10": recall, "tuned_recall": idx.params.get("recall@10_vs_exact"),
                                       "recall@10_unseen_people": recall_out,
                                       "calibration": idx.params.get("calibration"),
                                       "index_mb": index_mb})
                    print(structure, n, r["kinds"][-1], file=sys.stderr, flush=True)
                del idx
            r["peak_rss_mb"] = rss_mb()
            rows.append(r)
            del g
    return rows


def search_markdown(rows: list[dict], cmd: str, target: float, features: str | None = None) -> str:
    import faiss
    L = [f"## Gallery search ({date.today().isoformat()})", "",
         f"Machine: {machine()}; faiss {faiss.__version__}, numpy {np.__version__}. Command: `{cmd}`.", "",
         (f"Features: written by `scireid embed` (`{features}`); 256 seeded rows are held out as queries and the "
          "rest is the gallery; the queries are" if features else
          "Features: synthetic, L2-normalised, with the structure of trained ReID features that "
          "`benchmarks/feature_structure.py` measured on the full demo's SCI model (`feature_structure.json`: "
          "identity / outfit / within-outfit variance %.3f / %.3f / %.3f, a common mean of norm %.2f, and the "
          "measured eigenvalue spectrum, participation ratio %.1f, its top 400 eigenvalues continued by the tail's "
          "power law (exponent %.2f) beyond: `measured`), and two harder spectra: `flatter` ((1 + j/20)^-1.5, "
          "participation ratio 118) and `isotropic` (all directions equal). 20 images per identity on average, in 3 "
          "outfits; 256 queries are new images of gallery identities," % (
              SHARES["between"], SHARES["outfit"], SHARES["within"], MEAN_NORM, MEASURED["participation_ratio"],
              MEASURED["tail_alpha"])) +
         " searched as one batch; time per query = batch time / 256 (after a warm-up). Each approximate kind is "
         "built with `Index.build(recall=%.2f)`, which tunes its knob on held-out queries (build s includes "
         "the tuning); the knob's double is shown too. recall@10 is measured on the benchmark's queries against the "
         "exact top-10 of the numpy baseline (matmul + argpartition over the gallery in chunks)." % target, "",
         "Every 10th identity is left out of the synthetic gallery; 256 of its images are queries of people new "
         "to the gallery (`unseen`). The tuning holds out whole gallery identities (`claimed`: the recall the index "
         "records in index.json).", "",
         "| structure | gallery | dim | numpy ms/query | kind | settings | build s | ms/query | recall@10 | "
         "recall@10 unseen people | claimed | index MB |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        for x in r["kinds"]:
            L.append(f"| {r['structure']} | {r['n']:,} | {r['dim']} | {r['numpy_ms_per_query']:.2f} | {x['kind']} | "
                     f"{', '.join(f'{k}={v}' for k, v in x['params'].items())} | {x['build_s']:.1f} | "
                     f"{x['ms_per_query']:.3f} | {x['recall@10']:.3f} | {fmt(x.get('recall@10_unseen_people'))} | "
                     f"{fmt(x.get('tuned_recall'))} | {x['index_mb']:.0f} |")
    met = [(r, x) for r in rows for x in r["kinds"] if r["n"] >= 1_000_000 and x["kind"] != "exact"
           and x["ms_per_query"] < 10 and x["recall@10"] >= 0.95]
    if any(r["n"] >= 1_000_000 for r in rows):
        L += ["", "Target (10^6 gallery, top-10 under 10 ms/query at recall@10 >= 0.95): " + (
            "; ".join(f"met by {x['kind']} ({', '.join(f'{k}={v}' for k, v in x['params'].items())}) on {r['structure']} "
                      f"{r['dim']}-d at {x['ms_per_query']:.1f} ms, recall {x['recall@10']:.3f}" for r, x in met)
            if met else "not met by any approximate kind here") + "."]
    sizes = sorted({(r["n"], r["dim"], r["gallery_mb"]) for r in rows})
    L += ["", "Raw gallery sizes: " + ", ".join(f"{n:,} x {d} = {mb:.0f} MB" for n, d, mb in sizes) +
          f"; peak RSS of the process {max(r['peak_rss_mb'] for r in rows):.0f} MB."]
    return "\n".join(L) + "\n"


def main() -> None:
    from eval_speed import update_benchmarks_md
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("embed")
    s = sub.add_parser("search")
    s.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    s.add_argument("--dim", type=int, default=1152, help="1152: the shipped synth-clip model's test feature")
    s.add_argument("--structures", nargs="+", default=["measured"], choices=list(STRUCTURES))
    s.add_argument("--kinds", nargs="+", default=["exact", "pca-flat", "ivf", "ivf-pq"])
    s.add_argument("--recall", type=float, default=0.95)
    s.add_argument("--store", default="fp32", choices=["fp32", "fp16"], help="pca-flat's re-ranking vectors")
    s.add_argument("--title", default="Gallery search", help="BENCHMARKS.md section to write")
    s.add_argument("--features", metavar="FEATS.npy",
                   help="search features written by scireid embed (256 rows held out as queries) instead of synthetic ones")
    a = ap.parse_args()
    if a.cmd == "embed":
        md = embed_markdown(bench_embed(), "python benchmarks/deploy_speed.py embed")
        update_benchmarks_md(md, "## Embedding throughput")
    else:
        data = (f"--features {a.features}" if a.features else
                f"--sizes {' '.join(map(str, a.sizes))} --dim {a.dim} --structures {' '.join(a.structures)}")
        cmd = (f"python benchmarks/deploy_speed.py search {data} --kinds {' '.join(a.kinds)} --recall {a.recall}"
               + (f" --store {a.store}" if a.store != "fp32" else "")
               + (f" --title '{a.title}'" if a.title != "Gallery search" else ""))
        title = f"## {a.title}"
        md = search_markdown(bench_search(a.sizes, a.dim, a.structures, a.kinds, target=a.recall, store=a.store,
                                          features=a.features), cmd, a.recall, a.features)
        md = md.replace("## Gallery search", title, 1)
        update_benchmarks_md(md, title)
    print(md)


if __name__ == "__main__":
    main()
