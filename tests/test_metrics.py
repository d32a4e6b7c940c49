"""Ranking metrics against an independent per-query brute force and hand-worked cases."""
import numpy as np
import pytest
import torch

from scireid.eval.metrics import evaluate, evaluate_features


def brute_force(dist, qp, gp, qc, gc, qclo, gclo, mode):
    """Plain loop: stable sort each row, drop junk, read ranks of positives."""
    aps, inps, cmcs = [], [], []
    G = dist.shape[1]
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep, hits = [], []
        for j in order:
            same = gp[j] == qp[i]
            if mode == "general":
                good, junk = same and gc[j] != qc[i], same and gc[j] == qc[i]
            elif mode == "cloth-changing":
                good = same and gc[j] != qc[i] and gclo[j] != qclo[i]
                junk = same and (gc[j] == qc[i] or gclo[j] == qclo[i])
            else:
                good = same and gc[j] != qc[i] and gclo[j] == qclo[i]
                junk = same and (gc[j] == qc[i] or gclo[j] != qclo[i])
            if junk:
                continue
            keep.append(j)
            hits.append(good)
        hits = np.array(hits, dtype=bool)
        if not hits.any():
            continue
        pos = np.flatnonzero(hits)
        aps.append(np.mean([(k + 1) / (p + 1) for k, p in enumerate(pos)]))
        inps.append(len(pos) / (pos[-1] + 1))
        c = np.zeros(G)
        c[pos[0]:] = 1
        cmcs.append(c)
    if not aps:
        return None
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps), len(aps)


def random_problem(rng, nq=40, ng=120, nid=12, ncam=4, nclo=3, ties=False):
    # query ids 0,1 never appear in the gallery (no valid match); gallery ids above nid are distractors
    qp, gp = rng.integers(0, nid, nq), rng.integers(2, nid + 3, ng)
    qc, gc = rng.integers(0, ncam, nq), rng.integers(0, ncam, ng)
    qclo, gclo = rng.integers(0, nclo, nq), rng.integers(0, nclo, ng)
    dist = rng.random((nq, ng)).astype(np.float32)
    if ties:
        dist = np.round(dist * 5) / 5  # many equal distances
    return dist, qp, gp, qc, gc, qclo, gclo


@pytest.mark.parametrize("mode", ["general", "cloth-changing", "same-clothes"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("path", ["auto", "partial", "counting"])
def test_matches_brute_force(mode, ties, seed, path):
    rng = np.random.default_rng(seed)
    args = random_problem(rng, ties=ties)
    ref = brute_force(*args, mode)
    res = evaluate(*args, mode=mode, chunk=7, path=path)  # odd chunk: exercises the block boundaries
    cmc, ap, inp, nvalid = ref
    assert res["num_valid"] == nvalid
    assert res["num_valid"] < 40  # some queries have no valid match and are skipped
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)
    assert res["mAP"] == pytest.approx(ap, abs=1e-12)
    assert res["mINP"] == pytest.approx(inp, abs=1e-12)
    assert len(res["cmc"]) == 120


def test_hand_worked_case():
    # one query, id 1, cam 0, clothes 0. Gallery in distance order:
    # g0 id2 (wrong), g1 id1 cam0 (junk: same cam), g2 id1 cam1 (hit), g3 id3, g4 id1 cam1 (hit)
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    gp, gc = np.array([2, 1, 1, 3, 1]), np.array([1, 0, 1, 1, 1])
    r = evaluate(dist, [1], gp, [0], gc)
    # ranking without junk: g0, g2(hit @2), g3, g4(hit @4): AP = (1/2 + 2/4)/2 = 0.5 ; INP = 2/4
    assert r["mAP"] == pytest.approx(0.5)
    assert r["mINP"] == pytest.approx(0.5)
    np.testing.assert_array_equal(r["cmc"], [0, 1, 1, 1, 1])


def test_hand_worked_cloth_changing_and_ties():
    # clothes: query wears 0. g0 same clothes other cam (junk in CC, hit in same-clothes), g1 clothes 1 other cam.
    dist = np.array([[0.2, 0.2, 0.9]])
    gp, gc, gclo = np.array([1, 1, 5]), np.array([1, 2, 1]), np.array([0, 1, 0])
    cc = evaluate(dist, [1], gp, [0], gc, [0], gclo, mode="cloth-changing")
    assert cc["mAP"] == 1.0 and cc["cmc"][0] == 1.0
    sc = evaluate(dist, [1], gp, [0], gc, [0], gclo, mode="same-clothes")
    assert sc["mAP"] == 1.0
    gen = evaluate(dist, [1], gp, [0], gc)
    assert gen["mAP"] == 1.0
    # tie broken by gallery order: a wrong id at index 0 with equal distance ranks first
    r = evaluate(np.array([[0.5, 0.5]]), [1], [7, 1], [0], [1, 1])
    assert r["mAP"] == pytest.approx(0.5)
    r = evaluate(np.array([[0.5, 0.5]]), [1], [1, 7], [0], [1, 1])
    assert r["mAP"] == pytest.approx(1.0)


def test_no_valid_query_counts_and_no_nan():
    r = evaluate(np.array([[0.1, 0.2]]), [1], [1, 2], [0], [0, 0])  # only same-camera match: junk
    assert r["num_valid"] == 0 and r["num_skipped"] == 1 and r["mAP"] == 0.0


def test_features_entry_point_equals_distmat_and_accepts_tensors():
    rng = np.random.default_rng(3)
    qf, gf = rng.normal(size=(30, 16)), rng.normal(size=(90, 16))
    _, qp, gp, qc, gc, qclo, gclo = random_problem(rng, nq=30, ng=90)
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    ref = evaluate(1 - qn @ gn.T, qp, gp, qc, gc, qclo, gclo, mode="cloth-changing")
    res = evaluate_features(torch.tensor(qf), torch.tensor(gf), torch.tensor(qp), gp, qc, gc, qclo, gclo,
                            mode="cloth-changing", chunk=8)
    assert res["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
    np.testing.assert_allclose(res["cmc"], ref["cmc"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        evaluate(np.zeros((1, 1)), [0], [0], [0], [1], mode="cc")
    with pytest.raises(ValueError, match="needs q_clothes"):
        evaluate(np.zeros((1, 1)), [0], [0], [0], [1], mode="cloth-changing")
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.zeros((2, 1)), [0], [0], [0], [1])


def test_auto_switches_to_counting_on_poor_features(monkeypatch):
    """With random (mAP ~ 0) distances the partial sort would sort nearly every row: counting is chosen."""
    import scireid.eval.metrics as m
    used = []
    real_count, real_partial = m._count_ranks, m._rank_block
    monkeypatch.setattr(m, "_count_ranks", lambda *a: used.append("counting") or real_count(*a))
    monkeypatch.setattr(m, "_rank_block", lambda *a: used.append("partial") or real_partial(*a))
    rng = np.random.default_rng(0)
    dist, qp, gp, qc, gc, qclo, gclo = random_problem(rng, nq=30, ng=2000, nid=300)
    evaluate(dist, qp, gp, qc, gc, mode="general")
    assert used == ["counting"]
    # near-perfect features: each query's positives come first, the partial path is kept
    used.clear()
    good = dist + 1.0 * (qp[:, None] != gp[None, :])
    evaluate(good, qp, gp, qc, gc, mode="general")
    assert used == ["partial"]
