"""Steps 6a-6e: each unit's raw trace (YrA) and the CNMF temporal update (C, S, b0, c0, g).

The temporal update fits, per unit, an autoregressive calcium model with a sparse spike train
to its YrA trace. The parameter models of 6a and 6d are reused by the final pass (8a, 8b), so
both passes are tuned with the same names, and so are :func:`yra_traces` and
:func:`deconvolve_units`.

* 6a streams the movie once (:func:`mps_core.cnmf.yra.compute_yra`); footprints are read
  chunk by chunk into one sparse matrix, never dense all at once.
* 6b samples units (seeded) and one window of frames; see :func:`window_start`.
* 6c measures each sampled unit's SNR, decay and rise (AR fits) and event rate
  (:func:`unit_metrics`) and turns their medians into suggestions with fixed, documented rules
  (:func:`suggest`); the values and reasons are stored, and 6d's ``use_suggestions`` reads
  exactly the stored values.
* 6d solves units in dask tasks of ``units_per_batch`` units with
  :func:`mps_core.cnmf.deconv.deconvolve_batch`. The fast solver is exact and O(T), so it
  always solves whole traces; ``chunk_frames`` / ``overlap_frames`` apply to cvxpy solves
  (solver ``cvxpy``, and ``auto``'s per-unit fallback when the fast solver fails). Traces are
  never rescaled per chunk. Stored ``C`` is the unit's full denoised calcium, spike-driven
  calcium plus the initial decay ``c0 * d`` (so ``C + b0`` models YrA); ``S`` are the spikes
  (``G C = S`` except at frame 0, where ``c0`` stands in for the calcium before the
  recording), moved ``spike_lag_frames`` earlier when that is set: then
  ``S[t] = (G C)[t + spike_lag_frames]``.
* 6e drops units whose spike sum, calcium variance, footprint sum or peak SNR (``min_snr``,
  off by default) is under its threshold and lists why each went.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass
from typing import Literal

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import xarray as xr
from pydantic import model_validator

from ..cnmf.ar import ar_roots, estimate_ar, impulse_response, noise_psd
from ..cnmf.deconv import deconvolve_batch
from ..cnmf.yra import compute_yra
from ..figures import Figure, HistPanel, LinePanel, TextPanel
from ..paramtypes import P, StepParams
from ..registry import Preview, Step, StepError

STAGE = "Temporal update"

Preference = Literal["conservative", "balanced", "aggressive"]


class YrAParams(StepParams):
    subtract_background: bool = P(True, "Subtract the background (b x f) from the movie before "
                                  "projecting; recommended, turn off only to inspect raw "
                                  "traces.")
    use_float32: bool = P(True, "Compute in 32-bit floats: half the memory of 64-bit with "
                          "negligible precision loss.", advanced=True)
    fix_nan: bool = P(True, "Replace NaN or Inf values of the movie with 0 before projecting.")
    chunk_frames: int = P(0, "Frames read at a time; 0 derives it from the memory limit. Lower "
                          "uses less memory.", ge=0, le=100000, advanced=True, unit="frames")


class YrAValidationParams(StepParams):
    n_units: int = P(5, "Number of units (a seeded random sample) whose YrA is plotted.",
                     ge=1, le=100)
    frame_selection: Literal["random", "start", "middle", "end", "highest_variance"] = P(
        "random", "Which frames are plotted: a random block, the start, middle or end of the "
        "recording, or the block where the units vary most.")
    n_frames: int = P(1000, "Number of consecutive frames plotted per unit.",
                      ge=10, le=1000000, unit="frames")
    seed: int = P(0, "Seed of the unit and frame sample, so a rerun shows the same plots.",
                  ge=0, le=2**32 - 1, advanced=True)


class TemporalSuggestionParams(StepParams):
    preference: Preference = P(
        "balanced", "Style of the suggestions: 'aggressive' favours finding more events (lower "
        "penalty), 'conservative' fewer but surer events.")
    max_units: int = P(500, "Suggestions are computed from at most this many units (a seeded "
                       "sample); 0 uses every unit.", ge=0, le=1000000, advanced=True)
    seed: int = P(0, "Seed of the unit sample, so a rerun suggests the same values.",
                  ge=0, le=2**32 - 1, advanced=True)


class TemporalSolverParams(StepParams):
    """The temporal-update parameters shared by 6d and 8b."""

    ar_order: Literal[1, 2] = P(
        1, "Order p of the calcium decay model: 1 (single exponential decay, cleaner, sparser "
        "traces) or 2 (rise and decay, resolves closely spaced events but noisier).")
    sparse_penalty: float = P(1.0, "Weight of the L1 penalty on spikes; higher gives fewer but "
                              "surer spikes, lower finds more events but more noise.",
                              ge=0, le=10000)
    noise_scaled_penalty: bool = P(True, "Multiply the sparse penalty by each unit's noise level "
                                   "so one value suits bright and dim units alike.")
    zero_threshold: float = P(0.01, "Values of C and S under this many noise standard "
                              "deviations of the unit are set to 0; raise it (e.g. 0.5) to drop "
                              "small noise events when the penalty is low.", ge=0, le=100)
    max_iterations: int = P(500, "Maximum iterations of the solver per unit; lower it if some "
                            "units take too long.", ge=1, le=1000000)
    solver: Literal["auto", "fast", "cvxpy"] = P(
        "auto", "'fast' is MPS's exact dedicated solver, 'cvxpy' the general reference solver "
        "(much slower); 'auto' uses fast and falls back to cvxpy for any unit where it fails.")
    chunk_frames: int = P(5000, "Long traces solved by cvxpy (the reference, or auto's "
                          "fallback) are cut into overlapping chunks of this many frames; 0 "
                          "solves them whole (most exact, much slower). The fast solver always "
                          "solves whole traces: it is exact and linear in their length.",
                          ge=0, le=10000000, unit="frames")
    overlap_frames: int = P(100, "Frames shared by consecutive chunks, blended so chunk edges "
                            "leave no artifacts.", ge=0, le=100000, advanced=True, unit="frames")
    units_per_batch: int = P(100, "Units solved per parallel task; larger batches have less "
                             "overhead, smaller ones balance the workers better.",
                             ge=1, le=100000, advanced=True)
    # an indicator's response to a spike rises over tens of ms and a frame integrates light
    # over its exposure, so at miniscope frame rates (20-30 fps) the frame of the spike holds
    # little of its calcium and the AR model (whose response starts at full height in the
    # spike's own frame) puts the spike at the next frame; the benchmark's double-exponential
    # kernel (0 at the spike) shows the same one-frame lag on every recording
    spike_lag_frames: int = P(
        1, "Frames between a spike and the first frame that shows most of its calcium: spikes "
        "are reported this many frames before the calcium rise the AR model places them at. "
        "1 suits indicators rising over tens of ms imaged at 10-30 fps; 0 keeps the AR "
        "convention (a spike and its calcium jump share a frame), e.g. for slow frame rates.",
        ge=0, le=10, unit="frames")

    @model_validator(mode="after")
    def _overlap(self) -> "TemporalSolverParams":
        # the blend needs clean, unshared frames in every chunk
        if self.chunk_frames and 2 * self.overlap_frames >= self.chunk_frames:
            raise ValueError(f"overlap_frames ({self.overlap_frames}) must be under half of "
                             f"chunk_frames ({self.chunk_frames}); or set chunk_frames 0")
        return self


class TemporalUpdateParams(TemporalSolverParams):
    use_suggestions: bool = P(False, "Replace ar_order, sparse_penalty, zero_threshold and "
                              "max_iterations with the values step 6c suggested (as shown "
                              "there); off uses the values set here.")


class FilterParams(StepParams):
    min_spike_sum: float = P(1e-6, "Units whose spikes S sum to less are dropped (no events "
                             "found).", ge=0)
    min_calcium_var: float = P(1e-6, "Units whose calcium trace C varies less are dropped "
                               "(flat trace).", ge=0)
    min_spatial_sum: float = P(1e-6, "Units whose footprint sums to less are dropped (empty "
                               "footprint).", ge=0)
    min_snr: float = P(0.0, "Units whose calcium trace C peaks under this many noise standard "
                       "deviations (6d's noise level of the unit) are dropped, so that noise "
                       "units and fragments do not take pixels from real cells in the spatial "
                       "update; 0 keeps all.", ge=0, le=1000)


UNIT_CHUNK = 64  # units per stored chunk of footprints and traces
TRACE_CHUNK_BYTES = 32 * 2**20  # cap of one stored (units, all frames) trace chunk


def frame_coords(arr: xr.DataArray) -> dict:
    """The frame-index coordinates (frame, movie_number, local_frame, time_s, ...) of `arr`."""
    return {k: v for k, v in arr.coords.items() if v.dims == ("frame",)}


def traces_array(values: np.ndarray | list[np.ndarray], unit_ids: np.ndarray, coords: dict,
                 name: str) -> xr.DataArray:
    """(unit_id, frame) float32 DataArray, dask-backed in (units, all frames) chunks.

    `values` may be a list of consecutive row blocks (one per dask task): they are stitched
    lazily, so the traces are never copied into one array before they are written."""
    blocks = values if isinstance(values, list) else [values]
    blocks = [np.asarray(b, np.float32) for b in blocks]
    T = blocks[0].shape[1]
    rows = int(max(1, min(UNIT_CHUNK, TRACE_CHUNK_BYTES // max(T * 4, 1))))
    data = da.concatenate([da.from_array(b, chunks=b.shape) for b in blocks])
    data = data.rechunk({0: rows, 1: -1})
    return xr.DataArray(data, dims=("unit_id", "frame"),
                        coords={"unit_id": np.asarray(unit_ids, np.int64), **coords}, name=name)


def lazy(arr: xr.DataArray) -> da.Array:
    """The dask array under `arr` (inputs from the store are lazy; direct calls may not be)."""
    return arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.values)


def _same_units(a: xr.DataArray, b: xr.DataArray, names: str) -> None:
    if not np.array_equal(a.unit_id.values, b.unit_id.values):
        raise StepError(f"{names} list different unit ids (one of them is from an older run); "
                        f"rerun the steps that made them")


def _fps(arr: xr.DataArray) -> float | None:
    """Frames per second from the `time_s` coordinate, when there is one."""
    if "time_s" not in arr.coords or arr.sizes["frame"] < 2:
        return None
    dt = np.diff(np.asarray(arr["time_s"].values, np.float64))
    dt = dt[np.isfinite(dt) & (dt > 0)]
    return float(1.0 / np.median(dt)) if dt.size else None


def _pick_units(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of a seeded sample of k of n units (all when k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


# -- 6a -----------------------------------------------------------------------------------

def _block_csr(block: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(np.asarray(block, np.float32).reshape(block.shape[0], -1))


def footprints_sparse(A: xr.DataArray, ctx) -> sp.csr_matrix:
    """(n, H*W) CSR of lazy footprints, read chunk by chunk (never dense all at once)."""
    blocks = lazy(A).rechunk({0: UNIT_CHUNK, 1: -1, 2: -1}).to_delayed().ravel()
    parts = ctx.compute(*[dask.delayed(_block_csr)(b) for b in blocks],
                        message="reading footprints")
    return sp.vstack(parts, format="csr")


def yra_traces(p: YrAParams, ctx, A: xr.DataArray, C: xr.DataArray, b: xr.DataArray,
               f: xr.DataArray, movie: xr.DataArray, name: str = "YrA",
               A_model: xr.DataArray | None = None) -> xr.DataArray:
    """YrA of every unit of (A, C) against `movie` (steps 6a and 8a)."""
    _same_units(A, C, "the footprints and the traces")
    T, H, W = movie.sizes["frame"], movie.sizes["height"], movie.sizes["width"]
    if C.sizes["frame"] != T or (A.sizes["height"], A.sizes["width"]) != (H, W):
        raise StepError(f"the traces ({C.sizes['frame']} frames) and footprints "
                        f"({A.sizes['height']}x{A.sizes['width']}) do not match the cropped movie "
                        f"({T} frames of {H}x{W}); rerun the steps after 3a")
    if "frame" in C.coords and not np.array_equal(C.frame.values, movie.frame.values):
        raise StepError("the traces and the cropped movie cover different frames; rerun the "
                        "steps after 3a")
    if not p.use_float32:
        ctx.warn("use_float32 is off, but YrA is always computed and stored in float32")
    Y = lazy(movie)
    if p.fix_nan:  # lazy, in the same streamed pass
        Y = Y.map_blocks(_zero_nonfinite, dtype=Y.dtype)
    bf = {}
    if p.subtract_background:
        if b.shape != (H, W) or f.shape != (T,):
            raise StepError(f"the background b {b.shape} / f {f.shape} does not match the movie "
                            f"({T} frames of {H}x{W}); rerun step 4e, or turn "
                            f"subtract_background off")
        bf = {"b": np.asarray(b.values, np.float32), "f": np.asarray(f.values, np.float32)}
    Acsr = footprints_sparse(A, ctx)
    (Cv,) = ctx.compute(lazy(C), message="reading traces")
    chunk = p.chunk_frames or _auto_chunk(Y, ctx.chunk_frames(H * W * 4))
    try:
        model = None if A_model is None else footprints_sparse(A_model, ctx)
        yra = compute_yra(Y, Acsr, np.asarray(Cv, np.float32), chunk_frames=chunk,
                          compute=lambda *c: ctx.compute(*c, message="projecting the movie"),
                          A_model=model, **bf)
    except ValueError as e:  # empty footprints, NaN in A or C, ...
        raise StepError(str(e)) from None
    bad = np.flatnonzero(~np.isfinite(yra).all(axis=1))
    if bad.size:
        ids = A.unit_id.values[bad][:10].tolist()
        raise StepError(f"YrA of units {ids} holds NaN or Inf: the movie has non-finite pixels "
                        f"under them; turn fix_nan on")
    return traces_array(yra, A.unit_id.values, frame_coords(movie), name)


def _zero_nonfinite(block: np.ndarray) -> np.ndarray:
    """`block` with NaN / Inf set to 0; a finite block (the usual case) is returned as is.

    A float64 sum is non-finite exactly when a value is (float32 values cannot overflow it),
    and costs one read without the temporary arrays of a masked copy."""
    if np.isfinite(np.sum(block, dtype=np.float64)):
        return block
    return np.where(np.isfinite(block), block, 0).astype(block.dtype, copy=False)


def _auto_chunk(Y: da.Array, budget: int) -> int | None:
    """None (keep the stored chunks: reading is the cost, rechunking adds to it) when they fit
    the memory budget, else the budget."""
    return None if max(Y.chunks[0]) <= budget else int(budget)


def yra_step(p: YrAParams, ctx, A_prep: xr.DataArray, C_prep: xr.DataArray,
             b_init: xr.DataArray, f_init: xr.DataArray, movie_cropped: xr.DataArray) -> dict:
    """Step 6a."""
    return {"YrA": yra_traces(p, ctx, A_prep, C_prep, b_init, f_init, movie_cropped)}


def _preview_yra(outputs, inputs, params) -> Figure:
    Y = outputs["YrA"]
    n, T = Y.sizes["unit_id"], Y.sizes["frame"]
    pos = np.unique(np.linspace(0, n - 1, min(n, 4)).astype(int))
    L = min(T, 2000)
    vals = np.asarray(Y.data[pos, :L])
    x = np.asarray(Y.frame.values[:L])
    panels = [LinePanel(f"unit {int(Y.unit_id.values[i])}", x, {"YrA": v},
                        xlabel="frame") for i, v in zip(pos, vals)]
    return Figure(f"6a YrA ({n} units, first {L} frames)", panels)


# -- 6b -----------------------------------------------------------------------------------

def window_start(selection: str, T: int, L: int, rng: np.random.Generator,
                 traces: np.ndarray) -> int:
    """First frame position of the L-frame window shown by 6b.

    start: 0; middle: (T - L) // 2; end: T - L; random: uniform in [0, T - L] from `rng`
    (drawn after the unit sample); highest_variance: the window where the sum over the
    sampled units of the variance of their trace (each scaled by its whole-trace std) is
    largest, the earliest on ties.
    """
    last = T - L
    if selection == "start":
        return 0
    if selection == "middle":
        return last // 2
    if selection == "end":
        return last
    if selection == "random":
        return int(rng.integers(0, last + 1))
    if selection == "highest_variance":
        return _highest_variance_start(np.asarray(traces, np.float64), L)
    raise ValueError(f"frame_selection must be random, start, middle, end or highest_variance, "
                     f"got {selection!r}")


def _highest_variance_start(y: np.ndarray, L: int) -> int:
    sd = y.std(axis=1)
    y = y[sd > 0] / sd[sd > 0, None]  # flat traces add nothing; others weigh the same
    if y.size == 0:
        return 0
    y = y - y.mean(axis=1, keepdims=True)  # keeps the running sums small (less round-off)
    c1 = np.concatenate([np.zeros((len(y), 1)), np.cumsum(y, axis=1)], axis=1)
    c2 = np.concatenate([np.zeros((len(y), 1)), np.cumsum(y * y, axis=1)], axis=1)
    s1, s2 = c1[:, L:] - c1[:, :-L], c2[:, L:] - c2[:, :-L]
    score = (s2 / L - (s1 / L) ** 2).sum(axis=0)
    return int(np.argmax(score))


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None (null in JSON) when a trace is flat."""
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else None


