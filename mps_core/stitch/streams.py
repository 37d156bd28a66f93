"""One recorded stream: a video plus its per-buffer metadata CSV, read and validated.

A wireless miniscope sends every frame as a few radio buffers; the receiver writes one
metadata row per buffer it received (``frame_num``, ``frame_buffer_count``,
``buffer_recv_unix_time``, ``black_padding_px``, ...) and tags it with the index of the
video frame it was reconstructed into (``reconstructed_frame_index``). This module

* reads such a CSV without holding its text: only the few columns the tools need, as
  numpy arrays, plus each row's byte offset so rows can be copied later exactly as written
  (:class:`Metadata`, :func:`read_metadata`);
* checks that the video and the CSV describe the same frames (:func:`match_video`):
  exactly one extra metadata frame at the end (the receiver logged the buffers of a frame it
  never finished writing) is dropped with a warning; anything else is an error naming the
  missing ranges on each side;
* summarises each video frame from its rows (:class:`FrameTable`): its ``frame_num`` (the
  majority of its rows: a stray buffer of another frame does not relabel it), how many
  distinct buffers of that frame were received, and their mean receive time;
* reads frames in any order with one open decoder (:class:`FrameCursor`), so a long video is
  decoded once, forwards, chunk by chunk.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mps_core.io.readers import Reader, VideoReader, open_reader, to_grey

__all__ = [
    "FRAME_COL",
    "STREAM_COLUMNS",
    "Metadata",
    "FrameTable",
    "Stream",
    "FrameCursor",
    "read_metadata",
    "match_video",
    "frame_table",
    "open_stream",
    "format_ranges",
    "sibling_csv",
]

#: Column holding the video frame each metadata row belongs to.
FRAME_COL = "reconstructed_frame_index"
#: Columns a stream's CSV must have for stitching.
STREAM_COLUMNS = ("frame_num", FRAME_COL, "buffer_recv_unix_time")
_BUFFER_COL = "frame_buffer_count"


# ----------------------------------------------------------------------------- metadata


@dataclass
class Metadata:
    """The columns of a per-buffer metadata CSV that the tools use, one entry per row.

    ``offset`` is each row's byte offset in the file: rows are copied to outputs from the
    file itself, so every other column keeps its exact text. Columns absent from the file
    are ``None``.
    """

    path: Path
    header: list[str]
    frame: np.ndarray  # reconstructed_frame_index, int64
    offset: np.ndarray  # byte offset of the row's line, int64
    frame_num: np.ndarray | None = None  # int64
    buffer: np.ndarray | None = None  # frame_buffer_count, int64
    time: np.ndarray | None = None  # buffer_recv_unix_time, float64

    @property
    def n_rows(self) -> int:
        return int(self.frame.size)

    def subset(self, keep: np.ndarray) -> "Metadata":
        """The rows where ``keep`` is True (same file, same header)."""
        pick = (lambda a: None if a is None else a[keep])
        return Metadata(self.path, self.header, self.frame[keep], self.offset[keep],
                        pick(self.frame_num), pick(self.buffer), pick(self.time))


def split_line(line: str) -> list[str]:
    """Fields of one CSV line (plain split unless the line uses quotes)."""
    line = line.rstrip("\r\n")
    if '"' in line:
        return next(csv.reader([line]))
    return line.split(",")


def _number(text: str, kind, path: Path, line_no: int, column: str):
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise ValueError(f"{path}: line {line_no}: {column} {text!r} is not a number; "
                         f"fix or remove that row") from None


def read_metadata(path: str | os.PathLike, required: tuple[str, ...] = STREAM_COLUMNS) -> Metadata:
    """Read the needed columns of a per-buffer metadata CSV (one pass, no text kept).

    Parameters
    ----------
    path : path-like
        The CSV (header line, one row per received buffer).
    required : tuple of str
        Columns that must be present; ``reconstructed_frame_index`` always is.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: metadata CSV does not exist; give the stream's CSV")
    wanted = {FRAME_COL: int, "frame_num": int, _BUFFER_COL: int, "buffer_recv_unix_time": float}
    with open(path, "rb") as f:
        head = f.readline()
        header = [h.strip() for h in split_line(head.decode("utf-8-sig"))]
        needed = list(dict.fromkeys((FRAME_COL,) + tuple(required)))
        missing = [c for c in needed if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; this metadata "
                             f"CSV needs {', '.join(needed)}")
        cols = {c: header.index(c) for c in wanted if c in header}
        values: dict[str, list] = {c: [] for c in cols}
        offsets: list[int] = []
        pos, line_no = len(head), 1
        for raw in f:
            line_no += 1
            start, pos = pos, pos + len(raw)
            if not raw.strip():
                continue
            fields = split_line(raw.decode("utf-8"))
            if len(fields) < len(header):
                raise ValueError(f"{path}: line {line_no} has {len(fields)} fields, the header "
                                 f"{len(header)}; fix or remove that row")
            offsets.append(start)
            for c, i in cols.items():
                values[c].append(_number(fields[i], wanted[c], path, line_no, c))
    arr = {c: np.asarray(v, np.float64 if wanted[c] is float else np.int64)
           for c, v in values.items()}
    return Metadata(path, header, arr[FRAME_COL], np.asarray(offsets, np.int64),
                    arr.get("frame_num"), arr.get(_BUFFER_COL), arr.get("buffer_recv_unix_time"))


