"""Stitch N >= 2 streams of one recording (one per receiver) into one clean recording.

:func:`stitch_streams` validates every stream (:mod:`.streams`) before anything else,
aligns their frames (:mod:`.align`), then walks the output frames chunk by chunk: it
decodes each stream's copies of the chunk (every input frame is decoded once, forwards; the
streams in parallel, the next chunk while the current one is handled), scores them
(:mod:`.choose`; identical copies once), writes the best copy of each frame (in a background
thread), its metadata rows (``reconstructed_frame_index`` renumbered 0..N-1) and the
decision rows, and optionally a debug video. Outputs appear only when the whole run
succeeded (:mod:`.write`).

Outputs in ``output_dir`` (``<name>`` defaults to ``stitched``):

``<name>.avi``
    The stitched movie, FFV1 (lossless); ``<name>.tif`` for non-8-bit data.
``<name>.csv``
    The chosen copies' metadata rows, columns as in the inputs.
``<name>_decisions.csv``
    One row per output frame: ``frame``, ``frame_num``, ``time``, ``chosen_stream``
    (1-based), ``chosen_frame`` (frame index in that stream's video), ``reason``,
    ``n_candidates``, then per stream k ``streamk_frame`` (empty when that stream lacks the
    frame), ``streamk_buffers``, ``streamk_black_rows``, ``streamk_noisy_rows``,
    ``streamk_edge_energy``.
``<name>_debug.mp4`` (optional)
    The copies side by side, the chosen one framed green, pixels differing from it red.
``<name>_log.txt``
    Inputs, warnings, alignment, frames per stream, reasons, corrupted rows.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mps_core.registry import Cancelled

from .align import align_streams
from .choose import REASONS, frame_quality, rank, reason
from .streams import FrameCursor, Stream, format_ranges, open_stream
from .write import (Background, DebugVideo, Outputs, RowCopier, VideoOut, common_header,
                    csv_writer, debug_canvas, plan_outputs, video_format)

__all__ = ["StitchResult", "stitch_streams", "DEFAULT_FPS"]

Progress = Callable[[float, str], None]
DEFAULT_FPS = 20.0
_KINDS = ("video", "metadata", "decisions", "debug", "log")
_PER_STREAM = ("frame", "buffers", "black_rows", "noisy_rows", "edge_energy")


@dataclass
class StitchResult:
    """What :func:`stitch_streams` wrote and decided."""

    paths: dict[str, Path]
    n_frames: int
    mode: str
    frames_per_stream: list[int]
    reasons: dict[str, int]
    corrupted_rows_in: list[int]  # black + noisy rows over each input stream's frames
    corrupted_rows_out: int  # the same over the output frames
    frames_in: list[int]
    frames_missing: list[int]  # output frames each input stream lacks
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        taken = ", ".join(f"{n} from stream {k + 1}" for k, n in enumerate(self.frames_per_stream))
        return (f"wrote {self.paths['video']} ({self.n_frames} frames: {taken}; aligned by "
                f"{self.mode}; {self.seconds:.1f} s)")


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")


def _open_streams(videos: Sequence, metadata: Sequence | None) -> list[Stream]:
    """Open and validate every stream; all must share frame size and dtype."""
    videos = [Path(v) for v in videos]
    if len(videos) < 2:
        raise ValueError(f"stitch: give at least 2 streams (videos), got {len(videos)}")
    if metadata is not None and len(metadata) != len(videos):
        raise ValueError(f"stitch: {len(metadata)} metadata CSV(s) for {len(videos)} videos; "
                         f"give one CSV per video, in the same order")
    if len({v.resolve() for v in videos}) != len(videos):
        raise ValueError("stitch: the same video is listed twice; give each receiver's video once")
    metas = metadata if metadata is not None else [None] * len(videos)
    streams = [open_stream(v, m, k + 1) for k, (v, m) in enumerate(zip(videos, metas))]
    for s in streams:
        if s.n_frames == 0:
            raise ValueError(f"{s.video}: has no frames; leave this stream out")
    first = streams[0].reader
    for s in streams[1:]:
        r = s.reader
        if (r.height, r.width, r.dtype) != (first.height, first.width, first.dtype):
            raise ValueError(f"{s.video}: frames are {r.height}x{r.width} {r.dtype}, but "
                             f"{streams[0].video.name} has {first.height}x{first.width} "
                             f"{first.dtype}; stitch streams of one recording")
    return streams


def _frame_rate(streams: list[Stream], fps: float | None) -> float:
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"stitch: fps must be > 0, got {fps}")
        return float(fps)
    rate = float(getattr(streams[0].reader, "fps", 0.0) or 0.0)
    return rate if 0 < rate < 1000 else DEFAULT_FPS


def _rows_by_frame(stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    """Row indices sorted by frame (file order within a frame) and each frame's start."""
    order = np.argsort(stream.meta.frame, kind="stable")
    starts = np.searchsorted(stream.meta.frame[order], np.arange(stream.n_frames + 1))
    return order, starts


