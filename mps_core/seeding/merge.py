"""Steps 4c and 4g: merge candidate regions that describe the same cell.

Spatial merge (4c, :func:`spatial_merge`)
    The same cell usually appears in several NNDSVD components, so watershed yields several
    near-identical regions for it.  Two regions *may merge* when their centroids are closer
    than ``distance`` px (strictly) and the larger area is at most ``size_ratio`` times the
    smaller (a small region near a big one is a different thing, not a duplicate).  Groups are
    formed by *leader clustering* in a canonical order: regions are visited by decreasing
    weight sum (ties: centroid y, x, area, component, bounding box); a region joins the
    nearest already chosen leader it may merge with (ties: the stronger leader), otherwise it
    becomes a leader itself.  Every member is therefore within ``distance`` of its group's
    strongest region.  (Connected components of the link graph were used before; on real
    NNDSVD output, whose later components hold many weak residual regions around and between
    cells, their chains ran across the whole field and merged every cell into one region.)
    The visiting order depends only on the regions' own values, so the partition does not
    depend on the input order; the output is then sorted canonically (by centroid y, x, area,
    component, bounding box, weight sum) so the *result* does not either.  A merged region's
    mask is the union of its members' masks and its weights their pixelwise MAXIMUM (not the
    sum: duplicates of one cell must not double its brightness, and the max is exactly
    order-independent); its component id is the one of the member with the largest weight sum
    (ties: smallest id).  Finally regions with fewer than ``min_size`` pixels are dropped.

Temporal merge (4g, :func:`temporal_merge`)
    A cell split between two components gives two footprints that overlap and carry the same
    activity.  Two components are linked when BOTH
      * their traces' Pearson correlation is above ``corr_threshold``, and
      * their footprints' overlap ``|supp_i & supp_j| / min(|supp_i|, |supp_j|)`` (support =
        pixels > 0) is above ``overlap_threshold`` (relative to the smaller footprint, so a
        small piece inside a large footprint counts as fully overlapping).
    Correlations are only computed for overlapping pairs (found with one sparse product), so
    thousands of components cost little.  Groups are the connected components of the link
    graph (chains merge consistently).  A group's footprint is the sum of its members'
    footprints, each weighted by the RMS of its trace (its share of A.C), renormalised like
    step 4e (``normalisation``); its trace is RECOMPUTED from the movie by the caller's
    ``recompute(A_merged) -> C_merged`` (see :func:`mps_core.seeding.extract.make_recompute`),
    never copied from a member.  One pass: merged components are not compared again.

    With ``demix`` the traces are compared after least-squares demixing: the weighted mean
    traces of overlapping footprints share each other's light, so in a dense field two
    neighbouring cells' raw traces correlate above 0.75 about as often as two halves of one
    cell (on the bench's CA1 recording, 59 of 92 overlapping pairs of distinct planted cells;
    demixed, 1).  Under the 4e convention ``A_i . Y = sum(A_i) max(A_i) C_i``, so the
    demixed traces ``(A A^T + ridge)^-1 (A . Y)`` come from the traces and footprints alone,
    without another read of the movie; the small ridge (``_RIDGE`` x the mean squared
    footprint norm) keeps near-duplicate footprints from amplifying noise.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg  # noqa: F401  (sp.linalg.splu)
from scipy.sparse.csgraph import connected_components

from .extract import footprints_to_csr, normalise_rows
from .watershed import Region, Regions

__all__ = ["spatial_merge", "temporal_merge", "link_groups"]


def link_groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(n,) group label of each node given edges (i, j): connected components, labelled by
    order of their smallest member (so labels do not depend on the edge order)."""
    if n == 0:
        return np.zeros(0, np.int64)
    g = sp.coo_array((np.ones(len(i), np.int8), (np.asarray(i, np.int64), np.asarray(j, np.int64))),
                     shape=(n, n))
    _, lab = connected_components(g, directed=False)
    # relabel by first occurrence so group k's smallest member precedes group k+1's
    _, first = np.unique(lab, return_index=True)
    order = np.argsort(first)
    relabel = np.empty_like(order)
    relabel[order] = np.arange(order.size)
    return relabel[lab].astype(np.int64)


