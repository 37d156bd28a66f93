"""Steps 5a-6e on synthetic recordings whose footprints, calcium and spikes are known.

Steps 3a-4h are wired elsewhere, so their outputs (movie_cropped, cell_size, A_seed, C_seed,
b_init, f_init) are built here from the synthetic truth: the true footprints as A, noisy
copies of the true calcium as C, the true static background as b. Most tests call the step
functions directly with a SimpleContext; one runs 5a-6e through the real runner and store.
"""

import time

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from mps_core.cnmf import deconv
from mps_core.params import ParamSet
from mps_core.registry import Cancelled, SimpleContext, StepError
from mps_core.runner import Runner
from mps_core.steps import STEPS
from mps_core.steps.cnmf_prep import STEP_5A, STEP_5B
from mps_core.steps.temporal import (STEP_6A, STEP_6B, STEP_6C, STEP_6D, STEP_6E,
                                     suggestion_text, window_start)
from mps_core.store import SessionStore
from mps_core.synth import simulate

D = 10.0            # cell diameter (px)
DEAD = (2, 8, 2, 8)  # y0, y1, x0, x1 of a dead (constant) patch of the sensor
TINY, HUGE, FLAT = 100, 101, 102  # unit ids of the planted extra components


def _ctx() -> SimpleContext:
    return SimpleContext(n_workers=2)