class _Scores:
    """Frame-QC and edge scores of every frame of every stream, filled chunk by chunk."""

    def __init__(self, streams: list[Stream]):
        self.values = {k: [np.zeros(s.n_frames, np.float64 if k == "edge_energy" else np.int64)
                           for s in streams] for k in ("black_rows", "noisy_rows", "edge_energy")}

    def set(self, s: int, f: int, values: dict) -> None:
        for key, value in values.items():
            self.values[key][s][f] = value

    def get(self, s: int, f: int) -> dict:
        return {key: column[s][f] for key, column in self.values.items()}

    def corrupted(self, s: int) -> np.ndarray:
        return self.values["black_rows"][s] + self.values["noisy_rows"][s]


def _decision_header(n_streams: int) -> list[str]:
    head = ["frame", "frame_num", "time", "chosen_stream", "chosen_frame", "reason", "n_candidates"]
    return head + [f"stream{k + 1}_{c}" for k in range(n_streams) for c in _PER_STREAM]


def _decide(g: int, al, streams: list[Stream], scores: _Scores, pixels: dict) -> tuple:
    """Choose among the candidates of output frame ``g``: (stream, frame, reason, order)."""
    sl = slice(int(al.starts[g]), int(al.starts[g + 1]))
    cs, cf = al.stream[sl], al.frame[sl]
    buffers = np.array([streams[s].frames.buffers[f] for s, f in zip(cs, cf)])
    black = np.array([scores.values["black_rows"][s][f] for s, f in zip(cs, cf)])
    noisy = np.array([scores.values["noisy_rows"][s][f] for s, f in zip(cs, cf)])
    edge = np.array([scores.values["edge_energy"][s][f] for s, f in zip(cs, cf)])
    order = rank(buffers, black, noisy, edge)
    best = int(order[0])
    second = int(order[1]) if order.size > 1 else None
    same = second is not None and np.array_equal(pixels[int(cs[best]), int(cf[best])],
                                                 pixels[int(cs[second]), int(cf[second])])
    why = reason(best, second, buffers, black, noisy, edge, same)
    return int(cs[best]), int(cf[best]), why, cs[order], cf[order]


def _decision_row(g: int, chosen: tuple, streams: list[Stream], scores: _Scores) -> list:
    s, f, why, cs_sorted, cf_sorted = chosen
    t = streams[s].frames.time[f]
    row = [g, int(streams[s].frames.frame_num[f]), "" if not np.isfinite(t) else f"{t:.6f}",
           s + 1, f, why, len(cs_sorted)]
    for k in range(len(streams)):
        mine = cf_sorted[cs_sorted == k]  # best-first: the stream's best copy
        if mine.size == 0:
            row += ["", "", "", "", ""]
            continue
        i = int(mine[0])
        row += [i, int(streams[k].frames.buffers[i]), int(scores.values["black_rows"][k][i]),
                int(scores.values["noisy_rows"][k][i]),
                f"{scores.values['edge_energy'][k][i]:.4f}"]
    return row


def _debug_frame(g: int, chosen: tuple, streams: list[Stream], scores: _Scores, pixels: dict,
                 key) -> np.ndarray:
    s, f, why, cs_sorted, cf_sorted = chosen
    frames, labels = [], []
    for k in range(len(streams)):
        mine = cf_sorted[cs_sorted == k]
        if mine.size == 0:
            frames.append(None)
            labels.append(f"stream {k + 1}: missing")
            continue
        i = int(mine[0])
        frames.append(pixels[k, i])
        bad = int(scores.corrupted(k)[i])
        labels.append(f"s{k + 1} buf {streams[k].frames.buffers[i]} bad {bad} "
                      f"edge {scores.values['edge_energy'][k][i]:.1f}")
    where = f"frame_num {key}" if isinstance(key, (int, np.integer)) else f"time {key:.3f}"
    title = f"frame {g}  {where}  chosen: stream {s + 1} ({why})"
    return debug_canvas(frames, s, labels, title)


