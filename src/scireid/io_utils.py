"""Atomic file writes: a crash mid-write never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import UserError


class DiskFull(UserError):
    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename onto ``path`` (same directory, so rename is atomic).

    The file gets the permissions any new file would (0666 less the umask), not the temporary
    file's 0600, so teammates in the group can read a run. A full disk is reported as such.
    """
    import errno

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temps(path)
    # the writer's pid in the name: a later write of the same file removes what a killed writer left
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # torch.save reports a full disk as RuntimeError("... unexpected pos ..."), safetensors as StorageFull
        # numpy reports a short write as "N requested and M written", faiss as an fwrite error, sqlite as "disk is full"
        full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
            s in str(e) for s in ("unexpected pos", "No space left", "StorageFull", "requested and", "fwrite",
                                  "disk is full", "Errno 28"))
        if full:
            raise DiskFull(f"no space left on the device writing {path}; the file as it was before is intact") from None
        raise
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_dead_temps(path: str | Path) -> list[Path]:
    """Temporary files of ``path`` whose writer is gone (killed mid-write): ``.NAME.<pid>-XXXX.tmp``."""
    path = Path(path)
    removed = []
    for p in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else []:
        pid = p.name[len(path.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_output_file(path: str | Path, option: str) -> Path:
    """A path a command may write a file to: not a folder, and no ancestor is a file. Checked before any work."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name inside it")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{option} {path}: {parent} is a file, not a folder")
        if parent.exists():
            break
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, w)


def strict_json(data: Any) -> Any:
    """NaN and infinities become null: browsers and jq reject them."""
    import math
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    if hasattr(data, "item") and callable(data.item) and getattr(data, "ndim", 1) == 0:  # numpy / torch scalars
        return strict_json(data.item())
    return data


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(strict_json(data), indent=2, default=float, allow_nan=False) + "\n")


def read_json(path: str | Path, fix: str = "") -> Any:
    """A JSON file we wrote, or one line naming the file when it is empty or cut short."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing{'; ' + fix if fix else ''}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        what = "empty" if path.stat().st_size == 0 else f"not valid JSON ({getattr(e, 'msg', e)})"
        raise UserError(f"{path}: {what}{'; ' + fix if fix else ''}") from None
