"""The SCI model. With ``sse`` and ``sim`` off it computes CLIP-ReID's forward exactly."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ReIDVisual, build_clip
from .sim import SIM
from .sse import identity_prototypes, orthogonalize
from .text import PromptLearner, TextEncoder

ID_PROMPT = ("A photo of a", "person.")
CLOTHES_PROMPT = ("A photo of the", "clothes.")


@dataclass
class ModelSpec:
    """Everything needed to rebuild the model without the training data (stored in checkpoints)."""

    arch: str
    num_pids: int
    num_clothes: int
    height: int
    width: int
    n_ctx: int = 4
    sse: bool = True
    sim: bool = True
    sim_attention: str = "nonlocal"
    sim_pooling: str = "mean"
    sim_heads: int = 8
    sim_residual: str = "absolute"
    test_feature: str = "concat"
    sim_gate: str = "scalar"  # scalar | channel
    sim_gate_init: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def spec_from_meta(meta: dict, where: object) -> ModelSpec:
    """The checkpoint's model spec, or one line naming the file when its metadata is not scireid's."""
    from ..errors import CheckpointError
    spec = meta.get("spec")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{where}: not a scireid checkpoint (its metadata has no model spec)")
    try:
        return ModelSpec(**spec)
    except TypeError:
        import dataclasses
        need = [f.name for f in dataclasses.fields(ModelSpec) if f.default is dataclasses.MISSING]
        raise CheckpointError(f"{where}: its model spec is incomplete or foreign (has {sorted(spec)[:8]}, needs "
                              f"{need}); expected a checkpoint written by scireid train") from None


@contextmanager
def _own_stream(k: int) -> Iterator[None]:
    """Run a block on the CPU generator seeded from the run's seed and ``k``; the outer stream is left untouched."""
    seed = (torch.initial_seed() * 1_000_003 + k) % 2**63
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _bn_neck(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)  # BNNeck: no shift
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


def _classifier(dim: int, n: int) -> nn.Linear:
    fc = nn.Linear(dim, n, bias=False)
    nn.init.normal_(fc.weight, std=0.001)
    return fc


