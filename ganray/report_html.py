"""HTML building blocks of the report: page shell with inline CSS, cards, tables, inline images.

Every text that comes from a run folder goes through html.escape here or at the caller; cells
passed to ``table`` are HTML already.
"""

from __future__ import annotations

import base64
import datetime
import math
import struct
from html import escape
from typing import Any

STATUS_CLASS = {"finished": "ok", "stopped": "warn", "failed": "bad", "running": "run"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1f2328}
main{max-width:1240px;margin:0 auto;padding:20px 24px 48px}
header{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap}
h1{font-size:24px;margin:0} h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #d8dbe0;padding-bottom:4px}
.sub{color:#59636e;font-size:13px}
.badge{padding:2px 10px;border-radius:10px;font-size:13px;font-weight:600;background:#d8dbe0}
.badge.ok{background:#d3f3dc;color:#116329}.badge.warn{background:#fff1c2;color:#7a4d00}
.badge.bad{background:#ffd7d5;color:#a40e26}.badge.run{background:#d6e9ff;color:#0b4f9c}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.card{background:#fff;border:1px solid #d8dbe0;border-radius:8px;padding:8px 14px;min-width:110px}
.card .k{font-size:12px;color:#59636e}.card .v{font-size:20px;font-weight:600}
.card.hi .v{color:#0b4f9c}
.grids{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0;background:#fff;border:1px solid #d8dbe0;border-radius:8px;padding:10px}
figcaption{font-size:13px;color:#59636e;margin-top:6px}
img.px{image-rendering:pixelated;display:block}
.strip{display:flex;flex-wrap:wrap;gap:8px}.strip figure{padding:6px}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{background:#fff;border:1px solid #d8dbe0;border-radius:8px;font-size:11px}
.chart .ct{font-size:13px;font-weight:600;fill:#1f2328}.chart .pa{fill:#fff;stroke:#c8ccd2}
.chart .gr{stroke:#eceef1}.chart .tx{text-anchor:middle;fill:#59636e}.chart .ty{text-anchor:end;fill:#59636e}
.chart .al{text-anchor:middle;fill:#59636e}.chart .lg{fill:#1f2328}.chart .mk{font-weight:600;fill:#1f2328}
.chart .na{text-anchor:middle;fill:#8c959f}
table{border-collapse:collapse;background:#fff;font-size:13px}
td,th{border:1px solid #d8dbe0;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#eef0f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#eef6ff}
.cfg{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.cfg td.d{font-weight:700;color:#0b4f9c}
pre{background:#fff;border:1px solid #d8dbe0;border-radius:8px;padding:10px;overflow:auto;font-size:12px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
footer{margin-top:36px;color:#8c959f;font-size:12px}
"""


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, without decoding the image."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])


def img_tag(data: bytes | None, alt: str, target_px: int = 560) -> str:
    """An <img> with the PNG inline, about target_px wide.

    Small grids are enlarged by a whole factor with pixelated rendering, so a 16 px sample
    stays a crisp 16 x 16 block of pixels instead of a blur; larger ones are shrunk smoothly.
    """
    if not data:
        return f'<div class="sub">({escape(alt)}: no image)</div>'
    size, attrs = png_size(data), ' class="px"'
    if size:
        w, h = size
        scale = max(1, min(8, target_px // max(w, 1))) if w <= target_px else target_px / w
        attrs = (' class="px"' if scale >= 1 else "") + f' width="{round(w * scale)}" height="{round(h * scale)}"'
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img{attrs} alt="{escape(alt)}" src="data:image/png;base64,{b64}">'


def figure(data: bytes | None, caption: str, target_px: int = 560) -> str:
    return f"<figure>{img_tag(data, caption, target_px)}<figcaption>{escape(caption)}</figcaption></figure>"


def card(key: str, value: str, highlight: bool = False) -> str:
    cls = "card hi" if highlight else "card"
    return f'<div class="{cls}"><div class="k">{escape(key)}</div><div class="v">{escape(value)}</div></div>'


def fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def badge(status: str) -> str:
    return f'<span class="badge {STATUS_CLASS.get(status, "")}">{escape(status)}</span>'


def table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_classes: list[str] | None = None) -> str:
    """Cells are HTML already (callers escape text)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="n">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def page(title: str, body: str, source: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>{body}"
            f"<footer>ganray report of {escape(source)}, generated {stamp}</footer></main></body></html>")
