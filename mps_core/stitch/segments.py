"""Concatenate sequential segments of one stream, trim its ends, remove listed frames.

All three are one operation: keep some frames of one or more segments, in order, and
renumber. A *segment* is a movie plus, optionally, its per-buffer metadata CSV
(``<stem>.csv`` next to it by default) and a stitching decision table
(``<stem>_decisions.csv``). The metadata is validated against the movie like a stream's
(one extra trailing metadata frame is dropped with a warning); a decision table must have
exactly one row per movie frame (column ``frame``).

Outputs in ``output_dir``: ``<name>.avi`` (FFV1; ``.tif`` for non-8-bit), ``<name>.csv``
(metadata rows of the kept frames, ``reconstructed_frame_index`` renumbered 0..N-1) and
``<name>_decisions.csv`` (``frame`` renumbered) when the inputs have them, and
``<name>_log.txt`` listing the inputs and every removed frame with its ``frame_num`` and
number of metadata rows. Frames are copied chunk by chunk, bit-exact.
"""

from __future__ import annotations

import csv
import os
import re
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mps_core.registry import Cancelled

from .streams import (FrameCursor, Metadata, format_ranges, frame_table, match_video,
                      open_video, read_metadata, sibling_csv)
from .write import (Background, Outputs, RowCopier, VideoOut, common_header, csv_writer,
                    plan_outputs, video_format)

__all__ = ["EditResult", "Segment", "open_segment", "parse_frame_list", "concat_segments",
           "trim_frames", "remove_frames"]

Progress = Callable[[float, str], None]
_KINDS = ("video", "metadata", "decisions", "log")
_FRAME_LIST = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
_CHUNK = 64


@dataclass
class EditResult:
    """What a concat / trim / remove-frames run wrote."""

    paths: dict[str, Path]
    n_frames_in: int
    n_frames: int
    removed: int
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"wrote {self.paths['video']} ({self.n_frames} of {self.n_frames_in} frames, "
                f"{self.removed} removed; {self.seconds:.1f} s)")


@dataclass
class Segment:
    """A movie with its optional metadata (validated) and decision table."""

    video: Path
    reader: object
    meta: Metadata | None
    decisions: Path | None
    decisions_header: list[str] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return self.reader.n_frames


