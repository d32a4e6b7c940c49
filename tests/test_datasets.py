import json

import numpy as np
import pytest
from PIL import Image

from fake_trees import img, make_ltcc, make_market, make_msmt, make_prcc, make_vcclothes
from scireid.cli import main
from scireid.data.datasets import build_dataset, list_datasets
from scireid.data.inspect import check_dataset, dataset_stats
from scireid.data.records import DatasetError


def test_registry_names():
    assert list_datasets() == ["custom", "ltcc", "market1501", "msmt17", "prcc", "synthetic", "vcclothes"]


def test_ltcc(code_dir):
    ds = build_dataset("ltcc", make_ltcc(code_dir))
    assert ds.num_train_pids == 2 and ds.num_train_clothes == 3
    assert sorted({(r.pid, r.clothes) for r in ds.train}) == [(0, 0), (0, 1), (1, 2)]
    assert sorted(r.camid for r in ds.train) == [0, 0, 1, 2, 3]
    np.testing.assert_array_equal(ds.pid2clothes, [[1, 1, 0], [0, 0, 1]])
    assert [p.name for p in ds.protocols] == ["general", "cloth-changing"]
    q, g = ds.split_records(ds.protocols[1])
    assert [r.pid for r in q] == [3, 4] and len(g) == 6
    # query 003 clothes 1 and gallery 003 clothes 1 share a clothes label; clothes 2 does not
    by_name = {r.path.rsplit("/", 1)[1]: r for r in ds.test}
    assert by_name["003_1_c1_000010.png"].clothes == by_name["003_1_c2_000020.png"].clothes
    assert by_name["003_1_c1_000010.png"].clothes != by_name["003_2_c3_000021.png"].clothes
    assert by_name["004_2_c5_000024.png"].camid == 4


def test_prcc(code_dir):
    ds = build_dataset("prcc", make_prcc(code_dir))
    assert ds.num_train_pids == 2 and ds.num_train_clothes == 4  # A/B share clothes, C differs
    a_b = {r.clothes for r in ds.train if r.pid == 0 and r.camid in (0, 1)}
    c = {r.clothes for r in ds.train if r.pid == 0 and r.camid == 2}
    assert len(a_b) == 1 and len(c) == 1 and a_b != c
    sc, cc = ds.protocol("same-clothes"), ds.protocol("cloth-changing")
    assert {ds.test[i].camid for i in sc.query} == {1} and {ds.test[i].camid for i in cc.query} == {2}
    assert {ds.test[i].camid for i in sc.gallery} == {0} and len(sc.gallery) == 6
    ss = build_dataset("prcc", code_dir, single_shot=True, trials=10, seed=3)
    trials = ss.protocol("cloth-changing").gallery_trials
    assert len(trials) == 10 and all(len(t) == 3 for t in trials)
    assert [t.tolist() for t in trials] == [t.tolist() for t in build_dataset("prcc", code_dir, single_shot=True, seed=3).protocol("cloth-changing").gallery_trials]


def test_vcclothes(code_dir):
    ds = build_dataset("vcclothes", make_vcclothes(code_dir))
    assert ds.num_train_pids == 2 and ds.num_train_clothes == 3
    names = [p.name for p in ds.protocols]
    assert names == ["general", "cams23", "cams34"]
    p23 = ds.protocol("cams23")
    assert {ds.test[i].camid + 1 for i in np.concatenate([p23.query, p23.gallery])} <= {2, 3}
    assert len(p23.query) == 2 and len(p23.gallery) == 3
    p34 = ds.protocol("cams34")
    assert len(p34.query) == 1 and len(p34.gallery) == 3


def test_market(code_dir):
    ds = build_dataset("market1501", make_market(code_dir))
    assert ds.num_train_pids == 2 and len(ds.train) == 3  # -1 dropped
    q, g = ds.split_records(ds.protocols[0])
    assert len(q) == 2 and len(g) == 4 and 0 in {r.pid for r in g} and -1 not in {r.pid for r in g}
    assert ds.num_train_clothes == ds.num_train_pids


def test_msmt(code_dir):
    ds = build_dataset("msmt17", make_msmt(code_dir))
    missing = code_dir / "MSMT17_V1" / "test" / "0006" / "0006_012_02_0113noon_0003_0.jpg"
    missing.unlink()
    assert dict(check_dataset(ds))[str(missing)] == "missing"
    assert ds.num_train_pids == 3 and len(ds.train) == 3  # train + val
    assert sorted(r.camid for r in ds.train) == [0, 2, 4]
    q, g = ds.split_records(ds.protocols[0])
    assert [r.camid for r in q] == [1] and sorted(r.camid for r in g) == [1, 6]


def test_custom_manifest(tmp_path):
    for i, n in enumerate(["a.jpg", "b.jpg", "c.jpg", "d.jpg"]):
        img(tmp_path / n, i)
    (tmp_path / "manifest.csv").write_text(
        "path,pid,camid,clothes_id,split\na.jpg,10,0,1,train\nb.jpg,11,1,1,train\nc.jpg,5,0,1,query\nd.jpg,5,1,2,gallery\n")
    ds = build_dataset("custom", tmp_path)
    assert ds.num_train_pids == 2 and len(ds.test) == 2
    (tmp_path / "manifest.csv").write_text("path,pid\na.jpg,1\n")
    with pytest.raises(DatasetError, match="header must contain"):
        build_dataset("custom", tmp_path)


def test_wrong_root_names_expected_tree(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(DatasetError) as e:
        build_dataset("ltcc", tmp_path)
    msg = str(e.value)
    assert "LTCC_ReID/{train,query,test}" in msg and "something/" in msg and "\n" not in msg


def test_bad_name_is_an_error_and_check_lists_everything(code_dir, capsys):
    root = make_ltcc(code_dir)
    base = root / "LTCC_ReID"
    img(base / "train" / "holiday.png")  # wrong pattern
    (base / "test" / "003_1_c4_000099.png").write_bytes(b"not an image")
    good = base / "test" / "003_1_c4_000098.png"
    img(good)
    data = good.read_bytes()
    trunc = base / "test" / "003_1_c4_000097.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:60])
    assert data
    with pytest.raises(DatasetError, match="holiday.png"):
        build_dataset("ltcc", root)
    ds = build_dataset("ltcc", root, lenient=True)
    bad = dict(check_dataset(ds))
    assert "holiday.png" in " ".join(bad)
    assert bad[str(base / "test" / "003_1_c4_000099.png")] == "not an image"
    assert "truncated" in bad[str(trunc)] or "unreadable" in bad[str(trunc)]
    assert str(good) not in bad
    assert main(["datasets", "check", "ltcc", str(root)]) == 1
    out = capsys.readouterr().out
    assert "holiday.png" in out and "not an image" in out


def test_stats_cli_json(code_dir, capsys):
    root = make_ltcc(code_dir)
    assert main(["datasets", "stats", "ltcc", str(root), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["splits"]["train"] == {"ids": 2, "images": 5, "clothes": 3, "cameras": 4}
    assert st["protocols"]["cloth-changing"]["query"] == 2 and st["protocols"]["general"]["gallery"] == 6
    assert st == dataset_stats(build_dataset("ltcc", root)) | {}


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="available"):
        build_dataset("ltcc2", "/nope")