def validate_yra(p: YrAValidationParams, ctx, YrA: xr.DataArray, C_prep: xr.DataArray) -> dict:
    """Step 6b: sample units and a frame window; simple statistics of YrA there."""
    _same_units(YrA, C_prep, "YrA and C_prep")
    n, T = YrA.sizes["unit_id"], YrA.sizes["frame"]
    rng = np.random.default_rng(p.seed)
    pos = _pick_units(n, p.n_units, rng)
    L = min(p.n_frames, T)
    y, c = ctx.compute(lazy(YrA)[pos], lazy(C_prep)[pos], message="reading sampled traces")
    y, c = np.asarray(y, np.float64), np.asarray(c, np.float64)
    start = window_start(p.frame_selection, T, L, rng, y)
    w = slice(start, start + L)
    frames = YrA.frame.values
    units = {"unit_id": YrA.unit_id.values[pos].tolist(), "position": pos.tolist(),
             "yra_mean": y[:, w].mean(1).tolist(), "yra_std": y[:, w].std(1).tolist(),
             "yra_min": y[:, w].min(1).tolist(), "yra_max": y[:, w].max(1).tolist(),
             "corr_with_C_window": [_corr(a[w], b[w]) for a, b in zip(y, c)],
             "corr_with_C_all": [_corr(a, b) for a, b in zip(y, c)]}
    return {"yra_validation": {
        "frame_selection": p.frame_selection, "seed": p.seed, "n_units_total": int(n),
        "n_frames_total": int(T), "n_frames": int(L), "start_index": int(start),
        "stop_index": int(start + L), "first_frame": int(frames[start]),
        "last_frame": int(frames[start + L - 1]), "units": units}}


