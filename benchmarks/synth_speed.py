"""Synthetic-data generation speed on one core (target: at least 200 images/s).

    python benchmarks/synth_speed.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main():
    from scireid.data.synthetic import generate
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        generate(Path(d) / "s", ids=120, seed=0)
        dt = time.perf_counter() - t
        n = sum(1 for _ in (Path(d) / "s").rglob("*.png"))
    md = (f"## Synthetic data generation ({date.today().isoformat()})\n\n"
          f"Machine: {os.cpu_count()} CPU cores, one used (the generator is single-threaded numpy/PIL). "
          f"Command: `python benchmarks/synth_speed.py`. The default set (120 identities, seed 0): {n} PNG images "
          f"written in {dt:.1f} s = **{n / dt:.0f} images/s** (target: at least 200).\n")
    print(md)
    from eval_speed import update_benchmarks_md
    update_benchmarks_md(md, "## Synthetic data generation")


if __name__ == "__main__":
    main()
