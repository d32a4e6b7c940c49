"""More seeds for a finished full demo: how wide is SCI - baseline with 6 seeds instead of 3?

    python benchmarks/demo_seeds.py --demo /tmp/fulldemo --seeds 3 4 5 --jobs 2

Trains the extra seeds of `baseline` and `full` (SCI) on the demo's own data and recipe, into the demo's own
runs folder (the same `_train_one`, so a run is identical to one the demo would make), then recomputes the
report's paired intervals (`analysis.demo_claims.paired_intervals`: bootstrap over identities and seeds) with
the demo's 3 seeds, and with all of them. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scireid.analysis.demo_claims import paired_intervals  # noqa: E402
from scireid.demo import _train_one, _worker_init  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    (data_root,) = [p for p in a.demo.glob("data-v*") if p.is_dir()]
    (runs,) = [p for p in (a.demo / "runs").glob("full-*") if p.is_dir()]
    todo = [(v, s) for s in a.seeds for v in ("baseline", "full")]
    t = time.time()
    with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(1, True)) as pool:
        for f in [pool.submit(_train_one, v, s, data_root, runs, []) for v, s in todo]:
            f.result()
    print(f"{len(todo)} runs in {(time.time() - t) / 60:.1f} min", file=sys.stderr)
    seeds = sorted({int(p.name.split("seed")[1]) for p in runs.glob("full-seed*")
                    if (p / "demo_result.json").is_file() and (runs / f"baseline-seed{p.name.split('seed')[1]}" /
                                                              "demo_result.json").is_file()})
    results = {v: {s: json.loads((runs / f"{v}-seed{s}" / "demo_result.json").read_text()) for s in seeds}
               for v in ("baseline", "full")}
    rows = ["| seeds | split | cloth-changing R-1 | cloth-changing mAP |", "|---|---|---|---|"]
    for use in (seeds[:3], seeds):
        for key, split in (("per_query", "test"), ("per_query_val", "validation")):
            got = {r["metric"]: r for r in paired_intervals(results, use, key)
                   if r["variant"] == "full" and r["setting"] == "cloth-changing"}
            cell = {m: f"{got[m]['mean']:+.1f} [{got[m]['low']:+.1f}, {got[m]['high']:+.1f}] (±{got[m]['half_width']:.1f})"
                    for m in ("R-1", "mAP") if m in got}
            rows.append(f"| {', '.join(map(str, use))} | {split} | {cell.get('R-1', '—')} | {cell.get('mAP', '—')} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
