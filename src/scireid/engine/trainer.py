"""``scireid train``: run directory, dataset, model, then stage 1 and/or stage 2 through one engine."""
from __future__ import annotations

import logging
import os
import platform
import random
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import Config, merge_dict, save_config, validate_config
from ..data.source import fingerprint, load_dataset
from ..data.records import ReIDDataset
from ..errors import CheckpointError, ConfigError
from ..durable import atomic_write_json
from ..models.sci import ModelSpec, SCIModel, build_model
from .checkpoint import load_weights, save_weights
from .distributed import DistContext, barrier, convert_batchnorm, setup
from .engine import Engine
from .tasks import Stage1Task, Stage2Task, stage1_features

log = logging.getLogger("scireid")


def model_spec(cfg: Config, ds: ReIDDataset) -> ModelSpec:
    m = cfg.model
    return ModelSpec(m.arch, ds.num_train_pids, ds.num_train_clothes, cfg.data.height, cfg.data.width, m.n_ctx,
                     m.sse, m.sim, m.sim_attention, m.sim_pooling, m.sim_heads, m.sim_residual,
                     m.test_feature, m.sim_gate, m.sim_gate_init)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def environment(cfg: Config) -> dict[str, Any]:
    return environment_info(cfg.run.seed)


def environment_info(seed: int) -> dict[str, Any]:
    import open_clip

    from .. import __version__
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"scireid": __version__, "git_commit": commit, "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "seed": seed, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}


def prepare_run_dir(cfg: Config, resume: bool, ctx: DistContext, stage: str = "all") -> Path:
    run = Path(cfg.run.out)
    saved = run / "config.yaml"
    if ctx.is_main:
        if saved.exists():
            # stage 2 alone may follow a finished stage 1 in the same directory; anything else would overwrite work
            taken = ("stage2",) if stage == "2" else ("stage1", "stage2", "stage1.safetensors")
            if not resume and any((run / s).exists() for s in taken):
                raise ConfigError(f"run.out={run} already holds a run; pass --resume to continue it or choose another --out")
            if resume:
                from ..config import load_yaml
                old = merge_dict(Config(), load_yaml(saved), str(saved)).to_dict()
                new = cfg.to_dict()
                for sec in new:
                    if sec == "run":
                        continue
                    for k in new[sec]:
                        if old[sec][k] != new[sec][k]:
                            raise ConfigError(f"--resume: {sec}.{k} is {new[sec][k]!r} but the run in {run} used {old[sec][k]!r}")
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, saved)
        atomic_write_json(run / "env.json", environment(cfg))
        fh = logging.FileHandler(run / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
    barrier(ctx)
    return run


def _tb(cfg: Config, run: Path, ctx: DistContext):
    if not (ctx.is_main and cfg.run.tensorboard):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: scalars go to metrics.jsonl only (pip install tensorboard)")
        return None
    return SummaryWriter(str(run / "tb"))


def train(cfg: Config, stage: str = "all", resume: bool = False) -> dict[str, Any]:
    """Train the configured variant; returns the final evaluation (stage 2) or {}.

    Everything a run will need (the whole config, both stages, the weights file, the output
    folder) is checked before the first step, and the run directory is locked for one writer.
    """
    from .rundir import RunLock, check_out_dir

    validate_config(cfg)
    ctx = setup(cfg.run.device)
    with flush_denormal(cfg.run.flush_denormal):
        if not ctx.is_main:
            return _train(cfg, stage, resume, ctx)
        check_out_dir(cfg.run.out, resume=resume)
        with RunLock(cfg.run.out):
            from .rundir import clean_leftovers
            clean_leftovers(cfg.run.out)
            return _train(cfg, stage, resume, ctx)


@contextmanager
def flush_denormal(on: bool) -> Iterator[None]:
    """Subnormal floats as zero on CPU for the block (``run.flush_denormal``); torch's default (off) after it."""
    if on:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on:
            torch.set_flush_denormal(False)


def _train(cfg: Config, stage: str, resume: bool, ctx: DistContext) -> dict[str, Any]:
    try:
        return _train_in_run_dir(cfg, stage, resume, ctx)
    finally:  # the run's log.txt handler goes with the run: a second train() in this process logs elsewhere
        for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)
                  and Path(h.baseFilename) == (Path(cfg.run.out) / "log.txt").absolute()]:
            log.removeHandler(h)
            h.close()