def _preview_validation(outputs, inputs, params) -> Figure:
    v = outputs["yra_validation"]
    u = v["units"]
    pos = np.asarray(u["position"][:6], int)
    w = slice(v["start_index"], v["stop_index"])
    Y, C = inputs["YrA"], inputs["C_prep"]
    x = np.asarray(Y.frame.values[w])
    ys, cs = np.asarray(Y.data[pos, w]), np.asarray(C.data[pos, w])
    panels = [LinePanel(f"unit {uid} (r = {_num(r, '.2f')})", x, {"YrA": a, "C (initial)": b},
                        xlabel="frame")
              for uid, r, a, b in zip(u["unit_id"], u["corr_with_C_window"], ys, cs)]
    text = (f"frames {v['first_frame']}-{v['last_frame']} ({v['frame_selection']}, "
            f"{v['n_frames']} of {v['n_frames_total']})\nunits "
            + ", ".join(str(i) for i in u["unit_id"]) + "\n"
            + "\n".join(f"{i}: std {s:.3g}, r {_num(r, '.2f')}" for i, s, r in
                        zip(u["unit_id"], u["yra_std"], u["corr_with_C_window"])))
    return Figure("6b YrA validation", panels + [TextPanel("selection", text)])


# -- 6c -----------------------------------------------------------------------------------

