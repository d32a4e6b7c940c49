"""``scireid report RUN_DIR``: one self-contained HTML page (images inlined, no network)."""
from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

from ..durable import atomic_write, atomic_write_text
from .common import LoadedRun, load_run

log = logging.getLogger("scireid")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _table(rows: list[list[Any]], head: list[str]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def training_curves(run_dir: Path, out: Path) -> Path | None:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.engine import read_metrics
    recs = [r for r in read_metrics(p) if "stage" in r and "epoch" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    s1 = [r for r in recs if r["stage"] == "stage1"]
    s2 = [r for r in recs if r["stage"] == "stage2"]
    for k in ("i2t", "t2i", "sse"):
        if s1 and k in s1[0]:
            axes[0].plot([r["epoch"] for r in s1], [r[k] for r in s1], label=k)
    for k in ("id", "tri", "i2t", "cal"):
        pts = [(r["epoch"], r[k]) for r in s2 if k in r]
        if pts:
            axes[1].plot(*zip(*pts), label=k)
    ev = [(r["epoch"], r["eval"]) for r in s2 if "eval" in r]
    for proto in (ev[0][1] if ev else {}):
        axes[2].plot([e for e, _ in ev], [x[proto]["R-1"] for _, x in ev], "o-", label=f"{proto} R-1")
        axes[2].plot([e for e, _ in ev], [x[proto]["mAP"] for _, x in ev], "s--", label=f"{proto} mAP")
    return save_epoch_figure(fig, axes, ("stage-1 losses", "stage-2 losses", "evaluation (%)"), out / "curves.png")


def save_epoch_figure(fig, axes, titles, path: Path, dpi: int = 80) -> Path:
    """Title, epoch axis and legend on each panel, then write and close the figure."""
    import matplotlib.pyplot as plt

    for ax, t in zip(axes, titles):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, dpi=dpi, format=Path(path).suffix[1:] or "png"))
    plt.close(fig)
    return path


def build_report(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), num_queries: int = 6,
                 topk: int = 8, device: str | None = None) -> Path:
    from .figures import heatmaps, retrieval_grid, tsne
    from .tables import efficiency_table, format_efficiency, format_prompts, prompt_interpretation

    run: LoadedRun = load_run(run_dir, overrides, device)
    rd = run.ckpt.parent
    out = run.out_dir("report")
    parts = [f"<h1>scireid run report</h1><p>Run <code>{html.escape(str(rd))}</code>, checkpoint "
             f"<code>{html.escape(run.ckpt.name)}</code>, dataset <b>{html.escape(run.ds.name)}</b>, model "
             f"<b>{html.escape(run.model.spec.arch)}</b> (SSE={run.model.spec.sse}, SIM={run.model.spec.sim}, "
             f"CAL={run.cfg.stage2.cal}).</p>"]
    res_path = rd / "results.json"
    if res_path.exists():
        from ..io_utils import read_json
        res = read_json(res_path, f"continue the run with: scireid train ... --resume --out {rd}")
        cols = ["R-1", "R-5", "R-10", "R-20", "mAP", "mINP"]
        parts.append("<h2>Metrics (last epoch)</h2>" + _table(
            [[p] + [f"{r[c]:.1f}" for c in cols] + [r["num_valid"]] for p, r in res["last"].items()],
            ["protocol"] + cols + ["valid queries"]))
        if res.get("best"):
            b = res["best"]
            split = "validation" if b.get("split") == "val" else "test (no validation split: a test-selected figure)"
            parts.append(f"<p>Best checkpoint: epoch {b['epoch']}, by {html.escape(split)} {html.escape(b['protocol'])} "
                         f"R-1 = {b['score']:.1f}.</p>")
    curves = training_curves(rd, out)
    if curves:
        parts.append("<h2>Training curves</h2>" + _img(curves, "losses and evaluation per epoch"))
    parts.append("<h2>Retrieval (green: right identity, red: wrong; S/C: same/changed clothes)</h2>")
    for p in run.ds.protocols:
        for worst in (False, True):
            r = retrieval_grid(run, p.name, num_queries=num_queries, topk=topk, worst=worst, out=out)
            parts.append(_img(r["png"], f"{p.name}: {'worst queries by AP' if worst else 'random queries'}"))
    parts.append("<h2>Grad-CAM of the retrieval feature (same identity, different outfits)</h2>")
    for f in heatmaps(run, num_ids=3, out=out)["files"]:
        parts.append(_img(f["png"], f"identity {f['pid']}: images (top), Grad-CAM (bottom)"))
    parts.append("<h2>t-SNE</h2>" + _img(tsne([run], ["stage-2 features"], num_ids=min(20, len({r.pid for r in run.ds.test})),
                                              out=out)["png"], "t-SNE of test features"))
    eff = efficiency_table(run.model.spec, run.device)
    parts.append("<h2>Efficiency</h2><pre>" + html.escape(format_efficiency(eff)) + "</pre>")
    parts.append("<h2>Prompt interpretation</h2><pre>" + html.escape(format_prompts(prompt_interpretation(run.model))) + "</pre>")
    from .mechanism import flatten, measure_run, mechanism_figure
    mech = measure_run(run)
    if mech:
        flat = flatten(mech)
        rows = [[k, f"{v:.3f}" if isinstance(v, float) else v] for k, v in flat.items()]
        parts.append("<h2>Mechanism, measured against the generator's truth</h2>"
                     "<p>Prompt decoding: top-1 accuracy (%) of attribute phrases ranked by cosine to each identity's "
                     "T_id and stage-2 prototype. Attention: share of SIM's cross-attention and of Grad-CAM on "
                     "identity-trait vs garment pixels.</p>"
                     + _img(mechanism_figure({rd.name: flat}, out / "mechanism.png"), "decoding and attention shares")
                     + _table(rows, ["measurement", "value"]))
    cfg_path = rd / "config.yaml"
    if cfg_path.exists():
        parts.append("<h2>Resolved config</h2><pre>" + html.escape(cfg_path.read_text()) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}img{max-width:100%}"
             "figure{margin:0.5em 0}pre{background:#f4f4f4;padding:0.5em;overflow-x:auto}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>scireid report</title><style>{style}</style></head>" \
           f"<body>{''.join(parts)}</body></html>"
    path = atomic_write_text(rd / "report.html", page)
    log.info("report: %s", path)
    return path
