"""Filters inside the search and row removal, against brute force over the rows that pass or remain."""
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from scireid.cli import main
from scireid.deploy.filters import RowFilter, parse_cameras, parse_time
from scireid.deploy.index import BRUTE_FORCE_ROWS, KINDS, Index
from scireid.errors import UserError

from test_faults import one_line_error


def _gallery(n=4000, d=32, seed=0, iso=False):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 8, d)).astype(np.float32)
    f = centres[np.arange(n) // 8] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    rows = []
    for i in range(n):
        t = f"2026-12-04T{10 + i * 8 // n:02d}:{i % 60:02d}:00" if iso else str(i)
        rows.append({"path": f"g{i}.jpg", "pid": i // 8, "camid": i % 10, "timestamp": t})
    q = centres[:24] + 0.6 * rng.normal(size=(24, d)).astype(np.float32)
    return f, rows, q / np.linalg.norm(q, axis=1, keepdims=True)


def _brute(vecs, allowed, q, k):
    """Top-k row ids and scores among ``allowed`` by full sort in float64."""
    s = q.astype(np.float64) @ vecs[allowed].astype(np.float64).T
    o = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return allowed[o], np.take_along_axis(s, o, 1)


def _make(kind, f, rows, folder):
    """pca-ivf-disk re-ranks from a vector file: the gallery written as fp16 .npy, as a big gallery would be."""
    if kind != "pca-ivf-disk":
        return Index.build(f, rows, "fp", kind=kind)
    path = Path(folder) / "vectors.npy"
    np.save(path, f.astype(np.float16))
    return Index.build_from_file(path, rows, "fp")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    f, rows, q = _gallery()
    return f, rows, q, {k: _make(k, f, rows, tmp_path_factory.mktemp(k)) for k in KINDS}


def _check_equal_to_brute(idx, f, q, allowed, k, exact_vectors):
    s, i = idx.search(q, k, keep=np.isin(np.arange(len(idx.rows)), allowed))
    vecs = f if exact_vectors else np.zeros_like(f)
    if not exact_vectors:  # approximate kinds are exact over their own stored vectors
        vecs[allowed] = idx.vectors(allowed)
    bi, bs = _brute(vecs, allowed, q, min(k, len(allowed)))
    np.testing.assert_array_equal(i[:, :bi.shape[1]], bi)
    np.testing.assert_allclose(s[:, :bs.shape[1]], bs, atol=2e-5)
    assert (i[:, bi.shape[1]:] == -1).all()  # k > rows that pass: padded, never other rows


@pytest.mark.parametrize("kind", KINDS)
def test_filters_equal_brute_force_over_the_rows_that_pass(built, kind):
    f, rows, q, idxs = built
    idx = idxs[kind]
    exact_vectors = kind in ("exact", "ivf", "hnsw", "pca-flat")
    cams = RowFilter(cameras=[3, 7]).mask(idx.rows)
    assert cams.sum() == 800
    window = RowFilter(after="1000", before="1039").mask(idx.rows)
    assert window.sum() == 40
    both = RowFilter(cameras=[2], after="100", before="2999").mask(idx.rows)
    tiny = RowFilter(after="17", before="20").mask(idx.rows)  # 4 of 4,000 rows: 0.1%
    for mask, k in ((window, 10), (both, 10), (tiny, 10), (cams, 10)):
        allowed = np.flatnonzero(mask)
        if kind == "exact" or len(allowed) <= BRUTE_FORCE_ROWS:
            _check_equal_to_brute(idx, f, q, allowed, k, exact_vectors)


def test_broad_filter_on_an_approximate_index_is_the_tuned_search_and_never_short(built, monkeypatch):
    f, rows, q, idxs = built
    import scireid.deploy.index as index_mod
    monkeypatch.setattr(index_mod, "BRUTE_FORCE_ROWS", 100)  # force the tuned-search path for an 800-row filter
    mask = RowFilter(cameras=[3, 7]).mask(idxs["hnsw"].rows)
    s, i = idxs["hnsw"].search(q, 10, keep=mask)
    assert (i >= 0).all() and mask[i].all()
    bi, _ = _brute(f, np.flatnonzero(mask), q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i.tolist(), bi.tolist())])
    assert recall >= 0.9
    # so few rows pass that the tuned search cannot find k of them: brute force over them, exact
    tiny = RowFilter(after="17", before="300").mask(idxs["ivf"].rows)
    s, i = idxs["ivf"].search(q, 10, keep=tiny)
    np.testing.assert_array_equal(i, _brute(f, np.flatnonzero(tiny), q, 10)[0])


def test_exclude_same_camera_is_inside_the_search(built):
    f, rows, q, idxs = built
    qcams = [i % 10 for i in range(len(q))]
    cams = np.array([r["camid"] for r in rows])
    for kind in ("exact", "pca-flat"):
        s, i = idxs[kind].search(q, 15, exclude_camids=qcams)
        for r, c in enumerate(qcams):
            bi, _ = _brute(f, np.flatnonzero(cams != c), q[r:r + 1], 15)
            np.testing.assert_array_equal(i[r], bi[0])


def test_time_filter_on_iso_timestamps_and_its_errors(caplog):
    f, rows, q = _gallery(800, iso=True)
    rows[5]["timestamp"] = ""  # no timestamp: left out, counted
    idx = Index.build(f, rows, "fp", kind="exact")
    rf = RowFilter(after="2026-12-04T12:00:00", before="2026-12-04T13:59:59")
    with caplog.at_level(logging.WARNING):
        mask = rf.mask(idx.rows)
    assert "1 of 800 gallery rows have no timestamp" in caplog.text
    assert mask.sum() == 200  # hours 12 and 13 of 10-17
    s, i = idx.search(q, 10, keep=mask)
    np.testing.assert_array_equal(i, _brute(f, np.flatnonzero(mask), q, 10)[0])
    assert parse_time("2026-12-04T12:00:00Z")[0] == parse_time("2026-12-04T12:00:00")[0]
    with pytest.raises(UserError, match="are numbers but gallery row 0"):
        RowFilter(after="5").mask(idx.rows)
    with pytest.raises(UserError, match="--after '14:00x'"):
        RowFilter(after="14:00x").check()
    with pytest.raises(UserError, match="later than --before"):
        RowFilter(after="10", before="5").check()
    assert parse_cameras("3,5,7-9") == [3, 5, 7, 8, 9]
    with pytest.raises(UserError, match="--cameras 'x'"):
        parse_cameras("x")


@pytest.mark.parametrize("kind", KINDS)
def test_removed_rows_are_gone_from_every_structure(tmp_path, kind):
    f, rows, q = _gallery(3000)
    idx = _make(kind, f, rows, tmp_path)
    gone = np.flatnonzero(np.isin([r["pid"] for r in rows], [0, 1, 2, 5]))  # the queries' own people
    assert idx.remove(gone) == len(gone) and len(idx) == 3000 - len(gone)
    assert idx.remove(gone) == 0  # twice: nothing left to remove
    s, i = idx.search(q, 50)
    assert not np.isin(i, gone).any()
    np.testing.assert_array_equal(np.sort(idx.stored_ids()), np.setdiff1d(np.arange(3000), gone))  # codes gone too
    left = np.setdiff1d(np.arange(3000), gone)
    if kind == "exact":
        np.testing.assert_array_equal(i, _brute(f, left, q, 50)[0])
    else:
        if kind == "pca-ivf-disk":  # the vector file is the only copy: removed rows are zeroed in it
            stored = np.load(tmp_path / "vectors.npy")
            assert not stored[gone].any() and stored[left].any(axis=1).all()
        if idx.cal is not None:
            assert not np.isin(idx.cal.qi, gone).any() and not np.isin(idx.cal.truth_i, gone).any()
            assert 0 < idx.params["recall@10_vs_exact"] <= 1
    idx.save(tmp_path / "i")
    back = Index.load(tmp_path / "i")
    assert len(back) == len(idx) and [r is None for r in back.rows] == [r is None for r in idx.rows]
    s2, i2 = back.search(q, 50)
    np.testing.assert_array_equal(i2, i)
    if kind == "pca-ivf-disk":
        with pytest.raises(UserError, match="rebuild from the grown file"):
            back.add(f[:3], rows[:3], "fp")
        return
    # ids are never reused: a row added later gets a new id
    back.add(f[:3], [dict(r, path="new" + r["path"]) for r in rows[:3]], "fp")
    assert back.rows[3000]["path"] == "newg0.jpg" and back.rows[0] is None
    s3, i3 = back.search(f[:1], 1)
    assert i3[0, 0] == 3000


def test_cli_filters_and_remove(full_run, data_root, tmp_path, capsys):
    run, _ = full_run
    gal = sorted((data_root / "test").glob("*.png"))
    man = tmp_path / "gallery.csv"
    with open(man, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "pid", "camid", "timestamp"])
        for n, p in enumerate(gal):
            pid, cam = int(p.name.split("_")[0]), int(p.name.split("_c")[1].split("_")[0])
            w.writerow([str(p), pid, cam, n])
    idx = tmp_path / "idx"
    assert main(["index", "build", str(run), str(man), "--out", str(idx)]) == 0
    q = sorted((data_root / "query").glob("*.png"))[0]
    capsys.readouterr()
    assert main(["search", str(idx), str(q), "--cameras", "1", "--after", "2", "--before", "30", "--topk", "500",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]["results"]
    want = [str(p) for n, p in enumerate(gal) if 2 <= n <= 30 and int(p.name.split("_c")[1].split("_")[0]) == 1]
    assert res and sorted(r["path"] for r in res) == sorted(want)
    pid = res[0]["pid"]
    assert main(["index", "remove", str(idx), "--pid", str(pid)]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["search", str(idx), str(q), "--topk", "500", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]["results"]
    assert res and all(r["pid"] != pid for r in res)
    listed = tmp_path / "gone.txt"
    listed.write_text(res[0]["path"] + "\n")
    assert main(["index", "remove", str(idx), "--paths", str(listed)]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), str(q), "--topk", "500", "--json"]) == 0
    assert res[0]["path"] not in [r["path"] for r in json.loads(capsys.readouterr().out)[0]["results"]]
    one_line_error(capsys, ["index", "remove", str(idx), "--pid", str(pid)], "nothing removed")
    one_line_error(capsys, ["search", str(idx), str(q), "--after", "noon"], "--after 'noon'")
    one_line_error(capsys, ["search", str(idx), str(q), "--cameras", "a-b"], "--cameras 'a-b'")
    assert Path(idx / "CURRENT").is_file()


