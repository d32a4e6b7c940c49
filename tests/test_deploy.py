"""scireid embed / index / search / export on tiny trained runs and tiny image folders."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import scireid
from scireid.cli import main
from scireid.deploy.backend import FingerprintMismatch, open_backend
from scireid.deploy.embed import embed, load_features
from scireid.deploy.index import Index
from scireid.deploy.inputs import read_input
from scireid.errors import UserError
from conftest import tiny_cfg


@pytest.fixture(scope="module")
def gallery(data_root, tmp_path_factory):
    """A user's own folder: 12 test images in nested folders, plus one corrupt file."""
    d = tmp_path_factory.mktemp("mine") / "cams"
    files = sorted((data_root / "test").glob("*.png"))[:12]
    for i, f in enumerate(files):
        sub = d / f"cam{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f.name)
    (d / "cam0" / "broken.jpg").write_bytes(b"not an image at all")
    return d


@pytest.fixture(scope="module")
def vit_run(data_root, tmp_path_factory):
    from scireid.engine.trainer import train
    out = tmp_path_factory.mktemp("vit") / "run"
    train(tiny_cfg(data_root, out, "model.arch=tiny-vit", "stage1.epochs=1", "stage2.epochs=1",
                   "run.max_steps_per_epoch=1"))
    return out


def test_embed_folder_skips_corrupt_and_matches_api(full_run, gallery, tmp_path):
    run, _ = full_run
    s = embed(run, read_input(gallery), tmp_path / "feats.npy", batch=5, progress=False)
    assert s["count"] == 12 and len(s["skipped"]) == 1 and s["skipped"][0]["path"].endswith("broken.jpg")
    feats, side = load_features(tmp_path / "feats.npy")
    assert feats.shape == (12, side["dim"]) and side["fingerprint"] == s["fingerprint"]
    ref = scireid.load(run, device="cpu").embed([r["path"] for r in side["rows"]]).numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-5)
    assert not (tmp_path / "feats.npy.parts").exists()


def test_embed_manifest_and_mot_detections(full_run, data_root, tmp_path):
    run, _ = full_run
    seq = tmp_path / "MOT-01"
    (seq / "img1").mkdir(parents=True)
    (seq / "det").mkdir()
    people = sorted((data_root / "test").glob("*.png"))[:2]
    frame = Image.new("RGB", (200, 160), (90, 90, 90))
    frame.paste(Image.open(people[0]), (10, 20))
    frame.paste(Image.open(people[1]), (120, 10))
    frame.save(seq / "img1" / "000001.jpg", quality=95)
    (seq / "det" / "det.txt").write_text("1,-1,10,20,64,128,0.9,-1,-1,-1\n1,-1,120,10,64,128,0.8,-1,-1,-1\n")
    items = read_input(seq)
    assert [it.box for it in items] == [(10, 20, 64, 128), (120, 10, 64, 128)] and items[0].timestamp == "1"
    s = embed(run, items, tmp_path / "det.npy", progress=False)
    feats, side = load_features(tmp_path / "det.npy")
    crop = Image.open(seq / "img1" / "000001.jpg").convert("RGB").crop((120, 10, 184, 138))
    ref = scireid.load(run, device="cpu").embed([crop]).numpy()
    np.testing.assert_allclose(feats[1], ref[0], atol=1e-5)
    assert s["rows"][1]["box"] == [120, 10, 64, 128]
    # a CSV manifest carries identities and cameras through to the rows
    (tmp_path / "m.csv").write_text("path,pid,camid\n" + "".join(f"{p},{i},{i % 3}\n" for i, p in enumerate(people)))
    s = embed(run, read_input(tmp_path / "m.csv"), tmp_path / "m.npy", progress=False)
    assert [(r["pid"], r["camid"]) for r in s["rows"]] == [(0, 0), (1, 1)]


