"""Small file helpers: output paths checked before any work, strict JSON, one-line errors for our own JSON files.
Writing is ``durable``'s job."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError


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
