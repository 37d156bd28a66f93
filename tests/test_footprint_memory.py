"""Sparse / batched footprint code paths of steps 7b-8c give what the dense computation gives.

Steps 7b-8c keep footprints as a (unit, pixel) CSR and make dense stacks one unit chunk at a
time (:mod:`mps_core.cnmf.sparse_footprints`); every check here compares such a path with the
straightforward dense computation on small generated footprints.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr
from scipy import ndimage as ndi

from mps_core.cnmf import sparse_footprints as sf
from mps_core.cnmf.clusters import centroids, cluster_boxes, cluster_units, dilate
from mps_core.cnmf.spatial import (BoxFootprints, _smooth, merge_boxes, plan_boxes,
                                   results_csr, smoothing_scores, sufficient_statistics,
                                   unit_windows, update_footprints)
from mps_core.export import place_in_frame
from mps_core.registry import SimpleContext
from mps_core.steps import final as s8
from mps_core.steps import spatial as s7

H, W = 48, 56


def _footprints(n: int = 23, seed: int = 0) -> np.ndarray:
    """(n, H, W) float32 Gaussian blobs with sharp edges, some overlapping, one empty."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    A = np.zeros((n, H, W), np.float32)
    for u in range(n):
        cy, cx = rng.uniform(3, H - 3), rng.uniform(3, W - 3)
        r = rng.uniform(1.5, 3.5)
        a = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2)) * rng.uniform(0.5, 2)
        A[u] = np.where(a > 0.05, a, 0)
    A[5] = 0  # an empty unit
    A[7, 10, 10] = 3.0  # an isolated bright pixel: thresholds relative to the peak matter
    return A


def _csr(A: np.ndarray) -> sp.csr_matrix:
    return sf.as_csr(A)[0]


# ----------------------------------------------------------------------------- basics


def test_read_csr_and_slabs_match_the_dense_stack_with_uneven_chunks():
    A = _footprints()
    lazy = da.from_array(A, chunks=(5, H, W)).rechunk(((5, 9, 9), (H,), (W,)))
    calls = []

    def compute(*c):
        calls.append(c[0].shape[0])
        return dask.compute(*c)

    csr = sf.read_csr(xr.DataArray(lazy, dims=("unit_id", "height", "width")), compute, chunk=4)
    np.testing.assert_array_equal(csr.toarray().reshape(A.shape), A)
    assert max(calls) <= 4 and sum(calls) == A.shape[0]  # one small slab at a time
    assert csr.dtype == np.float32 and csr.has_sorted_indices
    assert np.all(csr.data != 0)  # no explicit zeros
    np.testing.assert_array_equal(np.concatenate(list(sf.iter_slabs(A, chunk=6))), A)
    assert sf.read_csr(np.zeros((0, H, W), np.float32)).shape == (0, H * W)


def test_row_helpers_match_dense_reductions():
    A = _footprints()
    A[3] = -A[3]  # negative values: the max of a row still counts its implicit zeros
    csr = _csr(A)
    flat = A.reshape(A.shape[0], -1)
    np.testing.assert_array_equal(sf.row_max(csr), flat.max(axis=1))
    full = sp.csr_matrix(-np.ones((1, 6), np.float32))  # no implicit zero at all
    assert sf.row_max(full)[0] == -1
    np.testing.assert_array_equal(sf.positive_counts(csr), (flat > 0).sum(axis=1))
    np.testing.assert_array_equal(sf.dense_rows(csr, [4, 0, 4], (H, W)), A[[4, 0, 4]])
    np.testing.assert_array_equal(sf.dense_unit(csr, 8, (H, W)), A[8])
    for u in (0, 5, 8):
        ys, xs = np.nonzero(A[u] > 0)
        want = None if ys.size == 0 else (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
        assert sf.support_box(csr, u, W) == want


def test_centroids_sparse_equal_dense_formula():
    A = _footprints()
    A64 = A.astype(np.float64)
    mass = A64.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.column_stack([A64.sum(2) @ np.arange(H) / mass, A64.sum(1) @ np.arange(W) / mass])
    got = centroids(_csr(A), shape=(H, W))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(got[5]).all() and np.isnan(want[5]).all()
    np.testing.assert_array_equal(centroids(A), got)  # dense input: the same numbers exactly
    with pytest.raises(ValueError, match="frame shape"):
        centroids(_csr(A))


def test_lazy_dense_is_chunked_by_units_and_equal():
    A = _footprints(70)
    arr = sf.lazy_dense(_csr(A), (H, W), chunk=16)
    assert arr.chunks[0] == (16, 16, 16, 16, 6) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr.compute(), A)
    assert sf.lazy_dense(sp.csr_matrix((0, H * W), dtype=np.float32), (H, W)).shape == (0, H, W)
    out = s7.lazy_footprints(_csr(A), (H, W), np.arange(70) + 10, "A_x", {"k": 1},
                             unit_coords={"cluster": np.arange(70) % 3})
    ref = s7.footprints_array(A, np.arange(70) + 10, "A_x", {"k": 1},
                              unit_coords={"cluster": np.arange(70) % 3})
    xr.testing.assert_identical(out.compute(), ref.compute())
    assert out.chunks == ref.chunks  # the same stored layout


