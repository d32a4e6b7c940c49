"""What ``scireid embed`` / ``index`` / ``search`` read: folders, path lists, CSV manifests, MOT detections.

Every input becomes a list of ``Item`` rows: an image file, an optional crop box, and whatever
metadata the input carries (identity, camera, clothes, timestamp). Missing metadata is -1 / "".
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("scireid")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class InputError(UserError):
    pass


@dataclass(frozen=True)
class Item:
    path: str
    box: tuple[int, int, int, int] | None = None  # x, y, w, h in pixels
    pid: int = -1
    camid: int = -1
    clothes_id: int = -1
    timestamp: str = ""

    def row(self) -> dict:
        d = asdict(self)
        d["box"] = list(self.box) if self.box else None
        return d

    @staticmethod
    def from_row(d: dict) -> "Item":
        return Item(d["path"], tuple(d["box"]) if d.get("box") else None, int(d.get("pid", -1)), int(d.get("camid", -1)),
                    int(d.get("clothes_id", -1)), str(d.get("timestamp", "")))


def _int(value: str, where: str) -> int:
    """An integer label (-1 when empty); a float that is not a whole finite number in int64's range is refused."""
    if value in ("", None):
        return -1
    try:
        x = float(value)
    except ValueError:
        raise InputError(f"{where}: expected an integer, got {value!r}") from None
    if not math.isfinite(x) or x != int(x) or abs(x) >= 2 ** 63:
        raise InputError(f"{where}: expected an integer, got {value!r}")
    return int(x)


def read_text(p: Path) -> str:
    """A text file we read lists from: UTF-8, no NUL bytes (a binary file named as a list), else one line."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    if b"\0" in data:
        raise InputError(f"{p}: a binary file, not a text list of image paths, CSV manifest or MOT detections")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{p} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8") from None


def read_folder(d: Path) -> list[Item]:
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise InputError(f"{d}: no images ({', '.join(IMAGE_EXTS)}) in this folder or below")
    return with_name_labels([Item(str(p)) for p in files], str(d))


def with_name_labels(items: list[Item], where: str) -> list[Item]:
    """pid / camid / clothes_id from the file names when they all follow a dataset scheme scireid parses
    (LTCC and the synthetic set, VC-Clothes, Market-1501, MSMT17, PRCC folders)."""
    from ..data.datasets import labels_from_names
    found = labels_from_names([it.path for it in items])
    if found is None:
        return items
    scheme, labels = found
    log.info("%s: identities and cameras read from %s-style file names", where, scheme)
    return [Item(it.path, it.box, pid, cam, clo, it.timestamp) for it, (pid, cam, clo) in zip(items, labels)]


def read_manifest(p: Path) -> list[Item]:
    import io
    with io.StringIO(read_text(p), newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InputError(f"{p}: a CSV manifest needs a 'path' column (optional: pid, camid, clothes_id, timestamp); "
                             f"found columns {reader.fieldnames}")
        items = []
        for i, row in enumerate(reader, start=2):
            where = f"{p} line {i}"
            path = Path(row["path"])
            if not path.is_absolute():
                path = p.parent / path
            items.append(Item(str(path), None, _int(row.get("pid", ""), where), _int(row.get("camid", ""), where),
                              _int(row.get("clothes_id", ""), where), row.get("timestamp", "") or ""))
    if not items:
        raise InputError(f"{p}: the manifest lists no images")
    return items


def _is_mot(p: Path) -> bool:
    lines = read_text(p).splitlines()
    first = lines[0].strip() if lines else ""
    parts = first.split(",")
    if len(parts) < 6:
        return False
    try:
        [float(x) for x in parts[:6]]
        return True
    except ValueError:
        return False


def read_mot(det: Path, frames: Path | None = None, camid: int = -1) -> list[Item]:
    """MOT-style ``frame,id,x,y,w,h,...`` rows; frames are ``FRAMES/<frame:06d>.jpg`` (MOT's img1/ by default)."""
    frames = frames or det.parent.parent / "img1"
    if not frames.is_dir():
        raise InputError(f"{det}: MOT detections need their frames; expected {frames}/ (pass --frames DIR)")
    by_frame = {}
    for p in frames.iterdir():
        if p.suffix.lower() in IMAGE_EXTS and p.stem.isdigit():
            by_frame[int(p.stem)] = p
    items = []
    for i, line in enumerate(read_text(det).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(",")
        if len(parts) < 6:
            raise InputError(f"{det} line {i}: expected frame,id,x,y,w,h,..., got {line.strip()!r}")
        try:
            frame, tid, x, y, w, h = (float(v) for v in parts[:6])
        except ValueError:
            raise InputError(f"{det} line {i}: expected numbers in frame,id,x,y,w,h, got {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in (frame, tid, x, y, w, h)):
            raise InputError(f"{det} line {i}: expected finite numbers in frame,id,x,y,w,h, got {line.strip()!r}")
        if int(frame) not in by_frame:
            raise InputError(f"{det} line {i}: frame {int(frame)} has no image in {frames}")
        # a box with w <= 0 or h <= 0 is kept: embed lists it as skipped, with its reason
        items.append(Item(str(by_frame[int(frame)]), (int(round(x)), int(round(y)), int(round(w)), int(round(h))),
                          int(tid), camid, -1, str(int(frame))))
    if not items:
        raise InputError(f"{det}: no detections")
    return items


def read_input(spec: str | Path, frames: str | Path | None = None) -> list[Item]:
    """A folder (recursive), an image, a text file of paths, a CSV manifest, a MOT det file or sequence folder."""
    p = Path(spec).expanduser()
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        for det in (p / "det" / "det.txt", p / "gt" / "gt.txt"):
            if (p / "img1").is_dir() and det.is_file():
                return read_mot(det, Path(frames) if frames else p / "img1")
        return read_folder(p)
    if p.suffix.lower() in IMAGE_EXTS:
        return with_name_labels([Item(str(p))], str(p))
    if p.suffix.lower() == ".csv":
        return read_manifest(p)
    if _is_mot(p):
        return read_mot(p, Path(frames) if frames else None)
    items = []
    for i, line in enumerate(read_text(p).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        q = Path(line).expanduser()
        items.append(Item(str(q if q.is_absolute() else p.parent / q)))
    if not items:
        raise InputError(f"{p}: the list names no images")
    return with_name_labels(items, str(p))


def read_inputs(specs: list[str], frames: str | None = None) -> list[Item]:
    out: list[Item] = []
    for s in specs:
        out.extend(read_input(s, frames))
    return out
