"""The ``scireid`` command. Each subcommand is a thin shell over a library function."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .cli_checks import NUMERIC_OPTIONS, OneLineParser, check_numbers, check_output_paths  # noqa: F401 (NUMERIC_OPTIONS: re-exported)
from .errors import UserError

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
             jobs=a.jobs, test_ids=a.test_ids, val_ids=a.val_ids)
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
              device=a.device, chunk=a.chunk)
    print(f"embedded {s['count']} images ({s['dim']}-d, model {s['fingerprint']}); {len(s['skipped'])} skipped")
    for sk in s["skipped"][:20]:
        print(f"  skipped {sk['path']}: {sk['error']}")
    return 0


def _embed_for_index(a, items, out_feats, backend=None):
    from .deploy.embed import embed, load_features
    s = embed(a.model, items, out_feats, batch=a.batch, workers=a.workers, device=a.device, backend=backend)
    feats, side = load_features(out_feats)  # memory-mapped: the index holds the only copy in RAM
    return feats, side, s


def cmd_index(a) -> int:
    """build / add under the index folder's lock: two writers never interleave, and every check that can
    refuse the job (options, folder, the model of an existing index) runs before anything is embedded."""
    import tempfile
    from pathlib import Path

    from .deploy.index import Index, check_build_options
    from .engine.rundir import RunLock, check_out_dir
    out = Path(a.index)
    if a.icmd == "build":
        check_build_options(a.kind, a.recall, a.store)
        if Index.exists(out):
            raise UserError(f"{out} already holds an index; use 'scireid index add' or another folder")
        if out.is_dir():  # a build killed before its first switch: its unswitched version is removed, not refused
            from .deploy.index import clean_index_leftovers
            with RunLock(out):
                clean_index_leftovers(out, unswitched=True)
        check_out_dir(out, marker=("CURRENT", "index.json"))
    elif not Index.exists(out):
        raise UserError(f"{out}: no index there to add to; build one with 'scireid index build'")
    with RunLock(out):
        from .deploy.index import clean_index_leftovers
        clean_index_leftovers(out)  # what a killed build / add left: its embedding folder, a half-written switch
        from .deploy.backend import check_fingerprint, open_backend
        be = open_backend(a.model, a.device)  # loaded once: checked against the index, then used to embed
        from .deploy.embed import job_key
        from .deploy.inputs import read_inputs
        items = read_inputs(a.input, a.frames)
        job = job_key(items, be.fingerprint, False, 0)  # what this command adds: the same inputs are never added twice
        if a.icmd == "add":
            idx = Index.load(out)
            check_fingerprint(be.fingerprint, idx.fingerprint, f"index {out}")
            if job in idx.params.get("jobs", []):
                raise UserError(f"{out}: these inputs were already added (an earlier add finished, perhaps just before "
                                f"a kill); nothing to do")
        with tempfile.TemporaryDirectory(dir=out, prefix=".embed.", suffix=".tmp") as tmp:  # inside: cleaned with it
            feats, side, s = _embed_for_index(a, items, Path(tmp) / "feats.npy", be)
            if a.icmd == "build":
                idx = Index.build(feats, side["rows"], side["fingerprint"], kind=a.kind, model=str(a.model),
                                  recall=a.recall, store=a.store)
            else:
                idx.add(feats, side["rows"], side["fingerprint"])
            idx.params["jobs"] = [*idx.params.get("jobs", []), job]
            idx.save(out)
    rec = idx.params.get("recall@10_vs_exact")
    knobs = ", ".join(f"{k}={v}" for k, v in idx.settings.items())
    print(f"{out}: {len(idx)} vectors ({idx.kind}{' ' + knobs if knobs else ''}, {idx.dim}-d, model {idx.fingerprint})"
          + (f"; recall@10 vs exact {rec:.3f} ({idx.params.get('calibration', 'held-out rows')})" if rec is not None
             else "") + (f"; scores are {idx.params['scores']}" if "scores" in idx.params else "")
          + f"; {len(s['skipped'])} images skipped")
    return 0


def cmd_search(a) -> int:
    from pathlib import Path

    import numpy as np

    from .deploy.backend import check_fingerprint, embed_arrays, open_backend
    from .deploy.embed import load_image
    from .deploy.html import write_results_html
    from .deploy.index import Index, results_table
    from .deploy.inputs import read_inputs

    from .deploy.filters import RowFilter, parse_cameras
    rf = RowFilter(parse_cameras(a.cameras) if a.cameras else None, a.after, a.before)
    rf.check()  # before the model is loaded
    idx = Index.load(a.index)
    model = a.model or idx.model
    be = open_backend(model, a.device)
    check_fingerprint(be.fingerprint, idx.fingerprint, f"index {a.index}")
    items = read_inputs(a.query, a.frames)
    if a.exclude_same_camera:  # never a silent no-op: every query needs a camera, the gallery is checked too
        unknown = [it.path for it in items if it.camid < 0]
        if unknown:
            raise UserError(f"--exclude-same-camera: no camera known for query {unknown[0]} ({len(unknown)} of "
                            f"{len(items)}); name files by a dataset scheme (e.g. LTCC <pid>_<clothes>_c<cam>_...) or "
                            f"give a CSV manifest with a camid column")
        live = [r for r in idx.rows if r is not None]
        n_unknown = sum(1 for r in live if r.get("camid", -1) < 0)
        if n_unknown == len(live):
            raise UserError(f"--exclude-same-camera: the index {a.index} knows no camera for any of its rows; rebuild "
                            f"it from files named by a dataset scheme or a CSV manifest with a camid column")
        if n_unknown:
            log.warning("--exclude-same-camera: %d of %d gallery rows have no camera and are always kept", n_unknown,
                        len(live))
    arrays, kept = [], []
    for it in items:
        try:
            arrays.append(be.pre(load_image(it)))
            kept.append(it)
        except Exception as e:
            print(f"skipped query {it.path}: {type(e).__name__}: {e}", file=sys.stderr)
    if not kept:
        raise UserError("no readable query image")
    q = np.concatenate([embed_arrays(be, arrays[i:i + 64]) for i in range(0, len(arrays), 64)])
    cams = [it.camid for it in kept] if a.exclude_same_camera else None
    scores, ids = idx.search(q, a.topk, exclude_camids=cams, keep=rf.mask(idx.rows) if rf.active else None)
    res = results_table(idx, kept, scores, ids)
    if a.html:
        write_results_html(res, a.html, title=f"scireid search in {Path(a.index).name}")
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for r in res:
            print(f"query {r['query']['path']}")
            for h in r["results"]:
                meta = " ".join(f"{k}={h[k]}" for k in ("pid", "camid", "clothes_id") if h.get(k, -1) >= 0)
                mark = {True: " [same id]", False: " [other id]", None: ""}[h["same_identity"]]
                print(f"  {h['rank']:>3}  {h['score']:.4f}  {h['path']}  {meta}{mark}")
    if a.html:
        print(f"wrote {a.html}", file=sys.stderr if a.json else sys.stdout)  # --json output stays pure JSON
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


def cmd_index_remove(a) -> int:
    """Under the index's lock, like add; the removal lands in one switch of the index's version."""
    from pathlib import Path

    import numpy as np

    from .deploy.index import Index, clean_index_leftovers
    from .engine.rundir import RunLock
    out = Path(a.index)
    if not Index.exists(out):
        raise UserError(f"{out}: no index there to remove from")
    paths = None
    if a.paths:
        from .deploy.inputs import read_text
        paths = {ln.strip() for ln in read_text(Path(a.paths)).splitlines() if ln.strip()}
        if not paths:
            raise UserError(f"--paths {a.paths}: no paths in the file")
    with RunLock(out):
        clean_index_leftovers(out)
        idx = Index.load(out)
        hit = [i for i, r in enumerate(idx.rows) if r is not None and (
            (a.pid is not None and r.get("pid", -1) == a.pid) or (paths is not None and r["path"] in paths))]
        if not hit:
            what = f"identity {a.pid}" if a.pid is not None else f"any path listed in {a.paths}"
            raise UserError(f"{out}: no row of {what}; nothing removed")
        n = idx.remove(np.array(hit))
        idx.save(out)
    rec = idx.params.get("recall@10_vs_exact")
    print(f"{out}: removed {n} rows, {len(idx)} left" + (f"; recall@10 vs exact re-measured: {rec:.3f}"
                                                          if rec is not None else ""))
    return 0


def _cmd_index_add(a) -> int:
    from .deploy.index import Index
    if a.model is None:
        a.model = Index.load(a.index).model
    a.icmd = "add"
    return cmd_index(a)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="scireid", description="SCI / CLIP-ReID for cloth-changing person re-identification")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected error")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)

    d = sub.add_parser("demo", help="generate synthetic data, train baseline and SCI, write a report")
    d.add_argument("--out", default="scireid_demo")
    d.add_argument("--quick", action="store_true", help="baseline and SCI only, one seed (< 5 min on 2 cores)")
    d.add_argument("--seed", type=int, default=0)
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
    pt.add_argument("--images", type=int, help="corpus size (default 16000)")
    pt.add_argument("--epochs", type=int, help="default 12")
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
    t.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
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
    em.add_argument("--chunk", type=int, default=2048, help="images per resumable chunk")
    em.set_defaults(fn=cmd_embed)

    ix = sub.add_parser("index", help="build or extend a faiss gallery index").add_subparsers(dest="icmd", required=True)
    ib = ix.add_parser("build", help="embed INPUT with RUN and index it into the folder INDEX")
    ib.add_argument("model", metavar="RUN")
    ib.add_argument("input", nargs="+", metavar="INPUT")
    ib.add_argument("--out", required=True, dest="index", metavar="INDEX")
    ib.add_argument("--kind", default="exact", choices=["exact", "pca-flat", "ivf", "ivf-pq", "hnsw"],
                    help="exact (default), or approximate: pca-flat, ivf, ivf-pq, hnsw (tuned to --recall)")
    ib.add_argument("--recall", type=float, default=0.95,
                    help="recall@10 vs exact that an approximate kind is tuned to reach (default 0.95)")
    ib.add_argument("--store", default="fp32", choices=["fp32", "fp16"],
                    help="pca-flat: keep the re-ranking vectors in fp16 (half the memory)")
    _deploy_args(ib)
    ib.set_defaults(fn=cmd_index)
    ia = ix.add_parser("add", help="embed INPUT with the index's model and append it")
    ia.add_argument("index", metavar="INDEX")
    ia.add_argument("input", nargs="+", metavar="INPUT")
    ia.add_argument("--model", help="RUN or .onnx (default: the one the index was built with)")
    _deploy_args(ia)
    ia.set_defaults(fn=_cmd_index_add)

    ir = ix.add_parser("remove", help="remove an identity's rows, or listed images, from every part of the index")
    ir.add_argument("index", metavar="INDEX")
    who = ir.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="every row of this identity")
    who.add_argument("--paths", metavar="FILE", help="text file of image paths, one per line, as the index lists them")
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