def test_smooth_csr_equals_dense_smoothing_exactly():
    A = _footprints()
    for sigma in (0.7, 2.0):
        want = _smooth(A[[u for u in range(len(A)) if u != 5]], sigma)
        got = sf.smooth_csr(_csr(A), (H, W), sigma).toarray().reshape(A.shape)
        np.testing.assert_array_equal(np.delete(got, 5, axis=0), want)
        assert not got[5].any()
    with pytest.raises(ValueError, match="sigma"):
        sf.smooth_csr(_csr(A), (H, W), 0.0)


def test_results_csr_last_plan_wins_like_dense_assignment():
    rng = np.random.default_rng(3)
    n = 6
    results = []
    for _ in range(5):
        units = np.sort(rng.choice(n, size=3, replace=False))
        pixels = np.sort(rng.choice(H * W, size=40, replace=False))
        vals = rng.uniform(0, 1, (3, 40)).astype(np.float32)
        vals[vals < 0.3] = 0  # zeros written later overwrite earlier values
        results.append(BoxFootprints((0, H, 0, W), units, pixels, vals, None))
    dense = np.zeros((n, H * W), np.float32)
    for r in results:
        dense[r.units[:, None], r.pixels[None, :]] = r.values
    got = results_csr(results, n, (H, W))
    np.testing.assert_array_equal(got.toarray(), dense)
    assert np.all(got.data != 0)


def test_in_frame_equals_place_in_frame():
    A = _footprints()
    rows = np.array([0, 3, 9, 22])
    got = sf.in_frame(_csr(A), rows, (H, W), 3, 5, (H + 7, W + 9))
    np.testing.assert_array_equal(got, place_in_frame(A[rows], 3, 5, (H + 7, W + 9)))
    with pytest.raises(ValueError, match="does not fit"):
        sf.in_frame(_csr(A), rows, (H, W), 3, 5, (H, W))


def test_framed_footprints_index_like_the_dense_stack():
    A = _footprints()
    rows = np.array([0, 3, 9, 22, 4])
    full = (H + 7, W + 9)
    ref = place_in_frame(A[rows], 3, 5, full)
    F = sf.FramedFootprints(_csr(A), rows, (H, W), 3, 5, full)
    assert F.shape == ref.shape and F.dtype == ref.dtype and len(F) == 5 and F.nbytes == ref.nbytes
    np.testing.assert_array_equal(np.asarray(F), ref)
    for key in (2, -1, slice(1, 4), slice(None, None, 2), np.array([4, 0]),
                (slice(0, 2), slice(3, 10), slice(None)), (3, slice(5, 9), 7)):
        np.testing.assert_array_equal(F[key], ref[key])
    got = np.concatenate([b for _, b in F.blocks(2)])
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(da.from_array(F, chunks=(2, -1, -1)).compute(), ref)
    with pytest.raises(IndexError):
        F[5]
    assert np.asarray(sf.FramedFootprints(_csr(A), [], (H, W), 0, 0, (H, W))).shape == (0, H, W)


