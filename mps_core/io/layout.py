"""Recognise Miniscope recording folders, read their timestamps, build the frame index.

Layouts
-------
``v3``
    UCLA Miniscope V3 DAQ software: ``msCam1.avi``, ``msCam2.avi``, ... plus
    ``timestamp.dat`` (tab/whitespace separated, header
    ``camNum frameNum sysClock buffer``; ``frameNum`` is 1-based, ``sysClock``
    in ms). The same file also logs the behaviour camera (``behavCam*.avi``)
    under another ``camNum``; see :func:`read_timestamps` for how the scope's
    camera is chosen.
``v4``
    Miniscope V4 software: ``0.avi``, ``1.avi``, ... plus ``metaData.json`` and
    ``timeStamps.csv`` (header ``Frame Number,Time Stamp (ms),Buffer Index``).
    At least one of the two side files must be present, otherwise a folder of
    numbered AVIs is treated as ``generic``.
``generic``
    Any folder of movie files: all video files (.avi .mp4 .mkv .mov) when there
    are any, else all .tif/.tiff/.npy files; naturally sorted. ``metaData.json``
    is still read when present.

Only the given folder is inspected (not sub-folders): point MPS at the folder
that holds the videos (for V4, the ``Miniscope`` device folder).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mps_core.io.natural import natural_sort
from mps_core.io.readers import VIDEO_SUFFIXES, VideoReader

__all__ = [
    "Layout",
    "detect_layout",
    "read_timestamps",
    "build_frame_index",
    "parse_frame_rate",
    "estimate_fps",
]

_V3_VIDEO = re.compile(r"mscam\d+\.avi", re.IGNORECASE)
_V4_VIDEO = re.compile(r"\d+\.avi", re.IGNORECASE)
_GENERIC_FALLBACK_SUFFIXES = (".tif", ".tiff", ".npy")
_V3_COLUMNS = ("camNum", "frameNum", "sysClock", "buffer")
_V4_FRAME_COL, _V4_TIME_COL = "Frame Number", "Time Stamp (ms)"


@dataclass
class Layout:
    """What :func:`detect_layout` found in a recording folder."""

    kind: str  # "v3" | "v4" | "generic"
    folder: Path
    videos: list[Path]
    timestamps: Path | None = None
    metadata: dict = field(default_factory=dict)
    fps: float | None = None


# --------------------------------------------------------------------------- detection


def _files_named(names: dict[str, Path], regex: re.Pattern) -> list[Path]:
    return natural_sort([p for low, p in names.items() if regex.fullmatch(low)])


def _find_case_insensitive(names: dict[str, Path], name: str) -> Path | None:
    return names.get(name.casefold())


def _load_metadata(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read metadata JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: metadata JSON must be an object, got {type(data).__name__}")
    return data


def parse_frame_rate(value: object) -> float | None:
    """Frame rate from a metaData ``frameRate`` value: ``20``, ``"20"``, ``"20FPS"``, ``"30.0 fps"``.

    Returns None when absent or not a positive number.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        fps = float(value)
    else:
        match = re.search(r"[-+]?\d+(?:\.\d+)?", str(value))
        if match is None:
            return None
        fps = float(match.group())
    return fps if np.isfinite(fps) and fps > 0 else None


