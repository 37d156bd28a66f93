"""Steps 7a-7c: prepare the spatial update (dilation, clusters of units, one box per cluster).

7a `dilate`: gives each footprint room to grow. The support of unit u is the set of pixels above
``threshold * max(a_u)``; it is dilated with a disk of radius ``window`` (pixels whose centre is
within ``window`` of the support). Inside the dilated support a pixel keeps its value if it is
positive, else gets the small positive fill ``fill * max(a_u)`` (so "may be non-zero in 7e" is
simply ``A_dilated > 0``, and the fill is a harmless warm start); outside it the footprint is
0 (faint tails further than ``window`` from the thresholded support are dropped).

7b `cluster_units`: units whose dilated footprints overlap must be solved together in 7e. Two
units are joined when their supports (``A > 0``) share MORE than ``overlap_threshold`` of the
smaller support's pixels and, if ``max_distance`` is given, their centroids (intensity-weighted
centres of mass) are CLOSER than ``max_distance`` (candidate pairs come from a KD-tree query).
Connected groups of this graph are clusters; a group larger than ``max_cluster_size`` is split
deterministically by recursive bisection of its centroids along their wider axis (ties broken
by unit index), into the fewest parts of at most ``max_cluster_size`` units. Every unit ends
in exactly one cluster; cluster labels are numbered 0..K-1 in order of their smallest unit.

7c `cluster_boxes`: per cluster, the bounding box of the pixels above ``intensity_threshold``
times each member's maximum, grown by ``dilation_radius`` (the bounding box of the support
dilated by a disk of that radius is exactly this) plus ``padding``, then widened symmetrically
to at least ``min_size`` per side, and finally clipped to the frame, shifted inwards rather
than shrunk where the frame allows. Boxes are half-open ``(y0, y1, x0, x1)``.
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .sparse_footprints import as_csr, centroids_csr, row_max

__all__ = ["dilate", "cluster_units", "cluster_boxes", "centroids"]

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------- 7a dilation


def dilate(A: np.ndarray, *, window: int, threshold: float, fill: float = 1e-3) -> np.ndarray:
    """(n, H, W) float32 dilated footprints (see the module docstring).

    ``window`` disk radius in pixels (>= 0, 0 only thresholds), ``threshold`` fraction of each
    unit's maximum in [0, 1), ``fill`` value given to zero pixels inside the dilated support,
    as a fraction of the unit's maximum, in (0, threshold] when threshold > 0.
    """
    A = _check_footprints(A, "dilate")
    if int(window) != window or window < 0:
        raise ValueError(f"dilate: window must be an integer >= 0 (pixels), got {window!r}")
    if not 0 <= threshold < 1:
        raise ValueError(f"dilate: threshold must be in [0, 1), got {threshold!r}")
    if not 0 < fill <= max(threshold, 1e-3):
        raise ValueError(f"dilate: fill must be in (0, max(threshold, 1e-3)], got {fill!r}")
    window = int(window)
    disk = _disk(window)
    out = np.zeros(A.shape, np.float32)
    H, W = A.shape[1:]
    for u, a in enumerate(A):
        peak = float(a.max())
        if peak <= 0:
            continue
        ys, xs = np.nonzero(a > threshold * peak)
        y0, y1 = max(ys.min() - window, 0), min(ys.max() + window + 1, H)
        x0, x1 = max(xs.min() - window, 0), min(xs.max() + window + 1, W)
        crop = a[y0:y1, x0:x1]
        core = (crop > threshold * peak).astype(np.uint8)
        grown = cv2.dilate(core, disk, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        out[u, y0:y1, x0:x1] = np.where(grown, np.maximum(crop, np.float32(fill * peak)), 0)
    return out


def _disk(radius: int) -> np.ndarray:
    """uint8 structuring element: offsets with dy^2 + dx^2 <= radius^2."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).astype(np.uint8)


# ----------------------------------------------------------------------------- 7b clusters


def centroids(A: np.ndarray | sp.spmatrix, shape: tuple[int, int] | None = None) -> np.ndarray:
    """(n, 2) intensity-weighted (y, x) centres of mass; NaN for empty footprints.

    ``A`` dense (n, H, W) or sparse (n, H*W) with ``shape`` = (H, W); both are summed over
    their non-zero pixels only (float64), so they give identical results."""
    csr, shp = as_csr(A, shape, "centroids")
    return centroids_csr(csr, shp)


