"""``scireid pretrain``: contrastive image-text pretraining of a small open_clip CLIP on the corpus.

open_clip provides the model classes and the tokenizer; the loss is CLIP's InfoNCE with label-aware targets
and hard negatives (``contrastive_loss``, open_clip's ``ClipLoss`` when both are off); scireid's engine provides
resumable atomic checkpoints, the progress bar, metrics.jsonl and TensorBoard. Square inputs:
open_clip's ResNet takes a square image, so each person crop (H x W, W = H/2) is centred on a
mean-grey H x H canvas; the ReID model later reads the unpadded crop with CLIP-ReID's surgery.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import ConfigError, _coerce, _field_types
from ..data.captions import ATTRIBUTES, alone_caption, caption_named, hard_negative
from ..durable import atomic_write_json
from .corpus import Corpus, make_corpus

log = logging.getLogger("scireid")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's own normalisation, kept for the prior
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PretrainConfig:
    arch: str = "synth-clip"
    images: int = 32000
    epochs: int = 12
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    height: int = 64
    width: int = 32
    seed: int = 0
    eval_images: int = 1200
    alone: float = 0.3  # share of captions that name one attribute only
    bare: float = 0.2  # share of captions that are noun phrases only, with no person or verb
    swap_negatives: float = 0.5  # share of hard negatives that swap the top's and the bottoms' colours
    hard_negatives: bool = True  # one caption per image with one attribute changed, as an extra negative
    label_aware: bool = True  # captions true of several images in the batch are positives for all of them
    attribute_loss: float = 1.0  # weight of the attribute-caption loss (0: off); see PretrainTask.step
    threads: int = 0  # torch threads (0: torch's default)
    stop_after_steps: int = 0  # stop (as if killed) after N steps: for testing resume


def pretrain_config(overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    cfg = PretrainConfig()
    types = _field_types(PretrainConfig)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        k, v = (x.strip() for x in item.split("=", 1))
        if k not in types:
            raise ConfigError(f"{k}: unknown pretrain key; allowed: {', '.join(types)}")
        setattr(cfg, k, _coerce(k, v, types[k]))
    for k in ("images", "epochs", "batch_size", "height", "width", "eval_images"):
        if getattr(cfg, k) <= 0:
            raise ConfigError(f"{k}={getattr(cfg, k)}: expected a positive integer")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ConfigError(f"lr={cfg.lr}: expected a positive number")
    if not (cfg.attribute_loss >= 0 and math.isfinite(cfg.attribute_loss)):
        raise ConfigError(f"attribute_loss={cfg.attribute_loss}: expected a number >= 0")
    for k in ("alone", "bare", "swap_negatives"):
        if not 0 <= getattr(cfg, k) <= 1:
            raise ConfigError(f"{k}={getattr(cfg, k)}: expected a share between 0 and 1")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        raise ConfigError(f"weight_decay={cfg.weight_decay}: expected a number >= 0")
    for k in ("warmup_steps", "threads", "stop_after_steps"):
        if getattr(cfg, k) < 0:
            raise ConfigError(f"{k}={getattr(cfg, k)}: expected an integer >= 0")
    if cfg.batch_size > cfg.images:
        raise ConfigError(f"batch_size={cfg.batch_size} images={cfg.images}: not one full batch per epoch (0 steps); "
                          f"use batch_size <= images")
    if cfg.height % 32 or cfg.width > cfg.height:
        raise ConfigError(f"height={cfg.height} width={cfg.width}: height must be a multiple of 32 and width <= height")
    from ..models.backbone import model_config
    size = model_config(cfg.arch)["vision_cfg"]["image_size"]
    if size != cfg.height:
        raise ConfigError(f"arch={cfg.arch} takes {size}x{size} images (models/model_configs/{cfg.arch}.json) but "
                          f"height={cfg.height}: pretraining pads each crop to height x height")
    from .corpus import HELD_OUT_SEED
    if cfg.seed == HELD_OUT_SEED:
        raise ConfigError(f"seed={cfg.seed} is the held-out evaluation set's; choose another")
    return cfg


def build_prior(arch: str) -> torch.nn.Module:
    """A plain open_clip CLIP from the architecture file ``models/model_configs/<arch>.json``."""
    import open_clip

    from ..models.backbone import model_config
    return open_clip.model.CLIP(**model_config(arch))


def to_square_batch(images: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, H), the crop centred on a mean-grey canvas."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    if flip is not None and flip.any():
        x[torch.from_numpy(flip)] = x[torch.from_numpy(flip)].flip(-1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    b, _, h, w = x.shape
    out = torch.zeros(b, 3, h, h)
    left = (h - w) // 2
    out[..., left:left + w] = x
    return out


def consistency(named: np.ndarray, visible: np.ndarray) -> torch.Tensor:
    """(captions, images) bool: every attribute a caption names is visible in the image with that class.
    ``named``: (C, A) class or -1 where not named; ``visible``: (B, A) class or -1 where not visible."""
    ok = (named[:, None, :] < 0) | (named[:, None, :] == visible[None, :, :])
    return torch.from_numpy(ok.all(-1))


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, match: torch.Tensor | None = None,
                     negatives: torch.Tensor | None = None, neg_match: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, with two changes that our captions need.

    Label-aware targets (``match[c, b]``: caption c is true of image b): a partial caption such as "a person
    in black shoes" is true of a fifth of a batch, and plain InfoNCE pushes those images away from it. The
    target is spread evenly over the true pairs (as in UniCL / supervised contrastive learning). Hard
    negatives (``negatives``, one text per image, ``neg_match`` their truth against the images) join the
    image-to-text softmax only (NegCLIP). With ``match`` the identity and no negatives this is open_clip's
    ``ClipLoss``.
    """
    b = img.shape[0]
    match = torch.eye(b, dtype=torch.bool) if match is None else match
    texts, tmatch = txt, match
    if negatives is not None:
        texts = torch.cat([txt, negatives])
        tmatch = torch.cat([match, neg_match if neg_match is not None else torch.zeros(b, b, dtype=torch.bool)])
    logits_i2t = scale * img @ texts.T  # (B, T)
    target_i2t = tmatch.T.to(logits_i2t.dtype)
    target_i2t = target_i2t / target_i2t.sum(1, keepdim=True)
    logits_t2i = scale * txt @ img.T  # (B, B): hard negatives are not asked to find an image
    target_t2i = match.to(logits_t2i.dtype)
    target_t2i = target_t2i / target_t2i.sum(1, keepdim=True)
    loss_i = -(target_i2t * logits_i2t.log_softmax(1)).sum(1).mean()
    loss_t = -(target_t2i * logits_t2i.log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def attribute_loss(img: torch.Tensor, class_txt: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each image picks its true class of every attribute it shows among one caption per class.

    ``class_txt`` holds, attribute after attribute in ``ATTRIBUTES`` order, one caption per class that names
    that class alone, all in one wording drawn from the corpus's own generator (so the held-out evaluation
    wordings stay unseen); ``labels`` (B, attributes) is the class, or -1 where not visible. This is the
    batch contrastive loss's "alone" caption with every other class as its hard negative: in-batch negatives
    alone rarely oppose "long-sleeved" to "short-sleeved" in the same words. Mean cross-entropy over the
    visible (image, attribute) pairs.
    """
    losses, start = [], 0
    for j, a in enumerate(ATTRIBUTES):
        k = len(a.classes)
        seen = labels[:, j] >= 0
        if seen.any():
            logits = scale * img[seen] @ class_txt[start:start + k].T
            losses.append(torch.nn.functional.cross_entropy(logits, labels[seen, j], reduction="sum"))
        start += k
    return torch.stack(losses).sum() / (labels >= 0).sum().clamp(min=1)


def tokenizer():
    import open_clip
    return open_clip.get_tokenizer("RN50-quickgelu")  # CLIP's BPE, shipped inside open_clip


class PretrainTask:
    """One engine task: shuffled corpus batches, a caption drawn anew per (seed, epoch, image)."""
    name = "pretrain"

    def __init__(self, model: torch.nn.Module, corpus: Corpus, cfg: PretrainConfig):
        self.model, self.corpus, self.cfg = model, corpus, cfg
        self.epochs = cfg.epochs
        self.attr_names = [a.name for a in ATTRIBUTES]
        self.visible = np.array([[at.get(n, -1) for n in self.attr_names] for at in corpus.attrs], np.int64)
        self.tok = tokenizer()
        self.ctx_len = model.positional_embedding.shape[0]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        self.steps_per_epoch = len(corpus) // cfg.batch_size  # drop the last partial batch: contrastive needs width
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self._epoch, self._start = 0, 0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.opt}

    def lr_at(self, step: int) -> float:
        """Linear warm-up then cosine to zero, per step (open_clip's training schedule)."""
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        e = step - c.warmup_steps
        es = max(self.total_steps - c.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * e / es)) * c.lr

    def set_epoch(self, epoch: int, start_batch: int) -> int:
        self._epoch, self._start = epoch, start_batch
        return self.steps_per_epoch

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.cfg.seed, self._epoch])
        order = rng.permutation(len(self.corpus))
        flips = rng.random(len(self.corpus)) < 0.5
        bs = self.cfg.batch_size
        for b in range(self._start, self.steps_per_epoch):
            idx = np.sort(order[b * bs:(b + 1) * bs])
            texts, named, neg_texts, neg_named = [], [], [], []
            for i in idx:
                seed = [self.cfg.seed, self._epoch, int(i)]
                text, nd = caption_named(self.corpus.attrs[i], np.random.default_rng(seed), self.cfg.alone, self.cfg.bare)
                texts.append(text)
                named.append(nd)
                if self.cfg.hard_negatives:
                    text, nd = hard_negative(self.corpus.attrs[i], nd, seed, self.cfg.alone, self.cfg.bare,
                                             self.cfg.swap_negatives)
                    neg_texts.append(text)
                    neg_named.append(nd)
            vis = self.visible[idx]
            match = consistency(self._vectors(named), vis) if self.cfg.label_aware else None
            neg = None
            if neg_texts:
                neg_match = consistency(self._vectors(neg_named), vis)
                if not self.cfg.label_aware:  # only an accidental true "negative" of its own image counts
                    neg_match = neg_match & torch.eye(len(idx), dtype=torch.bool)
                neg = (self.tok(neg_texts, context_length=self.ctx_len), neg_match)
            classes = None
            if self.cfg.attribute_loss:  # every class of every attribute, each attribute in one wording this step
                classes = [alone_caption(a.name, k, np.random.default_rng([self.cfg.seed, self._epoch, b, j]))[0]
                           for j, a in enumerate(ATTRIBUTES) for k in range(len(a.classes))]
                classes = (self.tok(classes, context_length=self.ctx_len), torch.from_numpy(vis))
            yield (to_square_batch(self.corpus.images[idx], flips[idx]),
                   self.tok(texts, context_length=self.ctx_len), match, neg, classes, b)

    def _vectors(self, named: list[dict[str, int]]) -> np.ndarray:
        return np.array([[nd.get(n, -1) for n in self.attr_names] for nd in named], np.int64)

    def step(self, batch, epoch: int) -> tuple[torch.Tensor, dict[str, float], int]:
        images, text, match, neg, classes, b = batch
        step = epoch * self.steps_per_epoch + b
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step)
        self.model.train()
        n, n_neg = len(text), 0 if neg is None else len(neg[0])
        texts = torch.cat([text] + ([neg[0]] if neg is not None else []) + ([classes[0]] if classes is not None else []))
        img_f, txt_f, scale = self.model(images, texts)
        neg_f, neg_match = (None, None) if neg is None else (txt_f[n:n + n_neg], neg[1])
        loss = contrastive_loss(img_f, txt_f[:n], scale, match, neg_f, neg_match)
        logs = {}
        if classes is not None:
            attr = attribute_loss(img_f, txt_f[n + n_neg:], scale, classes[1])
            logs["attr_loss"] = float(attr.detach())
            loss = loss + self.cfg.attribute_loss * attr
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))  # open_clip's training loop does the same
        return loss, {"loss": float(loss.detach()), **logs, "logit_scale": float(scale.detach()), "lr": self.opt.param_groups[0]["lr"]}, len(images)

    def meta(self) -> dict[str, Any]:
        return {"spec": {"arch": self.cfg.arch, "prior": True}, "pretrain": dataclasses.asdict(self.cfg)}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        return {}


