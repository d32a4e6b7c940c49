"""Each equation of DESIGN.md against an independent float64 / brute-force computation."""
import math

import numpy as np
import pytest
import torch

from scireid.losses import cal_loss, ce_smooth, supcon, triplet_hard
from scireid.models.sci import ModelSpec, SCIModel
from scireid.models.sim import SIM, NonLocal, SelfAttention2d, TextVisualCrossAttention
from scireid.models.sse import identity_prototypes, orthogonalize, sse_loss


def test_orthogonalize_eq5_6():
    torch.manual_seed(0)
    t_id, t_clo = torch.randn(6, 32), torch.randn(6, 32)
    t_ort = orthogonalize(t_id, t_clo)
    assert torch.allclose((t_ort * t_clo).sum(1), torch.zeros(6), atol=1e-5)
    # by hand on a 2-d example: t_id = (1, 1), t_clo = (2, 0): projection (1, 0), T_ort = (0, 1)
    assert torch.allclose(orthogonalize(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])), torch.tensor([[0.0, 1.0]]))


def test_sse_loss_hand_made_batch():
    t_id = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    t_clo = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    t_ort = orthogonalize(t_id, t_clo)  # [[0,1],[0,2]]
    loss, terms = sse_loss(t_id, t_clo, t_ort, lambda1=2.0, lambda2=0.5)
    s_id = (math.cos(math.pi / 4) + 1.0) / 2  # cos(T_ort_0, T_id_0) = 1/sqrt2, cos(T_ort_1, T_id_1) = 1
    s_clo = 0.0  # all T_ort are (0, y), all T_clo are (x, 0): every i != j pair is orthogonal too
    assert terms["S_id"] == pytest.approx(s_id, abs=1e-6) and terms["S_clo"] == pytest.approx(s_clo, abs=1e-6)
    assert loss.item() == pytest.approx(2 * (1 - s_id) + 0.5 * s_clo, abs=1e-6)
    # a batch where unmatched pairs correlate
    t_clo2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t_ort2 = orthogonalize(t_id, t_clo2)
    _, terms2 = sse_loss(t_id, t_clo2, t_ort2)
    a, c = t_ort2.double().numpy(), t_clo2.double().numpy()
    cos = lambda u, v: u @ v / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
    assert terms2["S_clo"] == pytest.approx((cos(a[0], c[1]) + cos(a[1], c[0])) / 2, abs=1e-6)


def test_prototypes_remove_the_clothes_span():
    torch.manual_seed(0)
    t_id, t_clo = torch.randn(3, 16), torch.randn(5, 16)
    p2c = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    protos = identity_prototypes(t_id, t_clo, p2c)
    # identity 0: orthogonal to each of its three clothes, and t_id - proto lies in their span (lstsq residual 0)
    assert torch.allclose(protos[0] @ t_clo[:3].T, torch.zeros(3), atol=1e-5)
    A = t_clo[:3].double().numpy().T
    diff = (t_id[0] - protos[0]).double().numpy()
    coef, *_ = np.linalg.lstsq(A, diff, rcond=None)
    assert np.allclose(A @ coef, diff, atol=1e-5)
    # one clothes item: eq. 6
    assert torch.allclose(protos[1], orthogonalize(t_id[1:2], t_clo[3:4])[0], atol=1e-5)


def supcon_brute(a, c, ya, yc):
    a, c = a.double().numpy(), c.double().numpy()
    total = 0.0
    for i in range(len(a)):
        logits = [a[i] @ c[j] for j in range(len(c))]
        lse = math.log(sum(math.exp(v) for v in logits))
        pos = [j for j in range(len(c)) if yc[j] == ya[i]]
        total += -sum(logits[j] - lse for j in pos) / len(pos)
    return total / len(a)


def test_supcon_eq10_11():
    torch.manual_seed(0)
    img, txt = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert supcon(img, txt, y, y).item() == pytest.approx(supcon_brute(img, txt, y, y), rel=1e-5)
    assert supcon(txt, img, y, y).item() == pytest.approx(supcon_brute(txt, img, y, y), rel=1e-5)


def test_triplet_batch_hard():
    torch.manual_seed(0)
    f, y = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    F = f.double().numpy()
    d = lambda i, j: np.sqrt(max(((F[i] - F[j]) ** 2).sum(), 1e-12))  # noqa: E731
    ref = np.mean([max(0, max(d(i, j) for j in range(8) if y[j] == y[i]) -
                       min(d(i, j) for j in range(8) if y[j] != y[i]) + 0.3) for i in range(8)])
    assert triplet_hard(f, y, 0.3).item() == pytest.approx(ref, rel=1e-5)


