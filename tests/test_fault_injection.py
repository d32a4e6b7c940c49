"""Fault injection: every writer is killed at every file operation it performs, then its documented command is
run again; nothing may be lost, duplicated or left behind.

The operations are found by tracing one clean run (``fault_child.py``); each kill point then runs in a fresh
process that dies just before that operation, as SIGKILL would leave it (no cleanup code runs). CI runs a
subset of the kill points of each writer (the middle one); ``SCIREID_FAULT_SWEEP=all pytest
tests/test_fault_injection.py`` runs all of them, and ``SCIREID_FAULT_COUNTS=FILE`` appends each writer's counts
to FILE (BENCHMARKS.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHILD = Path(__file__).with_name("fault_child.py")
LEFTOVER = (".tmp", ".partial", ".done-", ".parts", ".old")
FULL = os.environ.get("SCIREID_FAULT_SWEEP") == "all"
# the system calls that change files, for the strace sweep: what Python's own hooks cannot see (safetensors,
# torch.save, faiss, sqlite and PIL write from C or Rust) is killed here too
STRACE_CALLS = ("openat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir", "mkdir", "mkdirat",
                "ftruncate")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")
STRACE = shutil.which("strace")


def _env() -> dict[str, str]:
    # no .pyc writes (they would shift the system-call counts between runs); one thread, as in the child
    return dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))


class PythonKills:
    """Kill just before the Nth file operation of the Python process (``fault_child.py``'s hooks)."""
    name = "python"
    ci_points = 1  # CI's 10-minute budget: the middle kill point (the full sweep, fault_sweep.py: all of them)

    def trace(self, argv: list[str], work: Path) -> list[str]:
        trace = work / "trace.txt"
        trace.unlink(missing_ok=True)
        assert self._run(argv, trace, 0, work) == 0
        ops = trace.read_text().splitlines()
        trace.unlink()
        return ops

    def kill(self, argv: list[str], work: Path, k: int) -> bool:
        trace = work / "trace.txt"
        rc = self._run(argv, trace, k, work)
        trace.unlink(missing_ok=True)
        return rc == 137

    @staticmethod
    def _run(argv, trace: Path, kill_at: int, cwd: Path) -> int:
        p = subprocess.run([sys.executable, str(CHILD), str(trace), str(kill_at), "--", *argv], cwd=cwd, env=_env(),
                           capture_output=True, text=True, timeout=600)
        return p.returncode


class StraceKills:
    """Kill with SIGKILL at the Nth file-changing system call of the command (``strace -e inject``): every write
    path, whichever language the library that writes is in. The main thread's calls are counted and injected
    (no ``-f``): scireid writes from it; loader workers only read."""
    name = "strace"
    ci_points = 1  # CI's time budget: the middle call of each writer; the full sweep kills at every one

    def __init__(self):
        self.points: list[tuple[str, int, str]] = []

    def trace(self, argv: list[str], work: Path) -> list[str]:
        out = work / "strace.txt"
        p = self._run(argv, work, ["-e", "trace=" + ",".join(STRACE_CALLS)], out)
        assert p.returncode == 0, p.stderr[-400:]
        self.points = [(c, n, _norm(path, work)) for c, n, path in file_changes(out.read_text(), work)]
        out.unlink()
        return [f"{c} #{n} {path}" for c, n, path in self.points]

    def kill(self, argv: list[str], work: Path, k: int) -> bool:
        """True when the command died at the traced call: the same call, number and (normalised) path."""
        call, n, path = self.points[k - 1]
        out = work.parent / f".{work.name}.strace.txt"  # outside the work dir: not a leftover of the command
        p = self._run(argv, work, ["-e", f"trace={call}", "-e", f"inject={call}:signal=KILL:when={n}"], out)
        hit = file_changes(out.read_text(), work, keep_all=True)
        out.unlink()
        return p.returncode in (-9, 137) and bool(hit) and hit[-1][:2] == (call, n) and _norm(hit[-1][2], work) == path

    @staticmethod
    def _run(argv, work: Path, opts: list[str], out: Path | None):
        cmd = [STRACE, "-qq", "-o", str(out) if out else os.devnull, *opts, sys.executable, "-m", "scireid.cli", *argv]
        return subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=600)


def _norm(path: str, work: Path) -> str:
    """A path with the work folder and the random parts of temporary names taken out, to compare two runs."""
    import re
    path = path.replace(str(work), "W")
    return re.sub(r"tmp[A-Za-z0-9_]{6,}", "tmpX", re.sub(r"\.\d+-[A-Za-z0-9_]+\.tmp", ".P.tmp", path))


