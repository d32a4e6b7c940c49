"""A reduced demo (smallest data, 1 epoch per stage) writes a complete report."""
import json
import math

from PIL import Image

import pytest

from scireid.cli import main


@pytest.mark.slow  # 43 s: with it, CI's fresh-clone job took 608-616 s of its 600; `pytest -m slow` runs it
def test_reduced_full_demo_report(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--ids", "8", "--seed", "3", "--seeds", "3", "stage1.epochs=1", "stage2.epochs=1",
            "stage2.eval_every=1", "run.max_steps_per_epoch=2", "stage2.cal_start_epoch=0", "model.arch=tiny-rn",
            "model.weights=none"]
    assert main(args) == 0

    def strict(name):
        raise ValueError(f"{name} in report.json")
    rep = json.loads((out / "report.json").read_text(), parse_constant=strict)  # no NaN: browsers and jq read it
    assert rep["seeds"] == [3, 4, 5] and not rep["quick"]
    # the ablation rows train the first two seeds (--ablation-seeds, default 2), the baseline and SCI all three
    n_seeds = {"zero-shot": 3, "baseline": 3, "sse": 2, "sim": 2, "full": 3}
    assert rep["variant_seeds"] == {"baseline": [3, 4, 5], "sse": [3, 4], "sim": [3, 4], "full": [3, 4, 5]}
    assert set(rep["table"]) == {"zero-shot", "baseline", "sse", "sim", "full"}
    for v, t in rep["table"].items():
        for setting in ("general", "cloth-changing"):
            for m in ("R-1", "mAP"):
                assert len(t[setting][m]["values"]) == n_seeds[v]
                assert all(math.isfinite(x) for x in t[setting][m]["values"])
                assert math.isfinite(t[setting][m]["std"])
    assert {d["variant"] for d in rep["differences_vs_baseline"]} == {"sse", "sim", "full"}
    assert all("spread of the paired differences" in d["verdict"] for d in rep["differences_vs_baseline"])
    for d in rep["differences_vs_baseline"]:  # paired by seed: the per-seed differences of the two tables
        v, b = rep["table"][d["variant"]][d["setting"]][d["metric"]], rep["table"]["baseline"][d["setting"]][d["metric"]]
        assert d["per_seed"] == [x - y for x, y in zip(v["values"], b["values"])]  # the ablations' seeds come first
    assert set(rep["val_table"]) == {"zero-shot", "baseline", "sse", "sim", "full"}  # the synthetic set has val/
    md = (out / "report.md").read_text()
    for row in ("Baseline (CLIP-ReID)", "+ SSE", "+ SIM", "SCI (SSE + SIM + CAL)", "cloth-changing R-1", "curves.png"):
        assert row in md
    assert "**Cloth-changing R-1.**" in md and ("cannot be told apart" in md or "the baseline on both splits" in md
                                                or "The splits disagree" in md or "no validation split" in md)
    assert "The paper's mechanism claims, measured" in md and "query by query, with 95% intervals" in md
    # the paired intervals: one per variant, split, setting and metric, each around its own point estimate
    iv = {(d["variant"], d["split"], d["setting"], d["metric"]): d for d in rep["paired_intervals"]}
    assert len(iv) == 3 * 2 * 2 * 2
    for (v, split, st, m), d in iv.items():
        assert d["low"] <= d["mean"] + 1e-9 and d["mean"] <= d["high"] + 1e-9 and d["seeds"] == n_seeds[v]
        table = rep["table"] if split == "test" else rep["val_table"]
        # query-by-query means are the table's own numbers: the paired mean is the mean of the per-seed differences
        diffs = [a - b for a, b in zip(table[v][st][m]["values"], table["baseline"][st][m]["values"])]
        assert abs(d["mean"] - sum(diffs) / n_seeds[v]) < 1e-6
    claims = {c["claim"]: c for c in rep["claims"]}
    assert len(claims) == 6 and all(c["verdicts"] for c in claims.values())
    assert set(claims["SIM moves p'"]["cells"]["full"]["values"]) and claims["SIM moves p'"]["cells"]["baseline"] is None
    assert "paired by seed" in md and "Validation split" in md and "Does ReID training beat the prior?" in md
    w, h = Image.open(out / "curves.png").size
    assert w > 600 and h > 200
    checks = rep["component_checks"]["full-seed3"]
    assert "gamma_final" in checks and "clothes_acc_last" in checks and "S_id_last" in checks
    for key in ("stage1_i2t_over_ln_batch", "decode_T_id_identity", "decode_prototype_clothes", "sim_attn_trait",
                "uniform_trait", "ceiling_trait", "gradcam_trait"):
        assert key in checks, key
    # attention anywhere lies between none on traits and all on each image's most-trait token
    assert checks["uniform_trait"] <= checks["ceiling_trait"] <= 1 and checks["sim_attn_trait"] <= checks["ceiling_trait"]
    assert "(the ceiling)" in md
    assert "gradcam_trait" in rep["component_checks"]["baseline-seed3"]
    for key in ("feat_sim_share", "feat_g_share", "feat_clothes_nn_within", "within_acc_last", "feat_outfit_probe_accuracy",
                "feat_outfit_probe_low", "feat_clothes_nn_high"):
        assert key in checks, key
    assert 0 <= checks["feat_g_share"] <= 1 and rep["zero_shot_features"]["sim_share"] is None
    assert 0 <= checks["sim_attn_trait"] <= 1 and 0 <= checks["sim_attn_trait"] + checks["sim_attn_garment"] <= 1 + 1e-6
    for text in ("CLIP zero-shot", "Prompt decoding", "SIM attn on traits", "ln(batch)"):
        assert text in md
    # a second call reuses every finished run (their recorded timings come back unchanged)
    first_timings = rep["timings_s"]
    assert main(args) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["timings_s"] == first_timings and again["total_s"] < rep["total_s"]


