"""The Dask engine on a real local cluster of worker processes: merged shards equal single-process search."""
import json
import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

from scireid.cli import main  # noqa: E402
from scireid.deploy.filters import RowFilter  # noqa: E402
from scireid.deploy.index import Index  # noqa: E402
from scireid.deploy.sharded import ShardedIndex, cluster_client  # noqa: E402
from scireid.errors import UserError  # noqa: E402
from test_faults import one_line_error  # noqa: E402
from test_search_filters import _gallery  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with cluster_client("local", workers=2) as c:
        yield c


def test_merged_exact_search_equals_single_process_with_filters_add_and_remove(client, tmp_path):
    f, rows, q = _gallery(3000)
    one = Index.build(f, rows, "fp")
    sh = ShardedIndex.build(tmp_path / "sh", f, rows, "fp", client, shards=3)
    assert len(sh) == 3000 and len(set(sh._place.values())) == 2  # three shards over two worker processes
    for nq in (5, 24):  # faiss's two code paths (below and above its BLAS threshold)
        s1, i1 = one.search(q[:nq], 20)
        s2, i2 = sh.search(q[:nq], 20)
        np.testing.assert_array_equal(i2, i1)
        np.testing.assert_array_equal(s2, s1)
    rf = RowFilter(cameras=[2, 3], after="100", before="2500")
    cams = [i % 10 for i in range(len(q))]
    s1, i1 = one.search(q, 10, exclude_camids=cams, keep=rf.mask(one.rows))
    s2, i2 = sh.search(q, 10, exclude_camids=cams, row_filter=rf)
    np.testing.assert_array_equal(i2, i1)
    np.testing.assert_array_equal(s2, s1)
    tiny = RowFilter(after="10", before="12")  # 3 rows of 3,000: 0.1%
    s1, i1 = one.search(q, 10, keep=tiny.mask(one.rows))
    s2, i2 = sh.search(q, 10, row_filter=tiny)
    np.testing.assert_array_equal(i2, i1)
    gone = sh.rows_where(pid=3)
    np.testing.assert_array_equal(gone, np.arange(24, 32))
    assert sh.remove(gone) == 8 and one.remove(gone) == 8 and len(sh) == 2992
    rng = np.random.default_rng(5)
    extra = rng.normal(size=(40, f.shape[1])).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    new_rows = [{"path": f"n{i}.jpg", "pid": 9000 + i, "camid": 1, "timestamp": "5"} for i in range(40)]
    sh.add(extra, new_rows, "fp", job="extra")
    one.add(extra, new_rows, "fp")
    q2 = np.concatenate([q, extra[:4]])
    s1, i1 = one.search(q2, 15)
    s2, i2 = sh.search(q2, 15)
    np.testing.assert_array_equal(i2, i1)
    np.testing.assert_array_equal(s2, s1)
    assert not np.isin(i2, gone).any() and i2[-1, 0] == 3003
    again = ShardedIndex.open(tmp_path / "sh", client)  # from disk: the manifest and every shard's version
    np.testing.assert_array_equal(again.search(q2, 15)[1], i1)
    assert again.manifest["next_id"] == 3040 and len(again) == 3032
    with pytest.raises(UserError, match="already added"):
        sh.add(extra, new_rows, "fp", job="extra")
    # an add killed after one shard took its rows: the re-run completes the others, the first is not doubled
    from scireid.deploy.sharded import _add_shard
    more = rng.normal(size=(40, f.shape[1])).astype(np.float32)  # new vectors: no tied scores
    more /= np.linalg.norm(more, axis=1, keepdims=True)
    more_rows = [dict(r, path="m" + r["path"]) for r in new_rows]
    first = again.manifest["next_id"]
    mine = [j for j in range(40) if (first + j) % 3 == 1]
    _add_shard(again.shard_path(1), more[mine], [more_rows[j] for j in mine], "fp", "killed")
    again.add(more, more_rows, "fp", job="killed")
    one.add(more, more_rows, "fp")
    np.testing.assert_array_equal(ShardedIndex.open(tmp_path / "sh", client).search(more[:6], 15)[1],
                                  one.search(more[:6], 15)[1])
    assert len(again) == len(one) == 3072


def test_approximate_kind_reports_recall_per_shard(client, tmp_path):
    f, rows, q = _gallery(4000)
    sh = ShardedIndex.build(tmp_path / "ivf", f, rows, "fp", client, shards=2, kind="ivf", recall=0.9)
    rec = sh.params["recall@10_per_shard"]
    assert len(rec) == 2 and sh.params["recall@10_vs_exact"] == min(rec) >= 0.9
    s, i = sh.search(q, 10)
    truth = np.argsort(-(q @ f.T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i.tolist(), truth.tolist())]) >= 0.8


