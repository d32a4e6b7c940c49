"""`scireid datasets stats|check`: what was parsed, and which files are broken."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from .records import Record, ReIDDataset


def _split_stats(recs: list[Record]) -> dict[str, int]:
    return {
        "ids": len({r.pid for r in recs}),
        "images": len(recs),
        "clothes": len({(r.pid, r.clothes) for r in recs}),
        "cameras": len({r.camid for r in recs}),
    }


def dataset_stats(ds: ReIDDataset) -> dict[str, Any]:
    out: dict[str, Any] = {"dataset": ds.name, "root": ds.root, "splits": {"train": _split_stats(ds.train)},
                           "protocols": {}}
    for p in ds.protocols:
        q, g = ds.split_records(p)
        out["protocols"][p.name] = {
            "mode": p.mode, "query": len(q), "gallery": len(g),
            "query_ids": len({r.pid for r in q}), "gallery_ids": len({r.pid for r in g}),
        }
        if p.gallery_trials:
            out["protocols"][p.name]["single_shot_gallery"] = len(p.gallery_trials[0])
    q_all = {i for p in ds.protocols for i in p.query.tolist()}
    g_all = {i for p in ds.protocols for i in p.gallery.tolist()}
    out["splits"]["query"] = _split_stats([ds.test[i] for i in sorted(q_all)])
    out["splits"]["gallery"] = _split_stats([ds.test[i] for i in sorted(g_all)])
    return out


def format_stats(stats: dict[str, Any]) -> str:
    lines = [f"=> {stats['dataset']} loaded from {stats['root']}",
             "  ----------------------------------------------",
             "  subset   | # ids | # images | # clothes | # cameras",
             "  ----------------------------------------------"]
    for name, s in stats["splits"].items():
        lines.append(f"  {name:<8} | {s['ids']:5d} | {s['images']:8d} | {s['clothes']:9d} | {s['cameras']:9d}")
    lines.append("  ----------------------------------------------")
    lines.append("  protocol        | mode            | # query | # gallery")
    for name, p in stats["protocols"].items():
        lines.append(f"  {name:<15} | {p['mode']:<15} | {p['query']:7d} | {p['gallery']:9d}")
    return "\n".join(lines)


def check_image(path: str) -> str | None:
    """None if the file decodes fully, else the reason it does not."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(p) as im:
            im.load()  # forces a full decode: catches truncation
            if im.width < 2 or im.height < 2:
                return f"image too small ({im.width}x{im.height})"
    except OSError as e:
        msg = str(e)
        if "truncated" in msg:
            return "truncated image"
        if "cannot identify" in msg:
            return "not an image"
        return f"unreadable ({msg})"
    return None


def check_dataset(ds: ReIDDataset, progress: bool = False) -> list[tuple[str, str]]:
    """Every bad file with its reason: naming errors from parsing, then decode errors."""
    from tqdm import tqdm
    import sys

    bad = list(ds.bad_names)
    val = ds.validation()
    recs = ds.train + ds.test + (val.test if val is not None else [])  # the validation split is read back too
    for r in tqdm(recs, desc="checking", disable=not (progress and sys.stderr.isatty())):
        why = check_image(r.path)
        if why:
            bad.append((r.path, why))
    return bad
