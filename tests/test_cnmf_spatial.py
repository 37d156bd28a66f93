"""Tests of the CNMF numerics of steps 5a (noise), 6a/8a (YrA), 7a-7c (dilation, clusters,
boxes) and 7e/7f (spatial update from streamed sufficient statistics)."""

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr
from scipy import ndimage as ndi

from mps_core.cnmf.clusters import centroids, cluster_boxes, cluster_units, dilate
from mps_core.cnmf.noise import pixel_noise
from mps_core.cnmf.spatial import (BoxFootprints, covariance_maps, measure_smoothness,
                                   merge_boxes, nonneg_lasso_cd, plan_boxes, select_smoothing,
                                   smoothing_scores, sufficient_statistics, unit_smoothing,
                                   unit_windows, update_footprints)
from mps_core.cnmf.sparse_footprints import smooth_csr
from mps_core.cnmf.yra import compute_yra
from mps_core.synth import _ar_calcium, _make_footprints, _make_spikes, simulate


@pytest.fixture(scope="module")
def rec():
    # static field (no motion, no glow): the model Y = A C + b f + noise holds exactly
    return simulate(n_frames=600, height=80, width=80, n_cells=10, max_shift=0, glow=0,
                    noise_sd=3.0, seed=11)


def _truth(rec):
    """Footprints (peak 1), traces in grey levels, static background b and f = 1."""
    C = rec.calcium * np.float32(rec.cell_brightness)
    return rec.footprints, C, rec.background + rec.glow_image, np.ones(C.shape[1], np.float32)


def _movie(rec, chunk=77):
    return da.from_array(rec.movie, chunks=(chunk, -1, -1))  # several uneven chunks


def _support_iou(x, y, frac=0.1):
    """IoU of the supports {x > frac max x} and {y > frac max y}."""
    sx, sy = x > frac * x.max(), y > frac * y.max()
    return (sx & sy).sum() / (sx | sy).sum()


def _perturbed(A, rng_shift=(1, -1), blur=1.5):
    """Blurred, shifted footprints: a poor but plausible initialisation."""
    return np.stack([ndi.shift(ndi.gaussian_filter(a, blur), rng_shift, order=1) for a in A])


# ----------------------------------------------------------------------------- 5a noise


def test_noise_recovers_planted_sd():
    rng = np.random.default_rng(0)
    T, H, W, sd = 1200, 24, 20, 2.5
    drift = np.linspace(0, 30, T)[:, None, None]  # slow bleaching-like drift must not leak in
    Y = (100 + drift + rng.normal(0, sd, (T, H, W))).astype(np.float32)
    sn = pixel_noise(da.from_array(Y, chunks=(100, -1, -1)), smoothing_sigma=0, active_scale=1,
                     max_frames=1000, segment_frames=250)
    assert sn.shape == (H, W) and sn.dtype == np.float32
    assert abs(np.median(sn) / sd - 1) < 0.05
    assert np.all(np.abs(sn / sd - 1) < 0.25)


def test_noise_on_synthetic_movie_and_active_scaling(rec):
    plain = pixel_noise(_movie(rec), smoothing_sigma=0, active_scale=1, max_frames=0,
                        segment_frames=200)
    # quantisation to uint8 adds 1/12 grey level^2 of white noise
    expected = np.sqrt(rec.noise_sd**2 + 1 / 12)
    far = rec.footprints.max(0) == 0
    assert abs(np.median(plain[far]) / expected - 1) < 0.1
    scaled = pixel_noise(_movie(rec), smoothing_sigma=1.0, active_scale=1.5, active_threshold=0.0,
                         max_frames=0, segment_frames=200)
    smooth = ndi.gaussian_filter(plain, 1.0, mode="reflect")
    np.testing.assert_allclose(scaled, 1.5 * smooth, rtol=1e-4)  # every pixel is above 0


def test_noise_rejects_bad_band(rec):
    with pytest.raises(ValueError, match="band"):
        pixel_noise(_movie(rec), band=(0.3, 0.2))
    with pytest.raises(ValueError, match="active_threshold"):
        pixel_noise(_movie(rec), active_threshold="max")


# ----------------------------------------------------------------------------- 6a YrA