def export_weights(model: torch.nn.Module, path: Path, provenance: dict[str, Any]) -> Path:
    """fp16 open_clip state dict (what ``create_model`` + ``load_state_dict`` expects) as safetensors."""
    from safetensors.torch import save_file

    from ..durable import atomic_write
    sd = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}
    md = {"format": "open_clip", "arch": provenance["arch"], "provenance": json.dumps(provenance, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=md))


def pretrain(out: str | Path, cfg: PretrainConfig, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Build the corpus, train, export ``OUT/<arch>.safetensors`` + ``provenance.json``, score zero-shot."""
    from ..engine.distributed import setup
    from ..engine.engine import Engine
    from ..engine.rundir import RunLock, check_out_dir, clean_leftovers
    from ..engine.trainer import environment_info
    from .zeroshot import zero_shot

    out = Path(out)
    check_out_dir(out, marker="pretrain.json", resume=resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with RunLock(out):
        clean_leftovers(out)  # a checkpoint swap killed half-way: its complete copy back in place, the spare removed
        saved = out / "pretrain.json"
        if not resume and saved.exists():
            raise ConfigError(f"--out {out} already holds a pretraining run ({saved}); pass --resume to continue it or "
                              f"choose another --out")
        if resume and saved.exists():
            old = json.loads(saved.read_text())
            now = dataclasses.asdict(cfg)
            diff = [k for k in old if old[k] != now.get(k) and k not in ("threads", "stop_after_steps")]
            if diff:
                raise ConfigError(f"--resume: {saved} was made with other settings ({', '.join(diff)})")
        atomic_write_json(saved, dataclasses.asdict(cfg))
        torch.manual_seed(cfg.seed)
        model = build_prior(cfg.arch)
        t0 = time.time()
        corpus = make_corpus(cfg.images, cfg.seed, cfg.height, cfg.width, progress=True)
        log.info("pretraining corpus: %d images of %d people in %.0f s", len(corpus), len(corpus.identities),
                 time.time() - t0)
        tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            pass
        engine = Engine(out, setup("cpu"), amp=False, tb_writer=tb, stop_after_steps=cfg.stop_after_steps)
        task = PretrainTask(model, corpus, cfg)
        t0 = time.time()
        engine.run(task, resume=resume)
        train_s = time.time() - t0
        if tb is not None:
            tb.close()
        weights = out / f"{cfg.arch}.safetensors"
        provenance: dict[str, Any] = {"arch": cfg.arch, "command": command, "config": dataclasses.asdict(cfg),
                                      "corpus_images": len(corpus), "corpus_people": len(corpus.identities),
                                      "train_seconds_this_call": round(train_s, 1), "torch_threads": torch.get_num_threads(),
                                      "environment": environment_info(cfg.seed)}
        export_weights(model, weights, provenance)  # fp16 first: the zero-shot numbers are those of the file
        provenance["zero_shot"] = zero_shot(weights, arch=cfg.arch, n_images=cfg.eval_images, height=cfg.height,
                                            width=cfg.width)
        export_weights(model, weights, provenance)
        atomic_write_json(out / "provenance.json", provenance)
        return provenance
