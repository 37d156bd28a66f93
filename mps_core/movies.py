"""Movies of a session, for exports: a stage resolved to a lazy movie, frame ranges, colours.

A *stage* names one movie a session can show (:data:`STAGES`):

* ``raw`` (step 2a ``movie_raw``), ``2b`` (``movie_filtered``), ``2e`` (``movie``, motion
  corrected) are in the input video's full pixel grid;
* ``reconstruction`` and ``residual`` are in the cropped grid of step 3a. The model of the
  cropped movie ``Y`` (3a's ``movie_cropped``, already cleaned of its static background, so
  that background is NOT added back) is the one the temporal passes fit::

      Y ~ A (C + b0 [+ beta (f - mean f)]) + b f

  with A / C / b0 from the most final result present (see :data:`MODELS`), b (height, width)
  and f (frame,) the background of step 4e (left out when the YrA step that produced the
  traces had ``subtract_background`` off), and ``beta`` 8b's per-unit background weights when
  8b ran with ``include_background``. ``residual = Y - reconstruction``. Both cover the frames
  that Y and the traces share (aligned on the ``frame`` coordinate).

Everything stays lazy (dask): :func:`iter_frames` reads the frames an export needs in batches
that follow the stored chunks, so memory stays bounded whatever the recording's length.

Frame ranges (``START:STOP:STEP``) are in the recording's original frame numbers (the
``frame`` coordinate), like Python's ``range``: frames removed by quality control are simply
absent, so the same range picks the same moments in every stage.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import xarray as xr

from .cnmf.sparse_footprints import read_csr
from .registry import Cancelled
from .store import released_message

Progress = Callable[[float, str], None]

FRAME_RANGE_FORM = ("START:STOP:STEP (whole numbers >= 0, each optional, STEP >= 1; "
                    "e.g. 0:1000:2, :500 or ::10)")
DEFAULT_FPS = 20.0
DEFAULT_PERCENTILES = (0.5, 99.5)
BATCH_BYTES = 128 * 1024**2  # frames read per batch: about this many bytes (float32)


@dataclass(frozen=True)
class StageInfo:
    step: str
    output: str
    title: str
    grid: str  # "full" (input video grid) or "crop" (3a's crop)
    needs: str  # the last step to run for it


STAGES: dict[str, StageInfo] = {
    "raw": StageInfo("2a", "movie_raw", "raw movie", "full", "2a"),
    "2b": StageInfo("2b", "movie_filtered", "denoised movie", "full", "2b"),
    "2e": StageInfo("2e", "movie", "motion-corrected movie", "full", "2e"),
    "reconstruction": StageInfo("8b", "C_final", "reconstruction A x C + background", "crop",
                                "8b"),
    "residual": StageInfo("8b", "C_final", "residual (cropped movie - reconstruction)", "crop",
                          "8b"),
}


@dataclass(frozen=True)
class ModelSource:
    """Where one (A, C, b0) triple lives; ``yra_step`` tells whether b f was subtracted."""

    name: str
    A: tuple[str, str]
    C: tuple[str, str]
    b0: tuple[str, str] | None
    yra_step: str | None
    report: tuple[str, str] | None = None


# most final first: the refined footprints with the final traces, then the first CNMF pass,
# then the initialisation (whose model is A C + b f by construction)
MODELS: tuple[ModelSource, ...] = (
    ModelSource("final (7f footprints, 8b traces)", ("7f", "A_refined"), ("8b", "C_final"),
                ("8b", "b0_final"), "8a", ("8b", "solver_report_final")),
    ModelSource("first pass (6e footprints and traces)", ("6e", "A_filtered"),
                ("6e", "C_filtered"), ("6d", "b0_temporal"), "6a"),
    ModelSource("initialisation (4e)", ("4e", "A_init"), ("4e", "C_init"), None, None),
)


class StageMissing(ValueError):
    """A stage the session does not hold yet (the message says what to run)."""


# ============================================================================== frame ranges


def parse_frames(spec: str | slice | None) -> slice:
    """``"START:STOP:STEP"`` (each part optional) as a slice of original frame numbers."""
    if spec is None or isinstance(spec, slice):
        return spec if spec is not None else slice(None)
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*(?::\s*(\d*)\s*)?", str(spec))
    if not m:
        raise ValueError(f"frame range '{spec}': expected {FRAME_RANGE_FORM}")
    start, stop, step = (int(g) if g else None for g in m.groups())
    if step == 0:
        raise ValueError(f"frame range '{spec}': STEP must be >= 1; expected {FRAME_RANGE_FORM}")
    if start is not None and stop is not None and stop <= start:
        raise ValueError(f"frame range '{spec}': STOP must be greater than START; expected "
                         f"{FRAME_RANGE_FORM}")
    return slice(start, stop, step)


def select_positions(frames: np.ndarray, spec: str | slice | None,
                     what: str = "movie") -> np.ndarray:
    """Positions (indices along ``frame``) whose frame numbers fall in ``spec``'s range."""
    sl = parse_frames(spec)
    f = np.asarray(frames, np.int64)
    start = 0 if sl.start is None else sl.start
    ok = f >= start
    if sl.stop is not None:
        ok &= f < sl.stop
    if sl.step not in (None, 1):
        ok &= (f - start) % sl.step == 0
    pos = np.flatnonzero(ok)
    if pos.size == 0:
        have = f"frames {f[0]}..{f[-1]}" if f.size else "no frames"
        raise ValueError(f"frame range '{_spec_text(spec)}' selects no frame of the {what} "
                         f"({have}); expected {FRAME_RANGE_FORM}")
    return pos


