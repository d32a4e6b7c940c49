"""A reduced demo (smallest data, 1 epoch per stage) writes a complete report."""
import json
import math

from PIL import Image

from scireid.cli import main


def test_reduced_full_demo_report(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--ids", "8", "--seed", "3", "stage1.epochs=1", "stage2.epochs=1",
            "stage2.eval_every=1", "run.max_steps_per_epoch=2", "stage2.cal_start_epoch=0", "model.arch=tiny-rn",
            "model.weights=none"]
    assert main(args) == 0

    def strict(name):
        raise ValueError(f"{name} in report.json")
    rep = json.loads((out / "report.json").read_text(), parse_constant=strict)  # no NaN: browsers and jq read it
    assert rep["seeds"] == [3, 4, 5] and not rep["quick"]
    assert set(rep["table"]) == {"zero-shot", "baseline", "sse", "sim", "full"}
    for v, t in rep["table"].items():
        for setting in ("general", "cloth-changing"):
            for m in ("R-1", "mAP"):
                assert len(t[setting][m]["values"]) == 3
                assert all(math.isfinite(x) for x in t[setting][m]["values"])
                assert math.isfinite(t[setting][m]["std"])
    assert {d["variant"] for d in rep["differences_vs_baseline"]} == {"sse", "sim", "full"}
    assert all("spread" in d["verdict"] for d in rep["differences_vs_baseline"])
    md = (out / "report.md").read_text()
    for row in ("Baseline (CLIP-ReID)", "+ SSE", "+ SIM", "SCI (SSE + SIM + CAL)", "cloth-changing R-1", "curves.png"):
        assert row in md
    assert "SCI" in md and ("does not beat" in md or "beats the baseline" in md or "does **not** exceed" in md)
    w, h = Image.open(out / "curves.png").size
    assert w > 600 and h > 200
    checks = rep["component_checks"]["full-seed3"]
    assert "gamma_final" in checks and "clothes_acc_last" in checks and "S_id_last" in checks
    for key in ("stage1_i2t_over_ln_batch", "decode_T_id_identity", "decode_prototype_clothes", "sim_attn_trait",
                "uniform_trait", "gradcam_trait"):
        assert key in checks, key
    assert "gradcam_trait" in rep["component_checks"]["baseline-seed3"]
    assert 0 <= checks["sim_attn_trait"] <= 1 and 0 <= checks["sim_attn_trait"] + checks["sim_attn_garment"] <= 1 + 1e-6
    for text in ("CLIP zero-shot", "Prompt decoding", "SIM attn on traits", "ln(batch)"):
        assert text in md
    # a second call reuses every finished run (their recorded timings come back unchanged)
    first_timings = rep["timings_s"]
    assert main(args) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["timings_s"] == first_timings and again["total_s"] < rep["total_s"]
