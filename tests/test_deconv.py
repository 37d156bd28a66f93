"""Tests for the CNMF temporal-update numerics (mps_core.cnmf.ar, mps_core.cnmf.deconv).

Traces are simulated here: Poisson spikes through the AR recursion, plus a baseline, an
initial decay and white noise. The fast solver is checked against the cvxpy reference on
100 traces of T = 1000 frames (ECOS on longer traces would dominate the run time).
"""

import cvxpy as cp
import numpy as np
import pytest
from scipy import signal

from mps_core.cnmf import deconv
from mps_core.cnmf.ar import ar_roots, estimate_ar, impulse_response, noise_psd, stable_g
from mps_core.cnmf.deconv import (
    apply_g,
    chunk_bounds,
    convolve_ar,
    deconvolve,
    deconvolve_batch,
    deconvolve_cvxpy,
    deconvolve_fast,
    deconvolve_long,
    objective,
)

AR1 = [np.array([0.8]), np.array([0.9]), np.array([0.95])]
AR2 = [np.array([1.5, -0.56]), np.array([1.6, -0.63]), np.array([1.3, -0.4])]  # real roots


def simulate(T, g, sn, rate=0.02, b0=1.0, c0=0.5, seed=0):
    """(y, c, s): Poisson spikes of unit size, AR calcium, baseline, initial decay, noise."""
    rng = np.random.default_rng(seed)
    s = rng.poisson(rate, T).astype(float)
    c = signal.lfilter([1.0], np.r_[1.0, -g], s)
    y = b0 + c0 * impulse_response(g, T) + c + sn * rng.standard_normal(T)
    return y, c, s


