"""Choose the synthetic recipe on the validation split: one run per candidate, validation numbers only.

Every candidate is the `synthetic` preset plus the overrides in its row (applied on top of the
preset as shipped at the time of the run, so each row names every setting it depends on), trained
through the real engine on the quick demo's data (80 ids, seed 0) with the quick schedule. The
table shows the validation split's last-epoch numbers; the test queries are never read for the
choice (the JSON keeps their numbers for the record, the table does not show them).

    python benchmarks/recipe_pilot.py --out /tmp/pilot [--only NAME ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

# the recipe of today's preset before this pilot (raw losses, 256x128 augmentation, lr 3.5e-5)
OLD = ["stage2.i2t_logits=raw", "stage2.triplet_normalize=false", "data.padding=10", "data.erasing_prob=0.5",
       "stage2.lr=3.5e-5", "model.sim_residual=absolute", "model.test_feature=concat"]
# scale-aware losses at the prior's logit scale, augmentation scaled to 64x32
NEW = ["stage2.i2t_logits=cosine", "stage2.i2t_scale=18.1", "stage2.triplet_normalize=true", "data.padding=2",
       "data.erasing_prob=0.0", "stage2.lr=3.5e-4", "model.sim_residual=relative", "model.test_feature=concat"]
QUICK = ["stage2.epochs=8", "stage2.milestones=[7]", "stage2.eval_every=8", "stage2.cal_start_epoch=4"]


def with_(base: list[str], *changes: str) -> list[str]:
    keys = {c.split("=")[0] for c in changes}
    return [b for b in base if b.split("=")[0] not in keys] + list(changes)


CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "old": ("baseline", OLD),
    "old-scaled-aug": ("baseline", with_(OLD, "data.padding=2", "data.erasing_prob=0.0")),
    "new": ("baseline", NEW),
    "new-raw-i2t": ("baseline", with_(NEW, "stage2.i2t_logits=raw")),
    "new-old-aug": ("baseline", with_(NEW, "data.padding=10", "data.erasing_prob=0.5")),
    "new-erasing-0.5": ("baseline", with_(NEW, "data.erasing_prob=0.5")),
    "new-lr-1e-4": ("baseline", with_(NEW, "stage2.lr=1e-4")),
    "new-bn-trained": ("baseline", with_(NEW, "stage2.freeze_backbone_bn=false")),
    "new-balanced-feature": ("baseline", with_(NEW, "model.test_feature=balanced")),
    "new-full": ("full", NEW),
    "new-full-absolute-sim": ("full", with_(NEW, "model.sim_residual=absolute")),
}


def run(name: str, variant: str, overrides: list[str], data: Path, out: Path) -> dict:
    from scireid.config import load_config
    from scireid.engine.trainer import train

    meta = json.loads((data / "synthetic.json").read_text())
    cfg = load_config("synthetic", [f"data.root={data}", f"run.out={out / name}", "run.seed=0", "run.tensorboard=false",
                                    f"data.synth_ids={meta['ids']}", f"data.synth_seed={meta['seed']}", *QUICK,
                                    *overrides], variant=variant)
    t0 = time.time()
    res = train(cfg, resume=(out / name / "config.yaml").exists())
    return {"name": name, "variant": variant, "overrides": overrides, "val": res["last_val"], "test": res["last"],
            "seconds": time.time() - t0}


def zero_shot(data: Path) -> dict:
    """The prior's own features on the validation split: the bar every candidate has to clear."""
    from scireid.config import load_config
    from scireid.data.source import load_dataset
    from scireid.engine.distributed import DistContext
    from scireid.engine.evaluation import test_features
    from scireid.engine.trainer import model_spec
    from scireid.eval.protocols import run_protocols
    from scireid.models.sci import build_model

    cfg = load_config("synthetic", [f"data.root={data}"], variant="baseline")
    ds = load_dataset(cfg)
    model = build_model(model_spec(cfg, ds), cfg.model.weights)
    val = ds.validation()
    return {"name": "zero-shot", "variant": "—", "overrides": [], "val": run_protocols(val, test_features(model, val, cfg, DistContext())),
            "seconds": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="recipe_pilot")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from scireid.data.synthetic import ensure_synthetic

    out = Path(a.out)
    data = ensure_synthetic(out / "data-ids80-seed0", ids=80, seed=0)
    rows_path = out / "pilot.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    if "zero-shot" not in rows:
        rows["zero-shot"] = zero_shot(data)
    for name, (variant, ov) in CANDIDATES.items():
        if a.only and name not in a.only or name in rows:
            continue
        rows[name] = run(name, variant, ov, data, out / "runs")
        rows_path.write_text(json.dumps(rows, indent=1))
        v = rows[name]["val"]
        print(f"{name:24s} val cc R-1/mAP {v['cloth-changing']['R-1']:.1f}/{v['cloth-changing']['mAP']:.1f} "
              f"general {v['general']['R-1']:.1f}/{v['general']['mAP']:.1f} ({rows[name]['seconds']:.0f} s)", flush=True)
    print("\n| candidate | variant | changes from `new` (or `old`) | val cc R-1 | val cc mAP | val general R-1 | val general mAP |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        base = OLD if name.startswith("old") else NEW
        diff = [o for o in r["overrides"] if o not in base] or ["—"]
        v = r["val"]
        print(f"| {name} | {r['variant']} | {', '.join(diff)} | {v['cloth-changing']['R-1']:.1f} | "
              f"{v['cloth-changing']['mAP']:.1f} | {v['general']['R-1']:.1f} | {v['general']['mAP']:.1f} |")


if __name__ == "__main__":
    main()
