"""Checkpoints: weights as safetensors (with the model spec in metadata), trainer state loadable
with ``torch.load(weights_only=True)``, both swapped in as one directory.

The swap is ``durable.publish_dir``: two renames (``last`` -> ``.last.old``, staging -> ``last``). A kill
between them leaves no ``last``; ``recover`` then takes the newest *complete* copy (the staged one once its
``COMPLETE`` marker is written, else ``.old``), and every save recovers before it cleans up, so a
complete copy is never deleted while it is the only one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..durable import DiskFull, atomic_write, clean_spares, discard, publish_dir, recover_dir, stage_dir


def tensors_sha256(sd: dict[str, torch.Tensor]) -> str:
    """A hash of every tensor's name, dtype, shape and bytes: what ``load_weights`` checks a file against."""
    import hashlib
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    md = {k: json.dumps(v) for k, v in meta.items()}
    md["tensor_sha256"] = json.dumps(tensors_sha256(sd))
    md["meta_sha256"] = json.dumps(_meta_sha256(md))
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=md))


def _meta_sha256(md: dict[str, str]) -> str:
    """A hash of the header's metadata (config, preprocessing, tensor checksum): an edited header is refused."""
    import hashlib
    body = json.dumps({k: v for k, v in md.items() if k != "meta_sha256"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), "pt") as f:
            md = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from None
    if "meta_sha256" in md and json.loads(md["meta_sha256"]) != _meta_sha256(md):
        raise CheckpointError(f"{path}: its header metadata does not match the checksum recorded when the file was "
                              f"written (edited or corrupted); use another checkpoint of the run")
    try:
        return {k: json.loads(v) for k, v in md.items()}
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its header metadata is not scireid's (not JSON values)") from None


def load_weights(path: str | Path, model: torch.nn.Module, strict: bool = True) -> dict[str, Any]:
    meta = read_meta(path)
    try:
        sd = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: truncated or corrupt weights ({str(e).splitlines()[0]})") from None
    want = meta.get("tensor_sha256")
    if want is not None and tensors_sha256(sd) != want:
        raise CheckpointError(f"{path}: the weights do not match the checksum recorded when the file was written "
                              f"(corrupted on disk or edited); use another checkpoint of the run")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path}: does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=False)
    return meta


COMPLETE = "COMPLETE"


def _complete(d: Path) -> bool:
    return (d / COMPLETE).is_file() and (d / "model.safetensors").is_file() and (d / "state.pt").is_file()


def recover(dirpath: str | Path) -> bool:
    """If a save was killed mid-swap, put the newest complete copy back at ``dirpath``; True if one is there."""
    return recover_dir(dirpath, _complete)


def save_state(dirpath: str | Path, model: torch.nn.Module, meta: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` + ``state.pt`` into a staging folder, then swap it in for ``dirpath``."""
    dirpath = Path(dirpath)
    recover(dirpath)
    clean_spares(dirpath)
    tmp = stage_dir(dirpath)
    try:
        save_weights(tmp / "model.safetensors", model, meta)
        atomic_write(tmp / "state.pt", lambda t: torch.save(state, t))
        atomic_write(tmp / COMPLETE, lambda t: None)
    except DiskFull:
        discard(tmp)
        where = f"the previous checkpoint in {dirpath} is intact" if dirpath.exists() else "no checkpoint was written yet"
        raise DiskFull(f"no space left on the device saving a checkpoint to {dirpath}; {where}; free space and "
                       f"continue with --resume") from None
    return publish_dir(tmp, dirpath)


def load_state(dirpath: str | Path) -> dict[str, Any]:
    p = Path(dirpath) / "state.pt"
    if not p.is_file():
        raise CheckpointError(f"{dirpath}: no trainer state (state.pt) to resume from")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{p}: truncated or corrupt trainer state ({type(e).__name__}); it cannot be resumed — "
                              f"start a new run with another --out") from None
