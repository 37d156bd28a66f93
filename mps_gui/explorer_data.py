"""What the results explorer reads from a session, read lazily and in small pieces (no Qt).

A 60-minute session (72,000 frames, 400 units) must open at once, so:

* the unit table comes from JSON and coordinates only (:func:`mps_core.curation.unit_table`);
* footprints are read a block of 64 units at a time into one sparse matrix (they are mostly
  zeros), in a background thread; the quarantined units' footprints (step 4g's A_merged) only
  for the chunks that hold them;
* a unit's traces (C, S, YrA) are read when it is selected (the stored chunk holding it,
  kept for the next unit of that chunk) and cached;
* movies are read a batch of frames of one stored chunk at a time (:class:`FrameCache`), so
  playing decodes every stored chunk once instead of once per frame;
* the correlation image and the activity colours read a bounded sample / a bounded decimated
  copy, only when the user asks for them.

The map is drawn in the crop grid of step 3a (the grid of the footprints); movies of the full
input grid (raw, motion corrected) get the footprints shifted by the crop offset.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import xarray as xr

from mps_core import movies as mv
from mps_core.curation import UnitTable, unit_table
from mps_core.registry import Cancelled

__all__ = ["ExplorerData", "Footprints", "FrameCache", "contour_lines", "correlation_image",
           "TRACE_KINDS", "MOVIE_STAGES", "BACKGROUNDS"]

UNIT_BLOCK = 64  # footprints read per block (the stored chunk)
CONTOUR_LEVEL = 0.3  # outline at this fraction of a footprint's peak
FRAME_BATCH_BYTES = 32 * 2**20  # frames read together by FrameCache
CORRELATION_BYTES = 256 * 2**20  # frames sampled for the correlation image
ACTIVITY_BYTES = 128 * 2**20  # cap of the in-memory copy used to colour units by activity
TRACE_CACHE = 96  # trace rows kept in memory
TRACE_BLOCK_BYTES = 64 * 2**20  # a stored trace chunk up to this size is kept whole
# trace kinds: (step, output, words)
TRACE_KINDS = {"C": ("8b", "C_final", "calcium C"), "S": ("8b", "S_final", "spikes S"),
               "YrA": ("8a", "YrA_final", "raw trace YrA")}
# movie stages offered (mps_core.movies names) and their words
MOVIE_STAGES = {"raw": "raw movie (2a)", "2e": "motion corrected (2e)",
                "reconstruction": "reconstruction A\u00d7C + background",
                "residual": "residual (movie \u2212 reconstruction)"}
BACKGROUNDS = {"mean": "mean image", "max": "max projection", "correlation": "correlation image"}


# ============================================================================== footprints


def contour_lines(img: np.ndarray, level: float = CONTOUR_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Outlines of ``img > level * max`` as (ys, xs) pixel-centre coordinates, pieces separated
    by NaN (one curve item draws them all); empty arrays for an empty footprint."""
    import cv2

    peak = float(np.max(img)) if img.size else 0.0
    if peak <= 0:
        return np.zeros(0), np.zeros(0)
    mask = (img > level * peak).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ys, xs = [], []
    for c in contours:
        c = c[:, 0, :].astype(np.float64)
        c = np.vstack([c, c[:1]])
        ys += [c[:, 1], [np.nan]]
        xs += [c[:, 0], [np.nan]]
    if not ys:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ys), np.concatenate(xs)


