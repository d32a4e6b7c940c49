"""Nothing silently wrong, nothing lost: kills during evaluation, changed data, broken run files."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import scireid
from scireid.cli import main
from scireid.engine.trainer import train
from conftest import tiny_cfg
from test_faults import one_line_error, train_args


def _eval_rows(run):
    return [(r["epoch"], r["eval"]["cloth-changing"]["R-1"], r["val"]["cloth-changing"]["R-1"])
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval" in r]


def test_kill_during_evaluation_still_selects_the_same_best_model(data_root, tmp_path, monkeypatch):
    """The epoch killed while being evaluated is evaluated on --resume, not skipped."""
    import scireid.engine.evaluation as ev
    args = ("stage2.epochs=3", "run.deterministic=true", "stage2.milestones=[3]")
    ref = tmp_path / "ref"
    train(tiny_cfg(data_root, ref, *args))
    out = tmp_path / "killed"
    real, calls = ev.evaluate_model, {"n": 0}

    def killed_at_third_call(*a, **k):  # epoch 1: test, val; epoch 2: test -> killed
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed during evaluation")
        return real(*a, **k)
    monkeypatch.setattr(ev, "evaluate_model", killed_at_third_call)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(data_root, out, *args))
    monkeypatch.setattr(ev, "evaluate_model", real)
    train(tiny_cfg(data_root, out, *args), resume=True)
    assert _eval_rows(out) == _eval_rows(ref) and [e for e, *_ in _eval_rows(out)] == [1, 2, 3]
    assert json.loads((out / "results.json").read_text()) == json.loads((ref / "results.json").read_text())
    a, b = load_file(str(out / "model_best.safetensors")), load_file(str(ref / "model_best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = json.loads((out / "results.json").read_text())["best"]
    assert best["split"] == "val"  # the synthetic set has a validation split: selection never reads the test queries


def test_resume_refuses_changed_data_and_missing_run(data_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # a run killed after its first step
        main(train_args(data, out, "run.stop_after_steps=1"))
    sorted((data / "train").glob("*.png"))[0].unlink()
    one_line_error(capsys, train_args(data, out) + ["--resume"], "data changed since", str(out))
    one_line_error(capsys, train_args(data, tmp_path / "typo") + ["--resume"], "no run to resume")
    assert not (tmp_path / "typo").exists()


def test_replaced_image_changes_the_fingerprint(data_root, tmp_path):
    from scireid.data.datasets import build_dataset
    from scireid.data.source import fingerprint, same_data
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    ds = build_dataset("synthetic", data)
    fp = fingerprint(ds)
    img = sorted((data / "test").glob("*.png"))[3]
    img.write_bytes(sorted((data / "test").glob("*.png"))[9].read_bytes())  # another picture, same name
    assert not same_data(build_dataset("synthetic", data), fp)
    old_style = fingerprint(ds, sizes=False)  # checkpoints written before sizes were hashed still match
    assert not old_style.startswith("v2:") and same_data(build_dataset("synthetic", data), old_style)


def test_broken_metrics_and_results_files(full_run, tmp_path, capsys):
    from scireid.engine.engine import read_metrics, write_metrics_row
    run, _ = full_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".scireid.lock"))
    m = copy / "metrics.jsonl"
    m.write_text(m.read_text()[:-25])  # the last row cut short by a kill
    rows = read_metrics(m)
    assert rows and all(isinstance(r, dict) for r in rows)
    write_metrics_row(m, {"stage": "stage2", "epoch": 99, "x": 1.0})  # the broken line is dropped, not appended to
    assert all(json.loads(x) for x in m.read_text().splitlines())
    write_metrics_row(m, {"stage": "stage2", "epoch": 99, "x": 2.0})  # one row per epoch
    assert [r["x"] for r in read_metrics(m) if r.get("epoch") == 99] == [2.0]
    (copy / "results.json").write_text("")
    one_line_error(capsys, ["report", str(copy)], "results.json: empty", "--resume")


def test_truncated_stage1_cache_is_rebuilt(data_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(data_root, out), stage="1")
    cache = out / "stage1_features.safetensors"
    good = load_file(str(cache))["feats"].clone()  # load_file maps the file: copy before it is cut
    (out / "stage1.safetensors").unlink()
    cache.write_bytes(cache.read_bytes()[:100])
    train(tiny_cfg(data_root, out), stage="1", resume=True)
    torch.testing.assert_close(load_file(str(cache))["feats"], good)


def test_foreign_or_partial_checkpoint_metadata_is_one_line(data_root, tmp_path, capsys):
    from safetensors.torch import save_file
    from scireid.errors import CheckpointError
    p = tmp_path / "partial.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"spec": json.dumps({"arch": "tiny-rn"})})
    with pytest.raises(CheckpointError, match="incomplete or foreign"):
        scireid.load(p)
    one_line_error(capsys, ["embed", str(p), str(data_root / "query"), "--out", str(tmp_path / "f.npy")],
                   "incomplete or foreign")


@pytest.mark.parametrize("device,needle", [("tpu", "expected auto, cpu, cuda"), ("cuda:7", "cuda")])
def test_embed_device_is_checked_in_one_line(full_run, data_root, tmp_path, capsys, device, needle):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    run, _ = full_run
    one_line_error(capsys, ["embed", str(run), str(data_root / "query"), "--out", str(tmp_path / "f.npy"),
                            "--device", device], needle)


def test_pretrain_never_overwrites_a_prior(tmp_path, capsys):
    from scireid.prior.pretrain import PretrainConfig
    out = tmp_path / "prior"
    out.mkdir()
    (out / "pretrain.json").write_text(json.dumps({"arch": "tiny-prior"}))
    before = (out / "pretrain.json").read_text()
    one_line_error(capsys, ["pretrain", "--out", str(out), "arch=tiny-prior", "height=32", "width=16", "images=64", "batch_size=32",
                            "eval_images=16"], "already holds a pretraining run", "--resume")
    assert (out / "pretrain.json").read_text() == before
    for bad, needle in (("batch_size=128", "0 steps"), ("weight_decay=-1", "weight_decay=-1"),
                        ("warmup_steps=-5", "warmup_steps=-5")):
        one_line_error(capsys, ["pretrain", "--out", str(tmp_path / "new"), "arch=tiny-prior", "height=32", "width=16", "images=64", bad], needle)
    assert PretrainConfig().batch_size > 0


@pytest.mark.parametrize("argv,needle", [
    (["search", "IDX", "q.png", "--topk", "0"], "--topk 0"), (["search", "IDX", "q.png", "--topk", "-1"], "--topk -1"),
    (["embed", "RUN", "x", "--out", "f.npy", "--workers", "-1"], "--workers -1"),
    (["analyze", "retrieval", "RUN", "--queries", "0"], "--queries 0"),
    (["analyze", "retrieval", "RUN", "--topk", "-1"], "--topk -1"),
])
def test_counts_are_checked_before_any_work(tmp_path, capsys, argv, needle):
    one_line_error(capsys, argv, needle)


def test_unknown_protocol_is_one_line(full_run, capsys):
    run, _ = full_run
    one_line_error(capsys, ["analyze", "retrieval", str(run), "--protocol", "nope"], "no protocol 'nope'",
                   "cloth-changing")


def test_garbled_weights_are_refused(full_run, tmp_path, capsys):
    run, _ = full_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".scireid.lock"))
    f = copy / "model_best.safetensors"
    raw = bytearray(f.read_bytes())
    mid = len(raw) - 4096  # inside the tensor data, past the header
    raw[mid:mid + 32] = bytes(32)
    f.write_bytes(bytes(raw))
    one_line_error(capsys, ["eval", str(copy)], "model_best.safetensors", "checksum")


@pytest.fixture
def index_dir(full_run, data_root, tmp_path):
    run, _ = full_run
    out = tmp_path / "idx"
    assert main(["index", "build", str(run), str(data_root / "test"), "--out", str(out)]) == 0
    return out


def test_index_files_are_verified_and_broken_ones_named(index_dir, data_root, capsys):
    from scireid.deploy.index import Index
    cur = index_dir / (index_dir / "CURRENT").read_text().strip()
    q = str(sorted((data_root / "query").glob("*.png"))[0])
    meta = cur / "index.json"
    good = meta.read_text()
    m = json.loads(good)
    m["sha256"] = {}  # an edited index.json whose dimension no longer fits index.faiss
    m["dim"] = m["dim"] + 1
    meta.write_text(json.dumps(m))
    one_line_error(capsys, ["search", str(index_dir), q], "index.json: does not match the checksum")
    m.pop("meta_sha256")  # an index written before index.json carried its own checksum: the dimension is still checked
    meta.write_text(json.dumps(m))
    one_line_error(capsys, ["search", str(index_dir), q], "index.json: says dim")
    meta.write_text(good)
    f = cur / "index.faiss"
    raw = bytearray(f.read_bytes())
    raw[-200:-136] = bytes(64)
    f.write_bytes(bytes(raw))
    one_line_error(capsys, ["search", str(index_dir), q], "index.faiss", "checksum")
    f.write_bytes(bytes(raw[:100]))  # truncated
    one_line_error(capsys, ["search", str(index_dir), q], "index.faiss")
    meta.write_text(good[:30])
    one_line_error(capsys, ["search", str(index_dir), q], "index.json: corrupt")
    assert not Index.exists(index_dir.parent / "nothing")


def test_index_add_is_atomic_and_refuses_other_models_before_embedding(index_dir, full_run, data_root, tmp_path,
                                                                       monkeypatch, capsys):
    import scireid.deploy.index as ix
    from scireid.deploy.index import Index
    n0 = len(Index.load(index_dir))
    real = ix.atomic_write_text

    def killed_at_the_switch(path, text):
        if path.name == "CURRENT":
            raise KeyboardInterrupt("killed before the switch")
        return real(path, text)
    monkeypatch.setattr(ix, "atomic_write_text", killed_at_the_switch)
    with pytest.raises(KeyboardInterrupt):
        main(["index", "add", str(index_dir), str(data_root / "query")])
    monkeypatch.undo()
    assert len(Index.load(index_dir)) == n0  # the previous index is whole
    assert main(["index", "add", str(index_dir), str(data_root / "query")]) == 0
    idx = Index.load(index_dir)
    assert len(idx) == n0 + len(list((data_root / "query").glob("*.png"))) and len(idx.rows) == len(idx)
    assert sorted(p.name for p in index_dir.iterdir() if not p.name.startswith(".scireid")) == ["CURRENT", "v3"]
    # another model's run is refused before a single image is embedded
    import scireid.deploy.embed as em
    other = tmp_path / "other"
    shutil.copytree(full_run[0], other, ignore=shutil.ignore_patterns(".scireid.lock"))
    from safetensors.torch import load_file, save_file
    from scireid.engine.checkpoint import read_meta, tensors_sha256
    for name in ("model_best.safetensors",):
        sd, meta = load_file(str(other / name)), read_meta(other / name)
        sd = {k: (v * 1.5 if v.is_floating_point() else v) for k, v in sd.items()}
        meta["tensor_sha256"] = tensors_sha256(sd)
        meta.pop("meta_sha256", None)  # written by hand: no header checksum
        save_file(sd, str(other / name), metadata={k: json.dumps(v) for k, v in meta.items()})

    def no_embedding(*a, **k):
        raise AssertionError("embedded before the model check")
    monkeypatch.setattr(em, "embed", no_embedding)
    one_line_error(capsys, ["index", "add", str(index_dir), str(data_root / "query"), "--model", str(other)],
                   "cannot be mixed")


def test_concurrent_index_writers_are_refused(index_dir, data_root, capsys):
    from scireid.engine.rundir import RunLock
    with RunLock(index_dir):  # another process's add in progress
        one_line_error(capsys, ["index", "add", str(index_dir), str(data_root / "query")], str(index_dir))


def test_embed_never_mixes_another_jobs_chunks(full_run, data_root, tmp_path, monkeypatch):
    import scireid.deploy.embed as em
    from scireid.deploy.inputs import read_inputs
    run, _ = full_run
    out = tmp_path / "feats.npy"
    real = em._assemble

    def killed(*a, **k):
        raise KeyboardInterrupt("killed before assembling")
    monkeypatch.setattr(em, "_assemble", killed)
    a_items = read_inputs([str(data_root / "test")])
    with pytest.raises(KeyboardInterrupt):
        em.embed(run, a_items, out, chunk=8, progress=False)
    monkeypatch.setattr(em, "_assemble", real)
    (tmp_path / "feats.npy.parts" / "job.json").unlink()  # as a kill during the old cleanup left it
    b_items = read_inputs([str(data_root / "query")])
    s = em.embed(run, b_items, out, chunk=8, progress=False)
    assert [r["path"] for r in s["rows"]] == [it.path for it in b_items]
    feats, side = em.load_features(out, mmap=False)
    ref = scireid.load(run, device="cpu").embed([it.path for it in b_items]).numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-5)
    assert not (tmp_path / "feats.npy.parts").exists() and not list(tmp_path.glob(".feats.npy.parts.done-*"))


def test_embed_full_disk_is_one_line_and_leaves_no_temp_file(full_run, data_root, tmp_path, monkeypatch, capsys):
    import builtins
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(28, "No space left on device")

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith(".tmp") and ".feats.npy." in str(path) and "b" in mode else f
    run, _ = full_run
    monkeypatch.setattr(builtins, "open", fake_open)
    one_line_error(capsys, ["embed", str(run), str(data_root / "query"), "--out", str(tmp_path / "feats.npy")],
                   "no space left", "feats.npy")
    monkeypatch.undo()
    assert not list(tmp_path.glob(".feats.npy.*.tmp")) and not (tmp_path / "feats.npy").exists()


def test_fp16_grad_scaler_skips_overflowing_steps():
    """run.amp_dtype=fp16 trains with a GradScaler as CLIP-ReID does; its step logic, on CPU."""
    from scireid.config import load_config
    from scireid.engine.distributed import DistContext
    from scireid.engine.engine import Engine
    from scireid.engine.features import amp_dtype
    assert load_config("ltcc", ["run.amp_dtype=fp16"]).run.amp_dtype == "fp16"
    assert amp_dtype("fp16") == torch.float16 and load_config("ltcc").run.amp_dtype == "bf16"

    class Task:
        def __init__(self):
            self.w = torch.nn.Parameter(torch.ones(3))
            self.opt = torch.optim.SGD([self.w], lr=0.1)

        def optimizers(self):
            return {"main": self.opt}
    t = Task()
    eng = Engine(Path("."), DistContext(), amp=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    eng._backward_step(t, (t.w * torch.tensor([1.0, float("inf"), 1.0])).sum(), scaler)  # overflow: skipped
    assert torch.equal(t.w.detach(), torch.ones(3)) and scaler.get_scale() == 2.0 ** 9
    eng._backward_step(t, (t.w * 2).sum(), scaler)  # finite: applied, unscaled
    torch.testing.assert_close(t.w.detach(), torch.full((3,), 0.8))


def test_leftovers_of_kills_are_cleaned_at_the_next_start(data_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(data_root, out, "stage2.epochs=1"))
    ours = out / ".model_best.safetensors.k2j4.tmp"
    theirs = out / ".tmpA1b2C3"
    spare = out / "stage2" / ".last.old"
    for f in (ours, theirs):
        f.write_bytes(b"x" * 1000)
    shutil.copytree(out / "stage2" / "last", spare)
    train(tiny_cfg(data_root, out, "stage2.epochs=1"), resume=True)
    assert not ours.exists() and not theirs.exists() and not spare.exists()
    assert (out / "stage2" / "last" / "state.pt").is_file() and (out / ".scireid.lock").exists()


def test_mot_rows_with_empty_boxes_are_skipped_with_reason_and_nan_is_one_line(full_run, data_root, tmp_path, capsys):
    from PIL import Image
    run, _ = full_run
    seq = tmp_path / "MOT-02"
    (seq / "img1").mkdir(parents=True)
    (seq / "det").mkdir()
    Image.new("RGB", (200, 160), (90, 90, 90)).save(seq / "img1" / "000001.jpg")
    (seq / "det" / "det.txt").write_text("1,-1,10,20,64,128,0.9\n1,-1,50,20,0,128,0.9\n1,-1,50,20,30,-5,0.9\n")
    capsys.readouterr()
    assert main(["embed", str(run), str(seq), "--out", str(tmp_path / "f.npy")]) == 0
    out = capsys.readouterr().out
    assert "embedded 1 images" in out and "2 skipped" in out and "width or height <= 0" in out
    (seq / "det" / "det.txt").write_text("1,-1,10,nan,64,128,0.9\n")
    one_line_error(capsys, ["embed", str(run), str(seq), "--out", str(tmp_path / "g.npy")], "line 1", "finite")


def test_export_defaults_to_dynamic_batch_and_static_graphs_work_with_embed(full_run, data_root, tmp_path, capsys):
    run, _ = full_run
    q = data_root / "query"
    n = len(list(q.glob("*.png")))
    ref = scireid.load(run, device="cpu").embed(sorted(str(p) for p in q.glob("*.png"))).numpy()
    for name, extra in (("dyn.onnx", []), ("static.onnx", ["--static-batch", "2"])):
        capsys.readouterr()
        assert main(["export", str(run), "--out", str(tmp_path / name), *extra]) == 0
        assert ("input images N x 3" in capsys.readouterr().out) == (not extra)
        assert main(["embed", str(tmp_path / name), str(q), "--out", str(tmp_path / f"{name}.npy"), "--batch", "3"]) == 0
        feats, side = __import__("scireid.deploy.embed", fromlist=["x"]).load_features(tmp_path / f"{name}.npy")
        order = [sorted(str(p) for p in q.glob("*.png")).index(r["path"]) for r in side["rows"]]
        assert len(feats) == n
        np.testing.assert_allclose(np.asarray(feats), ref[order], atol=1e-4)


def test_export_check_with_bad_images_writes_nothing(full_run, tmp_path, capsys):
    run, _ = full_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    one_line_error(capsys, ["export", str(run), "--out", str(tmp_path / "m.onnx"), "--check", "--images", str(bad)],
                   "x.png")
    assert not (tmp_path / "m.onnx").exists()


def test_labels_from_dataset_file_names(tmp_path):
    """The deploy tools read pid / camera / clothes with the dataset parsers' own schemes."""
    from scireid.deploy.inputs import read_input
    from PIL import Image
    cases = {"ltcc": (["040_1_c4_001178.png", "002_3_c11_000010.png"], [(40, 3, 1), (2, 10, 3)]),
             "market": (["0002_c1s1_000451_03.jpg", "-1_c3s2_000012_01.jpg"], [(2, 0, -1), (-1, 2, -1)]),
             "vc": (["0001-03-02-04.jpg", "0512-4-1-7.jpg"], [(1, 2, 2), (512, 3, 1)]),
             "msmt": (["0007_012_05_0303morning_0015_0.jpg", "1041_000_15_0113noon_0001_1.jpg"], [(7, 4, -1), (1041, 14, -1)]),
             "mixed": (["040_1_c4_001178.png", "holiday.jpg"], [(-1, -1, -1), (-1, -1, -1)])}
    for case, (names, want) in cases.items():
        d = tmp_path / case
        d.mkdir()
        for n in names:
            Image.new("RGB", (8, 16)).save(d / n)
        got = {Path(it.path).name: (it.pid, it.camid, it.clothes_id) for it in read_input(d)}
        assert [got[n] for n in names] == want, case
    prcc = tmp_path / "prcc" / "rgb" / "test" / "C" / "017"
    prcc.mkdir(parents=True)
    Image.new("RGB", (8, 16)).save(prcc / "cropped_rgb001.jpg")
    assert [(it.pid, it.camid) for it in read_input(prcc.parent.parent)] == [(17, 2)]