def isolated_spikes(T, g, sn, seed, min_gap=40):
    """A trace with well separated spikes of size 1-2 at known frames."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.integers(min_gap, 2 * min_gap, size=T // min_gap))
    times = times[times < T - 5]
    s = np.zeros(T)
    s[times] = rng.uniform(1.0, 2.0, times.size)
    y = 0.3 + signal.lfilter([1.0], np.r_[1.0, -g], s) + sn * rng.standard_normal(T)
    return y, times


def corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------- noise and AR

def test_noise_psd_recovers_white_noise_sd():
    rng = np.random.default_rng(1)
    for sd in (0.05, 0.3, 2.0):
        x = 5.0 + sd * rng.standard_normal(20000)
        for method in ("welch", "fft"):
            assert noise_psd(x, method=method) == pytest.approx(sd, rel=0.05)
    X = (0.3 * rng.standard_normal((6, 5000))).astype(np.float32)
    sn = noise_psd(X)
    assert sn.shape == (6,)
    np.testing.assert_allclose(sn, 0.3, rtol=0.05)
    assert sn[2] == pytest.approx(noise_psd(X[2]), rel=1e-9)


def test_noise_psd_ignores_slow_calcium():
    y, _, _ = simulate(20000, np.array([0.97]), 0.2, rate=0.02, seed=2)
    assert noise_psd(y) == pytest.approx(0.2, rel=0.1)


def test_noise_psd_bad_input():
    with pytest.raises(ValueError, match="band"):
        noise_psd(np.zeros(100), band=(0.3, 0.2))
    with pytest.raises(ValueError, match="method"):
        noise_psd(np.zeros(100), method="median")
    with pytest.raises(ValueError, match="shape"):
        noise_psd(np.zeros((2, 2, 50)))


def test_estimate_ar1_recovers_g():
    # noise from the PSD when the decay is slow; given when it is fast (a fast decay puts
    # calcium power in the noise band, which inflates the PSD noise estimate)
    for g, sn, given in ((0.95, 0.2, None), (0.85, 0.1, 0.1)):
        y, _, _ = simulate(50000, np.array([g]), sn, rate=0.05, seed=3)
        est = estimate_ar(y, 1, sn=given, fudge=1.0)
        assert est.shape == (1,)
        assert est[0] == pytest.approx(g, abs=0.01)
        # fudge shrinks the decay factor
        assert estimate_ar(y, 1, sn=given, fudge=0.98)[0] == pytest.approx(0.98 * est[0])


def test_estimate_ar2_recovers_roots():
    g = np.array([1.55, -0.57])  # roots 0.95 and 0.6
    y, _, _ = simulate(50000, g, 0.1, rate=0.05, seed=4)
    est = estimate_ar(y, 2, sn=0.1, fudge=1.0)
    roots = np.sort(ar_roots(est).real)
    np.testing.assert_allclose(roots, [0.6, 0.95], atol=0.04)


def test_estimate_ar_flat_and_bad_input():
    np.testing.assert_array_equal(estimate_ar(np.full(500, 3.0), 2), [0.0, 0.0])
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        estimate_ar(np.zeros(500), 3)
    with pytest.raises(ValueError, match="NaN"):
        estimate_ar(np.r_[np.zeros(50), np.nan], 1)


def test_stable_g_makes_roots_real_and_stable():
    for g in ([1.2], [-0.3], [1.0, -0.5], [2.5, -1.2], [0.2, 0.5]):
        out = stable_g(np.array(g))
        r = ar_roots(out)
        assert np.all(np.abs(r.imag) < 1e-6) and np.all(r.real >= -1e-12)  # double roots
        assert np.all(r.real < 1.0)
        deconv.check_g(out)  # accepted by the solvers
        assert np.all(impulse_response(out, 200) >= 0)


# --------------------------------------------------------------------------- solvers agree

def test_fast_matches_cvxpy_on_100_traces():
    noise = (0.02, 0.1, 0.3, 0.6)
    penalties = (0.5, 1.0, 2.0)
    worst_obj, worst_corr = 0.0, 1.0
    for k in range(100):
        g = (AR1 + AR2)[k % 6]
        sn = noise[(k // 6) % 4]
        lam = penalties[k % 3] * sn
        b0 = None if k % 10 else 1.0        # every 10th trace: fixed baseline
        c0 = k % 7 != 3                     # some traces: no initial decay term
        y, _, _ = simulate(1000, g, sn, rate=0.03, b0=1.0, c0=0.5, seed=100 + k)
        fast = deconvolve_fast(y, g, lam, b0=b0, c0=c0)
        ref = deconvolve_cvxpy(y, g, lam, b0=b0, c0=c0)
        assert fast.solver == "fast" and ref.solver == "ECOS"
        rel = (fast.objective - ref.objective) / abs(ref.objective)
        assert abs(rel) < 1e-3, (k, rel)
        assert rel < 1e-6, (k, rel)  # exact: never worse than the reference
        r = corr(fast.c, ref.c)
        assert r > 0.999, (k, r)
        assert fast.b0 == pytest.approx(ref.b0, abs=1e-3 * sn + 1e-6)
        worst_obj, worst_corr = max(worst_obj, abs(rel)), min(worst_corr, r)
    print(f"worst relative objective gap {worst_obj:.2e}, worst C correlation {worst_corr:.8f}")


def test_result_is_consistent():
    g = AR2[0]
    y, _, _ = simulate(800, g, 0.1, seed=5)
    res = deconvolve_fast(y, g, 0.1, zero_threshold=0.5, sn=0.1)
    assert np.all(res.s >= 0)
    np.testing.assert_allclose(apply_g(res.c, g), res.s, atol=1e-12)
    assert not np.any((res.s > 0) & (res.s < 0.05))  # zero threshold 0.5 sn
    assert res.s[0] == 0.0 and res.c0 >= 0  # free c0 takes the t = 0 spike
    assert res.objective == pytest.approx(objective(y, res.c, res.b0, res.c0, g, 0.1))
    np.testing.assert_allclose(res.model(), res.c + res.b0 + res.c0 * impulse_response(g, 800))
    unthresholded = deconvolve_fast(y, g, 0.1, sn=0.1)
    assert unthresholded.objective <= res.objective  # thresholding can only cost


def test_oasis_matches_ar2_solver_with_zero_g2():
    y, _, _ = simulate(3000, np.array([0.9]), 0.2, seed=6)
    a = deconvolve_fast(y, np.array([0.9]), 0.2)
    b = deconvolve_fast(y, np.array([0.9, 0.0]), 0.2)
    assert a.objective == pytest.approx(b.objective, rel=1e-9)
    np.testing.assert_allclose(a.c, b.c, atol=1e-7)


@pytest.mark.parametrize("b0", [None, 0.8])
def test_interior_point_fallback_matches_active_set(monkeypatch, b0):
    g = AR2[1]
    y, _, _ = simulate(2000, g, 0.1, seed=7)
    fast = deconvolve_fast(y, g, 0.1, b0=b0)
    assert "cycled" not in fast.message
    monkeypatch.setattr(deconv, "_PDAS_MAX_ITER", 0)  # as if the active-set method cycled
    robust = deconvolve_fast(y, g, 0.1, b0=b0)
    assert "interior-point" in robust.message and "exact" in robust.message
    assert robust.objective == pytest.approx(fast.objective, rel=1e-12)
    np.testing.assert_allclose(robust.c, fast.c, atol=1e-9)


def test_near_double_root_is_solved_exactly():
    # a double AR root makes the active-set method cycle on some traces (this one included)
    g = np.array([1.99, -0.990025])  # roots 0.995, 0.995
    y, _, _ = simulate(1500, g, 0.5, rate=0.02, seed=169)
    fast = deconvolve_fast(y, g, 5.0)
    assert "cycled" in fast.message  # the path under test
    ref = deconvolve_cvxpy(y, g, 5.0)
    assert abs(fast.objective - ref.objective) <= 1e-6 * abs(ref.objective)
    assert corr(fast.c, ref.c) > 0.999


# --------------------------------------------------------------------------- spikes

@pytest.mark.parametrize("g", [np.array([0.9]), np.array([1.6, -0.63])])
def test_recovers_isolated_spike_times(g):
    sn = 0.02
    y, times = isolated_spikes(3000, g, sn, seed=8)
    res = deconvolve(y, g, 1.0 * sn, zero_threshold=3.0, sn=sn)
    found = np.flatnonzero(res.s > 0.3)
    dist_to_true = np.abs(found[:, None] - times[None, :]).min(axis=1)
    assert dist_to_true.max() <= 1  # no event more than a frame away from a planted spike
    for t in times:  # every planted spike found within one frame, with most of its size
        assert res.s[max(t - 1, 0):t + 2].sum() > 0.8


# --------------------------------------------------------------------------- fallbacks

def _failing_ecos(monkeypatch, mode):
    original = cp.Problem.solve

    def solve(self, *args, **kwargs):
        if kwargs.get("solver") == "ECOS":
            if mode == "raise":
                raise cp.SolverError("forced ECOS failure")
            out = original(self, *args, **kwargs)
            self._status = "optimal_inaccurate"  # pretend ECOS was not accurate
            return out
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", solve)


@pytest.mark.parametrize("mode", ["raise", "inaccurate"])
def test_ecos_failure_falls_back_to_scs(monkeypatch, mode):
    g = AR1[1]
    y, _, _ = simulate(300, g, 0.1, seed=9)
    fast = deconvolve_fast(y, g, 0.1)
    _failing_ecos(monkeypatch, mode)
    res = deconvolve_cvxpy(y, g, 0.1)
    assert res.solver == "SCS" and res.status == "optimal"
    assert "ECOS" in res.message
    assert res.objective == pytest.approx(fast.objective, rel=1e-3)
    assert corr(res.c, fast.c) > 0.999


def test_auto_falls_back_to_cvxpy_when_fast_fails(monkeypatch):
    g = AR1[0]
    y, _, _ = simulate(300, g, 0.1, seed=10)

    def broken(*args, **kwargs):
        raise deconv.FastSolverError("forced")

    monkeypatch.setattr(deconv, "deconvolve_fast", broken)
    res = deconvolve(y, g, 0.1, solver="auto")
    assert res.solver == "ECOS" and "fast failed" in res.message
    with pytest.raises(deconv.FastSolverError):
        deconvolve(y, g, 0.1, solver="fast")


def test_all_cvxpy_solvers_failing_raises(monkeypatch):
    def solve(self, *args, **kwargs):
        raise cp.SolverError("forced")

    monkeypatch.setattr(cp.Problem, "solve", solve)
    y, _, _ = simulate(100, AR1[0], 0.1, seed=11)
    with pytest.raises(deconv.CvxpySolverError, match="no solver succeeded"):
        deconvolve_cvxpy(y, AR1[0], 0.1)


# --------------------------------------------------------------------------- long traces

def test_chunk_bounds_cover_with_exact_overlaps():
    for T, chunk, overlap in ((20000, 5000, 100), (5001, 5000, 100), (12345, 1000, 0)):
        b = chunk_bounds(T, chunk, overlap)
        assert b[0][0] == 0 and b[-1][1] == T
        assert all(e - a <= chunk for a, e in b)
        assert all(b[k][1] - b[k + 1][0] == overlap for k in range(len(b) - 1))


@pytest.mark.parametrize("g", [np.array([0.95]), np.array([1.6, -0.63])])
def test_long_trace_whole_equals_chunked(g):
    y, _, _ = simulate(20000, g, 0.2, rate=0.02, seed=12)
    whole = deconvolve_long(y, g, 0.2, chunk=0)
    chunked = deconvolve_long(y, g, 0.2, chunk=5000, overlap=100)
    assert chunked.c.shape == (20000,) and chunked.solver == "fast"
    assert corr(whole.c, chunked.c) > 0.999
    assert chunked.b0 == pytest.approx(whole.b0, abs=0.02)
    assert chunked.objective == pytest.approx(whole.objective, rel=1e-3)
    # short traces are solved whole
    short = deconvolve_long(y[:3000], g, 0.2, chunk=5000)
    assert short.objective == pytest.approx(deconvolve_fast(y[:3000], g, 0.2).objective)


# --------------------------------------------------------------------------- batch

def test_batch_estimates_and_solves_every_unit():
    rows = [simulate(1500, g, sn, seed=20 + i)[0]
            for i, (g, sn) in enumerate([(AR1[1], 0.1), (AR1[2], 0.3), (AR1[0], 0.05)])]
    Y = np.vstack(rows + [np.full(1500, 2.0)]).astype(np.float32)  # last unit flat
    out = deconvolve_batch(Y, p=1, sparse_penalty=1.0, zero_threshold=0.1)
    assert out.C.shape == out.S.shape == (4, 1500) and out.C.dtype == np.float32
    assert out.g.shape == (4, 1) and out.solver == ["fast"] * 4
    assert np.isfinite(out.objective).all() and (out.S >= 0).all()
    assert out.C[3].max() == 0 and out.b0[3] == pytest.approx(2.0)
    assert out.g[0, 0] == pytest.approx(0.9 * 0.98, abs=0.05)
    one = deconvolve_long(Y[1].astype(np.float64), out.g[1], out.lam[1], sn=out.sn[1],
                          zero_threshold=0.1)
    np.testing.assert_allclose(out.C[1], one.c, rtol=1e-5, atol=1e-6)
    # given g and sn, and the penalty unscaled
    fixed = deconvolve_batch(Y[:2], p=2, g=np.array([1.6, -0.63]), sn=0.2,
                             noise_scaled_penalty=False, sparse_penalty=0.3)
    np.testing.assert_allclose(fixed.lam, 0.3)
    np.testing.assert_allclose(fixed.g, [[1.6, -0.63]] * 2)


def test_batch_bad_input():
    Y = np.zeros((2, 100))
    with pytest.raises(ValueError, match="g must have shape"):
        deconvolve_batch(Y, p=1, g=np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="row 1"):
        deconvolve_batch(np.vstack([np.zeros(100), np.full(100, np.nan)]))
    with pytest.raises(ValueError, match="p must be"):
        deconvolve_batch(Y, p=3)


def test_bad_solver_inputs():
    y = np.ones(50)
    with pytest.raises(ValueError, match="AR\\(2\\)"):
        deconvolve_fast(y, np.array([1.0, -0.5]), 0.1)  # complex roots
    with pytest.raises(ValueError, match="AR\\(1\\)"):
        deconvolve_fast(y, np.array([1.0]), 0.1)
    with pytest.raises(ValueError, match="lam"):
        deconvolve_fast(y, np.array([0.9]), -1.0)
    with pytest.raises(ValueError, match="NaN"):
        deconvolve(np.r_[y, np.inf], np.array([0.9]), 0.1, solver="auto")
    with pytest.raises(ValueError, match="solver must be"):
        deconvolve(y, np.array([0.9]), 0.1, solver="oasis")
    with pytest.raises(ValueError, match="overlap"):
        deconvolve_long(np.ones(500), np.array([0.9]), 0.1, chunk=100, overlap=60)
    with pytest.raises(ValueError, match="not an installed"):
        deconvolve_cvxpy(y, np.array([0.9]), 0.1, solver_order=("NOPE",))


def test_convolve_and_apply_g_are_inverse():
    rng = np.random.default_rng(14)
    s = rng.random(300)
    for g in AR1 + AR2:
        np.testing.assert_allclose(apply_g(convolve_ar(s, g), g), s, atol=1e-10)


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize("b,a", [([1.0], [1.0, -0.93]), ([1.0], [1.0, -1.6, 0.62]),
                                 ([1.0, -1.6, 0.62], [1.0]), ([0.5, 0.2], [1.0, -0.3, 0.1]),
                                 ([2.0], [1.0])])
def test_linear_filter_equals_scipy_lfilter_bit_for_bit(b, a):
    from scipy.signal import lfilter

    from mps_core.cnmf.ar import linear_filter

    x = np.random.default_rng(3).normal(0, 1, 3000)
    assert np.array_equal(linear_filter(b, a, x), lfilter(b, a, x))
    assert np.array_equal(linear_filter(b, a, x.astype(np.float32)),
                          lfilter(b, a, x.astype(np.float32).astype(np.float64)))
    with pytest.raises(ValueError, match="a\\[0\\] must be 1"):
        linear_filter(b, [2.0, 0.5], x)


@pytest.mark.parametrize("n", [1, 2, 7, 256, 1000])
def test_hann_equals_scipy_periodic_hann_bit_for_bit(n):
    from scipy.signal import get_window

    from mps_core.cnmf.ar import hann

    assert np.array_equal(hann(n), get_window("hann", n))


def test_the_pipeline_does_not_import_scipy_signal():
    """scipy.signal (and scipy.stats with it) costs 1.4 s of every run's start."""
    import subprocess
    import sys

    code = ("import sys; from mps_core.steps import STEPS; import mps_core.cli, mps_core.runner; "
            "print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
