"""Durable writes: every output scireid writes becomes visible in one atomic step, or not at all.

One discipline for every writer (checkpoints, metrics, features, indexes, datasets, the prior, exports, reports):

- a file is written under a temporary name beside it, then renamed over it (``atomic_write``);
- files that travel together are built in a staging folder beside their target, then switched in with one
  rename (``stage_dir`` + ``publish_dir``); replacing a folder parks the old one as ``.NAME.old`` for the instant
  between two renames, and ``recover_dir`` puts the newest complete copy back after a kill there;
- a folder is removed by renaming it away first (``discard``), so a kill never leaves it half-deleted.

Every temporary name is hidden and carries its writer's pid: ``.NAME.<pid>-XXXX.tmp``. The next writer of the
same target removes those whose writer is dead (``clean_dead_temps``); a live writer's are never touched.
A full disk is reported in one line (``DiskFull``), and the previous content stays intact.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError
from .io_utils import strict_json

OLD = ".old"  # suffix of the parked copy during a folder swap


class DiskFull(UserError):
    pass


def is_disk_full(e: BaseException) -> bool:
    """A full disk, however the writing library words it: torch.save ("unexpected pos"), safetensors
    ("StorageFull"), numpy ("N requested and M written"), faiss (fwrite), sqlite ("disk is full")."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, Exception) and any(
        s in str(e) for s in ("unexpected pos", "No space left", "StorageFull", "requested and", "fwrite",
                              "disk is full", "Errno 28"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename onto ``path`` (same directory, so the rename is atomic).

    The file gets the permissions any new file would (0666 less the umask), not the temporary file's 0600,
    so teammates in the group can read a run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(e):
            raise DiskFull(f"no space left on the device writing {path}; the file as it was before is intact") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, w)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """For bytes a library serialised in memory: its own file writers may keep temporary files we cannot clean."""
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, w)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(strict_json(data), indent=indent, default=float, allow_nan=False) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_temp(p: Path, name: str) -> bool:
    pid = p.name[len(name) + 2:].split("-", 1)[0]
    return p.name.endswith(".tmp") and pid.isdigit() and not _alive(int(pid))


def clean_dead_temps(path: str | Path) -> list[Path]:
    """Temporary files and staging folders of ``path`` whose writer is gone (killed mid-write)."""
    path = Path(path)
    removed = []
    for p in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else []:
        if _dead_temp(p, path.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def stage_dir(target: str | Path) -> Path:
    """A new, empty staging folder for ``target`` beside it (dead writers' staging folders removed first)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temps(target)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))


def publish_dir(staged: str | Path, target: str | Path) -> Path:
    """Switch the complete folder ``staged`` in as ``target``: one rename, or two when ``target`` exists (it is
    parked as ``.NAME.old`` in between, and removed after; ``recover_dir`` handles a kill between the two)."""
    staged, target = Path(staged), Path(target)
    old = target.with_name(f".{target.name}{OLD}")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    if old.exists():
        shutil.rmtree(old)
    return target


def recover_dir(target: str | Path, complete: Callable[[Path], bool]) -> bool:
    """After a kill between ``publish_dir``'s two renames ``target`` is missing: put the newest complete copy
    (the staged one, else the parked one) back. True if ``target`` is there afterwards."""
    target = Path(target)
    if target.exists():
        return True
    staged = sorted((p for p in target.parent.glob(f".{target.name}.*.tmp") if p.is_dir() and complete(p)),
                    key=lambda p: p.stat().st_mtime, reverse=True) if target.parent.is_dir() else []
    parked = target.with_name(f".{target.name}{OLD}")
    candidates = staged + ([parked] if parked.is_dir() and complete(parked) else [])
    if candidates:
        os.replace(candidates[0], target)
    return bool(candidates)


def clean_spares(target: str | Path) -> list[Path]:
    """The parked copy and dead writers' staging folders of ``target``, once ``target`` itself is in place."""
    target = Path(target)
    if not target.exists():
        return []
    removed = clean_dead_temps(target)
    parked = target.with_name(f".{target.name}{OLD}")
    if parked.exists():
        shutil.rmtree(parked, ignore_errors=True)
        removed.append(parked)
    return removed


@contextlib.contextmanager
def scratch_dir(target: str | Path) -> Iterator[Path]:
    """A staging folder for intermediate files that are never published (``stage_dir``), discarded on exit;
    after a kill, the next ``stage_dir`` or ``clean_dead_temps`` of the same target removes it."""
    tmp = stage_dir(target)
    try:
        yield tmp
    finally:
        discard(tmp)


def discard(path: str | Path) -> None:
    """Remove a folder (or file) by renaming it to a dead-writer temp name first, then deleting it: a kill
    half-way leaves only a hidden temp name, which the next writer of ``path`` removes."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.name.startswith(".") and path.name.endswith(".tmp"):  # already a temp name: nobody reads it
        gone = path
    else:
        gone = Path(tempfile.mktemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        os.replace(path, gone)
    if gone.is_dir() and not gone.is_symlink():
        shutil.rmtree(gone, ignore_errors=True)
    else:
        gone.unlink(missing_ok=True)
