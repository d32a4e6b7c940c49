"""The ``scireid`` command. Each subcommand is a thin shell over a library function."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .cli_checks import (NUMERIC_OPTIONS, OneLineParser, check_numbers, check_output_paths,  # noqa: F401
                         check_strings, option_names)  # (NUMERIC_OPTIONS: re-exported)
from .cli_index import _cluster_args, _cmd_index_add, cmd_index, cmd_index_remove, cmd_search
from .errors import UserError
from .logs import setup_logging as _setup_logging

log = logging.getLogger("scireid")


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
    val = ds.validation()
    n = len(ds.train) + len(ds.test) + (len(val.test) if val is not None else 0)
    for path, why in bad:
        print(f"BAD {path}: {why}")
    print(f"{n} images checked, {len(bad)} bad" if bad else f"{n} images checked, all decode")
    return 1 if bad else 0


def cmd_synth(a) -> int:
    from .data.synthetic import generate_complete

    generate_complete(a.out, ids=a.ids, seed=a.seed, val_ids=a.val_ids, test_ids=a.test_ids)
    print(f"wrote synthetic dataset to {a.out}; read it with: scireid datasets stats synthetic {a.out}")
    return 0


def cmd_train(a) -> int:
    from .config import load_config
    from .engine.trainer import train

    cfg = load_config(a.config, a.overrides, variant=a.variant, backbone=a.backbone)
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

    run_demo(a.out, quick=a.quick, seed=a.seed, overrides=a.overrides, ids=a.ids or (80 if a.quick else 120),
             jobs=a.jobs, test_ids=a.test_ids, val_ids=a.val_ids, n_seeds=a.seeds,
             ablation_seeds=a.ablation_seeds)
    return 0


def cmd_pretrain(a) -> int:
    from .prior.pretrain import pretrain, pretrain_config
    from .prior.zeroshot import format_zero_shot, zero_shot

    if a.eval:
        from .models.backbone import model_config
        size = model_config(a.arch)["vision_cfg"]["image_size"]
        z = zero_shot(a.eval, arch=a.arch, height=size, width=size // 2)
        print(json.dumps(z, indent=2) if a.json else format_zero_shot(z))
        return 0
    ov = list(a.overrides)
    for k in ("images", "epochs", "seed"):
        if getattr(a, k) is not None:
            ov.append(f"{k}={getattr(a, k)}")
    cfg = pretrain_config(ov)
    command = "scireid " + " ".join(a.argv)
    prov = pretrain(a.out, cfg, resume=a.resume, command=command.strip())
    print(format_zero_shot(prov["zero_shot"]))
    print(f"wrote {a.out}/{cfg.arch}.safetensors; use it with model.arch={cfg.arch} model.weights={a.out}/{cfg.arch}.safetensors")
    return 0


def cmd_presets(a) -> int:
    from .config import PRESET_DIR, list_backbones, list_presets, list_variants
    from .models.backbone import list_models
    from .models.weights import list_weights

    print(f"presets (scireid train NAME; files in {PRESET_DIR}): {', '.join(list_presets())}")
    print(f"variants (--variant; {PRESET_DIR / 'variants'}): {', '.join(list_variants())}")
    print(f"backbone recipes (chosen from model.arch, or --backbone; {PRESET_DIR / 'backbones'}): "
          f"{', '.join(list_backbones())}")
    print(f"architectures (model.arch): {', '.join(list_models())}")
    print(f"weights (model.weights, or a file path): {', '.join(list_weights())}")
    return 0


def cmd_embed(a) -> int:
    from .deploy.embed import embed
    from .deploy.inputs import read_inputs

    s = embed(a.model, read_inputs(a.input, a.frames), a.out, batch=a.batch, workers=a.workers, flip=a.flip,
              device=a.device, chunk=a.chunk, dtype="float16" if a.fp16 else "float32")
    print(f"embedded {s['count']} images ({s['dim']}-d, model {s['fingerprint']}); {len(s['skipped'])} skipped")
    for sk in s["skipped"][:20]:
        print(f"  skipped {sk['path']}: {sk['error']}")
    return 0


def cmd_export(a) -> int:
    from .deploy.export import check_parity, export_onnx

    imgs = None
    if a.images:  # decoded before anything is written: a bad --images never leaves a half-checked export behind
        from .deploy.embed import load_image
        from .deploy.inputs import read_input
        items = read_input(a.images)[:64]
        for it in items:
            try:
                load_image(it)
            except Exception as e:
                raise UserError(f"--images: {it.path} cannot be read as an image ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
        imgs = [it.path for it in items]
    if a.static_batch is not None and a.static_batch < 1:
        raise UserError(f"--static-batch {a.static_batch}: expected a batch size >= 1")
    from .deploy.export import CONSUMERS, OPSETS
    if a.opset not in OPSETS:
        raise UserError(f"--opset {a.opset}: expected {OPSETS.start}-{OPSETS.stop - 1} (the graph needs opset "
                        f"{OPSETS.start}'s operators)")
    input_norm = CONSUMERS[a.for_tool]["input_norm"] if a.for_tool else (a.input_norm or "model")
    if a.for_tool and a.input_norm not in (None, input_norm):
        raise UserError(f"--for {a.for_tool} feeds {input_norm}-normalised input; drop --input-norm {a.input_norm}")
    size = None
    if a.input_size:
        try:
            h, w = (int(v) for v in a.input_size.lower().split("x"))
            size = (h, w)
        except ValueError:
            raise UserError(f"--input-size {a.input_size}: expected HxW, e.g. 256x128") from None
    resize = a.consumer_resize or CONSUMERS.get(a.for_tool, {}).get("consumer_resize", "pil")
    info = export_onnx(a.run, a.out, opset=a.opset, static_batch=a.static_batch, fp16=a.fp16, input_norm=input_norm,
                       input_size=size, consumer_resize=resize)
    n = "N" if a.static_batch is None else str(a.static_batch)
    print(f"wrote {info['onnx']}: input images {n} x 3 x {info['preprocess']}; output {n} x {info['dim']} "
          f"L2-normalised; fingerprint {info['fingerprint']}")
    if a.check:
        r = check_parity(a.run, a.out, imgs)
        by_cosine = a.fp16 or r["consumer_preprocessing"]
        tol_ok = r["min_cosine"] >= 0.999 if by_cosine else r["max_abs_diff"] <= 1e-4
        how = (f" (graph fed as the consumer prepares crops: {r['consumer_resize']})"
               if r["consumer_preprocessing"] else "")
        print(f"parity on {r['images']} images{how}: max |diff| {r['max_abs_diff']:.2e}, min cosine "
              f"{r['min_cosine']:.6f}, mean {r['mean_cosine']:.6f} "
              f"({'OK' if tol_ok else 'FAILED'}: {'cosine >= 0.999' if by_cosine else 'max |diff| <= 1e-4'})")
        return 0 if tol_ok else 1
    return 0


def _deploy_args(p) -> None:
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="decoding processes")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--frames", help="frame folder for a MOT detection file (default: ../img1)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="scireid", description="SCI / CLIP-ReID for cloth-changing person re-identification")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected error")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)

    d = sub.add_parser("demo", help="generate synthetic data, train baseline and SCI, write a report")
    d.add_argument("--out", default="scireid_demo")
    d.add_argument("--quick", action="store_true", help="baseline and SCI only, one seed (about 2 min on 2 cores)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--seeds", type=int, default=6, help="training seeds of the baseline and SCI (full demo; default 6: "
                                                        "a 95%% interval of about +-2 points on SCI - baseline)")
    d.add_argument("--ablation-seeds", type=int, default=2, help="training seeds of +SSE and +SIM (full demo; "
                                                                 "default 2, the first of --seeds)")
    d.add_argument("--ids", type=int, help="identities in the synthetic set, half train, half test (default 120; "
                                           "80 with --quick)")
    d.add_argument("--test-ids", type=int, help="test identities (default 2.5 x --ids, --ids with --quick: statistical "
                                                "power at no extra training)")
    d.add_argument("--val-ids", type=int, help="validation identities (default as --test-ids)")
    d.add_argument("--jobs", type=int, default=0, help="runs trained at once, each in its own process "
                                                      "(default: 2 on 2+ cores)")
    d.add_argument("overrides", nargs="*", help="section.key=value applied to every variant")
    d.set_defaults(fn=cmd_demo)

    pt = sub.add_parser("pretrain", help="contrastive image-text pretraining of a small CLIP on captioned synthetic people")
    pt.add_argument("--out", default="runs/prior")
    pt.add_argument("--images", type=int, help="corpus size (default 32000)")
    pt.add_argument("--epochs", type=int, help="default 10")
    pt.add_argument("--seed", type=int, help="corpus and training seed (default 0)")
    pt.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    pt.add_argument("--eval", metavar="FILE", help="only score FILE zero-shot on the held-out set")
    pt.add_argument("--arch", default="synth-clip", help="architecture of --eval FILE")
    pt.add_argument("--json", action="store_true", help="with --eval: JSON output")
    pt.add_argument("overrides", nargs="*", help="key=value: arch, lr, batch_size, height, width, ... (PretrainConfig)")
    pt.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("synth", help="write the synthetic cloth-changing dataset (LTCC layout)")
    s.add_argument("out")
    s.add_argument("--ids", type=int, default=120)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-ids", type=int, help="validation identities in val/ (default max(4, ids // 3))")
    s.add_argument("--test-ids", type=int, help="test identities (default ids - ids // 2; more are drawn from their own "
                                                "stream, so the training images stay the same)")
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
    t.add_argument("--backbone", choices=["rn", "vit"],
                   help="CLIP-ReID recipe layer (configs/backbones); default: from model.arch")
    t.add_argument("--out", help="run directory (run.out)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the text encoder (stage 1) and the image trunk (stage 2)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run (or checkpoint) on its dataset's protocols")
    e.add_argument("run")
    e.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.name=prcc data.root=/data")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("presets", help="list presets, variants, backbone recipes, architectures and weights")
    pr.set_defaults(fn=cmd_presets)

    em = sub.add_parser("embed", help="embed images with a trained run or .onnx file into FEATS.npy + FEATS.json")
    em.add_argument("model", metavar="RUN", help="run directory, checkpoint, or exported .onnx")
    em.add_argument("input", nargs="+", metavar="INPUT",
                    help="folder (recursive), image, text file of paths, CSV manifest, or MOT det file / sequence folder")
    em.add_argument("--out", required=True, metavar="FEATS")
    _deploy_args(em)
    em.add_argument("--flip", action="store_true", help="average with the mirrored image")
    em.add_argument("--fp16", action="store_true", help="store the features as float16 (half the disk)")
    em.add_argument("--chunk", type=int, default=2048, help="images per resumable chunk")
    em.set_defaults(fn=cmd_embed)

    ix = sub.add_parser("index", help="build or extend a faiss gallery index").add_subparsers(dest="icmd", required=True)
    ib = ix.add_parser("build", help="embed INPUT with RUN and index it into the folder INDEX")
    ib.add_argument("model", metavar="RUN")
    ib.add_argument("input", nargs="+", metavar="INPUT")
    ib.add_argument("--out", required=True, dest="index", metavar="INDEX")
    ib.add_argument("--kind", default="exact", choices=["exact", "pca-flat", "ivf", "ivf-pq", "hnsw", "pca-ivf-disk"],
                    help="exact (default), or approximate: pca-flat, ivf, ivf-pq, hnsw (tuned to --recall); "
                         "pca-ivf-disk for galleries larger than RAM (fp16 vectors kept in INDEX/vectors.npy)")
    ib.add_argument("--recall", type=float, default=0.95,
                    help="recall@10 vs exact that an approximate kind is tuned to reach (default 0.95)")
    ib.add_argument("--store", default="fp32", choices=["fp32", "fp16"],
                    help="pca-flat: keep the re-ranking vectors in fp16 (half the memory)")
    ib.add_argument("--engine", default="local", choices=["local", "dask"],
                    help="local: one faiss index in this process (default); dask: --shards shards held by the workers "
                         "of a Dask cluster")
    ib.add_argument("--shards", type=int, default=2, help="--engine dask: number of shards (default 2)")
    _deploy_args(ib)
    _cluster_args(ib, engine=False)
    ib.set_defaults(fn=cmd_index)
    ia = ix.add_parser("add", help="embed INPUT with the index's model and append it")
    ia.add_argument("index", metavar="INDEX")
    ia.add_argument("input", nargs="+", metavar="INPUT")
    ia.add_argument("--model", help="RUN or .onnx (default: the one the index was built with)")
    _deploy_args(ia)
    _cluster_args(ia)
    ia.set_defaults(fn=_cmd_index_add)

    ir = ix.add_parser("remove", help="remove an identity's rows, or listed images, from every part of the index")
    ir.add_argument("index", metavar="INDEX")
    who = ir.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="every row of this identity")
    who.add_argument("--paths", metavar="FILE", help="text file of image paths, one per line, as the index lists them")
    _cluster_args(ir)
    ir.set_defaults(fn=cmd_index_remove)

    se = sub.add_parser("search", help="rank an index's gallery for each query image")
    se.add_argument("index", metavar="INDEX")
    se.add_argument("query", nargs="+", metavar="QUERY", help="images, folders, lists or a CSV manifest")
    se.add_argument("--topk", type=int, default=10)
    se.add_argument("--json", action="store_true")
    se.add_argument("--html", metavar="OUT.html", help="write a self-contained results page")
    se.add_argument("--exclude-same-camera", action="store_true", help="drop results from the query's camera (needs camid)")
    se.add_argument("--cameras", help="only rows from these cameras, e.g. 3,5,7-9")
    se.add_argument("--after", help="only rows at or after this time (a number, or an ISO-8601 date-time)")
    se.add_argument("--before", help="only rows at or before this time")
    se.add_argument("--model", help="RUN or .onnx to embed the queries (default: the index's)")
    se.add_argument("--device")
    se.add_argument("--frames", help=argparse.SUPPRESS)
    _cluster_args(se)
    se.add_argument("--partial", action="store_true",
                    help="sharded index: answer from the shards that respond, naming those that do not")
    se.add_argument("--shard-timeout", type=float, default=60.0, help="seconds each shard may take (default 60)")
    se.set_defaults(fn=cmd_search)

    ex = sub.add_parser("export", help="export the test-time forward to ONNX (with --check: parity with PyTorch)")
    ex.add_argument("run", metavar="RUN")
    ex.add_argument("--format", default="onnx", choices=["onnx"])
    ex.add_argument("--out", required=True, metavar="MODEL.onnx")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--dynamic-batch", action="store_true", help="the default; kept for old command lines")
    ex.add_argument("--input-norm", choices=["model", "imagenet"],
                    help="what the graph takes: our mean/std-normalised RGB (model, the default) or ImageNet-normalised "
                         "RGB")
    ex.add_argument("--for", dest="for_tool", choices=["boxmot"],
                    help="a graph for this tool's ReID backend (boxmot: --input-norm imagenet --consumer-resize "
                         "opencv --input-size 512x256 for a 64x32 or 256x128 model)")
    ex.add_argument("--input-size", metavar="HxW",
                    help="the graph takes HxW and shrinks it to the model's size inside (see --consumer-resize)")
    ex.add_argument("--consumer-resize", choices=["pil", "opencv"],
                    help="how the consumer brings crops to --input-size: pil (the graph shrinks with PIL's bilinear "
                         "weights) or opencv (INTER_LINEAR; the graph's shrink is fitted to undo it). Default: "
                         "opencv with --for, else pil")
    ex.add_argument("--static-batch", type=int, metavar="N",
                    help="fix the batch size at N (for runtimes that need it; scireid pads the last batch)")
    ex.add_argument("--fp16", action="store_true")
    ex.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch; exit 1 if out of tolerance")
    ex.add_argument("--images", metavar="DIR", help="with --check: images to compare on (default: random inputs)")
    ex.set_defaults(fn=cmd_export)

    from .analysis.cli import add_analysis_commands
    add_analysis_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
    except SystemExit as e:  # argparse's --help (0) or its one-line error (2): a return code, as every other path
        return int(e.code or 0)
    if extra:
        args.overrides = list(args.overrides) + extra
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    _setup_logging(args.verbose)
    from .data.loading import ImageReadError
    from .errors import UserError

    try:
        check_numbers(args)
        check_strings(args, option_names(parser, args))
        check_output_paths(args)
        return args.fn(args)
    except (UserError, ImageReadError, FileNotFoundError) as e:
        print(f"scireid: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print("scireid: error: out of memory; use smaller --batch / --chunk / --topk values", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or a case nobody foresaw: one line, the traceback only under --debug
        if args.debug:
            raise
        first = str(e).splitlines()[0][:300] if str(e) else ""
        print(f"scireid: error: unexpected {type(e).__name__}: {first} (this is a bug in scireid or an input it does "
              f"not check; rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