def test_disk_kind_streams_its_file_tunes_and_refuses_a_changed_file(tmp_path):
    from scireid.deploy import disk_store
    f, rows, q = _gallery(6000)
    path = tmp_path / "g.npy"
    np.save(path, f.astype(np.float16))
    pids = np.array([r["pid"] for r in rows])
    monkey_chunk = disk_store.CHUNK
    try:
        disk_store.CHUNK = 1000  # the build reads the file in chunks: six of them here
        idx = Index.build_from_file(path, None, "fp", pids=pids, recall=0.95)
    finally:
        disk_store.CHUNK = monkey_chunk
    assert isinstance(idx.store, disk_store.VectorFile) and idx.params["recall@10_vs_exact"] >= 0.95
    assert idx.params["calibration"].startswith("held-out identities")
    truth = np.argsort(-(q @ f.astype(np.float16).astype(np.float32).T), axis=1)[:, :10]
    s, i = idx.search(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i.tolist(), truth.tolist())]) >= 0.9
    np.testing.assert_allclose(s[:, 0], np.einsum("qd,qd->q", q, f.astype(np.float16)[i[:, 0]].astype(np.float32)),
                               rtol=1e-5)  # exact inner products with the stored rows
    idx.save(tmp_path / "idx")
    np.save(path, np.zeros((10, f.shape[1]), np.float16))  # another file at that path
    with pytest.raises(UserError, match="is not the vector file this index was built on"):
        Index.load(tmp_path / "idx")
    path.unlink()
    with pytest.raises(UserError, match="vector file is missing"):
        Index.load(tmp_path / "idx")
    with pytest.raises(UserError, match="builds from a vector file"):
        Index.build(f, rows, "fp", kind="pca-ivf-disk")