def test_interrupted_embed_resumes(full_run, gallery, tmp_path):
    run, _ = full_run
    items = read_input(gallery)
    be = open_backend(run, "cpu")
    calls = {"n": 0}

    class Flaky:
        pre, dim, fingerprint = be.pre, be.dim, be.fingerprint

        def __init__(self, fail_after):
            self.fail_after = fail_after

        def __call__(self, x):
            calls["n"] += 1
            if self.fail_after and calls["n"] > self.fail_after:
                raise KeyboardInterrupt("killed")
            return be(x)
    with pytest.raises(KeyboardInterrupt):
        embed(run, items, tmp_path / "f.npy", batch=4, chunk=4, backend=Flaky(2), progress=False)
    assert len(list((tmp_path / "f.npy.parts").glob("part_*.json"))) == 2  # two complete chunks on disk
    calls["n"] = 0
    s = embed(run, items, tmp_path / "f.npy", batch=4, chunk=4, backend=Flaky(0), progress=False)
    assert calls["n"] == 2  # only the remaining 13 - 8 = 5 images (two batches) were embedded
    full = embed(run, items, tmp_path / "g.npy", batch=4, chunk=4, backend=be, progress=False)
    np.testing.assert_array_equal(load_features(tmp_path / "f.npy")[0], load_features(tmp_path / "g.npy")[0])
    assert s["rows"] == full["rows"]
    # the same --out with other inputs while a job is unfinished is refused, not mixed
    (tmp_path / "h.npy.parts").mkdir()
    (tmp_path / "h.npy.parts" / "job.json").write_text(json.dumps({"key": "other"}))
    with pytest.raises(UserError, match="unfinished job"):
        embed(run, items, tmp_path / "h.npy", backend=be, progress=False)


