"""Greedy seeding with residual subtraction: find cells one at a time, brightest first.

Why
---
Seeding from NNDSVD components + watershed (steps 3b-4e) misses cells on dense fields: one
component mixes many cells and a dim cell next to a bright one never becomes its own region.
This module finds cells the other way round (the idea behind CNMF-E's initialisation, Zhou et
al., eLife 2018; own implementation): pick the pixel that looks most like the centre of an
active cell, estimate that cell's footprint and trace, *subtract it from the movie*, update the
picking maps around it, and repeat.  Because each found cell is removed, a dim neighbour is
judged on what is left and is picked later.  The result is meant to *supplement* the existing
seeds (the caller decides which greedy seeds are new).

Method (d = cell diameter in px)
--------------------------------
1. Two working movies per tile (``_prepare``):

   * ``R`` (residual, used for footprints and traces): each frame minus a Gaussian blur of
     sigma ``3 d`` (removes the smooth neuropil / background), minus its per-pixel temporal
     median (baseline fluorescence).
   * ``F`` (used only to *pick*): a difference of Gaussians (sigma ``d/4`` minus sigma ``d``,
     keeps cell-sized blobs) minus its temporal median, then a moving average of
     ``smooth_frames`` frames (transients last several frames, shot noise does not).
     Noise per pixel ``sn`` = robust SD of frame-to-frame differences of the unsmoothed F,
     divided by sqrt(smooth_frames).

2. Picking maps: ``pnr = max_t F / sn`` (peak-to-noise) and ``corr`` = mean Pearson
   correlation of a pixel with its 8 neighbours after zeroing samples below ``3 sn`` (so that
   noise does not correlate; only shared transients do).  A pixel can be picked when
   ``pnr >= min_pnr``, ``corr >= min_corr`` and it is not in ``exclude``; the pick is the
   maximum of ``pnr * corr``.

3. For a pick at (y, x): trace ``c`` = F averaged over the 3 x 3 neighbourhood; footprint = the
   non-negative regression coefficient of every pixel of ``R`` in a patch ``4 d`` wide on ``c``
   (lightly smoothed, sigma 1 px), cut at ``0.05`` of its peak near the seed and reduced to
   the connected part containing that peak.  Picks whose footprint is smaller than 10 % of a
   cell's area are rejected (the pixel is blocked, nothing is subtracted).  The trace is then
   re-fitted as the least-squares projection of R on the footprint (so trace x footprint has
   the movie's scale).

4. Subtract ``a (x) c`` from R, and ``DoG(a) (x) smooth(c)`` from F (the band-pass and the
   moving average are linear, so this is exactly the cell's contribution to F) within
   ``F_UPDATE`` (1.5) large sigmas of the footprint's bounding box; recompute pnr there and the
   correlation map within ``CORR_UPDATE`` (0.5) large sigmas (further out the change is a small
   fraction of the cell's blurred light; on ca1 the seeds are the same as with 3 sigmas).
   Block the picked pixel.  Repeat until nothing passes the thresholds (or ``max_seeds``).

5. Joint refinement (``_refine_footprints``): ``refine_iterations`` rounds of HALS-like
   block-coordinate updates of all footprints at once, traces fixed, minimising
   ``||R0 - A C||^2`` with ``A >= 0``, each footprint restricted to a disk of ``1.5 d`` around
   its seed (R0 = R before any subtraction).  Greedy footprints of touching cells overlap
   (each regression sees its neighbours' light); the joint fit shares those pixels out.  Each
   footprint is finally cut to its connected part around the seed.  R0 is never stored:
   ``C R0 = C R + (C C^T) A_greedy`` because R = R0 - A_greedy C exactly.

Binning (``binned_movie``) averages ``k`` consecutive frames so that T' <= ``max_frames``: the
maps and regressions only need events, which last longer than a few frames, and binning
divides the cost of everything above by k.  Binning is itself a k-frame moving average, so
on a binned movie use ``smooth_frames = smooth_frames_for_bin(k)`` = ``max(1, round(5 / k))``
(about the same 5-frame smoothing window in real time as on the full-rate movie).

Tiling (``greedy_seeds_tiled``): the frame is cut into a grid of *core* squares of about
``20 d``, each processed with a margin of ``3 d`` on every side (a seed near the core edge then
sees its whole 4 d patch and 1.5 d disk).  Seeds may be picked in the core and up to ``1.5 d``
into the margin (so a cell just outside the core is explained and subtracted before its
neighbour inside the core is fitted), but only seeds whose centre lies in the core are kept.
Working copies are tile-sized.  Tiles may run in parallel threads (``workers``); the result
is taken in grid order and does not depend on it.

Costs (per tile of h x w px, T' frames, n picks)
------------------------------------------------
* memory: about 3 float32 tile movies (R, F and one temporary) + one (n, h w) float32 matrix
  for the refinement, per tile running at once.  Measured on a 608 x 608 x 600 binned movie (16 tiles of <= 212 px):
  ~0.7 GB peak beyond the binned movie (incl. the interpreter).
* time: per tile, 3 per-frame Gaussian blurs and 3 temporal medians, O(T' h w) each (~35 %);
  per pick O(T' x (d + 3 d)^2) for the F update, footprint regression and correlation-map
  update (~55 %, it dominates on dense fields); the refinement O(iterations x n x neighbours x
  disk area) (~10 %).  Measured: 2000 seeds on a 608 x 608 x 600 raw movie in ~106 s on one
  core of a loaded 2-core machine; ca1 (256 x 256 x 1000, 200 seeds) ~18 s.  Cortex bench
  (256 x 256, 500 bins, 4 tiles): 7.7 s in one thread, 4.4 s in two.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np
import scipy.sparse as sp
from scipy import ndimage

# Fixed method constants (chosen on the simulated recordings ca1 / cortex; see module doc).
BAND_LOW = 0.25  # DoG small sigma, x d
BAND_HIGH = 1.0  # DoG large sigma, x d
BACKGROUND_SIGMA = 3.0  # background blur removed from R, x d
PATCH_WIDTH = 4.0  # footprint regression patch, x d
FOOTPRINT_CUT = 0.05  # footprint support: >= this fraction of its peak
DISK_RADIUS = 1.5  # refinement support radius, x d
MIN_AREA = 0.1  # minimum footprint area, x cell area
F_UPDATE = 1.5  # after a pick, F is updated within this many large DoG sigmas of the footprint
CORR_UPDATE = 0.5  # ... and the correlation map within this many
CORR_THRESHOLD_SD = 3.0  # samples below this many noise SDs are zeroed for the correlation map
TILE_CORE = 20.0  # tile core width, x d
TILE_MARGIN = 3.0  # tile margin, x d
PICK_MARGIN = 1.5  # picks allowed this far into the margin, x d
FULL_RATE_SMOOTH = 5  # moving-average length (frames) on a full-rate movie
BIN_BATCH_BYTES = 512 * 2**20  # input frames averaged per batch of binned_movie
TILE_COPIES = 4.5  # bytes a tile's search holds, x the tile's own (measured: 3.3 + the tile)


@dataclass
class GreedyResult:
    """Greedy seeds.

    footprints: (n, h, w) float32 (``greedy_seeds``) or scipy.sparse CSR (n, H*W) float32
        (``greedy_seeds_tiled``); non-negative, each inside a 1.5 d disk around its centre and
        connected.
    traces: (n, T') float32, on the scale of the (binned) movie x footprint.
    centres: (n, 2) float (y, x) pixel where the seed was picked.
    pnr, corr: (n,) the peak-to-noise ratio and local correlation at that pixel when picked.
    """

    footprints: np.ndarray | sp.csr_matrix
    traces: np.ndarray
    centres: np.ndarray
    pnr: np.ndarray
    corr: np.ndarray

    def __len__(self) -> int:
        return len(self.centres)


# ----------------------------------------------------------------------------------- binning
def smooth_frames_for_bin(k: int, full_rate: int = FULL_RATE_SMOOTH) -> int:
    """Moving-average length on a movie binned by k with the same real-time window."""
    return max(1, int(round(full_rate / max(int(k), 1))))


def bin_shape(n_frames: int, max_frames: int) -> tuple[int, int]:
    """(k, number of bins) of ``binned_movie``: bins of ``k = ceil(T / max_frames)`` frames."""
    k = math.ceil(n_frames / max_frames)
    return k, math.ceil(n_frames / k)


def binned_movie(movie, max_frames: int = 1000, compute: Callable | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 allocate: Callable[[tuple[int, int, int], int], Any] | None = None,
                 ) -> tuple[Any, int]:
    """Mean of consecutive bins of ``k = ceil(T / max_frames)`` frames, as float32 (T', H, W).

    ``movie``: dask array (T, H, W) of any real dtype (a numpy / zarr array is wrapped).  One
    pass, in batches of about 512 MB of input frames; within a batch the bins are averaged by
    parallel dask tasks of whole bins (the movie is rechunked to bin boundaries), so memory is
    one batch plus the output.  The last bin averages only its own frames.  ``compute`` turns a
    dask array into numpy (default ``.compute()``); ``progress(done_frames, total_frames)`` is
    called after every batch.  ``allocate(shape, bins_per_write)`` gives the float32 array
    the bins are written into, whole batches of ``bins_per_write`` bins at a time (default: a
    numpy array; a zarr array on disk keeps the binned movie out of memory).
    Returns (binned movie, k).
    """
    import dask.array as da

    if not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise ValueError(f"binned_movie: max_frames must be an integer >= 1, got {max_frames!r}")
    if not isinstance(movie, da.Array):
        movie = da.asarray(movie)
    if movie.ndim != 3:
        raise ValueError(f"binned_movie: movie must be 3-D (T, H, W), got shape {movie.shape}")
    if not (np.issubdtype(movie.dtype, np.integer) or np.issubdtype(movie.dtype, np.floating)
            or movie.dtype == bool):
        raise ValueError(f"binned_movie: movie must have a real dtype, got {movie.dtype}")
    T, H, W = movie.shape
    if T < 1:
        raise ValueError("binned_movie: movie has no frames")
    compute = compute or (lambda x: x.compute())
    k, n_bins = bin_shape(T, max_frames)
    frame_bytes = H * W * max(movie.dtype.itemsize, 4)
    # tasks of whole bins near the movie's own chunk length, batches of ~512 MB of frames
    task_bins = max(1, round(float(np.median(movie.chunks[0])) / k))
    batch_bins = max(task_bins, (BIN_BATCH_BYTES // frame_bytes) // k // task_bins * task_bins)
    out = (allocate((n_bins, H, W), batch_bins) if allocate is not None
           else np.empty((n_bins, H, W), np.float32))
    for b0 in range(0, n_bins, batch_bins):
        b1 = min(n_bins, b0 + batch_bins)
        part = movie[b0 * k:min(T, b1 * k)].rechunk({0: task_bins * k, 1: -1, 2: -1})
        binned = part.map_blocks(_bin_block, k, dtype=np.float32,
                                 chunks=(tuple(math.ceil(n / k) for n in part.chunks[0]), H, W))
        out[b0:b1] = np.asarray(compute(binned))
        if progress is not None:
            progress(min(T, b1 * k), T)
    return out, k


def _bin_block(block: np.ndarray, k: int) -> np.ndarray:
    """Means of consecutive k-frame bins of one block (its last bin may be shorter)."""
    n = len(block)
    full = n // k * k
    parts = []
    if full:
        parts.append(block[:full].reshape(full // k, k, *block.shape[1:]).mean(axis=1, dtype=np.float64))
    if full < n:
        parts.append(block[full:].mean(axis=0, dtype=np.float64)[None])
    return np.concatenate(parts).astype(np.float32)


def _check_params(cell_diameter, min_pnr, min_corr, max_seeds, smooth_frames, refine_iterations):
    if not np.isfinite(cell_diameter) or cell_diameter <= 0:
        raise ValueError(f"greedy_seeds: cell_diameter must be a finite number > 0 px, got {cell_diameter!r}")
    if not np.isfinite(min_pnr) or min_pnr <= 0:
        raise ValueError(f"greedy_seeds: min_pnr must be > 0, got {min_pnr!r}")
    if not (-1.0 <= min_corr <= 1.0):
        raise ValueError(f"greedy_seeds: min_corr must be in [-1, 1], got {min_corr!r}")
    if max_seeds is not None and (int(max_seeds) != max_seeds or max_seeds < 0):
        raise ValueError(f"greedy_seeds: max_seeds must be None or an integer >= 0, got {max_seeds!r}")
    if int(smooth_frames) != smooth_frames or smooth_frames < 1:
        raise ValueError(f"greedy_seeds: smooth_frames must be an integer >= 1, got {smooth_frames!r}")
    if int(refine_iterations) != refine_iterations or refine_iterations < 0:
        raise ValueError(f"greedy_seeds: refine_iterations must be an integer >= 0, got {refine_iterations!r}")


def _check_movie(Y, name: str) -> None:
    if getattr(Y, "ndim", None) != 3:
        raise ValueError(f"{name}: Y must be a 3-D (T, h, w) array, got shape {getattr(Y, 'shape', None)}")
    if Y.shape[0] < 2 or Y.shape[1] < 3 or Y.shape[2] < 3:
        raise ValueError(f"{name}: Y needs >= 2 frames and >= 3 x 3 pixels, got shape {Y.shape}")


# ------------------------------------------------------------------------------ image helpers
def _blur_frames(X: np.ndarray, sigma: float, out: np.ndarray | None = None,
                 threads: int = 1) -> np.ndarray:
    """Per-frame Gaussian blur (edge pixels replicated, kernel truncated at 3 sigma)."""
    out = np.empty(X.shape, np.float32) if out is None else out
    r = max(int(math.ceil(3 * sigma)), 1)

    def blur(frames: range) -> None:
        for t in frames:
            out[t] = cv2.GaussianBlur(np.ascontiguousarray(X[t], np.float32),
                                      (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REPLICATE)
    T = X.shape[0]
    step = max(1, -(-T // max(int(threads), 1)))  # no frames: no parts
    _in_threads(blur, [range(t, min(t + step, T)) for t in range(0, T, step)], threads)
    return out


def _in_threads(fn, parts: list, threads: int) -> None:
    """fn(part) for every part, on up to `threads` threads (OpenCV and numpy's partition
    release the GIL). A tile searched alone (a small movie is one tile) had one core idle."""
    if threads <= 1 or len(parts) <= 1:
        for part in parts:
            fn(part)
        return
    with ThreadPoolExecutor(min(int(threads), len(parts)), thread_name_prefix="mps-tile") as pool:
        for done in [pool.submit(fn, part) for part in parts]:
            done.result()


def _blur_image(img: np.ndarray, sigma: float) -> np.ndarray:
    return _blur_frames(img[None], sigma)[0]


def _rowwise(X: np.ndarray, fn, rows: int = 16, threads: int = 1) -> np.ndarray:
    """Apply a time-reducing fn (T, r, w) -> (r, w) over blocks of rows (bounds temporaries)."""
    out = np.empty(X.shape[1:], np.float32)

    def block(i: int) -> None:
        out[i:i + rows] = fn(X[:, i:i + rows])
    _in_threads(block, list(range(0, X.shape[1], rows)), threads)
    return out


# Temporal medians use at most ~this many (evenly strided) frames.  Not lower: with 500 on the
# 1000-frame ca1 movie the seed recall dropped from 0.68 to 0.65 (the noise MAD gets coarse).
MEDIAN_SAMPLES = 1000


def _stride(T: int) -> int:
    return max(1, math.ceil(T / MEDIAN_SAMPLES))


def _median_t(b: np.ndarray) -> np.ndarray:
    """Median over axis 0, computed on a time-contiguous copy (much faster partition)."""
    return np.median(np.ascontiguousarray(b.transpose(1, 2, 0)), axis=-1, overwrite_input=True)


def _subtract_temporal_median(X: np.ndarray, threads: int = 1) -> None:
    """X -= per-pixel median over time (in place; the baseline of each pixel).

    On long movies the median of every s-th frame (<= MEDIAN_SAMPLES samples) is used: a
    baseline estimate does not need every frame and the partition is a large share of the cost.
    """
    s = _stride(X.shape[0])
    X -= _rowwise(X, lambda b: _median_t(b[::s]), threads=threads)[None]


def _noise_level(X: np.ndarray, threads: int = 1) -> np.ndarray:
    """Robust per-pixel noise SD: MAD of frame-to-frame differences / sqrt(2)."""
    s = _stride(X.shape[0] - 1)

    def mad(b):
        d = np.diff(b, axis=0)[::s]
        return _median_t(np.abs(d - _median_t(d)[None])) * np.float32(1.4826 / np.sqrt(2.0))
    return _rowwise(X, mad, threads=threads) + np.float32(1e-6)


def local_correlation(F: np.ndarray, sn: np.ndarray, k: float = CORR_THRESHOLD_SD) -> np.ndarray:
    """Mean Pearson correlation of each pixel with its (up to 8) neighbours.

    Samples below ``k * sn`` are zeroed first so that only shared transients correlate.
    Each of the 4 neighbour directions is one product map credited to both pixels of a pair.
    """
    T, H, W = F.shape
    X = np.where(F > k * sn, F, np.float32(0)).astype(np.float32, copy=False)
    X -= X.mean(0)
    X /= np.sqrt(np.einsum("thw,thw->hw", X, X)) + np.float32(1e-9)
    acc = np.zeros((H, W), np.float32)
    cnt = np.zeros((H, W), np.float32)
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        a = (slice(0, H - dy), slice(max(-dx, 0), W - max(dx, 0)))
        b = (slice(dy, H), slice(max(dx, 0), W - max(-dx, 0)))
        p = np.einsum("thw,thw->hw", X[:, a[0], a[1]], X[:, b[0], b[1]])
        acc[a] += p
        acc[b] += p
        cnt[a] += 1
        cnt[b] += 1
    return acc / np.maximum(cnt, 1)


def _window(y: int, x: int, r: int, shape) -> tuple[slice, slice]:
    return (slice(max(y - r, 0), min(y + r + 1, shape[0])),
            slice(max(x - r, 0), min(x + r + 1, shape[1])))


def _pad_window(win: tuple[slice, slice], m: int, shape) -> tuple[slice, slice]:
    sy, sx = win
    return (slice(max(sy.start - m, 0), min(sy.stop + m, shape[0])),
            slice(max(sx.start - m, 0), min(sx.stop + m, shape[1])))


def _crop(a: np.ndarray, win):
    """a cut to the bounding box of its support (cheaper subtraction / trace fits)."""
    ys, xs = np.nonzero(a)
    if len(ys) == 0:
        return a, win
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return a[y0:y1, x0:x1], (slice(win[0].start + y0, win[0].start + y1),
                             slice(win[1].start + x0, win[1].start + x1))


def _paste(dst: np.ndarray, dst_win, src: np.ndarray, src_win) -> None:
    """Copy the overlap of src (placed at src_win) into dst (placed at dst_win)."""
    y0, y1 = max(dst_win[0].start, src_win[0].start), min(dst_win[0].stop, src_win[0].stop)
    x0, x1 = max(dst_win[1].start, src_win[1].start), min(dst_win[1].stop, src_win[1].stop)
    if y0 >= y1 or x0 >= x1:
        return
    dst[y0 - dst_win[0].start:y1 - dst_win[0].start, x0 - dst_win[1].start:x1 - dst_win[1].start] = \
        src[y0 - src_win[0].start:y1 - src_win[0].start, x0 - src_win[1].start:x1 - src_win[1].start]


def connected_part(a: np.ndarray, y: int, x: int, search: int = 2) -> np.ndarray:
    """``a`` restricted to the 4-connected part of ``a > 0`` holding its maximum near (y, x).

    'Near' = within ``search`` px; if ``a`` is zero there, the part with the largest sum.
    """
    lab, n = ndimage.label(a > 0)
    if n == 0:
        return np.zeros_like(a)
    sub = (slice(max(y - search, 0), y + search + 1), slice(max(x - search, 0), x + search + 1))
    near = a[sub]
    if near.size and near.max() > 0:
        py, px = np.unravel_index(np.argmax(near), near.shape)
        keep = lab[sub][py, px]
    else:
        keep = 1 + int(np.argmax(ndimage.sum(a, lab, np.arange(1, n + 1))))
    return np.where(lab == keep, a, 0).astype(a.dtype, copy=False)


# ------------------------------------------------------------------------------ greedy state
class _Greedy:
    """Working state of the greedy loop on one in-memory (T, h, w) tile."""

    def __init__(self, Y: np.ndarray, d: float, min_pnr: float, min_corr: float,
                 smooth_frames: int, exclude: np.ndarray | None, threads: int = 1):
        self.d, self.min_pnr, self.min_corr = d, min_pnr, min_corr
        self.s1, self.s2 = BAND_LOW * d, BAND_HIGH * d
        self.R_patch = int(round(PATCH_WIDTH * d / 2))
        self.smooth = int(smooth_frames)
        self.min_area = MIN_AREA * math.pi * (d / 2) ** 2
        self.R, self.F, self.sn = _prepare(Y, d, self.smooth, threads)
        self.pnr = self.F.max(0) / self.sn
        self.corr = local_correlation(self.F, self.sn)
        self.blocked = np.zeros(self.sn.shape, bool) if exclude is None else exclude.copy()
        self.patches: list[tuple[np.ndarray, tuple[slice, slice]]] = []
        self.traces: list[np.ndarray] = []
        self.centres: list[tuple[int, int]] = []
        self.pick_pnr: list[float] = []
        self.pick_corr: list[float] = []

    def pick(self) -> tuple[int, int] | None:
        ok = (self.corr >= self.min_corr) & (self.pnr >= self.min_pnr) & ~self.blocked
        if not ok.any():
            return None
        s = np.where(ok, self.corr * self.pnr, -np.inf)
        y, x = np.unravel_index(np.argmax(s), s.shape)
        return int(y), int(x)

    def trace_at(self, y: int, x: int) -> np.ndarray:
        sy, sx = _window(y, x, 1, self.sn.shape)
        c = self.F[:, sy, sx].mean((1, 2))
        return c - np.median(c)

    def footprint(self, c: np.ndarray, y: int, x: int):
        """Non-negative regression of the residual patch on c, cut and made connected."""
        win = _window(y, x, self.R_patch, self.sn.shape)
        P = self.R[:, win[0], win[1]]
        cc = c - c.mean()
        a = np.einsum("t,thw->hw", cc, P) / (cc @ cc + 1e-9)  # sum(cc)=0: no need to centre P
        a = ndimage.gaussian_filter(np.clip(a, 0, None), 1.0)  # regression is noisy per pixel
        ly, lx = y - win[0].start, x - win[1].start
        near = a[max(ly - 2, 0):ly + 3, max(lx - 2, 0):lx + 3]
        if near.max() <= 0:
            return None, win
        a = np.where(a >= FOOTPRINT_CUT * near.max(), a, 0)
        return _crop(connected_part(a.astype(np.float32), ly, lx), win)

    def fit_trace(self, a: np.ndarray, win) -> np.ndarray:
        P = self.R[:, win[0], win[1]]
        return (np.einsum("thw,hw->t", P, a) / (np.vdot(a, a) + 1e-9)).astype(np.float32)

    def subtract(self, a: np.ndarray, c: np.ndarray, win) -> None:
        """Remove a (x) c from R and its band-passed, smoothed image from F; update maps."""
        sy, sx = win
        self.R[:, sy, sx] -= c[:, None, None] * a[None]
        # F changes where DoG(a) is non-negligible: a's support (a is cropped to its bounding
        # box) padded by F_UPDATE large sigmas
        wy, wx = _pad_window(win, int(math.ceil(F_UPDATE * self.s2)), self.sn.shape)
        full = np.zeros((wy.stop - wy.start, wx.stop - wx.start), np.float32)
        _paste(full, (wy, wx), a, win)
        fa = _blur_image(full, self.s1) - _blur_image(full, self.s2)
        cs = ndimage.uniform_filter1d(c, self.smooth) if self.smooth > 1 else c
        Fw = self.F[:, wy, wx]
        Fw -= cs[:, None, None] * fa[None]
        self.pnr[wy, wx] = Fw.max(0) / self.sn[wy, wx]
        # The correlation map (the costliest part of a pick) is recomputed only within
        # CORR_UPDATE large sigmas of the footprint: further out F changed by a small fraction
        # of the cell's blurred light, too little to move a thresholded correlation.
        cy, cx = _pad_window(win, int(math.ceil(CORR_UPDATE * self.s2)), self.sn.shape)
        ey, ex = _pad_window((cy, cx), 1, self.sn.shape)  # + neighbours of the border pixels
        cw = local_correlation(self.F[:, ey, ex], self.sn[ey, ex])
        self.corr[cy, cx] = cw[cy.start - ey.start:cy.stop - ey.start, cx.start - ex.start:cx.stop - ex.start]

    def run(self, max_seeds: int | None) -> None:
        while max_seeds is None or len(self.centres) < max_seeds:
            p = self.pick()
            if p is None:
                return
            y, x = p
            self.blocked[y, x] = True
            a, win = self.footprint(self.trace_at(y, x), y, x)
            if a is None or np.count_nonzero(a) < self.min_area:
                continue
            c = self.fit_trace(a, win)
            self.pick_pnr.append(float(self.pnr[y, x]))
            self.pick_corr.append(float(self.corr[y, x]))
            self.patches.append((a, win))
            self.traces.append(c)
            self.centres.append((y, x))
            self.subtract(a, c, win)

    def dense_footprints(self) -> np.ndarray:
        A = np.zeros((len(self.patches),) + self.sn.shape, np.float32)
        for k, (a, (sy, sx)) in enumerate(self.patches):
            A[k, sy, sx] = a
        return A


def _prepare(Y: np.ndarray, d: float, smooth: int, threads: int = 1):
    """R (background-removed residual), F (band-passed, smoothed) and the noise SD of F."""
    Y = np.asarray(Y)
    R = _blur_frames(Y, BACKGROUND_SIGMA * d, threads=threads)
    np.subtract(Y, R, out=R, dtype=np.float32)
    _subtract_temporal_median(R, threads)
    F = _blur_frames(Y, BAND_LOW * d, threads=threads)
    F -= _blur_frames(Y, BAND_HIGH * d, threads=threads)
    _subtract_temporal_median(F, threads)
    sn = _noise_level(F, threads)
    if smooth > 1:
        ndimage.uniform_filter1d(F, smooth, axis=0, output=F)
        sn /= np.float32(np.sqrt(smooth))
    return R, F, sn


# ------------------------------------------------------------------------------- refinement
def _disk_indices(y: int, x: int, r: float, shape) -> np.ndarray:
    ri = int(math.floor(r))
    sy, sx = _window(y, x, ri, shape)
    yy, xx = np.mgrid[sy, sx]
    m = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    return (yy[m] * shape[1] + xx[m]).astype(np.intp)


def refine_footprints(R: np.ndarray, A0: np.ndarray, C: np.ndarray, centres, radius: float,
                      n_iter: int) -> np.ndarray:
    """Joint non-negative footprint refinement with fixed traces (see module doc, step 5).

    R: (T, h, w) residual after subtracting sum_k A0[k] C[k];  A0: (K, h, w) greedy footprints
    (not modified);  C: (K, T) traces;  centres: (K, 2) int seed pixels;  radius: disk radius px.
    Returns (K, h, w) float32 footprints, each inside its disk and connected around its seed.
    """
    K = len(A0)
    T, h, w = R.shape
    if K == 0:
        return np.zeros((0, h, w), np.float32)
    A0f = A0.reshape(K, -1)
    Rf = R.reshape(T, -1)
    C = np.asarray(C, np.float32)
    CC = (C.astype(np.float64) @ C.T.astype(np.float64)).astype(np.float32)
    idx = [_disk_indices(int(y), int(x), radius, (h, w)) for y, x in centres]
    cen = np.asarray(centres, float).reshape(-1, 2)
    dist = np.sqrt(((cen[:, None, :] - cen[None, :, :]) ** 2).sum(-1))
    YC = []
    for k in range(K):
        # C R0 on disk k = C R + (C C^T) A0 (since R0 = R + A0 C)
        YC.append(C[k] @ Rf[:, idx[k]] + CC[k] @ A0f[:, idx[k]])
    nbrs = [np.flatnonzero(dist[k] <= 2 * radius + 1) for k in range(K)]  # disks that may overlap
    A = np.zeros((K, h * w), np.float32)
    for k in range(K):
        A[k, idx[k]] = A0f[k, idx[k]]
    for _ in range(n_iter):
        for k in range(K):
            if CC[k, k] <= 0:
                continue
            ik, nb = idx[k], nbrs[k]
            a = A[k, ik] + (YC[k] - CC[k, nb] @ A[np.ix_(nb, ik)]) / CC[k, k]
            A[k, ik] = np.maximum(a, 0)
    out = A.reshape(K, h, w)
    for k, (y, x) in enumerate(centres):
        out[k] = connected_part(out[k], int(y), int(x))
    return out


def _restrict_to_disks(A: np.ndarray, centres, radius: float) -> np.ndarray:
    """Without refinement: cut each footprint to its disk and its connected part."""
    K, h, w = A.shape
    out = np.zeros_like(A)
    for k, (y, x) in enumerate(centres):
        idx = _disk_indices(int(y), int(x), radius, (h, w))
        out[k].flat[idx] = A[k].flat[idx]
        out[k] = connected_part(out[k], int(y), int(x))
    return out


# -------------------------------------------------------------------------------- public API
def greedy_seeds(Y: np.ndarray, cell_diameter: float, *, min_pnr: float = 8.0, min_corr: float = 0.5,
                 max_seeds: int | None = None, smooth_frames: int = FULL_RATE_SMOOTH,
                 refine_iterations: int = 10, exclude: np.ndarray | None = None,
                 threads: int = 1) -> GreedyResult:
    """Greedy seeds of an in-memory (T', h, w) movie tile (see the module doc for the method).

    ``Y``: (T', h, w) real array (float32 avoids a copy), T' >= 2; not modified.
    ``cell_diameter``: d in px (> 0).  ``min_pnr`` (> 0) / ``min_corr`` (in [-1, 1]): picking
    thresholds.  ``max_seeds``: stop after this many (None = no limit).  ``smooth_frames``:
    moving-average length for picking (use ``smooth_frames_for_bin(k)`` on a binned movie).
    ``refine_iterations``: rounds of the joint footprint refinement (0 = none).  ``exclude``:
    optional boolean (h, w) mask where no seed may be picked (footprints may still reach it).
    ``threads``: threads for the per-frame and per-pixel preparation (same result for any).
    Returns a :class:`GreedyResult` with dense (n, h, w) footprints.
    """
    _check_params(cell_diameter, min_pnr, min_corr, max_seeds, smooth_frames, refine_iterations)
    _check_movie(Y, "greedy_seeds")
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.shape != Y.shape[1:] or exclude.dtype != bool:
            raise ValueError(f"greedy_seeds: exclude must be a boolean array of shape {Y.shape[1:]}, "
                             f"got {exclude.dtype} {exclude.shape}")
    d = float(cell_diameter)
    Y = np.asarray(Y, np.float32)
    g = _Greedy(Y, d, float(min_pnr), float(min_corr), int(smooth_frames), exclude, threads)
    g.run(max_seeds)
    del g.F  # not needed any more; frees a tile-sized array before the refinement
    A0 = g.dense_footprints()
    C = np.asarray(g.traces, np.float32).reshape(len(A0), Y.shape[0])
    radius = DISK_RADIUS * d
    if refine_iterations > 0:
        A = refine_footprints(g.R, A0, C, g.centres, radius, int(refine_iterations))
    else:
        A = _restrict_to_disks(A0, g.centres, radius)
    keep = A.reshape(len(A), A.shape[1] * A.shape[2]).any(1)
    return GreedyResult(footprints=A[keep], traces=C[keep],
                        centres=np.asarray(g.centres, float).reshape(-1, 2)[keep],
                        pnr=np.asarray(g.pick_pnr, float)[keep], corr=np.asarray(g.pick_corr, float)[keep])


def default_tiling(cell_diameter: float) -> tuple[int, int]:
    """(tile core width, margin) in px for cell diameter d: ~20 d cores, 3 d margins."""
    d = float(cell_diameter)
    return max(int(round(TILE_CORE * d)), 32), int(math.ceil(TILE_MARGIN * d))


def tile_plan(n_frames: int, shape: tuple[int, int], cell_diameter: float, budget: float,
              max_workers: int) -> tuple[int, int, float]:
    """(tile core width, workers, bytes per running tile) for ``greedy_seeds_tiled`` on a
    (n_frames, *shape) movie within ``budget`` bytes: as many tiles at once as fit (at most
    ``max_workers``), the default tile while one fits, else smaller tiles (never under 2
    margins or 32 px; the budget is then exceeded rather than the search made useless)."""
    tile, margin = default_tiling(cell_diameter)

    def cost(t: int) -> float:
        h, w = (min(n, t + 2 * margin) for n in shape)
        return TILE_COPIES * n_frames * h * w * 4

    floor = max(32, 2 * margin)
    while cost(tile) > budget and tile > floor:
        tile = max(floor, int(tile * 0.8))
    workers = int(max(1, min(int(max_workers), budget // max(cost(tile), 1))))
    return tile, workers, cost(tile)


def tile_grid(H: int, W: int, tile: int, margin: int) -> list[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """Cores (an even grid of squares of about ``tile`` px covering the frame) and their
    extents (core + ``margin`` on every side, clipped to the frame), row-major order."""
    def edges(n):
        m = max(1, math.ceil(n / tile))
        return np.linspace(0, n, m + 1).round().astype(int)
    out = []
    ey, ex = edges(H), edges(W)
    for y0, y1 in zip(ey[:-1], ey[1:]):
        for x0, x1 in zip(ex[:-1], ex[1:]):
            core = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
            out.append((core, _pad_window(core, margin, (H, W))))
    return out


def greedy_seeds_tiled(Y: np.ndarray, cell_diameter: float, tile: int | None = None,
                       margin: int | None = None, progress: Callable[[int, int], None] | None = None,
                       workers: int = 1, **kw) -> GreedyResult:
    """``greedy_seeds`` on overlapping spatial tiles of an in-memory (T', H, W) movie.

    ``tile``/``margin``: core width and margin in px (default ``default_tiling(d)``; margin
    should be >= ~3 d).  Seeds may be picked in the core and up to 1.5 d into the margin (so
    cells across the core edge are subtracted), only those centred in the core are kept.
    ``kw`` goes to ``greedy_seeds`` (an ``exclude`` mask is full-frame (H, W); ``max_seeds``
    applies per tile).  ``progress(done_tiles, n_tiles)`` after every tile.  Footprints are
    returned as a scipy.sparse CSR (n, H*W) float32 matrix; order: tiles row-major, then picks.
    ``workers``: tiles searched at once, in threads (the heavy work, OpenCV blurs and numpy
    reductions, releases the GIL); the result does not depend on it.  If ``progress`` raises
    (a cancel), tiles not yet started are dropped and the exception propagates.
    """
    _check_movie(Y, "greedy_seeds_tiled")
    d = float(cell_diameter)
    if not np.isfinite(d) or d <= 0:
        raise ValueError(f"greedy_seeds_tiled: cell_diameter must be a finite number > 0 px, got {cell_diameter!r}")
    t_def, m_def = default_tiling(d)
    tile = t_def if tile is None else tile
    margin = m_def if margin is None else margin
    if int(tile) != tile or tile < 8:
        raise ValueError(f"greedy_seeds_tiled: tile must be an integer >= 8 px, got {tile!r}")
    if int(margin) != margin or margin < 0:
        raise ValueError(f"greedy_seeds_tiled: margin must be an integer >= 0 px, got {margin!r}")
    T, H, W = Y.shape
    user_ex = kw.pop("exclude", None)
    if user_ex is not None:
        user_ex = np.asarray(user_ex)
        if user_ex.shape != (H, W) or user_ex.dtype != bool:
            raise ValueError(f"greedy_seeds_tiled: exclude must be a boolean array of shape {(H, W)}, "
                             f"got {user_ex.dtype} {user_ex.shape}")
    pick_reach = int(round(PICK_MARGIN * d))
    grid = tile_grid(H, W, int(tile), int(margin))
    if int(workers) != workers or workers < 1:
        raise ValueError(f"greedy_seeds_tiled: workers must be an integer >= 1, got {workers!r}")

    def search(core, ext):
        allowed = _pad_window(core, pick_reach, (H, W))
        ex = np.ones((ext[0].stop - ext[0].start, ext[1].stop - ext[1].start), bool)
        ex[allowed[0].start - ext[0].start:allowed[0].stop - ext[0].start,
           allowed[1].start - ext[1].start:allowed[1].stop - ext[1].start] = False
        if user_ex is not None:
            ex |= user_ex[ext]
        return greedy_seeds(Y[:, ext[0], ext[1]], d, exclude=ex, threads=inner, **kw)

    inner = max(1, int(workers) // len(grid))  # fewer tiles than workers: share out the rest
    rows, cols, vals, traces, centres, pnr, corr = [], [], [], [], [], [], []
    n_kept = 0
    pool = ThreadPoolExecutor(int(workers), thread_name_prefix="mps-greedy")
    try:
        # results are taken in grid order, so the output does not depend on which tile ends
        # first; at most 2 x workers tiles are submitted ahead (bounds the dense results held)
        futures = {}
        for i, (core, ext) in enumerate(grid):
            for j in range(i, min(i + 2 * int(workers), len(grid))):
                if j not in futures:
                    futures[j] = pool.submit(search, *grid[j])
            r = futures.pop(i).result()
            gy = r.centres[:, 0] + ext[0].start
            gx = r.centres[:, 1] + ext[1].start
            inside = ((gy >= core[0].start) & (gy < core[0].stop) & (gx >= core[1].start) & (gx < core[1].stop))
            for k in np.flatnonzero(inside):
                ly, lx = np.nonzero(r.footprints[k])
                rows.append(np.full(len(ly), n_kept, np.int64))
                cols.append((ly + ext[0].start).astype(np.int64) * W + lx + ext[1].start)
                vals.append(r.footprints[k][ly, lx])
                n_kept += 1
            traces.append(r.traces[inside])
            centres.append(np.stack([gy, gx], 1)[inside])
            pnr.append(r.pnr[inside])
            corr.append(r.corr[inside])
            del r
            if progress is not None:
                progress(i + 1, len(grid))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    A = sp.csr_matrix((cat(vals, np.float32), (cat(rows, np.int64), cat(cols, np.int64))),
                      shape=(n_kept, H * W))
    return GreedyResult(footprints=A, traces=np.concatenate(traces).astype(np.float32).reshape(n_kept, T),
                        centres=np.concatenate(centres).reshape(n_kept, 2),
                        pnr=np.concatenate(pnr), corr=np.concatenate(corr))