def test_cli_disk_kind_build_search_remove_and_move(full_run, data_root, tmp_path, capsys):
    import shutil
    run, _ = full_run
    idx = tmp_path / "disk"
    assert main(["index", "build", str(run), str(data_root / "test"), "--out", str(idx), "--kind", "pca-ivf-disk"]) == 0
    vec = np.load(idx / "vectors.npy", mmap_mode="r")
    assert vec.dtype == np.float16 and len(vec) == len(Index.load(idx))
    moved = tmp_path / "moved"
    shutil.move(idx, moved)  # the vector file is found inside the index folder, wherever it is
    q = sorted((data_root / "query").glob("*.png"))[0]
    capsys.readouterr()
    assert main(["search", str(moved), str(q), "--topk", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]["results"]
    assert len(res) == 5
    assert main(["index", "remove", str(moved), "--pid", str(res[0]["pid"])]) == 0
    gone = [i for i, r in enumerate(Index.load(moved).rows) if r is None]
    assert gone and not np.load(moved / "vectors.npy")[gone].any()
    one_line_error(capsys, ["index", "add", str(moved), str(data_root / "query")], "not extended in place")
    feats = tmp_path / "f16.npy"
    assert main(["embed", str(run), str(q), "--out", str(feats), "--fp16"]) == 0
    assert np.load(feats).dtype == np.float16
