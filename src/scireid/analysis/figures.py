"""The paper's figures for any run: retrieval grids (Fig. 9), Grad-CAM heatmaps (Figs. 5-6),
t-SNE (Fig. 4) and ablation / parameter plots (Figs. 7-8)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.loading import read_image
from ..durable import atomic_write, atomic_write_json, atomic_write_text
from ..eval.metrics import per_query_ap, ranked_gallery
from .common import LoadedRun, protocol_arrays

TILE = (64, 128)  # width, height of one image in a grid
GREEN, RED, BLUE = (40, 170, 60), (210, 40, 40), (40, 90, 220)


def _tile(path: str, border, label: str = "") -> Image.Image:
    im = read_image(path).resize(TILE, Image.BICUBIC)
    canvas = Image.new("RGB", (TILE[0] + 8, TILE[1] + 8), border)
    canvas.paste(im, (4, 4))
    if label:
        d = ImageDraw.Draw(canvas)
        d.rectangle((4, TILE[1] - 8, 4 + 7 * len(label), TILE[1] + 4), fill=(255, 255, 255))
        d.text((5, TILE[1] - 8), label, fill=(0, 0, 0))
    return canvas


def retrieval_grid(run: LoadedRun, protocol: str | None = None, num_queries: int = 8, topk: int = 10,
                   worst: bool = False, query_indices: Sequence[int] | None = None, seed: int = 0,
                   out: Path | None = None) -> dict[str, Any]:
    """Query + top-k gallery per row; green/red border = right/wrong identity; label S/C = same/changed
    clothes (and rank). Writes the PNG and an index (CSV and JSON) beside it."""
    ds = run.ds
    protocol = protocol or ds.protocols[-1].name
    p, pids, cams, clo = protocol_arrays(ds, protocol)
    feats = torch.nn.functional.normalize(run.test_features(), dim=1)
    qf, gf = feats[p.query], feats[p.gallery]
    dist = (1 - qf @ gf.T).numpy()
    qp, gp, qc, gc, qclo, gclo = pids[p.query], pids[p.gallery], cams[p.query], cams[p.gallery], clo[p.query], clo[p.gallery]
    ap = per_query_ap(dist, qp, gp, qc, gc, qclo, gclo, mode=p.mode)
    if query_indices is not None:
        chosen = list(query_indices)
    elif worst:
        valid = np.flatnonzero(~np.isnan(ap))
        chosen = valid[np.argsort(ap[valid], kind="stable")][:num_queries].tolist()
    else:
        chosen = sorted(np.random.default_rng(seed).choice(len(qp), size=min(num_queries, len(qp)), replace=False).tolist())
    out = out or run.out_dir("retrieval")
    rows, index = [], []
    for qi in chosen:
        ranked = ranked_gallery(dist[qi], qp[qi], qc[qi], qclo[qi], gp, gc, gclo, p.mode)[:topk]
        q_rec = ds.test[p.query[qi]]
        tiles = [_tile(q_rec.path, BLUE, "Q")]
        gallery = []
        for r, gi in enumerate(ranked):
            g_rec = ds.test[p.gallery[gi]]
            same_id, same_clo = bool(gp[gi] == qp[qi]), bool(gclo[gi] == qclo[qi] and gp[gi] == qp[qi])
            tiles.append(_tile(g_rec.path, GREEN if same_id else RED, f"{r + 1}{'S' if same_clo else 'C' if same_id else ''}"))
            gallery.append({"rank": r + 1, "path": g_rec.path, "distance": float(dist[qi, gi]), "same_id": same_id,
                            "same_clothes": same_clo})
        row = Image.new("RGB", (len(tiles) * (TILE[0] + 8) + 8, TILE[1] + 8), (255, 255, 255))
        for k, t in enumerate(tiles):
            row.paste(t, (k * (TILE[0] + 8) + (8 if k else 0), 0))
        rows.append(row)
        index.append({"query": q_rec.path, "query_index": int(qi), "AP": None if np.isnan(ap[qi]) else float(ap[qi]),
                      "gallery": gallery})
    width = max(r.width for r in rows) if rows else 1
    grid = Image.new("RGB", (width, sum(r.height for r in rows) or 1), (255, 255, 255))
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    name = f"retrieval_{protocol}{'_worst' if worst else ''}"
    atomic_write(out / f"{name}.png", lambda t: grid.save(t, format="PNG"))
    atomic_write_json(out / f"{name}.json", {"protocol": protocol, "mode": p.mode, "queries": index}, indent=1)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["query", "rank", "gallery", "distance", "same_id", "same_clothes"])
    for q in index:
        for g in q["gallery"]:
            w.writerow([q["query"], g["rank"], g["path"], f"{g['distance']:.6f}", int(g["same_id"]), int(g["same_clothes"])])
    atomic_write_text(out / f"{name}.csv", buf.getvalue())
    return {"png": out / f"{name}.png", "csv": out / f"{name}.csv", "json": out / f"{name}.json", "queries": index}


# ------------------------------------------------------------------ Grad-CAM
class _Embed(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["feat"]


class SimilarityTarget:
    """Grad-CAM target: cosine similarity of the retrieval feature to a reference feature."""

    def __init__(self, ref: torch.Tensor):
        self.ref = ref

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(output, self.ref.to(output.device), dim=0)


def gradcam_maps(run: LoadedRun, paths: Sequence[str], refs: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images in [0,1] at the input size, CAMs in [0,1]) for each path; target: similarity to ``refs``
    (default: each image's own feature)."""
    from pytorch_grad_cam import GradCAM

    from ..data.loading import build_transforms
    m = run.model.eval()
    d = run.cfg.data
    tf = build_transforms(m.spec.height, m.spec.width, d.pixel_mean, d.pixel_std, train=False)
    x = torch.stack([tf(read_image(p)) for p in paths]).to(run.device)
    with torch.no_grad():
        own = m(x)["feat"]
    refs = own if refs is None else refs
    v = m.visual.visual
    if m.visual.resnet:
        layer, reshape = v.layer4[-1], None
    else:
        layer = v.transformer.resblocks[-1]
        grid = m.visual.grid

        def reshape(t):
            return t[:, 1:].reshape(t.shape[0], grid[0], grid[1], t.shape[2]).permute(0, 3, 1, 2)
    with GradCAM(model=_Embed(m), target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=[SimilarityTarget(r) for r in refs])
    mean = torch.tensor(d.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(d.pixel_std).view(1, 3, 1, 1)
    imgs = (x.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return imgs, maps


def heatmaps(run: LoadedRun, num_ids: int = 4, max_outfits: int = 4, seed: int = 0, out: Path | None = None) -> dict:
    """Per identity with several outfits in the test set: originals (top) and Grad-CAM overlays (bottom)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    ds = run.ds
    by_id: dict[int, dict[int, str]] = {}
    for r in ds.test:
        by_id.setdefault(r.pid, {}).setdefault(r.clothes, r.path)
    ids = sorted(p for p, outfits in by_id.items() if len(outfits) >= 2)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(ids, size=min(num_ids, len(ids)), replace=False).tolist()) if ids else []
    out = out or run.out_dir("heatmaps")
    files = []
    for pid in chosen:
        paths = list(by_id[pid].values())[:max_outfits]
        imgs, maps = gradcam_maps(run, paths)
        h, w = imgs.shape[1:3]
        panel = Image.new("RGB", (w * len(paths), h * 2), (255, 255, 255))
        for k, (im, cm) in enumerate(zip(imgs, maps)):
            panel.paste(Image.fromarray((im * 255).astype(np.uint8)), (k * w, 0))
            panel.paste(Image.fromarray(show_cam_on_image(im.astype(np.float32), cm, use_rgb=True)), (k * w, h))
        path = out / f"heatmap_id{pid}.png"
        atomic_write(path, lambda t, panel=panel: panel.save(t, format="PNG"))
        files.append({"pid": pid, "png": path, "images": paths})
    return {"files": files}


# ------------------------------------------------------------------ t-SNE
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _stage1_features(run: LoadedRun, records) -> torch.Tensor:
    """The frozen CLIP image features stage 1 learns prompts against (the encoder before stage 2)."""
    from ..data.loading import build_transforms
    from ..engine.checkpoint import load_weights
    from ..engine.distributed import DistContext
    from ..engine.features import extract
    from ..models.sci import SCIModel
    run_dir = run.ckpt.parent
    s1 = run_dir / "stage1.safetensors"
    m = SCIModel(run.model.spec).to(run.device).eval()
    load_weights(s1, m)
    d = run.cfg.data
    tf = build_transforms(m.spec.height, m.spec.width, d.pixel_mean, d.pixel_std, train=False)
    return extract(lambda x: m.visual(x)["p"], records, tf, DistContext(device=run.device), amp=False)


def tsne(runs: Sequence[LoadedRun], labels: Sequence[str] | None = None, num_ids: int = 20, stage1: bool = True,
         seed: int = 0, out: Path | None = None) -> dict:
    """One panel per run (stage-2 test features) plus the first run's stage-1 image features."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    base = runs[0]
    ds = base.ds
    ids = sorted({r.pid for r in ds.test})
    ids = sorted(np.random.default_rng(seed).choice(ids, size=min(num_ids, len(ids)), replace=False).tolist())
    sel = [i for i, r in enumerate(ds.test) if r.pid in set(ids)]
    recs = [ds.test[i] for i in sel]
    panels = [(labels[k] if labels else f"{r.path.name or r.path} (stage 2)", r.test_features()[sel]) for k, r in enumerate(runs)]
    if stage1 and (base.ckpt.parent / "stage1.safetensors").exists():
        panels.append(("stage-1 image features (frozen CLIP)", _stage1_features(base, recs)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    outfit_no = {}
    for r in recs:
        outfit_no.setdefault(r.pid, {}).setdefault(r.clothes, len(outfit_no.get(r.pid, {})))
    coords = {}
    for ax, (title, f) in zip(axes[0], panels):
        f = torch.nn.functional.normalize(f.float(), dim=1).numpy()
        xy = TSNE(n_components=2, perplexity=min(30, max(2, len(f) // 4)), init="pca", random_state=seed).fit_transform(f)
        coords[title] = xy.tolist()
        for k, pid in enumerate(ids):
            for c, no in outfit_no.get(pid, {}).items():
                m = np.array([r.pid == pid and r.clothes == c for r in recs])
                ax.scatter(xy[m, 0], xy[m, 1], s=14, color=cmap(k % 20), marker=MARKERS[no % len(MARKERS)], alpha=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("t-SNE: colour = identity, marker = outfit", fontsize=10)
    fig.tight_layout()
    out = out or base.out_dir("tsne")
    path = out / "tsne.png"
    atomic_write(path, lambda t: fig.savefig(t, dpi=90, format="png"))
    plt.close(fig)
    atomic_write_json(out / "tsne.json", {"ids": ids, "paths": [r.path for r in recs], "panels": coords}, indent=None)
    return {"png": path, "panels": [t for t, _ in panels], "num_points": len(recs)}


# ------------------------------------------------------------------ ablation / parameter plots
def ablation_plot(run_dirs: Sequence[str | Path], out: Path, labels: Sequence[str] | None = None) -> dict:
    """Bars of R-1 / mAP per protocol over runs; with a lambda1 x lambda2 sweep, also a grid heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    runs = []
    for d in run_dirs:
        d = Path(d)
        res_path = d / "results.json"
        if not res_path.is_file():
            from ..errors import UserError
            raise UserError(f"{res_path}: missing; ablation plots need finished runs (scireid train ... --out {d})")
        from ..io_utils import read_json
        res = read_json(res_path, f"continue the run with: scireid train ... --resume --out {d}")
        runs.append((d, res["last"], yaml.safe_load((d / "config.yaml").read_text())))
    if labels is None:  # label each run by the config keys that differ between runs
        keys = sorted({f"{s}.{k}" for _, _, c in runs for s in c for k in c[s] if s != "run" and
                       len({json.dumps(c2[s][k]) for _, _, c2 in runs}) > 1})
        labels = [", ".join(f"{k.split('.')[1]}={c[k.split('.')[0]][k.split('.')[1]]}" for k in keys) or d.name
                  for d, _, c in runs]
    protos = list(runs[0][1])
    fig, axes = plt.subplots(1, 2, figsize=(6 + len(runs), 4))
    width = 0.8 / len(runs)
    for k, ((d, res, _), lab) in enumerate(zip(runs, labels)):
        for ax, metric in zip(axes, ("R-1", "mAP")):
            ax.bar(np.arange(len(protos)) + k * width, [res[p][metric] for p in protos], width, label=lab)
    for ax, metric in zip(axes, ("R-1", "mAP")):
        ax.set_xticks(np.arange(len(protos)) + 0.4 - width / 2)
        ax.set_xticklabels(protos)
        ax.set_ylabel(f"{metric} (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "ablation.png", lambda t: fig.savefig(t, dpi=90, format="png"))
    plt.close(fig)
    result = {"png": out / "ablation.png", "labels": list(labels)}
    lam = [(c["stage1"]["lambda1"], c["stage1"]["lambda2"], res) for _, res, c in runs]
    l1s, l2s = sorted({a for a, _, _ in lam}), sorted({b for _, b, _ in lam})
    if len(l1s) > 1 and len(l2s) > 1:
        proto = "cloth-changing" if "cloth-changing" in protos else protos[0]
        grid = np.full((len(l1s), len(l2s)), np.nan)
        for a, b, res in lam:
            grid[l1s.index(a), l2s.index(b)] = res[proto]["R-1"]
        fig, ax = plt.subplots(figsize=(4, 3.5))
        im = ax.imshow(grid, cmap="viridis")
        ax.set_xticks(range(len(l2s)))
        ax.set_xticklabels(l2s)
        ax.set_yticks(range(len(l1s)))
        ax.set_yticklabels(l1s)
        ax.set_xlabel("lambda2")
        ax.set_ylabel("lambda1")
        ax.set_title(f"{proto} R-1")
        fig.colorbar(im)
        fig.tight_layout()
        atomic_write(out / "lambda_grid.png", lambda t: fig.savefig(t, dpi=90, format="png"))
        plt.close(fig)
        result["grid_png"] = out / "lambda_grid.png"
    return result