def detect_layout(folder: str | os.PathLike) -> Layout:
    """Classify ``folder`` as a V3, V4 or generic recording (see module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: recording folder does not exist or is not a folder")
    try:
        names = {p.name.casefold(): p for p in folder.iterdir() if p.is_file()}
    except OSError as exc:
        raise ValueError(f"{folder}: cannot list folder ({exc})") from exc

    meta_path = _find_case_insensitive(names, "metaData.json")
    metadata = _load_metadata(meta_path)
    fps = parse_frame_rate(metadata.get("frameRate"))

    v3_videos = _files_named(names, _V3_VIDEO)
    if v3_videos:
        # msCam videos with a V4-style timeStamps.csv also occur (converted or simulated data)
        stamps = _find_case_insensitive(names, "timestamp.dat") or \
            _find_case_insensitive(names, "timeStamps.csv")
        return Layout("v3", folder, v3_videos, stamps, metadata, fps)

    v4_videos = _files_named(names, _V4_VIDEO)
    v4_stamps = _find_case_insensitive(names, "timeStamps.csv")
    if v4_videos and (meta_path is not None or v4_stamps is not None):
        return Layout("v4", folder, v4_videos, v4_stamps, metadata, fps)

    videos = natural_sort([p for p in names.values() if p.suffix.lower() in VIDEO_SUFFIXES])
    if not videos:
        videos = natural_sort([p for p in names.values() if p.suffix.lower() in _GENERIC_FALLBACK_SUFFIXES])
    if not videos:
        raise ValueError(
            f"{folder}: no movie files found (looked for msCam*.avi, N.avi, "
            f"{' '.join(VIDEO_SUFFIXES + _GENERIC_FALLBACK_SUFFIXES)})"
        )
    return Layout("generic", folder, videos, None, metadata, fps)


# --------------------------------------------------------------------------- timestamps


def _read_table(path: Path, delimiter: str | None) -> tuple[list[str], np.ndarray]:
    """Header names and a 2-D float64 table (numpy's C parser: fast for 100k+ rows)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = fh.readline()
        table = np.loadtxt(path, delimiter=delimiter, skiprows=1, dtype=np.float64, ndmin=2, encoding="utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse timestamp table ({exc})") from exc
    cols = [c.strip() for c in (header.split(delimiter) if delimiter else header.split())]
    if table.size and table.shape[1] != len(cols):
        raise ValueError(f"{path}: header has {len(cols)} columns but rows have {table.shape[1]}")
    return cols, table


def _column(path: Path, cols: list[str], table: np.ndarray, name: str) -> np.ndarray:
    lowered = [c.casefold() for c in cols]
    if name.casefold() not in lowered:
        raise ValueError(f"{path}: missing column {name!r}; found {cols}")
    return table[:, lowered.index(name.casefold())] if table.size else np.empty(0)


def _header_frame_total(videos: list[Path]) -> int:
    return sum(VideoReader(p).n_frames for p in videos)


def _pick_v3_camera(path: Path, cams: np.ndarray, n_video_frames: int | None, videos: list[Path]) -> int:
    """The camera whose row count equals the videos' frame total (else the closest).

    V3 logs the scope and behaviour cameras in one file and the scope's
    ``camNum`` depends on the plug order, so the only reliable link is the
    frame count. Ties go to the lowest ``camNum``.
    """
    ids, counts = np.unique(cams.astype(np.int64), return_counts=True)
    if len(ids) == 1:
        return int(ids[0])
    if n_video_frames is None:
        n_video_frames = _header_frame_total(videos)
    best = int(np.argmin(np.abs(counts - n_video_frames)))  # argmin: first (lowest id) on ties
    return int(ids[best])


def _v3_stamps(layout: Layout, n_video_frames: int | None) -> tuple[np.ndarray, np.ndarray]:
    path = layout.timestamps
    cols, table = _read_table(path, None)
    cams = _column(path, cols, table, "camNum")
    frame_num = _column(path, cols, table, "frameNum")
    clock = _column(path, cols, table, "sysClock")
    if table.size == 0:
        return np.empty(0), np.empty(0)
    keep = cams == _pick_v3_camera(path, cams, n_video_frames, layout.videos)
    order = np.argsort(frame_num[keep], kind="stable")  # frameNum is 1-based; order only matters
    return frame_num[keep][order], clock[keep][order]


def _v4_stamps(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    path = layout.timestamps
    cols, table = _read_table(path, ",")
    frame_num = _column(path, cols, table, _V4_FRAME_COL)
    clock = _column(path, cols, table, _V4_TIME_COL)
    order = np.argsort(frame_num, kind="stable")
    return frame_num[order], clock[order]


def read_timestamps(layout: Layout, n_video_frames: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-frame times of a V3/V4 recording.

    Returns ``(time_s, hw_stamp)``: ``time_s`` is float64 seconds since the
    first frame (so ``time_s[0] == 0``); ``hw_stamp`` is the raw int64 clock
    value the acquisition software logged for each frame (``sysClock`` for V3,
    ``Time Stamp (ms)`` for V4, in ms), kept for syncing with other devices.
    Rows are ordered by frame number.

    ``n_video_frames`` (total frames of ``layout.videos``) picks the scope's
    camera in multi-camera V3 files; when None it is taken from the video
    headers.
    """
    if layout.timestamps is None:
        raise ValueError(f"{layout.folder}: layout {layout.kind!r} has no timestamp file")
    # the file's own format decides, whatever the video naming
    if layout.kind == "v3" and layout.timestamps.suffix.lower() == ".dat":
        _, clock = _v3_stamps(layout, n_video_frames)
    elif layout.kind in ("v3", "v4"):
        _, clock = _v4_stamps(layout)
    else:
        raise ValueError(f"layout kind must be 'v3' or 'v4' to read timestamps, got {layout.kind!r}")
    if clock.size == 0:
        return np.empty(0, np.float64), np.empty(0, np.int64)
    time_s = (clock - clock[0]) / 1000.0
    return time_s.astype(np.float64), np.rint(clock).astype(np.int64)


def estimate_fps(time_s: np.ndarray) -> float | None:
    """Frame rate from the median frame interval (robust to dropped frames), or None."""
    diffs = np.diff(np.asarray(time_s, dtype=np.float64))
    diffs = diffs[np.isfinite(diffs) & (diffs > 0)]
    return float(1.0 / np.median(diffs)) if diffs.size else None


# --------------------------------------------------------------------------- frame index


def _validated_counts(n_frames_per_movie: list[int]) -> np.ndarray:
    counts = np.asarray(list(n_frames_per_movie), dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0):
        raise ValueError(f"n_frames_per_movie must be a non-empty list of counts >= 0, got {n_frames_per_movie!r}")
    return counts


def _timestamp_rows(counts: np.ndarray, movie: np.ndarray, local: np.ndarray, row_offsets) -> np.ndarray:
    if row_offsets is None:
        return np.concatenate([[0], np.cumsum(counts)])[movie] + local
    offsets = np.asarray(list(row_offsets), dtype=np.int64)
    if offsets.shape != counts.shape:
        raise ValueError(f"row_offsets must have one entry per movie ({counts.size}), got {offsets.size}")
    return offsets[movie] + local


def _fill_times(rows, time_s, fps, warnings) -> np.ndarray:
    """Times of frames whose row is covered; the rest extrapolated at a steady rate."""
    n = rows.size
    out = np.full(n, np.nan)
    covered = rows < time_s.size
    out[covered] = time_s[rows[covered]]
    if covered.all():
        return out
    rate = fps if fps else estimate_fps(time_s)
    missing = ~covered
    if rate is None:
        warnings.append(
            f"{int(missing.sum())} of {n} frames have no timestamp and there is no frame rate "
            "to extrapolate: time_s is NaN there"
        )
        return out
    # Each uncovered frame continues from the last covered frame before it
    # (or from 0 when there is none) at a steady rate, keeping time monotonic.
    positions = np.arange(n)
    last = np.maximum.accumulate(np.where(covered, positions, -1))
    base = np.where(last >= 0, out[np.maximum(last, 0)], 0.0)
    steps = np.where(last >= 0, positions - last, positions)
    out[missing] = (base + steps / rate)[missing]
    warnings.append(
        f"timestamps cover {int(covered.sum())} of {n} frames; the other {int(missing.sum())} "
        f"are extrapolated at {rate:.4g} fps"
    )
    return out


def build_frame_index(
    n_frames_per_movie: list[int],
    fps: float | None,
    time_s: np.ndarray | None = None,
    hw_stamp: np.ndarray | None = None,
    row_offsets: list[int] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-frame table of the combined movie and a list of warnings.

    Keys: ``frame`` (global 0..N-1), ``movie`` (0-based movie number),
    ``local_frame`` (frame within its movie), ``time_s`` (float64) and
    ``hw_stamp`` (int64, -1 when unknown), all int64 except ``time_s``.

    ``time_s`` comes from the timestamp file when given, else ``frame / fps``
    (NaN with a warning when ``fps`` is unknown too). Timestamp row of a frame
    is its global frame number, or ``row_offsets[movie] + local_frame`` when
    ``row_offsets`` is given (use this when some movies were dropped or
    truncated by the health check, so later movies keep their own rows).
    A timestamp table shorter than the movie covers the frames it can and the
    rest are extrapolated at ``fps`` (or the timestamps' median rate); both a
    shorter and a longer table add a warning.
    """
    counts = _validated_counts(n_frames_per_movie)
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    n = int(counts.sum())
    frame = np.arange(n, dtype=np.int64)
    movie = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    local = frame - np.concatenate([[0], np.cumsum(counts)])[movie]
    rows = _timestamp_rows(counts, movie, local, row_offsets)
    warnings: list[str] = []

    if time_s is not None:
        time_s = np.asarray(time_s, dtype=np.float64)
        times = _fill_times(rows, time_s, fps, warnings)
        if time_s.size > (int(rows.max()) + 1 if n else 0):
            warnings.append(
                f"timestamp table has {time_s.size} rows, more than the {n} frames used; extra rows ignored"
            )
    elif fps is not None:
        times = frame / float(fps)
    else:
        times = np.full(n, np.nan)
        warnings.append("no timestamps and no frame rate: time_s is NaN")

    stamps = np.full(n, -1, dtype=np.int64)
    if hw_stamp is not None:
        hw = np.asarray(hw_stamp).astype(np.int64)
        covered = rows < hw.size
        stamps[covered] = hw[rows[covered]]

    table = {"frame": frame, "movie": movie, "local_frame": local, "time_s": times, "hw_stamp": stamps}
    return table, warnings
