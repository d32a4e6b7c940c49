"""Semantic-Guided Interaction Module (DESIGN.md §3, eq. 13-17)."""
from __future__ import annotations

import torch
from torch import nn


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block; W_z's BN starts at zero so the block starts as identity."""

    def __init__(self, channels: int):
        super().__init__()
        inner = channels // 2
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.w_z = nn.Sequential(nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.w_z[1].weight)
        nn.init.zeros_(self.w_z[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # B, N, C
        theta = _pointwise(self.theta, t)  # B, N, C/2
        phi = _pointwise(self.phi, t).transpose(1, 2)  # B, C/2, N
        g = _pointwise(self.g, t)  # B, N, C/2
        y = torch.softmax(theta @ phi, dim=-1) @ g  # eq. 13
        z = _pointwise(self.w_z[0], y).transpose(1, 2).reshape(b, c, h, w)
        return self.w_z[1](z) + x  # eq. 14


def _pointwise(conv: nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to (B, N, C) tokens as the matrix product it is. Same parameters and values as
    ``conv`` on the map; on CPU oneDNN's 1x1-convolution backward took ~7 ms a call at the demo's size, which
    made SIM most of SCI's step overhead (BENCHMARKS.md, training step)."""
    return nn.functional.linear(tokens, conv.weight.flatten(1), conv.bias)


class SelfAttention2d(nn.Module):
    """Plain multi-head self-attention over the map's tokens (the paper's Fig. 7 alternative)."""

    def __init__(self, channels: int, heads: int = 8):
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        y, _ = self.attn(t, t, t, need_weights=False)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class TextVisualCrossAttention(nn.Module):
    """Prototypes as queries, visual tokens as keys/values (eq. 15-16), pooled over prototypes."""

    def __init__(self, text_dim: int, vis_dim: int, pooling: str = "mean"):
        super().__init__()
        self.w_q = nn.Linear(text_dim, text_dim)
        self.w_k = nn.Linear(vis_dim, text_dim, bias=False)  # a key bias adds q.b_k to every token: it cancels in the softmax
        self.w_v = nn.Linear(vis_dim, text_dim)
        self.pooling = pooling
        self.scale = text_dim ** -0.5

    def forward(self, protos: torch.Tensor, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """protos (K, D), z (B, C, H, W), p (B, D) -> r (B, D).

        Computed by exact re-association, so the N visual tokens are never projected:
        q . (W_k t + b_k) = (W_k^T q) . t + q . b_k, and q . b_k is constant over tokens, so it
        cancels in the softmax; pooling is linear and attention rows sum to one, so
        pool_k(attn_k (W_v t + b_v)) = W_v (pooled attention-weighted token) + b_v.
        The float64 test checks this against the literal eq. 15-16.
        """
        tokens = z.flatten(2).transpose(1, 2)  # B, N, C
        return self.w_v(torch.einsum("bn,bnc->bc", self.attention(protos, z, p), tokens))

    def attention(self, protos: torch.Tensor, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """(B, N) attention over the visual tokens, pooled over the prototypes; each row sums to one."""
        tokens = z.flatten(2).transpose(1, 2)  # B, N, C
        q = self.w_q(protos)  # K, D
        qk = q @ self.w_k.weight  # K, C
        attn = torch.softmax(torch.einsum("kc,bnc->bkn", qk, tokens) * self.scale, dim=-1)  # B, K, N
        if self.pooling == "mean":
            return attn.mean(1)
        w = torch.softmax(p @ protos.T, dim=-1)  # similarity-weighted: softmax(<p, T>) of the image's own feature
        return torch.einsum("bk,bkn->bn", w, attn)


class SIM(nn.Module):
    def __init__(self, vis_dim: int, text_dim: int, attention: str = "nonlocal", pooling: str = "mean", heads: int = 8,
                 residual: str = "absolute", gate: str = "scalar", gate_init: float = 0.0):
        super().__init__()
        self.residual = residual
        self.context = NonLocal(vis_dim) if attention == "nonlocal" else SelfAttention2d(vis_dim, heads)
        self.cross = TextVisualCrossAttention(text_dim, vis_dim, pooling)
        # eq. 17's gate: one scalar (the paper), or one per channel of p (LayerScale). The paper's reading starts it
        # closed (0); a closed gate gives the cross-attention no gradient until Adam has moved it, about lr per step.
        shape = () if gate == "scalar" else (text_dim,)
        self.gamma = nn.Parameter(torch.full(shape, float(gate_init)))

    def refine_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.context(x)

    def update(self, p: torch.Tensor, z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """p' = p + gamma * r (eq. 17). No label enters: train and test run the same path.

        ``relative``: p' = p + gamma * |p| * r / |r|, so gamma is the fraction of |p| SIM moves. With a
        backbone whose |p| is ~600x |r| (the synthetic prior), eq. 17 as written cannot move p at any
        sensible gamma. The norm |p| is a scale, not a path for gradients (detached).
        """
        r = self.cross(protos.to(z.dtype), z, p).to(p.dtype)
        if self.residual == "relative":
            r = r * (p.norm(dim=1, keepdim=True).detach() / r.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return p + self.gamma * r

    def gate_value(self) -> float:
        """The gate as one number for logs: gamma, or the mean of the per-channel gate."""
        return float(self.gamma.detach().float().mean())


__all__ = ["NonLocal", "SelfAttention2d", "TextVisualCrossAttention", "SIM"]
