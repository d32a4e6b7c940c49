"""One training loop for both stages: epochs, steps, precision, checkpoints, resume, logging.

A stage is a ``Task``: it owns its optimizers, its per-epoch learning rates, its batches and
its loss. The engine owns everything else, so a fix here fixes both stages.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from tqdm import tqdm

from ..errors import TrainingDiverged
from .checkpoint import load_state, save_state
from .distributed import DistContext

log = logging.getLogger("scireid")


class Task(Protocol):
    name: str
    epochs: int
    model: torch.nn.Module  # what gets checkpointed

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
    def set_epoch(self, epoch: int, start_batch: int) -> int: ...  # sets lrs, returns number of batches
    def batches(self) -> Iterator[Any]: ...
    def step(self, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, float], int]: ...  # loss, terms, n images
    def meta(self) -> dict[str, Any]: ...
    def end_epoch(self, epoch: int) -> dict[str, Any]: ...  # e.g. evaluation results


class Engine:
    def __init__(self, run_dir: Path, ctx: DistContext, amp: bool = True, checkpoint_every: int = 1,
                 checkpoint_steps: int = 0, max_steps_per_epoch: int = 0, tb_writer=None, stop_after_steps: int = 0,
                 amp_dtype: str = "bf16", sync_every: int = 50):
        self.run_dir = Path(run_dir)
        self.ctx = ctx
        self.amp = amp and ctx.device.type == "cuda"
        self.amp_dtype = amp_dtype
        self.checkpoint_every = checkpoint_every
        self.checkpoint_steps = checkpoint_steps
        self.max_steps = max_steps_per_epoch
        self.tb = tb_writer
        self.stop_after_steps = stop_after_steps  # testing hook: simulate a kill after N steps
        self._steps_done = 0
        # steps between host reads of the loss (finite check, progress bar): each read waits for the GPU, which a
        # launch-bound step cannot afford every time. On CPU a read costs nothing, so it happens every step.
        self.sync_every = 1 if ctx.device.type == "cpu" else max(1, sync_every)

    def ckpt_dir(self, task: Task) -> Path:
        return self.run_dir / task.name / "last"

    def _save(self, task: Task, epoch: int, batch: int, scaler, pending: dict[str, Any] | None = None) -> None:
        """``pending``: the epoch's training record whose end-of-epoch work (evaluation, model_best, the
        metrics row) has not happened yet; a resume does that work before it trains on."""
        if not self.ctx.is_main:
            return
        state = {
            "epoch": epoch, "batch": batch,
            "optimizers": {k: o.state_dict() for k, o in task.optimizers().items()},
            "scaler": scaler.state_dict() if scaler is not None else {},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        meta = task.meta() | {"epoch": epoch, "batch": batch}
        if pending is not None:
            meta["pending_epoch_end"] = pending
        save_state(self.ckpt_dir(task), task.model, meta, state)

    def _resume(self, task: Task, scaler) -> tuple[int, int, dict[str, Any] | None]:
        d = self.ckpt_dir(task)
        from .checkpoint import recover
        if self.ctx.is_main:
            recover(d)  # a save killed mid-swap: take back its newest complete copy
        if self.ctx.enabled:
            import torch.distributed as dist
            dist.barrier()
        if not (d / "state.pt").is_file():
            return 0, 0, None
        from .checkpoint import load_weights

        meta = load_weights(d / "model.safetensors", task.model)
        _check_spec(meta, task.meta(), d)
        if hasattr(task, "restore"):
            task.restore(meta)
        st = load_state(d)
        for k, o in task.optimizers().items():
            try:
                o.load_state_dict(st["optimizers"][k])
            except (ValueError, KeyError) as e:  # e.g. a run saved before SIM's gate had its own parameter group
                from ..errors import CheckpointError
                raise CheckpointError(f"{d}: its {k} optimizer state does not fit this version's parameter groups "
                                      f"({e}); start the stage again in a new --out folder") from None
        if scaler is not None and st["scaler"]:
            scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["torch_rng"])
        if st["cuda_rng"]:
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        log.info("%s: resuming at epoch %d, batch %d from %s", task.name, st["epoch"] + 1, st["batch"], d)
        return st["epoch"], st["batch"], meta.get("pending_epoch_end")

    def run(self, task: Task, resume: bool = False) -> int:
        """Train ``task`` to its last epoch; returns how many epochs this call ran."""
        from .features import amp_dtype
        scaler = None
        if self.amp and amp_dtype(self.amp_dtype) == torch.float16:  # fp16 needs loss scaling; bf16 does not
            scaler = torch.amp.GradScaler("cuda")
        start_epoch, start_batch, pending = self._resume(task, scaler) if resume else (0, 0, None)
        ran = 0
        if pending is not None:  # killed after the epoch's checkpoint, before its evaluation / metrics row
            log.info("%s: finishing epoch %d (evaluation, metrics) before training on", task.name, start_epoch)
            task.set_epoch(start_epoch - 1, 0)
            self._end_epoch(task, start_epoch - 1, dict(pending), scaler, saved=True)
            ran += 1
        for epoch in range(start_epoch, task.epochs):
            ran += 1
            n_batches = task.set_epoch(epoch, start_batch)
            if self.max_steps:
                n_batches = min(n_batches, self.max_steps)
            meter = StepMeter(self.ctx.device)
            n_img, n_steps, t0 = 0, 0, time.time()
            bar = tqdm(total=n_batches, initial=start_batch, desc=f"{task.name} {epoch + 1}/{task.epochs}", leave=False,
                       disable=not (self.ctx.is_main and sys.stderr.isatty()))
            b = start_batch
            for batch in task.batches():
                if b >= n_batches:
                    break
                loss, terms, bs = task.step(batch, epoch)
                meter.add(loss, terms, b)
                save_here = bool(self.checkpoint_steps and (b + 1) % self.checkpoint_steps == 0 and b + 1 < n_batches)
                if (b + 1 - start_batch) % self.sync_every == 0 or save_here or b + 1 == n_batches:
                    self._check_finite(task, epoch, meter)  # before the optimizer step sees a non-finite loss
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(meter.means().items())[:4]} |
                                    {"img/s": f"{(n_img + bs * self.ctx.world) / max(time.time() - t0, 1e-9):.0f}"})
                self._backward_step(task, loss, scaler)
                n_img += bs * self.ctx.world
                n_steps += 1
                b += 1
                self._steps_done += 1
                bar.update(1)
                if save_here:
                    self._save(task, epoch, b, scaler)
                if self.stop_after_steps and self._steps_done >= self.stop_after_steps:
                    raise KeyboardInterrupt(f"stopped after {self._steps_done} steps (run.stop_after_steps)")
            if n_steps:
                self._check_finite(task, epoch, meter)
            bar.close()
            start_batch = 0
            dt = time.time() - t0
            record: dict[str, Any] = {"stage": task.name, "epoch": epoch + 1,
                                      **meter.means(),
                                      "img_per_s": n_img / max(dt, 1e-9), "seconds": dt}
            self._end_epoch(task, epoch, record, scaler, saved=False)
        return ran

    def _check_finite(self, task: Task, epoch: int, meter: "StepMeter") -> None:
        bad = meter.first_nonfinite()
        if bad is not None:
            step, values = bad
            last = self.ckpt_dir(task)
            raise TrainingDiverged(
                f"{task.name} epoch {epoch + 1} step {step + 1}: loss is {values.pop('loss')} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); last good checkpoint: "
                f"{last if last.exists() else 'none yet'}")

    def _end_epoch(self, task: Task, epoch: int, record: dict[str, Any], scaler, saved: bool) -> None:
        """Checkpoint (marked pending), evaluate, checkpoint again, then the metrics row (one per epoch).

        The first checkpoint means a failure in evaluation never costs the epoch's training; its
        pending mark means a resume evaluates the epoch instead of skipping it, so a killed run
        selects the same model_best and keeps the same rows as an uninterrupted one.
        """
        save_now = (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == task.epochs
        if save_now and not saved:
            self._save(task, epoch + 1, 0, scaler, pending=record)
        extra = task.end_epoch(epoch)
        record.update(extra)
        if self.ctx.is_main:
            # the row first: while the checkpoint is still marked pending, a kill at any point from here on makes
            # the resume redo this end of epoch and rewrite the same row, so the row can never be lost
            log.info("%s epoch %d/%d: %s", task.name, epoch + 1, task.epochs,
                     ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "seconds"))
            write_metrics_row(self.run_dir / "metrics.jsonl", record)
        if save_now and "eval" in extra:
            # evaluated: clear the pending mark, so the best-epoch record survives a resume. (An epoch without
            # evaluation stays marked; a resume repeats its cheap end-of-epoch work and rewrites the same row.)
            self._save(task, epoch + 1, 0, scaler)
        if self.ctx.is_main:
            if self.tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k not in ("epoch",):
                        self.tb.add_scalar(f"{task.name}/{k}", v, epoch + 1)
                    elif isinstance(v, dict):
                        for proto, res in v.items():
                            if isinstance(res, dict):
                                for m in ("R-1", "mAP"):
                                    if m in res:
                                        self.tb.add_scalar(f"{task.name}/{proto}/{m}", res[m], epoch + 1)

    def _backward_step(self, task: Task, loss: torch.Tensor, scaler) -> None:
        opt = task.optimizers()["main"]
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()


class StepMeter:
    """The loss terms of an epoch summed on the device, and its first non-finite loss, without a host read per
    step: a read waits for the GPU to finish, and a launch-bound step cannot afford that every time (issue #26)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.keys: list[str] = []
        self.sums: torch.Tensor | None = None
        self.n = 0
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_values: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, terms: dict[str, Any], step: int) -> None:
        if not self.keys:
            self.keys = list(terms)
        elif list(terms) != self.keys:
            raise ValueError(f"a task's loss terms changed within an epoch: {self.keys} then {list(terms)}")
        vals = torch.stack([torch.as_tensor(v, device=self.device).detach().double().reshape(())
                            for v in (loss, *terms.values())])
        self.sums = vals if self.sums is None else self.sums + vals
        self.n += 1
        new = (self.bad_step < 0) & ~torch.isfinite(vals[0])
        self.bad_step = torch.where(new, step, self.bad_step)
        self.bad_values = vals if self.bad_values is None else torch.where(new, vals, self.bad_values)

    def first_nonfinite(self) -> tuple[int, dict[str, float]] | None:
        """(step, {'loss': .., term: ..}) of the first non-finite loss so far, or None; one host read."""
        step = int(self.bad_step)
        if step < 0:
            return None
        return step, dict(zip(["loss", *self.keys], self.bad_values.tolist()))

    def means(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        return dict(zip(self.keys, (self.sums[1:] / self.n).tolist()))


def _check_spec(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Same architecture, class counts and image size, or one clear error."""
    a, b = saved.get("spec", {}), current.get("spec", {})
    for key in ("arch", "num_pids", "num_clothes", "height", "width", "sse", "sim", "sim_attention"):
        if key in a and key in b and a[key] != b[key]:
            from ..errors import CheckpointError
            raise CheckpointError(f"{where}: checkpoint has {key}={a[key]!r} but the config gives {b[key]!r}")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line cut short by a kill or a full disk is skipped, not fatal."""
    rows = []
    if not Path(path).is_file():
        return rows
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def write_metrics_row(path: Path, record: dict[str, Any]) -> None:
    """One row per (stage, epoch): a resumed epoch replaces its row, a broken line is dropped, atomically."""
    from ..durable import atomic_write_text
    key = (record.get("stage"), record.get("epoch"))
    rows = [r for r in read_metrics(path) if (r.get("stage"), r.get("epoch")) != key] + [record]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
