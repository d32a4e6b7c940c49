"""Per-query metrics, the identity x seed bootstrap, and the clothes-information measurements."""
import numpy as np
import pytest

from scireid.analysis.bootstrap import bootstrap_mean, excludes_zero
from scireid.analysis.clothes_info import clothes_nn, outfit_probe, probe_split
from scireid.eval.metrics import evaluate_features, per_query_metrics


@pytest.mark.parametrize("mode", ["general", "cloth-changing"])
def test_per_query_metrics_average_to_evaluate(mode):
    rng = np.random.default_rng(0)
    nq, ng = 60, 300
    qp, gp = rng.integers(0, 20, nq), rng.integers(0, 20, ng)
    qc, gc = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    qclo, gclo = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    qf, gf = rng.normal(size=(nq, 16)), rng.normal(size=(ng, 16))
    per = per_query_metrics(qf, gf, qp, gp, qc, gc, qclo, gclo, mode, chunk=17)
    ref = evaluate_features(qf, gf, qp, gp, qc, gc, qclo, gclo, mode)
    valid = np.isfinite(per["ap"])
    assert valid.sum() == ref["num_valid"] and np.array_equal(valid, np.isfinite(per["r1"]))
    assert per["ap"][valid].mean() == pytest.approx(ref["mAP"])
    assert per["r1"][valid].mean() == pytest.approx(ref["cmc"][0])
    # brute force for one query: the nearest non-junk gallery item is a positive
    d = 1 - (qf / np.linalg.norm(qf, axis=1, keepdims=True)) @ (gf / np.linalg.norm(gf, axis=1, keepdims=True)).T
    i = int(np.flatnonzero(valid)[0])
    same = gp == qp[i]
    junk = same & ((gc == qc[i]) | ((gclo == qclo[i]) if mode == "cloth-changing" else False))
    order = [j for j in np.argsort(d[i], kind="stable") if not junk[j]]
    assert per["r1"][i] == float(same[order[0]])


def test_bootstrap_point_and_interval_by_hand():
    # two identities, one seed: values 0,0 (id 1) and 1,1 (id 2): every resample is 0, 1/2 or 1
    ci = bootstrap_mean([np.array([0.0, 0.0, 1.0, 1.0])], np.array([1, 1, 2, 2]), n_boot=4000)
    assert ci["mean"] == 0.5 and ci["low"] == 0.0 and ci["high"] == 1.0 and ci["groups"] == 2
    # a constant difference has no spread, whatever identities and seeds are drawn
    ci = bootstrap_mean([np.full(10, 2.0), np.full(10, 2.0)], np.arange(10) // 2, scale=100)
    assert ci["mean"] == ci["low"] == ci["high"] == 200.0 and excludes_zero(ci)
    # NaN (a query with no valid match) is left out for every seed
    ci = bootstrap_mean([np.array([1.0, np.nan, 3.0]), np.array([1.0, 5.0, 3.0])], np.array([0, 1, 2]))
    assert ci["mean"] == 2.0 and ci["items"] == 2


def test_bootstrap_interval_covers_like_the_normal_approximation():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(400), 5)
    x = rng.normal(size=400)[groups] + rng.normal(size=2000)  # identity effect + noise
    ci = bootstrap_mean([x], groups)
    se = x.reshape(400, 5).mean(1).std(ddof=1) / np.sqrt(400)  # identities are the independent units
    assert ci["half_width"] == pytest.approx(1.96 * se, rel=0.15)
    assert not excludes_zero(bootstrap_mean([x - x.mean()], groups))


def test_seed_resampling_widens_the_interval():
    groups = np.arange(200)
    base = np.zeros(200)
    same = bootstrap_mean([base + 1, base + 1, base + 1], groups)
    spread = bootstrap_mean([base + 0, base + 1, base + 2], groups)
    assert same["half_width"] == 0 and spread["half_width"] > 0.3 and spread["mean"] == 1.0


def _people(n_id=30, n_out=3, cams=4, per_view=3, seed=0):
    rng = np.random.default_rng(seed)
    pid, cam, clo = [], [], []
    for p in range(n_id):
        for o in range(n_out):
            for c in rng.choice(8, cams, replace=False):
                for _ in range(per_view):
                    pid.append(p), cam.append(c), clo.append(o)
    return np.array(pid), np.array(cam), np.array(clo)


def test_outfit_probe_reads_planted_clothes_and_not_pure_identity():
    pid, cam, clo = _people()
    rng = np.random.default_rng(2)
    ident = rng.normal(size=(30, 32))[pid]
    outfit = rng.normal(size=(30, 3, 32))[pid, clo]
    noise = rng.normal(size=(len(pid), 32))
    with_clothes = outfit_probe(ident + outfit + 0.3 * noise, pid, cam, clo)
    without = outfit_probe(ident + 0.3 * noise, pid, cam, clo)
    assert with_clothes["hit"].mean() > 0.95
    assert abs(without["hit"].mean() - 1 / 3) < 0.1 and np.allclose(without["chance"], 1 / 3)
    train, held = probe_split(pid, cam, clo)
    assert not (train & held).any() and held.sum() == len(with_clothes["hit"])
    # held-out images come from a camera the probe never saw for that outfit
    for p, o in {(a, b) for a, b in zip(pid[held], clo[held])}:
        m = (pid == p) & (clo == o)
        assert set(cam[m & held]).isdisjoint(cam[m & train])


def test_clothes_nn_by_hand():
    pid = np.array([0, 0, 0, 0])
    cam = np.array([0, 1, 2, 3])
    clo = np.array([0, 0, 1, 1])
    f = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype=float)
    r = clothes_nn(f, pid, cam, clo)
    assert r["hit"].tolist() == [1.0] * 4 and np.allclose(r["chance"], 1 / 3)
    r = clothes_nn(f[[0, 2, 1, 3]], pid, cam, clo)  # features swapped between outfits: the neighbour is the other one
    assert r["hit"].tolist() == [0.0] * 4
