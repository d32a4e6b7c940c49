"""Loss functions as CLIP-ReID and Simple-CCReID compute them (DESIGN.md §2-3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon(anchors: torch.Tensor, contrast: torch.Tensor, a_labels: torch.Tensor, c_labels: torch.Tensor,
           temperature: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """-mean_i [ sum_j m_ij (l_ij - logsumexp_k l_ik) / sum_j m_ij ], l = a.c / T, m_ij = [y_i = y_j].

    CLIP-ReID's default: raw dot products, temperature 1 (eq. 10-11). i2t: images as anchors.
    """
    if normalize:
        anchors, contrast = F.normalize(anchors, dim=1), F.normalize(contrast, dim=1)
    logits = anchors.float() @ contrast.float().T / temperature
    mask = (a_labels[:, None] == c_labels[None, :]).float()
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -((mask * log_prob).sum(1) / mask.sum(1).clamp_min(1)).mean()


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None] - 2 * x @ y.T
    return d.clamp(min=1e-12).sqrt()


def triplet_hard(feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3, normalize: bool = False) -> torch.Tensor:
    """Batch-hard triplet on un-normalised features (CLIP-ReID's TripletLoss).

    ``normalize``: on L2-normalised features, so the margin means the same at any feature scale
    (distances are chords on the unit sphere, sqrt(2 - 2 cos)).
    """
    feats = F.normalize(feats.float(), dim=1) if normalize else feats.float()
    d = euclidean(feats, feats)
    same = labels[:, None] == labels[None, :]
    d_ap = (d - (~same).float() * 1e12).max(1).values
    d_an = (d + same.float() * 1e12).min(1).values
    return F.relu(d_ap - d_an + margin).mean()


def i2t_logits(p: torch.Tensor, protos: torch.Tensor, form: str = "raw", scale: float = 1.0) -> torch.Tensor:
    """Image-to-text logits of L_i2tce: CLIP-ReID's raw p'.T^T, or ``scale`` * cosine (the prior's own geometry).

    Raw logits assume OpenAI CLIP's feature scale; at another scale the softmax saturates and the
    loss is minimised fastest by shrinking |p'| (DESIGN.md §3, Scale).
    """
    if form == "cosine":
        return scale * F.normalize(p.float(), dim=1) @ F.normalize(protos.float(), dim=1).T
    return p @ protos.T


def cal_loss(cos_logits: torch.Tensor, clothes: torch.Tensor, pos_mask: torch.Tensor, scale: float = 16.0,
             epsilon: float = 0.1) -> torch.Tensor:
    """Clothes-based adversarial loss (Gu et al., CVPR 2022).

    log p_ij = s c_ij - log(exp(s c_ij) + sum_{k not of the identity} exp(s c_ik)); targets (1 - eps) on the
    own clothes + eps / K_i on each of the identity's K_i clothes.
    """
    s = scale * cos_logits.float()
    neg = 1.0 - pos_mask.float()
    shift = s.max(1, keepdim=True).values.detach()
    exp = torch.exp(s - shift)
    log_den = torch.log((exp * neg).sum(1, keepdim=True) + exp) + shift
    log_prob = s - log_den
    own = F.one_hot(clothes, s.shape[1]).float()
    target = (1 - epsilon) * own + epsilon * pos_mask.float() / pos_mask.float().sum(1, keepdim=True)
    return (-(target * log_prob)).sum(1).mean()


def ce_smooth(logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """(1 - eps) one-hot + eps / C: CLIP-ReID's CrossEntropyLabelSmooth."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=eps)
