"""Line charts as inline SVG strings, for the self-contained HTML report.

No plotting library and no script: polylines, axis ticks at 1/2/5 x 10^k, a legend, and
<title> tooltips on marked points (browsers show them on hover without JavaScript).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

# Colour-blind-friendly qualitative palette (Okabe & Ito 2008) plus greys for long lists.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
           "#000000", "#7F7F7F", "#B07AA1"]
MAX_POINTS = 800  # per series; longer ones are thinned (the last point is always kept)


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str | None = None
    points: bool = False  # draw a dot (with a hover tooltip) at every value
    dashed: bool = False
    # Eval metrics exist only on eval reports: connect them across the rows without a value.
    # Otherwise a NaN breaks the line, so a diverged loss shows as a gap, not a bridge.
    connect: bool = False
    stroke_width: float = 1.6


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def _finite_pairs(s: Series) -> list[tuple[float, float]]:
    return [(x, y) for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y)]


def _thin(points: list, limit: int = MAX_POINTS) -> list:
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def _segments(s: Series) -> list[list[tuple[float, float]]]:
    """Runs of consecutive finite values (all of them as one run when s.connect)."""
    if s.connect:
        return [_finite_pairs(s)]
    out, cur = [], []
    for x, y in zip(s.xs, s.ys):
        if math.isfinite(x) and math.isfinite(y):
            cur.append((x, y))
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def _padded(lo: float, hi: float) -> tuple[float, float]:
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log10 axis given in exponents: whole decades, plus 2x and 5x when few."""
    decades = list(range(math.floor(lo), math.ceil(hi) + 1))
    ticks = [float(d) for d in decades]
    if sum(lo <= t <= hi for t in ticks) < 3:
        ticks += [d + math.log10(m) for d in decades for m in (2, 5)]
    return sorted(t for t in ticks if lo <= t <= hi)


def line_chart(series: list[Series], *, title: str, x_label: str = "kimg", y_label: str = "",
               width: int = 392, height: int = 240, log_y: bool = False,
               mark_min: str | None = None, legend: bool = True, include_zero: bool = False) -> str:
    """An SVG line chart; mark_min names the series whose minimum gets a labelled marker."""
    series = [s for s in series if _finite_pairs(s)]
    legend = legend and len(series) > 1  # one line: the title already names it
    left, right, top, bottom = 58, 12, 44 if legend else 30, 40
    pw, ph = width - left - right, height - top - bottom
    head = (f'<svg class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<text x="{left}" y="18" class="ct">{escape(title)}</text>')
    if not series:
        return head + f'<text x="{width / 2}" y="{height / 2}" class="na">no data</text></svg>'
    log_y = log_y and all(y > 0 for s in series for _, y in _finite_pairs(s))
    ty = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    pts = [(x, ty(y)) for s in series for x, y in _finite_pairs(s)]
    x0, x1 = _padded(min(p[0] for p in pts), max(p[0] for p in pts))
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if include_zero and not log_y:  # rates and fractions: the axis from 0 keeps noise small
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    y0, y1 = _padded(lo, hi)

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (ty(y) - y0) / (y1 - y0)) * ph

    parts = [head, f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="pa"/>']
    parts += _axes(x0, x1, y0, y1, px, py, log_y, left, top, pw, ph)
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" class="al">{escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{top + ph / 2}" class="al" '
                     f'transform="rotate(-90 12 {top + ph / 2})">{escape(y_label)}</text>')
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        parts += _draw_series(s, color, px, py)
        if mark_min == s.label:
            parts.append(_min_marker(s, color, px, py, left + pw, x_label))
    if legend:
        parts.append(_legend(series, left, 26))
    return "".join(parts) + "</svg>"


def _axes(x0, x1, y0, y1, px, py, log_y, left, top, pw, ph) -> list[str]:
    out = []
    for t in nice_ticks(x0, x1, 6):
        if x0 <= t <= x1:
            out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" class="gr"/>'
                       f'<text x="{px(t):.1f}" y="{top + ph + 14}" class="tx">{fmt_num(t)}</text>')
    for t in log_ticks(y0, y1) if log_y else nice_ticks(y0, y1, 5):
        if y0 <= t <= y1:
            value = 10 ** t if log_y else t
            y = py(value)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" class="gr"/>'
                       f'<text x="{left - 5}" y="{y + 4:.1f}" class="ty">{fmt_num(value)}</text>')
    return out


def _draw_series(s: Series, color: str, px, py) -> list[str]:
    out = []
    dash = ' stroke-dasharray="5 3"' if s.dashed else ""
    for seg in _segments(s):
        seg = _thin(seg)
        if len(seg) == 1:
            x, y = seg[0]
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>')
            continue
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in seg)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}"'
                   f' stroke-width="{s.stroke_width}" stroke-linejoin="round"{dash}/>')
    if s.points:
        for x, y in _finite_pairs(s)[:MAX_POINTS]:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{color}">'
                       f'<title>{escape(s.label)} {fmt_num(y)} at {fmt_num(x)}</title></circle>')
    return out


def _min_marker(s: Series, color: str, px, py, right_edge: float, x_label: str) -> str:
    x, y = min(_finite_pairs(s), key=lambda p: p[1])
    cx, cy = px(x), py(y)
    anchor = "end" if cx > right_edge - 120 else "start"
    dx = -8 if anchor == "end" else 8
    return (f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="none" stroke="{color}" stroke-width="2"/>'
            f'<text x="{cx + dx:.1f}" y="{cy - 8:.1f}" class="mk" text-anchor="{anchor}">'
            f'best {fmt_num(y)} @ {fmt_num(x)} {escape(x_label)}</text>')


def _legend(series: list[Series], x: float, y: float) -> str:
    """One row between the title and the plot area, so it never hides data."""
    out, cx = [], x
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        out.append(f'<line x1="{cx:.0f}" y1="{y + 5}" x2="{cx + 14:.0f}" y2="{y + 5}" stroke="{color}" '
                   f'stroke-width="3"/><text x="{cx + 18:.0f}" y="{y + 9}" class="lg">{escape(s.label)}</text>')
        cx += 30 + 6.2 * len(s.label)
    return f'<g class="legend">{"".join(out)}</g>'


def sparkline(xs: Sequence[float], ys: Sequence[float], *, width: int = 140, height: int = 32,
              color: str = PALETTE[0]) -> str:
    """A tiny axis-less chart for table cells; the minimum is dotted."""
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    svg = f'<svg class="spark" width="{width}" height="{height}">'
    if not pairs:
        return svg + "</svg>"
    x0, x1 = _padded(min(p[0] for p in pairs), max(p[0] for p in pairs))
    y0, y1 = _padded(min(p[1] for p in pairs), max(p[1] for p in pairs))

    def pt(x: float, y: float) -> str:
        return f"{(x - x0) / (x1 - x0) * width:.1f},{(1 - (y - y0) / (y1 - y0)) * height:.1f}"

    coords = " ".join(pt(x, y) for x, y in _thin(pairs, 200))
    bx, by = pt(*min(pairs, key=lambda p: p[1])).split(",")
    return (svg + f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>'
            f'<circle cx="{bx}" cy="{by}" r="2.5" fill="{color}"/></svg>')