def file_changes(trace: str, work: Path, keep_all: bool = False) -> list[tuple[str, int, str]]:
    """(system call, its invocation number, path) of every call in an strace log that changes a file in
    ``work``: opens for writing, renames, unlinks, mkdirs, truncations. Relative names (``unlinkat(fd, "x")``
    inside ``shutil.rmtree``) count: the command only removes its own files. Invocation numbers count every
    call of that name, as ``inject=...:when=N`` does."""
    import re
    seen: dict[str, int] = {}
    points = []
    for line in trace.splitlines():
        m = re.match(r"(\w+)\((.*)\)\s+=", line)
        if not m or m.group(1) not in STRACE_CALLS:
            continue
        call, args = m.groups()
        seen[call] = seen.get(call, 0) + 1
        paths = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
        if not paths:
            continue
        ours = any(p.startswith(str(work)) or not p.startswith("/") for p in paths)
        if call == "openat" and not any(f in args for f in WRITE_FLAGS):
            continue
        if ours:
            points.append((call, seen[call], paths[-1]))
    return points


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if any(s in p.name for s in LEFTOVER) or p.name.endswith(".lock") and
            [q.name for q in p.parent.iterdir()] == [p.name]]


def rerun(argv: list[str]) -> tuple[int, str]:
    """The documented recovery: run the same command again (in a fresh process, like a user would)."""
    p = subprocess.run([sys.executable, "-m", "scireid.cli", *argv], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stderr.strip()


def points(n: int, full: bool, ci: int = 3) -> list[int]:
    """Every kill point, or in CI ``ci`` of them: the middle operation (1), then the last (2), then the first (3)."""
    if full or n <= ci:
        return list(range(1, n + 1))
    return sorted({(n + 1) // 2, n, 1}) if ci >= 3 else sorted({(n + 1) // 2, n}) if ci == 2 else [(n + 1) // 2]


CAN_TRACE = bool(STRACE) and subprocess.run([STRACE, "-qq", "-o", os.devnull, "true"]).returncode == 0
NO_TRACE = "strace is not installed or may not trace here"


def killers():
    """Both ways to kill: Python's hooks, and strace where it is installed and may trace (CI containers may
    forbid ptrace). The strace kills are in the slow set (CI's time budget), which ``benchmarks/fault_sweep.py``
    runs."""
    return [pytest.param(PythonKills, id="python"),
            pytest.param(StraceKills, id="strace", marks=[pytest.mark.skipif(not CAN_TRACE, reason=NO_TRACE),
                                                         pytest.mark.slow])]


def sweep(name: str, make_argv, check, tmp_path: Path, prepare=None, killer=PythonKills) -> dict[str, int]:
    """Kill ``name``'s command at each traced operation, re-run it, ``check`` the result; returns the counts."""
    killer = killer()
    clean = tmp_path / "clean"
    clean.mkdir()
    if prepare:
        prepare(clean)
    ops = killer.trace(make_argv(clean), clean)
    assert ops, f"{name}: no file operation traced"
    expected = check(clean, None)
    counts = {"operations": len(ops), "killed": 0, "completed": 0, "refused": 0}
    for k in points(len(ops), FULL, killer.ci_points):
        w = tmp_path / f"k{k}"
        w.mkdir()
        if prepare:
            prepare(w)
        argv = make_argv(w)
        assert killer.kill(argv, w, k), f"{name}: kill point {k} ({ops[k - 1]}) was not reached"
        counts["killed"] += 1
        rc, err = rerun(argv)
        assert rc in (0, 2), f"{name} after a kill at {ops[k - 1]}: exit {rc}: {err[-400:]}"
        assert "Traceback" not in err, err
        if rc == 2:  # refused: one error line (after any progress lines) that says what to do
            assert sum("error:" in line for line in err.splitlines()) == 1 and "error:" in err.splitlines()[-1], err
            counts["refused"] += 1
            continue
        counts["completed"] += 1
        assert check(w, expected) == expected, f"{name}: after a kill at {ops[k - 1]} the result differs"
        left = leftovers(w)
        assert not left, f"{name}: after a kill at {ops[k - 1]} and a re-run, left behind: {left}"
    return counts


def sweep_resumable(name: str, make_argv, check, tmp_path: Path, out: str, killer=PythonKills) -> dict[str, int]:
    """``sweep`` for a run that resumes: the documented recovery is the same command with --resume, refused in one
    line when nothing had started (then the plain command starts it afresh). ``out``: the run folder in a work dir."""
    killer = killer()
    clean = tmp_path / "clean"
    clean.mkdir()
    ops = killer.trace(make_argv(clean), clean)
    expected = check(clean, None)
    counts = {"operations": len(ops), "killed": 0, "completed": 0, "refused": 0}
    for k in points(len(ops), FULL, killer.ci_points):
        w = tmp_path / f"k{k}"
        w.mkdir()
        assert killer.kill(make_argv(w), w, k), f"{name}: kill point {k} ({ops[k - 1]}) not reached"
        counts["killed"] += 1
        rc, err = rerun(make_argv(w) + ["--resume"])
        if rc == 2 and "holds no run to resume" in err:  # killed before the run existed: start it afresh
            assert "error:" in err.splitlines()[-1], err
            counts["refused"] += 1
            rc, err = rerun(make_argv(w))
        assert rc == 0, f"{name} after a kill at {ops[k - 1]}: exit {rc}: {err[-400:]}"
        counts["completed"] += 1
        assert check(w, expected) == expected, f"{name}: after a kill at {ops[k - 1]} the result differs"
        left = leftovers(w / out)
        assert not left, f"{name}: after a kill at {ops[k - 1]} and a resume, left behind: {left}"
    return counts


def _write_counts(name: str, counts: dict[str, int], killer=PythonKills) -> None:
    out = os.environ.get("SCIREID_FAULT_COUNTS")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"writer": name, "kills": killer.name, **counts}) + "\n")


