"""The two stages as engine tasks (DESIGN.md §2 and §3)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import Config
from ..data.loading import ImageDataset, PKSampler, SeededSampler, build_transforms
from ..data.records import ReIDDataset
from ..losses import cal_loss, ce_smooth, i2t_logits, supcon, triplet_hard
from ..models.sci import SCIModel
from .distributed import DistContext, all_reduce_mean_grads, gather_rows, gather_with_grad
from .features import autocast
from .schedule import cosine_with_warmup, warmup_multistep

log = logging.getLogger("scireid")


def _set_lr(opt: torch.optim.Optimizer, lr_of_group: Callable[[dict], float]) -> None:
    for g in opt.param_groups:
        g["lr"] = lr_of_group(g)


def graphs_on(cfg: Config) -> bool:
    """Whether ``run.compile`` replays the compiled parts as CUDA graphs (torch.compile's modes that use them)."""
    return cfg.run.compile and cfg.run.compile_mode in ("reduce-overhead", "max-autotune")


def adam(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """CLIP-ReID's Adam, fused into one kernel per step where torch has one (CPU, CUDA): the same update
    (bitwise in float64, within an ulp in float32), without a Python loop over ~70 tensors (a fifth of the
    CPU demo's step)."""
    flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in flat)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


class Stage1Task:
    """Prompt learning on cached image features; only the prompt tokens learn."""

    name = "stage1"

    def __init__(self, model: SCIModel, feats: torch.Tensor, pids: torch.Tensor, clothes: torch.Tensor, cfg: Config,
                 ctx: DistContext):
        self.model, self.cfg, self.ctx, self.c = model, cfg, ctx, cfg.stage1
        self.epochs = self.c.epochs
        self.feats, self.pids, self.clothes = feats.to(ctx.device), pids.to(ctx.device), clothes.to(ctx.device)
        model.requires_grad_(False)
        params = [model.id_prompts.ctx] + ([model.clothes_prompts.ctx] if model.spec.sse else [])
        for p in params:
            p.requires_grad_(True)
        self.opt = adam(params, lr=self.c.lr, weight_decay=self.c.weight_decay)
        self._order: list[torch.Tensor] = []
        # stage 1 is the text transformer's forward and backward on 64 short prompts: on a GPU, kernel launches.
        # Compiled here, not in the model: the prototypes after stage 1 run the eager encoder (other shapes, no grad)
        self.text = (torch.compile(model.text, mode=cfg.run.compile_mode, dynamic=False) if cfg.run.compile
                     else model.text)
        self._graphs = graphs_on(cfg)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.opt}

    def meta(self) -> dict[str, Any]:
        return {"stage": "stage1", "spec": self.model.spec.to_dict()}

    def set_epoch(self, epoch: int, start_batch: int) -> int:
        c = self.c
        lr = cosine_with_warmup(epoch + 1, c.lr, c.epochs, c.warmup_epochs, c.warmup_lr, c.min_lr)
        _set_lr(self.opt, lambda g: lr)
        self.lr = lr
        n = len(self.feats)
        g = torch.Generator().manual_seed(int(self.cfg.run.seed) * 1000 + epoch)
        perm = torch.randperm(n, generator=g).to(self.ctx.device)  # once an epoch: no copy to the device per step
        bs = min(c.batch_size, n)
        n_batches = -(-n // bs)  # CLIP-ReID's stage 1 also trains on the last partial batch
        self._order = [perm[i * bs:(i + 1) * bs] for i in range(n_batches)][start_batch:]
        return n_batches

    def batches(self) -> Iterator[torch.Tensor]:
        return iter(self._order)

    def step(self, idx: torch.Tensor, epoch: int):
        idx = idx.to(self.ctx.device)
        y, c, img = self.pids[idx], self.clothes[idx], self.feats[idx]
        if self._graphs:  # CUDA graphs: a new step, so the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        self.model.train()
        with autocast(self.ctx.device, self.cfg.run.amp, self.cfg.run.amp_dtype):
            t = self.model.stage1_text(y, c if self.model.spec.sse else None, self.text)
        t = {k: v.float() for k, v in t.items()}
        text = t["t_ort"] if (self.model.spec.sse and self.c.contrastive_text == "ort") else t["t_id"]
        kw = dict(temperature=self.c.temperature, normalize=self.c.normalize)
        l_i2t = supcon(img, text, y, y, **kw)
        l_t2i = supcon(text, img, y, y, **kw)
        loss = l_i2t + l_t2i
        terms = {"i2t": l_i2t.detach(), "t2i": l_t2i.detach()}  # tensors: the engine reads them when it syncs
        if self.model.spec.sse:
            from ..models.sse import sse_loss
            l_sse, st = sse_loss(t["t_id"], t["t_clo"], t["t_ort"], self.c.lambda1, self.c.lambda2)
            loss = loss + l_sse
            terms.update(sse=l_sse.detach(), **st)
        return loss, terms, len(idx)

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        return {"lr": self.lr}


class Stage2Task:
    """Visual encoder + SIM with L_id + triplet + L_i2tce (+ CAL), prompts and text frozen."""

    name = "stage2"

    def __init__(self, model: SCIModel, ds: ReIDDataset, cfg: Config, ctx: DistContext,
                 evaluate: Callable[[int], dict[str, Any]] | None = None, wrap: Callable | None = None):
        self.model, self.ds, self.cfg, self.ctx, self.c = model, ds, cfg, ctx, cfg.stage2
        self.epochs = self.c.epochs
        self.evaluate = evaluate
        model.requires_grad_(True)
        model.freeze_text()
        model.id_prompts.requires_grad_(False)
        if model.clothes_prompts is not None:
            model.clothes_prompts.requires_grad_(False)
        model.bottleneck.bias.requires_grad_(False)
        model.bottleneck_proj.bias.requires_grad_(False)
        self.net = wrap(model) if wrap else model  # DDP wrapper under torchrun
        weights, biases, gate = [], [], []
        for n, p in model.named_parameters():
            if not p.requires_grad or n.startswith("clothes_classifier"):
                continue
            (gate if n == "sim.gamma" else biases if n.endswith("bias") else weights).append(p)
        groups = [{"params": weights, "base_lr": self.c.lr},
                  {"params": biases, "base_lr": self.c.lr * self.c.bias_lr_factor}]
        if gate:  # SIM's gate: its own lr factor, no weight decay (Stage2Config.gate_lr_factor)
            groups.append({"params": gate, "base_lr": self.c.lr * self.c.gate_lr_factor, "weight_decay": 0.0})
        self.opt = adam(groups, lr=self.c.lr, weight_decay=self.c.weight_decay)
        self.opt_cc = adam(list(model.clothes_classifier.parameters()), lr=self.c.cal_lr,
                                       weight_decay=self.c.weight_decay)
        d = cfg.data
        self.sampler = PKSampler([r.pid for r in ds.train], self.c.batch_size, d.num_instances,
                                 seed=cfg.run.seed, rank=ctx.rank, world_size=ctx.world)
        transform = build_transforms(d.height, d.width, d.pixel_mean, d.pixel_std, True, d.flip_prob, d.padding,
                                     d.erasing_prob)
        self.augment = None
        if d.device_augment:  # decode once, augment on the device: the same batches bit for bit (data/device_augment.py)
            from ..data.device_augment import DeviceAugment, Draws, collate_draws, decode_all
            self.augment = DeviceAugment(decode_all(ds.train, transform, ctx.device, d.workers), transform)
            dataset, collate = Draws(ds.train, transform), collate_draws
        else:
            dataset, collate = ImageDataset(ds.train, transform), None
        self.loader = DataLoader(dataset, batch_size=self.sampler.local_batch_size,
                                 sampler=SeededSampler(self.sampler, cfg.run.seed), num_workers=d.workers,
                                 drop_last=True, pin_memory=ctx.device.type == "cuda",
                                 persistent_workers=False, collate_fn=collate)
        self.pid2clothes = torch.as_tensor(ds.pid2clothes, device=ctx.device)
        self.frozen_bn = ([m for m in model.visual.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
                          if self.c.freeze_backbone_bn else [])
        self.best: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self._graphs = graphs_on(cfg)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.opt, "clothes": self.opt_cc}

    def meta(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"stage": "stage2", "spec": self.model.spec.to_dict(), "best": self.best, "config": self.cfg.to_dict(),
                "pixel_mean": d.pixel_mean, "pixel_std": d.pixel_std}

    def restore(self, meta: dict[str, Any]) -> None:
        self.best = meta.get("best", {}) or {}

    def set_epoch(self, epoch: int, start_batch: int) -> int:
        c = self.c
        factor = warmup_multistep(epoch + 1, c.warmup_epochs, c.warmup_factor, c.milestones, c.lr_gamma)
        _set_lr(self.opt, lambda g: g["base_lr"] * factor)
        self.lr = c.lr * factor
        self.sampler.set_epoch(epoch, start_batch)
        return self.sampler.num_batches()

    def batches(self) -> Iterator:
        if self.augment is not None:
            from ..data.device_augment import device_batches
            return device_batches(self.loader, self.augment)
        return iter(self.loader)

    def cal_active(self, epoch: int) -> bool:
        return self.c.cal and epoch >= self.c.cal_start_epoch

    def clothes_classifier_active(self, epoch: int) -> bool:
        start = self.c.cal_start_epoch if self.c.cal_classifier_start_epoch < 0 else self.c.cal_classifier_start_epoch
        return self.c.cal and epoch >= min(start, self.c.cal_start_epoch)

    def step(self, batch, epoch: int):
        imgs, pids, _, clothes, _ = batch
        dev = self.ctx.device
        imgs, pids, clothes = (t.to(dev, non_blocking=True) for t in (imgs, pids, clothes))
        if self._graphs:  # CUDA graphs: a new step, so the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        self.net.train()
        for bn in self.frozen_bn:  # keep the pretrained running statistics (and use them) in the CLIP trunk
            bn.eval()
        m, c = self.model, self.c
        with autocast(dev, self.cfg.run.amp, self.cfg.run.amp_dtype):
            out = self.net(imgs)
        eps = c.label_smoothing
        l_id = ce_smooth(out["logits_g"], pids, eps) + ce_smooth(out["logits_p"], pids, eps)
        all_pids = gather_rows(pids, self.ctx)
        l_tri = sum(triplet_hard(gather_with_grad(out[k], self.ctx), all_pids, c.triplet_margin, c.triplet_normalize)
                    for k in ("mid", "g", "p"))
        logits_t = i2t_logits(out["p"], m.prototypes, c.i2t_logits, c.i2t_scale)  # against every identity's prototype
        l_i2t = ce_smooth(logits_t, pids, eps)
        loss = c.id_weight * l_id + c.triplet_weight * l_tri + c.i2t_weight * l_i2t
        # device tensors, not floats: a host read per step waits for the GPU (the engine reads them when it syncs)
        terms = {"id": l_id.detach(), "tri": l_tri.detach(), "i2t": l_i2t.detach(),
                 "acc": (out["logits_p"].detach().argmax(1) == pids).float().mean()}
        if "sim_share" in out:  # |p' - p| / |p'| on the training batch: how far SIM moves the feature
            terms["sim_share"] = out["sim_share"].mean()
        if self.clothes_classifier_active(epoch):
            # 1) the clothes classifier learns on detached features with its own optimizer
            cc = m.clothes_classifier(out["bn"].detach())
            l_cc = F.cross_entropy(c.cal_scale * cc, clothes)
            self.opt_cc.zero_grad(set_to_none=True)
            l_cc.backward()
            all_reduce_mean_grads(m.clothes_classifier.parameters(), self.ctx)
            self.opt_cc.step()
            own = self.pid2clothes[pids]  # what CAL is meant to remove: telling apart one identity's own outfits
            within = cc.detach().masked_fill(~own, float("-inf")).argmax(1) == clothes
            terms.update(clothes_ce=l_cc.detach(), clothes_acc=(cc.detach().argmax(1) == clothes).float().mean(),
                         clothes_acc_within=within.float().mean(),
                         clothes_within_chance=(1.0 / own.sum(1).float()).mean())
        if self.cal_active(epoch):
            # 2) the adversarial loss uses the just-updated classifier on the live features
            l_cal = cal_loss(m.clothes_classifier(out["bn"]), clothes, self.pid2clothes[pids], c.cal_scale, c.cal_epsilon)
            loss = loss + c.cal_weight * l_cal
            terms["cal"] = l_cal.detach()
        return loss, terms, len(pids)

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"lr": self.lr}
        if self.model.sim is not None:
            rec["gamma"] = self.model.sim.gate_value()
        last = epoch + 1 == self.epochs
        if self.evaluate is not None and self.c.eval_every > 0 and ((epoch + 1) % self.c.eval_every == 0 or last):
            res = self.evaluate(epoch)
            if res:
                rec["eval"] = res["results"]
                if "val" in res:
                    rec["val"] = res["val"]
                self.last_eval = res
                if not self.best or res["score"] > self.best["score"]:
                    self.best = {"score": res["score"], "protocol": res["protocol"], "epoch": epoch + 1,
                                 "split": res.get("split", "test")}
                    rec["is_best"] = True
        return rec


def stage1_features(model: SCIModel, ds: ReIDDataset, cfg: Config, ctx: DistContext) -> torch.Tensor:
    """Image features p of every train image: test transform, encoder in eval mode (CLIP-ReID)."""
    from .features import extract

    d = cfg.data
    tf = build_transforms(d.height, d.width, d.pixel_mean, d.pixel_std, train=False)
    model.eval()
    return extract(lambda x: model.visual(x)["p"], ds.train, tf, ctx, cfg.eval.batch_size, d.workers,
                   amp=cfg.run.amp, desc="stage-1 features")


__all__ = ["Stage1Task", "Stage2Task", "stage1_features"]