def test_slow_shard_is_named_or_left_out_when_asked(client, tmp_path):
    f, rows, q = _gallery(1000)
    sh = ShardedIndex.build(tmp_path / "sh", f, rows, "fp", client, shards=2)
    sh.search(q, 5)  # both shards loaded
    busy = client.submit(time.sleep, 6, workers=[sh._place[1]], pure=False)  # the worker's only thread is taken
    time.sleep(0.5)
    with pytest.raises(UserError, match=r"^shard 1 \(.*shard-001\) is down: no answer from worker .* within 1 s$"):
        sh.search(q, 5, timeout=1)
    s, i = sh.search(q, 5, timeout=1, partial=True)
    assert sh.missing == [sh.shard_path(1)]
    one = Index.build(f, rows, "fp")
    np.testing.assert_array_equal(i, one.search(q, 5, keep=np.arange(1000) % 2 == 0)[1])
    busy.result()


def test_killed_worker_takes_its_shard_down(tmp_path):
    f, rows, q = _gallery(1000)
    with cluster_client("local", workers=2) as c:
        sh = ShardedIndex.build(tmp_path / "sh", f, rows, "fp", c, shards=2)
        pids = c.run(os.getpid)
        victim = sh._place[0]
        os.kill(pids[victim], signal.SIGKILL)
        for _ in range(100):  # the scheduler notices the lost connection
            if victim not in c.scheduler_info()["workers"]:
                break
            time.sleep(0.1)
        with pytest.raises(UserError, match=r"^shard 0 \(.*shard-000\) is down: its worker .* left the cluster$"):
            sh.search(q, 5)
        s, i = sh.search(q, 5, partial=True)
        assert sh.missing == [sh.shard_path(0)] and (i % 2 == 1).all()
        # a new session places the shards on the workers there are (the nanny restarted the killed one)
        np.testing.assert_array_equal(ShardedIndex.open(tmp_path / "sh", c).search(q, 5)[1],
                                      Index.build(f, rows, "fp").search(q, 5)[1])


def test_cli_engine_dask(full_run, data_root, tmp_path, capsys):
    run, _ = full_run
    idx, plain = tmp_path / "sh", tmp_path / "one"
    assert main(["index", "build", str(run), str(data_root / "test"), "--out", str(idx), "--engine", "dask",
                 "--shards", "2", "--scheduler", "local"]) == 0
    assert main(["index", "build", str(run), str(data_root / "test"), "--out", str(plain)]) == 0
    assert json.loads((idx / "shards.json").read_text())["shards"] == 2
    q = sorted((data_root / "query").glob("*.png"))[:3]
    capsys.readouterr()
    outs = []
    for folder in (idx, plain):
        assert main(["search", str(folder), *map(str, q), "--topk", "15", "--json", "--exclude-same-camera"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1]  # rows, ids and scores
    pid = outs[0][0]["results"][0]["pid"]
    assert main(["index", "remove", str(idx), "--pid", str(pid)]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), *map(str, q), "--topk", "200", "--json"]) == 0
    assert all(r["pid"] != pid for o in json.loads(capsys.readouterr().out) for r in o["results"])
    one_line_error(capsys, ["search", str(idx), str(q[0]), "--scheduler", "tcp://127.0.0.1:9"], "no Dask scheduler")
    one_line_error(capsys, ["search", str(plain), str(q[0]), "--engine", "dask"], "built with --engine local")
    assert main(["search", str(idx), str(q[0]), "--engine", "dask"]) == 0


@pytest.mark.slow
def test_a_million_rows_over_two_workers_equal_one_process(tmp_path):
    """10^6 x 64 (under a minute on 2 cores): exact merged search equals one process; figures: BENCHMARKS.md."""
    rng = np.random.default_rng(0)
    f = rng.standard_normal((1_000_000, 64), dtype=np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    rows = [{"path": str(i), "camid": i % 8} for i in range(len(f))]
    q = f[rng.choice(len(f), 64, replace=False)] + 0.3 * rng.standard_normal((64, 64), dtype=np.float32)
    one = Index.build(f, rows, "fp")
    s1, i1 = one.search(q, 10, keep=RowFilter(cameras=[1, 2]).mask(one.rows))
    del one
    with cluster_client("local", workers=2) as c:
        sh = ShardedIndex.build(tmp_path / "sh", f, rows, "fp", c, shards=2)
        s2, i2 = sh.search(q, 10, row_filter=RowFilter(cameras=[1, 2]))
    np.testing.assert_array_equal(i2, i1)
    np.testing.assert_array_equal(s2, s1)


def test_rows_missing_a_filtered_field_are_counted_over_all_shards(client, tmp_path, caplog):
    import logging
    f, rows, q = _gallery(600)
    for i in (2, 3, 12, 13):  # spread over the three shards
        rows[i] = dict(rows[i], camid=-1)
    for i in (1, 11, 21, 31):  # camera 1, no time
        rows[i] = dict(rows[i], timestamp="")
    sh = ShardedIndex.build(tmp_path / "sh", f, rows, "fp", client, shards=3)
    with caplog.at_level(logging.WARNING):
        sh.search(q, 5, row_filter=RowFilter(cameras=[1], after="0"), exclude_camids=[1] * len(q))
    assert "--cameras: 4 of 600 gallery rows have no camera" in caplog.text
    assert "--after/--before: 4 of 60 gallery rows have no timestamp" in caplog.text  # of the camera's 60
    assert "--exclude-same-camera: 4 of 600 gallery rows have no camera and are always kept" in caplog.text
