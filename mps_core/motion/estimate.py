"""Motion estimation over a whole movie (step 2c): rigid or piecewise-rigid (mesh).

Output convention: ``shifts[t] = (dy, dx)`` is the shift that registers frame t (apply it
with `mps_core.motion.apply.apply_shifts`). The output is **median-referenced**: a constant
is removed so that the per-axis median over frames is 0 (for mesh shifts, the median of
the per-frame patch mean), i.e. the reference is the typical position of the field of view.
A template's own position is arbitrary by a constant, and the median (rather than the mean
or the first frame) keeps the reference steady against outlier frames and single-frame
noise. Values are finally clipped to +-max_shift.

Why a template tree: over hours the field of view drifts and the tissue changes, so one
template built early does not fit late frames, and a template built from everything is
blurred by the drift. Instead (all in one dask graph, memory bounded by chunk size):

1. Leaves, one dask task per movie chunk: the chunk is cut into groups of ~`group_size`
   consecutive frames. Each group is registered to its own mean: an integer pass against
   the motion-blurred mean, then `iterations` sub-pixel passes against the mean of the
   frames registered so far. Each frame is registered to the mean of the *other* frames
   of its group (leave-one-out): with noisy one-photon frames a frame's own noise in the
   template otherwise pins it to its previous estimate, which shrank the shifts by ~30 %
   on the bench recordings. The frames' spectra are computed once per group; templates
   are averaged in Fourier space, so the passes need no warps. The group template (for
   the merges) is the mean of its frames warped by their final shifts. A frame whose
   shift lands farther from the group median than max(3 px, 5 robust sigmas) - a noise
   peak on a frame with little texture - is searched again within that distance.
2. Merges, pairwise over neighbours in time (a binary tree, inside a chunk and then across
   chunks): the later template is registered to the earlier one, the offset is added to
   all the later frames' shifts (translations compose by addition) and the templates are
   averaged, weighted by frame counts. The root's shifts are all relative to one template.
   With sparse activity two templates can share few cells, so the best offset within
   max(3 px, max_shift / 4) of zero is kept unless the global peak is twice as high.
3. Optional refinement (`refine=True`): a second pass over the movie registering every
   frame to the root (global) template, searching within +-3 px of its first-pass shift.
   It reads (and so decodes / filters) the movie twice, so it is off by default here; it
   lowers the error where frames are very noisy (bench CA1: 0.42 -> 0.40 px).

Cost per frame (608 x 608, one core): ~10.5 ms CPU with the defaults - one forward FFT,
per pass a cross-power spectrum, an inverse FFT along one axis plus the search-window
rows, a small matrix DFT for the sub-pixel peak, and one warp; merges are negligible.

Mesh mode (`mesh=(my, mx)`): after the rigid registration of a group, each frame is warped
rigidly and the residual shift of each patch of an ``my x mx`` grid of overlapping patches
is estimated against the same patch of the template (within +-max_deviation), weak or
inconsistent patches are replaced by the median of their neighbours, and the patch shift is
rigid + residual. Merges do the same between templates. The patch centre convention is the
one of `apply.py` (``(i + 0.5) * H / my - 0.5``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import dask
import dask.array as da
import numpy as np
from scipy import ndimage as ndi

from . import phasecorr as pc
from .apply import apply_shifts, covered_mask
from .outliers import robust_sigma

__all__ = ["estimate_shifts", "patch_windows", "row_stripe_ratio", "STRIPE_RATIO"]

_MIN_PATCH = 16  # px: smaller patches hold too little texture to register
_REFINE_RADIUS = 3.0  # px: refinement searches this far from the first-pass shift
_OUTLIER_MIN_PX = 3.0  # px: group shifts within this of the group median are always trusted
_NEAR_PEAK_RATIO = 0.5  # a template offset near zero wins unless the far peak is 2x higher
_WEAK_PATCH = 0.5  # patch confidence below this fraction of the frame's median is replaced


@dataclass(frozen=True)
class _Config:
    max_shift: float
    upsample: int
    group_size: int
    mesh: tuple[int, int] | None
    overlap: float
    max_deviation: float
    factor: int  # spatial downsampling factor (1 = off)
    flatten: float  # px sigma of the local mean each frame is divided by (0 = off)
    destripe: bool  # remove each row's offset (row-wise read-out offsets, see _destripe)
    taper: float
    lowpass: float
    highpass: float
    whiten: float
    iterations: int

    def plan(self, shape: tuple[int, int]) -> pc.Plan:
        return pc.make_plan(tuple(int(v) for v in shape), self.taper, self.lowpass, self.highpass)


@dataclass
class _Node:
    """A run of consecutive frames registered to one template."""

    shifts: np.ndarray  # (n, 2) or (n, my, mx, 2), relative to `template`
    template: np.ndarray  # (H, W) float32, in the estimation grid
    count: int


# ----------------------------------------------------------------------------- helpers


def _bin(frames: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (edges that do not fill a block are cropped).

    OpenCV's area resize is exactly that block mean for an integer factor, at 0.13 ms per
    608 x 608 frame; numpy's reshaped mean over two small axes took 3.3 ms, more than the
    registration itself.
    """
    x = np.asarray(frames)
    if factor == 1:  # as stored: spectra and warps convert a group at a time, in cache
        return x
    n, h, w = x.shape
    h2, w2 = h // factor, w // factor
    out = np.empty((n, h2, w2), np.float32)
    for k in range(n):
        frame = x[k, : h2 * factor, : w2 * factor].astype(np.float32)
        out[k] = cv2.resize(frame, (w2, h2), interpolation=cv2.INTER_AREA)
    return out