EVENT_HIGH, EVENT_LOW = 4.0, 2.0  # event onset / end, in noise sd above the median


def unit_metrics(y: np.ndarray) -> dict[str, float]:
    """Noise, SNR, decay and rise times (frames) and event rate of one YrA trace.

    * sn: PSD noise (:func:`noise_psd`, as 6d uses); SNR: (99.5th percentile - median) / sn.
    * decay_frames: -1 / ln(g) of the AR(1) fit (:func:`estimate_ar`); decay2_frames and
      rise_frames: the same of the larger and smaller root of the AR(2) fit.
    * events: onsets above median + 4 sn, each ended by a drop below median + 2 sn
      (hysteresis, so noise on a decay does not count twice); event_rate per frame.
    * peak_delay_frames: median over events of the frames from the last frame under the
      onset threshold to the trace's peak (within one decay time, 5-100 frames): 1 for an
      instantaneous rise. The AR(2) roots alone are a weak test of a resolved rise: the PSD
      noise includes the calcium's own power in the band, which biases them (see
      :mod:`mps_core.cnmf.ar`), while the peak delay is read directly off the events.
    """
    y = np.asarray(y, np.float64)
    nan = float("nan")
    sn = float(noise_psd(y))
    med = float(np.median(y))
    out = dict.fromkeys(METRICS, nan) | {"sn": sn}
    if not sn > 0:
        return out  # flat trace: nothing to measure
    out["snr"] = float((np.percentile(y, 99.5) - med) / sn)
    out["decay_frames"] = _tau(estimate_ar(y, 1, sn)[0])
    roots = np.sort(np.real(ar_roots(estimate_ar(y, 2, sn))))[::-1]
    out["decay2_frames"], out["rise_frames"] = _tau(roots[0]), _tau(roots[1])
    onsets = _onsets(y, med + EVENT_HIGH * sn, med + EVENT_LOW * sn)
    out["event_rate"] = onsets.size / y.size
    window = int(np.clip(np.ceil(out["decay_frames"]), 5, 100))
    if onsets.size:
        delays = [np.argmax(y[t:t + window]) + 1 for t in onsets]
        out["peak_delay_frames"] = float(np.median(delays))
    return out


def _tau(root: float) -> float:
    """Time constant in frames of a per-frame factor (0 for no memory)."""
    return float(-1.0 / np.log(root)) if 0 < root < 1 else 0.0


def _onsets(y: np.ndarray, high: float, low: float) -> np.ndarray:
    """Frames where an event starts: above `high` after being below `low` (vectorised)."""
    mark = np.where(y > high, 1, np.where(y < low, -1, 0))
    last = np.maximum.accumulate(np.where(mark != 0, np.arange(y.size), -1))
    up = np.where(last >= 0, mark[np.maximum(last, 0)], -1) == 1  # last non-zero mark
    return np.flatnonzero(up & ~np.concatenate([[False], up[:-1]]))


def _block_metrics(block: np.ndarray) -> np.ndarray:
    rows = [unit_metrics(y) for y in np.asarray(block)]
    return np.array([[r[k] for k in METRICS] for r in rows], np.float64).reshape(-1, len(METRICS))


METRICS = ("sn", "snr", "decay_frames", "decay2_frames", "rise_frames", "peak_delay_frames",
           "event_rate")
PENALTY_FACTOR = {"conservative": 2.0, "balanced": 1.0, "aggressive": 0.5}
ZERO_BASE = {"conservative": 0.5, "balanced": 0.1, "aggressive": 0.01}


def _median(v: np.ndarray) -> float:
    """Median of the finite values (NaN when there are none, without a warning)."""
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _round2(x: float) -> float:
    """Two significant digits (suggestions are shown; no false precision)."""
    return float(f"{x:.2g}")