def _dense_yra(Y, A, C, b, f):
    n = A.shape[0]
    Yf = Y.reshape(Y.shape[0], -1).astype(np.float64).T  # (pixels, T)
    Af = A.reshape(n, -1).astype(np.float64)
    out = np.empty(C.shape)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        resid = Yf - np.outer(b.ravel(), f) - Af[others].T @ C[others].astype(np.float64)
        out[i] = Af[i] @ resid / (Af[i] @ Af[i])
    return out


def test_yra_matches_dense_reference(rec):
    A, C, b, f = _truth(rec)
    rng = np.random.default_rng(1)
    C_noisy = (C + rng.normal(0, 5, C.shape)).astype(np.float32)  # not the exact traces
    calls = []

    def compute(*objs):
        calls.append(len(objs))
        return dask.compute(*objs)

    got = compute_yra(_movie(rec), A, C_noisy, b=b, f=f, compute=compute)
    ref = _dense_yra(rec.movie, A, C_noisy, b, f)
    assert got.shape == C.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max())
    assert len(calls) == 1  # one pass over the movie
    no_bg = compute_yra(_movie(rec), A, C_noisy, chunk_frames=50)
    np.testing.assert_allclose(no_bg, _dense_yra(rec.movie, A, C_noisy, 0 * b, f),
                               atol=1e-3 * np.abs(ref).max())
    # with the true traces and background, YrA is the trace plus projected noise
    exact = compute_yra(_movie(rec), A, C, b=b, f=f)
    assert min(np.corrcoef(exact[i], C[i])[0, 1] for i in range(len(C))) > 0.95


def test_yra_through_sharp_footprints_of_a_smooth_model():
    # The movie is made of smooth, overlapping footprints M; the traces are read through
    # sharper weights A (M cut at half its peak). With M as the model, the neighbours' light
    # is removed exactly and YrA is the true C; with A as its own model, it leaks in.
    yy, xx = np.mgrid[:40, :40]
    centres = [(15, 15), (15, 23), (24, 19)]
    M = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2)) for cy, cx in centres])
    A = np.where(M > 0.5, M, 0).astype(np.float32)
    rng = np.random.default_rng(0)
    C = rng.gamma(1.0, 5.0, (3, 120)).astype(np.float32)
    b, f = np.full((40, 40), 2.0, np.float32), (1 + 0.1 * rng.standard_normal(120)).astype(np.float32)
    Y = (np.einsum("nhw,nt->thw", M, C) + b[None] * f[:, None, None]).astype(np.float32)
    movie = da.from_array(Y, chunks=(40, -1, -1))
    exact = compute_yra(movie, A, C, b=b, f=f, A_model=M)
    np.testing.assert_allclose(exact, C, atol=1e-3 * C.max())
    leaky = compute_yra(movie, A, C, b=b, f=f)
    assert np.abs(leaky - C).max() > 0.05 * C.max()
    with pytest.raises(ValueError, match="same 3 units"):
        compute_yra(movie, A, C, A_model=M[:2])


def test_yra_rejects_empty_footprint_and_half_background(rec):
    A, C, b, f = _truth(rec)
    A = A.copy()
    A[3] = 0
    with pytest.raises(ValueError, match=r"units \[3\]"):
        compute_yra(_movie(rec), A, C)
    with pytest.raises(ValueError, match="both b"):
        compute_yra(_movie(rec), rec.footprints, C, b=b)


# ----------------------------------------------------------------------------- 7a-7c


def test_dilate_grows_support_by_window():
    A = np.zeros((2, 30, 30), np.float32)
    A[0, 10, 10] = 1.0
    A[0, 10, 11] = 0.05  # under threshold: kept (inside the dilation), not dilated from
    A[1, 0, 29] = 2.0  # at the corner: the dilation is clipped to the frame
    out = dilate(A, window=3, threshold=0.1)
    yy, xx = np.mgrid[:30, :30]
    np.testing.assert_array_equal(out[0] > 0, (yy - 10) ** 2 + (xx - 10) ** 2 <= 9)
    assert out[0, 10, 10] == 1.0 and out[0, 10, 11] == np.float32(0.05)
    assert np.isclose(out[0, 12, 10], 1e-3)  # fill = 1e-3 x max
    np.testing.assert_array_equal(out[1] > 0, yy**2 + (xx - 29) ** 2 <= 9)
    assert np.array_equal(dilate(A, window=0, threshold=0.1) > 0, A > 0.1 * A.max((1, 2), keepdims=True))
    with pytest.raises(ValueError, match="window"):
        dilate(A, window=-1, threshold=0.1)