# ----------------------------------------------------------------------------- 4c


def _leader_groups(regions: Regions, distance: float, size_ratio: float) -> np.ndarray:
    """(n,) group label of each region by leader clustering in canonical order (docstring).

    Leaders are kept in a grid of ``distance``-sized cells, so each region only looks at the
    leaders of the 3 x 3 cells around it."""
    n = len(regions)
    cen, area = regions.centroid, regions.area.astype(np.float64)
    mass = np.array([w.sum(dtype=np.float64) for w in regions.weights])
    b = regions.bbox
    order = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], regions.component, area,
                        cen[:, 1], cen[:, 0], -mass))
    cell = np.floor(cen / distance).astype(np.int64)
    grid: dict[tuple[int, int], list[int]] = {}
    label = np.full(n, -1, np.int64)
    rank = np.empty(n, np.int64)  # visiting rank of each leader (lower = stronger)
    n_groups = 0
    for r, i in enumerate(order):
        best, best_d = -1, np.inf
        cy, cx = cell[i]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                for lead in grid.get((cy + dy, cx + dx), ()):
                    d = float(np.hypot(*(cen[i] - cen[lead])))
                    if d >= distance or max(area[i], area[lead]) > size_ratio * min(area[i], area[lead]):
                        continue
                    if d < best_d or (d == best_d and rank[lead] < rank[best]):
                        best, best_d = lead, d
        if best < 0:
            label[i], rank[i] = n_groups, r
            n_groups += 1
            grid.setdefault((cy, cx), []).append(i)
        else:
            label[i] = label[best]
    return label


def _merge_members(regions: Regions, members: np.ndarray) -> tuple[int, Region]:
    """(component id, Region) of the pixelwise max of ``members``."""
    b = regions.bbox[members]
    y0, x0 = b[:, 0].min(), b[:, 1].min()
    y1, x1 = b[:, 2].max(), b[:, 3].max()
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    wts = np.zeros((y1 - y0, x1 - x0), np.float32)
    for k in members:
        by0, bx0, by1, bx1 = regions.bbox[k]
        sl = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
        mask[sl] |= regions.masks[k]
        np.maximum(wts[sl], regions.weights[k], out=wts[sl])
    mass = np.array([regions.weights[k].sum(dtype=np.float64) for k in members])
    comps = regions.component[members]
    best = np.lexsort((comps, -mass))[0]  # largest mass, then smallest component id
    return int(comps[best]), Region((int(y0), int(x0), int(y1), int(x1)), mask, wts)


def _canonical_order(regions: Regions) -> np.ndarray:
    wsum = np.array([w.sum(dtype=np.float64) for w in regions.weights])
    keys = (wsum, regions.bbox[:, 3], regions.bbox[:, 2], regions.bbox[:, 1], regions.bbox[:, 0],
            regions.component, regions.area, regions.centroid[:, 1], regions.centroid[:, 0])
    return np.lexsort(keys)


def spatial_merge(regions: Regions, *, distance: float, size_ratio: float = 5.0,
                  min_size: float = 0) -> Regions:
    """Merge near-duplicate regions and drop small ones (step 4c; see the module docstring).

    ``distance`` px (centroids strictly closer may merge), ``size_ratio`` >= 1, ``min_size``
    px.  The result is independent of the order of ``regions``.
    """
    if not distance > 0:
        raise ValueError(f"spatial_merge: distance must be > 0 px, got {distance!r}")
    if not size_ratio >= 1:
        raise ValueError(f"spatial_merge: size_ratio must be >= 1, got {size_ratio!r}")
    if not min_size >= 0:
        raise ValueError(f"spatial_merge: min_size must be >= 0 px, got {min_size!r}")
    n = len(regions)
    if n == 0:
        return regions
    if not np.all(np.isfinite(regions.centroid)):
        raise ValueError("spatial_merge: some regions are empty (NaN centroid); drop them first")
    lab = _leader_groups(regions, distance, size_ratio)
    comps, regs = [], []
    by_group = np.argsort(lab, kind="stable")  # members of each group, in input order
    for members in np.split(by_group, np.flatnonzero(np.diff(lab[by_group])) + 1):
        members = np.sort(members)
        if members.size == 1:
            comps.append(int(regions.component[members[0]]))
            regs.append(regions.region(members[0]))
        else:
            c, r = _merge_members(regions, members)
            comps.append(c)
            regs.append(r)
    merged = Regions.build(regions.shape, comps, regs)
    merged = merged.subset(merged.area >= min_size)
    return merged.subset(_canonical_order(merged))


