"""Sparse top-k re-ranking against the classic dense implementation (written out here)."""
import numpy as np

from scireid.eval.rerank import rerank


def dense_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                                    np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float64)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, kind="stable")
    query_num = q_g_dist.shape[0]
    all_num = original_dist.shape[0]
    for i in range(all_num):
        fwd = initial_rank[i, :k1 + 1]
        bwd = initial_rank[fwd, :k1 + 1]
        kr = fwd[np.where(bwd == i)[0]]
        exp = kr
        for c in kr:
            cf = initial_rank[c, :int(np.around(k1 / 2.0)) + 1]
            cb = initial_rank[cf, :int(np.around(k1 / 2.0)) + 1]
            ckr = cf[np.where(cb == c)[0]]
            if len(np.intersect1d(ckr, kr)) > 2.0 / 3 * len(ckr):
                exp = np.append(exp, ckr)
        exp = np.unique(exp)
        w = np.exp(-original_dist[i, exp])
        V[i, exp] = w / np.sum(w)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V = np.stack([V[initial_rank[i, :k2]].mean(0) for i in range(all_num)])
    jac = np.zeros_like(original_dist)
    for i in range(query_num):
        mins = np.minimum(V[i][None, :], V).sum(1)
        jac[i] = 1 - mins / (2.0 - mins)
    final = jac * (1 - lambda_value) + original_dist * lambda_value
    return final[:query_num, query_num:]


def test_sparse_rerank_matches_dense():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 8))
    qf = centers[rng.integers(0, 10, 25)] + 0.6 * rng.normal(size=(25, 8))
    gf = centers[rng.integers(0, 10, 60)] + 0.6 * rng.normal(size=(60, 8))
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    d = lambda a, b: np.clip(1 - a @ b.T, 0, None)  # noqa: E731
    ref = dense_re_ranking(d(qn, gn), d(qn, qn), d(gn, gn), k1=8, k2=3)
    ours = rerank(qf, gf, k1=8, k2=3, chunk=16)
    assert ours.shape == (25, 60)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert not np.allclose(ours, d(qn, gn))  # re-ranking changed something
