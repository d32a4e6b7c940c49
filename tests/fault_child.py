"""Run one scireid command in this process with its file operations traced, and killed at the Nth one.

    python tests/fault_child.py TRACE_FILE KILL_AT -- scireid-argv...

Every call of the operations below is appended to TRACE_FILE (one line: the operation and its path). With
KILL_AT = N > 0 the process dies (os._exit(137), as SIGKILL would leave it: no finally blocks, no cleanup)
just before the Nth operation. KILL_AT = 0 only traces. Used by tests/test_fault_injection.py.
"""
from __future__ import annotations

import builtins
import io
import os
import shutil
import sys

TRACED = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"), (os, "rmdir"), (os, "mkdir"),
          (os, "truncate"), (os, "ftruncate"), (shutil, "rmtree"), (shutil, "copyfile"), (shutil, "move")]


def install(trace_path: str, kill_at: int) -> None:
    count = [0]
    log = open(trace_path, "a", buffering=1)  # noqa: SIM115 - the trace outlives every traced call
    real_open = builtins.open

    def hit(name: str, target) -> None:
        count[0] += 1
        log.write(f"{count[0]}\t{name}\t{target}\n")
        if count[0] == kill_at:
            log.flush()
            os._exit(137)

    def wrap(mod, name):
        fn = getattr(mod, name)

        def traced(*a, **k):
            hit(name, a[0] if a else "")
            return fn(*a, **k)
        setattr(mod, name, traced)

    for mod, name in TRACED:
        wrap(mod, name)

    def traced_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and not (isinstance(file, int)):
            hit(f"open({mode})", file)
        return real_open(file, mode, *a, **k)
    builtins.open = traced_open
    io.open = traced_open


def main() -> int:
    trace, kill_at = sys.argv[1], int(sys.argv[2])
    argv = sys.argv[sys.argv.index("--") + 1:]
    import scireid.cli  # imported before tracing: only the command's own file operations count
    import torch
    torch.set_num_threads(1)
    install(trace, kill_at)
    rc = scireid.cli.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
