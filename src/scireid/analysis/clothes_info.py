"""How much clothes information is left in frozen test features: what CAL and SSE are meant to lower.

Two measurements, both within one person (telling people apart is the features' job, so counting
clothes across identities would reward identity learning as well):

- outfit probe: a fresh linear classifier over each identity's own outfits, trained on its images
  from some cameras and scored on its images from a held-out camera. Chance is one over the
  identity's outfit count. A probe, unlike CAL's own clothes classifier, is trained after the fact
  on the frozen features, so it measures what is left, not whether an adversary keeps up.
- nearest neighbour: an image's nearest image of the same person from another camera wears the same
  outfit; chance is the same-outfit share of those candidates.

Each returns per-image arrays (hit, chance, identity) so that intervals can resample identities and seeds.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .bootstrap import bootstrap_mean


def probe_split(pids: np.ndarray, cams: np.ndarray, clothes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, held-out) masks: per (identity, outfit), its images from its highest-numbered camera are
    held out when the outfit was seen by at least two cameras; identities need two outfits to train on."""
    train = np.zeros(len(pids), bool)
    held = np.zeros(len(pids), bool)
    for key in set(zip(pids.tolist(), clothes.tolist())):
        idx = np.flatnonzero((pids == key[0]) & (clothes == key[1]))
        cs = np.unique(cams[idx])
        if len(cs) >= 2:
            held[idx[cams[idx] == cs[-1]]] = True
            train[idx[cams[idx] != cs[-1]]] = True
        else:
            train[idx] = True
    for pid in np.unique(pids):  # an identity with one trainable outfit has nothing to tell apart
        m = pids == pid
        if len(np.unique(clothes[m & train])) < 2:
            train[m] = held[m] = False
    return train, held


def outfit_probe(feats: np.ndarray, pids: np.ndarray, cams: np.ndarray, clothes: np.ndarray, l2: float = 1e-3,
                 max_iter: int = 100) -> dict[str, np.ndarray]:
    """Per held-out image: hit (the probe names its outfit among its identity's), chance, identity.

    Classes are (identity, outfit) pairs; the softmax runs over the identity's own outfits only, so
    this is one multinomial logistic regression per identity (L2 ``l2`` on the weights, float64 L-BFGS,
    deterministic). Held-out images of an outfit the probe never trained on are not scored.
    """
    pids, cams, clothes = (np.asarray(a) for a in (pids, cams, clothes))
    train, held = probe_split(pids, cams, clothes)
    keys = sorted(set(zip(pids[train].tolist(), clothes[train].tolist())))
    cls_of = {k: i for i, k in enumerate(keys)}
    by_pid: dict[int, list[int]] = {}
    for (p, _), i in cls_of.items():
        by_pid.setdefault(p, []).append(i)
    held &= np.array([(p, c) in cls_of for p, c in zip(pids.tolist(), clothes.tolist())], bool)
    if not train.any() or not held.any():
        return {"hit": np.zeros(0), "chance": np.zeros(0), "group": np.zeros(0, np.int64)}
    width = max(len(v) for v in by_pid.values())
    own = np.full((len(pids), width), -1, np.int64)
    for n, p in enumerate(pids.tolist()):
        if p in by_pid:
            own[n, :len(by_pid[p])] = by_pid[p]
    x = F.normalize(torch.as_tensor(np.asarray(feats, np.float64)), dim=1)
    own_t = torch.as_tensor(own)
    target = torch.as_tensor([(own[n] == cls_of.get((p, c), -2)).argmax() for n, (p, c) in
                              enumerate(zip(pids.tolist(), clothes.tolist()))])
    w = torch.zeros(len(keys), x.shape[1], dtype=torch.float64, requires_grad=True)

    def logits(rows: np.ndarray) -> torch.Tensor:
        o = own_t[rows]
        z = torch.einsum("nd,nkd->nk", x[rows], w[o.clamp_min(0)])
        return z.masked_fill(o < 0, float("-inf"))

    tr = np.flatnonzero(train)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits(tr), target[tr]) + 0.5 * l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    ho = np.flatnonzero(held)
    with torch.no_grad():
        hit = (logits(ho).argmax(1) == target[ho]).double().numpy()
    chance = 1.0 / (own[ho] >= 0).sum(1)
    return {"hit": hit, "chance": chance.astype(np.float64), "group": pids[ho]}


def clothes_nn(feats: np.ndarray, pids: np.ndarray, cams: np.ndarray, clothes: np.ndarray) -> dict[str, np.ndarray]:
    """Per image with both kinds of candidate: does its nearest same-person, other-camera image wear its outfit."""
    f = F.normalize(torch.as_tensor(np.asarray(feats, np.float32)), dim=1)
    hits, chance, group = [], [], []
    for pid in np.unique(pids):
        idx = np.flatnonzero(pids == pid)
        sim = (f[idx] @ f[idx].T).numpy()
        for a, i in enumerate(idx):
            cand = np.flatnonzero(cams[idx] != cams[i])
            same = clothes[idx[cand]] == clothes[i]
            if len(cand) < 2 or same.all() or not same.any():
                continue
            hits.append(float(same[np.argmax(sim[a, cand])]))
            chance.append(float(same.mean()))
            group.append(int(pid))
    return {"hit": np.array(hits), "chance": np.array(chance), "group": np.array(group, np.int64)}


def summarise(per_image: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Accuracy and chance with 95% intervals over resampled identities (one run)."""
    if len(per_image["hit"]) == 0:
        return {"accuracy": None, "chance": None, "images": 0}
    acc = bootstrap_mean([per_image["hit"]], per_image["group"], seed=seed)
    return {"accuracy": acc["mean"], "low": acc["low"], "high": acc["high"],
            "chance": float(np.mean(per_image["chance"])), "images": int(len(per_image["hit"])),
            "identities": int(len(np.unique(per_image["group"])))}


def clothes_information(feats: np.ndarray, pids: np.ndarray, cams: np.ndarray, clothes: np.ndarray) -> dict[str, Any]:
    """Both measurements, summarised, with their per-image arrays (lists, for JSON) for pooling over seeds."""
    out: dict[str, Any] = {}
    for name, fn in (("outfit_probe", outfit_probe), ("clothes_nn", clothes_nn)):
        per = fn(feats, np.asarray(pids), np.asarray(cams), np.asarray(clothes))
        out[name] = summarise(per) | {"per_image": {k: v.tolist() for k, v in per.items()}}
    return out


__all__ = ["outfit_probe", "clothes_nn", "clothes_information", "probe_split", "summarise"]