def cluster_units(A: np.ndarray | sp.spmatrix, *, max_cluster_size: int = 10,
                  overlap_threshold: float = 0.2, max_distance: float | None = None,
                  min_area: int = 0, min_intensity: float = 0.0,
                  shape: tuple[int, int] | None = None) -> np.ndarray:
    """(n,) int64 cluster label of every unit (see the module docstring).

    ``A`` dense (n, H, W) footprints, or sparse (n, H*W) with ``shape`` = (H, W) (no dense
    copy is made; the result is the same). Units with fewer than ``min_area`` support pixels,
    or whose peak is under ``min_intensity`` times the brightest unit's peak, are never
    joined to others (each is its own cluster).
    """
    A, shape = as_csr(A, shape, "cluster_units")
    if int(max_cluster_size) != max_cluster_size or max_cluster_size < 1:
        raise ValueError(f"cluster_units: max_cluster_size must be an integer >= 1, got "
                         f"{max_cluster_size!r}")
    if not 0 <= overlap_threshold <= 1:
        raise ValueError(f"cluster_units: overlap_threshold must be in [0, 1], got {overlap_threshold!r}")
    if max_distance is not None and not max_distance > 0:
        raise ValueError(f"cluster_units: max_distance must be > 0 or None, got {max_distance!r}")
    n = A.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    cent = centroids_csr(A, shape)
    i, j = _overlap_pairs(A, overlap_threshold, min_area, min_intensity)
    if max_distance is not None and i.size:
        i, j = _within_distance(i, j, cent, max_distance)
    graph = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    groups = []
    for c in np.unique(comp):
        groups += _split(np.flatnonzero(comp == c), np.nan_to_num(cent), int(max_cluster_size))
    return _number(groups, n)


def _overlap_pairs(A: sp.csr_matrix, threshold, min_area,
                   min_intensity) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j whose supports share > threshold of the smaller support's pixels."""
    S = (A > 0).astype(np.float32)
    area = np.asarray(S.sum(axis=1)).ravel()
    peak = row_max(A)
    eligible = (area >= max(min_area, 1)) & (peak >= min_intensity * max(peak.max(), 0))
    inter = sp.triu(S @ S.T, k=1).tocoo()  # shared pixel counts, only overlapping pairs
    i, j, shared = inter.row, inter.col, inter.data
    ok = (shared > threshold * np.minimum(area[i], area[j])) & eligible[i] & eligible[j]
    return i[ok], j[ok]


def _within_distance(i, j, cent, max_distance) -> tuple[np.ndarray, np.ndarray]:
    """Keep the pairs whose centroids are closer than max_distance (KD-tree candidates)."""
    finite = np.all(np.isfinite(cent), axis=1)
    idx = np.flatnonzero(finite)
    near = cKDTree(cent[idx]).query_pairs(r=np.nextafter(max_distance, 0), output_type="ndarray")
    near = np.sort(idx[near], axis=1) if near.size else np.zeros((0, 2), np.int64)
    n = cent.shape[0]
    keys_near = near[:, 0] * n + near[:, 1]
    keep = np.isin(np.minimum(i, j) * n + np.maximum(i, j), keys_near)
    return i[keep], j[keep]


