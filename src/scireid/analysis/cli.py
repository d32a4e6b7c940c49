"""``scireid analyze ...`` and ``scireid report``: thin shells over the analysis functions."""
from __future__ import annotations

import json
from pathlib import Path


def _retrieval(a) -> int:
    from .common import load_run
    from .figures import retrieval_grid
    r = retrieval_grid(load_run(a.run, a.overrides), a.protocol, a.queries, a.topk, worst=a.worst, seed=a.seed,
                       out=Path(a.out) if a.out else None)
    print(f"wrote {r['png']}, {r['csv']}, {r['json']}")
    return 0


def _heatmap(a) -> int:
    from .common import load_run
    from .figures import heatmaps
    r = heatmaps(load_run(a.run, a.overrides), a.ids, seed=a.seed, out=Path(a.out) if a.out else None)
    print("\n".join(f"wrote {f['png']}" for f in r["files"]) or "no test identity has two outfits")
    return 0


def _check_labels(a) -> None:
    if a.labels is not None and len(a.labels) != len(a.runs):
        from ..errors import UserError
        raise UserError(f"--labels: {len(a.labels)} labels for {len(a.runs)} runs; give one label per run")


def _tsne(a) -> int:
    from .common import load_run
    from .figures import tsne
    _check_labels(a)
    runs = [load_run(r, a.overrides) for r in a.runs]
    r = tsne(runs, a.labels, a.ids, stage1=not a.no_stage1, seed=a.seed, out=Path(a.out) if a.out else None)
    print(f"wrote {r['png']} ({', '.join(r['panels'])})")
    return 0


def _efficiency(a) -> int:
    from .common import load_run
    from .tables import efficiency_table, format_efficiency
    run = load_run(a.run, a.overrides)
    t = efficiency_table(run.model.spec, run.device)
    print(json.dumps(t, indent=2) if a.json else format_efficiency(t))
    return 0


def _ablation(a) -> int:
    from .figures import ablation_plot
    _check_labels(a)
    r = ablation_plot(a.runs, Path(a.out), a.labels)
    print(f"wrote {r['png']}" + (f" and {r['grid_png']}" if "grid_png" in r else ""))
    return 0


def _prompts(a) -> int:
    from .common import load_run
    from .tables import format_prompts, prompt_interpretation
    p = prompt_interpretation(load_run(a.run, a.overrides).model)
    print(json.dumps(p, indent=1) if a.json else format_prompts(p))
    return 0


def _report(a) -> int:
    from .report import build_report
    print(f"wrote {build_report(a.run, a.overrides)}")
    return 0


def add_analysis_commands(sub) -> None:
    an = sub.add_parser("analyze", help="figures and tables for a trained run").add_subparsers(dest="acmd", required=True)

    def common(p, many=False):
        if many:
            p.add_argument("runs", nargs="+", help="run directories or checkpoints")
            p.add_argument("--labels", nargs="+")
        else:
            p.add_argument("run", help="run directory or checkpoint")
        p.add_argument("--out", help="output folder (default RUN/analysis/<name>)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, e.g. data.root=/data/ltcc (repeatable)")

    r = an.add_parser("retrieval", help="query + top-k gallery grids (Fig. 9) with a CSV/JSON index")
    common(r)
    r.add_argument("--protocol")
    r.add_argument("--queries", type=int, default=8)
    r.add_argument("--topk", type=int, default=10)
    r.add_argument("--worst", action="store_true", help="the queries with the lowest AP")
    r.set_defaults(fn=_retrieval)
    h = an.add_parser("heatmap", help="Grad-CAM of the retrieval feature, one identity in several outfits (Figs. 5-6)")
    common(h)
    h.add_argument("--ids", type=int, default=4)
    h.set_defaults(fn=_heatmap)
    t = an.add_parser("tsne", help="t-SNE of several runs' features and the stage-1 features (Fig. 4)")
    common(t, many=True)
    t.add_argument("--ids", type=int, default=20)
    t.add_argument("--no-stage1", action="store_true")
    t.set_defaults(fn=_tsne)
    e = an.add_parser("efficiency", help="parameters, GFLOPs and images/s, baseline vs SCI (Table IV)")
    common(e)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_efficiency)
    b = an.add_parser("ablation", help="R-1/mAP bars over runs; lambda1 x lambda2 grid (Figs. 7-8)")
    b.add_argument("runs", nargs="+")
    b.add_argument("--labels", nargs="+")
    b.add_argument("--out", required=True)
    b.set_defaults(fn=_ablation)
    p = an.add_parser("prompts", help="nearest tokens of learned prompts; prototypes vs attribute prompts")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_prompts)
    rep = sub.add_parser("report", help="one self-contained HTML page for a run")
    rep.add_argument("run")
    rep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rep.set_defaults(fn=_report)
