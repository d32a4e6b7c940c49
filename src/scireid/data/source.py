"""The dataset a config names, and a fingerprint that proves later that it is still the same data.

Loading never generates data (that is ``scireid synth`` / ``scireid demo``), and a run that is
evaluated or analysed again must see the images it was trained and evaluated on: a moved or
regenerated folder is refused instead of being scored.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .datasets import build_dataset
from .records import DatasetError, ReIDDataset


def load_dataset(cfg: Any, expect_fingerprint: str | None = None) -> ReIDDataset:
    """``cfg.data``'s dataset; with ``expect_fingerprint``, refuse data other than the run's."""
    d = cfg.data
    root = Path(d.root).expanduser()
    if not root.exists():
        hint = (f"; generate it with: scireid synth {root}" if d.name == "synthetic" and expect_fingerprint is None
                else "")
        if expect_fingerprint is not None:
            raise DatasetError(f"data moved or changed: {root} does not exist; pass data.root=<where the data is now>")
        raise DatasetError(f"data.root={root}: no such folder{hint}")
    kw: dict[str, Any] = {}
    if d.name == "prcc":
        kw = {"single_shot": d.prcc_single_shot, "trials": d.prcc_trials, "seed": cfg.run.seed}
    ds = build_dataset(d.name, root, **kw)
    if expect_fingerprint is not None:
        if not same_data(ds, expect_fingerprint):
            raise DatasetError(f"data moved or changed: {root} holds other images than the run was trained and evaluated "
                               f"on ({len(ds.train)} train / {len(ds.test)} test now); pass data.root=<the original data>")
    return ds


def expected_fingerprint(meta: dict[str, Any], cfg: Any) -> str | None:
    """The fingerprint a checkpoint's data must match; None for a deliberate cross-dataset evaluation."""
    trained_on = meta.get("config", {}).get("data", {}).get("name")
    return meta.get("data_fingerprint") if trained_on == cfg.data.name else None


def same_data(ds: ReIDDataset, expected: str) -> bool:
    """Fingerprints written before file sizes were hashed (no ``v2:``) are compared the old way."""
    return fingerprint(ds, sizes=expected.startswith("v2:")) == expected


def fingerprint(ds: ReIDDataset, sizes: bool = True) -> str:
    """Hash of every split's paths (relative to the root, so a moved copy matches), labels and protocols.

    With ``sizes`` (``v2:``), each file's size too: an image replaced under the same name is caught
    in most cases for the price of a stat per file (about 1 s per 100k images), where content hashes
    would read the whole dataset (minutes for LTCC or MSMT17) at every evaluation.
    """
    h = hashlib.sha256()
    splits = [("train", ds.train), ("test", ds.test)] + ([("val", ds.val_test)] if ds.val_test else [])
    for split, recs in splits:
        for rel, r in sorted((os.path.relpath(r.path, ds.root), r) for r in recs):
            size = f"|{os.path.getsize(r.path) if os.path.exists(r.path) else -1}" if sizes else ""
            h.update(f"{split}|{rel}|{r.pid}|{r.camid}|{r.clothes}{size}\n".encode())
    for p in ds.protocols:
        h.update(f"{p.name}|{p.mode}|{len(p.query)}|{len(p.gallery)}\n".encode())
    return ("v2:" if sizes else "") + h.hexdigest()[:16]
