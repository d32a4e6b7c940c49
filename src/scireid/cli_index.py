"""The index commands: ``index build/add/remove`` and ``search``, on one process or a Dask cluster."""
from __future__ import annotations

import json
import logging
import os
import sys

from .errors import UserError

log = logging.getLogger("scireid.cli")


def _embed_for_index(a, items, out_feats, backend=None, dtype="float32"):
    from .deploy.embed import embed, load_features
    s = embed(a.model, items, out_feats, batch=a.batch, workers=a.workers, device=a.device, backend=backend,
              dtype=dtype)
    feats, side = load_features(out_feats)  # memory-mapped: the index holds the only copy in RAM
    return feats, side, s


def _index_client(a, folder=None):
    """A Dask client for a sharded index (``--engine dask`` or a folder with shards.json), else a no-op."""
    import contextlib
    import json as _json
    from pathlib import Path

    from .deploy.sharded import MANIFEST, cluster_client, is_sharded
    sharded = folder is not None and is_sharded(folder)
    if folder is not None and getattr(a, "engine", None) not in (None, "dask" if sharded else "local"):
        raise UserError(f"--engine {a.engine}: the index {folder} was built with --engine "
                        f"{'dask' if sharded else 'local'}")
    if getattr(a, "engine", None) != "dask" and not sharded:
        return contextlib.nullcontext(None)
    scheduler = getattr(a, "scheduler", None)
    shards = getattr(a, "shards", 2)
    if sharded:
        man = _json.loads((Path(folder) / MANIFEST).read_text())
        scheduler, shards = scheduler or man.get("scheduler") or "local", int(man.get("shards", 2))
    return cluster_client(scheduler or "local", workers=min(shards, os.cpu_count() or 1))


def cmd_index(a) -> int:
    """build / add under the index folder's lock: two writers never interleave, and every check that can
    refuse the job (options, folder, the model of an existing index) runs before anything is embedded."""
    from pathlib import Path

    from .deploy.index import Index, check_build_options
    from .engine.rundir import RunLock, check_out_dir
    out = Path(a.index)
    if a.icmd == "build":
        check_build_options(a.kind, a.recall, a.store)
        if a.engine == "dask" and a.store != "fp32":
            raise UserError("--store fp16 is not offered with --engine dask")
        if Index.exists(out):
            raise UserError(f"{out} already holds an index; use 'scireid index add' or another folder")
        if out.is_dir():  # a build killed before its first switch: its unswitched version is removed, not refused
            from .deploy.index import clean_index_leftovers
            with RunLock(out):
                clean_index_leftovers(out, unswitched=True)
        if a.kind == "pca-ivf-disk" and a.engine == "dask":
            raise UserError("--kind pca-ivf-disk is not offered with --engine dask")
        # vectors.*: a pca-ivf-disk build's embedding, resumed when a killed build is run again
        check_out_dir(out, marker=("CURRENT", "index.json", "shards.json", "vectors.json", "vectors.npy.parts"))
    elif not Index.exists(out):
        raise UserError(f"{out}: no index there to add to; build one with 'scireid index build'")
    with RunLock(out), _index_client(a, out if a.icmd == "add" else None) as client:
        from .deploy.index import clean_index_leftovers
        clean_index_leftovers(out)  # what a killed build / add left: its embedding folder, a half-written switch
        from .deploy.backend import check_fingerprint, open_backend
        be = open_backend(a.model, a.device)  # loaded once: checked against the index, then used to embed
        from .deploy.embed import job_key
        from .deploy.inputs import read_inputs
        items = read_inputs(a.input, a.frames)
        job = job_key(items, be.fingerprint, False, 0)  # what this command adds: the same inputs are never added twice
        if a.icmd == "add":
            idx = Index.open(out, client)
            check_fingerprint(be.fingerprint, idx.fingerprint, f"index {out}")
            if idx.kind == "pca-ivf-disk":
                raise UserError(f"{out}: pca-ivf-disk indexes re-rank from one vector file and are not extended in "
                                f"place; build a new index over all the inputs")
            if job in idx.params.get("jobs", []):
                raise UserError(f"{out}: these inputs were already added (an earlier add finished, perhaps just before "
                                f"a kill); nothing to do")
        if a.icmd == "build" and a.kind == "pca-ivf-disk":  # the fp16 vectors stay: re-ranked from in place
            _, side, s = _embed_for_index(a, items, out / "vectors.npy", be, dtype="float16")
            idx = Index.build_from_file(out / "vectors.npy", side["rows"], side["fingerprint"], model=str(a.model),
                                        recall=a.recall)
            idx.params["vector_file"]["path"] = "vectors.npy"  # relative: the index folder may be moved
            idx.params["jobs"] = [job]
            idx.save(out)
        else:
            idx, s = _build_or_add(a, out, items, be, job, client, idx if a.icmd == "add" else None)
    rec = idx.params.get("recall@10_vs_exact")
    knobs = ", ".join(f"{k}={v}" for k, v in idx.settings.items())
    print(f"{out}: {len(idx)} vectors ({idx.kind}{' ' + knobs if knobs else ''}, {idx.dim}-d, model {idx.fingerprint})"
          + (f"; recall@10 vs exact {rec:.3f} ({idx.params.get('calibration', 'held-out rows')})" if rec is not None
             else "") + (f"; scores are {idx.params['scores']}" if "scores" in idx.params else "")
          + f"; {len(s['skipped'])} images skipped")
    return 0