def test_clusters_cover_every_unit_once_and_respect_max_size():
    rng = np.random.default_rng(3)
    # a dense clump of 23 overlapping cells plus isolated ones
    clump = np.column_stack([rng.uniform(20, 40, 23), rng.uniform(20, 40, 23)])
    lone = np.array([[70.0, 70.0], [70.0, 15.0], [10.0, 75.0]])
    A = _make_footprints(rng, np.vstack([clump, lone]), 90, 90, 10.0)
    Ad = dilate(A, window=2, threshold=0.1)
    labels = cluster_units(Ad, max_cluster_size=10)
    assert labels.shape == (26,)
    sizes = np.bincount(labels)
    assert sizes.sum() == 26 and sizes.min() >= 1 and sizes.max() <= 10
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert len(set(labels[:23])) == 3  # 23 units -> the fewest parts of <= 10
    assert len(set(labels[23:])) == 3 and not set(labels[23:]) & set(labels[:23])
    assert np.array_equal(labels, cluster_units(Ad, max_cluster_size=10))  # deterministic
    # each part is spatially compact: bisection along the centroids
    cent = centroids(Ad)
    spread = max(np.ptp(cent[labels == k], axis=0).max() for k in set(labels[:23]))
    assert spread < np.ptp(cent[:23], axis=0).max()
    # a distance limit below every centroid distance isolates everyone
    assert np.unique(cluster_units(Ad, max_distance=0.5)).size == 26
    # too-small units are never grouped
    assert np.unique(cluster_units(Ad, min_area=10**6)).size == 26


def test_cluster_boxes_are_padded_clipped_and_cover_support():
    rng = np.random.default_rng(4)
    A = _make_footprints(rng, np.array([[12.0, 12.0], [50.0, 40.0], [53.0, 46.0]]), 64, 70, 8.0)
    labels = cluster_units(A)
    assert labels[1] == labels[2] != labels[0]
    boxes = cluster_boxes(A, labels, dilation_radius=2, padding=3, min_size=20,
                          intensity_threshold=0.05)
    assert len(boxes) == 2
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 70
        assert y1 - y0 >= 20 and x1 - x0 >= 20
        sup = (A[labels == k] > 0.05).any(0)
        ys, xs = np.nonzero(sup)
        assert y0 <= ys.min() - 5 and ys.max() + 5 < y1  # radius + padding around the support
        assert x0 <= xs.min() - 5 and xs.max() + 5 < x1
    big = cluster_boxes(A, labels, dilation_radius=10, padding=20, min_size=40)
    assert big[0][0] == 0 and big[0][1] >= 40  # shifted inwards, not shrunk, at the edge


# ----------------------------------------------------------------------------- 7e statistics