def test_every_writer_writes_framed_footprints_as_the_dense_stack(tmp_path):
    """8c hands the writers footprints filled from the CSR a block at a time: the files hold
    exactly what the dense stack gives (the NumPy file byte for byte)."""
    import pickle
    import zarr

    from mps_core import export as ex
    from mps_core import nwb_export as ne

    A = _footprints(n=70)  # more units than one 64-unit block
    rows = np.arange(1, 70)
    full = (H + 4, W + 2)
    T = 12
    rng = np.random.default_rng(1)

    def data(footprints):
        n = rows.size
        return ex.ExportData(A=footprints, C=rng.random((n, T)), S=np.zeros((n, T)),
                             unit_ids=rows, frames=np.arange(T), motion=np.zeros((T, 2)),
                             units={"snr": np.ones(n)}, exported_at="2026-01-02T03:04:05+00:00")

    formats = {"numpy", "zarr", "pickle", "nwb", "figures"}
    dense = place_in_frame(A[rows], 2, 1, full)
    ex.write_formats(tmp_path / "dense", data(dense), formats)
    framed = sf.FramedFootprints(_csr(A), rows, (H, W), 2, 1, full)
    ex.write_formats(tmp_path / "framed", data(framed), formats)
    d, f = tmp_path / "dense", tmp_path / "framed"
    assert (d / "A.npy").read_bytes() == (f / "A.npy").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(f / "mps_export.zarr" / "A", mode="r")[:], dense)
    with open(f / "mps_export.pkl", "rb") as fh:
        np.testing.assert_array_equal(pickle.load(fh)["A"], dense)
    np.testing.assert_array_equal(ne.read_nwb(f / ne.NWB_NAME)["A"], dense)
    assert ne.validate_nwb(f / ne.NWB_NAME) == []
    assert (f / "figures" / "footprints.png").read_bytes() == \
        (d / "figures" / "footprints.png").read_bytes()


# ----------------------------------------------------------------------------- 7b-7e numerics


def _old_cluster_boxes(A, labels, grow, min_size, thr):
    """The dense computation 7c did before it took sparse footprints (the reference)."""
    from mps_core.cnmf.clusters import _span

    boxes = []
    for k in range(labels.max() + 1):
        sub = A[labels == k]
        peaks = sub.reshape(len(sub), -1).max(axis=1)
        mask = (sub > (thr * peaks)[:, None, None]) & (sub > 0)
        ys, xs = np.nonzero(mask.any(axis=0))
        boxes.append((*_span(ys.min() - grow, ys.max() + 1 + grow, min_size, H),
                      *_span(xs.min() - grow, xs.max() + 1 + grow, min_size, W)))
    return boxes


def test_clusters_boxes_plans_and_windows_sparse_equal_dense():
    A = np.delete(_footprints(), 5, axis=0)  # 7a-7e see no empty unit
    Ad = dilate(A, window=2, threshold=0.1)
    csr = _csr(Ad)
    for kw in ({}, {"max_cluster_size": 3, "max_distance": 8.0}, {"min_area": 30}):
        np.testing.assert_array_equal(cluster_units(csr, shape=(H, W), **kw),
                                      cluster_units(Ad, **kw))
    labels = cluster_units(Ad, max_cluster_size=3)
    boxes = cluster_boxes(csr, labels, dilation_radius=1, padding=2, min_size=9,
                          intensity_threshold=0.3, shape=(H, W))
    assert boxes == _old_cluster_boxes(Ad, labels, 3, 9, 0.3)
    assert boxes == cluster_boxes(Ad, labels, dilation_radius=1, padding=2, min_size=9,
                                  intensity_threshold=0.3)
    for got, want in zip(plan_boxes(csr, labels, boxes, shape=(H, W)),
                         plan_boxes(Ad, labels, boxes)):
        assert got.box == want.box
        np.testing.assert_array_equal(got.units, want.units)
        np.testing.assert_array_equal(got.pixels, want.pixels)
        np.testing.assert_array_equal(got.support, want.support)
        # the reference: the box crop of the dense members, as plan_boxes used to compute it
        y0, y1, x0, x1 = got.box
        crop = Ad[got.units, y0:y1, x0:x1] > 0
        yy, xx = np.nonzero(crop.any(axis=0))
        np.testing.assert_array_equal(got.pixels, (yy + y0) * W + xx + x0)
        np.testing.assert_array_equal(got.support, crop[:, yy, xx].T)
    for got, want in zip(unit_windows(csr, 3, shape=(H, W)), unit_windows(Ad, 3)):
        assert got.box == want.box
        np.testing.assert_array_equal(got.pixels, want.pixels)


