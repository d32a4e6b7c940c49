"""Which gallery rows a search may return: cameras, a time window, the query's own camera.

A filter is a boolean mask over row ids, applied inside the search (``Index.search(keep=...)``), so the
results are the true top-k among the rows that pass, never a top-k cut short afterwards. Timestamps are
numbers (seconds, or a MOT frame number) or ISO-8601 date-times; a bound must be of the same form as the
rows' timestamps. Rows that lack the filtered field cannot pass a camera or time filter; they are counted
in a warning.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)


def parse_time(text: str) -> tuple[float, str] | None:
    """(seconds, 'number' | 'date-time'), or None for an empty field. Naive date-times are read as UTC."""
    text = str(text).strip()
    if not text:
        return None
    try:
        v = float(text)
        if math.isfinite(v):
            return v, "number"
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a number nor an ISO-8601 date-time (e.g. 2026-12-04T14:00:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp(), "date-time"


def parse_cameras(spec: str) -> list[int]:
    """``3,5,7-9`` -> [3, 5, 7, 8, 9]."""
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UserError(f"--cameras {spec!r}: expected camera numbers and ranges, e.g. 3,5,7-9") from None
    return sorted(set(out))


@dataclass
class RowFilter:
    """What a row must satisfy to be returned. Empty (the default): every row passes."""
    cameras: list[int] | None = None
    after: str | None = None   # inclusive
    before: str | None = None  # inclusive

    @property
    def active(self) -> bool:
        return self.cameras is not None or self.after is not None or self.before is not None

    def check(self) -> None:
        """The bounds themselves, before anything is embedded."""
        for name, v in (("--after", self.after), ("--before", self.before)):
            if v is not None:
                try:
                    if parse_time(v) is None:
                        raise ValueError("an empty value")
                except ValueError as e:
                    raise UserError(f"{name} {v!r}: {e}") from None
        if self.after is not None and self.before is not None:
            (a, ka), (b, kb) = parse_time(self.after), parse_time(self.before)
            if ka != kb:
                raise UserError(f"--after {self.after!r} is a {ka} but --before {self.before!r} a {kb}")
            if a > b:
                raise UserError(f"--after {self.after!r} is later than --before {self.before!r}: no row can pass")

    def mask(self, rows: list[dict | None], counts: dict[str, list[int]] | None = None) -> np.ndarray:
        """True for the rows that pass; removed rows (None) never do. Rows that lack a filtered field are
        counted into ``counts`` (a shard reports them to the client), or else logged in a warning here."""
        self.check()
        own = counts is None
        counts = {} if own else counts
        keep = np.array([r is not None for r in rows], bool)
        if self.cameras is not None:
            cams = np.array([-1 if r is None else r.get("camid", -1) for r in rows], np.int64)
            counts["--cameras"] = [int(((cams < 0) & keep).sum()), int(keep.sum())]
            keep &= np.isin(cams, self.cameras)
        if self.after is not None or self.before is not None:
            keep &= self._time_mask(rows, keep, counts)
        if own:
            warn_missing(counts)
        return keep

    def _time_mask(self, rows: list[dict | None], live: np.ndarray, counts: dict[str, list[int]]) -> np.ndarray:
        kind = parse_time(self.after if self.after is not None else self.before)[1]
        t = np.full(len(rows), np.nan)
        for i, r in enumerate(rows):
            if r is None or not live[i]:
                continue
            try:
                v = parse_time(r.get("timestamp", ""))
            except ValueError as e:
                raise UserError(f"gallery row {i} ({r.get('path')}): timestamp {e}") from None
            if v is None:
                continue
            if v[1] != kind:
                raise UserError(f"--after/--before are {kind}s but gallery row {i} ({r.get('path')}) has the "
                                f"timestamp {r.get('timestamp')!r}, a {v[1]}")
            t[i] = v[0]
        counts["--after/--before"] = [int((np.isnan(t) & live).sum()), int(live.sum())]
        ok = ~np.isnan(t)
        if self.after is not None:
            ok &= t >= parse_time(self.after)[0]
        if self.before is not None:
            ok &= t <= parse_time(self.before)[0]
        return ok


def warn_missing(counts: dict[str, list[int]]) -> None:
    """One warning per filter whose field some rows lack: [rows without it, rows considered]."""
    what = {"--cameras": "camera", "--after/--before": "timestamp"}
    for opt, (missing, total) in counts.items():
        if missing:
            log.warning("%s: %d of %d gallery rows have no %s and are left out", opt, missing, total, what[opt])


def camera_groups(exclude_camids: list[int] | None, n: int) -> dict[int, np.ndarray]:
    """Queries grouped by the camera whose rows they must not see (-1: none)."""
    cams = np.full(n, -1, np.int64) if exclude_camids is None else np.asarray(exclude_camids, np.int64)
    if len(cams) != n:
        raise UserError(f"{len(cams)} query cameras for {n} queries")
    return {int(c): np.flatnonzero(cams == c) for c in np.unique(cams)}


__all__ = ["RowFilter", "camera_groups", "parse_cameras", "parse_time", "warn_missing"]