def test_cal_loss_brute_force():
    torch.manual_seed(0)
    cos = torch.rand(4, 6) * 2 - 1
    clothes = torch.tensor([0, 2, 3, 5])
    pid2clo = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    pids = torch.tensor([0, 0, 1, 1])
    mask = pid2clo[pids]
    ours = cal_loss(cos, clothes, mask, scale=16, epsilon=0.1).item()
    C = cos.double().numpy() * 16
    total = 0.0
    for i in range(4):
        pos = [k for k in range(6) if mask[i, k]]
        neg = [k for k in range(6) if not mask[i, k]]
        for j in pos:
            logp = C[i, j] - math.log(math.exp(C[i, j]) + sum(math.exp(C[i, k]) for k in neg))
            t = (0.9 if j == clothes[i] else 0.0) + 0.1 / len(pos)
            total -= t * logp
    assert ours == pytest.approx(total / 4, rel=1e-6)


def test_ce_label_smoothing():
    logits, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    lp = torch.log_softmax(logits.double(), 1)[0]
    ref = -(0.9 + 0.1 / 3) * lp[0] - 0.1 / 3 * (lp[1] + lp[2])
    assert ce_smooth(logits, y, 0.1).item() == pytest.approx(ref.item(), rel=1e-6)


def test_nonlocal_eq13_14_float64():
    torch.manual_seed(0)
    nl = NonLocal(8).eval()
    torch.nn.init.normal_(nl.w_z[1].weight)  # leave zero-init so the block does something
    x = torch.randn(2, 8, 3, 2)
    out = nl(x)
    X = x.double().numpy().reshape(2, 8, 6)
    conv = lambda m, v: np.einsum("oc,bcn->bon", m.weight.detach().double().numpy()[:, :, 0, 0], v) + \
        m.bias.detach().double().numpy()[None, :, None]  # noqa: E731
    th, ph, g = conv(nl.theta, X), conv(nl.phi, X), conv(nl.g, X)
    ref = np.zeros_like(X)
    for b in range(2):
        s = th[b].T @ ph[b]
        s = np.exp(s - s.max(1, keepdims=True))
        s /= s.sum(1, keepdims=True)
        y = (s @ g[b].T).T  # C/2, N
        wz = conv(nl.w_z[0], y[None])[0]
        bn = nl.w_z[1]
        wz = (wz - bn.running_mean.double().numpy()[:, None]) / np.sqrt(bn.running_var.double().numpy()[:, None] + bn.eps)
        wz = wz * bn.weight.detach().double().numpy()[:, None] + bn.bias.detach().double().numpy()[:, None]
        ref[b] = wz + X[b]
    np.testing.assert_allclose(out.detach().double().numpy().reshape(2, 8, 6), ref, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "similarity"])
def test_cross_attention_eq15_16_float64(pooling):
    torch.manual_seed(0)
    ca = TextVisualCrossAttention(6, 8, pooling)
    protos, z, p = torch.randn(5, 6), torch.randn(2, 8, 3, 2), torch.randn(2, 6)
    r = ca(protos, z, p).detach().double().numpy()
    W = {n: (getattr(ca, n).weight.detach().double().numpy(),
             getattr(ca, n).bias.detach().double().numpy() if getattr(ca, n).bias is not None else np.zeros(6))
         for n in ("w_q", "w_k", "w_v")}
    T = protos.double().numpy()
    for b in range(2):
        tokens = z[b].double().numpy().reshape(8, 6).T  # N, C
        Q = T @ W["w_q"][0].T + W["w_q"][1]
        K = tokens @ W["w_k"][0].T + W["w_k"][1]
        V = tokens @ W["w_v"][0].T + W["w_v"][1]
        A = Q @ K.T / math.sqrt(6)
        A = np.exp(A - A.max(1, keepdims=True))
        A /= A.sum(1, keepdims=True)
        out = A @ V  # K x D: one attended vector per prototype
        if pooling == "mean":
            ref = out.mean(0)
        else:
            s = p[b].double().numpy() @ T.T
            w = np.exp(s - s.max())
            ref = (w / w.sum()) @ out
        np.testing.assert_allclose(r[b], ref, atol=1e-5)


@pytest.mark.parametrize("attention", ["nonlocal", "self"])
def test_zero_init_sim_gives_exactly_the_baseline(attention):
    torch.manual_seed(0)
    spec = ModelSpec("tiny-rn", 4, 6, 64, 32, sse=True, sim=True, sim_attention=attention)
    full = SCIModel(spec).eval()
    full.prototypes.normal_()
    base = SCIModel(ModelSpec("tiny-rn", 4, 6, 64, 32, sse=False, sim=False)).eval()
    missing, unexpected = base.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.startswith(("sim.", "clothes_prompts.")) for k in unexpected)
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(full(x)["feat"], base(x)["feat"])
        full.sim.gamma.fill_(0.5)
        assert not torch.allclose(full(x)["feat"], base(x)["feat"])