@pytest.mark.parametrize("killer", killers())
def test_synth_survives_a_kill_at_every_operation(tmp_path, killer):
    def argv(w):
        return ["synth", str(w / "data"), "--ids", "4", "--val-ids", "2"]

    def check(w, _):
        meta = json.loads((w / "data" / "synthetic.json").read_text())
        names = sorted(p.name for p in (w / "data").rglob("*.png"))
        return meta["images"], len(names)
    counts = sweep("synth", argv, check, tmp_path, killer=killer)
    _write_counts("synth", counts, killer)


@pytest.mark.parametrize("killer", killers())
def test_embed_survives_a_kill_at_every_operation(full_run, data_root, tmp_path, killer):
    def argv(w):
        return ["embed", str(full_run[0]), str(data_root / "query"), "--out", str(w / "feats.npy"), "--chunk", "8"]

    def check(w, _):
        from scireid.deploy.embed import load_features
        feats, side = load_features(w / "feats.npy")
        paths = [r["path"] for r in side["rows"]]
        assert len(paths) == len(set(paths))  # no row twice
        return len(paths), round(float(np.asarray(feats).sum()), 4)
    counts = sweep("embed", argv, check, tmp_path, killer=killer)
    _write_counts("embed", counts, killer)


@pytest.mark.parametrize("killer", killers())
def test_index_build_and_add_survive_a_kill_at_every_operation(full_run, data_root, tmp_path, killer):
    import shutil

    base = tmp_path / "base"
    from scireid.cli import main
    assert main(["index", "build", str(full_run[0]), str(data_root / "query"), "--out", str(base / "idx")]) == 0

    def prepare(w):
        shutil.copytree(base / "idx", w / "idx")

    def argv(w):
        return ["index", "add", str(w / "idx"), str(data_root / "test")]

    def check(w, _):
        from scireid.deploy.index import Index
        idx = Index.load(w / "idx")
        paths = [r["path"] for r in idx.rows]
        assert len(paths) == len(set(paths))  # never a duplicated row
        return len(idx)
    counts = sweep("index add", argv, check, tmp_path, prepare, killer=killer)
    _write_counts("index add", counts, killer)
    if killer is StraceKills and not FULL:  # CI's time budget: strace's point of `add` covers faiss and sqlite's writes
        return

    def argv_build(w):
        return ["index", "build", str(full_run[0]), str(data_root / "query"), "--out", str(w / "idx2")]

    def check_build(w, _):
        from scireid.deploy.index import Index
        return len(Index.load(w / "idx2"))
    (tmp_path / "b").mkdir()
    _write_counts("index build", sweep("index build", argv_build, check_build, tmp_path / "b", killer=killer), killer)

    from scireid.deploy.index import Index
    pid = next(r["pid"] for r in Index.load(base / "idx").rows if r["pid"] >= 0)

    def argv_remove(w):
        return ["index", "remove", str(w / "idx"), "--pid", str(pid)]

    def check_remove(w, _):  # a re-run after the switch is refused ("nothing removed"): the removal had landed
        idx = Index.load(w / "idx")
        live = [r for r in idx.rows if r is not None]
        assert live and all(r["pid"] != pid for r in live) and len(live) == len(idx)
        return len(idx), len(idx.rows)
    (tmp_path / "r").mkdir()
    counts = sweep("index remove", argv_remove, check_remove, tmp_path / "r", prepare, killer=killer)
    _write_counts("index remove", counts, killer)


