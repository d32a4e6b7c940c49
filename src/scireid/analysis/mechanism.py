"""Measure SCI's mechanism on synthetic data, where the generator knows the truth.

- prompt decoding: rank attribute phrases by cosine to each identity's T_id and to its stage-2
  prototype (T_ort with SSE); top-1 accuracy against the identity's true traits and against the
  attributes of the outfits it was trained in. SSE should raise the first and lower the second.
- where SIM's cross-attention puts its mass: the fraction on identity-trait pixels (head, hair,
  skin, shoes, bag) vs garment pixels, from the part masks ``scireid synth`` writes; the
  baseline's Grad-CAM is scored the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..durable import atomic_write
from ..data.captions import ATTRIBUTES, identity_attributes, outfit_attributes
from ..data.synthetic import GARMENT, TRAIT, Identity, Outfit


@torch.no_grad()
def encode_phrases(model, phrases: list[str]) -> torch.Tensor:
    """Text features of plain phrases through the SCI model's own (frozen) CLIP text tower."""
    import open_clip
    tok = open_clip.get_tokenizer("RN50-quickgelu")(phrases, context_length=model.text.positional_embedding.shape[0])
    tok = tok.to(model.prototypes.device)
    return F.normalize(model.text(model.token_embedding(tok), tok).float(), dim=-1)


def decode(feats: torch.Tensor, encode: Callable[[list[str]], torch.Tensor],
           truth: list[dict[str, set[int]]]) -> dict[str, Any]:
    """Top-1 attribute decoding of ``feats`` (K, D): per attribute, the class whose phrase is closest.

    ``truth[k][attr]`` is the set of classes counted as right for row k (one class for a trait; the
    classes of all training outfits for a clothes attribute). Returns accuracy and chance per attribute
    and the means over identity traits and over clothes attributes.
    """
    f = F.normalize(feats.float(), dim=-1)
    per: dict[str, Any] = {}
    for a in ATTRIBUTES:
        rows = [k for k in range(len(truth)) if a.name in truth[k]]
        if not rows:
            continue
        txt = encode([a.phrase(c) for c in range(len(a.classes))]).to(f.device)
        pred = (f[rows] @ txt.T).argmax(1).tolist()
        hits = [pred[i] in truth[k][a.name] for i, k in enumerate(rows)]
        chance = float(np.mean([len(truth[k][a.name]) / len(a.classes) for k in rows]))
        per[a.name] = {"accuracy": 100.0 * float(np.mean(hits)), "chance": 100.0 * chance, "identity_trait": a.identity}
    out: dict[str, Any] = {"attributes": per}
    for kind, flag in (("identity", True), ("clothes", False)):
        vals = [v for v in per.values() if v["identity_trait"] == flag]
        out[f"{kind}_accuracy"] = float(np.mean([v["accuracy"] for v in vals])) if vals else None
        out[f"{kind}_chance"] = float(np.mean([v["chance"] for v in vals])) if vals else None
    return out


def train_truth(ds, meta: dict[str, Any]) -> list[dict[str, set[int]]]:
    """Per relabelled train identity: its true traits, and the classes of the outfits it trained in."""
    people = [Identity(**p) for p in meta["identities"]]
    catalogue = [Outfit(**o) for o in meta["catalogue"]]
    worn = meta.get("outfits_worn")
    if worn is None:
        raise ValueError("synthetic.json has no outfits_worn: regenerate the data with this version of scireid synth")
    truth: list[dict[str, set[int]]] = [dict() for _ in range(ds.num_train_pids)]
    seen_clothes: dict[int, set[int]] = {}
    orig_of: dict[int, int] = {}
    for r in ds.train:
        name = Path(r.path).name
        orig, clo = int(name.split("_")[0]), int(name.split("_")[1])
        orig_of[r.pid] = orig
        seen_clothes.setdefault(r.pid, set()).add(worn[orig][clo - 1])
    for pid, orig in orig_of.items():
        t = {k: {v} for k, v in identity_attributes(people[orig]).items()}
        for oid in seen_clothes[pid]:
            for k, v in outfit_attributes(catalogue[oid]).items():
                t.setdefault(k, set()).add(v)
        truth[pid] = t
    return truth


