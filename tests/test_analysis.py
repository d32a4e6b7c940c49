"""Analysis commands on a tiny trained run: files exist and carry the right content."""
import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from scireid.analysis.common import load_run
from scireid.analysis.figures import ablation_plot, heatmaps, retrieval_grid, tsne
from scireid.analysis.tables import count_flops, efficiency_table, prompt_interpretation
from scireid.cli import main
from scireid.models.sim import NonLocal


@pytest.fixture(scope="module")
def run(full_run):
    return load_run(full_run[0], device="cpu")


def test_retrieval_grid_matches_ranking(run, tmp_path):
    r = retrieval_grid(run, "cloth-changing", num_queries=3, topk=5, out=tmp_path)
    im = Image.open(r["png"])
    assert im.size == (6 * 72 + 8, 3 * 136)
    rows = list(csv.DictReader(open(r["csv"])))
    assert len(rows) == 15
    # independent ranking: cosine distance, stable sort, junk (same id and same camera or same clothes) removed
    ds = run.ds
    p = ds.protocol("cloth-changing")
    f = torch.nn.functional.normalize(run.test_features(), dim=1).numpy()
    for q in r["queries"]:
        qi = p.query[q["query_index"]]
        qr = ds.test[qi]
        d = 1 - f[p.gallery] @ f[qi]
        order = [j for j in np.argsort(d, kind="stable")
                 if not (ds.test[p.gallery[j]].pid == qr.pid and (ds.test[p.gallery[j]].camid == qr.camid or
                                                                  ds.test[p.gallery[j]].clothes == qr.clothes))][:5]
        assert [g["path"] for g in q["gallery"]] == [ds.test[p.gallery[j]].path for j in order]
        assert [g["same_id"] for g in q["gallery"]] == [ds.test[p.gallery[j]].pid == qr.pid for j in order]
    worst = retrieval_grid(run, "general", num_queries=2, topk=3, worst=True, out=tmp_path)
    aps = [q["AP"] for q in worst["queries"]]
    assert aps == sorted(aps)


def test_heatmaps(run, tmp_path):
    r = heatmaps(run, num_ids=2, out=tmp_path)
    assert r["files"]
    for f in r["files"]:
        im = Image.open(f["png"])
        assert im.size == (32 * len(f["images"]), 64 * 2) and len(f["images"]) >= 2
        assert len({run.ds.test[[x.path for x in run.ds.test].index(p)].clothes for p in f["images"]}) == len(f["images"])


def test_tsne_panels(run, tmp_path):
    r = tsne([run, run], ["a", "b"], num_ids=3, out=tmp_path)
    assert r["panels"] == ["a", "b", "stage-1 image features (frozen CLIP)"]
    data = json.loads((tmp_path / "tsne.json").read_text())
    assert len(data["ids"]) == 3 and all(len(v) == r["num_points"] for v in data["panels"].values())
    assert r["num_points"] == sum(x.pid in data["ids"] for x in run.ds.test)