def _build_or_add(a, out, items, be, job, client, idx):
    """Embed into a folder inside the index (removed with it), then build or extend and save."""
    from pathlib import Path

    from .deploy.index import Index
    from .durable import scratch_dir
    from .deploy.sharded import ShardedIndex, is_sharded
    with scratch_dir(Path(out) / "embed") as tmp:  # inside the index folder: removed with it, or by its next writer
        feats, side, s = _embed_for_index(a, items, Path(tmp) / "feats.npy", be)
        if a.icmd == "build" and client is not None:
            idx = ShardedIndex.build(out, feats, side["rows"], side["fingerprint"], client, shards=a.shards,
                                     kind=a.kind, model=str(a.model), recall=a.recall, job=job)
            if a.scheduler and a.scheduler != "local":
                idx.manifest["scheduler"] = a.scheduler
                idx.save()
        elif a.icmd == "build":
            idx = Index.build(feats, side["rows"], side["fingerprint"], kind=a.kind, model=str(a.model),
                              recall=a.recall, store=a.store)
        elif is_sharded(out):
            idx.add(feats, side["rows"], side["fingerprint"], job=job)
        else:
            idx.add(feats, side["rows"], side["fingerprint"])
        if client is None:  # one process; a sharded index's shards save themselves
            idx.params["jobs"] = [*idx.params.get("jobs", []), job]
            idx.save(out)
    return idx, s


def cmd_search(a) -> int:
    from .deploy.filters import RowFilter, parse_cameras
    from .deploy.index import Index
    rf = RowFilter(parse_cameras(a.cameras) if a.cameras else None, a.after, a.before)
    rf.check()  # before the model is loaded
    with _index_client(a, a.index) as client:
        return _search(a, Index.open(a.index, client), rf)


def _search(a, idx, rf) -> int:
    from pathlib import Path

    import numpy as np

    from .deploy.backend import check_fingerprint, embed_arrays, open_backend
    from .deploy.embed import load_image
    from .deploy.html import write_results_html
    from .deploy.index import Index, results_table
    from .deploy.inputs import read_inputs
    sharded = not isinstance(idx, Index)
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
        live = [] if sharded else [r for r in idx.rows if r is not None]  # shards: counted by their workers
        n_unknown = sum(1 for r in live if r.get("camid", -1) < 0)
        if live and n_unknown == len(live):
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
    if sharded:
        scores, ids = idx.search(q, a.topk, exclude_camids=cams, row_filter=rf, partial=a.partial,
                                 timeout=a.shard_timeout)
    else:
        scores, ids = idx.search(q, a.topk, exclude_camids=cams, keep=rf.mask(idx.rows) if rf.active else None)
    res = results_table(idx, kept, scores, ids)
    if sharded and idx.missing:
        for r in res:
            r["partial"] = {"missing_shards": idx.missing}
        print(f"partial result: shards {', '.join(idx.missing)} did not answer", file=sys.stderr)
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
    with RunLock(out), _index_client(a, out) as client:
        clean_index_leftovers(out)
        idx = Index.open(out, client)
        if isinstance(idx, Index):
            hit = [i for i, r in enumerate(idx.rows) if r is not None and (
                (a.pid is not None and r.get("pid", -1) == a.pid) or (paths is not None and r["path"] in paths))]
        else:
            hit = idx.rows_where(a.pid, paths).tolist()
        if not hit:
            what = f"identity {a.pid}" if a.pid is not None else f"any path listed in {a.paths}"
            raise UserError(f"{out}: no row of {what}; nothing removed")
        n = idx.remove(np.array(hit))
        if isinstance(idx, Index):
            idx.save(out)
    rec = idx.params.get("recall@10_vs_exact")
    print(f"{out}: removed {n} rows, {len(idx)} left" + (f"; recall@10 vs exact re-measured: {rec:.3f}"
                                                          if rec is not None else ""))
    return 0


def _cluster_args(p, engine: bool = True) -> None:
    if engine:  # build chooses the engine; the other commands check it against the index's
        p.add_argument("--engine", choices=["local", "dask"], help="the index's engine (default: the one it was "
                                                                    "built with)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler of a sharded index, e.g. tcp://10.0.0.5:8786, or 'local' for worker processes "
                        "on this host (default: the one it was built with, else local)")


def _cmd_index_add(a) -> int:
    from .deploy.index import Index
    if a.model is None:
        a.model = Index.load(a.index).model
    a.icmd = "add"
    return cmd_index(a)