def suggest(metrics: dict[str, np.ndarray], preference: str, T: int) -> dict:
    """Deterministic suggestions, each with its reason, from per-unit metrics (6c rules)."""
    snr_all = np.asarray(metrics["snr"], np.float64)
    ok = np.isfinite(snr_all) & (snr_all > 0)
    if not ok.any():
        return {k: {"value": v, "reason": "no sampled unit had a measurable signal; the "
                    "default is kept"} for k, v in
                (("ar_order", 1), ("sparse_penalty", 1.0), ("max_iterations", 500),
                 ("zero_threshold", 0.01))}
    med = {k: _median(np.asarray(metrics[k], np.float64)[ok]) for k in METRICS}
    snr, delay, decay, rate = med["snr"], med["peak_delay_frames"], med["decay_frames"], \
        med["event_rate"]
    out = {"ar_order": _suggest_order(snr, delay, decay)}
    out["sparse_penalty"] = _suggest_penalty(snr, rate, preference)
    out["max_iterations"] = _suggest_iterations(out["ar_order"]["value"], decay,
                                                med["decay2_frames"])
    out["zero_threshold"] = _suggest_zero(snr, rate, preference)
    return out


def _suggest_order(snr: float, delay: float, decay: float) -> dict:
    """AR(2) when calcium visibly rises over 2+ frames and the SNR can carry a rise fit."""
    if not np.isfinite(delay):
        return {"value": 1, "reason": f"no events were found to measure the rise; a single "
                f"decay of {decay:.1f} frames (AR(1)) is the safe model"}
    if delay >= 2.0 and snr >= 5.0:
        return {"value": 2, "reason": f"events peak {delay:.1f} frames after they start "
                f"(median): the rise is resolved, and the median SNR {snr:.1f} (>= 5) is "
                f"high enough to fit it: AR(2) models the rise"}
    if delay >= 2.0:
        return {"value": 1, "reason": f"events peak {delay:.1f} frames after they start, but "
                f"the median SNR {snr:.1f} is under 5, too low to fit a rise reliably: AR(1) "
                f"gives cleaner traces"}
    return {"value": 1, "reason": f"events peak {delay:.1f} frame(s) after they start: the "
            f"rise is not resolved, so a single decay of {decay:.1f} frames (AR(1)) suffices"}


def _suggest_penalty(snr: float, rate: float, preference: str) -> dict:
    if snr < 3:
        base, why = 2.0, f"weak units (median SNR {snr:.1f} < 3): 2 keeps noise from being " \
                         f"fitted as spikes"
    elif snr < 10:
        base, why = 1.0, f"median SNR {snr:.1f} (3-10): 1, the standard weight"
    else:
        base, why = 0.5, f"clear units (median SNR {snr:.1f} >= 10): 0.5 keeps small events"
    value = base
    if rate > 0.05:
        value *= 0.7
        why += f"; x 0.7 as events are frequent ({1000 * rate:.0f} per 1000 frames) and " \
               f"overlap, which a lower penalty separates"
    factor = PENALTY_FACTOR[preference]
    if factor != 1.0:
        value *= factor
        why += f"; x {factor} for the '{preference}' preference"
    return {"value": _round2(value), "reason": why + " (in units of each unit's noise level, "
            "as used with noise_scaled_penalty on)"}


def _suggest_iterations(order: int, decay: float, decay2: float) -> dict:
    value, why = 500, "500 suffices for the exact fast solver and for ECOS"
    if order == 2:
        value, why = 1000, "AR(2): 1000, as near-double roots may need interior-point steps"
    slow = max(decay, decay2 if order == 2 else 0.0)
    if slow > 200:
        value *= 2
        why += f"; doubled as the decay is slow ({slow:.0f} frames), which makes the problem " \
               f"ill-conditioned"
    return {"value": int(value), "reason": why}


def _suggest_zero(snr: float, rate: float, preference: str) -> dict:
    value = ZERO_BASE[preference]
    why = f"{value} noise sd for the '{preference}' preference"
    if snr < 3 and value < 0.5:
        value, why = 0.5, why + f"; raised to 0.5 as units are weak (median SNR {snr:.1f} < 3) " \
                                f"and small fitted events are likely noise"
    if rate < 0.001 and value < 0.25:
        value, why = 0.25, why + f"; raised to 0.25 as events are rare " \
                                 f"({1000 * rate:.2f} per 1000 frames), so most small fits " \
                                 f"are noise"
    return {"value": float(value), "reason": why}


def suggest_step(p: TemporalSuggestionParams, ctx, YrA: xr.DataArray,
                 A_prep: xr.DataArray) -> dict:
    """Step 6c: per-unit metrics on a seeded sample, then the suggestions."""
    _same_units(YrA, A_prep, "YrA and A_prep")
    n, T = YrA.sizes["unit_id"], YrA.sizes["frame"]
    pos = _pick_units(n, p.max_units or n, np.random.default_rng(p.seed))
    rows = lazy(YrA)[pos].rechunk({0: UNIT_CHUNK, 1: -1})
    parts = [dask.delayed(_block_metrics)(b) for b in rows.to_delayed().ravel()]
    values = np.concatenate(ctx.compute(*parts, message="unit metrics"), axis=0)
    metrics = {k: values[:, i] for i, k in enumerate(METRICS)}
    sugg = suggest(metrics, p.preference, T)
    ok = np.isfinite(metrics["snr"]) & (metrics["snr"] > 0)
    fps = _fps(YrA)
    summary = {k: _finite_or_none(_median(metrics[k][ok])) for k in METRICS}
    summary |= {"n_units_total": int(n), "n_units_used": int(len(pos)),
                "n_units_measurable": int(ok.sum()), "n_frames": int(T), "fps": fps,
                "preference": p.preference, "seed": p.seed}
    units = {"unit_id": YrA.unit_id.values[pos].tolist()}
    units |= {k: [_finite_or_none(v) for v in metrics[k]] for k in METRICS}
    return {"temporal_suggestions": {
        "values": {k: s["value"] for k, s in sugg.items()},
        "reasons": {k: s["reason"] for k, s in sugg.items()},
        "summary": summary, "units": units}}


def suggestion_text(s: dict) -> str:
    """The suggestions and their reasons as shown to the user (preview and GUI)."""
    lines = [f"{k} = {s['values'][k]}\n    {s['reasons'][k]}" for k in SUGGESTED]
    m = s["summary"]
    if m.get("snr") is not None:
        fps = m.get("fps")
        decay = _num(m["decay_frames"], ".1f") + " frames"
        if fps and m["decay_frames"] is not None:
            decay += f" ({m['decay_frames'] / fps:.2f} s)"
        rate = None if m["event_rate"] is None else 1000 * m["event_rate"]
        lines.append(f"medians over {m['n_units_measurable']} measurable of "
                     f"{m['n_units_used']} sampled units: SNR {_num(m['snr'], '.1f')}, decay "
                     f"{decay}, peak delay {_num(m['peak_delay_frames'], '.1f')} frames, "
                     f"{_num(rate, '.1f')} events per 1000 frames")
    return "\n".join(lines)


