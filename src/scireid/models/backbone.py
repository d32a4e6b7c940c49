"""CLIP through open_clip, made ReID-ready (CLIP-ReID's surgery) and exposing what SCI needs.

RN50: layer4 stride 2 -> 1 (the anti-alias AvgPools of its first block become identity; no
weight changes), attention-pool positional embedding resized bilinearly to the input's grid.
ViT: patch grid of the input size, positional embedding resized the same way.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_DIR = Path(__file__).parent / "model_configs"
OPENCLIP_MODELS = ("RN50-quickgelu", "ViT-B-16-quickgelu", "RN50", "ViT-B-16")


def list_models() -> list[str]:
    return sorted([p.stem for p in CONFIG_DIR.glob("*.json")] + list(OPENCLIP_MODELS))


def model_config(name: str) -> dict[str, Any]:
    local = CONFIG_DIR / f"{name}.json"
    if local.is_file():
        return json.loads(local.read_text())
    if name in OPENCLIP_MODELS:
        import open_clip

        return open_clip.get_model_config(name)
    from ..errors import ConfigError

    raise ConfigError(f"model.arch={name!r} unknown; available: {', '.join(list_models())}")


def input_multiple(name: str) -> int:
    """What the input height and width must be multiples of: 32 for ResNets, the patch size for ViTs."""
    vc = model_config(name)["vision_cfg"]
    if isinstance(vc.get("layers"), (list, tuple)):
        return 32
    ps = vc.get("patch_size") or 16
    return ps if isinstance(ps, int) else max(ps)


def build_clip(name: str) -> nn.Module:
    """Random-init open_clip CLIP of architecture ``name`` at its native (224) resolution."""
    import open_clip

    cfg = model_config(name)
    return open_clip.model.CLIP(**cfg)


def is_resnet(visual: nn.Module) -> bool:
    return hasattr(visual, "attnpool")


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + s*s, C) -> (1 + h*w, C): class token kept, grid resized bilinearly (CLIP-ReID)."""
    cls_tok, g = pos[:1], pos[1:]
    s = int(math.sqrt(g.shape[0]))
    if s * s != g.shape[0]:
        raise ValueError(f"positional embedding of {g.shape[0]} tokens is not a square grid")
    if (s, s) == tuple(grid):
        return pos.clone()
    g = g.reshape(1, s, s, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g.float(), size=grid, mode="bilinear", align_corners=False).to(pos.dtype)
    return torch.cat([cls_tok, g.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def reid_surgery(visual: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Apply CLIP-ReID's changes in place for a ``height`` x ``width`` input; returns the feature grid."""
    if is_resnet(visual):
        if height % 32 or width % 32:
            raise ValueError(f"RN backbones need an input size that is a multiple of 32, got {height}x{width}")
        block = visual.layer4[0]
        block.avgpool = nn.Identity()
        if block.downsample is not None:
            block.downsample._modules["-1"] = nn.Identity()
        grid = (height // 16, width // 16)
        ap = visual.attnpool
        ap.positional_embedding = nn.Parameter(resize_pos_embed(ap.positional_embedding.data, grid))
    else:
        ph, pw = visual.patch_size
        if height % ph or width % pw:
            raise ValueError(f"ViT needs an input size that is a multiple of {ph}, got {height}x{width}")
        grid = (height // ph, width // pw)
        visual.positional_embedding = nn.Parameter(resize_pos_embed(visual.positional_embedding.data, grid))
        visual.grid_size = grid
        visual.image_size = (height, width)
    return grid


def attention_pool(ap: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    """CLIP's attention pooling (open_clip's ``AttentionPool2d``, same parameters) by exact re-association.

    Only the first token's (the mean's) output is used, but ``AttentionPool2d.forward`` projects
    queries, keys and values for all 1 + H*W tokens and runs the output projection on all of them:
    for RN50 at 256x128 about 1.9 GMAC per image, more than SIM's non-local block. Per head h,
    q_h . (W_k,h t + b_k,h) = (W_k,h^T q_h) . t + q_h . b_k,h, the last term the same for every token;
    the attention rows sum to one, so sum_j a_hj (W_v,h t_j + b_v,h) = W_v,h (sum_j a_hj t_j) + b_v,h.
    No token is projected: ~32 MMAC per image. The float64 test checks it against open_clip's forward.
    """
    b, c = fmap.shape[:2]
    heads = ap.num_heads
    d = c // heads
    t = fmap.flatten(2).transpose(1, 2)  # B, N, C
    t = torch.cat([t.mean(1, keepdim=True), t], 1) + ap.positional_embedding.to(t.dtype)  # B, 1 + N, C
    q = F.linear(t[:, 0], ap.q_proj.weight, ap.q_proj.bias) * d ** -0.5  # B, C
    qh = q.view(b, heads, d)
    qk = torch.einsum("bhd,hdc->bhc", qh, ap.k_proj.weight.view(heads, d, c))  # B, heads, C
    # q . b_k is the same for every token, so it cancels in the softmax; it stays in the sum so that b_k gets its
    # (zero) gradient as in open_clip: an unused parameter would stop DDP's gradient reduction
    const = (qh * ap.k_proj.bias.view(heads, d)).sum(-1, keepdim=True)  # B, heads, 1
    attn = torch.softmax(qk @ t.transpose(1, 2) + const, dim=-1)  # B, heads, 1 + N
    v = torch.einsum("bhc,hdc->bhd", attn @ t, ap.v_proj.weight.view(heads, d, c)) + ap.v_proj.bias.view(heads, d)
    return ap.c_proj(v.reshape(b, c))


class ReIDVisual(nn.Module):
    """The surgically modified CLIP image tower, split so SIM can sit between the trunk and the pooling.

    ``trunk(x)`` -> (mid, fmap, cls): the penultimate-stage feature (for the triplet loss, as
    CLIP-ReID), the final map (B, C, H, W) and, for ViT, the class token. ``pool(fmap, cls)`` ->
    (g, p): the global feature and the projected feature in CLIP's joint space.
    """

    def __init__(self, visual: nn.Module, height: int, width: int, surgery: bool = True):
        super().__init__()
        self.visual = visual
        self.resnet = is_resnet(visual)
        if surgery:
            self.grid = reid_surgery(visual, height, width)
        else:  # CLIP as released: only for checking our forward against open_clip's
            stride = 32 if self.resnet else visual.patch_size[0]
            self.grid = (height // stride, width // stride)
        if self.resnet:
            self.map_dim = visual.attnpool.k_proj.in_features
            self.mid_dim = self.map_dim // 2
            self.proj_dim = visual.attnpool.c_proj.out_features
        else:
            self.map_dim = self.mid_dim = visual.transformer.width
            self.proj_dim = visual.proj.shape[1]

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        v = self.visual
        if self.resnet:
            x = v.stem(x.to(v.conv1.weight.dtype))
            x = v.layer3(v.layer2(v.layer1(x)))
            return x.mean((2, 3)), v.layer4(x), None
        x = v._embeds(x)
        blocks = v.transformer.resblocks
        for blk in blocks[:-1]:
            x = blk(x)
        mid = x[:, 0]
        x = v.ln_post(blocks[-1](x))
        b, n, c = x.shape
        fmap = x[:, 1:].transpose(1, 2).reshape(b, c, *self.grid)
        return mid, fmap, x[:, 0]

    def pool(self, fmap: torch.Tensor, cls: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resnet:
            return fmap.mean((2, 3)), attention_pool(self.visual.attnpool, fmap)
        return cls, cls @ self.visual.proj

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mid, fmap, cls = self.trunk(x)
        g, p = self.pool(fmap, cls)
        return {"mid": mid, "fmap": fmap, "g": g, "p": p}