def _spec_text(spec) -> str:
    if isinstance(spec, slice):
        return ":".join("" if v is None else str(v) for v in (spec.start, spec.stop, spec.step))
    return "" if spec is None else str(spec)


# ============================================================================== stages


def stage_names() -> tuple[str, ...]:
    return tuple(STAGES)


def _run_hint(store, step: str) -> str:
    if (store.root / "params.json").exists():
        return f"`mps run --params {store.root / 'params.json'} --to {step}`"
    return f"`mps run --input RECORDING --output {store.root} --to {step}`"


def _check_stage(stage: str) -> StageInfo:
    if stage not in STAGES:
        raise ValueError(f"stage '{stage}': allowed stages are {', '.join(STAGES)}")
    return STAGES[stage]


def open_stage(store, stage: str) -> xr.DataArray:
    """The lazy (frame, height, width) movie of ``stage``.

    attrs: ``stage``, ``grid`` ("full" | "crop"), ``y0`` / ``x0`` (the crop's offset in the
    full grid, 0 / 0 for full-frame stages), and for the model stages ``model`` (which
    footprints / traces / background were used).
    """
    info = _check_stage(stage)
    if info.grid == "full":
        if store.released(info.step, info.output):
            raise StageMissing(f"stage '{stage}' ({info.title}): "
                               f"{released_message(info.step, info.output)}")
        if not store.has(info.step, info.output):
            raise StageMissing(
                f"stage '{stage}' ({info.title}) is not in {store.root}: step {info.step} makes "
                f"it; run {_run_hint(store, info.needs)}")
        movie = store.load(info.step, info.output)
        return movie.assign_attrs(stage=stage, grid="full", y0=0, x0=0)
    try:
        recon = open_reconstruction(store)
    except StageMissing as e:
        raise StageMissing(f"stage '{stage}' ({info.title}): {e}") from None
    if stage == "reconstruction":
        return recon.assign_attrs(stage=stage)
    Y = store.load("3a", "movie_cropped").sel(frame=recon.frame.values)
    res = (Y.astype(np.float32) - recon).astype(np.float32)
    res.name = "residual"
    return res.assign_attrs({**recon.attrs, "stage": "residual"})


def crop_offset(store) -> tuple[int, int, tuple[int, int]]:
    """(y0, x0, (full_height, full_width)) of step 3a's crop."""
    if not store.has("3a", "crop"):
        raise StageMissing(f"{store.root} has no crop (step 3a); run {_run_hint(store, '3a')}")
    crop = store.load("3a", "crop")
    return int(crop["y0"]), int(crop["x0"]), (int(crop["full_height"]), int(crop["full_width"]))


