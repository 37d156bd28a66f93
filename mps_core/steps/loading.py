"""Step 2a: find and load the recording's files, index every frame, flag broken frames.

The movie is read lazily (each dask task decodes only its own chunk). In the same pass that
writes the movie into the store, every frame gets its quality scores; frames flagged as
transmission-corrupted or line-split are marked in the frame index (``removed`` > 0) and
left out by every later step, and they are listed in all_removed_frames.txt.

Order of work on each frame (all lazy, per chunk of whole frames):

1. read, trim, temporal and spatial downsampling;
2. frame QC and line splitting score these *camera* frames: corruption bands follow the
   sensor's readout rows and line splitting its left-most columns, so both detectors must
   see the frames as the camera wrote them, not rotated (a band of rows would become a band
   of columns after a 90 degree turn) and not altered by the user's function (a stripe
   filter could hide the very bands frame QC looks for);
3. orientation: rotate clockwise by ``rotate`` degrees, then flip (flips act on the rotated
   frame, i.e. on the image as the user sees it, so "it looks mirrored" is fixed by one
   flip whatever the rotation);
4. the user's ``post_process`` function (:mod:`mps_core.io.frame_hook`), which therefore
   works on frames in the final orientation and may change their shape (e.g. a crop).

``movie_raw`` holds the result of step 4; its ``height``/``width`` are those of the
oriented (and post-processed) frames. The settings are recorded in the attributes of both
``movie_raw`` and ``frame_index`` (``rotate``, ``flip_vertical``, ``flip_horizontal``,
``post_process``, ``camera_shape``) so exports can carry them.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from ..figures import Figure, HistPanel, ImagePanel, LinePanel, TextPanel
from ..framewise import frame_stats, sample_indices, whole
from ..io import frame_hook
from ..io.health import check_files
from ..io.layout import build_frame_index, detect_layout, read_timestamps
from ..io.natural import find_files
from ..io.readers import lazy_movie
from ..paramtypes import P, StepParams
from ..preprocess import frame_qc, line_split
from ..registry import Preview, Step, StepError

REMOVAL_CODES = {1: "transmission corruption (frame QC)", 2: "line splitting"}


class LoadParams(StepParams):
    file_pattern: str = P(r".*\.avi$", "Regular expression that whole file names in the input "
                          "folder must match; files are taken in natural order (2.avi before "
                          "10.avi).")
    trim_start: int = P(0, "Frames dropped at the start of the recording.", ge=0, unit="frames")
    trim_end: int = P(0, "Frames dropped at the end of the recording.", ge=0, unit="frames")
    downsample_frames: int = P(1, "Keep one frame in N (or average N frames, see strategy).",
                               ge=1, le=1000)
    downsample_space: int = P(1, "Shrink height and width by this factor.", ge=1, le=16)
    downsample_strategy: Literal["subset", "mean"] = P(
        "subset", "'subset' keeps every N-th frame/pixel; 'mean' averages each group of N.")
    frame_qc: bool = P(True, "Find and remove frames broken by radio transmission errors "
                       "(bands of noise or black rows, from wireless scopes).")
    qc_noise_threshold: float = P(4.0, "A band of rows this many times noisier than the frame's "
                                  "typical row marks a corrupted frame; raise it if clean frames "
                                  "are removed.", gt=1.0, le=1000, advanced=True)
    qc_black_threshold: int = P(3, "Frames with this many more near-black rows than usual are "
                                "corrupted.", ge=1, le=10000, advanced=True)
    line_splitting: Literal["off", "basic", "advanced"] = P(
        "off", "Remove frames with signal split into the left-most columns: 'basic' (left-edge "
        "mean above mean + k*std) or 'advanced' (row-profile score, automatic threshold).")
    line_split_columns: int = P(20, "Left-most columns examined for line splitting.",
                                ge=1, le=512, advanced=True, unit="px")
    line_split_k: float = P(2.0, "For 'basic': flag frames above mean + k*std of the left-edge "
                            "means.", gt=0, le=100, advanced=True)
    verify_frames: Literal["quick", "full", "off"] = P(
        "quick", "How files are checked for truncation: 'quick' decodes the last frame each "
        "header announces (counting only when it fails), 'full' decodes every frame once "
        "(one extra read of the videos), 'off' trusts the headers.", advanced=True)
    min_frame_fraction: float = P(0.95, "A file yielding fewer than this fraction of the frames "
                                  "its header announces is reported as truncated.",
                                  gt=0, le=1, advanced=True)
    rotate: Literal[0, 90, 180, 270] = P(
        0, "Rotate every frame clockwise by this many degrees, so recordings from rigs "
        "mounted differently line up (applied before the flips).", advanced=True,
        unit="degrees")
    flip_vertical: bool = P(False, "Flip every frame upside down (after the rotation).",
                            advanced=True)
    flip_horizontal: bool = P(False, "Mirror every frame left-right (after the rotation).",
                              advanced=True)
    post_process: str = P(
        "", "Your own function applied to every frame after the orientation, written "
        "'package.module:function' or 'path/to/file.py:function'; it takes a 2-D frame and "
        "returns a 2-D array of the same shape or one fixed new shape (example: a stripe "
        "filter, in mps_core/io/frame_hook.py). Empty: none.", advanced=True)
    chunk_frames: int = P(0, "Frames per chunk; 0 derives it from the memory limit.",
                          ge=0, le=100000, advanced=True, unit="frames")


def load(p: LoadParams, ctx, config: dict) -> dict:
    folder = Path(config["input_dir"])
    try:
        paths = find_files(folder, p.file_pattern)
    except ValueError as e:
        raise StepError(str(e)) from None
    verify = {"quick": "quick", "full": True, "off": False}[p.verify_frames]
    health = check_files(paths, verify_frames=verify,
                         min_fraction=p.min_frame_fraction)
    if not health.usable:
        raise StepError(f"no readable video in {folder}:\n{health.to_text()}")
    for f in health.files:
        if not f.usable:
            ctx.warn(f"{f.path.name}: {f.status} ({f.message}); left out")
        elif f.status != "ok":
            ctx.warn(f"{f.path.name}: {f.status} ({f.message})")

    index = _frame_index(folder, health, ctx)
    readers = health.readers()
    first = readers[0]
    chunk = p.chunk_frames or ctx.chunk_frames(first.height * first.width * 4, copies=6)
    # videos are decoded in longer blocks than the chunks: each read of a video seeks,
    # and a seek decodes 16 frames again (see lazy_movie); blocks of up to 128 MB (twice a
    # chunk's cap: 362 frames of 608 x 608, so seeking is ~5 % of the decoding instead of
    # 10 %) while an eighth of the memory limit holds a pair of them per worker
    read = 2 * ctx.chunk_frames(first.height * first.width * first.dtype.itemsize, copies=8)
    movie = lazy_movie(readers, chunk, read_frames=read if read > chunk else None)
    n_total = movie.shape[0]

    # which original frames we keep: video percentage, trims, temporal downsampling
    n_pct = max(1, int(np.floor(n_total * config.get("video_percent", 100.0) / 100.0)))
    start, stop = p.trim_start, n_pct - p.trim_end
    if stop - start < 2:
        raise StepError(f"trim_start={p.trim_start} and trim_end={p.trim_end} leave "
                        f"{max(stop - start, 0)} of {n_pct} frames; reduce the trims")
    sel = np.arange(start, stop)
    movie = movie[start:stop]
    if p.downsample_frames > 1:
        k = p.downsample_frames
        if p.downsample_strategy == "subset":
            movie, sel = movie[::k], sel[::k]
        else:
            n = (len(sel) // k) * k
            movie = movie[:n].astype(np.float32).reshape((n // k, k) + movie.shape[1:]).mean(1)
            sel = sel[:n:k]
    if p.downsample_space > 1:
        movie = _downsample_space(movie, p.downsample_space, p.downsample_strategy)
    movie = movie.rechunk({0: chunk, 1: -1, 2: -1})
    camera_shape = [int(movie.shape[1]), int(movie.shape[2])]

    # orientation and the user's function make what is stored; QC below keeps scoring the
    # camera frames (`movie`): see the module docstring for why
    stored = _orient(movie, p.rotate, p.flip_vertical, p.flip_horizontal)
    settings = {"rotate": p.rotate, "flip_vertical": p.flip_vertical,
                "flip_horizontal": p.flip_horizontal, "post_process": p.post_process,
                "camera_shape": camera_shape}
    if p.post_process:
        # checked on the first frame before any heavy work (reads one chunk)
        hook = _first_frame_hook(p.post_process, stored, ctx)
        stored = stored.map_blocks(partial(_apply_hook, hook=hook), dtype=hook.out_dtype,
                                   chunks=(stored.chunks[0],) + tuple((n,) for n in
                                                                      hook.out_shape))
        settings.update(frame_hook.source_info(hook))

    # the frame index rides along as coordinates, so every later array keeps it
    coords = {"frame": ("frame", index["frame"][sel]),
              "movie_number": ("frame", index["movie"][sel])}
    for key in ("local_frame", "time_s", "hw_stamp"):
        coords[key] = ("frame", index[key][sel])
    arr = xr.DataArray(stored, dims=("frame", "height", "width"), coords=coords, name="movie_raw")
    arr = arr.assign_coords(height=np.arange(stored.shape[1]), width=np.arange(stored.shape[2]))
    arr.attrs.update(fps=index["fps"] or 0.0, source=str(folder), layout=index["layout"],
                     **settings)

    table = xr.Dataset(coords=coords)
    removed = da.zeros(len(sel), dtype=np.int8, chunks=(movie.chunks[0],))
    if p.frame_qc:
        scores = frame_stats(movie, frame_qc.frame_scores, ("row_noise", "black_rows"))
        table["qc_row_noise"] = ("frame", scores["row_noise"].astype(np.float32))
        table["qc_black_rows"] = ("frame", scores["black_rows"].astype(np.float32))
        stacked = da.stack([scores["row_noise"], scores["black_rows"]], axis=1)
        bad = whole(stacked.rechunk({1: -1}), partial(
            _qc_flags, noise=p.qc_noise_threshold, black=p.qc_black_threshold), dtype=bool)[:, 0]
        removed = da.where(bad, np.int8(1), removed)
    if p.line_splitting != "off":
        ncols = min(p.line_split_columns, movie.shape[2] - 1)
        if p.line_splitting == "basic":
            s = frame_stats(movie, partial(_edge_means, n_cols=ncols), ("s",))["s"]
            flag = whole(s, partial(line_split.flag_basic, k=p.line_split_k), dtype=bool)
        else:
            ref = _reference_profile(movie, ncols, ctx)
            s = frame_stats(movie, partial(_split_scores, n_cols=ncols, reference=ref), ("s",))["s"]
            flag = whole(s, line_split.flag_advanced, dtype=bool)
        table["line_split_score"] = ("frame", s.astype(np.float32))
        removed = da.where(flag & (removed == 0), np.int8(2), removed)
    table["removed"] = ("frame", removed)
    table["removed"].attrs["removal_codes"] = json.dumps(
        {str(k): v for k, v in REMOVAL_CODES.items()})
    table.attrs.update(n_files=len(readers), frames_in_files=int(n_total),
                       warnings=json.dumps(index["warnings"]), **settings)
    return {"movie_raw": arr, "frame_index": table, "file_health": health.to_dict()}


def check_post_process(p: LoadParams) -> None:
    """Preflight (no data): the post_process function imports and is callable."""
    if p.post_process:
        try:
            frame_hook.check_importable(p.post_process)
        except ValueError as e:
            raise StepError(str(e)) from None


def orient_frames(a: np.ndarray, rotate: int, flip_vertical: bool,
                  flip_horizontal: bool) -> np.ndarray:
    """Rotate the last two axes (height, width) clockwise by `rotate` degrees, then flip.

    Clockwise 90: pixel (y, x) of an H x W frame goes to (x, H-1-y) of the W x H frame.
    """
    if rotate not in (0, 90, 180, 270):
        raise ValueError(f"rotate must be 0, 90, 180 or 270 degrees, got {rotate!r}")
    out = np.rot90(a, k=-(rotate // 90), axes=(-2, -1))  # numpy's positive k turns anticlockwise
    if flip_vertical:
        out = np.flip(out, axis=-2)
    if flip_horizontal:
        out = np.flip(out, axis=-1)
    return np.ascontiguousarray(out)


def _orient(movie: da.Array, rotate: int, flip_vertical: bool, flip_horizontal: bool) -> da.Array:
    """Lazy orientation per chunk of whole frames (no task at all when nothing changes)."""
    if not (rotate or flip_vertical or flip_horizontal):
        return movie
    h, w = movie.shape[1:]
    if rotate in (90, 270):
        h, w = w, h
    return movie.map_blocks(partial(orient_frames, rotate=rotate, flip_vertical=flip_vertical,
                                    flip_horizontal=flip_horizontal),
                            dtype=movie.dtype, chunks=(movie.chunks[0], (h,), (w,)))


def _first_frame_hook(spec: str, movie: da.Array, ctx) -> frame_hook.FrameHook:
    (first,) = ctx.compute(movie[:1], message="post_process: first frame")
    try:
        return frame_hook.prepare(spec, np.asarray(first)[0])
    except ValueError as e:
        raise StepError(str(e)) from None


# module-level (not lambdas) so the graph pickles cleanly for distributed workers
def _apply_hook(block: np.ndarray, hook: frame_hook.FrameHook) -> np.ndarray:
    return hook.apply_block(block)


def _qc_flags(s: np.ndarray, noise: float, black: int) -> np.ndarray:
    scores = {"row_noise": s[:, 0], "black_rows": s[:, 1].astype(np.int32)}
    return frame_qc.flag_corrupted(scores, noise_threshold=noise, black_threshold=black)[:, None]


def _edge_means(block: np.ndarray, n_cols: int) -> dict:
    return {"s": line_split.left_edge_means(block, n_cols)}


def _split_scores(block: np.ndarray, n_cols: int, reference: np.ndarray) -> dict:
    return {"s": line_split.advanced_scores(block, n_cols, reference)}


def _frame_index(folder: Path, health, ctx) -> dict:
    """Frame index arrays of the combined movie (global/movie/local frame, times)."""
    layout = detect_layout(folder)
    time_s = hw = None
    warnings: list[str] = []
    if layout.timestamps is not None and layout.kind in ("v3", "v4"):
        try:
            time_s, hw = read_timestamps(layout)
        except ValueError as e:
            warnings.append(f"timestamps not used: {e}")
    fps = layout.fps
    table, w = build_frame_index(health.frames_per_movie, fps, time_s, hw,
                                 row_offsets=health.row_offsets())
    warnings += w
    if time_s is None and not fps:
        warnings.append("no timestamps and no frame rate found: time_s assumes 20 fps")
        table, _ = build_frame_index(health.frames_per_movie, 20.0)
    for msg in warnings:
        ctx.warn(msg)
    return dict(table, fps=fps, layout=layout.kind, warnings=warnings)


def _downsample_space(movie: da.Array, k: int, strategy: str) -> da.Array:
    if strategy == "subset":
        return movie[:, ::k, ::k]
    h, w = (movie.shape[1] // k) * k, (movie.shape[2] // k) * k
    m = movie[:, :h, :w].astype(np.float32)
    return m.reshape(m.shape[0], h // k, k, w // k, k).mean(axis=(2, 4))


def _reference_profile(movie: da.Array, ncols: int, ctx) -> np.ndarray:
    """The typical row profile from up to 100 evenly spaced frames (one small read)."""
    idx = sample_indices(movie.chunks[0], min(100, movie.shape[0]))
    (sample,) = ctx.compute(movie[idx], message="sampling frames")
    return line_split.reference_profile(np.asarray(sample), ncols)


# -- previews -----------------------------------------------------------------------------

def _preview_frames(outputs, inputs, params) -> Figure:
    movie = outputs["movie_raw"]
    table = outputs["frame_index"]
    n = movie.sizes["frame"]
    panels = [ImagePanel(f"frame {int(movie.frame[i])}", np.asarray(movie[i]))
              for i in sorted({0, n // 2, n - 1})]
    removed = table["removed"].values
    bad = np.flatnonzero(removed > 0)
    if "qc_row_noise" in table:
        panels.append(LinePanel("frame QC: row-noise score", table.frame.values,
                                {"row noise": table["qc_row_noise"].values},
                                xlabel="original frame",
                                hlines={"threshold": params.qc_noise_threshold},
                                marks=table.frame.values[bad]))
    if bad.size:
        panels.append(ImagePanel(f"removed frame {int(table.frame[bad[0]])}",
                                 np.asarray(movie.sel(frame=int(table.frame[bad[0]])))))
    health = outputs["file_health"]
    panels.append(TextPanel("files", _health_lines(health)))
    return Figure("2a File loading", panels)


def _health_lines(health: dict) -> str:
    lines = []
    for f in health.get("files", [])[:12]:
        rng = f.get("frame_range")
        where = f"frames {rng[0]}-{rng[1] - 1}" if rng else "not used"
        lines.append(f"{Path(f['path']).name}: {f['status']}, {where}")
    return "\n".join(lines)


def _preview_times(outputs, inputs, params) -> Figure:
    t = outputs["frame_index"]
    dt = np.diff(t["time_s"].values)
    return Figure("2a Frame times", [
        LinePanel("time since start", t.frame.values, {"time (s)": t["time_s"].values},
                  xlabel="original frame", ylabel="s"),
        HistPanel("frame intervals", {"interval (ms)": dt * 1000}, xlabel="ms"),
    ])


STEP_2A = Step(
    id="2a", title="File loading", stage="Preprocessing",
    summary="Finds the video files (natural order), checks each file's health, builds the frame "
            "index (movie, local frame, time), trims and downsamples, and removes frames broken "
            "by transmission errors or line splitting.",
    params=LoadParams, inputs=("config",), outputs=("movie_raw", "frame_index", "file_health"),
    run=load, preflight=check_post_process,
    previews=(Preview("frames", "Frames and quality", _preview_frames),
              Preview("times", "Frame times", _preview_times)),
    intermediate=("movie_raw",),
)
