"""``scireid embed``: stream images through a model into a feature file, in resumable chunks.

Memory stays bounded: images are decoded and embedded one chunk at a time, each chunk is written
to ``FEATS.parts/`` as it finishes, and the final ``FEATS.npy`` is filled through a memory map.
Re-running the same command after an interruption skips the chunks already written. A bad image
is reported with its path and skipped, never ends the job.

Output: ``FEATS.npy`` (N x D float32, L2-normalised rows) and ``FEATS.json`` beside it: the model
fingerprint and preprocessing, the row -> path / box / metadata table, and the skipped files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..durable import atomic_write, atomic_write_json, clean_dead_temps, discard
from .backend import embed_arrays, file_hash, open_backend
from .inputs import Item

log = logging.getLogger("scireid")


def feats_paths(out: str | Path) -> tuple[Path, Path, Path]:
    out = Path(out)
    npy = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    return npy, npy.with_suffix(".json"), npy.with_name(npy.name + ".parts")


def load_image(item: Item):
    """PIL image of the item (cropped to its box), or raises with a reason."""
    from PIL import Image
    with Image.open(item.path) as im:
        im.load()
        img = im.convert("RGB")
    if item.box:
        x, y, w, h = item.box
        if w <= 0 or h <= 0:
            raise ValueError(f"box {item.box} has width or height <= 0")
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(img.width, x + w), min(img.height, y + h)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {item.box} lies outside the {img.width}x{img.height} frame")
        img = img.crop((x0, y0, x1, y1))
    return img


class _Decode:
    """Map-style dataset for a DataLoader: (index, array or None, error)."""

    def __init__(self, items: list[Item], pre):
        self.items, self.pre = items, pre

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, self.pre(load_image(self.items[i])), ""
        except Exception as e:  # a bad file is reported and skipped
            return i, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def _batches(items: list[Item], pre, batch: int, workers: int):
    ds = _Decode(items, pre)
    if workers <= 0:
        for s in range(0, len(ds), batch):
            yield [ds[i] for i in range(s, min(s + batch, len(ds)))]
        return
    from torch.utils.data import DataLoader
    yield from DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=lambda b: b)


def job_key(items: list[Item], fingerprint: str, flip: bool, chunk: int) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it.row(), sort_keys=True).encode())
    h.update(f"{fingerprint}|{flip}|{chunk}".encode())
    return h.hexdigest()[:16]


def embed(model: str | Path, items: list[Item], out: str | Path, batch: int = 32, workers: int = 0, flip: bool = False,
          device: str | None = None, chunk: int = 2048, backend=None, progress: bool = True,
          dtype: str = "float32") -> dict[str, Any]:
    """Embed ``items`` with ``model`` (run, checkpoint or .onnx) into ``out``; returns the summary.
    ``dtype="float16"`` halves the file (a gallery of 10^7 rows: 23 GB instead of 46)."""
    if dtype not in ("float32", "float16"):
        raise UserError(f"dtype {dtype!r}: expected float32 or float16")
    if batch <= 0 or chunk <= 0:
        raise UserError(f"--batch {batch} / chunk {chunk}: expected positive numbers")
    npy, side, parts = feats_paths(out)
    if npy.is_dir() or side.is_dir():
        raise UserError(f"--out {out}: {npy} is a folder; give a file name such as feats.npy")
    be = backend or open_backend(model, device)
    key = job_key(items, be.fingerprint, flip, chunk)
    for target in (npy, side):  # writes a kill interrupted; the files they would have replaced are intact
        clean_dead_temps(target)
    clean_dead_temps(parts)  # a finished job's cleanup that was killed
    parts.mkdir(parents=True, exist_ok=True)
    job = parts / "job.json"
    if job.exists():
        try:
            old = json.loads(job.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("key") != key:
            raise UserError(f"{parts} holds an unfinished job with other inputs, model or options; delete that folder "
                            f"or choose another --out")
    else:
        stray = [p for p in parts.iterdir() if _chunk_key(p) != key]
        if stray:  # chunks without their job record: leftovers, never mixed into this job's output
            log.warning("%s: removing %d chunk file(s) of an earlier job whose record is gone", parts, len(stray))
            for p in stray:
                p.unlink()
        atomic_write_json(job, {"key": key, "model": str(model), "n_items": len(items)})
    n_chunks = -(-len(items) // chunk)
    done = sum(1 for c in range(n_chunks) if _chunk_key(parts / f"part_{c:06d}.json") == key)
    if done:
        log.info("resuming: %d of %d chunks already embedded in %s", done, n_chunks, parts)
    bar = tqdm(total=len(items), initial=min(done * chunk, len(items)), unit="img", desc="embed",
               disable=not (progress and sys.stderr.isatty()))
    t0, n_new = time.time(), 0
    for c in range(n_chunks):
        pj = parts / f"part_{c:06d}.json"
        if _chunk_key(pj) == key:
            continue
        chunk_items = items[c * chunk:(c + 1) * chunk]
        feats, rows, skipped = [], [], []
        for b in _batches(chunk_items, be.pre, batch, workers):
            ok = [(i, a) for i, a, err in b if a is not None]
            for i, a, err in b:
                if a is None:
                    skipped.append({"path": chunk_items[i].path, "box": chunk_items[i].row()["box"], "error": err})
                    log.warning("skipped %s: %s", chunk_items[i].path, err)
            if ok:
                feats.append(embed_arrays(be, [a for _, a in ok], flip))
                rows.extend(chunk_items[i].row() for i, _ in ok)
            bar.update(len(b))
            n_new += len(b)
            bar.set_postfix({"img/s": f"{n_new / max(time.time() - t0, 1e-9):.0f}"})
        f = np.concatenate(feats) if feats else np.zeros((0, be.dim), np.float32)
        atomic_write(parts / f"part_{c:06d}.npy", lambda tmp: np.save(open(tmp, "wb"), f))
        # written last: marks the chunk complete, and names the job it belongs to
        atomic_write_json(pj, {"key": key, "rows": rows, "skipped": skipped})
    bar.close()
    return _assemble(npy, side, parts, n_chunks, be, str(model), flip, np.dtype(dtype))


def _chunk_key(path: Path) -> str | None:
    """The job a chunk file belongs to (from its .json record), or None for anything else."""
    pj = path.with_suffix(".json")
    if not (pj.name.startswith("part_") and pj.is_file()):
        return None
    try:
        return json.loads(pj.read_text()).get("key")
    except (json.JSONDecodeError, OSError):
        return None


def _assemble(npy: Path, side: Path, parts: Path, n_chunks: int, be, model: str, flip: bool,
              dtype: np.dtype = np.dtype(np.float32)) -> dict[str, Any]:
    """One memory-mapped pass from the chunk files into FEATS.npy, then the sidecar, then clean up."""
    metas = [json.loads((parts / f"part_{c:06d}.json").read_text()) for c in range(n_chunks)]
    n = sum(len(m["rows"]) for m in metas)
    if n == 0:  # nothing to do is an error, and no empty feature file is left to mistake for a result
        skipped = [s for m in metas for s in m["skipped"]]
        discard(parts)
        first = f" (first: {skipped[0]['path']}: {skipped[0]['error']})" if skipped else ""
        raise UserError(f"none of the {len(skipped)} input images could be read{first}; nothing was written")

    def write(tmp: str) -> None:
        # plain writes, not a memory map: a full disk is then an ENOSPC error we report, not a SIGBUS
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_2_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (n, be.dim)})
            for c in range(n_chunks):
                f = np.load(parts / f"part_{c:06d}.npy", mmap_mode="r")
                fh.write(np.ascontiguousarray(f, dtype=dtype).tobytes())
    atomic_write(npy, write)
    skipped = [s for m in metas for s in m["skipped"]]
    # the sidecar names the feature file's checksum: a pair left by two different jobs (one stopped between its two
    # renames) is refused when read, never mixed
    summary = {"model": model, "fingerprint": be.fingerprint, "preprocess": be.pre.describe(), "dim": be.dim,
               "flip": flip, "count": n, "skipped": skipped, "rows": [r for m in metas for r in m["rows"]],
               "npy_sha256": file_hash(npy, 64)}
    atomic_write_json(side, summary)
    discard(parts)  # one rename first: a kill during the removal leaves no parts folder to mistake for a job
    log.info("embedded %d images into %s (%d skipped)", n, npy, len(skipped))
    return summary


def load_features(path: str | Path, mmap: bool = True, verify: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """FEATS.npy (memory-mapped) and its FEATS.json; with ``verify`` the pair is checked to be one job's."""
    from ..io_utils import read_json
    npy, side, _ = feats_paths(path)
    if not npy.is_file() or not side.is_file():
        raise UserError(f"{path}: expected {npy} and {side} written by scireid embed")
    meta = read_json(side, "re-run the embed command that wrote it")
    if verify and meta.get("npy_sha256") and file_hash(npy, 64) != meta["npy_sha256"]:
        raise UserError(f"{npy} does not belong to {side} (a job was stopped between writing the two, or a file was "
                        f"changed); re-run the embed command")
    try:
        feats = np.load(npy, mmap_mode="r" if mmap else None)
    except ValueError as e:
        raise UserError(f"{npy}: not a feature file ({e})") from None
    if feats.ndim != 2 or len(feats) != len(meta.get("rows", [])):
        raise UserError(f"{npy}: holds {feats.shape} but {side} lists {len(meta.get('rows', []))} rows; re-run the "
                        f"embed command")
    return feats, meta