def model_source(store) -> ModelSource:
    """The most final (A, C) pair present in the session."""
    for src in MODELS:
        if store.has(*src.A) and store.has(*src.C):
            return src
    raise StageMissing(
        f"the reconstruction needs footprints and traces, which {store.root} does not hold "
        f"yet (step 8b makes the final ones; 6e or 4e earlier ones); run "
        f"{_run_hint(store, '8b')}")


def _step_param(store, step: str | None, key: str, default):
    m = store.manifest(step) if step else None
    return (m or {}).get("params", {}).get(key, default)


def _background_weights(store, src: ModelSource, ids: np.ndarray) -> np.ndarray | None:
    """8b's beta per unit when it fitted the background with the units (else None)."""
    if src.report is None or not store.has(*src.report):
        return None
    rep = store.load(*src.report)
    beta = rep.get("background_weight") if isinstance(rep, dict) else None
    if not beta or not rep.get("settings", {}).get("include_background"):
        return None
    beta = np.asarray(beta, np.float64)
    if beta.shape != ids.shape:
        raise ValueError(f"{src.report[0]} solver report has {beta.size} background weights for "
                         f"{ids.size} units; rerun step {src.report[0]}")
    return beta


def footprints_csr(A: xr.DataArray, unit_block: int = 64) -> sp.csr_matrix:
    """(n, h*w) float32 CSR of lazy footprints, read a block of units at a time."""
    return read_csr(A.data, chunk=unit_block)


def _model_frames(coef: np.ndarray, M: sp.csr_matrix, shape: tuple[int, int]) -> np.ndarray:
    """(t, h, w) frames of the model ``coef @ M`` for one chunk of frames."""
    if M.shape[0] == 0:
        return np.zeros((len(coef),) + tuple(shape), np.float32)
    out = (M.T @ np.asarray(coef, np.float32).T).T  # sparse (hw, n) x dense (n, t)
    return np.asarray(out, np.float32).reshape((len(coef),) + tuple(shape))


