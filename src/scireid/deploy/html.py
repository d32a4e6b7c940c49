"""One self-contained search-results page: thumbnails inlined as base64, no network references."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from ..durable import atomic_write_text


def _thumb(path: str, box, height: int = 128) -> str:
    from .embed import load_image
    from .inputs import Item
    try:
        img = load_image(Item(path, tuple(box) if box else None))
    except Exception:
        return ""
    img = img.resize((max(1, round(img.width * height / img.height)), height))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(src: str, caption: str, colour: str) -> str:
    img = f'<img src="{src}" alt="">' if src else '<div class="missing">unreadable</div>'
    return f'<figure style="border-color:{colour}">{img}<figcaption>{html.escape(caption)}</figcaption></figure>'


def write_results_html(results: list[dict[str, Any]], out: str | Path, title: str = "scireid search") -> Path:
    """Rows: the query, then its ranked results; green / red borders when both identities are known."""
    rows = []
    for r in results:
        q = r["query"]
        cells = [_cell(_thumb(q["path"], q.get("box")), f"query {Path(q['path']).name}", "#333")]
        for h in r["results"]:
            colour = {True: "#2a2", False: "#d22", None: "#999"}[h["same_identity"]]
            cap = f"#{h['rank']} {h['score']:.3f} {Path(h['path']).name}" + (f" id {h['pid']}" if h.get("pid", -1) >= 0 else "")
            cells.append(_cell(_thumb(h["path"], h.get("box")), cap, colour))
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; background: #fafafa; }}
.row {{ display: flex; gap: 6px; margin-bottom: 14px; align-items: flex-start; }}
figure {{ margin: 0; border: 4px solid #999; background: #fff; }}
figure img {{ display: block; height: 128px; }}
figcaption {{ font-size: 11px; max-width: 90px; word-break: break-all; padding: 2px; }}
.missing {{ width: 64px; height: 128px; background: #eee; font-size: 10px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Green: same identity as the query; red: another identity; grey: identity unknown. Scores are cosine similarities.</p>
{''.join(rows)}
</body></html>
"""
    return atomic_write_text(out, page)
