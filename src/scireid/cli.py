"""The ``scireid`` command. Each subcommand is a thin shell over a library function."""
from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("scireid")


def _setup_logging(verbose: bool) -> None:
    # our messages at INFO; other libraries' (open_clip logs to the root logger) only from WARNING up
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("scireid").setLevel(logging.DEBUG if verbose else logging.INFO)


def cmd_stats(a) -> int:
    from .data.datasets import build_dataset
    from .data.inspect import dataset_stats, format_stats

    st = dataset_stats(build_dataset(a.name, a.root))
    print(json.dumps(st, indent=2) if a.json else format_stats(st))
    return 0


def cmd_check(a) -> int:
    from .data.datasets import build_dataset
    from .data.inspect import check_dataset

    ds = build_dataset(a.name, a.root, lenient=True)
    bad = check_dataset(ds, progress=True)
    n = len(ds.train) + len(ds.test)
    for path, why in bad:
        print(f"BAD {path}: {why}")
    print(f"{n} images checked, {len(bad)} bad" if bad else f"{n} images checked, all decode")
    return 1 if bad else 0


def cmd_synth(a) -> int:
    from .data.synthetic import generate

    generate(a.out, ids=a.ids, seed=a.seed, progress=True)
    print(f"wrote synthetic dataset to {a.out}; read it with: scireid datasets stats synthetic {a.out}")
    return 0


def cmd_train(a) -> int:
    from .config import load_config
    from .engine.trainer import train

    cfg = load_config(a.config, a.overrides, variant=a.variant)
    if a.out:
        cfg.run.out = a.out
    if a.compile:
        cfg.run.compile = True
    train(cfg, stage=a.stage, resume=a.resume)
    return 0


def cmd_eval(a) -> int:
    from .engine.evaluation import evaluate_run
    from .eval.protocols import format_table

    res = evaluate_run(a.run, a.overrides)
    print(json.dumps(res, indent=2) if a.json else format_table(res, f"{a.run}"))
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(a.out, quick=a.quick, seed=a.seed, overrides=a.overrides, ids=a.ids)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scireid", description="SCI / CLIP-ReID for cloth-changing person re-identification")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="generate synthetic data, train baseline and SCI, write a report")
    d.add_argument("--out", default="scireid_demo")
    d.add_argument("--quick", action="store_true", help="baseline and SCI only, one seed (< 5 min on 2 cores)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--ids", type=int, default=120, help="identities in the synthetic set (half train, half test)")
    d.add_argument("overrides", nargs="*", help="section.key=value applied to every variant")
    d.set_defaults(fn=cmd_demo)

    s = sub.add_parser("synth", help="write the synthetic cloth-changing dataset (LTCC layout)")
    s.add_argument("out")
    s.add_argument("--ids", type=int, default=120)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_synth)

    ds = sub.add_parser("datasets", help="inspect a dataset").add_subparsers(dest="dcmd", required=True)
    st = ds.add_parser("stats", help="ids / images / clothes / cameras per split, query / gallery per protocol")
    st.add_argument("name")
    st.add_argument("root")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_stats)
    ck = ds.add_parser("check", help="decode every image, list every bad file")
    ck.add_argument("name")
    ck.add_argument("root")
    ck.set_defaults(fn=cmd_check)

    t = sub.add_parser("train", help="train stage 1 and/or stage 2")
    t.add_argument("config", help="preset name (ltcc, prcc, ...) or YAML path")
    t.add_argument("overrides", nargs="*", help="section.key=value")
    t.add_argument("--stage", choices=["1", "2", "all"], default="all")
    t.add_argument("--variant", help="baseline | sse | sim | full | self_attention (configs/variants)")
    t.add_argument("--out", help="run directory (run.out)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    t.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run (or checkpoint) on its dataset's protocols")
    e.add_argument("run")
    e.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.name=prcc data.root=/data")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)

    from .analysis.cli import add_analysis_commands
    add_analysis_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    _setup_logging(args.verbose)
    from .data.loading import ImageReadError
    from .errors import UserError

    try:
        return args.fn(args)
    except (UserError, ImageReadError, FileNotFoundError) as e:
        print(f"scireid: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