def open_reconstruction(store) -> xr.DataArray:
    """The lazy model of 3a's ``movie_cropped`` (module docstring) on the shared frames."""
    import dask.array as da

    if not store.has("3a", "movie_cropped"):
        raise StageMissing(f"the reconstruction is drawn on the cropped movie of step 3a, "
                           f"which {store.root} does not hold; run {_run_hint(store, '8b')}")
    src = model_source(store)
    Y = store.load("3a", "movie_cropped")
    A = store.load(*src.A)
    ids = np.asarray(A.unit_id.values)
    C = store.load(*src.C)
    missing = np.setdiff1d(ids, C.unit_id.values)
    if missing.size:
        raise ValueError(f"the traces {src.C[1]} (step {src.C[0]}) lack units "
                         f"{missing[:10].tolist()} of {src.A[1]}; rerun the steps after "
                         f"{src.A[0]}")
    C = C.sel(unit_id=ids)
    h, w = Y.sizes["height"], Y.sizes["width"]
    if (A.sizes["height"], A.sizes["width"]) != (h, w):
        raise ValueError(f"{src.A[1]} ({A.sizes['height']}x{A.sizes['width']}) does not match "
                         f"the cropped movie ({h}x{w}); rerun the steps after 3a")
    use_bf = (store.has("4e", "b_init") and store.has("4e", "f_init")
              and bool(_step_param(store, src.yra_step, "subtract_background", True)))
    f = store.load("4e", "f_init") if use_bf else None

    frames = np.asarray(Y.frame.values)
    common = np.isin(frames, C.frame.values)
    if f is not None:
        common &= np.isin(frames, f.frame.values)
    if not common.any():
        raise ValueError(f"the traces {src.C[1]} and the cropped movie share no frame; rerun "
                         f"the steps after 3a")
    Ysel = Y.isel(frame=np.flatnonzero(common))
    keep = Ysel.frame.values
    chunks0 = Ysel.data.chunks[0] if hasattr(Ysel.data, "chunks") else (len(keep),)

    coef = C.sel(frame=keep).data.T.astype(np.float32)  # (T, n), lazy
    notes = [f"A: {src.A[1]} ({src.A[0]})", f"C: {src.C[1]} ({src.C[0]})"]
    if src.b0 is not None and store.has(*src.b0):
        b0 = store.load(*src.b0)
        if np.isin(ids, b0.unit_id.values).all():
            coef = coef + np.asarray(b0.sel(unit_id=ids).values, np.float32)[None, :]
            notes.append(f"baseline: {src.b0[1]} ({src.b0[0]})")
    beta = _background_weights(store, src, ids)
    spatial = footprints_csr(A)
    if f is not None:
        fv = f.sel(frame=keep).data.astype(np.float32)
        if beta is not None:  # 8b solved YrA - beta (f - mean f): put that share back
            fmean = np.float32(np.mean(np.asarray(f.values, np.float64)))
            coef = coef + (fv - fmean)[:, None] * beta.astype(np.float32)[None, :]
            notes.append("8b background weights")
        coef = da.concatenate([da.asarray(coef), da.asarray(fv)[:, None]], axis=1)
        b = sp.csr_matrix(np.asarray(store.load("4e", "b_init").values, np.float32).reshape(1, -1))
        spatial = sp.vstack([spatial, b], format="csr")
        notes.append("background: b_init x f_init (4e)")
    coef = da.asarray(coef).rechunk((chunks0, -1))
    data = coef.map_blocks(_model_frames, M=spatial, shape=(h, w), chunks=(chunks0, (h,), (w,)),
                           new_axis=2, dtype=np.float32)
    crop = store.load("3a", "crop") if store.has("3a", "crop") else {}
    return xr.DataArray(
        data, dims=("frame", "height", "width"),
        coords={**{k: v for k, v in Ysel.coords.items() if v.dims == ("frame",)},
                "height": np.arange(h), "width": np.arange(w)},
        name="reconstruction",
        attrs={"stage": "reconstruction", "grid": "crop", "y0": int(crop.get("y0", 0)),
               "x0": int(crop.get("x0", 0)), "model": "; ".join(notes),
               "model_source": src.name})


# ============================================================================== frame rate


