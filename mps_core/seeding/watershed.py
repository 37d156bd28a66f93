"""Steps 4a-4b: split NNDSVD spatial components into candidate-cell regions by watershed.

One component of the non-negative SVD usually holds several cells (and pieces of others).
:func:`segment_component` cuts it into regions:

1. Gaussian smoothing with ``sigma`` px (``scipy.ndimage.gaussian_filter``, ``truncate=4``);
   ``sigma=0`` skips it.
2. The *mask*: pixels whose smoothed value exceeds ``threshold_rel`` x the smoothed maximum
   AND where the component itself is positive (a region never claims pixels the component does
   not cover).
3. Markers: ``skimage.feature.peak_local_max`` of the masked smoothed image with
   ``min_distance`` (rounded to an integer >= 1 px; Chebyshev distance) and ``threshold_rel``,
   borders included.  A connected piece of the mask that got no peak (its peak was suppressed
   by a brighter one within ``min_distance`` across a gap) gets a marker at its own maximum, so
   a dim cell next to a bright one is not lost (over-seeding is acceptable, missing is not).
4. ``skimage.segmentation.watershed`` of the negated smoothed image from those markers,
   restricted to the mask; regions with fewer than ``min_region_size`` pixels are dropped.

The work is done on the bounding box of the component's support padded by the smoothing
radius, which gives exactly the full-frame result for a fraction of the cost.

Regions are stored compactly (:class:`Regions`): thousands of overlapping regions of a
600 x 600 field would need one full label image each; a region is instead a bounding box, a
boolean mask crop and a weight crop (the component's own values inside the mask, 0 outside),
with its area and its weight-weighted centroid.

:func:`search_parameters` (4a) tries every combination of candidate peak distances,
thresholds and smoothing widths on a seeded sample of components and scores how much the
resulting regions look like single plausible neurons (see its docstring for the objective).

Dominance (:class:`TopTwo`, :func:`dominant_parts`).  Later NNDSVD components hold many weak
residual regions around and between the cells that earlier components already represent
(shape and brightness residuals, noise).  They are not new cells, and their masks spread over
several cells, so merging them (steps 4c, 4g: a region overlapping a cell carries that cell's
trace) would bloat cells and chain separate cells together.  A pixel ``p`` of a region of
component ``c`` is *dominant* when ``W_c(p) >= min_dominance * max_{c' != c} W_c'(p)`` (the
largest value any OTHER component takes there; component 0, the background, is not fed in).
:func:`dominant_parts` keeps, of each region, the connected dominant part that holds its
largest dominant value; a region with no dominant pixel (a residual lying on a cell another
component holds) or whose part has fewer than ``min_region_size`` pixels is dropped.  A cell's
region in the component that represents it best is dominant over the cell's body; a residual's
mask is cut back to the gaps between cells, where it can no longer bridge two cells.  (Keeping
the part around the region's own peak only, and dropping the region when that peak is not
dominant, lost more touching cells on a dense synthetic field: 92 % vs 95 % found.)  :class:`TopTwo` accumulates, over batches of components, the
per-pixel largest value, its component and the second largest value (two (h, w) maps).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import regionprops
from skimage.segmentation import watershed

__all__ = ["Region", "Regions", "segment_component", "segment_all", "search_parameters",
           "TopTwo", "dominant_parts"]

# A boundary between two regions whose highest point reaches this fraction of the lower of the
# two regions' peaks is not a valley between two cells but a cut through one (see
# search_parameters).
_SHALLOW_SADDLE = 0.8
# Gaussian kernel radius in sigmas (scipy's default truncate).
_TRUNCATE = 4.0


class Region(NamedTuple):
    """One region: ``bbox = (y0, x0, y1, x1)`` (ends exclusive), boolean ``mask`` crop and
    float32 ``weights`` crop of shape ``(y1 - y0, x1 - x0)`` (0 outside the mask)."""

    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class Regions:
    """Compact container of ``n`` regions of a ``shape = (height, width)`` field.

    ``component`` (n,) int64 id of the component each region came from; ``bbox`` (n, 4) int64
    ``(y0, x0, y1, x1)``; ``masks`` / ``weights`` tuples of crops (bool / float32);
    ``centroid`` (n, 2) float64 ``(y, x)`` weighted by the weights (the geometric centre when a
    region's weights sum to 0); ``area`` (n,) int64 pixel counts.
    """

    shape: tuple[int, int]
    component: np.ndarray
    bbox: np.ndarray
    masks: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    centroid: np.ndarray
    area: np.ndarray

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def build(cls, shape: tuple[int, int], component: Sequence[int],
              regions: Sequence[Region]) -> "Regions":
        """Assemble from per-region crops, computing centroids and areas."""
        if len(component) != len(regions):
            raise ValueError(f"Regions.build: {len(component)} component ids for {len(regions)} regions")
        bbox = np.array([r.bbox for r in regions], np.int64).reshape(-1, 4)
        masks = tuple(np.asarray(r.mask, bool) for r in regions)
        weights = tuple(np.where(m, np.asarray(r.weights, np.float32), np.float32(0))
                        for r, m in zip(regions, masks))
        cen = np.array([_centroid(b, m, w) for b, m, w in zip(bbox, masks, weights)],
                       np.float64).reshape(-1, 2)
        area = np.array([int(m.sum()) for m in masks], np.int64)
        return cls(tuple(int(s) for s in shape), np.asarray(component, np.int64).reshape(-1),
                   bbox, masks, weights, cen, area)

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "Regions":
        return cls.build(shape, [], [])

    def region(self, i: int) -> Region:
        return Region(tuple(int(v) for v in self.bbox[i]), self.masks[i], self.weights[i])

    def subset(self, index) -> "Regions":
        """Regions selected by an integer index array or a boolean mask, in that order."""
        idx = np.arange(len(self))[np.asarray(index)] if len(self) else np.zeros(0, np.int64)
        return Regions(self.shape, self.component[idx], self.bbox[idx].reshape(-1, 4),
                       tuple(self.masks[i] for i in idx), tuple(self.weights[i] for i in idx),
                       self.centroid[idx].reshape(-1, 2), self.area[idx])

    def to_sparse(self, use_mask: bool = False) -> sp.csr_array:
        """(n, height * width) float32 CSR of the weights (or of the masks as 1.0)."""
        h, w = self.shape
        rows, cols, vals = [], [], []
        for i, (b, m, wt) in enumerate(zip(self.bbox, self.masks, self.weights)):
            yy, xx = np.nonzero(m)
            rows.append(np.full(yy.size, i, np.int64))
            cols.append((yy + b[0]) * w + (xx + b[1]))
            vals.append(np.ones(yy.size, np.float32) if use_mask else wt[yy, xx])
        if not rows:
            return sp.csr_array((0, h * w), dtype=np.float32)
        mat = sp.coo_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(len(self), h * w)).tocsr()
        mat.sort_indices()
        return mat

    def to_dense(self) -> np.ndarray:
        """(n, height, width) float32 weights; only for small sets (it is n full frames)."""
        out = np.zeros((len(self), *self.shape), np.float32)
        for i, (b, wt) in enumerate(zip(self.bbox, self.weights)):
            out[i, b[0]:b[2], b[1]:b[3]] = wt
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for storage (zarr/npz); :meth:`from_arrays` inverts it exactly."""
        sizes = np.array([m.size for m in self.masks], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        cat = (lambda xs, dt: np.concatenate([x.ravel() for x in xs]).astype(dt)
               if xs else np.zeros(0, dt))
        return {"shape": np.array(self.shape, np.int64), "component": self.component,
                "bbox": self.bbox, "offsets": offsets, "masks": cat(self.masks, bool),
                "weights": cat(self.weights, np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Regions":
        """Rebuild from :meth:`to_arrays` output."""
        bbox = np.asarray(arrays["bbox"], np.int64).reshape(-1, 4)
        off = np.asarray(arrays["offsets"], np.int64)
        regs = []
        for i, b in enumerate(bbox):
            crop = (int(b[2] - b[0]), int(b[3] - b[1]))
            sl = slice(off[i], off[i + 1])
            regs.append(Region(tuple(int(v) for v in b), arrays["masks"][sl].reshape(crop),
                               arrays["weights"][sl].reshape(crop)))
        return cls.build(tuple(int(v) for v in arrays["shape"]), arrays["component"], regs)


def _centroid(bbox, mask, weights) -> tuple[float, float]:
    yy, xx = np.nonzero(mask)
    if yy.size == 0:
        return (np.nan, np.nan)
    w = weights[yy, xx].astype(np.float64)
    if not w.sum() > 0:
        w = np.ones_like(w)
    return (bbox[0] + float(yy @ w / w.sum()), bbox[1] + float(xx @ w / w.sum()))


# ----------------------------------------------------------------------------- one component


def _check_segment_params(min_distance, threshold_rel, sigma, min_region_size) -> None:
    if not min_distance > 0:
        raise ValueError(f"watershed: min_distance must be > 0 px, got {min_distance!r}")
    if not 0 < threshold_rel < 1:
        raise ValueError(f"watershed: threshold_rel must be in (0, 1), got {threshold_rel!r}")
    if not sigma >= 0:
        raise ValueError(f"watershed: sigma must be >= 0 px, got {sigma!r}")
    if not min_region_size >= 0:
        raise ValueError(f"watershed: min_region_size must be >= 0 px, got {min_region_size!r}")


def _support_box(img: np.ndarray, pad: int) -> tuple[int, int, int, int] | None:
    """Bounding box of img > 0 padded by ``pad`` px (clipped), or None when img has no support."""
    rows = np.flatnonzero(img.max(1) > 0)
    if rows.size == 0:
        return None
    cols = np.flatnonzero(img.max(0) > 0)
    h, w = img.shape
    return (max(rows[0] - pad, 0), max(cols[0] - pad, 0),
            min(rows[-1] + 1 + pad, h), min(cols[-1] + 1 + pad, w))


def _label_component(img, min_distance, threshold_rel, sigma, min_region_size):
    """Watershed labels of one component on its padded support box.

    Returns ``(labels, smoothed, crop_img, (y0, x0))`` with labels renumbered 1..m after
    dropping small regions, or None when the component is empty.
    """
    img = np.asarray(img, np.float32)
    if not np.all(np.isfinite(img)):
        raise ValueError("watershed: component image holds NaN or Inf values")
    pad = int(_TRUNCATE * sigma + 0.5) + 1  # exact: beyond the kernel radius the crop sees zeros
    box = _support_box(img, pad)
    if box is None:
        return None
    y0, x0, y1, x1 = box
    crop = img[y0:y1, x0:x1]
    sm = ndimage.gaussian_filter(crop, sigma, truncate=_TRUNCATE) if sigma > 0 else crop.copy()
    top = float(sm.max())
    if not top > 0:
        return None
    mask = (sm > threshold_rel * top) & (crop > 0)
    masked = np.where(mask, sm, np.float32(0))
    md = max(1, int(round(float(min_distance))))
    peaks = peak_local_max(masked, min_distance=md, threshold_rel=threshold_rel,
                           exclude_border=False)
    markers = np.zeros(crop.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    islands, n_isl = ndimage.label(mask)
    if n_isl:
        has_peak = np.zeros(n_isl + 1, bool)
        has_peak[islands[peaks[:, 0], peaks[:, 1]]] = True
        lonely = np.flatnonzero(~has_peak[1:]) + 1
        if lonely.size:
            for k, flat in enumerate(_label_argmax(sm, islands, n_isl)[lonely]):
                markers.flat[flat] = len(peaks) + 1 + k
    labels = watershed(-sm, markers, mask=mask)
    labels = _drop_small(labels, min_region_size)
    return labels, sm, crop, (y0, x0)


# Per-label maxima by one unbuffered ufunc pass: scipy.ndimage.maximum(_position) argsort the
# whole image per call, which was 40 % of 4a's search time.
def _label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) maximum of ``values`` over each label 0..n (-inf where a label is absent)."""
    out = np.full(n + 1, -np.inf, values.dtype)
    np.maximum.at(out, labels.ravel(), values.ravel())
    return out


def _label_argmax(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) flat index of the first (raster order) maximum of ``values`` in each label 0..n
    (-1 where a label is absent)."""
    top = _label_max(values, labels, n)
    lab = labels.ravel()
    hit = np.flatnonzero(values.ravel() == top[lab])
    first = np.full(n + 1, -1, np.int64)
    uniq, at = np.unique(lab[hit], return_index=True)  # hit is ascending: first of each label
    first[uniq] = hit[at]
    return first


def _drop_small(labels: np.ndarray, min_size: float) -> np.ndarray:
    """Zero labels with fewer than min_size pixels and renumber the rest 1..m in label order."""
    counts = np.bincount(labels.ravel())
    keep = counts >= min_size
    keep[0] = False
    lut = np.zeros(counts.size, np.int32)
    lut[keep] = np.arange(1, keep.sum() + 1)
    return lut[labels]


def _regions_from_labels(labels, crop, origin) -> list[Region]:
    out = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == lab
        wt = np.where(m, crop[sl], np.float32(0)).astype(np.float32)
        bbox = (origin[0] + sl[0].start, origin[1] + sl[1].start,
                origin[0] + sl[0].stop, origin[1] + sl[1].stop)
        out.append(Region(bbox, m, wt))
    return out


def segment_component(img: np.ndarray, *, min_distance: float, threshold_rel: float,
                      sigma: float, min_region_size: float) -> list[Region]:
    """Watershed regions of one (height, width) non-negative component image (see module
    docstring); empty list for an all-zero image.  Regions come in label order (peaks by
    decreasing height, then islands)."""
    _check_segment_params(min_distance, threshold_rel, sigma, min_region_size)
    if np.ndim(img) != 2:
        raise ValueError(f"segment_component: img must be 2-D (height, width), got shape {np.shape(img)}")
    res = _label_component(img, min_distance, threshold_rel, sigma, min_region_size)
    if res is None:
        return []
    labels, _, crop, origin = res
    return _regions_from_labels(labels, crop, origin)


def segment_all(W: np.ndarray, *, min_distance: float, threshold_rel: float, sigma: float,
                min_region_size: float, component_ids: Sequence[int] | None = None) -> Regions:
    """Regions of every component of ``W`` (k, height, width).

    ``component_ids`` labels the components (default ``0..k-1``; callers that drop the
    background component 0 pass ``1..k``).
    """
    W = np.asarray(W)
    if W.ndim != 3:
        raise ValueError(f"segment_all: W must be (component, height, width), got shape {W.shape}")
    ids = np.arange(W.shape[0]) if component_ids is None else np.asarray(component_ids)
    if ids.shape != (W.shape[0],):
        raise ValueError(f"segment_all: component_ids must have {W.shape[0]} entries, got {ids.shape}")
    comps, regs = [], []
    for cid, img in zip(ids, W):
        r = segment_component(img, min_distance=min_distance, threshold_rel=threshold_rel,
                              sigma=sigma, min_region_size=min_region_size)
        regs.extend(r)
        comps.extend([int(cid)] * len(r))
    return Regions.build(W.shape[1:], comps, regs)


# ----------------------------------------------------------------------------- dominance


class TopTwo:
    """Per-pixel largest value, its component id and the second largest value over
    components fed in batches (module docstring, "Dominance")."""

    def __init__(self, shape: tuple[int, int]):
        self.best = np.zeros(shape, np.float32)
        self.second = np.zeros(shape, np.float32)
        self.best_id = np.full(shape, -1, np.int64)

    def update(self, W: np.ndarray, component_ids: Sequence[int]) -> None:
        """Add a batch ``W`` (k, height, width) of components labelled ``component_ids``."""
        W = np.asarray(W, np.float32)
        ids = np.asarray(component_ids, np.int64)
        if W.ndim != 3 or W.shape[1:] != self.best.shape or ids.shape != (W.shape[0],):
            raise ValueError(f"TopTwo.update: W must be (k, {self.best.shape[0]}, "
                             f"{self.best.shape[1]}) with k component ids, got {W.shape}, {ids.shape}")
        for cid, img in zip(ids, W):
            higher = img > self.best
            # the old best drops to second where the new one beats it, else img may be second
            self.second = np.where(higher, self.best, np.maximum(self.second, img))
            self.best = np.where(higher, img, self.best)
            self.best_id = np.where(higher, cid, self.best_id)


def dominant_parts(regions: Regions, top: TopTwo, min_dominance: float,
                   min_region_size: float = 1) -> tuple[Regions, np.ndarray]:
    """The dominant part of every region (module docstring, "Dominance").

    Returns the new regions and, for each, the index of the region it came from.  With
    ``min_dominance`` 0 every region is returned unchanged."""
    if not min_dominance >= 0:
        raise ValueError(f"dominant_parts: min_dominance must be >= 0, got {min_dominance!r}")
    if min_dominance == 0:
        return regions, np.arange(len(regions))
    comps, regs, index = [], [], []
    for i in range(len(regions)):
        y0, x0, y1, x1 = (int(v) for v in regions.bbox[i])
        w, m = regions.weights[i], regions.masks[i]
        sl = (slice(y0, y1), slice(x0, x1))
        mine = top.best_id[sl] == regions.component[i]
        other = np.where(mine, top.second[sl], top.best[sl])
        keep = m & (w >= min_dominance * other)
        if not keep.any():
            continue
        py, px = np.unravel_index(int(np.argmax(np.where(keep, w, -np.inf))), w.shape)
        pieces, _ = ndimage.label(keep)
        keep = pieces == pieces[py, px]
        if keep.sum() < max(min_region_size, 1):
            continue
        rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = keep[r0:r1, c0:c1]
        regs.append(Region((y0 + r0, x0 + c0, y0 + r1, x0 + c1), crop,
                           np.where(crop, w[r0:r1, c0:c1], np.float32(0))))
        comps.append(int(regions.component[i]))
        index.append(i)
    return Regions.build(regions.shape, comps, regs), np.asarray(index, np.int64)


# ----------------------------------------------------------------------------- 4a search


def _shallow_splits(labels: np.ndarray, sm: np.ndarray) -> int:
    """Number of adjacent region pairs whose shared boundary is not a valley.

    For every pair of 4-neighbouring pixels in two different regions the boundary height is
    the lower of the two smoothed values; a pair of regions is a shallow split when its
    highest boundary point reaches ``_SHALLOW_SADDLE`` x the lower of the two regions' peaks.
    """
    n = int(labels.max())
    if n < 2:
        return 0
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    h = np.concatenate([np.minimum(sm[:, :-1], sm[:, 1:]).ravel(),
                        np.minimum(sm[:-1, :], sm[1:, :]).ravel()])
    sel = (a != b) & (a > 0) & (b > 0)
    if not sel.any():
        return 0
    lo, hi, h = np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel]), h[sel]
    key = lo.astype(np.int64) * (n + 1) + hi
    uniq, inv = np.unique(key, return_inverse=True)
    saddle = np.full(uniq.size, -np.inf)
    np.maximum.at(saddle, inv, h)
    peaks = _label_max(sm, labels, n).astype(np.float64)
    lower_peak = np.minimum(peaks[uniq // (n + 1)], peaks[uniq % (n + 1)])
    return int(np.sum(saddle >= _SHALLOW_SADDLE * lower_peak))


def _solidity(p, known: dict) -> float:
    """A region's solidity, computed once per distinct shape: the combinations of a search
    cut many identical regions, and the convex hull was half of 4a's time."""
    key = (p.image.shape, np.packbits(p.image).tobytes())
    if key not in known:
        known[key] = float(p.solidity)
    return known[key]


def _score_combo(W, sample, md, thr, sig, lo, hi, min_region_size, known: dict) -> dict:
    in_range, solidity, n_regions, n_shallow = [], [], 0, 0
    for k in sample:
        res = _label_component(W[k], md, thr, sig, min_region_size)
        if res is None:
            continue
        labels, sm, _, _ = res
        for p in regionprops(labels):
            in_range.append(lo <= p.area <= hi)
            solidity.append(_solidity(p, known))
        n_regions += int(labels.max())
        n_shallow += _shallow_splits(labels, sm)
    row = {"min_distance": float(md), "threshold": float(thr), "sigma": float(sig),
           "n_regions": n_regions, "regions_per_component": n_regions / max(len(sample), 1)}
    if n_regions == 0:
        row.update(in_range_fraction=0.0, mean_solidity=0.0, plausible=0.0,
                   shallow_split_fraction=0.0, score=-1.0)
        return row
    ok = np.asarray(in_range, float)
    sol = np.asarray(solidity, float)
    split = min(n_shallow / n_regions, 1.0)
    plausible = float(np.mean(ok * sol))
    row.update(in_range_fraction=float(ok.mean()), mean_solidity=float(sol.mean()),
               plausible=plausible, shallow_split_fraction=split, score=plausible - split)
    return row


def search_parameters(W: np.ndarray, *, min_distances: Sequence[float], thresholds: Sequence[float],
                      sigmas: Sequence[float], expected_area: tuple[float, float],
                      sample_size: int = 20, seed: int = 0,
                      min_region_size: float = 1) -> tuple[dict, list[dict]]:
    """Suggest (min_distance, threshold, sigma) for :func:`segment_all` (step 4a).

    Every combination (in ``itertools.product(min_distances, thresholds, sigmas)`` order) is run
    on the same seeded sample of ``sample_size`` components of ``W`` (k, height, width), with
    ``min_region_size`` as in 4b, and scored by

        score = mean over regions of [area in expected_area] x solidity
                - (shallow splits / regions, capped at 1)

    * ``[area in expected_area]`` is 1 when ``lo <= area <= hi`` (px), else 0: regions must be
      cell-sized (too small = fragments or specks, too large = several cells or background);
    * solidity = area / convex-hull area (skimage): a cell is compact, bleeding into the noise
      or joining two cells gives ragged or peanut shapes;
    * a *shallow split* is a pair of touching regions whose common boundary reaches 80 % of the
      lower of their two peaks in the smoothed image: no valley separates them, so the
      watershed has cut one cell into pieces (fragmentation).

    The score is a mean per region, so more regions do not raise it: a combination that finds
    many peaks is only preferred when its regions are individually more plausible.  Ties go to
    the earliest combination.  Returns ``(best, table)``: ``best = {"min_distance",
    "threshold", "sigma"}`` and one row per combination with the score and its parts.
    Deterministic for a given ``seed``.
    """
    W = np.asarray(W)
    if W.ndim != 3:
        raise ValueError(f"search_parameters: W must be (component, height, width), got shape {W.shape}")
    for name, vals in (("min_distances", min_distances), ("thresholds", thresholds), ("sigmas", sigmas)):
        if len(vals) == 0:
            raise ValueError(f"search_parameters: {name} must list at least one value")
    lo, hi = (float(v) for v in expected_area)
    if not 0 <= lo < hi:
        raise ValueError(f"search_parameters: expected_area must be (lo, hi) px with 0 <= lo < hi, got {expected_area!r}")
    if int(sample_size) != sample_size or sample_size < 1:
        raise ValueError(f"search_parameters: sample_size must be a positive integer, got {sample_size!r}")
    for md, thr, sig in itertools.product(min_distances, thresholds, sigmas):
        _check_segment_params(md, thr, sig, min_region_size)
    nonempty = np.flatnonzero(W.reshape(W.shape[0], -1).max(1) > 0)
    rng = np.random.default_rng(seed)
    m = min(int(sample_size), nonempty.size)
    sample = np.sort(rng.choice(nonempty, m, replace=False)) if m else nonempty
    known: dict = {}
    table = [_score_combo(W, sample, md, thr, sig, lo, hi, min_region_size, known)
             for md, thr, sig in itertools.product(min_distances, thresholds, sigmas)]
    best_row = table[int(np.argmax([r["score"] for r in table]))]
    best = {k: best_row[k] for k in ("min_distance", "threshold", "sigma")}
    return best, table