def format_ranges(values: np.ndarray, limit: int = 8) -> str:
    """``"3-5, 9, 12-20"`` for sorted unique integers (at most ``limit`` ranges shown)."""
    values = np.asarray(values, np.int64)
    if values.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    runs = np.split(values, breaks)
    parts = [f"{r[0]}" if r.size == 1 else f"{r[0]}-{r[-1]}" for r in runs[:limit]]
    more = f" and {len(runs) - limit} more range(s)" if len(runs) > limit else ""
    return ", ".join(parts) + more


def match_video(meta: Metadata, n_frames: int, video: Path) -> tuple[Metadata, list[str]]:
    """Check that the CSV's frames are exactly the video's ``0..n_frames-1``.

    One extra metadata frame right after the last video frame is dropped with a warning
    (the receiver logs the buffers of the frame being assembled when it stops). Any other
    difference raises ValueError listing the missing ranges on each side.
    """
    present = np.unique(meta.frame)
    missing = np.setdiff1d(np.arange(n_frames), present)
    extra = present[(present < 0) | (present >= n_frames)]
    if missing.size == 0 and extra.size == 0:
        return meta, []
    if missing.size == 0 and extra.size == 1 and extra[0] == n_frames:
        keep = meta.frame != n_frames
        note = (f"{meta.path.name}: one metadata frame more than {video.name} has frames "
                f"({FRAME_COL} {n_frames}, {int((~keep).sum())} row(s)); left out")
        return meta.subset(keep), [note]
    raise ValueError(
        f"{meta.path}: its frames do not match {video.name} ({n_frames} frames): video frames "
        f"without metadata: {format_ranges(missing)}; metadata frames without video: "
        f"{format_ranges(extra)}; pair the video with its own CSV")


# ----------------------------------------------------------------------------- frame table


@dataclass
class FrameTable:
    """Per video frame: its ``frame_num``, buffers received and mean receive time."""

    frame_num: np.ndarray  # int64 (n,); -1 when the CSV has no frame_num
    buffers: np.ndarray  # int64 (n,): distinct buffers of that frame_num received
    time: np.ndarray  # float64 (n,): mean buffer_recv_unix_time of those buffers (nan if absent)