def test_exact_index_ranks_like_eval_and_refuses_other_models(tmp_path):
    from scireid.eval.metrics import ranked_gallery
    rng = np.random.default_rng(0)
    g = rng.normal(size=(300, 32)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = rng.normal(size=(5, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rows = [{"path": f"g{i}.jpg", "pid": i % 30, "camid": i % 4, "clothes_id": -1, "box": None, "timestamp": ""}
            for i in range(300)]
    assert scireid.Index is Index
    idx = Index.build(g, rows, "model-a", kind="exact")
    idx.save(tmp_path / "idx")
    idx = Index.load(tmp_path / "idx")
    scores, ids = idx.search(q, topk=20)
    dist = 1 - q @ g.T
    pids, cams = np.array([r["pid"] for r in rows]), np.array([r["camid"] for r in rows])
    for i in range(5):
        # the protocol ranking with nothing junk (query identity absent from the gallery)
        ref = ranked_gallery(dist[i], -7, -7, 0, pids, cams, np.zeros(300, int), "general")
        assert ids[i].tolist() == ref[:20].tolist()
    _, ids_x = idx.search(q, topk=5, exclude_camids=[1, 1, 2, -1, 3])
    assert all(cams[j] != c for row, c in zip(ids_x, [1, 1, 2]) for j in row)
    with pytest.raises(FingerprintMismatch, match="model-a"):
        idx.add(g[:3], rows[:3], "model-b")


def _clustered(n, dim=32, seed=0, n_ids=150):
    """Identities as clusters with a decaying spectrum, like trained ReID features (see deploy_speed.py)."""
    rng = np.random.default_rng(seed)
    scale = (1 + np.arange(dim) / 4.0) ** -1.0
    centres = rng.normal(size=(n_ids, dim)) * scale
    ids = rng.integers(0, n_ids, n)
    f = centres[ids] + 0.6 * rng.normal(size=(n, dim)) * scale
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32), centres, scale


@pytest.mark.parametrize("kind", ["pca-flat", "ivf", "hnsw"])
def test_approximate_kinds_are_tuned_to_the_recall_target(kind, tmp_path):
    g, centres, scale = _clustered(3000)
    rows = [{"path": f"{i}", "pid": -1, "camid": -1} for i in range(len(g))]
    idx = Index.build(g, rows, "m", kind=kind, recall=0.9)
    knob = {"pca-flat": "k_factor", "ivf": "nprobe", "hnsw": "efSearch"}[kind]
    assert idx.params["recall@10_vs_exact"] >= 0.9 and idx.params["target_recall"] == 0.9
    # fresh queries (never indexed) reach the target too, against a float64 brute force
    rng = np.random.default_rng(5)
    q = centres[rng.integers(0, len(centres), 100)] + 0.6 * rng.normal(size=(100, 32)) * scale
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    truth = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    scores, ids = idx.search(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]) >= 0.85
    # ids are input rows (calibration rows are added last but keep their number) and scores are cosines
    np.testing.assert_allclose(scores, np.take_along_axis(sims, ids, 1), atol=1e-5)
    assert idx.search(g[[7, 2999]], 1)[1][:, 0].tolist() == [7, 2999]
    # the cheapest setting of the doubling ladder that met the target was kept
    steps = idx.params["tuning"]
    assert [v for v, _ in steps] == [steps[0][0] * 2 ** i for i in range(len(steps))]
    assert all(r < 0.9 for _, r in steps[:-1]) and steps[-1] == [idx.params[knob], idx.params["recall@10_vs_exact"]]
    if len(steps) > 1:  # and the setting below it is worse on the fresh queries as well
        from scireid.deploy.index import set_knob
        set_knob(idx.index, kind, steps[-2][0])
        _, worse = idx.search(q, 10)
        set_knob(idx.index, kind, steps[-1][0])
        assert np.mean([len(set(a) & set(b)) for a, b in zip(worse, truth)]) <= np.mean(
            [len(set(a) & set(b)) for a, b in zip(ids, truth)])
    # and it survives save / load
    idx.save(tmp_path / "idx")
    back = Index.load(tmp_path / "idx")
    assert back.params[knob] == idx.params[knob]
    assert back.search(q, 10)[1].tolist() == ids.tolist()


def test_pca_flat_fp16_store_halves_memory_and_keeps_recall(tmp_path):
    import faiss
    g, _, _ = _clustered(3000, dim=128)
    rows = [{"path": f"{i}"} for i in range(len(g))]
    full = Index.build(g, rows, "m", kind="pca-flat", recall=0.9)
    half = Index.build(g, rows, "m", kind="pca-flat", recall=0.9, store="fp16", pca_dim=full.params["pca_dim"])
    size = [faiss.serialize_index(x.index).nbytes for x in (full, half)]
    assert abs((size[0] - size[1]) - 3000 * 128 * 2) < 1024  # 2 of the 4 bytes of every stored number
    assert half.params["recall@10_vs_exact"] >= 0.9 and half.params["store"] == "fp16"
    scores, ids = half.search(g[:20], 10)
    np.testing.assert_allclose(scores, np.take_along_axis(g[:20] @ g.T, ids, 1), atol=2e-3)  # fp16 cosines
    half.save(tmp_path / "i")
    assert Index.load(tmp_path / "i").search(g[:20], 10)[1].tolist() == ids.tolist()
    with pytest.raises(UserError, match="--store fp16 applies to --kind pca-flat"):
        Index.build(g, rows, "m", kind="ivf", store="fp16")


@pytest.mark.parametrize("kind", ["pca-flat", "hnsw", "ivf"])
def test_rows_added_later_are_found_under_their_numbers(kind, tmp_path):
    g, _, _ = _clustered(1200)
    idx = Index.build(g[:1000], [{"path": str(i)} for i in range(1000)], "m", kind=kind, recall=0.9)
    idx.save(tmp_path / "i")
    idx = Index.load(tmp_path / "i")
    idx.add(g[1000:], [{"path": str(i)} for i in range(1000, 1200)], "m")
    _, ids = idx.search(g[[3, 1000, 1199]], 1)
    assert ids[:, 0].tolist() == [3, 1000, 1199] and [idx.rows[i]["path"] for i in ids[:, 0]] == ["3", "1000", "1199"]


def test_unreachable_recall_is_reported_not_hidden(caplog):
    rng = np.random.default_rng(1)
    g = rng.normal(size=(3000, 64)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    rows = [{"path": f"{i}", "pid": -1, "camid": -1} for i in range(len(g))]
    with caplog.at_level("WARNING"):
        idx = Index.build(g, rows, "m", kind="ivf-pq", recall=0.99)
    assert idx.params["nprobe"] == idx.params["nlist"] and idx.params["recall@10_vs_exact"] < 0.99
    assert "below the target 0.99" in caplog.text
    with pytest.raises(UserError, match="--recall 1.5"):
        Index.build(g, rows, "m", kind="ivf", recall=1.5)
    with pytest.raises(UserError, match="at least 2 are needed"):
        Index.build(g[:1], rows[:1], "m", kind="ivf-pq")
    for kind in ("pca-flat", "ivf", "hnsw", "ivf-pq"):  # tiny galleries still build and rank exactly
        small = Index.build(g[:3], rows[:3], "m", kind=kind)
        assert small.search(g[:3], 3)[1][:, 0].tolist() == [0, 1, 2]


def test_cli_index_options_are_refused_before_anything_is_embedded(full_run, gallery, tmp_path, capsys, monkeypatch):
    import scireid.deploy.embed as embed_mod
    monkeypatch.setattr(embed_mod, "embed", lambda *a, **k: pytest.fail("embedded before checking the options"))
    run, _ = full_run
    for extra, message in ((["--kind", "ivf", "--store", "fp16"], "--store fp16 applies to --kind pca-flat"),
                           (["--kind", "hnsw", "--recall", "0"], "--recall 0.0: expected a number in [0.01, 1.0]")):
        capsys.readouterr()
        assert main(["index", "build", str(run), str(gallery), "--out", str(tmp_path / "idx"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "idx").exists()


def test_cli_index_search_html_and_fingerprint(full_run, gallery, data_root, tmp_path, capsys):
    run, _ = full_run
    assert main(["index", "build", str(run), str(gallery), "--out", str(tmp_path / "idx")]) == 0
    query = next(gallery.glob("cam1/*.png"))
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), str(query), "--topk", "3", "--json",
                 "--html", str(tmp_path / "res.html")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["results"][0]["path"] == str(query) and res[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    page = (tmp_path / "res.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 4 and "http" not in page.replace("http-equiv", "")
    # appending with the same model grows the index; a model with other weights is refused
    assert main(["index", "add", str(tmp_path / "idx"), str(query)]) == 0
    assert Index.load(tmp_path / "idx").index.ntotal == 13
    other = tmp_path / "other_run"
    shutil.copytree(run, other)
    import torch
    from safetensors.torch import load_file, save_file
    from scireid.engine.checkpoint import read_meta
    for name in ("model_best.safetensors",):
        sd, meta = load_file(str(other / name)), read_meta(other / name)
        sd = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in sd.items()}
        from scireid.engine.checkpoint import tensors_sha256
        meta["tensor_sha256"] = tensors_sha256(sd)  # another model, properly written
        meta.pop("meta_sha256", None)
        save_file(sd, str(other / name), metadata={k: json.dumps(v) for k, v in meta.items()})
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), str(query), "--model", str(other)]) == 2
    assert "cannot be mixed" in capsys.readouterr().err
    # an approximate kind through the CLI: tuned, its setting and recall printed, searchable
    capsys.readouterr()
    assert main(["index", "build", str(run), str(gallery), "--out", str(tmp_path / "pidx"), "--kind", "pca-flat",
                 "--recall", "0.9", "--store", "fp16"]) == 0
    line = capsys.readouterr().out
    assert "pca-flat pca_dim=" in line and "k_factor=" in line and "store=fp16" in line and "recall@10 vs exact" in line
    assert main(["search", str(tmp_path / "pidx"), str(query), "--topk", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["path"] == str(query)


@pytest.mark.parametrize("arch", ["rn", "vit"])
def test_onnx_export_parity_and_onnx_backend(arch, full_run, vit_run, gallery, tmp_path, capsys):
    run = full_run[0] if arch == "rn" else vit_run
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(onnx_path), "--check", "--images", str(gallery / "cam1")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "max |diff|" in out
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    pre = json.loads(meta["scireid_preprocess"])
    assert pre["interpolation"] == "bilinear" and pre["colour_order"] == "RGB" and meta["scireid_fingerprint"]
    from scireid.deploy.export import check_parity
    r = check_parity(run, onnx_path)
    assert r["max_abs_diff"] <= 1e-4
    # the ONNX file embeds like the run and carries the same fingerprint
    a = embed(run, read_input(gallery / "cam1"), tmp_path / "a.npy", progress=False)
    b = embed(onnx_path, read_input(gallery / "cam1"), tmp_path / "b.npy", progress=False)
    assert a["fingerprint"] == b["fingerprint"]
    np.testing.assert_allclose(load_features(tmp_path / "a.npy")[0], load_features(tmp_path / "b.npy")[0], atol=1e-4)
    # fp16: cosine >= 0.999
    assert main(["export", str(run), "--out", str(tmp_path / "h.onnx"), "--fp16", "--check"]) == 0
    r16 = check_parity(run, tmp_path / "h.onnx")
    assert r16["min_cosine"] >= 0.999


@pytest.mark.slow
def test_search_page_renders_in_headless_browser(full_run, gallery, tmp_path):
    from conftest import browser_screenshot
    run, _ = full_run
    files = sorted(gallery.glob("*/*.png"))
    (tmp_path / "g.csv").write_text("path,pid\n" + "".join(f"{f},{f.name.split('_')[0]}\n" for f in files))
    (tmp_path / "q.csv").write_text(f"path,pid\n{files[0]},{files[0].name.split('_')[0]}\n")
    assert main(["index", "build", str(run), str(tmp_path / "g.csv"), "--out", str(tmp_path / "idx")]) == 0
    assert main(["search", str(tmp_path / "idx"), str(tmp_path / "q.csv"), "--topk", "5",
                 "--html", str(tmp_path / "r.html")]) == 0
    im = np.asarray(Image.open(browser_screenshot(tmp_path / "r.html", tmp_path / "shot.png", "900,500")).convert("RGB"))
    assert im.std() > 10
    green = (im[..., 1] > 150) & (im[..., 0] < 80) & (im[..., 2] < 80)
    assert green.sum() > 50  # the right-identity border (the query itself is in the gallery) is drawn