def _frame_coords(T: int, fps: float) -> dict:
    f = np.arange(T)
    return {"frame": f, "movie_number": ("frame", f // 500), "local_frame": ("frame", f % 500),
            "time_s": ("frame", f / fps)}


@pytest.fixture(scope="module")
def world():
    """The synthetic recording and the upstream artifacts 5a-6e read."""
    rec = simulate(n_frames=800, height=64, width=64, n_cells=6, cell_diameter=D, max_shift=0,
                   noise_sd=6.0, cell_brightness=20.0, seed=0)
    T, H, W = rec.movie.shape
    y0, y1, x0, x1 = DEAD
    assert rec.footprints[:, y0 - 1:y1 + 1, x0 - 1:x1 + 1].max() == 0  # no cell there
    movie = rec.movie.astype(np.float32)
    movie[:, y0:y1, x0:x1] = 0.0  # dead pixels: a footprint there gets a flat trace
    fc = _frame_coords(T, rec.fps)
    n = rec.footprints.shape[0]
    extra = np.zeros((3, H, W), np.float32)
    extra[0, 40, 40:42] = 1.0                 # 2 px: under a tenth of a cell's area
    extra[1, 10:50, 10:50] = 0.5              # 1600 px: over 10 cells' area
    extra[2, y0:y1, x0:x1] = 1.0              # the flat unit, 36 px
    A = np.concatenate([rec.footprints, extra])
    ids = np.concatenate([np.arange(n), [TINY, HUGE, FLAT]]).astype(np.int64)
    rng = np.random.default_rng(1)
    truth = rec.calcium * rec.cell_brightness
    noisy = truth + 0.3 * truth.std(1, keepdims=True) * rng.standard_normal(truth.shape)
    C = np.concatenate([noisy, np.zeros((3, T))]).astype(np.float32)
    return {
        "rec": rec, "n": n,
        "movie_cropped": xr.DataArray(
            da.from_array(movie, chunks=(200, -1, -1)), dims=("frame", "height", "width"),
            coords={**fc, "height": np.arange(H), "width": np.arange(W)}, name="movie_cropped"),
        "cell_size": {"diameter_px": D, "source": "parameter"},
        "A_seed": xr.DataArray(da.from_array(A, chunks=(64, -1, -1)),
                               dims=("unit_id", "height", "width"), coords={"unit_id": ids}),
        "C_seed": xr.DataArray(C, dims=("unit_id", "frame"), coords={"unit_id": ids, **fc}),
        "b_init": xr.DataArray((rec.background + rec.glow_image).astype(np.float32),
                               dims=("height", "width")),
        "f_init": xr.DataArray(rec.bleach_curve.astype(np.float32), dims=("frame",), coords=fc),
    }


@pytest.fixture(scope="module")
def chain(world):
    """5a-6e with default parameters, called directly."""
    ctx, w = _ctx(), world
    out = dict(STEP_5A(STEP_5A.params(), ctx, movie_cropped=w["movie_cropped"]))
    out |= STEP_5B(STEP_5B.params(), ctx, A_seed=w["A_seed"], C_seed=w["C_seed"],
                   noise=out["noise"], cell_size=w["cell_size"])
    out |= STEP_6A(STEP_6A.params(), ctx, A_prep=out["A_prep"], C_prep=out["C_prep"],
                   b_init=w["b_init"], f_init=w["f_init"], movie_cropped=w["movie_cropped"])
    out |= STEP_6B(STEP_6B.params(), ctx, YrA=out["YrA"], C_prep=out["C_prep"])
    out |= STEP_6C(STEP_6C.params(), ctx, YrA=out["YrA"], A_prep=out["A_prep"])
    out |= STEP_6D(STEP_6D.params(), ctx, YrA=out["YrA"], A_prep=out["A_prep"])
    out |= STEP_6E(STEP_6E.params(), ctx, A_prep=out["A_prep"], C_temporal=out["C_temporal"],
                   S_temporal=out["S_temporal"])
    return out


def _corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


# -- 5a / 5b ----------------------------------------------------------------------------

def test_noise_map_near_planted_noise(world, chain):
    y0, y1, x0, x1 = DEAD
    live = np.ones((64, 64), bool)
    live[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = False
    planted = np.sqrt(world["rec"].noise_sd ** 2 + 1 / 12)  # + uint8 rounding
    plain = STEP_5A(STEP_5A.params(scaling_factor=1.0, smoothing_sigma=0.0, max_frames=0),
                    _ctx(), movie_cropped=world["movie_cropped"])["noise"]
    assert plain.dims == ("height", "width") and plain.dtype == np.float32
    assert abs(np.median(plain.values[live]) / planted - 1) < 0.05
    assert np.all(plain.values[y0 + 1:y1 - 1, x0 + 1:x1 - 1] == 0)  # the dead patch
    # defaults: active (brighter than average) pixels are scaled by 1.5
    noise = chain["noise"].values
    mean = world["movie_cropped"].values[:400].mean(0)
    active = mean > mean.mean()
    ratio = np.median(noise[active & live]) / np.median(noise[~active & live])
    assert 1.3 < ratio < 1.7


def test_5b_drops_out_of_range_components_and_keeps_ids(world, chain):
    r = chain["prep_report"]
    area = np.pi * (D / 2) ** 2
    assert r["min_size_px"] == pytest.approx(0.1 * area)
    assert r["max_size_px"] == pytest.approx(10 * area)
    reasons = dict(zip(r["units"]["unit_id"], r["units"]["reason"]))
    assert reasons[TINY] == "too small" and reasons[HUGE] == "too large"
    assert sorted(r["dropped_unit_ids"]) == [TINY, HUGE]
    kept = list(range(world["n"])) + [FLAT]
    assert chain["A_prep"].unit_id.values.tolist() == kept
    assert chain["C_prep"].unit_id.values.tolist() == kept
    assert r["units"]["size_px"][-2] == 1600 and r["units"]["trace_std"][0] > 0
    # explicit limits win over the cell-size rule
    out = STEP_5B(STEP_5B.params(min_size=1, max_size=5000), _ctx(), A_seed=world["A_seed"],
                  C_seed=world["C_seed"], noise=chain["noise"], cell_size=world["cell_size"])
    assert out["A_prep"].sizes["unit_id"] == world["n"] + 3


def test_5b_stops_on_nan_unless_told_not_to(world, chain):
    C = world["C_seed"].copy(deep=True)
    C.values[1, 5] = np.nan
    args = dict(A_seed=world["A_seed"], C_seed=C, noise=chain["noise"],
                cell_size=world["cell_size"])
    with pytest.raises(StepError, match=r"traces of units \[1\]"):
        STEP_5B(STEP_5B.params(), _ctx(), **args)
    out = STEP_5B(STEP_5B.params(check_nan=False, full_stats=True), _ctx(), **args)
    cy = out["prep_report"]["units"]["centroid_y"][0]
    assert abs(cy - world["rec"].centers[0, 0]) < 0.1


# -- 6a / 6b ----------------------------------------------------------------------------

def test_yra_follows_true_calcium(world, chain):
    Y = chain["YrA"]
    n = world["n"]
    assert Y.dims == ("unit_id", "frame") and Y.dtype == np.float32
    assert Y.unit_id.values.tolist() == chain["A_prep"].unit_id.values.tolist()
    np.testing.assert_array_equal(Y.time_s.values, world["C_seed"].time_s.values)
    vals = Y.values
    for i in range(n):
        assert _corr(vals[i], world["rec"].calcium[i]) > 0.9
    assert np.ptp(vals[n]) < 1e-3  # the unit on dead pixels: flat


def test_yra_background_switch(world, chain):
    raw = STEP_6A(STEP_6A.params(subtract_background=False), _ctx(), A_prep=chain["A_prep"],
                  C_prep=chain["C_prep"], b_init=world["b_init"], f_init=world["f_init"],
                  movie_cropped=world["movie_cropped"])["YrA"].values
    A = chain["A_prep"].values.reshape(chain["A_prep"].sizes["unit_id"], -1).astype(float)
    offset = A @ world["b_init"].values.ravel() / (A * A).sum(1)
    np.testing.assert_allclose(raw - chain["YrA"].values, np.outer(offset, world["f_init"]),
                               rtol=1e-4, atol=1e-2)


def test_6b_picks_the_documented_frames(chain):
    Y, C = chain["YrA"], chain["C_prep"]
    T = Y.sizes["frame"]
    got = {}
    for sel in ("start", "middle", "end", "random", "highest_variance"):
        p = STEP_6B.params(frame_selection=sel, n_frames=200, n_units=3, seed=4)
        got[sel] = STEP_6B(p, _ctx(), YrA=Y, C_prep=C)["yra_validation"]
    assert got["start"]["start_index"] == 0
    assert got["middle"]["start_index"] == (T - 200) // 2
    assert got["end"]["start_index"] == T - 200 and got["end"]["last_frame"] == T - 1
    # random: the unit sample first, then the window, from one seeded generator
    rng = np.random.default_rng(4)
    units = np.sort(rng.choice(Y.sizes["unit_id"], 3, replace=False))
    assert got["random"]["units"]["position"] == units.tolist()
    assert got["random"]["start_index"] == int(rng.integers(0, T - 200 + 1))
    v = got["start"]
    assert v["stop_index"] - v["start_index"] == 200 == v["n_frames"]
    assert len(v["units"]["unit_id"]) == 3 and all(np.isfinite(v["units"]["yra_std"]))


def test_6b_highest_variance_finds_the_active_block():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((4, 3000))
    y[:, 1700:1900] *= 5.0  # every unit varies most in frames 1700-1899
    assert window_start("highest_variance", 3000, 200, rng, y) == 1700
    y[1] *= 1000.0  # scaling one unit does not let it dominate
    assert window_start("highest_variance", 3000, 200, rng, y) == 1700


# -- 6c ---------------------------------------------------------------------------------

def _yra_from_truth(ar_order: int, seed: int = 0, **kw) -> xr.DataArray:
    """YrA-like traces straight from simulated calcium plus white noise (no movie)."""
    rec = simulate(n_frames=1500, height=40, width=40, n_cells=8, cell_diameter=6.0,
                   max_shift=0, ar_order=ar_order, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    y = 20 * rec.calcium + 1.5 * rng.standard_normal(rec.calcium.shape) + 5
    n, T = y.shape
    return xr.DataArray(y.astype(np.float32), dims=("unit_id", "frame"),
                        coords={"unit_id": np.arange(n), **_frame_coords(T, rec.fps)}), rec


def _A_for(Y):
    n = Y.sizes["unit_id"]
    return xr.DataArray(np.ones((n, 2, 2), np.float32), dims=("unit_id", "height", "width"),
                        coords={"unit_id": Y.unit_id.values})


def test_6c_deterministic_with_reasons(chain):
    p = STEP_6C.params()
    a = STEP_6C(p, _ctx(), YrA=chain["YrA"], A_prep=chain["A_prep"])["temporal_suggestions"]
    b = STEP_6C(p, _ctx(), YrA=chain["YrA"], A_prep=chain["A_prep"])["temporal_suggestions"]
    assert a == b == chain["temporal_suggestions"]
    assert set(a["values"]) == {"ar_order", "sparse_penalty", "max_iterations", "zero_threshold"}
    assert all(len(a["reasons"][k]) > 20 for k in a["values"])
    text = suggestion_text(a)
    for k, v in a["values"].items():
        assert f"{k} = {v}" in text and a["reasons"][k] in text
    assert a["values"]["ar_order"] == 1  # simulated with AR(1): instantaneous rise
    assert a["summary"]["n_units_measurable"] == a["summary"]["n_units_used"] - 1  # flat unit
    assert 0.2 < a["summary"]["decay_frames"] / 20 < 0.7  # planted decay 0.4 s at 20 fps


def test_6c_follows_the_data_and_the_preference():
    Y1, _ = _yra_from_truth(1)
    Y2, _ = _yra_from_truth(2, rise_time=0.15)
    s1 = STEP_6C(STEP_6C.params(), _ctx(), YrA=Y1, A_prep=_A_for(Y1))["temporal_suggestions"]
    s2 = STEP_6C(STEP_6C.params(), _ctx(), YrA=Y2, A_prep=_A_for(Y2))["temporal_suggestions"]
    assert s1["values"]["ar_order"] == 1 and s2["values"]["ar_order"] == 2
    assert s2["values"]["max_iterations"] >= s1["values"]["max_iterations"]
    pen = {pref: STEP_6C(STEP_6C.params(preference=pref, max_units=5), _ctx(), YrA=Y1,
                         A_prep=_A_for(Y1))["temporal_suggestions"]["values"]["sparse_penalty"]
           for pref in ("aggressive", "balanced", "conservative")}
    assert pen["aggressive"] < pen["balanced"] < pen["conservative"]
    flat = Y1.copy(data=np.ones(Y1.shape, np.float32))
    none = STEP_6C(STEP_6C.params(), _ctx(), YrA=flat, A_prep=_A_for(flat))["temporal_suggestions"]
    assert none["values"] == {"ar_order": 1, "sparse_penalty": 1.0, "max_iterations": 500,
                              "zero_threshold": 0.01}
    assert all("no sampled unit" in r for r in none["reasons"].values())
    assert "n/a" not in suggestion_text(none) and none["summary"]["snr"] is None


# -- 6d ---------------------------------------------------------------------------------

def test_6d_recovers_calcium_and_spikes(world, chain):
    n, rec = world["n"], world["rec"]
    C, S = chain["C_temporal"].values, chain["S_temporal"].values
    assert chain["C_temporal"].dtype == np.float32
    assert chain["C_temporal"].unit_id.values.tolist() == chain["YrA"].unit_id.values.tolist()
    np.testing.assert_array_equal(chain["S_temporal"].frame.values, chain["YrA"].frame.values)
    for i in range(n):
        assert _corr(C[i], rec.calcium[i]) > 0.9
        true = np.flatnonzero(rec.spikes[i] > 0)
        found = np.convolve(S[i] > 0, np.ones(3), mode="same") > 0  # within 1 frame
        assert found[true].mean() > 0.9, i
        near = np.convolve(rec.spikes[i] > 0, np.ones(3), mode="same") > 0
        big = S[i] > 0.25 * rec.cell_brightness  # a quarter of the smallest true spike
        assert near[big].all(), i  # every clear fitted spike is a true one
        assert S[i][near].sum() > 0.75 * S[i].sum(), i  # most spike mass is on true spikes
    # C + b0 models YrA
    b0 = chain["b0_temporal"].values
    resid = chain["YrA"].values[:n] - C[:n] - b0[:n, None]
    assert np.all(np.abs(resid.mean(1)) < 0.1 * resid.std(1) + 1e-3)


def test_6d_reports_spikes_before_a_double_exponential_rise():
    # calcium of a double-exponential indicator sampled at the frame rate: 0 at the spike,
    # first seen in the next frame (rise 50 ms, decay 500 ms, 20 fps)
    rng = np.random.default_rng(4)
    T, n = 1500, 6
    t = np.arange(60) / 20.0
    kernel = np.exp(-t / 0.5) - np.exp(-t / 0.05)
    kernel /= kernel.max()
    spikes = (rng.random((n, T)) < 0.01).astype(float) * rng.uniform(1, 2, (n, T))
    spikes[:, :5] = 0
    calcium = np.stack([np.convolve(s, kernel)[:T] for s in spikes])
    Y = (10 + calcium + 0.1 * rng.standard_normal((n, T))).astype(np.float32)
    fc = _frame_coords(T, 20.0)
    YrA = xr.DataArray(Y, dims=("unit_id", "frame"), coords={"unit_id": np.arange(n), **fc})
    A = xr.DataArray(np.ones((n, 2, 2), np.float32), dims=("unit_id", "height", "width"),
                     coords={"unit_id": np.arange(n)})

    def fit(lag):
        S = STEP_6D(STEP_6D.params(spike_lag_frames=lag), _ctx(), YrA=YrA,
                    A_prep=A)["S_temporal"].values
        return np.median([_corr(a, b) for a, b in zip(S, spikes)]), S

    r1, S1 = fit(1)  # the default
    r0, S0 = fit(0)
    assert STEP_6D.params().spike_lag_frames == 1
    assert r1 > 0.7 and r0 < 0.4, (r1, r0)
    np.testing.assert_array_equal(S1[:, :-1], S0[:, 1:])  # the same spikes, one frame earlier
    assert not S1[:, -1].any()


def test_6d_records_solver_and_objective_per_unit(chain):
    rep = chain["solver_report"]
    ids = chain["YrA"].unit_id.values.tolist()
    assert rep["units"]["unit_id"] == ids
    assert rep["units"]["solver"] == ["fast"] * len(ids)
    assert all(s == "optimal" for s in rep["units"]["status"])
    assert all(np.isfinite(o) for o in rep["units"]["objective"])
    assert rep["settings"]["source"] == "parameters" and rep["settings"]["ar_order"] == 1
    g = chain["g_temporal"]
    assert g.dims == ("unit_id", "lag") and g.lag.values.tolist() == [1]
    assert 0.8 < float(np.median(g.values[:-1])) < 0.95  # planted g = exp(-1/8) = 0.88
    assert chain["c0_temporal"].dims == ("unit_id",) and np.all(chain["c0_temporal"].values >= 0)


def test_6d_uses_exactly_the_stored_suggestions(chain):
    shown = {"values": {"ar_order": 2, "sparse_penalty": 0.3, "zero_threshold": 0.2,
                        "max_iterations": 77}, "reasons": {}}
    args = dict(YrA=chain["YrA"], A_prep=chain["A_prep"])
    out = STEP_6D(STEP_6D.params(use_suggestions=True), _ctx(), temporal_suggestions=shown,
                  **args)
    st = out["solver_report"]["settings"]
    assert {k: st[k] for k in shown["values"]} == shown["values"]
    assert st["source"] == "step 6c suggestions" and out["g_temporal"].sizes["lag"] == 2
    # off: the parameters are used even when suggestions exist
    off = STEP_6D(STEP_6D.params(), _ctx(), temporal_suggestions=shown, **args)
    assert off["solver_report"]["settings"]["sparse_penalty"] == 1.0
    with pytest.raises(StepError, match="run step 6c"):
        STEP_6D(STEP_6D.params(use_suggestions=True), _ctx(), **args)


def test_6d_cvxpy_agrees_and_auto_falls_back(chain, monkeypatch):
    Y = chain["YrA"].isel(unit_id=[0, 1], frame=slice(0, 400))
    A = chain["A_prep"].isel(unit_id=[0, 1])
    fast = STEP_6D(STEP_6D.params(solver="fast"), _ctx(), YrA=Y, A_prep=A)
    ref = STEP_6D(STEP_6D.params(solver="cvxpy", chunk_frames=0), _ctx(), YrA=Y, A_prep=A)
    assert set(ref["solver_report"]["units"]["solver"]) <= {"ECOS", "SCS"}
    for i in range(2):
        assert _corr(fast["C_temporal"].values[i], ref["C_temporal"].values[i]) > 0.999
    chunked = STEP_6D(STEP_6D.params(solver="cvxpy", chunk_frames=250, overlap_frames=50),
                      _ctx(), YrA=Y, A_prep=A)
    for i in range(2):
        assert _corr(chunked["C_temporal"].values[i], ref["C_temporal"].values[i]) > 0.99

    def broken(*a, **k):
        raise deconv.FastSolverError("planted failure")

    monkeypatch.setattr(deconv, "deconvolve_fast", broken)
    auto = STEP_6D(STEP_6D.params(solver="auto"), _ctx(), YrA=Y, A_prep=A)
    rep = auto["solver_report"]
    assert rep["fallback_unit_ids"] == Y.unit_id.values.tolist()
    assert all(m.startswith("fast failed (planted failure)") for m in rep["units"]["message"])
    assert set(rep["units"]["solver"]) <= {"ECOS", "SCS"}
    np.testing.assert_allclose(auto["C_temporal"].values, ref["C_temporal"].values, atol=1e-6)
    failed = STEP_6D(STEP_6D.params(solver="fast"), _ctx(), YrA=Y, A_prep=A)
    assert failed["solver_report"]["failed_unit_ids"] == Y.unit_id.values.tolist()


def test_6d_cancel_stops_between_tasks(chain):
    ctx = _ctx()
    ctx.cancel_event.set()
    with pytest.raises(Cancelled):
        STEP_6D(STEP_6D.params(), ctx, YrA=chain["YrA"], A_prep=chain["A_prep"])


# -- 6e ---------------------------------------------------------------------------------

def test_6e_drops_the_flat_unit_with_its_reason(world, chain):
    d = chain["dropped_6e"]
    assert d["unit_id"] == [FLAT] and d["n_kept"] == world["n"]
    assert "no spikes" in d["reason"][0] and "flat calcium" in d["reason"][0]
    assert "empty footprint" not in d["reason"][0]
    kept = list(range(world["n"]))
    for name in ("A_filtered", "C_filtered", "S_filtered"):
        assert chain[name].unit_id.values.tolist() == kept
    # a raised threshold drops more, each with its reason
    sums = chain["A_prep"].values.sum(axis=(1, 2))
    thr = float(np.median(sums[:-1]))
    more = STEP_6E(STEP_6E.params(min_spatial_sum=thr), _ctx(), A_prep=chain["A_prep"],
                   C_temporal=chain["C_temporal"], S_temporal=chain["S_temporal"])["dropped_6e"]
    small = set(chain["A_prep"].unit_id.values[sums < thr].tolist())
    assert set(more["unit_id"]) == small | {FLAT} and len(small) >= 3
    for uid, why in zip(more["unit_id"], more["reason"]):
        assert ("empty footprint" in why) == (uid in small)


def test_6e_drops_weak_units_by_peak_snr(world, chain):
    rep = chain["solver_report"]
    sn = dict(zip(rep["units"]["unit_id"], rep["units"]["sn"]))
    C = chain["C_temporal"]
    snr = {int(u): float(C.sel(unit_id=u).max()) / sn[int(u)] for u in C.unit_id.values
           if sn[int(u)] > 0}
    thr = float(np.median(list(snr.values())))
    args = dict(A_prep=chain["A_prep"], C_temporal=C, S_temporal=chain["S_temporal"])
    out = STEP_6E(STEP_6E.params(min_snr=thr), _ctx(), solver_report=rep, **args)["dropped_6e"]
    # a unit without a noise level (the flat one) has no SNR: it fails the check too
    weak = {u for u, v in snr.items() if v < thr} | {int(u) for u in C.unit_id.values
                                                     if int(u) not in snr}
    assert weak and weak <= set(out["unit_id"])
    for uid, why, v in zip(out["unit_id"], out["reason"], out["snr"]):
        assert ("weak" in why) == (uid in weak), (uid, why)
        if uid in snr and uid in weak:
            assert v == pytest.approx(snr[uid], rel=1e-5)
    assert out["snr_checked"] and out["thresholds"]["min_snr"] == thr
    # without 6d's report (or with min_snr 0) the check does not run
    off = STEP_6E(STEP_6E.params(min_snr=thr), _ctx(), **args)["dropped_6e"]
    assert not off["snr_checked"] and off["unit_id"] == [FLAT]


# -- through the runner -----------------------------------------------------------------

def _fake_upstream(store: SessionStore, step_id: str, outputs: dict) -> None:
    """A committed result of an upstream step, as the runner would leave it."""
    run = store.begin(step_id)
    jobs = [j for j in (run.put(k, v) for k, v in outputs.items()) if j is not None]
    if jobs:
        import dask
        dask.compute(*jobs)
    names = {k: p.name for k in outputs for p in run.tmp.glob(f"{k}.*")}
    run.commit({"step": step_id, "run_id": run.run_id, "status": "done", "params": {},
                "inputs": {}, "outputs": names, "finished_time": time.time()})


def test_runner_runs_5a_to_6e(world, tmp_path):
    (tmp_path / "rec").mkdir()
    out = tmp_path / "session"
    store = SessionStore(out)
    _fake_upstream(store, "3a", {k: world[k] for k in ("movie_cropped", "cell_size")})
    _fake_upstream(store, "4e", {k: world[k] for k in ("b_init", "f_init")})
    _fake_upstream(store, "4h", {k: world[k] for k in ("A_seed", "C_seed")})
    ps = ParamSet(STEPS).with_values("1", {"input_dir": str(tmp_path / "rec"),
                                           "output_dir": str(out), "n_workers": 2})
    ps = ps.with_values("6d", {"use_suggestions": True})
    results = Runner(STEPS, ps, store).run(start="5a", stop="6e")
    assert [r.status for r in results] == ["done"] * 7
    for sid in ("5a", "5b", "6a", "6b", "6c", "6d", "6e"):
        assert list(store.step_dir(sid).glob("preview_*.png")), sid
        assert not store.manifest(sid)["warnings"], (sid, store.manifest(sid)["warnings"])
    Y = store.load("6a", "YrA")
    assert Y.dtype == np.float32 and "time_s" in Y.coords
    rep = store.load("6d", "solver_report")
    shown = store.load("6c", "temporal_suggestions")["values"]
    assert rep["settings"]["source"] == "step 6c suggestions"
    assert {k: rep["settings"][k] for k in shown} == shown
    assert store.load("6e", "dropped_6e")["unit_id"] == [FLAT]
    C = store.load("6e", "C_filtered")
    for i in range(world["n"]):
        assert _corr(C.values[i], world["rec"].calcium[i]) > 0.9