def test_flops_hand_count():
    # non-local on C=8, 4x2 map: theta/phi/g 3 x (2 N C C/2), scores 2 N N C/2, aggregation 2 N N C/2, W_z 2 N C/2 C
    C, N = 8, 8
    nl = NonLocal(C).eval()
    hand = 3 * 2 * N * C * (C // 2) + 2 * N * N * (C // 2) * 2 + 2 * N * (C // 2) * C
    assert count_flops(nl, torch.randn(1, C, 4, 2)) == hand
    # attention pooling of tiny-rn at 64x32 (grid 4x2, C=512, out 128, 16 heads): q,k,v projections of all
    # L = 9 tokens, QK^T and AV, output projection
    from scireid.models.backbone import ReIDVisual, build_clip
    v = ReIDVisual(build_clip("tiny-rn").visual, 64, 32)
    L, C, D = 9, 512, 128
    hand = 3 * 2 * L * C * C + 2 * (2 * L * L * C) + 2 * L * C * D
    assert count_flops(v.visual.attnpool, torch.randn(1, C, 4, 2)) == hand
    # what the model runs (backbone.attention_pool): the first token's query, W_k folded into it per head
    # (heads x d x C = C x C), scores and pooling against the L raw tokens (2 x heads x L x C), W_v per head, c_proj
    H = v.visual.attnpool.num_heads
    hand = 2 * C * C + 2 * C * C + 2 * (2 * H * L * C) + 2 * C * C + 2 * C * D
    assert count_flops(lambda f: v.pool(f)[1], torch.randn(1, C, 4, 2)) == hand


def test_efficiency_table(run):
    t = efficiency_table(run.model.spec, "cpu", batch=2, iters=1)
    b, s = t["rows"]["baseline"], t["rows"]["SCI"]
    assert s["image_GFLOPs"] > b["image_GFLOPs"] > 0 and s["image_params_M"] > b["image_params_M"]
    assert s["text_GFLOPs_once"] > b["text_GFLOPs_once"] > 0  # SCI also encodes the clothes prompts
    assert b["infer_img_per_s"] > 0


def test_prompt_interpretation(run):
    import open_clip
    m = run.model
    tok = open_clip.get_tokenizer("RN50-quickgelu")
    gid = tok.encode("glasses")[0]
    with torch.no_grad():
        saved = m.id_prompts.ctx[0, 0].clone()
        m.id_prompts.ctx[0, 0] = m.token_embedding.weight[gid]
    p = prompt_interpretation(m, topk=3)
    with torch.no_grad():
        m.id_prompts.ctx[0, 0] = saved
    assert p["id_prompt_tokens"][0][0][0] == "glasses"
    sims = np.array(p["prototype_attribute_cosine"])
    assert sims.shape == (m.spec.num_pids, len(p["attributes"])) and np.all(np.abs(sims) <= 1 + 1e-5)
    assert len(p["clothes_prompt_tokens"][0]) == m.spec.n_ctx


def test_ablation_plot_and_lambda_grid(full_run, tmp_path):
    src, _ = full_run
    dirs = []
    for l1 in (0.5, 1.0):
        for l2 in (0.5, 1.0):
            d = tmp_path / f"r{l1}_{l2}"
            d.mkdir()
            cfg = yaml.safe_load((src / "config.yaml").read_text())
            cfg["stage1"]["lambda1"], cfg["stage1"]["lambda2"] = l1, l2
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
            res = json.loads((src / "results.json").read_text())
            res["last"]["cloth-changing"]["R-1"] = 10 * l1 + l2
            (d / "results.json").write_text(json.dumps(res))
            dirs.append(d)
    r = ablation_plot(dirs, tmp_path / "out")
    assert r["labels"][0] == "lambda1=0.5, lambda2=0.5"
    assert Image.open(r["png"]).size[0] > 400 and r["grid_png"].exists()


def test_report_html_is_self_contained(full_run, capsys):
    out, _ = full_run
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    for section in ("Metrics (last epoch)", "Training curves", "Retrieval", "Grad-CAM", "t-SNE", "Efficiency",
                    "Prompt interpretation", "Resolved config", "Mechanism, measured against the generator"):
        assert section in page
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page


def test_analyze_cli(full_run, capsys, tmp_path):
    out, _ = full_run
    assert main(["analyze", "retrieval", str(out), "--queries", "2", "--topk", "3", "--out", str(tmp_path)]) == 0
    assert main(["analyze", "efficiency", str(out), "--json"]) == 0
    assert '"SCI"' in capsys.readouterr().out


@pytest.mark.slow
def test_report_opens_in_headless_browser(full_run, tmp_path):
    from conftest import browser_screenshot
    out, _ = full_run
    main(["report", str(out)])
    im = np.asarray(Image.open(browser_screenshot(out / "report.html", tmp_path / "shot.png")).convert("L"))
    assert im.std() > 10  # rendered content, not a blank page