def _flatten(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Each frame divided by its local mean (Gaussian of `sigma` px), float32.

    Illumination fall-off and vignetting multiply the moving tissue by a pattern fixed
    to the sensor. Its imprint on the band-passed frames does not move, and it pulls
    every shift towards zero (the bench recordings' shifts were 3-7 % too small). The
    ratio to the local mean keeps the tissue's texture and drops the smooth gain. The
    local mean is blurred on a 4x coarser grid (sigma >= 4 px) - the same smooth surface
    at a twentieth of the cost of a full-size 60-tap blur. A floor of a tenth of the
    frame's mean keeps dark corners (outside a circular field of view) from blowing up.
    """
    x = np.asarray(frames, dtype=np.float32)
    out = np.empty(x.shape, np.float32)
    h, w = x.shape[1:]
    step = 4 if sigma >= 4 and min(h, w) >= 64 else 1
    small = (max(1, w // step), max(1, h // step))
    for k in range(len(x)):
        frame = x[k]
        if step > 1:
            coarse = cv2.resize(frame, small, interpolation=cv2.INTER_AREA)
            coarse = cv2.GaussianBlur(coarse, (0, 0), sigma / step, borderType=cv2.BORDER_REFLECT)
            local = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            local = cv2.GaussianBlur(frame, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        floor = 0.1 * abs(float(local.mean())) or 1.0  # a frame of mean <= 0 is only rescaled
        np.divide(frame, np.maximum(local, floor), out=out[k])
    return out


STRIPE_RATIO = 5.0  # `row_stripe_ratio` above which rows carry their own offsets


def row_stripe_ratio(frames: np.ndarray) -> float:
    """How much more the row means change between consecutive frames than noise explains.

    frames: (T >= 2, H, W) consecutive frames. For each frame-to-frame difference, the
    spread of its row means is divided by what independent pixel noise would give (the
    difference's std / sqrt(W)); the median over the differences is returned. About 1-3
    on ordinary recordings (motion adds a little); wireless sensors that add an offset to
    each row read out give about 13 (the mio test recordings), and those offsets then
    dominate the correlation.
    """
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 3 or len(x) < 2:
        raise ValueError(f"row_stripe_ratio: need (T >= 2, H, W) frames, got shape {x.shape}")
    d = np.diff(x, axis=0)
    noise = d.std(axis=(1, 2)) / np.sqrt(x.shape[2])
    spread = d.mean(axis=2).std(axis=1)
    ok = noise > 0
    return float(np.median(spread[ok] / noise[ok])) if ok.any() else 0.0


def _prepare(block: np.ndarray, cfg: "_Config") -> np.ndarray:
    """A movie block as registered: binned, then destriped and flattened if asked."""
    frames = _bin(block, cfg.factor)
    if cfg.destripe:
        frames = _destripe(frames)
    if cfg.flatten > 0:
        frames = _flatten(frames, cfg.flatten)
    return frames


_STRIPE_TREND = 10.0  # px: row means keep their trend smoother than this (the shading)


def _destripe(frames: np.ndarray) -> np.ndarray:
    """Frames minus each row's offset: its mean's departure from the smooth trend over rows.

    A per-frame offset on every row is not tissue. Removing it before `_flatten` keeps the
    offsets additive (dividing first would make them multiplicative), and keeping the
    trend keeps the frame's brightness and shading for `_flatten` to divide out.
    """
    x = np.asarray(frames, dtype=np.float32)
    rows = x.mean(axis=2, keepdims=True)
    trend = ndi.gaussian_filter1d(rows, _STRIPE_TREND, axis=1, mode="reflect")
    return x - (rows - trend)


def _mean_registered(frames: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Mean of the frames after applying `shifts`, each pixel over the frames covering it."""
    if shifts.ndim == 2:  # rigid: coverage is a product of row and column ranges
        warped = apply_shifts(frames, shifts, fill_value=0.0, interpolation="linear")
        rows = np.stack([covered_mask((frames.shape[1], 1), (s[0], 0.0))[:, 0] for s in shifts]).astype(np.float32)
        cols = np.stack([covered_mask((1, frames.shape[2]), (0.0, s[1]))[0] for s in shifts]).astype(np.float32)
        count = rows.T @ cols
        total = warped.sum(axis=0, dtype=np.float32)
    else:
        warped = apply_shifts(frames, shifts, fill_value=np.nan, interpolation="linear")
        valid = ~np.isnan(warped)
        count = valid.sum(axis=0).astype(np.float32)
        total = np.where(valid, warped, 0.0).sum(axis=0, dtype=np.float32)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if np.isnan(mean).any():  # never covered: use the covered mean so no edge is created
        mean[np.isnan(mean)] = np.nanmean(mean) if np.isfinite(mean).any() else 0.0
    return mean.astype(np.float32)


def patch_windows(shape: tuple[int, int], mesh: tuple[int, int], overlap: float) -> tuple[list, list, int, int]:
    """Patch row and column start indices and the patch size for an my x mx grid.

    Patch i along an axis of length n is centred near (i + 0.5) * n / m - 0.5 and is
    (1 + overlap) * n / m px long (clipped to the image, at least 16 px).
    """
    (h, w), (my, mx) = shape, mesh

    def axis(n: int, m: int) -> tuple[list, int]:
        size = int(min(n, max(_MIN_PATCH, round(n / m * (1 + overlap)))))
        centres = (np.arange(m) + 0.5) * n / m - 0.5
        starts = np.clip(np.round(centres + 0.5 - size / 2), 0, n - size).astype(int)
        return starts.tolist(), size

    ys, ph = axis(h, my)
    xs, pw = axis(w, mx)
    return ys, xs, ph, pw


def _register(
    template: np.ndarray, frames: np.ndarray, cfg: _Config, max_shift: float, radius: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel rigid shifts (and confidences) of frames (N, H, W) to one template.

    radius: if given, search only within +-radius px of zero shift.
    """
    plan = cfg.plan(template.shape)
    f_t = pc.template_spectrum(template, plan)
    centre = None if radius is None else np.zeros((len(frames), 2))
    return pc.estimate_spectra(
        f_t, pc.spectra(frames, plan), plan, max_shift, cfg.upsample, cfg.whiten, centre=centre, radius=radius or 0.0
    )


def _template_offset(a: np.ndarray, b: np.ndarray, cfg: _Config) -> np.ndarray:
    """(1, 2) shift registering template b to template a, preferring small offsets.

    Neighbouring runs of frames sit at nearby positions, and with sparse activity two
    templates can share too few cells for the global peak to be reliable (a bright cell
    of one may match another cell of the other). The best peak near zero is kept unless
    the global one is clearly stronger.
    """
    far, c_far = _register(a, b[None], cfg, cfg.max_shift)
    radius = max(_OUTLIER_MIN_PX, cfg.max_shift / 4)
    if np.abs(far).max() <= radius:
        return far
    near, c_near = _register(a, b[None], cfg, cfg.max_shift, radius=radius)
    return near if c_near[0] >= _NEAR_PEAK_RATIO * c_far[0] else far


def _smooth_patches(res: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Replace weak or inconsistent patch shifts by the median of their 3x3 neighbourhood.

    res: (N, my, mx, 2) residual shifts; conf: (N, my, mx) phase-correlation confidences.
    """
    med = ndi.median_filter(res, size=(1, 3, 3, 1), mode="nearest")
    ref_conf = np.median(conf, axis=(1, 2), keepdims=True)
    weak = conf < _WEAK_PATCH * ref_conf
    # Inconsistent: farther from the neighbours' median than 3x their typical spread (+0.5 px).
    dev = np.abs(res - med).max(axis=-1)
    spread = np.median(dev, axis=(1, 2), keepdims=True)
    bad = weak | (dev > 3 * spread + 0.5)
    return np.where(bad[..., None], med, res)


def _patch_shifts(template: np.ndarray, patches: np.ndarray, cfg: _Config, leave_one_out: bool) -> tuple:
    """Shifts and confidences of patches (N, ph, pw) against one template patch.

    leave_one_out: the template is the mean of these same patches, so each patch's own
    contribution is removed from it (see `_group_pass`); exact here, since both sides get
    the same taper.
    """
    plan = cfg.plan(template.shape)
    f_t = pc.template_spectrum(template, plan)
    spec = pc.spectra(patches, plan)
    n = len(patches)
    if leave_one_out and n > 1:
        f_t = (np.float32(n) * f_t[None] - spec) / np.float32(n - 1)
    return pc.estimate_spectra(f_t, spec, plan, cfg.max_deviation, cfg.upsample, cfg.whiten)


def _patch_residuals(template: np.ndarray, aligned: np.ndarray, cfg: _Config, leave_one_out: bool) -> np.ndarray:
    """Residual (N, my, mx, 2) shifts of rigidly aligned frames' patches to template patches."""
    ys, xs, ph, pw = patch_windows(template.shape, cfg.mesh, cfg.overlap)
    n = aligned.shape[0]
    res = np.zeros((n, len(ys), len(xs), 2))
    conf = np.zeros((n, len(ys), len(xs)))
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            sl = (slice(y0, y0 + ph), slice(x0, x0 + pw))
            res[:, i, j], conf[:, i, j] = _patch_shifts(template[sl], aligned[(slice(None),) + sl], cfg, leave_one_out)
    return np.clip(_smooth_patches(res, conf), -cfg.max_deviation, cfg.max_deviation)


def _mesh_from_rigid(
    template: np.ndarray, frames: np.ndarray, rigid: np.ndarray, cfg: _Config, leave_one_out: bool = False
) -> np.ndarray:
    """(N, my, mx, 2) patch shifts = rigid shift + residual of each patch."""
    aligned = apply_shifts(frames, rigid, fill_value=np.nan, interpolation="linear")
    # Uncovered borders take the template's values so they do not drag the patch shifts.
    holes = np.isnan(aligned)
    aligned[holes] = np.broadcast_to(template, aligned.shape)[holes]
    res = _patch_residuals(template, aligned, cfg, leave_one_out)
    return rigid[:, None, None, :] + res


# ----------------------------------------------------------------------------- tree


def _group_pass(
    spec: np.ndarray,
    shifts: np.ndarray | None,
    plan: pc.Plan,
    cfg: _Config,
    upsample: int,
    idx: np.ndarray | None = None,
    centre: np.ndarray | None = None,
    radius: float = 0.0,
    total: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One registration pass of a group against its own mean, leaving each frame out.

    The template is the mean of the frames' tapered spectra moved by `shifts` (Fourier
    shift; the plain mean when None): cheap, no warps, and the taper moves with each frame
    so no frame edge enters the template. A frame's own noise in its template correlates
    with it at the shift it was averaged in with, which pins noisy frames at their
    previous estimate (a bias towards the first, motion-blurred guess); so each frame is
    registered to the mean of the *other* frames (exact leave-one-out in Fourier space).
    idx: estimate only these frames (default all); centre / radius: search only within
    +-radius px of centre (2,). Work is done in blocks so the temporaries stay small.
    total: the sum of the moved spectra when already known (a second pass over a few
    frames reuses it). Returns (shifts (len(idx), 2), total).
    """
    n = len(spec)
    idx = np.arange(n) if idx is None else np.asarray(idx)
    step = 16
    # Frames estimated together: 4 keeps the (batch, H, W/2) complex temporaries (6 MB)
    # in cache; 16 was 20 % slower (measured, 608 x 608). Estimates do not depend on it.
    batch = 4

    def moved(sel: np.ndarray) -> np.ndarray:
        return spec[sel] if shifts is None else pc.fourier_shift(spec[sel], shifts[sel], plan)

    if total is None:
        total = np.zeros(spec.shape[1:], np.complex64)
        for a in range(0, n, step):
            total += moved(np.arange(a, min(a + step, n))).sum(axis=0)
    out = np.empty((len(idx), 2))
    for a in range(0, len(idx), batch):
        sel = idx[a : a + batch]
        loo = moved(sel)  # never a view of spec (sel is an index array): built in place
        np.subtract(total[None], loo, out=loo)
        loo /= np.float32(n - 1)
        prior = None if centre is None else np.broadcast_to(centre, (len(sel), 2))
        out[a : a + batch] = pc.estimate_spectra(
            loo, spec[sel], plan, cfg.max_shift, upsample, cfg.whiten, centre=prior, radius=radius, confidence=False
        )[0]
    return out, total


def _robust_pass(spec: np.ndarray, shifts: np.ndarray | None, plan: pc.Plan, cfg: _Config, upsample: int) -> np.ndarray:
    """A group pass whose implausible results are searched again near the group median.

    Frames with little texture (few active cells, strong noise) can lock onto a noise peak
    anywhere within +-max_shift. Within a group of consecutive frames the motion is
    spread around its median, so a shift farther from the median than
    max(_OUTLIER_MIN_PX, 5 robust sigmas) is searched again within that distance of it.
    """
    out, total = _group_pass(spec, shifts, plan, cfg, upsample)
    med = np.median(out, axis=0)
    limit = max(_OUTLIER_MIN_PX, 5.0 * float(robust_sigma(out).max()))
    bad = np.nonzero(np.abs(out - med).max(axis=1) > limit)[0]
    if bad.size:
        out[bad] = _group_pass(spec, shifts, plan, cfg, upsample, idx=bad, centre=med, radius=limit,
                               total=total)[0]
    return out


def _register_group(frames: np.ndarray, cfg: _Config) -> _Node:
    """Register a group of consecutive frames to its own iteratively refined mean."""
    n = len(frames)
    shifts = np.zeros((n, 2))
    if n > 1:
        plan = cfg.plan(frames.shape[1:])
        spec = pc.spectra(frames, plan)
        # Integer pass against the (motion-blurred) mean, then sub-pixel passes against
        # the mean of the frames registered so far, each sharper than the last.
        shifts = _robust_pass(spec, None, plan, cfg, 1)
        for _ in range(cfg.iterations):
            shifts = _robust_pass(spec, shifts, plan, cfg, cfg.upsample)
        del spec
    if cfg.mesh is not None:
        template = _mean_registered(frames, shifts)
        shifts = _mesh_from_rigid(template, frames, shifts, cfg, leave_one_out=True)
    return _Node(shifts, _mean_registered(frames, shifts), n)


def _merge(a: _Node, b: _Node, cfg: _Config) -> _Node:
    """Bring run `b` into the template frame of run `a` and pool the two templates."""
    d = _template_offset(a.template, b.template, cfg)
    if cfg.mesh is not None:
        d = _mesh_from_rigid(a.template, b.template[None], d, cfg)
    moved = apply_shifts(b.template[None], d, fill_value=np.nan, interpolation="linear")[0]
    wa = a.count / (a.count + b.count)
    pooled = np.where(np.isnan(moved), a.template, wa * a.template + (1 - wa) * moved)
    shifts = np.concatenate([a.shifts, b.shifts + d], axis=0)
    return _Node(shifts, pooled.astype(np.float32), a.count + b.count)


def _tree(nodes: list, merge: Callable) -> object:
    """Pairwise reduction of neighbours in time until one node is left."""
    while len(nodes) > 1:
        paired = [merge(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
        if len(nodes) % 2:
            paired.append(nodes[-1])
        nodes = paired
    return nodes[0]


def _split(n: int, group_size: int) -> list[tuple[int, int]]:
    """Near-equal consecutive groups of about group_size frames (no tiny last group)."""
    k = max(1, int(round(n / group_size)))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _register_chunk(block: np.ndarray, cfg: _Config) -> _Node:
    """Leaf task: groups of one movie chunk, registered and merged into one node."""
    frames = _prepare(block, cfg)
    nodes = [_register_group(frames[a:b], cfg) for a, b in _split(len(frames), cfg.group_size)]
    return _tree(nodes, lambda x, y: _merge(x, y, cfg))


def _refine_chunk(block: np.ndarray, template: np.ndarray, prior: np.ndarray, cfg: _Config) -> np.ndarray:
    """Refinement task: register every frame of a chunk to the global template.

    prior: (n, 2) first-pass rigid shifts of these frames in the template's frame; the
    peak is searched within +-_REFINE_RADIUS px of them, so a periodic texture or a
    spurious peak far away cannot take over.
    """
    frames = _prepare(block, cfg)
    plan = cfg.plan(template.shape)
    f_t = pc.template_spectrum(template, plan)
    out = []
    for a, b in _split(len(frames), cfg.group_size):
        spec = pc.spectra(frames[a:b], plan)
        s, _ = pc.estimate_spectra(
            f_t, spec, plan, cfg.max_shift, cfg.upsample, cfg.whiten, centre=prior[a:b], radius=_REFINE_RADIUS
        )
        if cfg.mesh is not None:
            s = _mesh_from_rigid(template, frames[a:b], s, cfg)
        out.append(s)
    return np.concatenate(out, axis=0)


# ----------------------------------------------------------------------------- driver


def _as_dask(movie: object, group_size: int) -> da.Array:
    data = getattr(movie, "data", movie) if hasattr(movie, "dims") else movie
    if isinstance(data, np.ndarray):
        data = da.from_array(data, chunks=(max(group_size * 4, 1), -1, -1))
    if not isinstance(data, da.Array) or data.ndim != 3:
        raise ValueError(f"estimate: movie must be a 3-D (frame, height, width) dask array, got {type(movie).__name__}")
    data = data.rechunk({1: -1, 2: -1})
    # Tiny frame chunks would make tiny groups (noisy templates): join them.
    chunks = data.chunks[0]
    if len(chunks) > 1 and min(chunks[:-1]) < group_size:
        data = data.rechunk({0: group_size * max(1, int(np.ceil(np.median(chunks) / group_size)))})
    return data


def _run(compute: Callable, obj: object) -> object:
    """Call the caller's compute on one dask object and unwrap dask.compute's 1-tuple."""
    out = compute(obj)
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    return out


def _validate(max_shift, upsample, group_size, mesh, spatial_downsample, overlap, max_deviation, iterations, shape,
              flatten) -> None:
    if not np.isfinite(max_shift) or max_shift <= 0:
        raise ValueError(f"estimate: max_shift must be a finite number > 0 px, got {max_shift}")
    if int(upsample) != upsample or upsample < 1:
        raise ValueError(f"estimate: upsample must be an integer >= 1, got {upsample}")
    if int(group_size) != group_size or group_size < 2:
        raise ValueError(f"estimate: group_size must be an integer >= 2 frames, got {group_size}")
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"estimate: iterations must be an integer >= 1, got {iterations}")
    if int(spatial_downsample) != spatial_downsample or spatial_downsample < 1:
        raise ValueError(f"estimate: spatial_downsample must be an integer >= 1 (1 = off), got {spatial_downsample}")
    if not np.isfinite(flatten) or flatten < 0:
        raise ValueError(f"estimate: flatten must be a number >= 0 px (0 = off), got {flatten}")
    if min(shape[1:]) // int(spatial_downsample) < 16:
        raise ValueError(f"estimate: frames of {shape[1:]} px are too small for spatial_downsample={spatial_downsample}")
    if mesh is not None:
        if len(mesh) != 2 or any(int(m) != m or m < 1 for m in mesh):
            raise ValueError(f"estimate: mesh must be None or (my, mx) with integers >= 1, got {mesh}")
    if not 0 <= overlap <= 1:
        raise ValueError(f"estimate: overlap must be in [0, 1], got {overlap}")
    if max_deviation is not None and (not np.isfinite(max_deviation) or max_deviation <= 0):
        raise ValueError(f"estimate: max_deviation must be None or a number > 0 px, got {max_deviation}")


def estimate_shifts(
    movie: da.Array,
    *,
    max_shift: float = 20.0,
    group_size: int = 64,
    upsample: int = 50,
    mesh: tuple[int, int] | None = None,
    spatial_downsample: int = 1,
    flatten: float = 0.0,
    destripe: bool = False,
    refine: bool = False,
    overlap: float = 0.5,
    max_deviation: float | None = None,
    taper: float = pc.DEFAULT_TAPER,
    lowpass: float = pc.DEFAULT_LOWPASS,
    highpass: float = pc.DEFAULT_HIGHPASS,
    whiten: float = pc.DEFAULT_WHITEN,
    iterations: int = 1,
    compute: Callable | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> np.ndarray:
    """Per-frame registration shifts of a (frame, height, width) movie, median-referenced.

    Returns float32 (T, 2) (dy, dx), or (T, my, mx, 2) patch shifts when `mesh=(my, mx)`.
    movie: dask array (or numpy / xarray wrapping one), float or uint8, streamed chunk by
    chunk. max_shift: px limit of |dy|, |dx|. group_size: frames per group template.
    upsample: sub-pixel precision 1/upsample px. spatial_downsample: estimate on a movie
    binned by this factor (faster; shifts scaled back). flatten: px sigma of the local
    mean each frame is divided by before registering (0 = off; see `_flatten`).
    destripe: remove each row's offset from every frame (`_destripe`; whether a movie
    needs it: `row_stripe_ratio`). refine: second pass against the global template.
    overlap: patch overlap (fraction of the patch spacing) in mesh mode. max_deviation: px
    limit of patch shifts around the rigid shift (default max_shift / 4, at least 1 px).
    taper / lowpass / highpass / whiten: see `phasecorr.estimate_batch`. iterations:
    sub-pixel passes per group after the integer pass (1 is enough with the leave-one-out
    templates; more did not help on the bench recordings).
    compute: callable computing a dask collection (default `dask.compute`).
    progress: optional callable(fraction, message).
    """
    shape = getattr(movie, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"estimate: movie must be 3-D (frame, height, width), got shape {shape}")
    _validate(max_shift, upsample, group_size, mesh, spatial_downsample, overlap, max_deviation, iterations, shape,
              flatten)
    compute = compute or dask.compute
    report = progress or (lambda fraction, message: None)
    factor = int(spatial_downsample)
    dev = max(1.0, max_shift / 4) if max_deviation is None else float(max_deviation)
    cfg = _Config(
        max_shift=float(max_shift) / factor,
        upsample=int(upsample),
        group_size=int(group_size),
        mesh=None if mesh is None else (int(mesh[0]), int(mesh[1])),
        overlap=float(overlap),
        max_deviation=dev / factor,
        factor=factor,
        flatten=float(flatten) / factor,
        destripe=bool(destripe),
        taper=float(taper),
        lowpass=float(lowpass) / factor,
        highpass=float(highpass) / factor,
        whiten=float(whiten),
        iterations=int(iterations),
    )
    n_frames = shape[0]
    if n_frames == 0:
        return np.zeros((0, 2) if mesh is None else (0, *cfg.mesh, 2), np.float32)
    data = _as_dask(movie, cfg.group_size)
    blocks = list(data.to_delayed().ravel())
    n_passes = 2 if refine else 1

    report(0.0, "motion: registering chunks to their own templates")
    leaves = [dask.delayed(_register_chunk)(b, cfg) for b in blocks]
    root = _run(compute, _tree(leaves, lambda x, y: dask.delayed(_merge)(x, y, cfg)))
    shifts = root.shifts
    if refine:
        report(1.0 / n_passes, "motion: refining against the global template")
        template = dask.delayed(root.template)
        rigid = shifts.reshape(len(shifts), -1, 2).mean(axis=1)
        bounds = np.cumsum((0,) + data.chunks[0])
        tasks = [
            dask.delayed(_refine_chunk)(b, template, rigid[bounds[i] : bounds[i + 1]], cfg) for i, b in enumerate(blocks)
        ]
        # One delayed result (an array), so a compute that returns a bare list is no issue.
        shifts = np.asarray(_run(compute, dask.delayed(np.concatenate)(tasks, axis=0)))
    report(1.0, "motion: done")
    return _finish(shifts, factor, float(max_shift))


def _finish(shifts: np.ndarray, factor: int, max_shift: float) -> np.ndarray:
    """Scale to input pixels, remove the median reference, clip to +-max_shift."""
    s = np.asarray(shifts, dtype=np.float64) * factor
    per_frame = s.reshape(len(s), -1, 2).mean(axis=1)
    s = s - np.median(per_frame, axis=0)
    return np.clip(s, -max_shift, max_shift).astype(np.float32)