@torch.no_grad()
def prompt_decoding(model, ds, meta: dict[str, Any]) -> dict[str, Any]:
    """Decode every train identity's T_id and its stage-2 prototype."""
    truth = train_truth(ds, meta)
    pids = torch.arange(model.spec.num_pids, device=model.prototypes.device)
    t_id = torch.cat([model.text_features(model.id_prompts, pids[i:i + 64]) for i in range(0, len(pids), 64)])
    enc = lambda ph: encode_phrases(model, ph)  # noqa: E731
    return {"T_id": decode(t_id, enc, truth), "prototype": decode(model.prototypes, enc, truth),
            "prototype_is": "T_ort" if model.spec.sse else "T_id"}


def part_fractions(mask: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per token cell of ``grid`` (h, w): fraction of trait pixels and of garment pixels in the mask."""
    h, w = grid
    H, W = mask.shape
    m = mask[: H - H % h, : W - W % w].reshape(h, H // h, w, W // w)
    trait = (m == TRAIT).mean((1, 3))
    garment = (m == GARMENT).mean((1, 3))
    return trait.ravel(), garment.ravel()


def mask_path(root: Path, image_path: str) -> Path:
    return Path(root) / "masks" / Path(image_path).name


def with_masks(records, root: Path, limit: int) -> list:
    """The first ``limit`` records whose part mask the generator wrote."""
    return [r for r in records if mask_path(root, r.path).is_file()][:limit]


def load_mask(root: Path, image_path: str, height: int, width: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(mask_path(root, image_path)).resize((width, height), Image.NEAREST))


@torch.no_grad()
def sim_attention_mass(model, records, root: Path, transform, max_images: int = 200) -> dict[str, Any] | None:
    """Share of SIM's pooled cross-attention on trait vs garment pixels (and what uniform attention gives)."""
    from ..data.loading import read_image
    if model.sim is None:
        return None
    recs = with_masks(records, root, max_images)
    if not recs:
        return None
    model.eval()
    trait, garment, u_trait, u_garment, group, best = [], [], [], [], [], []
    for i in range(0, len(recs), 64):
        chunk = recs[i:i + 64]
        x = torch.stack([transform(read_image(r.path)) for r in chunk]).to(model.prototypes.device)
        _, fmap, cls = model.visual.trunk(x)
        z = model.sim.refine_map(fmap)
        _, p = model.visual.pool(z, cls)
        a = model.sim.cross.attention(model.prototypes.to(z.dtype), z, p).float().cpu().numpy()  # B, N
        for r, att in zip(chunk, a):
            mask = load_mask(root, r.path, model.spec.height, model.spec.width)
            tf, gf = part_fractions(mask, tuple(z.shape[2:]))
            trait.append(float(att @ tf))
            garment.append(float(att @ gf))
            u_trait.append(float(tf.mean()))
            u_garment.append(float(gf.mean()))
            best.append(float(tf.max()))  # all attention on the token with the most trait pixels: the ceiling
            group.append(r.pid)
    from .bootstrap import bootstrap_mean
    above = bootstrap_mean([np.array(trait) - np.array(u_trait)], np.array(group))
    return {"images": len(recs), "grid": list(z.shape[2:]), "trait_mass": float(np.mean(trait)),
            "garment_mass": float(np.mean(garment)), "uniform_trait_mass": float(np.mean(u_trait)),
            "uniform_garment_mass": float(np.mean(u_garment)), "trait_above_uniform": above,
            "ceiling_trait_mass": float(np.mean(best)),
            "per_image": {"trait_above_uniform": (np.array(trait) - np.array(u_trait)).tolist(), "group": group}}


def gradcam_mass(run, records, root: Path, max_images: int = 64) -> dict[str, Any] | None:
    """The same trait/garment shares for the Grad-CAM of a run's retrieval feature (pixel level)."""
    from .figures import gradcam_maps
    recs = with_masks(records, root, max_images)
    if not recs:
        return None
    _, maps = gradcam_maps(run, [r.path for r in recs])
    trait, garment = [], []
    for r, cam in zip(recs, maps):
        mask = load_mask(root, r.path, cam.shape[0], cam.shape[1])
        w = cam / max(float(cam.sum()), 1e-12)
        trait.append(float((w * (mask == TRAIT)).sum()))
        garment.append(float((w * (mask == GARMENT)).sum()))
    return {"images": len(recs), "trait_mass": float(np.mean(trait)), "garment_mass": float(np.mean(garment))}


@torch.no_grad()
def test_time_features(model, records, transform, batch: int = 128) -> dict[str, np.ndarray]:
    """One eval-mode pass: |g|, |p'|, SIM's share |p' - p| / |p'| (NaN without SIM) and the retrieval feature."""
    from ..data.loading import read_image
    model.eval()
    dev = model.prototypes.device
    cols: dict[str, list] = {"g_norm": [], "p_norm": [], "sim_share": [], "feat": []}
    for i in range(0, len(records), batch):
        x = torch.stack([transform(read_image(r.path)) for r in records[i:i + batch]]).to(dev)
        out = model(x)
        cols["g_norm"].append(out["g"].norm(dim=1).cpu())
        cols["p_norm"].append(out["p"].norm(dim=1).cpu())
        cols["sim_share"].append(out["sim_share"].float().cpu() if "sim_share" in out
                                 else torch.full((len(x),), float("nan")))
        cols["feat"].append(F.normalize(out["feat"].float(), dim=1).cpu())
    return {k: torch.cat(v).numpy() for k, v in cols.items()}


def feature_measurements(model, records, transform, batch: int = 128, feats: dict[str, np.ndarray] | None = None
                         ) -> dict[str, Any]:
    """Scales of the test feature's parts, SIM's share of p', and the clothes information left in the features.

    - ``g_share``: mean |g|^2 / (|g|^2 + |p'|^2), the weight of the GAP half in the raw concat's cosine.
    - ``sim_share``: mean |p' - p| / |p'|, what SIM adds to the projected feature (with a 95% interval over
      resampled identities).
    - ``outfit_probe`` / ``clothes_nn``: ``clothes_info`` (what CAL and SSE are meant to lower); the flat
      ``clothes_nn_within`` / ``clothes_nn_chance`` keys are the nearest-neighbour accuracy and its chance.
    """
    from .bootstrap import bootstrap_mean
    from .clothes_info import clothes_information
    f = feats if feats is not None else test_time_features(model, records, transform, batch)
    pid = np.array([r.pid for r in records])
    cam = np.array([r.camid for r in records])
    clo = np.array([r.clothes for r in records])
    g_n, p_n = f["g_norm"], f["p_norm"]
    out: dict[str, Any] = {"images": len(records), "g_norm": float(g_n.mean()), "p_norm": float(p_n.mean()),
                           "g_share": float((g_n ** 2 / (g_n ** 2 + p_n ** 2)).mean()),
                           "gamma": model.sim.gate_value() if model.sim is not None else None}
    if model.sim is not None:
        ci = bootstrap_mean([f["sim_share"]], pid)
        out.update(sim_share=ci["mean"], sim_share_low=ci["low"], sim_share_high=ci["high"])
    else:
        out["sim_share"] = None
    info = clothes_information(f["feat"], pid, cam, clo)
    out.update(info)
    nn = info["clothes_nn"]
    out.update(clothes_nn_within=nn["accuracy"], clothes_nn_chance=nn["chance"], clothes_nn_images=nn["images"])
    return out


def split_outcomes(model, ds, transform) -> dict[str, Any]:
    """Per-query outcomes on the test split and, where the data has one, the validation split, plus the test
    split's feature measurements: everything a paired comparison of runs needs, from one pass per split."""
    from ..eval.protocols import per_query_outcomes, run_protocols
    f = test_time_features(model, ds.test, transform)
    out: dict[str, Any] = {"features": feature_measurements(model, ds.test, transform, feats=f),
                           "results": run_protocols(ds, f["feat"]), "per_query": per_query_outcomes(ds, f["feat"])}
    val = ds.validation()
    if val is not None:
        fv = test_time_features(model, val.test, transform)["feat"]
        out["results_val"] = run_protocols(val, fv)
        out["per_query_val"] = per_query_outcomes(val, fv)
    return out


def read_synthetic_meta(root: str | Path) -> dict[str, Any] | None:
    p = Path(root) / "synthetic.json"
    return json.loads(p.read_text()) if p.is_file() else None


def measure_run(run, max_images: int = 400) -> dict[str, Any] | None:
    """All measurements for a loaded run on synthetic data (None for other datasets)."""
    from ..data.loading import build_transforms
    meta = read_synthetic_meta(run.cfg.data.root)
    if meta is None or "outfits_worn" not in meta:
        return None
    d = run.cfg.data
    tf = build_transforms(d.height, d.width, d.pixel_mean, d.pixel_std, train=False)
    out: dict[str, Any] = {"prompt_decoding": prompt_decoding(run.model, run.ds, meta)}
    if run.model.sim is not None:
        out["sim_attention"] = sim_attention_mass(run.model, run.ds.test, Path(d.root), tf, max_images)
    out["gradcam"] = gradcam_mass(run, run.ds.test, Path(d.root))
    out.update(split_outcomes(run.model, run.ds, tf))
    return out


def mechanism_figure(rows: dict[str, dict[str, Any]], path: Path) -> Path:
    """Bars per run: decoded identity / clothes accuracy of T_id and of the prototype; attention shares."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    x = np.arange(len(names))
    keys = [("decode_T_id_identity", "T_id: identity traits"), ("decode_prototype_identity", "prototype: identity traits"),
            ("decode_T_id_clothes", "T_id: clothes"), ("decode_prototype_clothes", "prototype: clothes")]
    for i, (k, lab) in enumerate(keys):
        axes[0].bar(x + (i - 1.5) * 0.2, [rows[n].get(k) or 0 for n in names], 0.2, label=lab)
    chance = [rows[n].get("decode_identity_chance") for n in names if rows[n].get("decode_identity_chance")]
    if chance:
        axes[0].axhline(float(np.mean(chance)), color="k", ls=":", lw=1, label="chance (identity)")
    axes[0].set_ylabel("top-1 decoding accuracy (%)")
    axes[0].set_title("decoded prompts vs the generator's truth")
    keys = [("sim_attn_trait", "SIM attention on traits"), ("uniform_trait", "uniform attention on traits"),
            ("sim_attn_garment", "SIM attention on garments"), ("uniform_garment", "uniform attention on garments")]
    for i, (k, lab) in enumerate(keys):
        axes[1].bar(x + (i - 1.5) * 0.2, [rows[n].get(k) or 0 for n in names], 0.2, label=lab)
    axes[1].set_ylabel("share of the attention mass")
    axes[1].set_title("SIM cross-attention (runs with SIM)")
    for i, (k, lab) in enumerate([("gradcam_trait", "Grad-CAM on traits"), ("gradcam_garment", "Grad-CAM on garments")]):
        axes[2].bar(x + (i - 0.5) * 0.3, [rows[n].get(k) or 0 for n in names], 0.3, label=lab)
    axes[2].set_ylabel("share of the Grad-CAM mass")
    axes[2].set_title("Grad-CAM of the retrieval feature (rest: background)")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, dpi=90, format="png"))
    plt.close(fig)
    return path


def flatten(mech: dict[str, Any]) -> dict[str, Any]:
    """The flat keys the demo report and the figure use."""
    c: dict[str, Any] = {}
    pdec = mech.get("prompt_decoding")
    if pdec:
        for which in ("T_id", "prototype"):
            c[f"decode_{which}_identity"] = pdec[which]["identity_accuracy"]
            c[f"decode_{which}_clothes"] = pdec[which]["clothes_accuracy"]
        c["decode_identity_chance"] = pdec["prototype"]["identity_chance"]
        c["decode_clothes_chance"] = pdec["prototype"]["clothes_chance"]
    if mech.get("sim_attention"):
        sa = mech["sim_attention"]
        c["sim_attn_trait"], c["sim_attn_garment"] = sa["trait_mass"], sa["garment_mass"]
        c["uniform_trait"], c["uniform_garment"] = sa["uniform_trait_mass"], sa["uniform_garment_mass"]
        if "ceiling_trait_mass" in sa:
            c["ceiling_trait"] = sa["ceiling_trait_mass"]
    for k, v in (mech.get("features") or {}).items():
        if isinstance(v, dict):  # outfit_probe / clothes_nn: accuracy, interval and chance, not the per-image arrays
            for kk in ("accuracy", "low", "high", "chance"):
                c[f"feat_{k}_{kk}"] = v.get(kk)
        elif k != "images":
            c[f"feat_{k}"] = v
    if mech.get("gradcam"):
        c["gradcam_trait"], c["gradcam_garment"] = mech["gradcam"]["trait_mass"], mech["gradcam"]["garment_mass"]
    return c
