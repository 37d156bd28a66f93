"""Draw the MPS application icon (original artwork) in every format the installers need.

    python installer/icons/make_icon.py            # rewrites mps.svg, mps.png, mps.ico, mps.icns

The motif is what the app does: a dark field of view with a few fluorescent cell bodies,
one of them highlighted by an outline (a found footprint), and its calcium trace below.
The same shapes are written once as SVG (the scalable Linux icon) and rasterised with
numpy + Pillow (PNG for Linux, ICO for Windows, ICNS for macOS), so no drawing program
or copied artwork is involved. Deterministic: the output only depends on this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SIZE = 256  # the master raster; smaller sizes are downsampled from it
BG_TOP, BG_BOTTOM = (18, 32, 52), (6, 12, 22)
CELL = (80, 235, 140)
OUTLINE = (255, 196, 64)
TRACE = (120, 200, 255)
# (x, y, radius, brightness) in 256-px units: cell bodies inside the field of view
CELLS = [(78, 70, 20, 1.0), (150, 58, 16, 0.7), (190, 110, 18, 0.85), (110, 128, 17, 0.6),
         (60, 150, 14, 0.45), (170, 170, 15, 0.5)]
HIGHLIGHT = 0  # the cell drawn with an outline
CORNER = 44  # rounded-square corner radius
TRACE_Y0, TRACE_H = 214, 26  # baseline and height of the trace strip


def trace_points(n: int = 48) -> list[tuple[float, float]]:
    """A calcium-like trace: two fast rises with exponential decays, on a flat baseline."""
    t = np.linspace(0.0, 1.0, n)
    y = np.zeros(n)
    for onset, amp in ((0.18, 1.0), (0.62, 0.7)):
        after = t >= onset
        y[after] += amp * np.exp(-(t[after] - onset) / 0.09)
    xs = 34 + t * (SIZE - 68)
    ys = TRACE_Y0 - y * TRACE_H
    return list(zip(xs.tolist(), ys.tolist()))


def svg() -> str:
    """The icon as SVG text (same geometry as the raster)."""
    cells = "\n".join(
        f'  <circle cx="{x}" cy="{y}" r="{r}" fill="url(#cell)" opacity="{b:.2f}"/>'
        for x, y, r, b in CELLS)
    hx, hy, hr, _ = CELLS[HIGHLIGHT]
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in trace_points())
    rgb = "rgb({},{},{})".format
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}">
  <defs>
    <linearGradient id="bg" x1="0" y1="0" x2="0" y2="1">
      <stop offset="0" stop-color="{rgb(*BG_TOP)}"/><stop offset="1" stop-color="{rgb(*BG_BOTTOM)}"/>
    </linearGradient>
    <radialGradient id="cell">
      <stop offset="0" stop-color="{rgb(*CELL)}"/><stop offset="1" stop-color="{rgb(*CELL)}" stop-opacity="0"/>
    </radialGradient>
  </defs>
  <rect x="8" y="8" width="{SIZE - 16}" height="{SIZE - 16}" rx="{CORNER}" fill="url(#bg)"/>
{cells}
  <circle cx="{hx}" cy="{hy}" r="{hr + 5}" fill="none" stroke="{rgb(*OUTLINE)}" stroke-width="5"/>
  <polyline points="{pts}" fill="none" stroke="{rgb(*TRACE)}" stroke-width="7" stroke-linejoin="round" stroke-linecap="round"/>
</svg>
"""


def _rounded_square_mask(n: int) -> np.ndarray:
    """Coverage (0..1) of the rounded background square, antialiased by distance."""
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    lo, hi = 8 + CORNER, n - 8 - CORNER
    dx = np.maximum(np.maximum(lo - xx, xx - hi), 0)
    dy = np.maximum(np.maximum(lo - yy, yy - hi), 0)
    dist = np.hypot(dx, dy) - CORNER
    return np.clip(0.5 - dist, 0.0, 1.0)


def _segment_distance(xx, yy, p, q) -> np.ndarray:
    """Distance of every pixel to the segment p-q."""
    (px, py), (qx, qy) = p, q
    vx, vy = qx - px, qy - py
    t = np.clip(((xx - px) * vx + (yy - py) * vy) / max(vx * vx + vy * vy, 1e-9), 0, 1)
    return np.hypot(xx - (px + t * vx), yy - (py + t * vy))


def raster() -> Image.Image:
    """The icon drawn with numpy at SIZE x SIZE, RGBA."""
    n = SIZE
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    frac = (yy / n)[..., None]
    rgb = (1 - frac) * np.array(BG_TOP, float) + frac * np.array(BG_BOTTOM, float)
    for x, y, r, b in CELLS:  # soft glowing bodies, additive like fluorescence
        glow = np.clip(1 - np.hypot(xx - x, yy - y) / r, 0, 1) ** 1.2 * b
        rgb = rgb + glow[..., None] * np.array(CELL, float)
    hx, hy, hr, _ = CELLS[HIGHLIGHT]
    ring = np.clip(2.5 - np.abs(np.hypot(xx - hx, yy - hy) - (hr + 5)), 0, 1)
    rgb = rgb * (1 - ring[..., None]) + ring[..., None] * np.array(OUTLINE, float)
    pts = trace_points()
    dist = np.min([_segment_distance(xx, yy, p, q) for p, q in zip(pts, pts[1:])], axis=0)
    line = np.clip(4.0 - dist, 0, 1)
    rgb = rgb * (1 - line[..., None]) + line[..., None] * np.array(TRACE, float)
    alpha = _rounded_square_mask(n) * 255
    out = np.dstack([np.clip(rgb, 0, 255), alpha]).round().astype(np.uint8)
    return Image.fromarray(out, "RGBA")


def write_all(folder: Path = HERE) -> list[Path]:
    """Write mps.svg, mps.png (256), mps.ico (16..256) and mps.icns into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = raster()
    paths = [folder / f"mps.{ext}" for ext in ("svg", "png", "ico", "icns")]
    paths[0].write_text(svg(), encoding="utf-8")
    img.save(paths[1], optimize=True)
    img.save(paths[2], sizes=[(s, s) for s in (16, 24, 32, 48, 64, 128, 256)])
    # ICNS wants a 512/1024 master; upsampling the smooth master is fine at icon sizes
    img.resize((1024, 1024), Image.LANCZOS).save(paths[3])
    return paths


if __name__ == "__main__":
    for p in write_all():
        print(p)