def frame_table(meta: Metadata, n_frames: int) -> FrameTable:
    """Summarise each video frame ``0..n_frames-1`` from its metadata rows.

    A frame's ``frame_num`` is the one most of its rows carry (ties: the lowest); its
    buffer count is the number of distinct ``frame_buffer_count`` values among those rows
    (rows, when the column is absent), so a stray buffer of another frame counts for
    neither. Expects :func:`match_video` to have passed.
    """
    frame = meta.frame
    if n_frames == 0:
        return FrameTable(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    fnum = meta.frame_num if meta.frame_num is not None else np.full(frame.size, -1, np.int64)
    pairs, pair_of_row, rows = np.unique(np.stack([frame, fnum], 1), axis=0,
                                         return_inverse=True, return_counts=True)
    pair_of_row = pair_of_row.ravel()
    if meta.buffer is not None:
        triples = np.unique(np.stack([pair_of_row, meta.buffer], 1), axis=0)
        buffers = np.bincount(triples[:, 0], minlength=len(pairs))
    else:
        buffers = rows
    # Per frame, the pair with the most rows (lexsort: last key primary).
    order = np.lexsort((pairs[:, 1], -rows, pairs[:, 0]))
    first = order[np.r_[True, np.diff(pairs[order, 0]) != 0]]
    best = np.full(n_frames, -1, np.int64)
    inside = (pairs[first, 0] >= 0) & (pairs[first, 0] < n_frames)
    best[pairs[first[inside], 0]] = first[inside]
    if (best < 0).any():
        raise ValueError(f"{meta.path}: frames {format_ranges(np.flatnonzero(best < 0))} have no "
                         f"metadata rows")
    if meta.time is not None:
        time = np.bincount(pair_of_row, weights=meta.time, minlength=len(pairs)) / rows
    else:
        time = np.full(len(pairs), np.nan)
    return FrameTable(pairs[best, 1].astype(np.int64), buffers[best].astype(np.int64), time[best])


# ----------------------------------------------------------------------------- streams


@dataclass
class Stream:
    """A validated stream: its reader, metadata rows and per-frame summary."""

    number: int  # 1-based, as the user listed it
    video: Path
    reader: Reader
    meta: Metadata
    frames: FrameTable
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return self.reader.n_frames


def sibling_csv(video: str | os.PathLike, suffix: str = "") -> Path:
    """``<folder>/<video stem><suffix>.csv``: where a video's metadata is looked for."""
    video = Path(video)
    return video.with_name(f"{video.stem}{suffix}.csv")


def open_video(path: str | os.PathLike) -> Reader:
    """A reader for a stream's movie (any format :func:`open_reader` supports)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: file does not exist; give an existing video")
    return open_reader(path)


def open_stream(video: str | os.PathLike, metadata: str | os.PathLike | None = None,
                number: int = 1, required: tuple[str, ...] = STREAM_COLUMNS) -> Stream:
    """Open a video and its metadata CSV (default: the ``.csv`` of the same name) and
    validate them against each other (:func:`match_video`)."""
    video = Path(video)
    reader = open_video(video)
    csv_path = Path(metadata) if metadata is not None else sibling_csv(video)
    if metadata is None and not csv_path.is_file():
        raise ValueError(f"{video}: no metadata CSV ({csv_path.name} is not next to it); "
                         f"give its CSV explicitly")
    meta, notes = match_video(read_metadata(csv_path, required), reader.n_frames, video)
    return Stream(number, video, reader, meta, frame_table(meta, reader.n_frames), notes)


# ----------------------------------------------------------------------------- frames


class FrameCursor:
    """Read frames of one movie by index, keeping one decoder open between calls.

    Videos are decoded forwards with a single ``cv2.VideoCapture`` (skips use ``grab``, or
    a seek for intra-only codecs when the jump is long); going back re-seeks, or reopens
    and decodes from the start for codecs that cannot seek exactly. Other formats use
    their reader's random access. Call :meth:`close` (or use ``with``).
    """

    _SEEK_AFTER = 32  # forward gaps longer than this seek instead of grabbing (when exact)

    def __init__(self, reader: Reader):
        self.reader = reader
        self.video = isinstance(reader, VideoReader)
        self.cap: cv2.VideoCapture | None = None
        self.pos = 0

    def __enter__(self) -> "FrameCursor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames ``indices`` (any order, repeats allowed) as a (k, H, W) array."""
        indices = np.asarray(indices, np.int64).ravel()
        r = self.reader
        if indices.size and (indices.min() < 0 or indices.max() >= r.n_frames):
            raise ValueError(f"{r.path}: frame index outside [0, {r.n_frames})")
        wanted, where = np.unique(indices, return_inverse=True)
        out = np.empty((wanted.size, r.height, r.width), r.dtype)
        if self.video:
            for k, i in enumerate(wanted):
                out[k] = self._video_frame(int(i))
        else:  # one read per run of consecutive indices
            runs = np.split(np.arange(wanted.size), np.flatnonzero(np.diff(wanted) != 1) + 1)
            for run in runs:
                if run.size:
                    out[run] = r.read(int(wanted[run[0]]), int(wanted[run[-1]]) + 1)
        return out[where.ravel()]

    def _open(self) -> None:
        self.close()
        path = str(self.reader.path)
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)  # the backend VideoReader uses
        if not cap.isOpened():
            cap.release()
            cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise ValueError(f"{path}: cannot open video (unreadable file or unsupported codec)")
        self.cap, self.pos = cap, 0

    def _video_frame(self, index: int) -> np.ndarray:
        r = self.reader
        if self.cap is None or index < self.pos and not r.seeks:
            self._open()
        if r.seeks and (index < self.pos or index - self.pos > self._SEEK_AFTER):
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            self.pos = index
        while self.pos < index:
            if not self.cap.grab():
                raise ValueError(f"{r.path}: could not decode frame {self.pos} (truncated "
                                 f"video?); re-export the stream")
            self.pos += 1
        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise ValueError(f"{r.path}: could not decode frame {index} of {r.n_frames} "
                             f"(truncated video?); re-export the stream")
        self.pos += 1
        grey = to_grey(frame, "bgr")
        if grey.shape != (r.height, r.width):
            raise ValueError(f"{r.path}: frame {index} has size {grey.shape}, expected "
                             f"{(r.height, r.width)}")
        return grey