def _split(members: np.ndarray, cent: np.ndarray, max_size: int) -> list[np.ndarray]:
    """Recursive bisection along the wider centroid axis into parts of <= max_size units."""
    m = members.size
    if m <= max_size:
        return [members]
    parts = -(-m // max_size)  # fewest parts that can hold everyone
    left_parts = -(-parts // 2)
    n_left = min(round(m * left_parts / parts), left_parts * max_size)
    n_left = max(n_left, m - (parts - left_parts) * max_size)
    pts = cent[members]
    axis = int(np.argmax(np.ptp(pts, axis=0)))
    order = np.lexsort((members, pts[:, axis]))  # by coordinate, ties by unit index
    return (_split(members[order[:n_left]], cent, max_size)
            + _split(members[order[n_left:]], cent, max_size))


def _number(groups: list[np.ndarray], n: int) -> np.ndarray:
    """Labels 0..K-1 in order of each group's smallest unit."""
    labels = np.empty(n, np.int64)
    for k, g in enumerate(sorted(groups, key=lambda g: int(g.min()))):
        labels[g] = k
    return labels


# ----------------------------------------------------------------------------- 7c boxes


def cluster_boxes(A: np.ndarray | sp.spmatrix, labels: np.ndarray, *, dilation_radius: int = 10,
                  padding: int = 20, min_size: int = 40, intensity_threshold: float = 0.05,
                  shape: tuple[int, int] | None = None) -> list[Box]:
    """One half-open ``(y0, y1, x0, x1)`` box per cluster label 0..K-1 (module docstring).

    ``A`` dense (n, H, W), or sparse (n, H*W) with ``shape`` = (H, W). For dense ``A``,
    ``shape`` is checked against its frame when given. ValueError if a cluster has only
    empty footprints.
    """
    if sp.issparse(A):
        if shape is None:
            raise ValueError("cluster_boxes: sparse footprints need shape (height, width)")
        A, (H, W) = as_csr(A, shape, "cluster_boxes")
    else:
        A = _check_footprints(A, "cluster_boxes")
        H, W = A.shape[1:]
        if shape is not None and tuple(shape) != (H, W):
            raise ValueError(f"cluster_boxes: shape {tuple(shape)} does not match A's frame "
                             f"{(H, W)}")
        A, _ = as_csr(A, None, "cluster_boxes")
    labels = check_labels(labels, A.shape[0], "cluster_boxes")
    for name, v in (("dilation_radius", dilation_radius), ("padding", padding)):
        if int(v) != v or v < 0:
            raise ValueError(f"cluster_boxes: {name} must be an integer >= 0, got {v!r}")
    if int(min_size) != min_size or min_size < 1:
        raise ValueError(f"cluster_boxes: min_size must be an integer >= 1, got {min_size!r}")
    if not 0 <= intensity_threshold < 1:
        raise ValueError(f"cluster_boxes: intensity_threshold must be in [0, 1), got "
                         f"{intensity_threshold!r}")
    grow = int(dilation_radius) + int(padding)
    # float32 thresholds, as the dense comparison ``A > threshold * peak`` computes them
    cut = intensity_threshold * row_max(A)
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    inside = (A.data > cut[rows]) & (A.data > 0)
    lab, pix = labels[rows[inside]], A.indices[inside].astype(np.int64)
    ys, xs = np.divmod(pix, W)
    K = int(labels.max()) + 1 if labels.size else 0
    lo_y, lo_x = np.full(K, H, np.int64), np.full(K, W, np.int64)
    hi_y, hi_x = np.full(K, -1, np.int64), np.full(K, -1, np.int64)
    np.minimum.at(lo_y, lab, ys)
    np.minimum.at(lo_x, lab, xs)
    np.maximum.at(hi_y, lab, ys)
    np.maximum.at(hi_x, lab, xs)
    boxes = []
    for k in range(K):
        if hi_y[k] < 0:
            members = np.flatnonzero(labels == k)
            raise ValueError(f"cluster_boxes: cluster {k} (units {members.tolist()}) has only empty "
                             f"footprints; drop empty units first")
        y0, y1 = _span(int(lo_y[k]) - grow, int(hi_y[k]) + 1 + grow, int(min_size), H)
        x0, x1 = _span(int(lo_x[k]) - grow, int(hi_x[k]) + 1 + grow, int(min_size), W)
        boxes.append((y0, y1, x0, x1))
    return boxes


def _span(lo: int, hi: int, min_size: int, size: int) -> tuple[int, int]:
    """[lo, hi) widened to min_size around its centre, then fitted inside [0, size)."""
    if hi - lo < min_size:
        extra = min_size - (hi - lo)
        lo, hi = lo - extra // 2, hi + extra - extra // 2
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > size:
        lo, hi = lo - (hi - size), size
    return int(max(lo, 0)), int(min(hi, size))


# ----------------------------------------------------------------------------- checks


def check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    """(n,) int64 labels that number clusters 0..K-1 without gaps, or ValueError."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or (n and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{where}: labels must be ({n},) integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or np.unique(labels).size != labels.max() + 1):
        raise ValueError(f"{where}: labels must number the clusters 0..K-1 without gaps")
    return labels


def _check_footprints(A: np.ndarray, where: str) -> np.ndarray:
    A = np.asarray(A)
    if A.ndim != 3:
        raise ValueError(f"{where}: A must be (unit, height, width), got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{where}: A holds NaN or Inf values")
    return A.astype(np.float32, copy=False)
