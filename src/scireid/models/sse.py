"""Semantic Separation Enhancement (DESIGN.md §2, eq. 5-9) and the stage-2 prototypes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def orthogonalize(t_id: torch.Tensor, t_clo: torch.Tensor) -> torch.Tensor:
    """T_ort = T_id - (<T_id, T_clo> / ||T_clo||^2) T_clo, row by row (eq. 5-6)."""
    coef = (t_id * t_clo).sum(-1, keepdim=True) / (t_clo * t_clo).sum(-1, keepdim=True).clamp_min(1e-12)
    return t_id - coef * t_clo


def sse_terms(t_id: torch.Tensor, t_clo: torch.Tensor, t_ort: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S_id = mean_i cos(T_ort_i, T_id_i) (eq. 7); S_clo = mean_{i != j} cos(T_ort_i, T_clo_j) (eq. 8)."""
    s_id = F.cosine_similarity(t_ort, t_id, dim=-1).mean()
    cos = F.normalize(t_ort, dim=-1) @ F.normalize(t_clo, dim=-1).T
    b = cos.shape[0]
    if b < 2:
        return s_id, cos.new_zeros(())
    # the off-diagonal entries in row-major order, by a view: boolean indexing would read the mask back to the host
    # (a GPU sync every step); the same entries in the same order give the same mean, bit for bit
    off = cos.flatten()[1:].view(b - 1, b + 1)[:, :-1].reshape(-1)
    return s_id, off.mean()


def sse_loss(t_id, t_clo, t_ort, lambda1: float = 1.0, lambda2: float = 1.0) -> tuple[torch.Tensor, dict]:
    """L_sse = lambda1 (1 - S_id) + lambda2 S_clo (eq. 9)."""
    s_id, s_clo = sse_terms(t_id, t_clo, t_ort)
    return lambda1 * (1 - s_id) + lambda2 * s_clo, {"S_id": s_id.detach(), "S_clo": s_clo.detach()}


@torch.no_grad()
def identity_prototypes(t_id: torch.Tensor, t_clo: torch.Tensor, pid2clothes: torch.Tensor) -> torch.Tensor:
    """For each identity k: T_id[k] minus its projection onto span{T_clo[c] : c worn by k} (via QR, float64)."""
    out = torch.empty_like(t_id)
    for k in range(t_id.shape[0]):
        cols = t_clo[pid2clothes[k].bool()].double()
        t = t_id[k].double()
        if cols.numel() == 0:
            out[k] = t_id[k]
            continue
        q, _ = torch.linalg.qr(cols.T)  # D x m orthonormal basis of the clothes span
        out[k] = (t - q @ (q.T @ t)).to(t_id.dtype)
    return out