def _log_lines(streams, al, result_counts, scores, chosen_stream, chosen_frame,
               warnings) -> list[str]:
    lines = [f"mps stitch, {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    for s in streams:
        lines.append(f"stream {s.number}: {s.video} ({s.n_frames} frames), metadata "
                     f"{s.meta.path} ({s.meta.n_rows} rows)")
    lines += [f"warning: {w}" for w in warnings]
    lines.append(f"aligned by {al.mode}: {al.n_frames} output frames")
    frames_per, reasons = result_counts
    lines.append("frames taken: "
                 + ", ".join(f"stream {k + 1}: {n}" for k, n in enumerate(frames_per)))
    lines.append("reasons: " + ", ".join(f"{r} {reasons[r]}" for r in REASONS if reasons.get(r)))
    out_bad = int(sum(int(scores.corrupted(s)[f]) for s, f in zip(chosen_stream, chosen_frame)))
    ins = ", ".join(f"stream {k + 1}: {int(scores.corrupted(k).sum())} in {s.n_frames} frames"
                    for k, s in enumerate(streams))
    lines.append(f"corrupted rows (frame QC black + noisy rows): {ins}; output: {out_bad} in "
                 f"{al.n_frames} frames")
    for k in range(len(streams)):
        missing = np.setdiff1d(np.arange(al.n_frames), al.group[al.stream == k])
        lines.append(f"output frames missing from stream {k + 1}: {format_ranges(missing, 50)}")
    return lines


def _read_chunk(al, g0: int, g1: int, cursors: list[FrameCursor], pool: ThreadPoolExecutor) -> dict:
    """Decode the candidates of output frames ``[g0, g1)``, one thread per stream:
    {(stream, frame): pixels}."""
    c0, c1 = int(al.starts[g0]), int(al.starts[g1])
    cs, cf = al.stream[c0:c1], al.frame[c0:c1]
    wanted = {s: np.unique(cf[cs == s]) for s in range(len(cursors))}
    jobs = {s: pool.submit(cursors[s].read, idx) for s, idx in wanted.items() if idx.size}
    pixels = {}
    for s, job in jobs.items():
        pixels.update({(s, int(i)): frame for i, frame in zip(wanted[s], job.result())})
    return pixels


def _score_chunk(al, g0: int, g1: int, pixels: dict, scores: _Scores,
                 pool: ThreadPoolExecutor) -> None:
    """Score the candidates of output frames ``[g0, g1)``; a copy identical to another copy
    of its frame (the usual case: both receivers got it whole) is scored once."""
    reps, alias = [], {}
    for g in range(g0, g1):
        seen = []
        for c in range(int(al.starts[g]), int(al.starts[g + 1])):
            key = (int(al.stream[c]), int(al.frame[c]))
            same = next((r for r in seen if np.array_equal(pixels[r], pixels[key])), None)
            if same is None:
                seen.append(key)
                reps.append(key)
            else:
                alias[key] = same
    halves = [reps[: (len(reps) + 1) // 2], reps[(len(reps) + 1) // 2:]]
    jobs = [pool.submit(frame_quality, np.stack([pixels[k] for k in part]))
            for part in halves if part]
    for part, job in zip(halves, jobs):
        quality = job.result()
        for j, (s, f) in enumerate(part):
            scores.set(s, f, {k: v[j] for k, v in quality.items()})
    for (s, f), (rs, rf) in alias.items():
        scores.set(s, f, scores.get(rs, rf))


def stitch_streams(
    videos: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    metadata: Sequence[str | os.PathLike] | None = None,
    name: str = "stitched",
    fmt: str = "auto",
    align: str = "auto",
    tolerance_s: float | None = None,
    debug_video: bool = False,
    force: bool = False,
    fps: float | None = None,
    chunk_frames: int = 32,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> StitchResult:
    """Stitch the streams ``videos`` (each with its metadata CSV) into one recording.

    Parameters
    ----------
    videos : sequence of path-like
        One video per receiver (>= 2), any format :func:`mps_core.io.readers.open_reader`
        reads. Ties go to the stream listed first.
    output_dir : path-like
        Folder for the outputs (created); must not be an input's folder.
    metadata : sequence of path-like, optional
        One CSV per video; default ``<video stem>.csv`` next to each video.
    name : str
        Base name of the outputs (see the module docstring).
    fmt : {"auto", "avi", "tiff"}
        Stitched movie format: FFV1 ``.avi`` (8-bit), TIFF stack; ``auto`` picks by dtype.
    align : {"auto", "frame_num", "time"}
        How frames are matched across streams (:func:`mps_core.stitch.align.align_streams`).
    tolerance_s : float, optional
        Time alignment only: largest receive-time difference of two copies of one frame.
    debug_video : bool
        Also write ``<name>_debug.mp4``.
    force : bool
        Replace existing outputs of the same name; otherwise refuse before writing anything.
    fps : float, optional
        Frame rate of the written videos; default the first video's, else 20.
    chunk_frames : int
        Output frames per chunk. Memory: about 3 chunks of frames per stream (the chunk in
        hand, the next one being decoded, the one being written).
    progress : callable(fraction, message), optional
    cancel : threading.Event, optional
        When set, the run stops at the next chunk, removes its partial files and raises
        :class:`mps_core.registry.Cancelled`.
    """
    t0 = time.time()
    if int(chunk_frames) < 1:
        raise ValueError(f"stitch: chunk_frames must be >= 1, got {chunk_frames}")
    chunk = int(chunk_frames)
    report = progress or (lambda f, m: None)
    streams = _open_streams(videos, metadata)
    header = common_header([s.meta for s in streams])
    warnings = [w for s in streams for w in s.warnings]
    ref = streams[0].reader
    inputs = [s.video for s in streams] + [s.meta.path for s in streams]
    produce = tuple(k for k in _KINDS if k != "debug" or debug_video)
    paths, stale = plan_outputs(output_dir, name, fmt, ref.dtype, inputs, force,
                                produce=produce, possible=_KINDS)
    al = align_streams([s.frames for s in streams], align, tolerance_s,
                       [str(s.meta.path) for s in streams])
    rate = _frame_rate(streams, fps)
    scores = _Scores(streams)
    rows = [_rows_by_frame(s) for s in streams]
    chosen_stream = np.zeros(al.n_frames, np.int64)
    chosen_frame = np.zeros(al.n_frames, np.int64)
    reasons: Counter = Counter()
    report(0.0, f"stitching {len(streams)} streams ({al.n_frames} frames, by {al.mode})")
    starts = list(range(0, al.n_frames, chunk))
    with Outputs(paths, stale) as out, ExitStack() as opened:
        cursors = [opened.enter_context(FrameCursor(s.reader)) for s in streams]
        copiers = [opened.enter_context(RowCopier(s.meta, header)) for s in streams]
        # Entered after the cursors, so they shut down (waiting for reads) before those close.
        readers = opened.enter_context(ThreadPoolExecutor(len(streams), "stitch-read"))
        prefetch = opened.enter_context(ThreadPoolExecutor(1, "stitch-ahead"))
        workers = opened.enter_context(ThreadPoolExecutor(2, "stitch-score"))
        with ExitStack() as writers:  # closed before the files are renamed into place
            video = Background(VideoOut(out["video"], video_format(fmt, ref.dtype), ref.height,
                                        ref.width, ref.dtype, rate, al.n_frames))
            writers.callback(video.close)
            debug = None
            if "debug" in out:
                debug = Background(DebugVideo(out["debug"], rate))
                writers.callback(debug.close)
            meta_w = csv_writer(writers.enter_context(
                open(out["metadata"], "w", newline="", encoding="utf-8")))
            dec_w = csv_writer(writers.enter_context(
                open(out["decisions"], "w", newline="", encoding="utf-8")))
            meta_w.writerow(header)
            dec_w.writerow(_decision_header(len(streams)))
            # Decode the next chunk while this one is scored and written.
            ahead = prefetch.submit(_read_chunk, al, 0, min(chunk, al.n_frames), cursors, readers)
            for g0 in starts:
                _check(cancel)
                g1 = min(al.n_frames, g0 + chunk)
                pixels = ahead.result()
                if g1 < al.n_frames:
                    ahead = prefetch.submit(_read_chunk, al, g1, min(al.n_frames, g1 + chunk),
                                            cursors, readers)
                _score_chunk(al, g0, g1, pixels, scores, workers)
                block = np.empty((g1 - g0, ref.height, ref.width), ref.dtype)
                canvases = []
                for g in range(g0, g1):
                    chosen = _decide(g, al, streams, scores, pixels)
                    s, f = chosen[0], chosen[1]
                    chosen_stream[g], chosen_frame[g] = s, f
                    reasons[chosen[2]] += 1
                    block[g - g0] = pixels[s, f]
                    order, first = rows[s]
                    copiers[s].copy(order[first[f]:first[f + 1]], g, meta_w)
                    dec_w.writerow(_decision_row(g, chosen, streams, scores))
                    if debug is not None:
                        canvases.append(_debug_frame(g, chosen, streams, scores, pixels,
                                                     al.key[g]))
                video.write(block)
                if debug is not None:
                    debug.write(np.stack(canvases))
                report(g1 / al.n_frames, f"frame {g1} of {al.n_frames}")
            ahead.result()
        frames_per = [int((chosen_stream == k).sum()) for k in range(len(streams))]
        lines = _log_lines(streams, al, (frames_per, reasons), scores, chosen_stream,
                           chosen_frame, warnings)
        out["log"].write_text("\n".join(lines) + "\n", encoding="utf-8")
        _check(cancel)
        written = out.commit()
    out_bad = int(sum(int(scores.corrupted(s)[f]) for s, f in zip(chosen_stream, chosen_frame)))
    missing = [al.n_frames - np.unique(al.group[al.stream == k]).size for k in range(len(streams))]
    return StitchResult(written, al.n_frames, al.mode, frames_per, dict(reasons),
                        [int(scores.corrupted(k).sum()) for k in range(len(streams))], out_bad,
                        [s.n_frames for s in streams], missing, warnings, time.time() - t0)