def _movie(A: np.ndarray, T: int = 120, seed: int = 1):
    rng = np.random.default_rng(seed)
    C = np.maximum(rng.normal(0, 1, (A.shape[0], T)), 0).astype(np.float32)
    f = (1 + 0.1 * rng.normal(size=T)).astype(np.float32)
    Y = (np.tensordot(C.T, A, axes=1) + f[:, None, None] * 0.5
         + rng.normal(0, 0.05, (T, H, W))).astype(np.float32)
    return Y, C, f


def test_update_and_smoothness_scores_sparse_equal_dense():
    A = np.delete(_footprints(), 5, axis=0)
    Ad = dilate(A, window=2, threshold=0.1)
    Y, C, f = _movie(A)
    labels = cluster_units(Ad, max_cluster_size=4)
    boxes = cluster_boxes(Ad, labels, dilation_radius=1, padding=2, min_size=9)
    plans = plan_boxes(Ad, labels, boxes)
    windows = unit_windows(Ad, 2)
    YC, CC = sufficient_statistics(da.from_array(Y, chunks=(40, H, W)), C, f=f,
                                   plans=plans + windows, compute=dask.compute)
    stats = s7._split_windows(YC, len(plans))[0]
    sn = np.full((H, W), 0.05, np.float32)
    dense = update_footprints(stats, CC, Ad, sn, penalty_scale=0.5)
    sparse = update_footprints(stats, CC, _csr(Ad), sn, penalty_scale=0.5)
    for a, b in zip(dense, sparse):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.background, b.background)
    new = results_csr(sparse, len(A), (H, W))
    new_dense = new.toarray().reshape(A.shape)
    maps = [np.asarray(p[:, 0]).reshape(w.box[1] - w.box[0], w.box[3] - w.box[2])
            for p, w in zip(YC.products[len(plans):], windows)]
    sigmas = [0.0, 0.5, 1.5]
    np.testing.assert_array_equal(smoothing_scores(new, windows, maps, sigmas, shape=(H, W)),
                                  smoothing_scores(new_dense, windows, maps, sigmas))
    with pytest.raises(ValueError, match="A_init"):
        update_footprints(stats, CC, _csr(Ad)[:3], sn)


def test_suggestions_sparse_equal_dense():
    A = _footprints()
    rng = np.random.default_rng(2)
    std = rng.uniform(0.5, 2, (H, W))
    sn = rng.uniform(0.5, 1.5, (H, W))
    C = rng.normal(size=(A.shape[0], 50)).astype(np.float32)
    got = s7.suggest_spatial(std, sn, _csr(A), C, "balanced")
    want = s7.suggest_spatial(std, sn, A, C, "balanced")
    assert got == want
    flat = A.reshape(A.shape[0], -1)  # the dense definition of a footprint's area
    areas = (flat > 0.1 * flat.max(axis=1, keepdims=True)).sum(axis=1)
    assert got["measured"]["median_footprint_area_px"] == float(np.median(areas))


# ----------------------------------------------------------------------------- 7f, 8c


def test_duplicates_sparse_equal_dense_and_the_weighted_sum():
    A = np.delete(_footprints(), 5, axis=0)
    A = np.concatenate([A, 0.5 * A[[2, 2, 9]]]).astype(np.float32)  # 3 planted duplicates
    rng = np.random.default_rng(4)
    C = rng.normal(size=(A.shape[0], 80)).astype(np.float32)
    C[-3:-1] = 1.3 * C[2] + 0.01 * rng.normal(size=(2, 80))
    C[-1] = 0.7 * C[9]
    groups = s7.find_duplicates(_csr(A), C, 0.8, 0.8)
    want_groups = s7.find_duplicates(A, C, 0.8, 0.8)
    assert [g.tolist() for g in groups] == [g.tolist() for g in want_groups]
    assert [g.tolist() for g in groups] == [[2, 22, 23], [9, 24]]
    Am, Cm, rows, merged = s7.merge_duplicates(_csr(A), C, groups)
    Ad, Cd, rows_d, _ = s7.merge_duplicates(A, C, groups)
    np.testing.assert_array_equal(rows, rows_d)
    np.testing.assert_array_equal(Cm, Cd)
    np.testing.assert_array_equal(Am.toarray().reshape(Ad.shape), Ad)
    # the reference: sum_i a_i ||c_i|| / ||c_first|| in float64, each group into its first
    norms = np.linalg.norm(C.astype(np.float64), axis=1)
    ref = A.copy()
    for g in groups:
        ref[g[0]] = np.tensordot(norms[g] / norms[g[0]], A[g].astype(np.float64),
                                 axes=1).astype(np.float32)
    np.testing.assert_allclose(Ad, ref[rows], rtol=1e-6, atol=0)


