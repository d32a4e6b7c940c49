"""Zero-shot scoring of a CLIP on held-out captioned people: attribute classification and retrieval.

Reads the weights file the way any open_clip user would (plain ``open_clip`` model class plus
``load_state_dict``), so the numbers are those of the shipped file, not of a training process.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.captions import ATTRIBUTES, EVAL_TEMPLATES
from .corpus import HELD_OUT_SEED, make_corpus


def load_prior(path: str | Path, arch: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    from .pretrain import build_prior
    from ..errors import WeightsError
    model = build_prior(arch)
    try:
        sd = load_file(str(path))
        model.load_state_dict({k: v.float() for k, v in sd.items()})
    except Exception as e:
        raise WeightsError(f"{path}: not an open_clip {arch} state dict ({str(e).splitlines()[0][:160]})") from None
    return model.eval()


@torch.no_grad()
def encode_texts(model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    from .pretrain import tokenizer
    tok = tokenizer()(texts, context_length=model.positional_embedding.shape[0])
    return F.normalize(model.encode_text(tok).float(), dim=-1)


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    from .pretrain import to_square_batch
    out = [model.encode_image(to_square_batch(images[i:i + batch])) for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(out).float(), dim=-1)


def recall_at(sims: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Row i's correct column is i."""
    rank = (sims > sims.diagonal()[:, None]).sum(1)  # strictly better columns
    return {f"R@{k}": round(100.0 * float((rank < k).float().mean()), 2) for k in ks}


@torch.no_grad()
def zero_shot(weights: str | Path | torch.nn.Module, arch: str = "synth-clip", n_images: int = 1200, height: int = 64,
              width: int = 32) -> dict[str, Any]:
    """Per-attribute accuracy under every wording of ``EVAL_TEMPLATES`` (each, and the worst held-out one), with
    uniform and majority-class chance, and caption retrieval R@1/R@5, on people from ``HELD_OUT_SEED``."""
    model = weights if isinstance(weights, torch.nn.Module) else load_prior(weights, arch)
    model.eval()
    held = make_corpus(n_images, HELD_OUT_SEED, height, width)
    img = encode_images(model, held.images)
    per_attr: dict[str, Any] = {}
    for a in ATTRIBUTES:
        rows = [i for i, at in enumerate(held.attrs) if a.name in at]
        if not rows:
            continue
        truth = np.array([held.attrs[i][a.name] for i in rows])
        by_template = {}
        for t_name, template in EVAL_TEMPLATES.items():
            txt = encode_texts(model, [a.phrase(k, template) for k in range(len(a.classes))])
            pred = (img[rows] @ txt.T).argmax(1).numpy()
            by_template[t_name] = round(100.0 * float((pred == truth).mean()), 2)
        majority = Counter(truth.tolist()).most_common(1)[0][1] / len(truth)
        held_out = [v for k, v in by_template.items() if k != "seen"]
        per_attr[a.name] = {"accuracy": by_template["seen"], "templates": by_template,
                            "worst_held_out": min(held_out), "worst": min(by_template.values()),
                            "chance": round(100.0 / len(a.classes), 2), "majority": round(100.0 * majority, 2),
                            "identity_trait": a.identity, "n": len(rows)}
    caps = [held.caption(i, np.random.default_rng([HELD_OUT_SEED, i])) for i in range(len(held))]
    txt = encode_texts(model, caps)
    sims = img @ txt.T
    return {"held_out_images": len(held), "attributes": per_attr,
            "image_to_caption": recall_at(sims), "caption_to_image": recall_at(sims.T)}


def format_zero_shot(z: dict[str, Any]) -> str:
    names = list(EVAL_TEMPLATES)
    lines = [f"zero-shot on {z['held_out_images']} held-out images (accuracy %; chance = 1/classes; majority class)",
             *(f"  {k}: {v!r}" for k, v in EVAL_TEMPLATES.items()),
             f"{'attribute':<14} {'kind':<9} " + " ".join(f"{n:>10}" for n in names)
             + f" {'worst':>6} {'chance':>7} {'majority':>9}"]
    for name, r in z["attributes"].items():
        kind = "identity" if r["identity_trait"] else "clothes"
        t = r.get("templates", {"seen": r["accuracy"]})
        lines.append(f"{name:<14} {kind:<9} " + " ".join(f"{t.get(n, float('nan')):10.1f}" for n in names)
                     + f" {r.get('worst', r['accuracy']):6.1f} {r['chance']:7.1f} {r['majority']:9.1f}")
    i2c, c2i = z["image_to_caption"], z["caption_to_image"]
    lines.append(f"image->caption R@1 {i2c['R@1']:.1f} R@5 {i2c['R@5']:.1f}; caption->image R@1 {c2i['R@1']:.1f} "
                 f"R@5 {c2i['R@5']:.1f}")
    return "\n".join(lines)
