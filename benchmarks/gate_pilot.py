"""Choose SIM's gate and CAL's start on the validation split: one run per candidate, validation numbers only.

Every candidate is the `synthetic` preset plus the overrides in its row, trained through the real
engine on the full demo's data (120 ids, seed 0: 60 train identities; validation and test splits of
200 further identities each) with the demo's schedule, seed 0 (and more seeds with --seeds). The
table shows the validation split's last-epoch numbers and what SIM does (gamma, its share of p');
the test queries are never read for the choice (the JSON keeps them for the record only).

    python benchmarks/gate_pilot.py --out /tmp/gate_pilot [--only NAME ...] [--seeds 0 1] [--jobs 2]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "baseline": ("baseline", []),
    "gate-0": ("full", ["model.sim_gate_init=0.0", "stage2.gate_lr_factor=1", "stage2.cal_start_epoch=4"]),
    "gate-0-lr30": ("full", ["model.sim_gate_init=0.0", "stage2.gate_lr_factor=30", "stage2.cal_start_epoch=4"]),
    "gate-0.1": ("full", ["model.sim_gate_init=0.1", "stage2.gate_lr_factor=1", "stage2.cal_start_epoch=4"]),
    "gate-0.1-lr30": ("full", ["model.sim_gate_init=0.1", "stage2.gate_lr_factor=30", "stage2.cal_start_epoch=4"]),
    "channel-0.1": ("full", ["model.sim_gate=channel", "model.sim_gate_init=0.1", "stage2.gate_lr_factor=1",
                             "stage2.cal_start_epoch=4"]),
    "gate-0.1-cal6": ("full", ["model.sim_gate_init=0.1", "stage2.gate_lr_factor=1", "stage2.cal_start_epoch=6"]),
}


def run(name: str, variant: str, overrides: list[str], data: str, out: str, seed: int) -> dict:
    import torch

    from scireid.config import load_config
    from scireid.engine.engine import read_metrics
    from scireid.engine.trainer import train

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    meta = json.loads((Path(data) / "synthetic.json").read_text())
    rd = Path(out) / f"{name}-seed{seed}"
    cfg = load_config("synthetic", [f"data.root={data}", f"run.out={rd}", f"run.seed={seed}", "run.tensorboard=false",
                                    f"data.synth_ids={meta['ids']}", f"data.synth_seed={meta['seed']}",
                                    "stage2.eval_every=8", *overrides], variant=variant)
    t0 = time.time()
    res = train(cfg, resume=(rd / "config.yaml").exists())
    s2 = [r for r in read_metrics(rd / "metrics.jsonl") if r["stage"] == "stage2"]
    return {"name": name, "seed": seed, "variant": variant, "overrides": overrides, "val": res["last_val"],
            "test": res["last"], "gamma": s2[-1].get("gamma"), "sim_share_train": s2[-1].get("sim_share"),
            "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gate_pilot")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from scireid.data.synthetic import ensure_synthetic

    out = Path(a.out)
    data = ensure_synthetic(out / "data", ids=120, seed=0, test_ids=200, val_ids=200)
    rows_path = out / "pilot.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    todo = [(n, s) for s in a.seeds for n in CANDIDATES if (not a.only or n in a.only) and f"{n}-seed{s}" not in rows]
    with ProcessPoolExecutor(a.jobs) as pool:
        futs = {pool.submit(run, n, *CANDIDATES[n], str(data), str(out / "runs"), s): (n, s) for n, s in todo}
        for f in futs:
            r = f.result()
            rows[f"{r['name']}-seed{r['seed']}"] = r
            rows_path.write_text(json.dumps(rows, indent=1))
            v = r["val"]["cloth-changing"]
            print(f"{r['name']:16s} seed {r['seed']} val cc R-1/mAP {v['R-1']:.1f}/{v['mAP']:.1f} gamma {r['gamma']} "
                  f"share {r['sim_share_train']} ({r['seconds']:.0f} s)", flush=True)
    print("\n| candidate | seed | changes | val cc R-1 | val cc mAP | val general R-1 | val general mAP | gamma | SIM share (train) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        v = r["val"]
        g = "—" if r["gamma"] is None else f"{r['gamma']:+.4f}"
        sh = "—" if r["sim_share_train"] is None else f"{r['sim_share_train']:.3f}"
        print(f"| {r['name']} | {r['seed']} | {', '.join(r['overrides']) or '—'} | {v['cloth-changing']['R-1']:.1f} | "
              f"{v['cloth-changing']['mAP']:.1f} | {v['general']['R-1']:.1f} | {v['general']['mAP']:.1f} | {g} | {sh} |")


if __name__ == "__main__":
    main()
