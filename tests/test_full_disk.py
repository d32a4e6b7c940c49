"""A disk that fills: every writer on a real size-limited filesystem (tmpfs, mounted for the test).

Each writer runs where the space ends part-way. It must stop with one error line that says the disk is full,
leave no temporary file behind, and leave what was there before intact; with room again, the same command
completes. Needs root and a kernel that lets it mount tmpfs (skipped otherwise).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

LEFTOVER = (".tmp", ".partial", ".done-", ".old")


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(mb)`` -> a folder on a fresh tmpfs of that size; unmounted at the end."""
    mounted = []

    def make(mb: float) -> Path:
        d = tmp_path / f"disk{uuid.uuid4().hex[:6]}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(mb * 1024)}k", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return d
    if os.geteuid() != 0 or sys.platform != "linux":
        pytest.skip("mounting a size-limited tmpfs needs root on Linux")
    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def cli(*argv: str) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "scireid.cli", *argv], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stderr.strip()


def full_disk_error(rc: int, err: str) -> None:
    assert rc == 2, err[-600:]
    assert "Traceback" not in err, err[-600:]
    last = err.splitlines()[-1]
    assert "error:" in last and "no space left" in last.lower(), err[-600:]


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if any(s in p.name for s in LEFTOVER)]


def test_synth_on_a_full_disk(small_disk):
    d = small_disk(0.5)
    full_disk_error(*cli("synth", str(d / "data"), "--ids", "6"))
    assert not leftovers(d) and not (d / "data").exists()


def test_embed_and_index_on_a_full_disk(small_disk, full_run, data_root, tmp_path):
    run = full_run[0]
    d = small_disk(0.02)
    full_disk_error(*cli("embed", str(run), str(data_root / "test"), "--out", str(d / "f.npy")))
    assert not leftovers(d)
    d = small_disk(0.03)
    full_disk_error(*cli("index", "build", str(run), str(data_root / "test"), "--out", str(d / "idx")))
    assert not leftovers(d)
    # an index that fits, then an add that does not: the index as it was stays whole and searchable
    d = small_disk(1.2)
    rc, err = cli("index", "build", str(run), str(data_root / "query"), "--out", str(d / "idx"))
    assert rc == 0, err
    from scireid.deploy.index import Index
    before = len(Index.load(d / "idx"))
    filler = d / "filler"
    free = shutil.disk_usage(d).free
    filler.write_bytes(b"\0" * max(0, free - 60_000))
    full_disk_error(*cli("index", "add", str(d / "idx"), str(data_root / "test")))
    assert len(Index.load(d / "idx")) == before and not leftovers(d)
    filler.unlink()
    rc, err = cli("index", "add", str(d / "idx"), str(data_root / "test"))
    assert rc == 0, err
    assert len(Index.load(d / "idx")) > before


def test_train_on_a_full_disk_then_resume_with_room(small_disk, data_root):
    from test_faults import train_args
    d = small_disk(8)  # the config and stage 1 fit; stage 1's checkpoints (about 20 MB each) do not
    argv = train_args(data_root, d / "run", "stage2.epochs=2")
    full_disk_error(*cli(*argv))
    if (d / "run").exists():
        assert not leftovers(d / "run")
    r = subprocess.run(["mount", "-o", "remount,size=400m", str(d)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rc, err = cli(*argv, "--resume")
    if rc == 2 and "holds no run to resume" in err:  # it had written nothing a resume can start from
        rc, err = cli(*argv)
    assert rc == 0, err[-600:]
    assert (d / "run" / "model_last.safetensors").is_file() and (d / "run" / "results.json").is_file()
    assert not leftovers(d / "run")
