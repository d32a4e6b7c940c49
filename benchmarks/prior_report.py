"""Write the shipped prior's zero-shot table into BENCHMARKS.md, recomputed from the file itself.

    python benchmarks/prior_report.py            # scores src/scireid/weights/synthetic-clip.safetensors
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from eval_speed import update_benchmarks_md

    from scireid.data.captions import EVAL_TEMPLATES
    from scireid.models.weights import WEIGHTS_DIR, shipped_path
    from scireid.prior.zeroshot import zero_shot
    prov = json.loads((WEIGHTS_DIR / "synthetic-clip.json").read_text())
    t = time.time()
    z = zero_shot(shipped_path("synthetic-clip"), arch=prov["arch"], n_images=prov["zero_shot"]["held_out_images"])
    took = time.time() - t
    c = prov["config"]
    L = [f"## Offline prior `synthetic-clip`: zero-shot ({date.today().isoformat()})", "",
         f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}). Built with "
         f"`{prov['command']}` ({prov['corpus_images']} images of {prov['corpus_people']} people, {c['epochs']} epochs, "
         f"batch {c['batch_size']}, lr {c['lr']}; training took {prov['train_seconds_this_call'] / 60:.1f} min with "
         f"{prov['torch_threads']} torch threads). Scored by `python benchmarks/prior_report.py` from the shipped "
         f"fp16 file on {z['held_out_images']} held-out images of people never in the corpus ({took:.0f} s). "
         "Prompts: one caption per class in each of three wordings (`EVAL_TEMPLATES`): "
         + "; ".join(f"{k} `{v}`" for k, v in EVAL_TEMPLATES.items())
         + ". The seen wording is one the corpus can write; no word of the held-out ones occurs in any corpus caption "
         "(`tests/test_prior.py`). An attribute is scored only on images where it is visible. Chance = 1/classes; "
         "majority = always guessing the most frequent class. Target: the worst held-out wording at least 90.", "",
         "| attribute | kind | " + " | ".join(EVAL_TEMPLATES) + " | worst held-out | chance | majority | n |",
         "|---|---|" + "---|" * (len(EVAL_TEMPLATES) + 4)]
    for name, r in z["attributes"].items():
        L.append(f"| {name} | {'identity trait' if r['identity_trait'] else 'clothes'} | "
                 + " | ".join(f"{r['templates'][k]:.1f}" for k in EVAL_TEMPLATES)
                 + f" | {r['worst_held_out']:.1f} | {r['chance']:.1f} | {r['majority']:.1f} | {r['n']} |")
    i2c, c2i = z["image_to_caption"], z["caption_to_image"]
    L += ["", f"Retrieval among {z['held_out_images']} image-caption pairs: image->caption R@1 {i2c['R@1']:.1f}, R@5 "
              f"{i2c['R@5']:.1f}; caption->image R@1 {c2i['R@1']:.1f}, R@5 {c2i['R@5']:.1f} (captions are partial, so "
              "many fit several images)."]
    md = "\n".join(L) + "\n"
    update_benchmarks_md(md, "## Offline prior")
    print(md)


if __name__ == "__main__":
    main()