def frame_rate(movie: xr.DataArray) -> float:
    """The recording's frame rate: 1 / median frame interval from ``time_s`` (gaps of removed
    frames divided out), else the movie's ``fps`` attribute, else 20."""
    if "time_s" in movie.coords and movie.sizes["frame"] > 1:
        t = np.asarray(movie["time_s"].values, np.float64)
        fr = np.asarray(movie["frame"].values, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            dt = np.diff(t) / np.diff(fr)
        dt = dt[np.isfinite(dt) & (dt > 0)]
        if dt.size:
            return float(1.0 / np.median(dt))
    fps = movie.attrs.get("fps")
    return float(fps) if fps and float(fps) > 0 else DEFAULT_FPS


# ============================================================================== reading


def _chunk_ids(movie: xr.DataArray, positions: np.ndarray) -> np.ndarray:
    chunks = getattr(movie.data, "chunks", None)
    if not chunks:
        return np.zeros(len(positions), np.int64)
    bounds = np.cumsum(chunks[0])
    return np.searchsorted(bounds, positions, side="right")


def frame_batches(movie: xr.DataArray, positions: np.ndarray,
                  max_bytes: int = BATCH_BYTES) -> list[np.ndarray]:
    """``positions`` split into batches that never straddle a stored chunk (each chunk is
    decoded once) and hold about ``max_bytes`` of float32 frames at most."""
    positions = np.asarray(positions, np.int64)
    if positions.size == 0:
        return []
    frame_bytes = 4 * int(np.prod(movie.shape[1:]))
    per = max(1, int(max_bytes // max(frame_bytes, 1)))
    cid = _chunk_ids(movie, positions)
    cuts = np.flatnonzero(np.diff(cid)) + 1
    out = []
    for group in np.split(positions, cuts):
        out += [group[i:i + per] for i in range(0, len(group), per)]
    return out


def read_frames(movie: xr.DataArray, positions: np.ndarray) -> np.ndarray:
    """The frames at ``positions`` as a numpy array (movie's dtype)."""
    data = movie.data
    p = np.asarray(positions, np.int64)
    step = int(p[1] - p[0]) if p.size > 1 else 1
    if p.size and step > 0 and (p.size == 1 or (np.diff(p) == step).all()):
        block = data[p[0]:p[-1] + 1:step]  # a slice: dask reads it without a gather copy
    else:
        block = data[p]
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


def prefetched(read: Callable, items: list, cancel: threading.Event | None = None,
               prefetch: bool = True) -> Iterator[tuple]:
    """Yield ``(item, read(item))``; the next item is read in a background thread while the
    caller handles the current one (reading overlaps encoding / writing). Raises
    :class:`~mps_core.registry.Cancelled` when ``cancel`` is set between items."""
    if not prefetch or len(items) < 2:
        for it in items:
            check_cancel(cancel)
            yield it, read(it)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(read, items[0])
        for i, it in enumerate(items):
            check_cancel(cancel)
            value = nxt.result()
            if i + 1 < len(items):
                nxt = pool.submit(read, items[i + 1])
            yield it, value


def iter_frames(movie: xr.DataArray, positions: np.ndarray, *, max_bytes: int = BATCH_BYTES,
                cancel: threading.Event | None = None,
                prefetch: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(positions, frames)`` batch by batch (:func:`frame_batches`), reading ahead."""
    batches = frame_batches(movie, positions, max_bytes)
    yield from prefetched(lambda b: read_frames(movie, b), batches, cancel, prefetch)


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")


# ============================================================================== colours


def robust_limits(movie: xr.DataArray, positions: np.ndarray | None = None,
                  percentiles: tuple[float, float] = DEFAULT_PERCENTILES, *,
                  symmetric: bool = False, max_chunks: int = 8,
                  frames_per_chunk: int = 4) -> tuple[float, float]:
    """(low, high) percentiles of a sample of frames of ``positions``.

    The sample takes a few frames from at most ``max_chunks`` stored chunks spread over the
    selection, so it costs a handful of chunk reads however long the movie is. Exact zeros
    (outside a circular crop) are ignored. ``symmetric`` gives (-m, m) with m the larger
    magnitude (residuals)."""
    if positions is None:
        positions = np.arange(movie.sizes["frame"])
    positions = np.asarray(positions, np.int64)
    cid = _chunk_ids(movie, positions)
    chunks = np.unique(cid)
    pick = chunks[np.unique(np.linspace(0, len(chunks) - 1, min(max_chunks, len(chunks)))
                            .round().astype(int))]
    sample = []
    for c in pick:
        inside = positions[cid == c]
        idx = np.unique(np.linspace(0, len(inside) - 1, min(frames_per_chunk, len(inside)))
                        .round().astype(int))
        sample.append(inside[idx])
    vals = read_frames(movie, np.concatenate(sample)).astype(np.float32).ravel()
    vals = vals[np.isfinite(vals) & (vals != 0)]
    if vals.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(vals, percentiles))
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return -m, m
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def to_uint8(frames: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Values mapped linearly so ``vmin`` -> 0 and ``vmax`` -> 255 (clipped; NaN -> 0)."""
    if not vmax > vmin:
        raise ValueError(f"value limits: vmax ({vmax}) must be greater than vmin ({vmin})")
    out = np.array(frames, np.float32)  # one float32 copy, then everything in place
    out -= np.float32(vmin)
    out *= np.float32(255.0 / (vmax - vmin))
    out += np.float32(0.5)  # round to nearest on the cast below
    np.fmax(out, 0, out=out)  # fmax / fmin drop NaN for the bound: NaN -> 0 in one pass
    np.fmin(out, 255.5, out=out)
    return out.astype(np.uint8)


def _cv2_lut(name: str) -> np.ndarray:
    import cv2

    code = getattr(cv2, f"COLORMAP_{name.upper()}")
    return cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], code)[:, 0, :]


def _diverging_lut() -> np.ndarray:
    """Blue - white - red (BGR), for residuals: 0 is white, signs are hues."""
    t = np.linspace(-1, 1, 256)
    r = np.where(t < 0, 1 + t, 1.0)
    b = np.where(t > 0, 1 - t, 1.0)
    g = 1 - np.abs(t)
    return (np.stack([b, g, r], axis=1) * 255 + 0.5).astype(np.uint8)


_CV2_MAPS = ("viridis", "inferno", "magma", "plasma", "cividis", "hot", "jet", "turbo",
             "bone", "parula")
COLORMAPS = ("gray",) + _CV2_MAPS + ("diverging",)


def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 BGR lookup table of a colour map name in :data:`COLORMAPS`."""
    if name == "gray":
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    if name == "diverging":
        return _diverging_lut()
    if name in _CV2_MAPS:
        return _cv2_lut(name)
    raise ValueError(f"colour map '{name}': allowed maps are {', '.join(COLORMAPS)}")


def colorize(frames_u8: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(..., 3) BGR frames from uint8 values through a (256, 3) lookup table (OpenCV's LUT:
    several times faster than numpy indexing on whole movies)."""
    import cv2

    u = np.ascontiguousarray(frames_u8)
    flat = u.reshape(-1, u.shape[-1]) if u.ndim > 2 else u.reshape(1, -1) if u.ndim < 2 else u
    bgr = cv2.cvtColor(flat, cv2.COLOR_GRAY2BGR)
    if not (lut[:, 0] == np.arange(256)).all() or not (lut[:, 0:1] == lut).all():
        bgr = cv2.LUT(bgr, np.ascontiguousarray(lut[:, None, :]))
    return bgr.reshape(u.shape + (3,))


# ============================================================================== footprints


FOOTPRINT_SOURCES = (("7f", "A_refined"), ("6e", "A_filtered"), ("4e", "A_init"))


def final_footprints(store) -> tuple[xr.DataArray, str]:
    """The lazy footprints of the final units (crop grid) and where they came from.

    A_refined limited to the units 8c kept when 8c's ``final_units`` lists A_refined's units;
    else the most final footprints present (A_refined, A_filtered, A_init)."""
    for step, name in FOOTPRINT_SOURCES:
        if not store.has(step, name):
            continue
        A = store.load(step, name)
        note = f"{name} ({step})"
        if name == "A_refined" and store.has("8c", "final_units"):
            fu = store.load("8c", "final_units")
            ids = np.asarray(fu.get("unit_id", []))
            if np.array_equal(ids, A.unit_id.values):
                kept = np.asarray(fu["kept"], bool)
                A = A.isel(unit_id=np.flatnonzero(kept))
                note += ", units kept by 8c"
        return A, note
    raise StageMissing(f"{store.root} holds no footprints to outline (steps 4e / 6e / 7f); run "
                       f"{_run_hint(store, '8c')}")


def describe(movie: xr.DataArray) -> str:
    """One line: stage, frames, size, dtype (and the model of reconstructions)."""
    t, h, w = movie.shape
    extra = f"; {movie.attrs['model']}" if movie.attrs.get("model") else ""
    return f"{movie.attrs.get('stage', movie.name)}: {t} frames of {h}x{w} {movie.dtype}{extra}"


def frame_table(movie: xr.DataArray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The frame-index coordinates (frame, movie_number, local_frame, time_s, ...) at
    ``positions``, ``frame`` first."""
    cols = [k for k, v in movie.coords.items() if v.dims == ("frame",)]
    cols.sort(key=lambda k: (k != "frame", k))
    return {k: np.asarray(movie[k].values)[positions] for k in cols}


def json_attrs(movie: xr.DataArray) -> str:
    """The movie's simple attributes as JSON (file metadata of exports)."""
    keep = {k: v for k, v in movie.attrs.items() if isinstance(v, (str, int, float, bool))}
    return json.dumps(keep)