def _train_in_run_dir(cfg: Config, stage: str, resume: bool, ctx: DistContext) -> dict[str, Any]:
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    ds = load_dataset(cfg)
    if resume:
        check_resume_data(Path(cfg.run.out), ds)
    run = prepare_run_dir(cfg, resume, ctx, stage)
    if ctx.is_main and not (run / "data.json").exists():
        atomic_write_json(run / "data.json", {"root": str(ds.root), "fingerprint": fingerprint(ds)})
    spec = model_spec(cfg, ds)
    log.info("dataset %s: %d train images, %d identities, %d clothes; model %s (sse=%s sim=%s cal=%s)", ds.name,
             len(ds.train), ds.num_train_pids, ds.num_train_clothes, spec.arch, spec.sse, spec.sim, cfg.stage2.cal)
    model = build_model(spec, cfg.model.weights).to(ctx.device)
    tb = _tb(cfg, run, ctx)
    engine = Engine(run, ctx, cfg.run.amp, cfg.run.checkpoint_every, cfg.run.checkpoint_steps,
                    cfg.run.max_steps_per_epoch, tb, cfg.run.stop_after_steps, cfg.run.amp_dtype, cfg.run.sync_every)
    stage1_file = run / "stage1.safetensors"
    result: dict[str, Any] = {}
    try:
        if stage in ("1", "all") and not (resume and stage1_file.exists()):
            run_stage1(model, ds, cfg, ctx, engine, run, resume)
        if stage in ("2", "all"):
            if not stage1_file.exists():
                raise CheckpointError(f"{stage1_file}: stage 1 has not been run in {run}; run --stage 1 (or all) first")
            from .checkpoint import read_meta
            _same_spec(read_meta(stage1_file).get("spec", {}), spec, stage1_file)
            load_weights(stage1_file, model)
            try:
                result = run_stage2(model, ds, cfg, ctx, engine, run, resume)
            except ConfigError as e:
                if stage == "all":
                    raise ConfigError(f"{e} (stage 1 is finished in {run}: fix the setting and continue with "
                                      f"--stage 2 --out {run})") from None
                raise
    finally:
        if tb is not None:
            tb.close()
    return result


def check_resume_data(run: Path, ds: ReIDDataset) -> None:
    """--resume continues on the images the run started with, or stops in one line."""
    from ..data.source import same_data
    from ..errors import DatasetError
    expected = None
    if (run / "data.json").is_file():
        from ..io_utils import read_json
        expected = read_json(run / "data.json").get("fingerprint")
    elif (run / "stage1.safetensors").is_file():
        from .checkpoint import read_meta
        expected = read_meta(run / "stage1.safetensors").get("data_fingerprint")
    if expected and not same_data(ds, expected):
        raise DatasetError(f"data changed since {run} started: {ds.root} now holds other images ({len(ds.train)} train / "
                           f"{len(ds.test)} test); restore the data or start a new run with another --out")


def _same_spec(saved: dict, spec: ModelSpec, where: Path) -> None:
    for k, v in spec.to_dict().items():
        if k in saved and saved[k] != v:
            raise CheckpointError(f"{where}: checkpoint has {k}={saved[k]!r} but the config gives {v!r}")


