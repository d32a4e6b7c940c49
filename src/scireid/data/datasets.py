"""Parsers for the paper's datasets and a CSV manifest, behind one registry.

Labels come from file names only (never from parent folders, except where the dataset's
own scheme puts the identity in a folder, as PRCC does), so a checkout under a folder
called ``my_code`` parses the same as anywhere else.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .records import (
    DatasetError, Protocol, Record, ReIDDataset, describe_tree, list_images, relabel, test_records,
)

_REGISTRY: dict[str, Callable[..., ReIDDataset]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def build_dataset(name: str, root: str | Path, **kwargs) -> ReIDDataset:
    """Parse dataset ``name`` under ``root``; kwargs go to the parser (e.g. PRCC single-shot)."""
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    root_p = Path(root).expanduser()
    from .synthetic import INCOMPLETE
    if (root_p / INCOMPLETE).exists() or root_p.name.endswith(".partial"):
        raise DatasetError(f"{root}: an unfinished 'scireid synth' output (it was stopped while writing); delete it and "
                           f"run scireid synth again")
    ds = _REGISTRY[name](root_p, **kwargs)
    if ds.bad_names and not kwargs.get("lenient", False):
        path, why = ds.bad_names[0]
        raise DatasetError(
            f"{name}: {len(ds.bad_names)} file(s) do not follow the naming scheme, first {path} ({why}); "
            f"run 'scireid datasets check {name} {root}' for the full list")
    return ds


def _find_dir(root: Path, candidates: tuple[str, ...], needed: tuple[str, ...], expected: str, name: str) -> Path:
    for c in candidates:
        base = root / c if c else root
        if all((base / n).is_dir() for n in needed):
            return base
    raise DatasetError(f"{name}: expected {expected} under {root}; found: {describe_tree(root)}")


def _parse_dir(d: Path, pattern: re.Pattern, convert, bad: list) -> list[tuple]:
    out = []
    for p in list_images(d):
        m = pattern.search(p.name)
        if m is None:
            bad.append((str(p), f"name does not match {pattern.pattern}"))
            continue
        item = convert(str(p), m)
        if item is not None:
            out.append(item)
    return out


def _protocols(test: list[Record], n_query: int, modes: list[tuple[str, str]]) -> list[Protocol]:
    q = np.arange(n_query)
    g = np.arange(n_query, len(test))
    return [Protocol(name, mode, q, g) for name, mode in modes]


# ---------------------------------------------------------------- LTCC (and synthetic)
LTCC_RE = re.compile(r"^(\d+)_(\d+)_c(\d+)_")


def _ltcc_labels(m: re.Match) -> tuple[int, int, str]:
    """pid, 0-based camera, clothes key of an LTCC-style name (the synthetic set uses it too)."""
    return int(m.group(1)), int(m.group(3)) - 1, m.group(2)


def _ltcc_like(root: Path, name: str, lenient: bool = False) -> ReIDDataset:
    base = _find_dir(root, ("LTCC_ReID", ""), ("train", "query", "test"),
                     "LTCC_ReID/{train,query,test}/<pid>_<clothes>_c<cam>_<frame>.png", name)
    bad: list = []
    conv = lambda p, m: (p, *_ltcc_labels(m))  # noqa: E731
    train_raw = _parse_dir(base / "train", LTCC_RE, conv, bad)
    train = relabel(train_raw)
    query = _parse_dir(base / "query", LTCC_RE, conv, bad)
    gallery = _parse_dir(base / "test", LTCC_RE, conv, bad)
    if not train or not query or not gallery:
        raise DatasetError(f"{name}: no images found in {base}/train, query or test; found: {describe_tree(base)}")
    modes = [("general", "general"), ("cloth-changing", "cloth-changing")]
    test = test_records(query + gallery)
    protos = _protocols(test, len(query), modes)
    val_test: list[Record] = []
    val_protos: list[Protocol] = []
    if (base / "val" / "query").is_dir() and (base / "val" / "test").is_dir():  # optional validation split
        vq = _parse_dir(base / "val" / "query", LTCC_RE, conv, bad)
        vg = _parse_dir(base / "val" / "test", LTCC_RE, conv, bad)
        if not vq or not vg:
            raise DatasetError(f"{name}: {base / 'val'} has no images in query/ or test/; fill both or remove val/")
        overlap = {t[1] for t in vq + vg} & {t[1] for t in train_raw + query + gallery}
        if overlap:
            raise DatasetError(f"{name}: validation identities {sorted(overlap)[:5]} also appear in train/query/test; "
                               f"validation must hold other people")
        val_test = test_records(vq + vg)
        val_protos = _protocols(val_test, len(vq), modes)
    return ReIDDataset(name, str(root), train, test, protos, bad_names=bad, val_test=val_test, val_protocols=val_protos)


@register("ltcc")
def ltcc(root: Path, lenient: bool = False, **_) -> ReIDDataset:
    return _ltcc_like(root, "ltcc", lenient)


@register("synthetic")
def synthetic(root: Path, lenient: bool = False, **_) -> ReIDDataset:
    """The generated cloth-changing set: LTCC's layout, read by LTCC's parser.

    ``synthetic.json`` is written last, so a folder without it is an unfinished generation.
    """
    if not (Path(root) / "synthetic.json").is_file():
        raise DatasetError(f"synthetic: {root} has no synthetic.json, so its generation never finished; "
                           f"regenerate it with: scireid synth <new folder>")
    return _ltcc_like(root, "synthetic", lenient)


# ---------------------------------------------------------------- PRCC
PRCC_RE = re.compile(r"^([ABC])_")


@register("prcc")
def prcc(root: Path, single_shot: bool = False, trials: int = 10, seed: int = 1, lenient: bool = False, **_) -> ReIDDataset:
    base = _find_dir(root, ("prcc/rgb", "rgb", ""), ("train", "test"),
                     "prcc/rgb/{train/<pid>/[ABC]_*.jpg, test/{A,B,C}/<pid>/*.jpg}", "prcc")
    bad: list = []
    cam_of = {"A": 0, "B": 1, "C": 2}
    raw_train = []
    for pdir in sorted(p for p in (base / "train").iterdir() if p.is_dir()):
        if not pdir.name.isdigit():
            bad.append((str(pdir), "identity folder name is not a number"))
            continue
        for p in list_images(pdir):
            m = PRCC_RE.search(p.name)
            if m is None:
                bad.append((str(p), f"name does not match {PRCC_RE.pattern}"))
                continue
            cam = cam_of[m.group(1)]
            raw_train.append((str(p), int(pdir.name), cam, "AB" if cam < 2 else "C"))
    train = relabel(raw_train)
    parts: dict[str, list] = {}
    for cam_name in ("A", "B", "C"):
        d = base / "test" / cam_name
        if not d.is_dir():
            raise DatasetError(f"prcc: expected {d} (test/A gallery, test/B and test/C queries); found: {describe_tree(base / 'test')}")
        items = []
        for pdir in sorted(p for p in d.iterdir() if p.is_dir()):
            if not pdir.name.isdigit():
                bad.append((str(pdir), "identity folder name is not a number"))
                continue
            for p in list_images(pdir):
                items.append((str(p), int(pdir.name), cam_of[cam_name], "AB" if cam_name != "C" else "C"))
        parts[cam_name] = items
    if not train or not all(parts.values()):
        raise DatasetError(f"prcc: empty train or test/A,B,C under {base}; found: {describe_tree(base)}")
    test = test_records(parts["B"] + parts["C"] + parts["A"])
    nb, nc = len(parts["B"]), len(parts["C"])
    b, c = np.arange(nb), np.arange(nb, nb + nc)
    a = np.arange(nb + nc, len(test))
    trials_idx = None
    if single_shot:
        rng = np.random.default_rng(seed)
        g_pids = np.array([test[i].pid for i in a])
        trials_idx = []
        for _ in range(trials):
            pick = [rng.choice(np.flatnonzero(g_pids == pid)) for pid in np.unique(g_pids)]
            trials_idx.append(np.sort(np.array(pick)))
    protos = [Protocol("same-clothes", "same-clothes", b, a, trials_idx),
              Protocol("cloth-changing", "cloth-changing", c, a, trials_idx)]
    return ReIDDataset("prcc", str(root), train, test, protos, bad_names=bad)


# ---------------------------------------------------------------- VC-Clothes
VC_RE = re.compile(r"^(\d+)-(\d+)-(\d+)-(\d+)")


def _vc_labels(m: re.Match) -> tuple[int, int, str]:
    return int(m.group(1)), int(m.group(2)) - 1, m.group(3)


@register("vcclothes")
def vcclothes(root: Path, lenient: bool = False, **_) -> ReIDDataset:
    base = _find_dir(root, ("VC-Clothes", ""), ("train", "query", "gallery"),
                     "VC-Clothes/{train,query,gallery}/<pid>-<cam>-<clothes>-<frame>.jpg", "vcclothes")
    bad: list = []
    conv = lambda p, m: (p, *_vc_labels(m))  # noqa: E731
    train = relabel(_parse_dir(base / "train", VC_RE, conv, bad))
    query = _parse_dir(base / "query", VC_RE, conv, bad)
    gallery = _parse_dir(base / "gallery", VC_RE, conv, bad)
    if not train or not query or not gallery:
        raise DatasetError(f"vcclothes: no images in {base}/train, query or gallery; found: {describe_tree(base)}")
    test = test_records(query + gallery)
    nq = len(query)
    protos = _protocols(test, nq, [("general", "general")])
    cams = np.array([r.camid for r in test])
    # Simple-CCReID's camera protocols: cameras 2&3 share clothes, cameras 3&4 change them (1-based).
    for name, keep in (("cams23", (1, 2)), ("cams34", (2, 3))):
        sel = np.isin(cams, keep)
        protos.append(Protocol(name, "general", np.flatnonzero(sel[:nq]), nq + np.flatnonzero(sel[nq:])))
    return ReIDDataset("vcclothes", str(root), train, test, protos, bad_names=bad)


# ---------------------------------------------------------------- Market-1501
MARKET_RE = re.compile(r"^([-\d]+)_c(\d)")


def _market_labels(m: re.Match) -> tuple[int, int, str]:
    return int(m.group(1)), int(m.group(2)) - 1, "0"  # one outfit per identity


@register("market1501")
def market1501(root: Path, lenient: bool = False, **_) -> ReIDDataset:
    base = _find_dir(root, ("Market-1501-v15.09.15", "market1501", "Market-1501", ""),
                     ("bounding_box_train", "query", "bounding_box_test"),
                     "Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/<pid>_c<cam>s*_*.jpg",
                     "market1501")
    bad: list = []

    def conv(p, m):
        labels = _market_labels(m)
        return None if labels[0] == -1 else (p, *labels)  # pid -1: junk detections

    train = relabel(_parse_dir(base / "bounding_box_train", MARKET_RE, conv, bad))
    query = _parse_dir(base / "query", MARKET_RE, conv, bad)
    gallery = _parse_dir(base / "bounding_box_test", MARKET_RE, conv, bad)
    if not train or not query or not gallery:
        raise DatasetError(f"market1501: no images under {base}; found: {describe_tree(base)}")
    test = test_records(query + gallery)
    return ReIDDataset("market1501", str(root), train, test, _protocols(test, len(query), [("standard", "general")]),
                       bad_names=bad)


# ---------------------------------------------------------------- MSMT17
def _msmt_camera(name: str) -> int | None:
    """0-based camera of an MSMT17 name ``<pid>_<n>_<cam>_...``, None when it has no such field."""
    fields = name.split("_")
    return int(fields[2]) - 1 if len(fields) >= 3 and fields[2].isdigit() else None

@register("msmt17")
def msmt17(root: Path, lenient: bool = False, **_) -> ReIDDataset:
    base = None
    for c in ("MSMT17_V1", "MSMT17_V2", "MSMT17", ""):
        b = root / c if c else root
        if all((b / f).is_file() for f in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")):
            base = b
            break
    if base is None:
        raise DatasetError(f"msmt17: expected MSMT17_V1/{{train,test}}/ and list_{{train,val,query,gallery}}.txt "
                           f"under {root}; found: {describe_tree(root)}")
    bad: list = []

    def read(list_name: str, img_dir: str) -> list[tuple]:
        out = []
        for ln, line in enumerate((base / list_name).read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                bad.append((f"{base / list_name}:{ln}", "expected '<relative path> <pid>'"))
                continue
            cam = _msmt_camera(Path(parts[0]).name)
            if cam is None:
                bad.append((str(base / img_dir / parts[0]), "name has no camera field <pid>_<n>_<cam>_"))
                continue
            out.append((str(base / img_dir / parts[0]), int(parts[1]), cam, "0"))
        return out

    train = relabel(read("list_train.txt", "train") + read("list_val.txt", "train"))
    query = read("list_query.txt", "test")
    gallery = read("list_gallery.txt", "test")
    test = test_records(query + gallery)
    return ReIDDataset("msmt17", str(root), train, test, _protocols(test, len(query), [("standard", "general")]),
                       bad_names=bad)


# ---------------------------------------------------------------- custom CSV manifest
@register("custom")
def custom(root: Path, lenient: bool = False, **_) -> ReIDDataset:
    """``root`` is a CSV (or a folder holding ``manifest.csv``): path,pid,camid,clothes_id,split."""
    manifest = root / "manifest.csv" if root.is_dir() else root
    if not manifest.is_file():
        raise DatasetError(f"custom: expected a CSV manifest at {manifest} with columns path,pid,camid,clothes_id,split")
    need = ["path", "pid", "camid", "clothes_id", "split"]
    splits: dict[str, list] = {"train": [], "query": [], "gallery": []}
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or any(c not in reader.fieldnames for c in need):
            raise DatasetError(f"{manifest}: header must contain {','.join(need)}; found {reader.fieldnames}")
        for ln, row in enumerate(reader, 2):
            try:
                item = (str((manifest.parent / row["path"]).resolve()), int(row["pid"]), int(row["camid"]),
                        row["clothes_id"])
            except ValueError:
                raise DatasetError(f"{manifest}:{ln}: pid and camid must be integers, got {row['pid']!r}, {row['camid']!r}") from None
            if row["split"] not in splits:
                raise DatasetError(f"{manifest}:{ln}: split must be train, query or gallery, got {row['split']!r}")
            splits[row["split"]].append(item)
    if not all(splits.values()):
        raise DatasetError(f"{manifest}: needs at least one train, query and gallery row")
    train = relabel(splits["train"])
    test = test_records(splits["query"] + splits["gallery"])
    return ReIDDataset("custom", str(root), train, test,
                       _protocols(test, len(splits["query"]), [("general", "general"), ("cloth-changing", "cloth-changing")]))


# ---------------------------------------------------------------- labels from file names alone (deploy)
MSMT_NAME_RE = re.compile(r"^(\d{4})_\d+_(\d{2})_")


def _name_schemes() -> dict[str, Callable[[Path], tuple[int, int, int] | None]]:
    """The schemes the parsers above read, as (pid, camid, clothes) of one path; clothes -1 when the set has none.

    Checked in this order, so LTCC's ``<pid>_<clothes>_c<cam>_`` wins over Market's ``<pid>_c<cam>``.
    """
    def by_re(rx, labels, clothes: bool):
        def f(p: Path):
            m = rx.search(p.name)
            if m is None:
                return None
            pid, cam, clo = labels(m)
            return pid, cam, int(clo) if clothes else -1
        return f

    def msmt(p: Path):
        m = MSMT_NAME_RE.search(p.name)
        return (int(m.group(1)), _msmt_camera(p.name), -1) if m else None

    def prcc(p: Path):  # test/{A,B,C}/<pid>/<file>: the camera is the folder A/B/C
        parts = p.parts
        if len(parts) >= 3 and parts[-3] in ("A", "B", "C") and parts[-2].isdigit():
            return int(parts[-2]), "ABC".index(parts[-3]), -1
        return None
    return {"ltcc": by_re(LTCC_RE, _ltcc_labels, True), "vcclothes": by_re(VC_RE, _vc_labels, True),
            "market1501": by_re(MARKET_RE, _market_labels, False), "msmt17": msmt, "prcc": prcc}


def labels_from_names(paths: list[str]) -> tuple[str, list[tuple[int, int, int]]] | None:
    """(scheme, [(pid, camid, clothes)]) when every path follows one dataset's naming scheme, else None.

    All or nothing: a folder where some names do not fit is not guessed at.
    """
    for name, f in _name_schemes().items():
        out = []
        for p in paths:
            lab = f(Path(p))
            if lab is None:
                break
            out.append(lab)
        else:
            if out:
                return name, out
    return None
