"""MP4 exports of a session's movies: one stage, two stages side by side, footprint outlines.

The MP4 is written by OpenCV's ``VideoWriter`` with the MPEG-4 Part 2 codec ('mp4v') that
opencv-python-headless ships with its own FFmpeg, so nothing is downloaded at run time and no
extra package is needed (H.264 would need an external encoder). Frames are streamed batch by
batch (:func:`mps_core.movies.iter_frames`): memory stays bounded for any recording length.

Every panel is mapped to 8 bits with its own value limits (given, or robust percentiles of
a sample of frames; symmetric around 0 for residuals), then through a colour map. Frame sizes
are padded to even numbers with black (MPEG-4 encoders drop an odd last row / column). The
video is written under a temporary name and renamed at the end, so an interrupted or failed
export leaves no half file.

Outlines: each unit's footprint is thresholded at ``contour_level`` x its own maximum; the
boundary pixels of that region (the region minus its erosion) are painted in one colour. For
full-frame stages (raw, 2b, 2e) the cropped footprints are placed back with 3a's crop offset.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from . import movies as mv

FOURCC = "mp4v"
GAP_PX = 4  # black columns between side-by-side panels
DEFAULT_CONTOUR_RGB = (255, 40, 40)


@dataclass
class Panel:
    """One stage as drawn in the video."""

    stage: str
    movie: xr.DataArray
    positions: np.ndarray
    vmin: float
    vmax: float
    lut: np.ndarray
    outline: np.ndarray | None = None  # (h, w) bool
    x: int = 0  # left edge in the canvas

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.movie.sizes["height"]), int(self.movie.sizes["width"])


@dataclass
class VideoResult:
    path: Path
    n_frames: int
    width: int
    height: int
    fps: float
    stages: list[str]
    limits: dict[str, tuple[float, float]]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        lim = ", ".join(f"{s} [{a:.4g}, {b:.4g}]" for s, (a, b) in self.limits.items())
        return (f"wrote {self.path} ({self.n_frames} frames of {self.width}x{self.height} at "
                f"{self.fps:.3g} fps, {self.seconds:.1f} s; limits {lim})")


# ============================================================================== outlines


def unit_outline(a: np.ndarray, level: float) -> np.ndarray:
    """Boundary pixels (bool, a's shape) of the region where ``a >= level * max(a)``."""
    peak = float(a.max()) if a.size else 0.0
    if peak <= 0:
        return np.zeros(a.shape, bool)
    region = a >= level * peak
    return region & ~ndimage.binary_erosion(region, border_value=0)


def outline_image(A: xr.DataArray, level: float = 0.3, unit_block: int = 64) -> np.ndarray:
    """(height, width) bool union of every unit's outline; footprints read in unit blocks and
    each outline found inside its own bounding box (cheap for many small units)."""
    if not 0 < level < 1:
        raise ValueError(f"contour_level {level}: must be between 0 and 1 (a fraction of each "
                         f"footprint's maximum)")
    n, h, w = A.shape
    out = np.zeros((h, w), bool)
    for s in range(0, n, unit_block):
        block = np.asarray(A.data[s:s + unit_block], np.float32)
        for a in block:
            ys, xs = np.nonzero(a > 0)
            if ys.size == 0:
                continue
            y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, h)
            x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, w)
            out[y0:y1, x0:x1] |= unit_outline(a[y0:y1, x0:x1], level)
    return out


def outline_for(store, movie: xr.DataArray, level: float) -> tuple[np.ndarray, str]:
    """The final units' outlines in ``movie``'s grid (crop offset applied for full frames)."""
    A, note = mv.final_footprints(store)
    crop_img = outline_image(A, level)
    if movie.attrs.get("grid") != "full":
        if crop_img.shape != tuple(movie.shape[1:]):
            raise ValueError(f"footprints {crop_img.shape} do not match the "
                             f"{movie.attrs.get('stage')} movie {tuple(movie.shape[1:])}; rerun "
                             f"the steps after 3a")
        return crop_img, note
    y0, x0, _ = mv.crop_offset(store)
    H, W = movie.shape[1:]
    h, w = crop_img.shape
    if y0 + h > H or x0 + w > W:
        raise ValueError(f"footprints ({h}x{w}) at the crop offset ({y0}, {x0}) do not fit the "
                         f"{H}x{W} frames of stage {movie.attrs.get('stage')}; rerun the steps "
                         f"after 3a")
    full = np.zeros((H, W), bool)
    full[y0:y0 + h, x0:x0 + w] = crop_img
    return full, note


# ============================================================================== panels


