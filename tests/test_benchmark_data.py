"""The search benchmark's synthetic galleries have the structure they claim (measured on a trained model)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.parametrize("structure", ["measured", "flatter"])
def test_gallery_reproduces_the_measured_feature_structure(structure):
    from deploy_speed import MEAN_NORM, SHARES, gallery, spectrum
    from feature_structure import dims_95, participation_ratio
    from feature_structure import structure as measure
    g, q, pids, outfit, qids = gallery(20000, 256, structure, n_queries=8, labels=True)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-5)
    assert q.shape == (16, 256) and qids.shape == (16,) and qids.max() <= pids.max()
    s = measure(g, pids, outfit)
    # the variance components and the mean are recovered (the L2 normalisation moves them a little)
    for part in ("between", "outfit", "within"):
        assert s[part] == pytest.approx(SHARES[part], rel=0.1), part
    assert s["mean_norm"] == pytest.approx(MEAN_NORM, rel=0.1)
    # and so is the effective dimension of the spectrum asked for
    lam = spectrum(256, structure)
    assert s["participation_ratio"] == pytest.approx(participation_ratio(lam), rel=0.15)
    assert s["dims_95"] == pytest.approx(dims_95(lam), rel=0.15)


def test_variance_components_are_unbiased_for_small_groups():
    """Few images per outfit: the raw spread of group means would overstate the upper levels."""
    from feature_structure import structure as measure
    rng = np.random.default_rng(0)
    dim, n_ids = 16, 400
    c = rng.normal(size=(n_ids, dim)) * np.sqrt(0.3 / dim)
    o = rng.normal(size=(n_ids, 4, dim)) * np.sqrt(0.2 / dim)
    pids = np.repeat(np.arange(n_ids), 6)
    outfit = rng.integers(0, 2, len(pids)) + 2 * (np.arange(len(pids)) % 2)  # 2-4 outfits each, 1-3 images each
    f = c[pids] + o[pids, outfit] + rng.normal(size=(len(pids), dim)) * np.sqrt(0.25 / dim)
    s = measure(f, pids, outfit)
    assert s["between"] == pytest.approx(0.3, rel=0.1)
    assert s["outfit"] == pytest.approx(0.2, rel=0.1)
    assert s["within"] == pytest.approx(0.25, rel=0.1)


def test_search_benchmark_on_embedded_features_holds_out_queries(tmp_path):
    import json

    from deploy_speed import real_features
    f = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    np.save(tmp_path / "feats.npy", f)
    (tmp_path / "feats.json").write_text(json.dumps({"rows": [{"path": f"{i}.png"} for i in range(300)]}))
    g, q = real_features(str(tmp_path / "feats.npy"), n_queries=40)
    assert g.shape == (260, 8) and q.shape == (40, 8)
    rows = {r.tobytes() for r in f}
    assert {r.tobytes() for r in g} | {r.tobytes() for r in q} == rows and not {r.tobytes() for r in g} & {r.tobytes() for r in q}


def test_training_benchmark_tree_is_read_as_ltcc(tmp_path):
    """benchmarks/train_e2e.py's generated tree goes through the real LTCC reader: every image kept, each query
    identity in the gallery, train identities with several outfits and cameras."""
    from train_e2e import make_ltcc_tree

    from scireid.config import load_config
    from scireid.data.source import load_dataset

    tree = make_ltcc_tree(tmp_path / "t", train=48, query=6, gallery=18, ids=6)
    ds = load_dataset(load_config("ltcc", [f"data.root={tree}"]))
    assert (len(ds.train), len(ds.test)) == (48, 24) and not ds.bad_names
    assert ds.num_train_pids == 6 and len({r.clothes for r in ds.train}) > 6
    assert len({r.camid for r in ds.train}) == 6 and len({r.pid for r in ds.test}) == 6


def test_ltcc_schedule_projection_adds_up_the_preset_s_epochs():
    """The projection #26 asks for, by hand: LTCC's preset trains 60 stage-1 epochs and 120 stage-2 epochs (CAL
    from epoch 45) and evaluates 12 times; 9,576 train and 7,543 query + gallery images."""
    from train_e2e import ltcc_schedule_minutes

    r = {"features_s": 10.0, "stage1": 9576.0, "stage2_no_cal": 957.6, "stage2_cal": 478.8}  # forward: 100 img/s
    seconds = 95.76 + 60 * 1 + 45 * 10 + 75 * 20 + 12 * 75.43
    assert ltcc_schedule_minutes(r, "", 1000) == pytest.approx(seconds / 60)


@pytest.mark.slow  # about a minute and a half: a tiny model through the whole benchmark, then compiled
def test_training_benchmark_runs_end_to_end_with_compile(tmp_path):
    """What `gpu_check.sh` runs on a GPU, on CPU with a tiny model: every row and the projection for both variants,
    then the `issue26` part's SCI-only runs under --compile."""
    import subprocess
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_e2e.py"

    def table(*args):
        p = subprocess.run([sys.executable, str(script), "--arch", "tiny-rn", "--steps", "2", "--loaders", "dev",
                            "--no-write", *args], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return {ln.split(" | ")[0].lstrip("| "): [c.strip(" |") for c in ln.split(" | ")[1:]]
                for ln in p.stdout.splitlines() if ln.startswith("| ")}
    projection = "whole LTCC schedule (60 + 120 epochs, 12 evaluations) projected, minutes, `data.device_augment`"
    both = table()
    assert both["measurement"] == ["baseline", "SCI", "SCI over baseline (time)"]
    assert len([k for k in both if "data.device_augment" in k]) == 7
    assert all(float(c.replace(",", "")) > 0 for c in both[projection][:2]) and both[projection][2].endswith("%")
    sci = table("--variants", "full", "--runs-only", "--compile", "default")
    assert sci["measurement"] == ["SCI"] and "bare trunk step (forward, backward, Adam)" not in sci
    assert float(sci[projection][0].replace(",", "")) > 0


def test_step_macs_count_the_non_local_block_forward_and_backward():
    # SCI's extra multiply-adds per image are SIM's non-local block (four C x C/2 products over N tokens, each once
    # forward and twice backward: 12 N C C/2) plus its N x N attention and the cross-attention, a little more
    from train_step import step_macs
    extra = ("model.arch=tiny-rn",)  # C = 512 at layer4, 16 x 8 = 128 tokens at the preset's 256x128
    base, sci = step_macs("baseline", extra=extra), step_macs("full", extra=extra)
    C, N = 512, 128
    hand = 12 * N * C * (C // 2)
    assert hand <= sci - base <= 1.3 * hand