@pytest.mark.parametrize("killer", killers())
def test_train_survives_a_kill_at_every_operation(data_root, tmp_path, killer):
    """The documented recovery is the same command with --resume (refused in one line when nothing started)."""
    from test_faults import train_args

    def argv(w):
        return train_args(data_root, w / "run", "stage2.epochs=2", "stage2.eval_every=1", "stage2.milestones=[1]",
                          "stage2.warmup_epochs=1")

    def check(w, _):
        rows = [json.loads(line) for line in (w / "run" / "metrics.jsonl").read_text().splitlines()]
        keys = [(r["stage"], r["epoch"]) for r in rows]
        assert len(keys) == len(set(keys))  # one row per epoch, never two
        assert (w / "run" / "model_last.safetensors").is_file() and (w / "run" / "results.json").is_file()
        return sorted(keys)

    counts = sweep_resumable("train", argv, check, tmp_path, "run", killer=killer)
    _write_counts("train", counts, killer)


@pytest.mark.parametrize("killer", killers())
def test_pretrain_survives_a_kill_at_every_operation(tmp_path, killer):
    """The prior's pretraining: killed at each file operation, then resumed; the weights equal an unkilled run's."""
    def argv(w):
        return ["pretrain", "--out", str(w / "p"), "--images", "64", "--epochs", "2", "arch=tiny-prior",
                "batch_size=32", "warmup_steps=2", "eval_images=16", "height=32", "width=16", "threads=1"]

    def check(w, _):  # one thread in the traced child and in the re-run: the same float sums, bit-equal weights
        import hashlib

        from safetensors.torch import load_file
        sd = load_file(str(w / "p" / "tiny-prior.safetensors"))
        assert json.loads((w / "p" / "provenance.json").read_text())["zero_shot"]
        return hashlib.sha256(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()
    _write_counts("pretrain", sweep_resumable("pretrain", argv, check, tmp_path, "p", killer=killer), killer)


@pytest.mark.parametrize("killer", killers())
def test_report_survives_a_kill_at_every_operation(full_run, tmp_path, killer):
    """The HTML report (and its analysis cache) written into a copy of a finished run, killed at each operation."""
    import shutil

    def prepare(w):
        shutil.copytree(full_run[0], w / "run", ignore=shutil.ignore_patterns("analysis", "report*"))

    def argv(w):
        return ["report", str(w / "run")]

    def check(w, _):
        (page,) = (w / "run").rglob("report.html")
        text = page.read_text()
        assert text.rstrip().endswith("</html>")
        return page.relative_to(w).as_posix(), text.count("<img")
    _write_counts("report", sweep("report", argv, check, tmp_path, prepare, killer=killer), killer)


@pytest.mark.parametrize("killer", killers())
def test_export_survives_a_kill_at_every_operation(full_run, tmp_path, killer):
    def argv(w):
        return ["export", str(full_run[0]), "--out", str(w / "m.onnx")]

    def check(w, _):
        import onnx
        m = onnx.load(str(w / "m.onnx"))
        return sorted(p.key for p in m.metadata_props)
    _write_counts("export", sweep("export", argv, check, tmp_path, killer=killer), killer)


def test_kill_after_the_evaluated_checkpoint_never_loses_the_metrics_row(data_root, tmp_path, monkeypatch):
    """The reported case: killed right after the second (evaluated) checkpoint of an epoch. The row is written
    before that checkpoint clears the pending mark, so it is there, or the resume rewrites it."""
    from conftest import tiny_cfg
    from scireid.engine.engine import Engine, read_metrics
    from scireid.engine.trainer import train

    cfg = tiny_cfg(data_root, tmp_path / "run")
    real = Engine._save
    seen = {"n": 0}

    def save(self, task, epoch, batch, scaler, pending=None):
        real(self, task, epoch, batch, scaler, pending)
        if task.name == "stage2" and pending is None:
            seen["n"] += 1
            if seen["n"] == 1:
                raise KeyboardInterrupt("killed after the evaluated checkpoint")
    monkeypatch.setattr(Engine, "_save", save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(Engine, "_save", real)
    train(cfg, resume=True)
    rows = [(r["stage"], r["epoch"]) for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    want = [("stage1", e) for e in range(1, cfg.stage1.epochs + 1)] + [("stage2", e) for e in
                                                                       range(1, cfg.stage2.epochs + 1)]
    assert sorted(rows) == sorted(want) and len(rows) == len(set(rows))