def test_exclude_same_camera_works_from_names_and_is_never_silent(full_run, data_root, tmp_path, capsys):
    run, _ = full_run
    idx = tmp_path / "idx"
    assert main(["index", "build", str(run), str(data_root / "test"), "--out", str(idx)]) == 0
    q = sorted((data_root / "query").glob("*.png"))[0]
    cam = int(q.name.split("_c")[1].split("_")[0])
    capsys.readouterr()
    assert main(["search", str(idx), str(q), "--exclude-same-camera", "--topk", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]["results"]
    assert res and all(f"_c{cam}_" not in Path(r["path"]).name for r in res)
    plain = tmp_path / "plain.png"
    shutil.copy(q, plain)  # a name without a camera
    one_line_error(capsys, ["search", str(idx), str(plain), "--exclude-same-camera"], "no camera known for query")


def test_approximate_index_recall_is_measured_on_unseen_people_and_after_add():
    from scireid.deploy.index import Index, exact_topk
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(200), 6)
    centres = rng.normal(size=(200, 32)).astype(np.float32)
    f = centres[ids] + 0.7 * rng.normal(size=(len(ids), 32)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    rows = [{"path": f"{i}.png", "pid": int(p)} for i, p in enumerate(ids)]
    idx = Index.build(f, rows, "m", kind="hnsw", recall=0.9)
    cal = idx.cal
    assert cal.how.startswith("held-out identities")
    held_pids = set(ids[cal.qi].tolist())
    assert all(int(ids[j]) not in held_pids for t in cal.truth for j in t)  # their truth has none of their own rows
    # the same without identities: rows, and the JSON says so
    anon = Index.build(f, [{"path": r["path"]} for r in rows], "m", kind="ivf", recall=0.9)
    assert anon.params["calibration"].startswith("held-out gallery rows")
    # after add, the stored recall is re-measured against exact search over the grown gallery
    extra = rng.normal(size=(300, 32)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    n0 = len(idx)
    idx.add(extra, [{"path": f"x{i}"} for i in range(300)], "m")
    assert idx.params["recall_measured_at_rows"] == n0 + 300
    allf = np.concatenate([f, extra])
    keep = np.setdiff1d(np.arange(len(allf)), cal.qi)
    ref = exact_topk(allf[keep], cal.q, cal.k)
    assert [set(keep[r].tolist()) for r in ref] == cal.truth
    pq = Index.build(f, rows, "m", kind="ivf-pq", recall=0.5)
    assert "approximate" in pq.params["scores"]