def _check_decisions(path: Path, n_frames: int, video: Path) -> list[str]:
    """The header of a decision table, after checking it has one row per movie frame."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "frame" not in header:
            raise ValueError(f"{path}: not a decision table (no 'frame' column); give the "
                             f"<name>_decisions.csv that mps stitch wrote")
        col = header.index("frame")
        try:
            frames = np.array([int(row[col]) for row in reader if row], np.int64)
        except (ValueError, IndexError):
            raise ValueError(f"{path}: a 'frame' value is missing or not a whole number") from None
    if not np.array_equal(np.sort(frames), np.arange(n_frames)):
        missing = np.setdiff1d(np.arange(n_frames), frames)
        extra = np.setdiff1d(frames, np.arange(n_frames))
        raise ValueError(f"{path}: its frames do not match {video.name} ({n_frames} frames): "
                         f"without a row: {format_ranges(missing)}; rows without a frame: "
                         f"{format_ranges(extra)}; pair the movie with its own table")
    return header


def open_segment(video: str | os.PathLike, metadata: str | os.PathLike | None = None,
                 decisions: str | os.PathLike | None = None) -> Segment:
    """Open a movie with its metadata CSV and decision table (explicit, or the sibling
    ``<stem>.csv`` / ``<stem>_decisions.csv`` when present) and validate them."""
    video = Path(video)
    reader = open_video(video)
    meta_path = Path(metadata) if metadata is not None else sibling_csv(video)
    dec_path = Path(decisions) if decisions is not None else sibling_csv(video, "_decisions")
    meta, notes = None, []
    if metadata is not None or meta_path.is_file():
        meta, notes = match_video(read_metadata(meta_path, required=()), reader.n_frames, video)
    if decisions is None and not dec_path.is_file():
        dec_path = None
    header = None
    if dec_path is not None:
        if not dec_path.is_file():
            raise ValueError(f"{dec_path}: decision table does not exist")
        header = _check_decisions(dec_path, reader.n_frames, video)
    return Segment(video, reader, meta, dec_path, header, notes)


def parse_frame_list(text: str | Sequence[int]) -> np.ndarray:
    """Frame indices from ``"3,10-12,40"`` (0-based, inclusive ranges) or a list of ints."""
    if not isinstance(text, str):
        values = np.asarray(list(text), np.int64)
        if (values < 0).any():
            raise ValueError("frames: indices must be >= 0")
        return np.unique(values)
    out = []
    for part in text.split(","):
        m = _FRAME_LIST.match(part)
        if not m:
            raise ValueError(f"frames {text!r}: expected 0-based frame numbers and inclusive "
                             f"ranges separated by commas, e.g. 3,10-12,40")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"frames {text!r}: range {lo}-{hi} goes backwards")
        out.append(np.arange(lo, hi + 1))
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _all_or_none(segments: list[Segment], attr: str, what: str) -> bool:
    have = [getattr(s, attr) is not None for s in segments]
    if any(have) and not all(have):
        lacking = [s.video.name for s, h in zip(segments, have) if not h]
        raise ValueError(f"{', '.join(lacking)}: no {what}, but other inputs have one; give "
                         f"every input its {what} or none")
    return all(have)


def _removed_lines(seg: Segment, keep: np.ndarray) -> list[str]:
    """One log line per removed frame: frame, frame_num, metadata rows."""
    gone = np.flatnonzero(~keep)
    if gone.size == 0:
        return []
    lines = [f"removed from {seg.video.name}: {gone.size} frame(s) ({format_ranges(gone, 20)})",
             "removed frame,frame_num,metadata rows"]
    if seg.meta is None:
        return lines + [f"{i},," for i in gone]
    table = frame_table(seg.meta, seg.n_frames)
    rows = np.bincount(seg.meta.frame, minlength=seg.n_frames)
    fnum = ["" if v < 0 else str(v) for v in table.frame_num[gone]]
    return lines + [f"{i},{n},{rows[i]}" for i, n in zip(gone, fnum)]


def _order_warnings(segments: list[Segment]) -> list[str]:
    """Warn when a segment's frame_num does not follow the previous segment's."""
    notes = []
    for a, b in zip(segments, segments[1:]):
        if a.meta is None or b.meta is None or a.meta.frame_num is None or b.meta.frame_num is None:
            continue
        last = frame_table(a.meta, a.n_frames).frame_num[-1]
        first = frame_table(b.meta, b.n_frames).frame_num[0]
        if first <= last:
            notes.append(f"{b.video.name} starts at frame_num {first}, not after {a.video.name} "
                         f"(ends at {last}): segments out of order or overlapping?")
    return notes


def _copy_decisions(seg: Segment, header: list[str], new_index: np.ndarray, writer) -> None:
    """Rows of a decision table whose frame is kept, with ``frame`` renumbered."""
    with open(seg.decisions, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        own = next(reader)
        cols = [own.index(c) for c in header]
        at = header.index("frame")
        for row in reader:
            if not row:
                continue
            new = new_index[int(row[own.index("frame")])]
            if new >= 0:
                out = [row[i] for i in cols]
                out[at] = str(int(new))
                writer.writerow(out)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")


def _input_line(seg: Segment, keep: np.ndarray, offset: int) -> str:
    n = int(keep.sum())
    return (f"input {seg.video} ({seg.n_frames} frames"
            + (f", metadata {seg.meta.path}" if seg.meta else "")
            + (f", decisions {seg.decisions}" if seg.decisions else "")
            + f"): kept {n} as output frames " + (f"{offset}-{offset + n - 1}" if n else "none"))


def _copy_frames(seg: Segment, kept: np.ndarray, video: Background, done: int, total: int,
                 report: Progress, cancel: threading.Event | None) -> int:
    """Copy the frames ``kept`` of a segment chunk by chunk; returns frames done so far."""
    with FrameCursor(seg.reader) as cursor:
        for c0 in range(0, kept.size, _CHUNK):
            _check(cancel)
            video.write(cursor.read(kept[c0:c0 + _CHUNK]))
            done += min(_CHUNK, kept.size - c0)
            report(done / total, f"frame {done} of {total}")
    return done


def _edit(segments: list[Segment], keeps: list[np.ndarray], output_dir, name: str, fmt: str,
          force: bool, command: str, progress: Progress | None,
          cancel: threading.Event | None) -> EditResult:
    """Write the kept frames of ``segments`` (in order) with renumbered tables and a log."""
    t0 = time.time()
    report = progress or (lambda f, m: None)
    first = segments[0].reader
    for seg in segments[1:]:
        r = seg.reader
        if (r.height, r.width, r.dtype) != (first.height, first.width, first.dtype):
            raise ValueError(f"{seg.video}: frames are {r.height}x{r.width} {r.dtype}, but "
                             f"{segments[0].video.name} has {first.height}x{first.width} "
                             f"{first.dtype}; give segments of one recording")
    has_meta = _all_or_none(segments, "meta", "metadata CSV")
    has_dec = _all_or_none(segments, "decisions", "decision table")
    meta_header = common_header([s.meta for s in segments]) if has_meta else None
    dec_header = None
    if has_dec:
        heads = [s.decisions_header for s in segments]
        if any(set(h) != set(heads[0]) for h in heads[1:]):
            raise ValueError(f"{segments[0].decisions}: decision tables have different columns "
                             f"(stitched from different numbers of streams?); concatenate "
                             f"tables of one stitching setup")
        dec_header = heads[0]
    warnings = [w for s in segments for w in s.warnings] + _order_warnings(segments)
    produce = ("video", "log") + (("metadata",) if has_meta else ()) \
        + (("decisions",) if has_dec else ())
    inputs = [s.video for s in segments] + [s.meta.path for s in segments if s.meta] + \
        [s.decisions for s in segments if s.decisions]
    paths, stale = plan_outputs(output_dir, name, fmt, first.dtype, inputs, force,
                                produce=produce, possible=_KINDS)
    total = int(sum(k.sum() for k in keeps))
    if total == 0:
        raise ValueError(f"{command}: no frame would be left; keep at least one")
    rate = float(getattr(first, "fps", 0.0) or 0.0)
    rate = rate if 0 < rate < 1000 else 20.0
    log = [f"mps {command}, {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    offset, done = 0, 0
    with Outputs(paths, stale) as out:
        with ExitStack() as writers:  # closed before the files are renamed into place
            video = Background(VideoOut(out["video"], video_format(fmt, first.dtype),
                                        first.height, first.width, first.dtype, rate, total))
            writers.callback(video.close)
            meta_w = dec_w = None
            if has_meta:
                meta_w = csv_writer(writers.enter_context(
                    open(out["metadata"], "w", newline="", encoding="utf-8")))
                meta_w.writerow(meta_header)
            if has_dec:
                dec_w = csv_writer(writers.enter_context(
                    open(out["decisions"], "w", newline="", encoding="utf-8")))
                dec_w.writerow(dec_header)
            for seg, keep in zip(segments, keeps):
                new_index = np.full(seg.n_frames, -1, np.int64)
                new_index[keep] = offset + np.arange(int(keep.sum()))
                log.append(_input_line(seg, keep, offset))
                log += _removed_lines(seg, keep)
                done = _copy_frames(seg, np.flatnonzero(keep), video, done, total, report, cancel)
                if has_meta:
                    with RowCopier(seg.meta, meta_header) as copier:
                        rows = np.flatnonzero(new_index[seg.meta.frame] >= 0)
                        copier.copy(rows, new_index[seg.meta.frame[rows]], meta_w)
                if has_dec:
                    _copy_decisions(seg, dec_header, new_index, dec_w)
                offset += int(keep.sum())
        log += [f"warning: {w}" for w in warnings]
        log.append(f"output: {total} frames")
        out["log"].write_text("\n".join(log) + "\n", encoding="utf-8")
        _check(cancel)
        written = out.commit()
    n_in = sum(s.n_frames for s in segments)
    return EditResult(written, n_in, total, n_in - total, warnings, time.time() - t0)


def concat_segments(
    videos: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    metadata: Sequence[str | os.PathLike] | None = None,
    decisions: Sequence[str | os.PathLike] | None = None,
    name: str = "concatenated",
    fmt: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> EditResult:
    """Concatenate sequential segments of one stream, in the order given.

    ``metadata`` / ``decisions``: one file per video (default: the siblings, when present).
    Frame indices continue across segments; a warning is logged when a segment's
    ``frame_num`` does not follow the previous one's.
    """
    videos = [Path(v) for v in videos]
    if len(videos) < 2:
        raise ValueError(f"concat: give at least 2 segments, got {len(videos)}")
    for what, given in (("metadata CSV", metadata), ("decision table", decisions)):
        if given is not None and len(given) != len(videos):
            raise ValueError(f"concat: {len(given)} {what}(s) for {len(videos)} videos; give one "
                             f"per video, in the same order")
    segments = [open_segment(v, metadata[k] if metadata else None,
                             decisions[k] if decisions else None) for k, v in enumerate(videos)]
    keeps = [np.ones(s.n_frames, bool) for s in segments]
    return _edit(segments, keeps, output_dir, name, fmt, force, "concat", progress, cancel)


def trim_frames(
    video: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    start: int = 0,
    end: int = 0,
    metadata: str | os.PathLike | None = None,
    decisions: str | os.PathLike | None = None,
    name: str | None = None,
    fmt: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> EditResult:
    """Drop ``start`` frames at the beginning and ``end`` at the end (default name
    ``<stem>_trimmed``)."""
    if int(start) < 0 or int(end) < 0:
        raise ValueError(f"trim: start and end must be >= 0, got {start} and {end}")
    seg = open_segment(video, metadata, decisions)
    if int(start) + int(end) >= seg.n_frames:
        raise ValueError(f"{seg.video}: trimming {start} + {end} frames leaves none of its "
                         f"{seg.n_frames}; trim fewer")
    keep = np.ones(seg.n_frames, bool)
    keep[:int(start)] = False
    keep[seg.n_frames - int(end):] = False
    return _edit([seg], [keep], output_dir, name or f"{seg.video.stem}_trimmed", fmt, force,
                 "trim", progress, cancel)


def remove_frames(
    video: str | os.PathLike,
    output_dir: str | os.PathLike,
    frames: str | Sequence[int],
    *,
    metadata: str | os.PathLike | None = None,
    decisions: str | os.PathLike | None = None,
    name: str | None = None,
    fmt: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> EditResult:
    """Drop the listed 0-based frames (``"3,10-12"`` or a list; default name
    ``<stem>_cleaned``)."""
    drop = parse_frame_list(frames)
    seg = open_segment(video, metadata, decisions)
    outside = drop[drop >= seg.n_frames]
    if outside.size:
        raise ValueError(f"{seg.video}: frames {format_ranges(outside)} do not exist (it has "
                         f"{seg.n_frames} frames, numbered from 0)")
    keep = np.ones(seg.n_frames, bool)
    keep[drop] = False
    return _edit([seg], [keep], output_dir, name or f"{seg.video.stem}_cleaned", fmt, force,
                 "remove-frames", progress, cancel)
