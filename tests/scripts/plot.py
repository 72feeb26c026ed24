#!/usr/bin/env python3
"""Draws the series of target/bench/report.json as SVG files, with the standard library only.

A series-shaped value is an object with "x" (the x axis' name) and either "points"
([[x, y], ...], one line) or "series" ({"name": [[x, y], ...], ...}, several lines and a
legend); "y" names the y axis and "title" the figure (both optional). Each one becomes
OUT/<key>.svg. The x axis is logarithmic when the x values span more than a decade, the y
axis starts at 0 (or is logarithmic when the values span more than two decades).

usage: plot.py [REPORT [OUT]]   (default target/bench/report.json, its directory)
"""

import json
import math
import os
import sys
from html import escape

W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 84, 24, 48, 64
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
MARKERS = ["circle", "square", "diamond", "triangle"]


def series_of(value):
    """The named lines of a series-shaped value, or None."""
    if not isinstance(value, dict) or "x" not in value:
        return None
    if isinstance(value.get("series"), dict):
        lines = value["series"]
    elif isinstance(value.get("points"), list):
        lines = {"": value["points"]}
    else:
        return None
    out = {}
    for name, points in lines.items():
        pts = [
            (float(p[0]), float(p[1]))
            for p in points
            if isinstance(p, (list, tuple)) and len(p) == 2 and p[1] is not None
        ]
        if pts:
            out[name] = sorted(pts)
    return out or None


