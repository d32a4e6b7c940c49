"""Evaluate a model (during training) or a finished run / checkpoint (``scireid eval``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..config import Config, apply_overrides, config_from_dict
from ..data.loading import build_transforms
from ..data.records import ReIDDataset
from ..errors import CheckpointError
from ..eval.protocols import format_table, primary_metric, run_protocols
from .distributed import DistContext
from .features import extract

log = logging.getLogger("scireid")


def test_features(model, ds: ReIDDataset, cfg: Config, ctx: DistContext) -> torch.Tensor:
    d = cfg.data
    tf = build_transforms(d.height, d.width, d.pixel_mean, d.pixel_std, train=False)
    model.eval()
    return extract(model.embed_tensor, ds.test, tf, ctx, cfg.eval.batch_size, d.workers, flip=cfg.eval.flip,
                   amp=cfg.run.amp, desc="test features")


def evaluate_model(model, ds: ReIDDataset, cfg: Config, ctx: DistContext) -> dict[str, Any] | None:
    """Features on every rank (sharded), metrics once on rank 0."""
    feats = test_features(model, ds, cfg, ctx)
    if not ctx.is_main:
        return None
    results = run_protocols(ds, feats, rerank=cfg.eval.rerank, chunk=cfg.eval.chunk)
    proto, score = primary_metric(results)
    log.info("\n%s", format_table(results))
    log.info("primary metric (%s): %s R-1 = %.1f", ds.name, proto, score)
    return {"results": results, "protocol": proto, "score": score}


def resolve_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in ("model_best.safetensors", "model_last.safetensors", "stage1.safetensors"):
            if (p / name).is_file():
                if not (p / "model_last.safetensors").is_file():  # never silently: say what an unfinished run gives
                    from .checkpoint import read_meta
                    ep = read_meta(p / name).get("epoch")
                    log.warning("%s is unfinished (stage 2 did not complete): using %s%s", p, name,
                                f" (stage-2 epoch {ep})" if ep and name != "stage1.safetensors" else
                                " (stage 1 only: no stage-2 training)" if name == "stage1.safetensors" else "")
                return p / name
        raise CheckpointError(f"{p}: no model_best/model_last/stage1 .safetensors in this run directory")
    if not p.is_file():
        raise CheckpointError(f"{p}: no such run directory or checkpoint")
    return p


def evaluate_run(run_or_ckpt: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    from ..models.sci import ModelSpec, SCIModel
    from .checkpoint import load_weights, read_meta
    from .distributed import setup
    from ..data.source import expected_fingerprint, load_dataset

    ckpt = resolve_checkpoint(run_or_ckpt)
    meta = read_meta(ckpt)
    if "config" not in meta or "spec" not in meta:
        raise CheckpointError(f"{ckpt}: checkpoint carries no config/spec metadata (not written by scireid)")
    cfg = apply_overrides(config_from_dict(meta["config"]), list(overrides))
    from ..config import validate_config
    validate_config(cfg, weights=False)
    from ..models.sci import spec_from_meta
    spec = spec_from_meta(meta, ckpt)
    if (cfg.data.height, cfg.data.width) != (spec.height, spec.width):
        raise CheckpointError(f"{ckpt}: trained at {spec.height}x{spec.width}, config asks {cfg.data.height}x{cfg.data.width}")
    ctx = setup(cfg.run.device)
    model = SCIModel(spec).to(ctx.device)
    load_weights(ckpt, model)
    ds = load_dataset(cfg, expected_fingerprint(meta, cfg))
    log.info("evaluating %s on %s (%d test images)", ckpt, ds.name, len(ds.test))
    res = evaluate_model(model, ds, cfg, ctx)
    return res["results"] if res else {}


__all__ = ["evaluate_model", "evaluate_run", "resolve_checkpoint"]