@dataclass
class Footprints:
    """Footprints of the table's units, in table row order.

    ``csr`` (rows, h*w) float32 (rows of units without a stored footprint are empty);
    ``contours[row]`` = (ys, xs); ``owner`` (h, w) int32: the table row whose footprint (scaled
    to its peak) is strongest at each pixel, -1 where none (units with traces win over
    quarantined ones); ``weight`` (h, w) float32: that scaled weight (0..1);
    ``centroid`` (rows, 2) (y, x), NaN when empty; ``has`` (rows,) bool.
    """

    shape: tuple[int, int]
    csr: sp.csr_matrix
    contours: list[tuple[np.ndarray, np.ndarray]]
    owner: np.ndarray
    weight: np.ndarray
    centroid: np.ndarray
    has: np.ndarray

    def bbox(self, row: int) -> tuple[int, int, int, int] | None:
        """(y0, y1, x0, x1) of a row's support, None when empty."""
        idx = self.csr.indices[self.csr.indptr[row]:self.csr.indptr[row + 1]]
        if idx.size == 0:
            return None
        ys, xs = np.divmod(idx, self.shape[1])
        return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _block_csr(block: np.ndarray) -> sp.csr_matrix:
    n = block.shape[0]
    return sp.csr_matrix(np.asarray(block, np.float32).reshape(n, -1))


def read_footprints(A: xr.DataArray, ids: np.ndarray | None = None,
                    cancel: threading.Event | None = None) -> tuple[np.ndarray, sp.csr_matrix]:
    """(unit ids, CSR) of ``A`` (unit_id, height, width) read one stored block at a time;
    with ``ids`` only the blocks holding those units are read."""
    all_ids = np.asarray(A.unit_id.values, np.int64)
    n, h, w = A.shape
    chunks = A.data.chunks[0] if hasattr(A.data, "chunks") and A.data.chunks else (n,)
    bounds = np.concatenate([[0], np.cumsum(chunks)])
    want = np.ones(n, bool) if ids is None else np.isin(all_ids, ids)
    got_ids, parts = [], []
    for s, e in zip(bounds[:-1], bounds[1:]):
        rows = np.flatnonzero(want[s:e]) + s
        if rows.size == 0:
            continue
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        block = np.asarray(A.data[s:e])[rows - s]
        parts.append(_block_csr(block))
        got_ids.append(all_ids[rows])
    if not parts:
        return np.zeros(0, np.int64), sp.csr_matrix((0, h * w), dtype=np.float32)
    return np.concatenate(got_ids), sp.vstack(parts, format="csr")


def _owner_map(csr: sp.csr_matrix, priority: np.ndarray, shape: tuple[int, int]):
    """Per pixel, the row with the strongest peak-scaled weight (higher priority first)."""
    h, w = shape
    coo = csr.tocoo()
    peak = np.asarray(csr.max(axis=1).todense()).ravel() if csr.shape[0] else np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.where(peak[coo.row] > 0, coo.data / peak[coo.row], 0).astype(np.float32)
    keep = val > 0.05
    rows, pix, val = coo.row[keep], coo.col[keep], val[keep]
    # sort so the strongest (by priority, then weight) comes last: fancy assignment keeps
    # the last value written for repeated pixels
    order = np.lexsort((val, priority[rows]))
    owner = np.full(h * w, -1, np.int32)
    weight = np.zeros(h * w, np.float32)
    owner[pix[order]] = rows[order]
    weight[pix[order]] = val[order]
    return owner.reshape(h, w), weight.reshape(h, w)


def build_footprints(csr: sp.csr_matrix, shape: tuple[int, int], priority: np.ndarray,
                     level: float = CONTOUR_LEVEL) -> Footprints:
    """Contours, owner map and centroids of a (rows, h*w) CSR in table row order."""
    h, w = shape
    n = csr.shape[0]
    contours, cent = [], np.full((n, 2), np.nan)
    has = np.diff(csr.indptr) > 0
    for r in range(n):
        idx = csr.indices[csr.indptr[r]:csr.indptr[r + 1]]
        if idx.size == 0:
            contours.append((np.zeros(0), np.zeros(0)))
            continue
        vals = csr.data[csr.indptr[r]:csr.indptr[r + 1]]
        ys, xs = np.divmod(idx, w)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        box = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.float32)  # 1-px margin: closed outlines
        box[ys - y0 + 1, xs - x0 + 1] = vals
        cy, cx = contour_lines(box, level)
        contours.append((cy + y0 - 1, cx + x0 - 1))
        mass = float(vals.sum())
        if mass > 0:
            cent[r] = (float(vals @ ys) / mass, float(vals @ xs) / mass)
    owner, weight = _owner_map(csr, priority, shape)
    return Footprints((h, w), csr, contours, owner, weight, cent, has)