class CosineClassifier(nn.Module):
    """CAL's clothes classifier: cosine logits (the loss applies the scale)."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, dim).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class SCIModel(nn.Module):
    def __init__(self, spec: ModelSpec, clip: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        clip = clip if clip is not None else build_clip(spec.arch)
        self.visual = ReIDVisual(clip.visual, spec.height, spec.width)
        self.text = TextEncoder(clip)
        self.token_embedding = clip.token_embedding
        ctx_len = clip.positional_embedding.shape[0]
        self.id_prompts = PromptLearner(spec.num_pids, self.token_embedding, *ID_PROMPT, n_ctx=spec.n_ctx,
                                        context_length=ctx_len)
        # The optional modules draw their initial values from their own seeded stream, so the modules every
        # variant shares (BNNecks, classifiers) start from the same values as the baseline's of the same seed:
        # paired comparisons (SCI - baseline per seed) then differ by the mechanism, not by the init draw.
        with _own_stream(1):
            self.clothes_prompts = (PromptLearner(spec.num_clothes, self.token_embedding, *CLOTHES_PROMPT,
                                                  n_ctx=spec.n_ctx, context_length=ctx_len)
                                    if spec.sse else None)
        v = self.visual
        with _own_stream(2):
            self.sim = SIM(v.map_dim, v.proj_dim, spec.sim_attention, spec.sim_pooling, spec.sim_heads,
                           spec.sim_residual, spec.sim_gate, spec.sim_gate_init) if spec.sim else None
        # per-identity text prototypes (T_ort with SSE, else T_id), fixed after stage 1
        self.register_buffer("prototypes", torch.zeros(spec.num_pids, v.proj_dim))
        self.bottleneck = _bn_neck(v.map_dim)
        self.bottleneck_proj = _bn_neck(v.proj_dim)
        self.classifier = _classifier(v.map_dim, spec.num_pids)
        self.classifier_proj = _classifier(v.proj_dim, spec.num_pids)
        self.clothes_classifier = CosineClassifier(v.map_dim + v.proj_dim, spec.num_clothes)

    @property
    def feat_dim(self) -> int:
        return self.visual.map_dim + self.visual.proj_dim

    # ------------------------------------------------------------------ text side (stage 1)
    def text_features(self, learner: PromptLearner, labels: torch.Tensor,
                      encoder: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """``encoder``: ``self.text`` or a compiled wrapper of it (stage 1 under ``run.compile``)."""
        prompts, tok = learner(labels)
        return (self.text if encoder is None else encoder)(prompts, tok)

    def stage1_text(self, pids: torch.Tensor, clothes: torch.Tensor | None,
                    encoder: Callable[..., torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        t_id = self.text_features(self.id_prompts, pids, encoder)
        out = {"t_id": t_id}
        if self.spec.sse and clothes is not None:
            t_clo = self.text_features(self.clothes_prompts, clothes, encoder)
            out.update(t_clo=t_clo, t_ort=orthogonalize(t_id, t_clo))
        return out

    @torch.no_grad()
    def compute_prototypes(self, pid2clothes: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Frozen stage-2 targets: T_id, or with SSE T_id minus its clothes span (DESIGN.md §2)."""
        dev = self.prototypes.device
        pids = torch.arange(self.spec.num_pids, device=dev)
        t_id = torch.cat([self.text_features(self.id_prompts, pids[i:i + batch]) for i in range(0, len(pids), batch)])
        if self.spec.sse:
            clo = torch.arange(self.spec.num_clothes, device=dev)
            t_clo = torch.cat([self.text_features(self.clothes_prompts, clo[i:i + batch])
                               for i in range(0, len(clo), batch)])
            protos = identity_prototypes(t_id.float(), t_clo.float(), pid2clothes.to(dev))
        else:
            protos = t_id
        self.prototypes.copy_(protos.float())
        return self.prototypes

    # ------------------------------------------------------------------ image side
    def image_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """mid (for triplet), g, p' and the test feature; SIM (if on) refines the map and updates p."""
        mid, fmap, cls = self.visual.trunk(x)
        z = self.sim.refine_map(fmap) if self.sim is not None else fmap
        g, p0 = self.visual.pool(z, cls)
        p = self.sim.update(p0, z, self.prototypes) if self.sim is not None else p0
        return {"mid": mid, "g": g, "p": p, "p0": p0, "z": z}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.image_features(x)
        g, p = f["g"].float(), f["p"].float()
        if self.spec.test_feature == "balanced":  # each half on the unit sphere, so neither dominates the ranking
            feat = torch.cat([F.normalize(g, dim=1), F.normalize(p, dim=1)], dim=1)
        else:
            feat = torch.cat([g, p], dim=1)
        out = {"mid": f["mid"].float(), "g": g, "p": p, "feat": feat}
        if self.sim is not None:  # what SIM adds to p: |p' - p| / |p'| per image (a measurement, no gradient)
            out["sim_share"] = ((p - f["p0"].float()).norm(dim=1) / p.norm(dim=1).clamp_min(1e-12)).detach()
        if self.training:
            bn_g, bn_p = self.bottleneck(g), self.bottleneck_proj(p)
            out.update(bn=torch.cat([bn_g, bn_p], 1), logits_g=self.classifier(bn_g), logits_p=self.classifier_proj(bn_p))
        return out

    @torch.no_grad()
    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised test feature concat(g, p') before the BN necks (CLIP-ReID's convention; see test_feature)."""
        return F.normalize(self.forward(x)["feat"], dim=1)

    def freeze_text(self) -> None:
        for m in (self.text, self.token_embedding):
            m.requires_grad_(False)


def build_model(spec: ModelSpec, weights: str = "none") -> SCIModel:
    from .weights import load_clip_weights

    clip = build_clip(spec.arch)
    load_clip_weights(clip, weights, spec.arch)  # at native resolution, before the surgery resizes anything
    return SCIModel(spec, clip)
