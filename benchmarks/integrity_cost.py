"""What the integrity checks cost: the tensor checksum of weights files, the sha256 of index files, the
size-aware data fingerprint. Appends a section to BENCHMARKS.md.

    python benchmarks/integrity_cost.py [--rows 100000] [--dim 1152]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--images", type=int, default=20_000, help="files in the fingerprint timing")
    a = ap.parse_args()
    from scireid.data.records import Record, ReIDDataset
    from scireid.data.source import fingerprint
    from scireid.deploy.backend import file_hash
    from scireid.deploy.index import Index
    from scireid.engine.checkpoint import load_weights, save_weights, tensors_sha256
    from scireid.models.sci import ModelSpec, SCIModel

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in ("synth-clip", "RN50-quickgelu"):
            m = SCIModel(ModelSpec(arch, 60, 200, 256 if arch.startswith("RN50") else 64,
                                   128 if arch.startswith("RN50") else 32))
            sd = m.state_dict()
            mb = sum(t.numel() * t.element_size() for t in sd.values()) / 2 ** 20
            h = best_of(lambda: tensors_sha256(sd))
            save_weights(tmp / "w.safetensors", m, {"spec": m.spec.to_dict()})
            load = best_of(lambda: load_weights(tmp / "w.safetensors", m))
            rows.append(("weights checksum (SHA-256 of every tensor)", f"{arch} SCI model, {mb:.0f} MB",
                         f"{h:.2f} s", f"{load:.2f} s (load incl. the check)"))
        feats = np.random.default_rng(0).normal(size=(a.rows, a.dim)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        idx = Index.build(feats, [{"path": str(i)} for i in range(a.rows)], "bench", kind="exact")
        idx.save(tmp / "idx")
        cur = tmp / "idx" / (tmp / "idx" / "CURRENT").read_text().strip()
        fmb = (cur / "index.faiss").stat().st_size / 2 ** 20
        h = best_of(lambda: [file_hash(cur / n, 64) for n in ("index.faiss", "rows.sqlite")])
        plain = best_of(lambda: Index.load(tmp / "idx", verify=False))
        checked = best_of(lambda: Index.load(tmp / "idx", verify=True))
        rows.append(("index checksum (SHA-256 of index.faiss + rows.sqlite)",
                     f"exact, {a.rows:,} x {a.dim} ({fmb:.0f} MB)", f"{h:.2f} s",
                     f"load {plain:.2f} s unverified, {checked:.2f} s verified"))
        img = tmp / "imgs"
        img.mkdir()
        recs = []
        for i in range(a.images):
            p = img / f"{i:06d}.png"
            p.write_bytes(b"x" * 100)
            recs.append(Record(str(p), i % 500, i % 6, i % 1000))
        ds = ReIDDataset("bench", str(img), recs[: a.images // 2], recs[a.images // 2:], [])
        old = best_of(lambda: fingerprint(ds, sizes=False))
        new = best_of(lambda: fingerprint(ds))
        rows.append(("data fingerprint with file sizes", f"{a.images:,} images", f"{new - old:.2f} s more",
                     f"{new:.2f} s with sizes, {old:.2f} s without"))
    L = [f"## Integrity checks: cost ({date.today().isoformat()})", "",
         f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}. "
         f"Command: `python {' '.join(sys.argv)}`. Best of 3; files in a temporary folder (page cache warm).", "",
         "| check | on | checksum time | in context |", "|---|---|---|---|"]
    L += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows]
    text = "\n".join(L) + "\n"
    print(text)
    bench = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    bench.write_text(bench.read_text().rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
