"""What every dataset produces: image records, evaluation protocols, a dataset bundle."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError  # re-exported

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
MODES = ("general", "cloth-changing", "same-clothes")

__all__ = ["DatasetError", "IMG_EXTS", "MODES", "Protocol", "Record", "ReIDDataset", "relabel", "test_records",
           "list_images", "describe_tree"]


@dataclass(frozen=True)
class Record:
    path: str
    pid: int
    camid: int
    clothes: int


@dataclass
class Protocol:
    """Query/gallery index sets into ``ReIDDataset.test`` and the ranking mode."""

    name: str
    mode: str
    query: np.ndarray
    gallery: np.ndarray
    # single-shot: several seeded gallery subsets (indices into ``gallery``); metrics are averaged
    gallery_trials: list[np.ndarray] | None = None


@dataclass
class ReIDDataset:
    name: str
    root: str
    train: list[Record]
    test: list[Record]  # every query and gallery image, once
    protocols: list[Protocol]
    num_train_pids: int = 0
    num_train_clothes: int = 0
    pid2clothes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    bad_names: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) from parsing
    # a validation query/gallery of identities in neither train nor test (model selection, recipe choices)
    val_test: list[Record] = field(default_factory=list)
    val_protocols: list[Protocol] = field(default_factory=list)

    def validation(self) -> "ReIDDataset | None":
        """The validation split as a dataset of its own (no train images), or None when there is none."""
        if not self.val_test:
            return None
        return ReIDDataset(f"{self.name}/val", self.root, [], self.val_test, self.val_protocols)

    def __post_init__(self) -> None:
        if self.train:
            self.num_train_pids = max(r.pid for r in self.train) + 1
            self.num_train_clothes = max(r.clothes for r in self.train) + 1
            m = np.zeros((self.num_train_pids, self.num_train_clothes), dtype=bool)
            for r in self.train:
                m[r.pid, r.clothes] = True
            self.pid2clothes = m

    def protocol(self, name: str) -> Protocol:
        for p in self.protocols:
            if p.name == name:
                return p
        raise DatasetError(f"dataset {self.name} has no protocol {name!r}; it has {', '.join(p.name for p in self.protocols)}")

    def split_records(self, protocol: Protocol) -> tuple[list[Record], list[Record]]:
        return [self.test[i] for i in protocol.query], [self.test[i] for i in protocol.gallery]


def relabel(train: list[tuple[str, int, int, object]]) -> list[Record]:
    """Map raw (path, pid, cam, clothes_key) to contiguous pid/clothes labels, sorted for determinism."""
    pids = sorted({t[1] for t in train})
    pid_map = {p: i for i, p in enumerate(pids)}
    clothes = sorted({(t[1], t[3]) for t in train}, key=lambda x: (x[0], str(x[1])))
    clo_map = {c: i for i, c in enumerate(clothes)}
    recs = [Record(t[0], pid_map[t[1]], t[2], clo_map[(t[1], t[3])]) for t in train]
    return sorted(recs, key=lambda r: r.path)


def test_records(items: list[tuple[str, int, int, object]]) -> list[Record]:
    """Test pids stay raw; clothes become ints unique per (pid, clothes) so query and gallery agree."""
    keys = sorted({(t[1], str(t[3])) for t in items})
    clo_map = {c: i for i, c in enumerate(keys)}
    return [Record(t[0], t[1], t[2], clo_map[(t[1], str(t[3]))]) for t in items]


def list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMG_EXTS and p.is_file())


def describe_tree(root: Path, limit: int = 12) -> str:
    """The first entries directly under ``root``, for layout errors that fit on one line."""
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        return f"{root} is not a directory"
    entries = sorted(root.iterdir())
    names = [f"{p.name}/" if p.is_dir() else p.name for p in entries[:limit]]
    more = f" ... ({len(entries)} entries)" if len(entries) > limit else ""
    return (", ".join(names) + more) if names else "(empty)"