# ============================================================================== images


def correlation_image(movie: xr.DataArray, max_bytes: int = CORRELATION_BYTES,
                      max_chunks: int = 4, cancel: threading.Event | None = None) -> np.ndarray:
    """(h, w) mean correlation of each pixel with its 8 neighbours over a sample of frames.

    The sample is consecutive frames from up to ``max_chunks`` stored chunks spread over the
    movie, ``max_bytes`` in all; each block's own mean is removed, so slow drift between the
    blocks adds no correlation. Reads a bounded amount whatever the movie's length.
    """
    T, h, w = movie.shape
    per = max(2, int(max_bytes // max(4 * h * w, 1)))
    chunks = movie.data.chunks[0] if hasattr(movie.data, "chunks") and movie.data.chunks else (T,)
    starts = np.concatenate([[0], np.cumsum(chunks)[:-1]])
    pick = np.unique(np.linspace(0, len(chunks) - 1, min(max_chunks, len(chunks)))
                     .round().astype(int))
    each = max(2, per // len(pick))
    sxx = np.zeros((h, w))
    sxy = {o: np.zeros((h - o[0], w - abs(o[1]))) for o in NEIGHBOURS}
    for c in pick:
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        s = int(starts[c])
        e = min(s + int(chunks[c]), s + each)
        x = np.asarray(movie.data[s:e], np.float32).astype(np.float64)
        if x.shape[0] < 2:
            continue
        x -= x.mean(axis=0)
        sxx += np.einsum("tij,tij->ij", x, x)
        for o in NEIGHBOURS:
            pa, pb = _pair_slices(o, h, w)
            sxy[o] += np.einsum("tij,tij->ij", x[(slice(None),) + pa], x[(slice(None),) + pb])
    return _neighbour_mean(sxx, sxy, h, w)


# neighbour offsets (dy, dx) covering each unordered pair of 8-neighbours once
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _pair_slices(offset: tuple[int, int], h: int, w: int):
    """Slices (a, b) so that pixel a[i, j] and b[i, j] are neighbours at ``offset``."""
    dy, dx = offset
    if dx >= 0:
        return (slice(0, h - dy), slice(0, w - dx)), (slice(dy, h), slice(dx, w))
    return (slice(0, h - dy), slice(-dx, w)), (slice(dy, h), slice(0, w + dx))


def _neighbour_mean(sxx: np.ndarray, sxy: dict, h: int, w: int) -> np.ndarray:
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    sd = np.sqrt(sxx)
    for o, s in sxy.items():
        pa, pb = _pair_slices(o, h, w)
        den = sd[pa] * sd[pb]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(den > 0, s / den, 0.0)
        total[pa] += r
        total[pb] += r
        count[pa] += 1
        count[pb] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


# ============================================================================== movies


class FrameCache:
    """Frames of a lazy movie, read a batch (inside one stored chunk, ``max_bytes`` at most)
    at a time: stepping or playing through a chunk decodes it once, not once per frame."""

    def __init__(self, movie: xr.DataArray, max_bytes: int = FRAME_BATCH_BYTES,
                 keep: int = 2) -> None:
        self.movie = movie
        self.n = int(movie.sizes["frame"])
        frame_bytes = 4 * int(np.prod(movie.shape[1:]))
        self.per = max(1, int(max_bytes // max(frame_bytes, 1)))
        chunks = getattr(movie.data, "chunks", None)
        sizes = chunks[0] if chunks else (self.n,)
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.keep = keep
        self.blocks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._last = -1
        self.reads = 0  # batches read (tests and measurements)
        self.lock = threading.Lock()

    def _window(self, pos: int) -> tuple[int, int]:
        c = int(np.searchsorted(self.bounds, pos, side="right") - 1)
        lo, hi = int(self.bounds[c]), int(self.bounds[c + 1])
        if pos < self._last:  # stepping backwards: read the frames before this one
            return max(lo, pos - self.per + 1), pos + 1
        return pos, min(hi, pos + self.per)

    def get(self, pos: int) -> np.ndarray:
        pos = int(min(max(int(pos), 0), self.n - 1))
        with self.lock:
            for (s, e), block in self.blocks.items():
                if s <= pos < e:
                    self.blocks.move_to_end((s, e))
                    self._last = pos
                    return block[pos - s]
            s, e = self._window(pos)
            block = mv.read_frames(self.movie, np.arange(s, e))
            self.reads += 1
            self.blocks[(s, e)] = block
            while len(self.blocks) > self.keep:
                self.blocks.popitem(last=False)
            self._last = pos
            return block[pos - s]


# ============================================================================== the session


def _time_axis(arr: xr.DataArray) -> tuple[np.ndarray, np.ndarray, str]:
    """(original frame numbers, seconds, axis words) of a (.., frame) array's frames."""
    frames = np.asarray(arr.frame.values, np.int64)
    t = None
    if "time_s" in arr.coords and arr["time_s"].dims == ("frame",):
        t = np.asarray(arr["time_s"].values, np.float64)
    if t is not None and t.size and np.all(np.isfinite(t)):
        return frames, t - t[0], "time (s)"
    fps = mv.frame_rate(arr) if t is not None else mv.DEFAULT_FPS
    words = f"time (s, frame number / {fps:g} fps: the recording has no time stamps)"
    return frames, (frames - (frames[0] if frames.size else 0)) / fps, words


class ExplorerData:
    """The session as the explorer sees it; every method reads only what it returns."""

    def __init__(self, store) -> None:
        self.store = store
        self.table: UnitTable = unit_table(store)
        self.rows = self.table.index()
        A = store.load("7f", "A_refined")
        self.shape = (int(A.sizes["height"]), int(A.sizes["width"]))
        self.crop_offset = self.table.crop_offset
        self._traces: dict[str, xr.DataArray] = {}
        for kind, (step, name, _) in TRACE_KINDS.items():
            if store.has(step, name):
                self._traces[kind] = store.load(step, name)
        ref = self._traces.get("C")
        if ref is None:
            ref = next(iter(self._traces.values()), None)
        if ref is not None:
            self.frames, self.times, self.time_words = _time_axis(ref)
        else:
            self.frames = np.zeros(0, np.int64)
            self.times, self.time_words = np.zeros(0), "time (s)"
        self._trace_rows = {k: {int(u): i for i, u in enumerate(a.unit_id.values)}
                            for k, a in self._traces.items()}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._blocks: dict[str, tuple[int, np.ndarray]] = {}  # last stored chunk per kind
        self._images: dict[str, np.ndarray] = {}
        self._movies: dict[str, xr.DataArray] = {}
        self._activity: tuple[np.ndarray, np.ndarray] | None = None
        self.lock = threading.Lock()

    # -- units
    def trace_kinds(self) -> list[str]:
        return list(self._traces)

    def is_cached(self, kind: str, uid: int) -> bool:
        """Whether :meth:`trace` returns without reading the store (or the unit has none)."""
        if kind not in self._traces or int(uid) not in self._trace_rows[kind]:
            return True
        with self.lock:
            if (kind, int(uid)) in self._cache:
                return True
            held = self._blocks.get(kind)
        if held is None:
            return False
        i = self._trace_rows[kind][int(uid)]
        return held[0] <= i < held[0] + held[1].shape[0]

    def trace(self, kind: str, uid: int) -> np.ndarray | None:
        """One unit's trace (float32, on :attr:`frames`), None when the unit has none."""
        if kind not in self._traces:
            return None
        i = self._trace_rows[kind].get(int(uid))
        if i is None:
            return None
        key = (kind, int(uid))
        with self.lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        arr = self._traces[kind]
        row = self._row(kind, i)
        if arr.sizes["frame"] != self.frames.size:  # align on frame numbers
            have = np.asarray(arr.frame.values)
            out = np.full(self.frames.size, np.nan, np.float32)
            pos = np.searchsorted(have, self.frames)
            ok = (pos < have.size) & (have[np.minimum(pos, have.size - 1)] == self.frames)
            out[ok] = row[pos[ok]]
            row = out
        with self.lock:
            self._cache[key] = row
            while len(self._cache) > TRACE_CACHE:
                self._cache.popitem(last=False)
        return row

    def _row(self, kind: str, i: int) -> np.ndarray:
        """Row ``i`` of a trace array. The stored chunk holding it is decoded anyway, so the
        whole chunk (<= 32 MB as the pipeline stores traces) is kept: the next unit of the
        same chunk costs nothing."""
        arr = self._traces[kind]
        chunks = arr.data.chunks[0] if hasattr(arr.data, "chunks") and arr.data.chunks else \
            (arr.shape[0],)
        bounds = np.concatenate([[0], np.cumsum(chunks)])
        c = int(np.searchsorted(bounds, i, side="right") - 1)
        s, e = int(bounds[c]), int(bounds[c + 1])
        if (e - s) * arr.shape[1] * 4 > TRACE_BLOCK_BYTES:
            return np.array(arr.data[i], np.float32)
        with self.lock:
            held = self._blocks.get(kind)
        if held is None or held[0] != s:
            held = (s, np.asarray(arr.data[s:e], np.float32))
            with self.lock:
                self._blocks[kind] = held
        return held[1][i - s].copy()

    def load_footprints(self, cancel: threading.Event | None = None) -> Footprints:
        """Every unit's footprint (the slow part of opening: run it in a thread)."""
        h, w = self.shape
        n = len(self.table)
        A = self.store.load("7f", "A_refined")
        ids, csr = read_footprints(A, cancel=cancel)
        blocks = {int(u): csr[i] for i, u in enumerate(ids)}
        q = self.table.unit_id[self.table.origin == "quarantined"]
        if q.size and self.store.has("4g", "A_merged"):
            Am = self.store.load("4g", "A_merged")
            if (Am.sizes["height"], Am.sizes["width"]) == (h, w):
                qids, qcsr = read_footprints(Am, q, cancel=cancel)
                blocks.update({int(u): qcsr[i] for i, u in enumerate(qids)
                               if int(u) not in blocks})
        empty = sp.csr_matrix((1, h * w), dtype=np.float32)
        rows = [blocks.get(int(u), empty) for u in self.table.unit_id]
        full = sp.vstack(rows, format="csr") if rows else sp.csr_matrix((0, h * w),
                                                                        dtype=np.float32)
        priority = np.where(self.table.origin == "quarantined", 0,
                            np.where(self.table.origin == "removed", 1, 2))
        fp = build_footprints(full, (h, w), priority[:n] if n else np.zeros(0, int))
        # the table's centroids come from 8c; fill those it lacks (quarantined units)
        miss = ~np.isfinite(self.table.centroid_y)
        self.table.centroid_y[miss] = fp.centroid[miss, 0]
        self.table.centroid_x[miss] = fp.centroid[miss, 1]
        return fp

    # -- images
    def _crop(self, img: np.ndarray) -> np.ndarray:
        h, w = self.shape
        if img.shape == (h, w):
            return img
        y0, x0 = self.crop_offset
        return img[y0:y0 + h, x0:x0 + w]

    def background_names(self) -> list[str]:
        out = []
        if self.store.has("3a", "mean_frame"):
            out.append("mean")
        if self.store.has("3a", "max_projection"):
            out.append("max")
        if self.store.has("3a", "movie_cropped"):
            out.append("correlation")
        return out

    def background(self, name: str, cancel: threading.Event | None = None) -> np.ndarray:
        """The (h, w) background image ``name`` of :data:`BACKGROUNDS` in the crop grid
        (the correlation image reads a bounded sample of the cropped movie: call it in a
        thread)."""
        if name not in BACKGROUNDS:
            raise ValueError(f"background '{name}': allowed values are {', '.join(BACKGROUNDS)}")
        if name in self._images:
            return self._images[name]
        if name == "correlation":
            img = correlation_image(self.store.load("3a", "movie_cropped"), cancel=cancel)
        else:
            out = {"mean": "mean_frame", "max": "max_projection"}[name]
            img = self._crop(np.asarray(self.store.load("3a", out).values, np.float32))
        self._images[name] = img
        return img

    # -- movies
    def movie_stages(self) -> list[str]:
        out = []
        for stage, info in mv.STAGES.items():
            if stage not in MOVIE_STAGES:
                continue
            if info.grid == "full" and self.store.has(info.step, info.output):
                out.append(stage)
            elif info.grid == "crop" and self.store.has("3a", "movie_cropped") and \
                    self.store.has("8b", "C_final"):
                out.append(stage)
        return out

    def movie(self, stage: str) -> xr.DataArray:
        if stage not in self._movies:
            self._movies[stage] = mv.open_stage(self.store, stage)
        return self._movies[stage]

    # -- activity
    def activity(self, cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(frame numbers, (rows, k) float16 in 0..1): every unit's C scaled to its peak, on
        every ``step``-th frame (the max over each run of ``step`` frames) so the copy stays
        under :data:`ACTIVITY_BYTES`; rows in table order (quarantined: zeros)."""
        if self._activity is not None:
            return self._activity
        C = self._traces.get("C")
        n = len(self.table)
        if C is None:
            return self.frames, np.zeros((n, self.frames.size), np.float16)
        nu, T = C.shape
        step = max(1, int(np.ceil(nu * T * 4 / ACTIVITY_BYTES)))
        k = -(-T // step)
        out = np.zeros((n, k), np.float16)
        rows = self._trace_rows["C"]
        chunks = C.data.chunks[0] if hasattr(C.data, "chunks") and C.data.chunks else (nu,)
        start = 0
        table_row = {int(u): i for i, u in enumerate(self.table.unit_id)}
        inv = {i: u for u, i in rows.items()}
        for size in chunks:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            block = np.asarray(C.data[start:start + size], np.float32)
            pad = k * step - T
            if pad:
                block = np.pad(block, ((0, 0), (0, pad)), constant_values=np.nan)
            red = np.nanmax(block.reshape(size, k, step), axis=2)
            peak = np.nanmax(red, axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                red = np.where(peak > 0, np.clip(red / peak, 0, 1), 0)
            for j in range(size):
                r = table_row.get(inv[start + j])
                if r is not None:
                    out[r] = red[j]
            start += size
        frames = np.asarray(C.frame.values, np.int64)[::step]
        self._activity = (frames, out)
        return self._activity

    # -- frames and time
    def time_of(self, frame_number: int) -> float:
        """Seconds (the trace axis) of an original frame number (interpolated between the
        traces' frames: removed frames have a time too)."""
        if not self.frames.size:
            return 0.0
        return float(np.interp(frame_number, self.frames, self.times))

    def frame_at(self, seconds: float) -> int:
        """The traces' original frame number nearest to ``seconds``."""
        if not self.frames.size:
            return 0
        i = int(np.clip(np.searchsorted(self.times, seconds), 0, self.frames.size - 1))
        if i > 0 and abs(self.times[i - 1] - seconds) <= abs(self.times[i] - seconds):
            i -= 1
        return int(self.frames[i])