def _limits(movie: xr.DataArray, positions: np.ndarray, vmin: float | None,
            vmax: float | None) -> tuple[float, float]:
    if vmin is not None and vmax is not None:
        lo, hi = float(vmin), float(vmax)
    else:
        rlo, rhi = mv.robust_limits(movie, positions,
                                    symmetric=movie.attrs.get("stage") == "residual")
        lo = rlo if vmin is None else float(vmin)
        hi = rhi if vmax is None else float(vmax)
    if not hi > lo:
        raise ValueError(f"value limits for stage {movie.attrs.get('stage')}: vmax ({hi:g}) must "
                         f"be greater than vmin ({lo:g})")
    return lo, hi


def _aligned(second: xr.DataArray, frames: np.ndarray) -> np.ndarray:
    """Positions in ``second`` of the frame numbers ``frames`` (all must be present)."""
    f2 = np.asarray(second.frame.values)
    order = np.argsort(f2)
    idx = np.searchsorted(f2, frames, sorter=order)
    return order[np.clip(idx, 0, len(f2) - 1)]


def _panels(store, stages: Sequence[str], frames, cmap: str, vmin, vmax, contours: bool,
            contour_level: float, notes: list[str]) -> list[Panel]:
    lut = mv.colormap_lut(cmap)
    movies = [mv.open_stage(store, s) for s in stages]
    pos0 = mv.select_positions(movies[0].frame.values, frames, f"stage '{stages[0]}'")
    chosen = np.asarray(movies[0].frame.values)[pos0]
    for m, s in zip(movies[1:], stages[1:]):  # side by side: the frames both stages hold
        chosen = chosen[np.isin(chosen, m.frame.values)]
        if chosen.size == 0:
            raise ValueError(f"stages '{stages[0]}' and '{s}' share no frame in the range "
                             f"'{mv._spec_text(frames)}'")
    if chosen.size < pos0.size:
        notes.append(f"{pos0.size - chosen.size} frames absent from another stage were left out")
    panels, x = [], 0
    for m, s in zip(movies, stages):
        pos = _aligned(m, chosen)
        lo, hi = _limits(m, pos, vmin, vmax)
        outline = None
        if contours:
            outline, note = outline_for(store, m, contour_level)
            notes.append(f"outlines of {note} on {s}")
        p = Panel(s, m, pos, lo, hi, lut, outline, x)
        panels.append(p)
        x += p.shape[1] + GAP_PX
    return panels


def _canvas_size(panels: list[Panel]) -> tuple[int, int]:
    h = max(p.shape[0] for p in panels)
    w = panels[-1].x + panels[-1].shape[1]
    return h + h % 2, w + w % 2  # even sizes: MPEG-4 drops an odd row / column


# ============================================================================== drawing


def render(panel: Panel, frames: np.ndarray, color_bgr: tuple[int, int, int]) -> np.ndarray:
    """(t, h, w, 3) BGR frames of one panel: limits, colour map, outlines."""
    rgb = mv.colorize(mv.to_uint8(frames, panel.vmin, panel.vmax), panel.lut)
    if panel.outline is not None:
        rgb[:, panel.outline] = color_bgr
    return rgb


def _label(canvas: np.ndarray, text: str, x: int, panel_width: int) -> None:
    """White text with a dark edge at the top-left corner of a panel (every frame)."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = float(np.clip(panel_width / 400, 0.3, 1.2))
    (_, th), _ = cv2.getTextSize(text, font, scale, 1)
    org = (x + 4, th + 4)
    for frame in canvas:
        cv2.putText(frame, text, org, font, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(frame, text, org, font, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _read_batch(panels: list[Panel], idx: np.ndarray) -> list[np.ndarray]:
    return [mv.read_frames(p.movie, p.positions[idx]) for p in panels]


def _batches(panels: list[Panel], max_bytes: int) -> list[np.ndarray]:
    """Index batches into the selection, following the first panel's stored chunks."""
    first = panels[0]
    per_frame = sum(4 * p.shape[0] * p.shape[1] for p in panels)
    share = max_bytes * 4 * first.shape[0] * first.shape[1] // max(per_frame, 1)
    out = mv.frame_batches(first.movie, first.positions, max(share, 1))
    lookup = np.searchsorted(first.positions, np.concatenate(out)) if out else []
    sizes = np.cumsum([len(b) for b in out])[:-1]
    return np.split(np.asarray(lookup), sizes) if out else []


# ============================================================================== writing