def test_7f_output_equals_the_dense_box_assembly(monkeypatch):
    """7f now passes the (merged) rows on directly: the same as assembling per-cluster boxes."""
    A = np.delete(_footprints(), 5, axis=0)
    A[4] = 0  # dropped as empty
    n = A.shape[0]
    ids = np.arange(n) * 3 + 1
    labels = cluster_units(A, max_cluster_size=3)
    Y, C, f = _movie(A, T=60)
    frames = np.arange(60)
    A_up = s7.footprints_array(A, ids, "A_updated", unit_coords={"cluster": labels})
    A_up.attrs["report"] = '{"smoothness": {"sigma_px": 1.3}}'
    C_da = xr.DataArray(C, dims=("unit_id", "frame"), coords={"unit_id": ids, "frame": frames})
    movie = xr.DataArray(da.from_array(Y, chunks=(30, H, W)), dims=("frame", "height", "width"),
                         coords={"frame": frames})
    out = s7.run_merge(s7.MergeValidateParams(), SimpleContext(), A_up, C_da,
                       {"diameter_px": 8.0}, movie, None, None)
    keep = np.flatnonzero(A.reshape(n, -1).max(axis=1) > 0)
    # the dense reference: one BoxFootprints per cluster, merged by merge_boxes
    flat = A[keep].reshape(keep.size, -1)
    boxes = []
    for k in np.unique(labels[keep]):
        units = np.flatnonzero(labels[keep] == k)
        pixels = np.flatnonzero((flat[units] > 0).any(axis=0))
        boxes.append(BoxFootprints((0, H, 0, W), units, pixels, flat[units][:, pixels], None))
    ref = merge_boxes(boxes, (H, W), keep.size, sigma=1.3)
    np.testing.assert_array_equal(out["A_refined"].unit_id.values, ids[keep])
    np.testing.assert_array_equal(out["A_refined"].values, ref.raw)
    np.testing.assert_array_equal(out["A_refined_smoothed"].values, ref.smoothed)
    np.testing.assert_array_equal(out["C_refined"].values, C[keep])


def test_footprint_correlation_sparse_equals_dense():
    A = np.delete(_footprints(), 5, axis=0)
    A = np.concatenate([A, np.zeros((1, H, W), np.float32)])  # an empty one: NaN
    Y, C, _ = _movie(A, T=80)
    movie = da.from_array(Y, chunks=(40, H, W))
    dense = s8.footprint_correlation(movie, A, C)
    sparse = s8.footprint_correlation(movie, _csr(A), C, shape=(H, W))
    np.testing.assert_array_equal(sparse, dense)
    assert np.isnan(sparse[-1]) and np.nanmin(sparse[:-1]) > 0.5


def test_cluster_preview_image_batched_equals_argmax():
    A = _footprints(70)
    A[3, 20, 20] = A[40, 20, 20] = 9.0  # a tie: the first unit wins, as with argmax
    labels = np.arange(70) // 2
    lazy = xr.DataArray(da.from_array(A, chunks=(16, H, W)), dims=("unit_id", "height", "width"))
    best = A.argmax(axis=0)
    want = np.where(A.max(axis=0) > 0, (labels[best] % 20 + 1).astype(np.float32), 0)
    np.testing.assert_array_equal(s7._cluster_image(lazy, labels), want)
    np.testing.assert_array_equal(s7._max_image(lazy), A.max(axis=0))
    np.testing.assert_array_equal(s7._max_image(lazy, 20), A[:20].max(axis=0))
    np.testing.assert_array_equal(s7._areas(lazy), (A > 0).reshape(70, -1).sum(axis=1))
    assert np.allclose(ndi.maximum_filter(A.max(0), 1), A.max(0))  # sanity of the fixture
