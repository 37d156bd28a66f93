"""Tests of the step 3a-3c numerics: crop, static background, out-of-core SVD, NNDSVD, cell size."""

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.linalg import subspace_angles

from mps_core.init.cellsize import correlation_image, estimate_cell_diameter, max_projection
from mps_core.init.crop import (Crop, crop_box, lowrank_background, ring_kernel, static_background,
                                subtract_background)
from mps_core.init.nndsvd import nndsvd
from mps_core.init.svd import randomized_svd
from mps_core.preprocess.filters import remove_background
from mps_core.synth import simulate


def _prepared(d: float, size: int, n_frames: int = 300, seed: int = 0):
    """A motion-free synthetic recording, top-hat filtered like the real upstream steps."""
    rec = simulate(n_frames=n_frames, height=size, width=size, n_cells=12, cell_diameter=d,
                   max_shift=0, seed=seed)
    movie = remove_background(rec.movie.astype(np.float32), "tophat", radius=int(round(d)))
    return rec, movie


@pytest.fixture(scope="module")
def synth10():
    return _prepared(10.0, 128)


def _peaks_near(cents: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Distance from each centroid (n, 2) to the nearest peak (m, 2)."""
    return np.sqrt(((cents[:, None, :] - peaks[None, :, :]) ** 2).sum(-1)).min(1)


# ----------------------------------------------------------------------------- crop


def _brute_circle(H, W, cy, cx, r):
    yy, xx = np.mgrid[0:H, 0:W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_circle_crop_geometry():
    c = crop_box(100, 120, shape="circle", size_fraction=0.75)
    assert (c.h, c.w) == (75, 75) or abs(c.h - 75) <= 1 and abs(c.w - 75) <= 1
    assert c.mask.shape == (c.h, c.w)
    # the mask placed back is exactly the inscribed circle of diameter 75 at the frame centre
    full = c.to_full(c.mask.astype(np.uint8)).astype(bool)
    np.testing.assert_array_equal(full, _brute_circle(100, 120, 49.5, 59.5, 37.5))
    assert not c.mask[0, 0] and not c.mask[-1, -1] and c.mask[c.h // 2, c.w // 2]
    assert abs(c.mask.sum() / (np.pi * 37.5**2) - 1) < 0.02


def test_square_crop_and_full_frame():
    c = crop_box(100, 120, shape="square", size_fraction=0.5, offset_x=-10)
    assert (c.h, c.w) == (50, 50) and c.mask.all()
    assert c.y0 == 25 and c.x0 == 35 - 10  # centred at (49.5, 59.5 - 10)
    f = crop_box(100, 120, full_frame=True)
    assert (f.y0, f.x0, f.h, f.w) == (0, 0, 100, 120) and f.mask.all()


@pytest.mark.parametrize("kw", [dict(shape="circle", offset_y=7, offset_x=-5),
                                dict(shape="square", size_fraction=0.9, offset_y=-12),
                                dict(shape="circle", size_fraction=1.0, offset_x=30)])  # clipped
def test_crop_offsets_round_trip(kw):
    H, W = 90, 110
    c = crop_box(H, W, **kw)
    x = np.random.default_rng(0).random((3, H, W)).astype(np.float32)
    back = c.to_full(c.from_full(x))
    rows, cols = c.slices
    np.testing.assert_array_equal(back[:, rows, cols], x[:, rows, cols])
    outside = np.ones((H, W), bool)
    outside[rows, cols] = False
    assert np.all(back[:, outside] == 0)
    y = np.random.default_rng(1).random((2, c.h, c.w))
    np.testing.assert_array_equal(c.from_full(c.to_full(y, (H, W), fill=-1)), y)
    # dask arrays go through too, lazily
    xd = da.from_array(x, chunks=(1, H, W))
    np.testing.assert_array_equal(c.to_full(c.from_full(xd)).compute(), back)
    # apply() masks the outside of the imaging field; to_dict/from_dict rebuild the same crop
    applied = c.apply(x)
    assert np.all(applied[:, ~c.mask] == 0) and np.array_equal(applied[:, c.mask], c.from_full(x)[:, c.mask])
    c2 = Crop.from_dict(c.to_dict())
    assert (c2.y0, c2.x0, c2.h, c2.w) == (c.y0, c.x0, c.h, c.w) and np.array_equal(c2.mask, c.mask)
    if kw["shape"] == "circle":
        cy, cx = (H - 1) / 2 + kw.get("offset_y", 0), (W - 1) / 2 + kw.get("offset_x", 0)
        r = kw.get("size_fraction", 0.75) * min(H, W) / 2
        np.testing.assert_array_equal(c.to_full(c.mask), _brute_circle(H, W, cy, cx, r))


def test_crop_errors():
    with pytest.raises(ValueError, match="shape"):
        crop_box(50, 50, shape="oval")
    for bad in (0, 1.5, np.nan):
        with pytest.raises(ValueError, match="size_fraction"):
            crop_box(50, 50, size_fraction=bad)
    with pytest.raises(ValueError, match="offset_x"):
        crop_box(50, 50, shape="square", offset_x=200)
    with pytest.raises(ValueError, match="offset_y"):
        crop_box(50, 50, shape="circle", offset_y=-200)
    with pytest.raises(ValueError, match="height"):
        crop_box(0, 50)
    c = crop_box(50, 50)
    with pytest.raises(ValueError, match="to_full"):
        c.to_full(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="from_full"):
        c.from_full(np.zeros((49, 50)))


# ----------------------------------------------------------------------------- background


def _blob(H, W, cy, cx, sd, amp):
    yy, xx = np.mgrid[0:H, 0:W]
    return amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sd**2))


def test_ring_kernel_is_a_normalised_annulus():
    k = ring_kernel(6.0, 2.0)
    n = k.shape[0] // 2
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    rho = np.hypot(yy, xx)
    assert abs(k.sum() - 1) < 1e-6 and k[n, n] == 0
    assert np.all(np.abs(rho[k > 0] - 6) <= 1.0) and np.all(k[np.abs(rho - 6) <= 1.0] > 0)


def test_ring_background_removes_constant_and_gradient_not_cells():
    H, W = 96, 96
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    smooth = 20 + 0.3 * yy - 0.2 * xx
    cells = _blob(H, W, 30, 30, 2.0, 50) + _blob(H, W, 60, 66, 2.0, 30)
    radius, width = 12.0, 2.0
    for sigma in (0.0, 3.0):
        bg = static_background(smooth + cells, "ring", ring_radius=radius, ring_width=width, smoothing_sigma=sigma)
        resid = smooth + cells - bg
        far = (np.hypot(yy - 30, xx - 30) > 24) & (np.hypot(yy - 60, xx - 66) > 24)
        inner = np.zeros((H, W), bool)
        m = int(radius + width + 4 * sigma + 2)
        inner[m:-m, m:-m] = True
        assert np.abs(resid[far & inner]).max() < 0.05  # constant + gradient removed
        assert resid[30, 30] == pytest.approx(50, rel=2e-3)  # the cells are kept whole
        assert resid[60, 66] == pytest.approx(30, rel=2e-3)
    # with a circular field the zeros outside do not darken the background near its edge
    c = crop_box(H, W, shape="circle", size_fraction=1.0)
    flat = np.full((H, W), 10.0, np.float32) * c.mask
    bg = static_background(flat, "ring", ring_radius=radius, ring_width=width, mask=c.mask)
    np.testing.assert_allclose(bg[c.mask], 10.0, rtol=1e-4)
    assert np.all(bg[~c.mask] == 0)
    assert np.all(static_background(flat, "none") == 0)


def test_lowrank_background_tracks_a_moving_smooth_pattern():
    H, W, n = 64, 64, 40
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base, pattern = 30 + 0.2 * yy, 0.1 * (xx - 32)
    amp = np.sin(np.linspace(0, 6, n)).astype(np.float32)
    rng = np.random.default_rng(0)
    frames = base + amp[:, None, None] * pattern + 0.01 * rng.standard_normal((n, H, W)).astype(np.float32)
    model = lowrank_background(frames, rank=1, smoothing_sigma=2.0)
    resid = frames - model(frames)
    assert np.abs(resid[:, 12:-12, 12:-12]).max() < 0.05  # per-frame background follows the pattern
    static = static_background(frames.mean(0), "lowrank", rank=1, smoothing_sigma=2.0, sample=frames)
    assert np.abs(static - frames.mean(0))[12:-12, 12:-12].max() < 0.05
    with pytest.raises(ValueError, match="sample"):
        static_background(frames.mean(0), "lowrank")
    with pytest.raises(ValueError, match="rank"):
        static_background(frames.mean(0), "lowrank", rank=n, sample=frames)
    with pytest.raises(ValueError, match="method"):
        static_background(frames.mean(0), "median")
    with pytest.raises(ValueError, match="ring_radius"):
        static_background(frames.mean(0), "ring", ring_radius=-1, ring_width=2)


def test_subtract_background_clips_and_masks():
    frames = np.array([[[1.0, 5.0], [3.0, 0.0]]], np.float32)
    bg = np.full((2, 2), 2.0, np.float32)
    mask = np.array([[True, True], [True, False]])
    np.testing.assert_array_equal(subtract_background(frames, bg), frames - 2)
    np.testing.assert_array_equal(subtract_background(frames, bg, clip_negative=True, mask=mask),
                                  [[[0, 3], [1, 0]]])


# ----------------------------------------------------------------------------- SVD


def _low_rank(T=300, P=200, r=8, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    temporal = np.abs(rng.standard_normal((T, r))) * np.geomspace(20, 2, r)  # distinct values, >= 0
    spatial = np.abs(rng.standard_normal((r, P)))
    return (temporal @ spatial + noise * rng.standard_normal((T, P))).astype(np.float32)


def test_randomized_svd_matches_numpy_on_a_small_matrix():
    A = _low_rank()
    k = 8
    U, S, Vt, total = randomized_svd(da.from_array(A, chunks=(64, -1)), k, seed=3)
    u, s, vt = np.linalg.svd(A.astype(np.float64), full_matrices=False)
    assert U.shape == (300, k) and S.shape == (k,) and Vt.shape == (k, 200)
    assert U.dtype == np.float32 and Vt.dtype == np.float32
    np.testing.assert_allclose(S, s[:k], rtol=1e-3)
    assert np.degrees(subspace_angles(Vt.T.astype(float), vt[:k].T)).max() < 0.5
    assert np.degrees(subspace_angles(U.astype(float), u[:, :k])).max() < 0.5
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-4)
    assert total == pytest.approx(float((A.astype(np.float64) ** 2).sum()), rel=1e-6)
    # the explained fractions are of the whole movie, so they stay below 1
    assert (S**2).sum() / total < 1 and (S**2).sum() / total > 0.99


def test_randomized_svd_on_a_chunked_movie(synth10):
    _, movie = synth10
    X = da.from_array(movie[:, 32:96, 32:96], chunks=(70, -1, -1))  # 5 uneven frame chunks
    calls, fractions = [], []

    def compute(*objs):
        calls.append(len(objs))
        return dask.compute(*objs)

    U, S, Vt, total = randomized_svd(X, 6, n_iter=3, compute=compute,
                                     progress=lambda f, m: fractions.append(f))
    A = movie[:, 32:96, 32:96].reshape(len(movie), -1).astype(np.float64)
    u, s, vt = np.linalg.svd(A, full_matrices=False)
    np.testing.assert_allclose(S[:4], s[:4], rtol=1e-3)
    assert np.degrees(subspace_angles(Vt[:4].T.astype(float), vt[:4].T)).max() < 2
    assert total == pytest.approx(float((A**2).sum()), rel=1e-5)
    assert Vt.shape == (6, 64 * 64) and U.shape == (len(movie), 6)
    assert len(calls) == 2 * 3 + 2 and fractions == sorted(fractions) and fractions[-1] == 1
    # signs are deterministic: the leading (background) pair is positive
    assert Vt[0].sum() > 0 and U[:, 0].sum() > 0


def test_randomized_svd_frame_subsample_covers_all_frames(synth10):
    _, movie = synth10
    X = da.from_array(movie, chunks=(100, -1, -1))
    U, S, Vt, total = randomized_svd(X, 8, n_iter=3, frame_subsample=2)
    A = movie.reshape(len(movie), -1).astype(np.float64)
    s = np.linalg.svd(A, compute_uv=False)
    assert U.shape == (len(movie), 8) and Vt.shape == (8, A.shape[1])
    # Ritz values on all frames of a subspace fitted on half of them: never above the true
    # singular values (interlacing), and close for the cells (all frames carry their activity)
    assert S[0] == pytest.approx(s[0], rel=1e-3)
    assert np.all(S <= s[:8] * (1 + 1e-4)) and np.all(S >= 0.9 * s[:8])
    np.testing.assert_allclose(U.T @ U, np.eye(8), atol=1e-4)
    np.testing.assert_allclose(U * S, A @ Vt.T.astype(np.float64), rtol=1e-3, atol=1e-2 * S[-1])
    assert total == pytest.approx(float((A**2).sum()), rel=1e-5)


def test_3b_stores_the_subsample_once_with_the_same_result(synth10, tmp_path):
    """With an output folder, 3b writes the every-s-th-frame rows once to a scratch zarr and
    fits on it (passes then read a third of the movie): the result is bit for bit the one
    fitted straight from the movie, and the scratch folder is gone afterwards."""
    import xarray as xr

    from mps_core.init import svd
    from mps_core.registry import SimpleContext
    from mps_core.steps import initialisation as ini

    _, movie = synth10
    mc = xr.DataArray(da.from_array(movie, chunks=(64, -1, -1)), dims=("frame", "height", "width"),
                      coords={"frame": np.arange(len(movie))})
    p = ini.NNDSVDParams(n_components=8, frame_subsample=3)
    stored = []
    real = svd.store_fit_rows

    def spy(rows, folder, compute=None):
        stored.append((rows.shape, folder))
        return real(rows, folder, compute)

    plain = ini.nndsvd_init(p, SimpleContext(), mc, {"diameter_px": 10.0})
    ini.store_fit_rows = spy
    try:
        cached = ini.nndsvd_init(p, SimpleContext(output_dir=tmp_path), mc, {"diameter_px": 10.0})
    finally:
        ini.store_fit_rows = real
    assert [s for s, _ in stored] == [(100, *movie.shape[1:])]
    assert stored[0][1].is_relative_to(tmp_path)
    assert not list(tmp_path.iterdir())
    for name in ("nndsvd_spatial", "nndsvd_temporal", "singular_values"):
        np.testing.assert_array_equal(cached[name].values, plain[name].values)


def test_randomized_svd_errors():
    X = da.zeros((20, 5, 5), chunks=(10, 5, 5))
    with pytest.raises(ValueError, match="k must"):
        randomized_svd(X, 21)
    with pytest.raises(ValueError, match="n_iter"):
        randomized_svd(X, 2, n_iter=-1)
    with pytest.raises(ValueError, match="frame_subsample"):
        randomized_svd(X, 2, frame_subsample=0)
    with pytest.raises(ValueError, match="movie"):
        randomized_svd([1, 2, 3], 1)


# ----------------------------------------------------------------------------- NNDSVD


@pytest.fixture(scope="module")
def svd10(synth10):
    _, movie = synth10
    return randomized_svd(da.from_array(movie, chunks=(100, -1, -1)), 40, n_iter=2, seed=0)


def test_nndsvd_pair_rule_and_threshold():
    # rank-2 toy (columns of u are the u_i): the second pair's negative parts dominate, so
    # NNDSVD keeps (u-, v-) scaled by sqrt(s * ||u-|| ||v-||)
    u = np.array([[0.6, 0.3], [0.8, -0.9]])
    v = np.array([[0.6, 0.8, 0.0, 0.0], [0.1, -0.7, -0.7, 0.02]])
    S = np.array([5.0, 2.0])
    W, H = nndsvd(u, S, v, sparsity_threshold=0.05)
    np.testing.assert_allclose(W[0], np.sqrt(5) * np.abs(v[0]), rtol=1e-6)
    np.testing.assert_allclose(H[0], np.sqrt(5) * np.abs(u[:, 0]), rtol=1e-6)
    un, vn = np.array([0, 0.9]), np.array([0, 0.7, 0.7, 0])
    m = np.linalg.norm(un) * np.linalg.norm(vn)
    np.testing.assert_allclose(W[1], np.sqrt(2 * m) * vn / np.linalg.norm(vn), rtol=1e-6)
    np.testing.assert_allclose(H[1], np.sqrt(2 * m) * un / np.linalg.norm(un), rtol=1e-6)
    W2, _ = nndsvd(u, S, v, sparsity_threshold=0.8)
    assert W2[0, 0] == 0 and W2[0, 1] > 0  # 0.6 < 0.8 * 0.8: zeroed; the maximum stays
    with pytest.raises(ValueError, match="spatial_shape"):
        nndsvd(u, S, v, spatial_shape=(3, 3))
    with pytest.raises(ValueError, match="sparsity_threshold"):
        nndsvd(u, S, v, sparsity_threshold=1.0)
    with pytest.raises(ValueError, match="regularisation_sigma"):
        nndsvd(u, S, v, spatial_shape=(2, 2), regularisation_sigma=-1)


def test_nndsvd_is_nonnegative_with_background_first(synth10, svd10):
    rec, movie = synth10
    U, S, Vt, _ = svd10
    W, H = nndsvd(U, S, Vt, spatial_shape=(128, 128), regularisation_sigma=2.0)
    assert W.shape == (40, 128, 128) and H.shape == (40, len(movie))
    assert W.min() >= 0 and H.min() >= 0 and np.isfinite(W).all() and np.isfinite(H).all()
    assert np.corrcoef(W[0].ravel(), movie.mean(0).ravel())[0, 1] > 0.99
    assert np.corrcoef(H[0], movie.mean((1, 2)))[0, 1] > 0.9
    # sparsity: every candidate holds no value below 5 % of its maximum
    for w in W[1:]:
        nz = w[w > 0]
        assert nz.size == 0 or nz.min() >= 0.05 * w.max() - 1e-6


def test_nndsvd_components_hold_the_planted_cells(synth10, svd10):
    rec, _ = synth10
    U, S, Vt, _ = svd10
    W, _ = nndsvd(U, S, Vt, spatial_shape=(128, 128), regularisation_sigma=2.0)
    cents = rec.centroids()[(rec.spikes > 0).any(1)]  # a silent cell cannot be found
    argmax = np.array([np.unravel_index(np.argmax(w), w.shape) for w in W[1:]])
    assert (_peaks_near(cents, argmax) <= 2).mean() >= 0.8  # most cells are some component's peak
    # NNDSVD keeps one sign of each singular pair, so a cell may instead be a secondary peak;
    # every active cell is a strong local maximum (>= half the peak) of one of the first
    # components (the signal ones; later ones are noise with many small peaks)
    peaks = []
    for w in W[1:len(cents) + 4]:
        loc = (w == ndi.maximum_filter(w, size=5)) & (w >= 0.5 * w.max()) & (w > 0)
        peaks.extend(np.argwhere(loc))
    assert len(peaks) < 8 * len(cents)
    assert np.all(_peaks_near(cents, np.array(peaks)) <= 2)


# ----------------------------------------------------------------------------- cell size


@pytest.mark.parametrize("d,size", [(6.0, 96), (10.0, 128), (16.0, 160)])
def test_cell_diameter_from_max_projection(d, size):
    rec, movie = _prepared(d, size, n_frames=200, seed=1)
    mp = max_projection(da.from_array(movie, chunks=(64, -1, -1)))
    np.testing.assert_array_equal(mp, movie.max(0))
    est, details = estimate_cell_diameter(mp)
    assert est == pytest.approx(d, rel=0.15)
    assert details["n_strong"] >= 8
    strong = details["positions"][details["strong"]]
    assert (_peaks_near(rec.centroids(), strong) <= 2).mean() >= 0.9  # blobs sit on the cells
    # on the noise-free footprints the LoG scale -> diameter conversion is exact
    est0, _ = estimate_cell_diameter(rec.footprints.sum(0))
    assert est0 == pytest.approx(d, rel=0.03)


def test_cell_diameter_ignores_the_edge_of_a_circular_crop():
    rec = simulate(n_frames=2, height=128, width=128, n_cells=12, cell_diameter=8, max_shift=0, seed=0)
    crop = crop_box(128, 128, size_fraction=0.9)
    inside = crop.to_full(crop.mask)
    img = (30 + 50 * rec.footprints.sum(0)) * inside  # bright field, zero outside the circle
    est, details = estimate_cell_diameter(img, mask=inside)
    assert est == pytest.approx(8, rel=0.05)
    strong = details["positions"][details["strong"]]
    assert np.all(_peaks_near(strong, rec.centroids()) <= 1.5)  # no blob on the circle's edge


def test_cell_diameter_errors():
    with pytest.raises(ValueError, match="no clear blob"):
        estimate_cell_diameter(np.zeros((40, 40)))
    with pytest.raises(ValueError, match="min_d"):
        estimate_cell_diameter(np.zeros((40, 40)), min_d=10, max_d=5)
    with pytest.raises(ValueError, match="2-D"):
        estimate_cell_diameter(np.zeros(40))


def _brute_corr_image(movie):
    x = movie.astype(np.float64)
    z = (x - x.mean(0)) / x.std(0)
    T, H, W = x.shape
    out = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            rs = [(z[:, i, j] * z[:, a, b]).mean() for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
                  if (a, b) != (i, j) and 0 <= a < H and 0 <= b < W]
            out[i, j] = np.mean(rs)
    return out


def test_correlation_image_matches_brute_force():
    rng = np.random.default_rng(0)
    movie = rng.standard_normal((50, 9, 11)).astype(np.float32) + 100  # offset: tests cancellation
    movie[:, 3:6, 4:7] += 3 * rng.standard_normal((50, 1, 1)).astype(np.float32)  # a correlated patch
    got = correlation_image(da.from_array(movie, chunks=(12, -1, -1)))
    np.testing.assert_allclose(got, _brute_corr_image(movie), atol=1e-5)


def test_correlation_image_peaks_at_cells(synth10):
    rec, movie = synth10
    ci = correlation_image(da.from_array(movie, chunks=(64, -1, -1)))
    c = np.round(rec.centroids()).astype(int)
    assert np.median(ci[c[:, 0], c[:, 1]]) > 0.5 and np.percentile(ci, 50) < 0.2
    loc = (ci == ndi.maximum_filter(ci, size=5)) & (ci > 0.3)
    assert (_peaks_near(rec.centroids(), np.argwhere(loc)) <= 2).mean() >= 0.9


def test_3b_auto_subsample_bounds_the_fit_and_keeps_the_components(synth10, monkeypatch):
    """frame_subsample 0 (auto) fits on about AUTO_FIT_FRAMES frames; the spatial components
    span nearly the same space as a fit on every frame, and the temporal ones cover all."""
    import xarray as xr

    from mps_core.registry import SimpleContext
    from mps_core.steps import initialisation as ini

    assert ini.fit_subsample(0, 4000) == 1 and ini.fit_subsample(0, 4001) == 2
    assert ini.fit_subsample(0, 36000) == 9 and ini.fit_subsample(5, 100) == 5
    _, movie = synth10
    mc = xr.DataArray(da.from_array(movie, chunks=(64, -1, -1)), dims=("frame", "height", "width"),
                      coords={"frame": np.arange(len(movie))})
    monkeypatch.setattr(ini, "AUTO_FIT_FRAMES", 100)  # 300 frames -> every 3rd
    out = {}
    for sub in (0, 1):
        p = ini.NNDSVDParams(n_components=8, frame_subsample=sub)
        out[sub] = ini.nndsvd_init(p, SimpleContext(), mc, {"diameter_px": 10.0})
    assert out[0]["singular_values"].attrs["frame_subsample"] == 3
    assert out[1]["singular_values"].attrs["frame_subsample"] == 1
    assert out[0]["nndsvd_temporal"].sizes["frame"] == len(movie)
    a, b = (out[s]["nndsvd_spatial"].values.reshape(8, -1)[:5].T for s in (0, 1))
    assert np.degrees(subspace_angles(a, b)).max() < 20
