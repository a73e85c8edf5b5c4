"""A hand-written SVG plot of latency against offered load (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

W, H, L, R, T, B = 640, 400, 70, 20, 30, 50


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a if hi <= lo else a + (v - lo) * (b - a) / (hi - lo)


def latency_plot(levels: Sequence[dict[str, Any]], path: Path, limit_ms: float) -> Path:
    """p50 and p99 latency (ms, log-free linear axis capped at 4x the limit) per offered tx/s."""
    pts = [(float(lv["offered_tx_per_s"]), float(lv["p50_ms"]), float(lv["p99_ms"]), float(lv["committed_tx_per_s"]))
           for lv in levels if lv.get("p99_ms") == lv.get("p99_ms")]
    xmax = max([p[0] for p in pts] + [1.0]) * 1.05
    ymax = min(max([p[2] for p in pts] + [limit_ms]) * 1.1, 4 * limit_ms)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="12">', f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle">rxchain e2e: latency vs offered load</text>']

    def x(v: float) -> float:
        return _scale(v, 0, xmax, L, W - R)

    def y(v: float) -> float:
        return _scale(min(v, ymax), 0, ymax, H - B, T)

    out.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>')
    out.append(f'<line x1="{L}" y1="{H - B}" x2="{L}" y2="{T}" stroke="black"/>')
    for i in range(6):
        xv, yv = xmax * i / 5, ymax * i / 5
        out.append(f'<text x="{x(xv):.1f}" y="{H - B + 16}" text-anchor="middle">{xv:.0f}</text>')
        out.append(f'<text x="{L - 6}" y="{y(yv) + 4:.1f}" text-anchor="end">{yv:.0f}</text>')
    out.append(f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle">offered load (tx/s)</text>')
    out.append(f'<text x="16" y="{H / 2}" transform="rotate(-90 16 {H / 2})" text-anchor="middle">latency (ms)</text>')
    out.append(f'<line x1="{L}" y1="{y(limit_ms):.1f}" x2="{W - R}" y2="{y(limit_ms):.1f}" stroke="gray" '
               f'stroke-dasharray="4 4"/>')
    for idx, colour, name in ((1, "#1f77b4", "p50"), (2, "#d62728", "p99")):
        poly = " ".join(f"{x(p[0]):.1f},{y(p[idx]):.1f}" for p in pts)
        out.append(f'<polyline points="{poly}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in pts:
            out.append(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[idx]):.1f}" r="3" fill="{colour}"/>')
        ly = T + 10 + 16 * (idx - 1)
        out.append(f'<text x="{L + 10}" y="{ly}" fill="{colour}">{name}</text>')
    out.append(f'<text x="{W - R - 4}" y="{y(limit_ms) - 4:.1f}" text-anchor="end" fill="gray">p99 limit</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path