def test_paired_differences_by_hand():
    from scireid.demo import paired_differences

    def res(cc):
        return {"last": {"general": {"R-1": 0.0, "mAP": 0.0}, "cloth-changing": {"R-1": cc, "mAP": cc}}}
    results = {"baseline": {0: res(10.0), 1: res(20.0), 2: res(30.0)},
               "full": {0: res(12.0), 1: res(23.0), 2: res(31.0)},   # +2, +3, +1: mean 2, std 1
               "sse": {0: res(15.0), 1: res(14.0), 2: res(33.0)}}    # +5, -6, +3: mixed signs
    rows = {(d["variant"], d["setting"], d["metric"]): d for d in paired_differences(results, [0, 1, 2])}
    full = rows[("full", "cloth-changing", "R-1")]
    assert full["per_seed"] == [2.0, 3.0, 1.0] and full["diff"] == 2.0 and full["std"] == 1.0
    assert full["verdict"].startswith("beyond")
    sse = rows[("sse", "cloth-changing", "R-1")]
    assert sse["diff"] == 2 / 3 and sse["verdict"].startswith("within")
    # the unpaired seed spread (10 points for each table) would call +2 noise; pairing removes the shared part
    single = paired_differences({"baseline": {0: res(10.0)}, "full": {0: res(12.0)}}, [0])
    assert single[0]["verdict"].startswith("single seed")


def test_demo_seeds_option():
    from scireid.demo import demo_seeds
    assert demo_seeds(3, quick=False, n_seeds=3) == [3, 4, 5]
    assert demo_seeds(0, quick=False) == [0, 1, 2, 3, 4, 5]
    assert demo_seeds(2, quick=True, n_seeds=6) == [2]
    from scireid.demo import demo_runs
    runs = demo_runs([0, 1, 2, 3, 4, 5], quick=False)
    assert [s for v, s in runs if v == "full"] == [0, 1, 2, 3, 4, 5] == [s for v, s in runs if v == "baseline"]
    assert [s for v, s in runs if v == "sse"] == [0, 1] == [s for v, s in runs if v == "sim"]
    assert demo_runs([7], quick=True) == [("baseline", 7), ("full", 7)]
    assert len(demo_runs([0, 1, 2], quick=False, ablation_seeds=3)) == 12


def test_verdict_sentences_from_the_two_splits():
    from scireid.analysis.demo_claims import verdict

    def ci(mean, half):
        return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half}
    assert verdict(ci(-1.6, 1.1), ci(-1.8, 1.4)).startswith("SCI is behind the baseline on both splits, beyond")
    assert verdict(ci(2.0, 1.0), ci(2.5, 1.0)).startswith("SCI is ahead of the baseline on both splits")
    both = verdict(ci(0.1, 2.6), ci(-1.3, 1.6))
    assert "cannot be told apart on either split" in both and "wider than ±2 points" in both
    split = verdict(ci(-0.7, 0.6), ci(-0.7, 0.75))
    assert split.startswith("The splits disagree: SCI is behind on test and undecided on validation")
    assert "no validation split" in verdict(ci(3.0, 1.0), None)
