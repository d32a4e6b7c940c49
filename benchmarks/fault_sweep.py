"""The whole fault-injection sweep: every writer killed at every traced file operation, both ways (Python's hooks
and strace's SIGKILL at each file-changing system call), then its counts as a BENCHMARKS.md section.

    python benchmarks/fault_sweep.py [--kills python strace] [-k "synth or embed"] [--write]

It runs ``SCIREID_FAULT_SWEEP=all pytest tests/test_fault_injection.py`` and collects the counts each writer's
test appends to ``SCIREID_FAULT_COUNTS``. A failing kill point fails the sweep (pytest's output says which).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_speed import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TITLE = "## Fault injection: every writer killed at every file operation, two ways"
COMMANDS = {
    "synth": "`synth OUT --ids 4 --val-ids 2`",
    "embed": "`embed RUN query/ --out feats.npy --chunk 8`",
    "index add": "`index add IDX test/` (on a built index)",
    "index build": "`index build RUN query/ --out IDX`",
    "index remove": "`index remove IDX --pid P` (on a built index)",
    "train": "`train synthetic ... stage2.epochs=2` (tiny-rn), re-run with `--resume`",
    "pretrain": "`pretrain --images 64 --epochs 2 arch=tiny-prior ... threads=1`, re-run with `--resume`",
    "report": "`report RUN` (into a copy of a finished run)",
    "export": "`export RUN --out m.onnx`",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", nargs="+", default=["python", "strace"], choices=["python", "strace"])
    ap.add_argument("-k", default="", help="pytest -k filter on the writers' tests")
    ap.add_argument("--write", action="store_true", help="put the table into BENCHMARKS.md")
    ap.add_argument("--counts", help="keep the per-writer counts in this JSON-lines file (appended to)")
    ap.add_argument("--table-only", action="store_true", help="only build the table from --counts (an earlier sweep)")
    a = ap.parse_args()
    counts_file = Path(a.counts) if a.counts else Path(tempfile.mkstemp(suffix=".jsonl")[1])
    expr = " or ".join(a.kills)
    expr = f"({expr}) and ({a.k})" if a.k else f"({expr}) and survive"  # survives and survive
    env = dict(os.environ, SCIREID_FAULT_SWEEP="all", SCIREID_FAULT_COUNTS=str(counts_file))
    t0 = time.time()
    rc = 0
    if not a.table_only:
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                             str(ROOT / "tests" / "test_fault_injection.py"), "-k", expr], cwd=ROOT, env=env).returncode
    minutes = (time.time() - t0) / 60
    rows = [json.loads(line) for line in counts_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kills") in a.kills]
    if not a.counts:
        counts_file.unlink()
    lines = [TITLE + f" ({datetime.date.today()})", "",
             f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}. Command: "
             f"`python benchmarks/fault_sweep.py --kills {' '.join(a.kills)}{' -k ' + repr(a.k) if a.k else ''} --write` "
             f"({'' if a.table_only else f'{minutes:.0f} min; '}pytest exit {rc}). Each writer's command is traced once, then run once per traced "
             "operation in a fresh process that dies just before it: `python` kills at every open-for-write, "
             "replace, rename, unlink, remove, rmdir, mkdir, truncate, rmtree, copyfile and move of the Python "
             "process (`tests/fault_child.py`, `os._exit(137)`); `strace` sends a real SIGKILL at every "
             "file-changing system call of the command's main thread (openat for writing, rename(at/at2), "
             "unlink(at), rmdir, mkdir(at), ftruncate: `strace -e inject=CALL:signal=KILL:when=N`), which also "
             "reaches what safetensors, torch, faiss, sqlite and PIL write from C or Rust. A kill point counts "
             "only if the process died at that very call. After each kill the documented command runs again "
             "(`train`, `pretrain`: with `--resume`); its result must equal a clean run's (no row lost or "
             "duplicated; `pretrain`: bit-equal weights), nothing temporary may remain, and a refusal must be "
             "exit 2 with one line.", "",
             "| writer (command) | kills | traced operations = kill points | re-run completed | re-run refused in one line | lost / duplicated rows | leftovers |",
             "|---|---|---|---|---|---|---|"]
    order = list(COMMANDS)
    rows.sort(key=lambda r: (order.index(r["writer"]) if r["writer"] in order else len(order), r["kills"]))
    for r in rows:
        lines.append(f"| {COMMANDS.get(r['writer'], r['writer'])} | {r['kills']} | {r['operations']} | {r['completed']} "
                     f"| {r['refused']} | 0 / 0 | 0 |")
    lines += ["", "Reading: a refusal is the documented answer when the kill came after the job had landed ('already "
              "added', 'nothing removed', 'already holds an index'). For `train` and `pretrain` every kill point "
              "completed; the refused ones were killed before the run existed, so `--resume` said 'holds no run to "
              "resume' in one line and the same command without it then completed."]
    if rc != 0:
        lines += ["", f"**The sweep failed** (pytest exit {rc}): the rows above are the writers that passed."]
    publish(lines, a.write)
    return rc


if __name__ == "__main__":
    sys.exit(main())