def run_stage1(model: SCIModel, ds: ReIDDataset, cfg: Config, ctx: DistContext, engine: Engine, run: Path,
               resume: bool) -> None:
    cache = run / "stage1_features.safetensors"
    from safetensors.torch import load_file, save_file

    from ..durable import atomic_write
    feats = None
    if cache.exists():
        try:
            c = load_file(str(cache))
            if c["feats"].shape[0] == len(ds.train):
                feats = c["feats"]
        except Exception as e:  # a cache, not a result: rebuild it
            log.warning("%s is unreadable (%s); recomputing the stage-1 image features", cache, str(e).splitlines()[0])
    if feats is None:
        feats = stage1_features(model, ds, cfg, ctx)
        if ctx.is_main:
            atomic_write(cache, lambda tmp: save_file({"feats": feats.contiguous()}, tmp))
    pids = torch.tensor([r.pid for r in ds.train])
    clothes = torch.tensor([r.clothes for r in ds.train])
    task = Stage1Task(model, feats, pids, clothes, cfg, ctx)
    engine.run(task, resume)
    model.compute_prototypes(torch.as_tensor(ds.pid2clothes))
    if ctx.is_main:
        save_weights(run / "stage1.safetensors", model, {"stage": "stage1", "spec": model.spec.to_dict(),
                                                         "data_fingerprint": fingerprint(ds),
                                                         "config": cfg.to_dict()})
        log.info("stage 1 done: prompts and %d prototypes in %s", model.spec.num_pids, run / "stage1.safetensors")
    barrier(ctx)


def compile_trunk(model: SCIModel, cfg: Config) -> None:
    """Stage 2 under ``run.compile``. The trunk is a method, so the state-dict names stay the eager model's; static
    shapes, so the training batch never runs a dynamic-shape graph compiled for an evaluation remainder."""
    model.visual.trunk = torch.compile(model.visual.trunk, mode=cfg.run.compile_mode, dynamic=False)


def run_stage2(model: SCIModel, ds: ReIDDataset, cfg: Config, ctx: DistContext, engine: Engine, run: Path,
               resume: bool) -> dict[str, Any]:
    from .evaluation import evaluate_model

    meta_base = {"spec": model.spec.to_dict(), "config": cfg.to_dict(), "data_fingerprint": fingerprint(ds),
                 "pixel_mean": cfg.data.pixel_mean, "pixel_std": cfg.data.pixel_std}

    val_ds = ds.validation()

    def evaluate(epoch: int) -> dict[str, Any] | None:
        """Test metrics for the record; model selection on the validation split when the data has one."""
        res = evaluate_model(model, ds, cfg, ctx)
        if val_ds is not None:
            log.info("validation split (%d images): model selection", len(val_ds.test))
            val = evaluate_model(model, val_ds, cfg, ctx)
            if res is not None and val is not None:
                res = res | {"val": val["results"], "protocol": val["protocol"], "score": val["score"], "split": "val"}
        elif res is not None:
            res["split"] = "test"
        if res is None:
            return None
        if ctx.is_main and (not task.best or res["score"] > task.best["score"]):
            save_weights(run / "model_best.safetensors", model,
                         meta_base | {"stage": "stage2", "epoch": epoch + 1, "results": res["results"]})
        return res

    def ddp_wrap(m):
        from torch.nn.parallel import DistributedDataParallel as DDP
        # the clothes classifier has its own optimizer; its gradients are averaged by hand
        DDP._set_params_and_buffers_to_ignore_for_model(m, ["clothes_classifier.weight"])
        return DDP(m, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    if ctx.enabled:
        convert_batchnorm(model)
    if cfg.run.compile:
        compile_trunk(model, cfg)
    task = Stage2Task(model, ds, cfg, ctx, evaluate, ddp_wrap if ctx.enabled else None)
    if engine.run(task, resume) == 0 and cfg.stage2.eval_every > 0:  # resumed a finished run: evaluate what is there
        task.last_eval = evaluate(task.epochs - 1) or {}
    result: dict[str, Any] = {}
    if ctx.is_main:
        last_eval = task.last_eval or {}
        save_weights(run / "model_last.safetensors", model,
                     meta_base | {"stage": "stage2", "epoch": cfg.stage2.epochs, "results": last_eval.get("results", {})})
        result = {"last": last_eval.get("results", {}), "best": task.best, "selection": last_eval.get("protocol")}
        if last_eval.get("val"):
            result["last_val"] = last_eval["val"]
        atomic_write_json(run / "results.json", result)
        if task.best:
            log.info("best checkpoint by %s %s R-1: epoch %d (%.1f); last epoch reported above",
                     task.best.get("split", "test"), task.best["protocol"], task.best["epoch"], task.best["score"])
    barrier(ctx)
    return result
