"""File health check: which movie files can be used, and where they sit in the combined movie.

Statuses (first matching rule wins):

``unreadable``
    The file cannot be opened, or not even its first frame decodes.
``size_mismatch``
    Its frame size differs from the first readable file's (that file sets the
    reference, whatever its own status).
``truncated``
    With ``verify_frames=True``: fewer than ``min_fraction`` (95 %) of the
    frames its header announces really decode (typically a recording cut off
    by a crash or an interrupted copy).
``ok``
    Everything else.

Decision: **truncated files still contribute their decodable frames** to the
combined movie. The frames before the cut are intact, and dropping the whole
file would lose more data and open a larger hole in time. Only ``ok`` and
``truncated`` files are usable; ``unreadable`` and ``size_mismatch`` files are
left out. A file is used with its *decodable* frame count when frames were
verified (so a file that decodes 97 % of its header stays ``ok`` but only
those 97 % are used), and with its header count otherwise.

``verify_frames=False`` trusts headers (only the first frame is decoded), which
is fast but cannot detect truncation: reading past the cut later raises
:class:`mps_core.io.readers.ReadError`.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mps_core.io.readers import Reader, VideoReader, open_reader

__all__ = ["STATUSES", "FileHealth", "HealthReport", "check_files", "count_readable_frames"]

STATUSES = ("ok", "unreadable", "truncated", "size_mismatch")
USABLE_STATUSES = ("ok", "truncated")
_BLOCK = 64  # frames per read when counting non-video frames (bounded memory)


@dataclass
class FileHealth:
    """Health of one file. ``frame_range`` is ``[start, stop)`` in the combined movie, None when unused."""

    path: Path
    status: str
    kind: str | None = None
    header_frames: int | None = None
    readable_frames: int | None = None  # None when frames were not verified
    height: int | None = None
    width: int | None = None
    dtype: str | None = None
    frame_range: tuple[int, int] | None = None
    recorded_offset: int | None = None  # header frames of all earlier files: row in timestamp tables
    message: str = ""
    reader: Reader | None = field(default=None, repr=False, compare=False)

    @property
    def usable(self) -> bool:
        return self.status in USABLE_STATUSES

    @property
    def frames_used(self) -> int:
        return 0 if self.frame_range is None else self.frame_range[1] - self.frame_range[0]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "status": self.status,
            "kind": self.kind,
            "header_frames": self.header_frames,
            "readable_frames": self.readable_frames,
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "frame_range": list(self.frame_range) if self.frame_range else None,
            "recorded_offset": self.recorded_offset,
            "message": self.message,
        }


@dataclass
class HealthReport:
    """Per-file health entries, in the order the files were given."""

    files: list[FileHealth]
    verify_frames: bool | str = True
    min_fraction: float = 0.95

    @property
    def usable(self) -> list[FileHealth]:
        return [f for f in self.files if f.usable]

    @property
    def usable_paths(self) -> list[Path]:
        """Files that make up the combined movie, in order."""
        return [f.path for f in self.usable]

    @property
    def n_frames(self) -> int:
        """Frames of the combined movie."""
        return sum(f.frames_used for f in self.files)

    @property
    def frames_per_movie(self) -> list[int]:
        return [f.frames_used for f in self.usable]

    @property
    def all_ok(self) -> bool:
        return all(f.status == "ok" for f in self.files)

    def row_offsets(self) -> list[int] | None:
        """Timestamp-table row of each usable file's first frame (for ``build_frame_index``).

        None when an earlier file's header frame count is unknown (unreadable),
        since the rows after it cannot be placed.
        """
        offsets = [f.recorded_offset for f in self.usable]
        return None if any(o is None for o in offsets) else offsets

    def readers(self) -> list[Reader]:
        """Readers of the usable files, each limited to the frames it contributes."""
        out = []
        for f in self.usable:
            reader = copy.copy(f.reader) if f.reader is not None else open_reader(f.path)
            reader.n_frames = f.frames_used
            out.append(reader)
        return out

    def to_dict(self) -> dict:
        """JSON-able summary."""
        return {
            "n_files": len(self.files),
            "n_usable": len(self.usable),
            "n_frames": self.n_frames,
            "verify_frames": self.verify_frames,
            "min_fraction": self.min_fraction,
            "files": [f.to_dict() for f in self.files],
        }

    def to_text(self) -> str:
        """Human-readable report, one line per file with its frame range."""
        lines = [
            f"{len(self.files)} files, {len(self.usable)} usable, {self.n_frames} frames in the combined movie "
            "(frame ranges inclusive, sizes height x width)"
        ]
        width = max(len(f.path.name) for f in self.files) if self.files else 0
        for f in self.files:
            where = f"frames {f.frame_range[0]}-{f.frame_range[1] - 1}" if f.frames_used else "not used"
            counts = _count_text(f)
            size = f"{f.height}x{f.width} {f.dtype}" if f.height is not None else ""
            extra = f"  ({f.message})" if f.message else ""
            lines.append(f"  {f.status:<13} {f.path.name:<{width}}  {where:<22} {counts:<28} {size}{extra}".rstrip())
        return "\n".join(lines)


def _count_text(f: FileHealth) -> str:
    if f.header_frames is None:
        return ""
    if f.readable_frames is None:
        return f"{f.header_frames} frames in header"
    return f"{f.readable_frames}/{f.header_frames} frames decodable"


# --------------------------------------------------------------------------- counting


def count_readable_frames(reader: Reader) -> int:
    """Frames that really read, from frame 0 up to the first failure."""
    if isinstance(reader, VideoReader):
        return reader.count_decodable()
    # Headers of non-video kinds (TIFF, npy, zarr) are exact, so count what can
    # actually be read within those bounds, block by block, then frame by frame
    # inside the first failing block.
    n = 0
    while n < reader.n_frames:
        stop = min(n + _BLOCK, reader.n_frames)
        try:
            reader.read(n, stop)
            n = stop
        except Exception:
            for i in range(n, stop):
                try:
                    reader.read(i, i + 1)
                except Exception:
                    return i
            return stop
    return n


def _quick_count(reader: Reader) -> int:
    """Readable frames, cheaply: when the last frame the header announces decodes (a seek
    and one decode on intra-frame codecs), the file is taken as whole; otherwise count."""
    n = _header_frames(reader)
    if n <= 0 or (isinstance(reader, VideoReader) and not reader.seeks):
        return count_readable_frames(reader)
    try:
        reader.read(0, 1)
        reader.read(n - 1, n)
        return n
    except Exception:
        return count_readable_frames(reader)


def _header_frames(reader: Reader) -> int:
    return reader.header_frames if isinstance(reader, VideoReader) else reader.n_frames


# --------------------------------------------------------------------------- check


def _inspect(path: Path, verify_frames: bool | str) -> FileHealth:
    """Open one file and fill everything but the comparison-dependent fields."""
    try:
        reader = open_reader(path)
    except Exception as exc:
        return FileHealth(path, "unreadable", message=str(exc))
    entry = FileHealth(
        path, "ok", kind=reader.kind, header_frames=_header_frames(reader),
        height=reader.height, width=reader.width, dtype=str(reader.dtype), reader=reader,
    )
    try:
        if verify_frames == "quick":
            entry.readable_frames = _quick_count(reader)
            if entry.readable_frames == 0:
                raise ValueError("no frame could be decoded")
        elif verify_frames:
            entry.readable_frames = count_readable_frames(reader)
            if entry.readable_frames == 0:
                raise ValueError("no frame could be decoded")
        else:
            reader.read(0, 1)
    except Exception as exc:
        entry.status, entry.message, entry.reader = "unreadable", str(exc), None
    return entry


def _classify(entry: FileHealth, reference: FileHealth | None, min_fraction: float) -> None:
    if entry.status == "unreadable":
        return
    if reference is not None and (entry.height, entry.width) != (reference.height, reference.width):
        entry.status = "size_mismatch"
        entry.message = (
            f"frame size {entry.height}x{entry.width} differs from {reference.path.name} "
            f"({reference.height}x{reference.width})"
        )
        return
    readable, header = entry.readable_frames, entry.header_frames
    if readable is not None and header and readable < min_fraction * header:
        entry.status = "truncated"
        entry.message = f"only {readable} of {header} frames decode; using those {readable}"
    elif readable is not None and header and readable != header:
        entry.message = f"header says {header} frames, {readable} decode; using {readable}"


def check_files(
    paths: list[str | os.PathLike], verify_frames: bool | str = True, min_fraction: float = 0.95
) -> HealthReport:
    """Check each file and lay the usable ones end to end (see module docstring).

    ``verify_frames=True`` decodes every frame once (the cost of one decode
    pass, ~6 ms/frame for 608x608 FFV1); ``"quick"`` decodes the first and the last
    announced frame and counts fully only when that fails; ``False`` only decodes
    the first frame.
    """
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("paths: need at least one file to check")
    # Files are inspected side by side: a video's quick check seeks to its last frame, which
    # decodes ~16 frames (0.2 s for 608 x 608), and a long recording has dozens of files.
    # OpenCV and tifffile release the GIL while decoding; the order of `paths` is kept.
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1, 4)) as pool:
        entries = list(pool.map(lambda p: _inspect(p, verify_frames), paths))
    reference = next((e for e in entries if e.status != "unreadable"), None)
    start, recorded = 0, 0
    for entry in entries:
        _classify(entry, reference, min_fraction)
        entry.recorded_offset = recorded
        recorded = None if recorded is None or entry.header_frames is None else recorded + entry.header_frames
        if entry.usable:
            used = entry.readable_frames if entry.readable_frames is not None else entry.header_frames
            entry.frame_range = (start, start + int(used))
            start += int(used)
    return HealthReport(entries, verify_frames=verify_frames, min_fraction=float(min_fraction))