def test_streamed_statistics_equal_in_memory(rec):
    A, C, b, f = _truth(rec)
    Ad = dilate(A, window=3, threshold=0.1)
    labels = cluster_units(Ad, max_cluster_size=3)
    plans = plan_boxes(Ad, labels, cluster_boxes(Ad, labels))
    Yf = rec.movie.reshape(rec.movie.shape[0], -1).astype(np.float64)
    Cext = np.vstack([C, f]).astype(np.float64)
    n = len(C)
    for chunks in (77, 600):
        YC, CC = sufficient_statistics(_movie(rec, chunks), C, f=f, plans=plans)
        np.testing.assert_allclose(CC, Cext @ Cext.T, rtol=1e-6)
        assert YC.has_background and YC.n_frames == 600
        for plan, prod in zip(plans, YC.products):
            ref = Yf[:, plan.pixels].T @ Cext[np.r_[plan.units, n]].T
            np.testing.assert_allclose(prod, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        np.testing.assert_allclose(YC.pixel_std, rec.movie.std(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(YC.pixel_mean, rec.movie.mean(0), rtol=1e-5)
    # whole-frame mode: every pixel, every unit, no background row
    YC, CC = sufficient_statistics(rec.movie, C, chunk_frames=128)
    np.testing.assert_allclose(YC.products[0], Yf.T @ C.T.astype(np.float64), rtol=1e-5)
    assert CC.shape == (n, n)


# ----------------------------------------------------------------------------- 7e solver


def test_lasso_cd_satisfies_kkt_on_correlated_units():
    rng = np.random.default_rng(5)
    k, P, T = 4, 300, 200
    base = rng.random(T)
    C = np.array([base + 0.15 * rng.random(T) for _ in range(k)])  # correlations ~0.9+
    G = C @ C.T
    R = rng.normal(0, 1, (P, k)) @ G * 0.3
    lam = rng.uniform(0, 5, (P, k))
    mask = rng.random((P, k)) > 0.2
    a = nonneg_lasso_cd(G, R, lam, mask, np.zeros((P, k)), max_iter=5000, tol=1e-9)
    grad = a @ G - R + lam
    scale = np.abs(R).max()
    assert np.all(a >= 0) and np.all(a[~mask] == 0)
    assert np.all(np.abs(grad[(a > 0) & mask]) < 1e-4 * scale)  # stationary where positive
    assert np.all(grad[(a == 0) & mask] > -1e-4 * scale)  # no descent direction at the bound


def _lasso_cd_vectorised(G, R, lam, mask, a0, max_iter, tol):
    """The solver as first written: one coordinate of all rows at a time, in numpy."""
    a = np.where(mask, np.maximum(a0, 0.0), 0.0)
    d = np.diag(G).copy()
    scale = np.sqrt(np.maximum(d, 0.0))
    grad = a @ G
    for _ in range(max_iter):
        biggest = 0.0
        for j in range(a.shape[1]):
            if d[j] <= 0:
                continue
            old = a[:, j].copy()
            new = np.where(mask[:, j], np.maximum((R[:, j] - lam[:, j] - grad[:, j] + d[j] * old)
                                                  / d[j], 0.0), 0.0)
            delta = new - old
            if np.any(delta):
                a[:, j] = new
                grad += delta[:, None] * G[j][None, :]
                biggest = max(biggest, float(np.max(np.abs(delta))) * scale[j])
        if biggest <= tol * max(float(np.max(np.abs(a) * scale[None, :])), 1e-300):
            break
    return a


@pytest.mark.parametrize("max_iter,tol", [(3, 1e-4), (500, 1e-4), (5000, 1e-9)])
def test_lasso_cd_compiled_sweeps_equal_the_vectorised_form_bit_for_bit(max_iter, tol):
    rng = np.random.default_rng(11)
    k, P, T = 6, 250, 150
    C = rng.random((k, T)) + rng.random(T)
    G = C @ C.T
    G[2, :] = G[:, 2] = 0.0  # a unit with an empty trace is skipped
    R = rng.normal(0, 1, (P, k)) @ G * 0.3
    lam = rng.uniform(0, 3, (P, k))
    mask = rng.random((P, k)) > 0.3
    a0 = rng.random((P, k)) - 0.2
    got = nonneg_lasso_cd(G, R, lam, mask, a0, max_iter=max_iter, tol=tol)
    want = _lasso_cd_vectorised(G, R, lam, mask, a0, max_iter, tol)
    assert got.dtype == np.float64 and np.array_equal(got, want)


def _two_overlapping_cells(T=1200, H=44, W=44, seed=5):
    """Two cells 6.7 px apart (d = 10) with traces correlated ~0.9, on a flat background."""
    rng = np.random.default_rng(seed)
    A = _make_footprints(rng, np.array([[20.0, 19.0], [23.0, 25.0]]), H, W, 10.0)
    spikes = 0.3 * _make_spikes(rng, 2, T, 0.05) + _make_spikes(rng, 1, T, 0.05)
    C = _ar_calcium(spikes, np.array([0.9])) * np.float32(40)
    b = np.full((H, W), 30, np.float32)
    Y = np.einsum("nhw,nt->thw", A, C) + b + rng.normal(0, 3, (T, H, W))
    return A, C, b, Y.astype(np.float32)


def _refine(Y, C, A_init, noise, *, b=None, f=None, max_cluster_size=10, **kw):
    Ad = dilate(A_init, window=3, threshold=0.1)
    labels = cluster_units(Ad, max_cluster_size=max_cluster_size)
    plans = plan_boxes(Ad, labels, cluster_boxes(Ad, labels, padding=5, min_size=10))
    YC, CC = sufficient_statistics(da.from_array(Y, chunks=(250, -1, -1)), C, f=f, plans=plans)
    results = update_footprints(YC, CC, Ad, noise, b=b, **kw)
    return labels, results, merge_boxes(results, Y.shape[1:], len(C))


def test_update_recovers_overlapping_correlated_cells():
    A, C, b, Y = _two_overlapping_cells()
    assert np.corrcoef(C)[0, 1] > 0.85
    assert _support_iou(A[0], A[1], 0.0) > 0.2  # they really overlap
    A0 = _perturbed(A, (1.5, -1), 2.0)
    assert max(_support_iou(A0[i], A[i]) for i in range(2)) < 0.7
    noise = np.full(Y.shape[1:], 3.0, np.float32)
    f = np.ones(len(Y), np.float32)
    for bg in (b, None):  # background fixed, or re-estimated with the footprints
        labels, results, merged = _refine(Y, C, A0, noise, b=bg, f=f)
        assert labels[0] == labels[1]
        assert np.array_equal(merged.units, [0, 1])
        for i in range(2):
            assert _support_iou(merged.raw[i], A[i]) > 0.8
            assert np.abs(merged.raw[i] - A[i]).max() < 0.1  # right amplitude too
        if bg is None:
            est = np.concatenate([r.background for r in results])
            assert np.abs(np.median(est) - 30) < 0.5


def test_units_outside_the_cluster_are_held_fixed():
    A, C, b, Y = _two_overlapping_cells()
    noise = np.full(Y.shape[1:], 3.0, np.float32)
    f = np.ones(len(Y), np.float32)
    A0 = _perturbed(A, (1.5, -1), 2.0)
    A0[1] = A[1]  # the neighbour is exact: solving unit 0 alone must then recover it
    labels, _, merged = _refine(Y, C, A0, noise, b=b, f=f, max_cluster_size=1)
    assert labels[0] != labels[1]
    assert _support_iou(merged.raw[0], A[0]) > 0.8
    assert np.abs(merged.raw[0] - A[0]).max() < 0.1
    A0[1] = 0.5 * A[1]  # a wrong neighbour held fixed leaks into unit 0: the subtraction matters
    _, _, wrong = _refine(Y, C, A0, noise, b=b, f=f, max_cluster_size=1)
    assert np.abs(wrong.raw[0] - A[0]).max() > 2 * np.abs(merged.raw[0] - A[0]).max()


def test_update_recovers_synthetic_footprints(rec):
    A, C, b, f = _truth(rec)
    A0 = _perturbed(A)
    noise = pixel_noise(_movie(rec), active_scale=1.0, max_frames=0, segment_frames=200)
    Ad = dilate(A0, window=3, threshold=0.1)
    labels = cluster_units(Ad)
    plans = plan_boxes(Ad, labels, cluster_boxes(Ad, labels))
    YC, CC = sufficient_statistics(_movie(rec), C, f=f, plans=plans)
    results = update_footprints(YC, CC, Ad, noise, b=b)
    assert sorted(np.concatenate([r.units for r in results]).tolist()) == list(range(len(A)))
    merged = merge_boxes(results, A.shape[1:], len(A), sigma=1.0)
    assert merged.raw.shape == A.shape and merged.smoothed.shape == A.shape
    ious = [_support_iou(merged.raw[i], A[i]) for i in range(len(A))]
    assert min(ious) > 0.8
    # a very high min_std excludes every pixel: all footprints empty and dropped
    empty = update_footprints(YC, CC, Ad, noise, b=b, min_std=1e6)
    assert merge_boxes(empty, A.shape[1:], len(A)).units.size == 0


def test_merge_boxes_nearest_centre_and_drops_empty():
    W = 10
    pix = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])  # row 0
    two = np.vstack([np.full(10, 1.0), np.zeros(10)]).astype(np.float32)
    left = BoxFootprints((0, 1, 0, 4), np.array([0, 2]), pix, two, None)
    right = BoxFootprints((0, 1, 6, 10), np.array([0]), pix, np.full((1, 10), 2.0, np.float32),
                          None)
    merged = merge_boxes([left, right], (2, W), 3)
    assert np.array_equal(merged.units, [0])  # unit 1 never solved, unit 2 all zero
    # left box centre x = 1.5, right box centre x = 7.5: pixels 0..4 from left, 5..9 from right
    np.testing.assert_array_equal(merged.raw[0, 0], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    assert merged.smoothed is None


def test_update_rejects_inconsistent_inputs(rec):
    A, C, b, f = _truth(rec)
    YC, CC = sufficient_statistics(_movie(rec), C)
    noise = np.ones(A.shape[1:], np.float32)
    with pytest.raises(ValueError, match="no background"):
        update_footprints(YC, CC, A, noise, b=b)
    with pytest.raises(ValueError, match="min_penalty"):
        update_footprints(YC, CC, A, noise, min_penalty=2, max_penalty=1)
    with pytest.raises(ValueError, match="A_init"):
        update_footprints(YC, CC, A[:3], noise)


# ----------------------------------------------------------------------------- 7e smoothness


def _energy_iou(x, y, frac=0.9):
    """IoU of the smallest pixel sets holding ``frac`` of each image's energy."""
    def mask(a):
        order = np.argsort(a.ravel())[::-1]
        k = int(np.searchsorted(np.cumsum(a.ravel()[order]), frac * a.sum())) + 1
        m = np.zeros(a.size, bool)
        m[order[:k]] = True
        return m
    mx, my = mask(x), mask(y)
    return (mx & my).sum() / (mx | my).sum()


def _blob_scene(profile, seed=0):
    """Nine cells on a grid, footprints given by ``profile(r)`` (peak 1), independent sparse
    traces, white noise: the movie and the true footprints and traces."""
    rng = np.random.default_rng(seed)
    H = W = 90
    yy, xx = np.mgrid[:H, :W]
    centres = [(15 + 30 * i + rng.uniform(-2, 2), 15 + 30 * j + rng.uniform(-2, 2))
               for i in range(3) for j in range(3)]
    A = np.stack([profile(np.hypot(yy - cy, xx - cx)) for cy, cx in centres]).astype(np.float32)
    T = 800
    C = np.stack([_ar_calcium(_make_spikes(rng, 1, T, 0.05), np.array([0.9]))[0]
                  for _ in centres]).astype(np.float32) * 20
    Y = np.einsum("nhw,nt->thw", A, C) + rng.normal(0, 2.0, (T, H, W))
    return Y.astype(np.float32), A, C


def _measure(Y, A_est, C, pad):
    windows = unit_windows(A_est, pad)
    YC, _ = sufficient_statistics(da.from_array(Y, chunks=(300, -1, -1)), C, plans=windows)
    maps = covariance_maps(YC.products, windows, YC.pixel_mean, C, YC.n_frames)
    sigmas = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0]
    sigma, med, used = select_smoothing(smoothing_scores(A_est, windows, maps, sigmas), sigmas)
    return sigma, med, used


def test_smoothness_of_blurred_cells_is_measured_and_restores_their_tails():
    # one-photon-like cells: Gaussian blur (sigma 5 px) with wide tails; the estimate keeps
    # only the pixels above 30 % of the peak, as a sparse per-pixel update would
    Y, A, C = _blob_scene(lambda r: np.exp(-0.5 * (r / 5.0) ** 2))
    est = np.where(A > 0.3, A, 0).astype(np.float32)
    sigma, med, used = _measure(Y, est, C, pad=10)
    assert used >= 4 and 2.0 <= sigma <= 5.0, (sigma, med)
    assert med[list((0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)).index(sigma)] > med[0]
    before = [_energy_iou(e, a) for e, a in zip(est, A)]
    after = [_energy_iou(ndi.gaussian_filter(e, sigma), a) for e, a in zip(est, A)]
    assert max(before) < 0.5 and min(after) > 0.6, (before, after)


def test_sharp_cells_are_left_almost_unsmoothed():
    # flat-topped somata with a one-pixel edge, estimated exactly: smoothing only blurs them
    Y, A, C = _blob_scene(lambda r: np.clip(6.5 - r, 0, 1))
    sigma, med, _ = _measure(Y, A, C, pad=6)
    assert sigma <= 0.5, (sigma, med)


def test_smoothness_ignores_noise_units():
    # half the units are noise (random traces on empty patches): they must not decide
    Y, A, C = _blob_scene(lambda r: np.clip(6.5 - r, 0, 1))
    rng = np.random.default_rng(9)
    noise_A = np.roll(A, 15, axis=2)[:8]  # between the cells
    A2 = np.concatenate([A, noise_A])
    C2 = np.concatenate([C, rng.random((8, C.shape[1])).astype(np.float32) * 20])
    sigma, _, used = _measure(Y, A2, C2, pad=6)
    assert sigma <= 0.5 and used <= 10


def test_each_unit_is_smoothed_to_its_own_scale_up_to_the_common_one():
    # the cut-outs of the first test, each smoothed by its own measured scale (as step 4h's
    # copy of the seeds): every scale within the common one, every footprint's tails restored
    Y, A, C = _blob_scene(lambda r: np.exp(-0.5 * (r / 5.0) ** 2))
    est = np.where(A > 0.3, A, 0).astype(np.float32)
    windows = unit_windows(est, 10)
    YC, _ = sufficient_statistics(da.from_array(Y, chunks=(300, -1, -1)), C, plans=windows)
    rep = measure_smoothness(est, windows, YC.products, YC.pixel_mean, C, YC.n_frames, d=20.0,
                             per_unit=True)
    s = np.asarray(rep["unit_sigma_px"])
    assert s.shape == (9,) and np.all(s <= rep["sigma_px"]) and np.all(s >= 2.0), rep
    H, W = A.shape[1:]
    sm = smooth_csr(sp.csr_matrix(est.reshape(9, -1)), (H, W), s).toarray().reshape(est.shape)
    after = [_energy_iou(e, a) for e, a in zip(sm, A)]
    assert min(after) > 0.6, after


def test_unit_smoothing_takes_each_units_best_capped():
    scores = np.array([[0.9, 0.95, 0.8], [0.9, 0.8, 0.7], [np.nan, 0.5, 0.6], [0.5, 0.6, 0.9]])
    np.testing.assert_array_equal(unit_smoothing(scores, [0.0, 1.0, 2.0], cap=1.0),
                                  [1.0, 0.0, 1.0, 1.0])


def test_smooth_csr_with_one_sigma_per_unit():
    rng = np.random.default_rng(2)
    A = np.zeros((3, 30, 40), np.float32)
    A[:, 10:18, 12:20] = rng.random((3, 8, 8))
    csr = sp.csr_matrix(A.reshape(3, -1))
    out = smooth_csr(csr, (30, 40), np.array([0.0, 1.5, 3.0])).toarray()
    np.testing.assert_array_equal(out[0], csr[0].toarray()[0])
    for u, s in ((1, 1.5), (2, 3.0)):
        np.testing.assert_array_equal(out[u], smooth_csr(csr[u], (30, 40), s).toarray()[0])
    with pytest.raises(ValueError, match="per-unit sigmas"):
        smooth_csr(csr, (30, 40), np.array([1.0, -1.0, 1.0]))


def test_select_smoothing_needs_zero_first_and_handles_no_scores():
    with pytest.raises(ValueError, match="first candidate"):
        select_smoothing(np.ones((2, 2)), [1.0, 2.0])
    sigma, med, used = select_smoothing(np.full((3, 2), np.nan), [0.0, 1.0])
    assert sigma == 0.0 and used == 0 and np.isnan(med).all()


def test_noise_of_a_stored_movie_reads_it_tile_by_tile(rec, tmp_path):
    """5a opens a stored movie again in (segment, tile, tile) chunks (``store.pixel_tiles``):
    every task reads one spatial tile, and the noise map is the in-memory one exactly."""
    from test_curation import _put

    from mps_core.store import SessionStore, pixel_tiles

    T, H, W = rec.movie.shape
    big = np.tile(rec.movie.astype(np.float32), (1, 3, 3))[:, :150, :140]  # > one 128 px tile
    movie = xr.DataArray(da.from_array(big, chunks=(40, -1, -1)), dims=("frame", "height", "width"),
                         coords={"frame": np.arange(T)}, name="movie_cropped")
    store = SessionStore(tmp_path / "s")
    _put(store, "3a", {"movie_cropped": movie})
    stored = store.load("3a", "movie_cropped")
    tiles = pixel_tiles(stored, 200)
    assert tiles.data.chunks[0][0] == 200 and tiles.data.chunks[1] == (75, 75)  # equal tiles
    assert tiles.data.chunks[2] == (70, 70)
    kw = dict(max_frames=0, segment_frames=200)
    want = pixel_noise(stored.values, **kw)
    np.testing.assert_array_equal(pixel_noise(tiles, **kw), want)
    # not from a store: rechunked by dask, same values
    np.testing.assert_array_equal(pixel_noise(pixel_tiles(movie, 200), **kw), want)