def nice_step(span, count=5):
    raw = span / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt(v):
    """A number in at most 3 or 4 significant digits: 0.123, 12.3, 1,234, 12.3k, 1.5M."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


class Axis:
    def __init__(self, lo, hi, log, start, end, zero=False):
        self.log = log
        if log:
            self.lo = 10 ** math.floor(math.log10(lo))
            self.hi = 10 ** math.ceil(math.log10(hi))
            if self.hi == self.lo:
                self.hi *= 10
        else:
            if zero:
                lo = min(lo, 0)
            if hi == lo:
                hi = lo + (abs(lo) or 1)
            if zero:
                # The y axis: room above the highest point for its label.
                hi += (hi - lo) * 0.08
            step = nice_step(hi - lo)
            self.lo = math.floor(lo / step) * step
            self.hi = math.ceil(hi / step) * step
            self.step = step
        self.start, self.end = start, end

    def pos(self, v):
        if self.log:
            f = (math.log10(v) - math.log10(self.lo)) / (
                math.log10(self.hi) - math.log10(self.lo)
            )
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.start + f * (self.end - self.start)

    def ticks(self):
        if self.log:
            out = []
            e = round(math.log10(self.lo))
            while 10**e <= self.hi * 1.0001:
                out.append(10**e)
                e += 1
            return out
        n = round((self.hi - self.lo) / self.step)
        return [self.lo + i * self.step for i in range(n + 1)]

    def minor(self):
        if not self.log:
            return []
        out = []
        e = round(math.log10(self.lo))
        while 10**e < self.hi:
            out += [m * 10**e for m in range(2, 10)]
            e += 1
        return out


def marker(kind, x, y, color):
    if kind == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{color}"/>'
    if kind == "diamond":
        return (
            f'<polygon points="{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} '
            f'{x - 5:.1f},{y:.1f}" fill="{color}"/>'
        )
    if kind == "triangle":
        return (
            f'<polygon points="{x:.1f},{y - 5:.1f} {x + 5:.1f},{y + 4:.1f} '
            f'{x - 5:.1f},{y + 4:.1f}" fill="{color}"/>'
        )
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>'


def svg(key, value, lines):
    # Legend entries laid out in rows under the title; the plot starts below them.
    legend = {}
    named = [k for k in lines if k]
    top = TOP
    if named:
        lx, ly = LEFT, TOP + 2
        for name in named:
            width = 34 + 7 * len(name)
            if lx + width > W - RIGHT and lx > LEFT:
                lx, ly = LEFT, ly + 18
            legend[name] = (lx, ly)
            lx += width + 12
        top = ly + 16
    xs = [p[0] for pts in lines.values() for p in pts]
    ys = [p[1] for pts in lines.values() for p in pts]
    xlog = min(xs) > 0 and max(xs) / min(xs) > 10
    ylog = min(ys) > 0 and max(ys) / min(ys) > 100
    x = Axis(min(xs), max(xs), xlog, LEFT, W - RIGHT)
    y = Axis(min(ys), max(ys), ylog, H - BOTTOM, top, zero=True)
    title = value.get("title") or key
    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(title)}</text>',
    ]
    # Grid and ticks.
    for v in x.minor():
        px = x.pos(v)
        o.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{H - BOTTOM}" stroke="#f0f0f0"/>')
    for v in y.minor():
        py = y.pos(v)
        o.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{W - RIGHT}" y2="{py:.1f}" stroke="#f0f0f0"/>')
    for v in x.ticks():
        px = x.pos(v)
        o.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{H - BOTTOM}" stroke="#dddddd"/>')
        o.append(f'<line x1="{px:.1f}" y1="{H - BOTTOM}" x2="{px:.1f}" y2="{H - BOTTOM + 5}" stroke="black"/>')
        o.append(f'<text x="{px:.1f}" y="{H - BOTTOM + 19}" text-anchor="middle">{fmt(v)}</text>')
    for v in y.ticks():
        py = y.pos(v)
        o.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{W - RIGHT}" y2="{py:.1f}" stroke="#dddddd"/>')
        o.append(f'<line x1="{LEFT - 5}" y1="{py:.1f}" x2="{LEFT}" y2="{py:.1f}" stroke="black"/>')
        o.append(f'<text x="{LEFT - 8}" y="{py + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
    o.append(
        f'<rect x="{LEFT}" y="{top}" width="{W - LEFT - RIGHT}" height="{H - top - BOTTOM}" '
        'fill="none" stroke="black"/>'
    )
    # Axis labels.
    xlabel = value["x"] + (" (log scale)" if xlog else "")
    o.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 18}" text-anchor="middle" font-size="13">{escape(xlabel)}</text>')
    ylabel = (value.get("y") or "") + (" (log scale)" if ylog else "")
    cy = (top + H - BOTTOM) / 2
    o.append(
        f'<text x="20" y="{cy}" text-anchor="middle" font-size="13" '
        f'transform="rotate(-90 20 {cy})">{escape(ylabel)}</text>'
    )
    # Lines, points, value labels.
    for n, (name, pts) in enumerate(lines.items()):
        color = COLORS[n % len(COLORS)]
        path = " ".join(f"{x.pos(a):.1f},{y.pos(b):.1f}" for a, b in pts)
        o.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for a, b in pts:
            px, py = x.pos(a), y.pos(b)
            o.append(marker(MARKERS[n % len(MARKERS)], px, py, color))
            dy = -8 if n % 2 == 0 or py + 16 > H - BOTTOM - 2 else 16
            if py + dy < top + 10:
                dy = 16
            label = fmt(b)
            # Right of the point, or left of it at the right edge.
            if px + 8 + 6 * len(label) > W - RIGHT:
                lx, anchor = px - 6, "end"
            else:
                lx, anchor = px + 6, "start"
            o.append(
                f'<text x="{lx:.1f}" y="{py + dy:.1f}" font-size="10" fill="{color}" '
                f'text-anchor="{anchor}">{label}</text>'
            )
    # Legend: a row (or rows) between the title and the plot, clear of the curves.
    for n, name in enumerate(lines):
        if not name or not legend:
            continue
        lx, ly = legend[name]
        color = COLORS[n % len(COLORS)]
        o.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        o.append(marker(MARKERS[n % len(MARKERS)], lx + 9, ly - 4, color))
        o.append(f'<text x="{lx + 24}" y="{ly}">{escape(name)}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    report = sys.argv[1] if len(sys.argv) > 1 else "target/bench/report.json"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(report) or "."
    with open(report) as f:
        data = json.load(f)
    os.makedirs(out, exist_ok=True)
    written = []
    for key, value in sorted(data.items()):
        lines = series_of(value)
        if not lines:
            continue
        path = os.path.join(out, f"{key}.svg")
        with open(path, "w") as f:
            f.write(svg(key, value, lines))
        written.append(path)
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