class Mp4Writer:
    """OpenCV's MP4 writer on a temporary name; ``close()`` renames it into place.

    Encoding runs in its own thread (OpenCV releases the GIL), so it overlaps the colour
    mapping of the next batch; at most one batch waits in the queue."""

    def __init__(self, path: Path, fps: float, size_hw: tuple[int, int]):
        import cv2

        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"video file '{self.path}': the name must end in .mp4")
        if not fps > 0:
            raise ValueError(f"fps {fps}: must be > 0")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the suffix stays .mp4 so FFmpeg picks the MP4 container
        self.tmp = self.path.with_name(f".{self.path.stem}.partial-{uuid.uuid4().hex[:8]}.mp4")
        h, w = size_hw
        self.size = (w, h)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*FOURCC), float(fps),
                                      self.size, True)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise RuntimeError(f"OpenCV could not open an MP4 ({FOURCC}) writer for {self.path}")
        self.n = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._encode, name="mp4-writer", daemon=True)
        self._thread.start()

    def _encode(self) -> None:
        while True:
            frames = self._queue.get()
            if frames is None:
                return
            if self._error is None:  # after an error, keep draining so put() never blocks
                try:
                    for f in frames:
                        self.writer.write(f)
                except BaseException as e:  # noqa: BLE001 -- re-raised in the caller
                    self._error = e

    def write(self, frames_bgr: np.ndarray) -> None:
        """Queue (t, h, w, 3) BGR uint8 frames for encoding."""
        if self._error is not None:
            raise self._error
        self._queue.put(np.ascontiguousarray(frames_bgr))
        self.n += len(frames_bgr)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.writer.release()

    def close(self) -> Path:
        self._stop()
        if self._error is not None:
            self.tmp.unlink(missing_ok=True)
            raise self._error
        if not self.tmp.exists() or self.tmp.stat().st_size == 0:
            raise RuntimeError(f"OpenCV wrote no video data for {self.path}")
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        self._stop()
        self.tmp.unlink(missing_ok=True)


def export_video(store, path: Path, stage: str, *, compare: str | None = None,
                 frames: str | slice | None = None, cmap: str = "gray",
                 vmin: float | None = None, vmax: float | None = None, fps: float | None = None,
                 contours: bool = False, contour_level: float = 0.3,
                 contour_color: tuple[int, int, int] = DEFAULT_CONTOUR_RGB,
                 labels: bool | None = None, max_bytes: int = mv.BATCH_BYTES,
                 progress: mv.Progress | None = None,
                 cancel: threading.Event | None = None) -> VideoResult:
    """Write an MP4 of ``stage`` (or of ``stage`` and ``compare`` side by side).

    ``frames`` "START:STOP:STEP" of original frame numbers; ``cmap`` one of
    :data:`mps_core.movies.COLORMAPS`; ``vmin`` / ``vmax`` value limits (default robust
    percentiles per panel); ``fps`` default the recording's (frame steps play faster);
    ``contours`` outlines the final units at ``contour_level`` x each footprint's maximum in
    ``contour_color`` (RGB); ``labels`` writes the stage names (default: when side by side).
    ``progress(fraction, message)`` is called per batch; setting ``cancel`` stops the export
    (:class:`~mps_core.registry.Cancelled`) and removes the partial file.
    """
    t0 = time.time()
    report = progress or (lambda f, m: None)
    stages = [stage] + ([compare] if compare else [])
    for s in stages:
        mv._check_stage(s)
    if len(contour_color) != 3 or not all(0 <= int(c) <= 255 for c in contour_color):
        raise ValueError(f"contour_color {contour_color}: give three values 0..255 (R, G, B)")
    color_bgr = tuple(int(c) for c in contour_color[::-1])
    notes: list[str] = []
    report(0.0, "value limits and outlines")
    panels = _panels(store, stages, frames, cmap, vmin, vmax, contours, contour_level, notes)
    rate = float(fps) if fps else mv.frame_rate(panels[0].movie)
    H, W = _canvas_size(panels)
    show_labels = (compare is not None) if labels is None else labels
    batches = _batches(panels, max_bytes)
    total = len(panels[0].positions)
    writer = Mp4Writer(path, rate, (H, W))
    try:
        done = 0
        for idx, blocks in mv.prefetched(lambda i: _read_batch(panels, i), batches, cancel):
            canvas = np.zeros((len(idx), H, W, 3), np.uint8)
            for p, block in zip(panels, blocks):
                h, w = p.shape
                canvas[:, :h, p.x:p.x + w] = render(p, block, color_bgr)
                if show_labels:
                    _label(canvas, p.stage, p.x, w)
            mv.check_cancel(cancel)
            writer.write(canvas)
            done += len(idx)
            report(done / total, f"frame {done} of {total}")
        out = writer.close()
    except BaseException:
        writer.abort()
        raise
    return VideoResult(out, writer.n, W, H, rate, stages,
                       {p.stage: (p.vmin, p.vmax) for p in panels}, time.time() - t0, notes)


def read_mp4(path: Path) -> np.ndarray:
    """Decode every frame of a (small) video as (t, h, w, 3) BGR uint8 (tests, checks)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            out.append(frame)
    finally:
        cap.release()
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
