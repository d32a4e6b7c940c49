"""A run directory: refuse a folder that holds someone else's files, and allow one writer at a time."""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from ..errors import ConfigError

LOCK_NAME = ".scireid.lock"

log = logging.getLogger("scireid")


def check_out_dir(out: str | Path, marker: str | tuple[str, ...] = ("config.yaml", "stage1.safetensors"),
                  resume: bool = False) -> Path:
    """``out`` must be a folder we may write a run into: absent, empty, or a scireid run (holds a ``marker``)."""
    markers = (marker,) if isinstance(marker, str) else marker
    out = Path(out)
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    if out.is_dir():
        # our own lock and the temporary entries a killed writer of ours leaves (cleaned at its next start)
        entries = [p.name for p in out.iterdir() if p.name != LOCK_NAME and not (p.name.startswith(".") and
                                                                                 p.name.endswith(".tmp"))]
        if entries and not any((out / m).exists() for m in markers):
            raise ConfigError(f"--out {out}: the folder holds files that are not a scireid run ({', '.join(sorted(entries)[:3])}"
                              f"{', ...' if len(entries) > 3 else ''}); choose an empty or new folder")
    if resume and not any((out / m).exists() for m in markers):
        raise ConfigError(f"--resume: {out} holds no run to resume ({markers[0]} missing)")
    return out


class RunLock:
    """An exclusive ``flock`` on ``OUT/.scireid.lock`` for the life of a run; released by the OS if killed."""

    def __init__(self, out: str | Path):
        self.path = Path(out) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{self.path.parent} is in use by pid {holder}; wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.fd is not None:
            folder = self.path.parent
            # a command refused or failed before writing anything leaves no folder behind that holds only our lock
            if exc_type is not None and self.created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                self.path.unlink(missing_ok=True)
                try:
                    folder.rmdir()
                except OSError:
                    pass
            os.close(self.fd)
            self.fd = None


def clean_leftovers(run: str | Path) -> list[Path]:
    """Temp files a SIGKILL left in a run folder (ours ``.NAME.XXXX.tmp``, safetensors' ``.tmpXXXX``) and the
    spare copies of an interrupted checkpoint swap, removed at the next start of the same run, under its lock.
    A swap's spare copy is removed only after ``recover`` has put a complete checkpoint in place."""
    from ..durable import clean_spares
    from .checkpoint import recover
    run = Path(run)
    removed: list[Path] = []
    if not run.is_dir():
        return removed
    for last in [p / "last" for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")]:
        if recover(last):
            removed += clean_spares(last)
    for p in run.rglob(".*"):
        if p.is_file() and (p.name.startswith(".tmp") or (p.name.endswith(".tmp") and p.name.count(".") >= 3)):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("%s: removed %d leftover file(s) of an interrupted earlier start", run, len(removed))
    return removed