def _num(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


SUGGESTED = ("ar_order", "sparse_penalty", "max_iterations", "zero_threshold")


def _preview_suggestions(outputs, inputs, params) -> Figure:
    s = outputs["temporal_suggestions"]
    u = s["units"]
    arr = {k: np.array([np.nan if v is None else v for v in u[k]], float) for k in METRICS}
    return Figure("6c Temporal parameter suggestions", [
        TextPanel("suggestions (use_suggestions in 6d applies them)", _wrap(suggestion_text(s))),
        HistPanel("SNR", {"units": arr["snr"]}),
        HistPanel("decay time (AR(1))", {"units": arr["decay_frames"]}, xlabel="frames"),
        HistPanel("event rate", {"units": 1000 * arr["event_rate"]},
                  xlabel="events per 1000 frames"),
    ])


def _wrap(text: str, width: int = 60) -> str:
    return "\n".join(textwrap.fill(line, width, subsequent_indent="    ")
                     for line in text.splitlines())


# -- 6d -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SolverSettings:
    """What one temporal-update run uses (6d, 8b), after suggestions are applied."""

    ar_order: int
    sparse_penalty: float
    noise_scaled_penalty: bool
    zero_threshold: float
    max_iterations: int
    solver: str
    chunk_frames: int
    overlap_frames: int
    units_per_batch: int
    source: str = "parameters"
    spike_lag_frames: int = 0

    @classmethod
    def from_params(cls, p: TemporalSolverParams, suggestions: dict | None = None
                    ) -> "SolverSettings":
        values = {k: getattr(p, k) for k in SUGGESTED}
        source = "parameters"
        if suggestions is not None:
            values = _checked_suggestions(suggestions)
            source = "step 6c suggestions"
        return cls(values["ar_order"], values["sparse_penalty"], p.noise_scaled_penalty,
                   values["zero_threshold"], values["max_iterations"], p.solver,
                   p.chunk_frames, p.overlap_frames, p.units_per_batch, source,
                   p.spike_lag_frames)


def _checked_suggestions(s: dict) -> dict:
    try:
        v = s["values"]
        out = {"ar_order": int(v["ar_order"]), "sparse_penalty": float(v["sparse_penalty"]),
               "zero_threshold": float(v["zero_threshold"]),
               "max_iterations": int(v["max_iterations"])}
    except (KeyError, TypeError, ValueError):
        raise StepError("the stored 6c suggestions are unreadable; rerun step 6c or turn "
                        "use_suggestions off") from None
    if out["ar_order"] not in (1, 2) or out["sparse_penalty"] < 0 or \
            out["zero_threshold"] < 0 or out["max_iterations"] < 1:
        raise StepError(f"the stored 6c suggestions {out} are out of range; rerun step 6c")
    return out


def _solve_block(Y: np.ndarray, s: SolverSettings) -> dict:
    """Deconvolve one batch of units (one dask task); see :func:`deconvolve_units`."""
    Y = np.asarray(Y, np.float32)
    common = dict(p=s.ar_order, sparse_penalty=s.sparse_penalty,
                  noise_scaled_penalty=s.noise_scaled_penalty, zero_threshold=s.zero_threshold,
                  max_iter=s.max_iterations, overlap=s.overlap_frames)
    if s.solver == "cvxpy":
        res = deconvolve_batch(Y, solver="cvxpy", chunk=s.chunk_frames, **common)
    else:  # the fast solver is exact and O(T): whole traces, never chunked
        res = deconvolve_batch(Y, solver="fast", chunk=0, **common)
        if s.solver == "auto":
            _fallback(Y, res, s, common)
    T = Y.shape[1]
    for i in range(Y.shape[0]):  # C holds the initial decay too: C + b0 models YrA
        if res.c0[i] > 0:
            res.C[i] += (res.c0[i] * impulse_response(res.g[i], T)).astype(res.C.dtype)
    S = lag_spikes(res.S, s.spike_lag_frames)
    return {"C": res.C, "S": S, "b0": res.b0, "c0": res.c0, "g": res.g, "sn": res.sn,
            "lam": res.lam, "objective": res.objective, "solver": res.solver,
            "status": res.status, "message": res.message}


def lag_spikes(S: np.ndarray, lag: int) -> np.ndarray:
    """Spikes moved ``lag`` frames earlier (the last ``lag`` frames get 0): the AR model puts a
    spike at the first frame its calcium shows, the spike itself came ``lag`` frames before."""
    if lag <= 0:
        return S
    out = np.zeros_like(S)
    out[:, :-lag] = S[:, lag:]
    return out


def _fallback(Y: np.ndarray, res, s: SolverSettings, common: dict) -> None:
    """auto: units the fast solver failed on are solved by cvxpy (chunked as set), in place."""
    for i, name in enumerate(res.solver):
        if name != "failed":
            continue
        r = deconvolve_batch(Y[i:i + 1], solver="cvxpy", chunk=s.chunk_frames,
                             g=res.g[i], sn=res.sn[i], **common)
        res.C[i], res.S[i], res.b0[i], res.c0[i] = r.C[0], r.S[0], r.b0[0], r.c0[0]
        res.objective[i] = r.objective[0]
        res.solver[i], res.status[i] = r.solver[0], r.status[0]
        res.message[i] = f"fast failed ({res.message[i]}); {r.message[0]}".rstrip("; ")


def deconvolve_units(YrA: xr.DataArray, s: SolverSettings, ctx, names: dict[str, str]
                     ) -> dict:
    """The temporal update of every unit (6d, 8b): dask tasks over unit batches.

    `names` maps C, S, b0, c0, g, report to the output names. Returns those outputs.
    """
    n, T = YrA.sizes["unit_id"], YrA.sizes["frame"]
    if T < 3:
        raise StepError(f"the traces have {T} frames; the temporal update needs at least 3")
    # never fewer batches than workers (idle workers), never more units than asked per batch
    batch = max(1, min(s.units_per_batch, -(-n // max(1, int(getattr(ctx, "n_workers", 1))))))
    blocks = lazy(YrA).rechunk({0: batch, 1: -1}).to_delayed().ravel()
    parts = ctx.compute(*[dask.delayed(_solve_block)(b, s) for b in blocks],
                        message="deconvolving")
    cat = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in
           ("b0", "c0", "g", "sn", "lam", "objective")}
    lists = {k: [x for p in parts for x in p[k]] for k in ("solver", "status", "message")}
    ids = YrA.unit_id.values.astype(np.int64)
    unit = {"unit_id": ids}
    coords = frame_coords(YrA)
    lag = {"lag": np.arange(1, s.ar_order + 1)}
    return {
        names["C"]: traces_array([p["C"] for p in parts], ids, coords, names["C"]),
        names["S"]: traces_array([p["S"] for p in parts], ids, coords, names["S"]),
        names["b0"]: xr.DataArray(cat["b0"].astype(np.float32), dims=("unit_id",),
                                  coords=unit, name=names["b0"]),
        names["c0"]: xr.DataArray(cat["c0"].astype(np.float32), dims=("unit_id",),
                                  coords=unit, name=names["c0"]),
        names["g"]: xr.DataArray(cat["g"].astype(np.float32), dims=("unit_id", "lag"),
                                 coords={**unit, **lag}, name=names["g"]),
        names["report"]: _solver_report(ids, cat, lists, s),
    }


def _solver_report(ids, cat, lists, s: SolverSettings) -> dict:
    solvers = lists["solver"]
    counts = {k: solvers.count(k) for k in sorted(set(solvers))}
    fell_back = [int(i) for i, m in zip(ids, lists["message"]) if m.startswith("fast failed")]
    return {"settings": asdict(s), "solver_counts": counts, "fallback_unit_ids": fell_back,
            "failed_unit_ids": [int(i) for i, x in zip(ids, solvers) if x == "failed"],
            "units": {"unit_id": ids.tolist(), "solver": solvers, "status": lists["status"],
                      "objective": [None if not np.isfinite(v) else float(v)
                                    for v in cat["objective"]],
                      "sn": cat["sn"].tolist(), "lam": cat["lam"].tolist(),
                      "message": lists["message"]}}


def temporal_update(p: TemporalUpdateParams, ctx, YrA: xr.DataArray, A_prep: xr.DataArray,
                    temporal_suggestions: dict | None = None) -> dict:
    """Step 6d."""
    _same_units(YrA, A_prep, "YrA and A_prep")
    if p.use_suggestions and temporal_suggestions is None:
        raise StepError("use_suggestions is on but step 6c has no result; run step 6c first "
                        "or turn use_suggestions off")
    s = SolverSettings.from_params(p, temporal_suggestions if p.use_suggestions else None)
    out = deconvolve_units(YrA, s, ctx, {"C": "C_temporal", "S": "S_temporal",
                                         "b0": "b0_temporal", "c0": "c0_temporal",
                                         "g": "g_temporal", "report": "solver_report"})
    failed = out["solver_report"]["failed_unit_ids"]
    if failed:
        ctx.warn(f"every solver failed on units {failed[:10]} (zero C and S; 6e drops them)")
    return out


def _preview_temporal(outputs, inputs, params) -> Figure:
    C, S = outputs["C_temporal"], outputs["S_temporal"]
    rep = outputs["solver_report"]
    n, T = C.sizes["unit_id"], C.sizes["frame"]
    pos = np.unique(np.linspace(0, n - 1, min(n, 4)).astype(int))
    L = min(T, 2000)
    y = np.asarray(inputs["YrA"].data[pos, :L])
    c, sp_ = np.asarray(C.data[pos, :L]), np.asarray(S.data[pos, :L])
    b0 = np.asarray(outputs["b0_temporal"].values)[pos]
    x = np.asarray(C.frame.values[:L])
    panels = []
    for k, i in enumerate(pos):
        low = float(np.min(y[k]))  # spikes drawn under the trace, on the same scale
        panels.append(LinePanel(
            f"unit {int(C.unit_id.values[i])} ({rep['units']['solver'][i]})", x,
            {"YrA": y[k], "C + b0": c[k] + b0[k], "S": low - sp_[k]}, xlabel="frame"))
    st = rep["settings"]
    text = (f"{n} units; solvers {rep['solver_counts']}\nsettings from {st['source']}: "
            f"AR({st['ar_order']}), penalty {st['sparse_penalty']}, zero threshold "
            f"{st['zero_threshold']}, max iterations {st['max_iterations']}\n"
            f"fallbacks {len(rep['fallback_unit_ids'])}, failures {len(rep['failed_unit_ids'])}")
    return Figure("6d Temporal update", panels + [TextPanel("solver report", _wrap(text))])


# -- 6e -----------------------------------------------------------------------------------

def unit_peak_snr(peak: np.ndarray, unit_ids: np.ndarray, report: dict | None,
                  step: str) -> np.ndarray:
    """Peak of each unit's C over its noise level in a solver report (6d / 8b); NaN if unknown.

    The noise level is the one the solver estimated from the unit's YrA, so the ratio does
    not depend on the scale of the footprint and trace."""
    try:
        lookup = dict(zip(np.asarray(report["units"]["unit_id"], np.int64).tolist(),
                          np.asarray(report["units"]["sn"], np.float64).tolist()))
    except (KeyError, TypeError):
        raise StepError(f"the solver report read by step {step} has no per-unit noise levels; "
                        f"rerun the temporal update before it") from None
    sn = np.array([lookup.get(int(u), np.nan) for u in unit_ids], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sn > 0, np.asarray(peak, np.float64) / sn, np.nan)


def filter_units(p: FilterParams, ctx, A_prep: xr.DataArray, C_temporal: xr.DataArray,
                 S_temporal: xr.DataArray, solver_report: dict | None = None) -> dict:
    """Step 6e: drop units without spikes, with a flat trace, an empty footprint or a peak
    under ``min_snr`` noise levels (the last needs 6d's solver report)."""
    _same_units(A_prep, C_temporal, "A_prep and C_temporal")
    _same_units(C_temporal, S_temporal, "C_temporal and S_temporal")
    spikes, var, foot, peak = (np.asarray(v, np.float64) for v in ctx.compute(
        lazy(S_temporal).sum(axis=1, dtype=np.float64),
        lazy(C_temporal).astype(np.float64).var(axis=1),
        lazy(A_prep).sum(axis=(1, 2), dtype=np.float64),
        lazy(C_temporal).max(axis=1).astype(np.float64), message="unit statistics"))
    ids = A_prep.unit_id.values.astype(np.int64)
    if solver_report is not None and p.min_snr > 0:
        snr = unit_peak_snr(peak, ids, solver_report, "6e")
        weak = ~(np.nan_to_num(snr, nan=-np.inf) >= p.min_snr)
    else:  # without 6d's noise levels the SNR check cannot run
        snr, weak = np.full(ids.size, np.nan), np.zeros(ids.size, bool)
    tests = ((spikes < p.min_spike_sum, f"no spikes (spike sum < {p.min_spike_sum:g})"),
             (var < p.min_calcium_var, f"flat calcium (variance < {p.min_calcium_var:g})"),
             (foot < p.min_spatial_sum, f"empty footprint (sum < {p.min_spatial_sum:g})"),
             (weak, f"weak (peak < {p.min_snr:g} noise levels)"))
    reasons = ["; ".join(why for bad, why in tests if bad[i]) for i in range(len(spikes))]
    drop = np.array([bool(r) for r in reasons])
    keep = np.flatnonzero(~drop)
    if keep.size == 0:
        raise StepError("every unit failed the 6e checks (no spikes, flat calcium, empty "
                        "footprint or weak); lower the thresholds or revisit 6d's "
                        "sparse_penalty")
    out = {"A_filtered": A_prep.isel(unit_id=keep).chunk({"unit_id": UNIT_CHUNK}),
           "C_filtered": C_temporal.isel(unit_id=keep),
           "S_filtered": S_temporal.isel(unit_id=keep)}
    for k, v in out.items():
        v.name = k
    d = np.flatnonzero(drop)
    out["dropped_6e"] = {
        "thresholds": {"min_spike_sum": p.min_spike_sum, "min_calcium_var": p.min_calcium_var,
                       "min_spatial_sum": p.min_spatial_sum, "min_snr": p.min_snr},
        "snr_checked": bool(solver_report is not None and p.min_snr > 0),
        "n_units": int(ids.size), "n_kept": int(keep.size), "n_dropped": int(d.size),
        "unit_id": ids[d].tolist(), "reason": [reasons[i] for i in d],
        "spike_sum": spikes[d].tolist(), "calcium_var": var[d].tolist(),
        "footprint_sum": foot[d].tolist(),
        "snr": [None if not np.isfinite(v) else float(v) for v in snr[d]]}
    return out


def _preview_filter(outputs, inputs, params) -> Figure:
    r = outputs["dropped_6e"]
    S = outputs["S_filtered"]
    lines = [f"{i}: {why}" for i, why in zip(r["unit_id"], r["reason"])]
    text = (f"kept {r['n_kept']} of {r['n_units']} units, dropped {r['n_dropped']}\n"
            + "\n".join(lines[:25]) + ("\n..." if len(lines) > 25 else ""))
    sums = np.asarray(S.data.sum(axis=1))
    return Figure("6e Filter and validate", [
        TextPanel("dropped units", _wrap(text)),
        HistPanel("spike sum of kept units", {"kept": sums}, xlabel="sum of S"),
    ])


STEP_6A = Step(
    id="6a", title="YrA", stage=STAGE,
    summary="Computes each unit's raw trace: the movie minus background and all other units, "
            "projected on the unit's footprint, plus its own trace. Streams over frame chunks.",
    params=YrAParams, inputs=("A_prep", "C_prep", "b_init", "f_init", "movie_cropped"),
    outputs=("YrA",), run=yra_step, previews=(Preview("traces", "YrA traces", _preview_yra),),
)

STEP_6B = Step(
    id="6b", title="YrA validation", stage=STAGE,
    summary="Plots YrA against the initial traces for a few units on selected frames, as a "
            "sanity check before the temporal update.",
    params=YrAValidationParams, inputs=("YrA", "C_prep"), outputs=("yra_validation",),
    run=validate_yra, previews=(Preview("yra", "YrA vs initial traces", _preview_validation),),
)

STEP_6C = Step(
    id="6c", title="Temporal parameter suggestions", stage=STAGE,
    summary="Suggests the AR order, sparse penalty, maximum iterations and zero threshold from "
            "the units' SNR, decay time and event rate, with the reason for each. The "
            "suggestions are stored so step 6d can use exactly what was shown.",
    params=TemporalSuggestionParams, inputs=("YrA", "A_prep"),
    outputs=("temporal_suggestions",), run=suggest_step,
    previews=(Preview("suggestions", "Suggestions", _preview_suggestions),),
)

STEP_6D = Step(
    id="6d", title="Temporal update", stage=STAGE,
    summary="Fits each unit's denoised calcium trace C, spikes S, baseline b0, initial decay c0 "
            "and AR coefficients g to its YrA with a sparse spike penalty. Records the solver and "
            "objective per unit.",
    params=TemporalUpdateParams, inputs=("YrA", "A_prep"),
    optional_inputs=("temporal_suggestions",),
    outputs=("C_temporal", "S_temporal", "b0_temporal", "c0_temporal", "g_temporal",
             "solver_report"),
    run=temporal_update, previews=(Preview("traces", "YrA, C and S", _preview_temporal),),
)

STEP_6E = Step(
    id="6e", title="Filter and validate", stage=STAGE,
    summary="Drops units with no spikes, a flat calcium trace or an empty footprint, and "
            "records why each dropped unit went.",
    params=FilterParams, inputs=("A_prep", "C_temporal", "S_temporal"),
    optional_inputs=("solver_report",),
    outputs=("A_filtered", "C_filtered", "S_filtered", "dropped_6e"), run=filter_units,
    previews=(Preview("dropped", "Dropped units", _preview_filter),),
)