# ----------------------------------------------------------------------------- 4g


def _overlap_pairs(A: sp.csr_array, overlap_threshold: float):
    """Pairs i < j whose support overlap fraction is above the threshold, with the fraction."""
    S = A.copy()
    S.data = (S.data > 0).astype(np.float32)
    S.eliminate_zeros()
    size = np.asarray(S.sum(axis=1)).ravel()
    inter = sp.triu(S @ S.T, k=1).tocoo()
    i, j = inter.row.astype(np.int64), inter.col.astype(np.int64)
    small = np.minimum(size[i], size[j])
    frac = np.divide(inter.data, small, out=np.zeros(inter.data.size), where=small > 0)
    ok = frac > overlap_threshold
    return i[ok], j[ok], frac[ok]


_BLOCK_BYTES = 64 * 2**20  # float64 working blocks of 4g: pair slices, demixed frames


def _pair_correlation(C: np.ndarray, i: np.ndarray, j: np.ndarray,
                      batch: int | None = None) -> np.ndarray:
    """Pearson correlation of rows i and j of C (NaN for flat traces), in pair batches
    (default: as many pairs as fit in 64 MB, so memory does not grow with the frames)."""
    batch = batch or max(1, _BLOCK_BYTES // (2 * 8 * max(C.shape[1], 1)))
    out = np.empty(i.size)
    if i.size == 0:
        return out
    used = np.unique(np.concatenate([i, j]))
    pos = np.full(C.shape[0], -1, np.int64)
    pos[used] = np.arange(used.size)
    Z = C[used].astype(np.float64)
    Z -= Z.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(Z, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        Z /= norm
    for s in range(0, i.size, batch):
        a, b = pos[i[s:s + batch]], pos[j[s:s + batch]]
        out[s:s + batch] = np.einsum("ij,ij->i", Z[a], Z[b])
    return out


_RIDGE = 1e-3


def demixed_traces(M: sp.csr_array, C: np.ndarray) -> np.ndarray:
    """Least-squares demixed traces of footprints ``M`` (CSR (n, pixels)) whose traces ``C``
    follow the 4e convention (see the module docstring); rows with empty footprints or
    non-finite traces are left as they were (they never link)."""
    out = np.array(C, np.float64)  # the one (n, frames) copy: solved in place, in blocks
    ok = np.isfinite(out).all(axis=1) & (np.asarray(M.sum(axis=1)).ravel() > 0)
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return out
    Mk = M[rows].astype(np.float64)
    peak = np.asarray(Mk.max(axis=1).toarray()).ravel()
    scale = (np.asarray(Mk.sum(axis=1)).ravel() * peak)[:, None]
    G = (Mk @ Mk.T).tocsc()
    ridge = _RIDGE * float(G.diagonal().mean())
    G = G + ridge * sp.identity(G.shape[0], format="csc")
    lu = sp.linalg.splu(G)
    # each frame's system is solved on its own, so blocks of frames give the same values
    # while memory stays one copy of the traces (several copies were 1 GB on long:30)
    step = max(1, _BLOCK_BYTES // (8 * rows.size))
    for s in range(0, out.shape[1], step):
        out[rows, s:s + step] = lu.solve(scale * out[rows, s:s + step])
    return out


def temporal_merge(A, C: np.ndarray, *, corr_threshold: float = 0.75, overlap_threshold: float = 0.3,
                   recompute: Callable, normalisation: str = "max", demix: bool = False):
    """Merge components with correlated traces and overlapping footprints (step 4g).

    ``A`` is (n, height, width) dense or a scipy sparse (n, pixels) matrix; ``C`` (n, frames).
    ``recompute(A_subset) -> (m, frames)`` gets the merged footprints in the same form as ``A``
    (dense or CSR).  Returns ``(A, C, groups)``: the new footprints (same form as the input),
    float32 traces, and for every output component the sorted array of input indices it
    came from.  Outputs are ordered by each group's smallest input index; unmerged
    components are passed through unchanged.
    """
    if not 0 <= corr_threshold <= 1:
        raise ValueError(f"temporal_merge: corr_threshold must be in [0, 1], got {corr_threshold!r}")
    if not 0 <= overlap_threshold <= 1:
        raise ValueError(f"temporal_merge: overlap_threshold must be in [0, 1], got {overlap_threshold!r}")
    dense = not sp.issparse(A)
    frame_shape = np.shape(A)[1:] if dense else None
    M = footprints_to_csr(A)
    C = np.asarray(C)
    if C.ndim != 2 or C.shape[0] != M.shape[0]:
        raise ValueError(f"temporal_merge: C must be (n, frames) with n={M.shape[0]}, got {C.shape}")
    n = M.shape[0]
    i, j, _ = _overlap_pairs(M, overlap_threshold)
    corr = _pair_correlation(demixed_traces(M, C) if demix and i.size else C, i, j)
    link = corr > corr_threshold  # NaN (flat trace) never links
    lab = link_groups(n, i[link], j[link])
    groups = [np.flatnonzero(lab == g) for g in range(int(lab.max()) + 1 if n else 0)]
    merged_idx = [k for k, g in enumerate(groups) if g.size > 1]
    if not merged_idx:
        return A, C.astype(np.float32, copy=False), groups

    new_rows = sp.vstack([_merged_footprint(M, C, groups[k]) for k in merged_idx]).tocsr()
    new_rows = normalise_rows(new_rows, normalisation)
    arg = new_rows.toarray().reshape(-1, *frame_shape) if dense else new_rows
    new_C = np.asarray(recompute(arg), np.float32)
    if new_C.shape != (len(merged_idx), C.shape[1]):
        raise ValueError(f"temporal_merge: recompute returned shape {new_C.shape}, expected "
                         f"{(len(merged_idx), C.shape[1])}")
    return _assemble(A, M, C, groups, merged_idx, new_rows, new_C, dense, frame_shape), \
        _assemble_C(C, groups, merged_idx, new_C), groups


def _merged_footprint(M: sp.csr_array, C: np.ndarray, members: np.ndarray) -> sp.csr_array:
    """Sum of member footprints weighted by each trace's RMS (equal weights if all are 0)."""
    rms = np.sqrt(np.mean(np.square(C[members].astype(np.float64)), axis=1))
    rms = np.where(np.isfinite(rms), rms, 0.0)
    if not rms.sum() > 0:
        rms = np.ones_like(rms)
    return sp.csr_array(rms[None, :]) @ M[members]


def _assemble(A, M, C, groups, merged_idx, new_rows, new_C, dense, frame_shape):
    firsts = np.array([g[0] for g in groups])
    if dense:
        out = np.asarray(A, np.float32)[firsts].copy()
        out[merged_idx] = new_rows.toarray().reshape(-1, *frame_shape)
        return out
    rows = [M[[f]] for f in firsts]
    for k, r in zip(merged_idx, range(new_rows.shape[0])):
        rows[k] = new_rows[[r]]
    return sp.vstack(rows).tocsr().astype(np.float32)


def _assemble_C(C, groups, merged_idx, new_C):
    out = np.asarray(C, np.float32)[[g[0] for g in groups]].copy()
    out[merged_idx] = new_C
    return out