def test_sim_update_eq17():
    torch.manual_seed(0)
    sim = SIM(8, 6)
    sim.gamma.data.fill_(0.25)
    p, z, protos = torch.randn(2, 6), torch.randn(2, 8, 3, 2), torch.randn(4, 6)
    torch.testing.assert_close(sim.update(p, z, protos), p + 0.25 * sim.cross(protos, z, p))
    assert isinstance(SelfAttention2d(8, 2)(z), torch.Tensor)


# ---------------------------------------------------------------- scale-aware forms (DESIGN.md §3, Scale)
def test_triplet_on_normalised_features_float64():
    torch.manual_seed(1)
    f, y = torch.randn(8, 4) * 30, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    U = f.double().numpy()
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    cos = U @ U.T
    d = lambda i, j: math.sqrt(max(2 - 2 * cos[i, j], 1e-12))  # noqa: E731  chord between unit vectors
    ref = np.mean([max(0, max(d(i, j) for j in range(8) if y[j] == y[i]) -
                       min(d(i, j) for j in range(8) if y[j] != y[i]) + 0.3) for i in range(8)])
    assert triplet_hard(f, y, 0.3, normalize=True).item() == pytest.approx(ref, rel=1e-5)
    # invariant to the feature scale; the raw form is not
    assert triplet_hard(f * 7, y, 0.3, normalize=True).item() == pytest.approx(ref, rel=1e-5)
    assert triplet_hard(f * 7, y, 0.3).item() != pytest.approx(triplet_hard(f, y, 0.3).item(), rel=1e-3)


def test_i2t_logits_raw_and_cosine_by_hand():
    from scireid.losses import i2t_logits
    p = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 10.0], [-1.0, -1.0]])
    raw = [[3.0, 40.0, -7.0], [0.0, -20.0, 2.0]]
    torch.testing.assert_close(i2t_logits(p, protos), torch.tensor(raw))
    s = 18.1
    cos = [[0.6, 0.8, -7 / 5 / math.sqrt(2)], [0.0, -1.0, 1 / math.sqrt(2)]]
    torch.testing.assert_close(i2t_logits(p, protos, "cosine", s), s * torch.tensor(cos))
    # the cosine form cannot be lowered by shrinking |p|
    torch.testing.assert_close(i2t_logits(p * 0.01, protos, "cosine", s), i2t_logits(p, protos, "cosine", s))


def test_sim_relative_residual_moves_p_by_gamma_times_its_norm():
    torch.manual_seed(0)
    sim = SIM(8, 6, residual="relative")
    sim.gamma.data.fill_(0.1)
    p, z, protos = torch.randn(2, 6) * 100, torch.randn(2, 8, 3, 2), torch.randn(4, 6)
    out = sim.update(p, z, protos)
    r = sim.cross(protos, z, p)
    ref = p + 0.1 * p.norm(dim=1, keepdim=True) * r / r.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close((out - p).norm(dim=1), 0.1 * p.norm(dim=1))
    # eq. 17 as written (absolute) moves p by gamma * |r| instead
    absolute = SIM(8, 6)
    absolute.load_state_dict(sim.state_dict())
    torch.testing.assert_close((absolute.update(p, z, protos) - p).norm(dim=1), 0.1 * r.norm(dim=1))


def test_balanced_test_feature_weighs_both_halves_equally():
    torch.manual_seed(0)
    spec = ModelSpec("tiny-rn", 4, 6, 64, 32, sse=False, sim=False, test_feature="balanced")
    m = SCIModel(spec).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        out = m(x)
        f = m.embed_tensor(x)
    dg = m.visual.map_dim
    g = out["g"].double() / out["g"].double().norm(dim=1, keepdim=True)
    p = out["p"].double() / out["p"].double().norm(dim=1, keepdim=True)
    ref = torch.cat([g, p], 1) / math.sqrt(2)
    torch.testing.assert_close(f.double(), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(f[:, :dg].norm(dim=1), f[:, dg:].norm(dim=1))


def test_stage_adam_is_adam_with_l2_decay_float64():
    """The engine's (fused) Adam against Adam written out by hand (Kingma & Ba, with CLIP-ReID's L2 weight
    decay added to the gradient), in float64: equal to the last bit's neighbourhood over 20 steps."""
    from scireid.engine.tasks import adam

    torch.manual_seed(0)
    w0 = torch.randn(7, 5, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = adam([{"params": [p]}], lr=1e-2, weight_decay=5e-4)
    w, m, v = w0.numpy().copy(), np.zeros((7, 5)), np.zeros((7, 5))
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, 21):
        g = torch.randn(7, 5, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        gn = g.numpy() + 5e-4 * w
        m = b1 * m + (1 - b1) * gn
        v = b2 * v + (1 - b2) * gn * gn
        w = w - 1e-2 * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(p.detach().numpy(), w, rtol=0, atol=1e-13)
