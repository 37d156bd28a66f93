"""Writing the outputs of the stitching tools: safely, losslessly, row-exact.

* :func:`plan_outputs` names every file a run may write and refuses, before anything is
  written, when one exists (unless ``force``) or when the output folder is an input's
  folder (inputs are never touched).
* :class:`Outputs` writes each file under a temporary name in the output folder and renames
  them all into place only when the run succeeded; a failed or cancelled run removes them,
  so it leaves no partial file.
* :class:`VideoOut` writes the frames losslessly: FFV1 in an ``.avi`` through OpenCV (checked
  bit-exact with opencv-python-headless 5; step 2a reads it like any .avi), or a multi-page
  TIFF for data that is not 8-bit (OpenCV's video I/O is 8-bit).
* :class:`RowCopier` copies metadata rows from their CSV by byte offset, changing only the
  frame index column, so every other value keeps its exact text.
* :func:`debug_canvas` draws the candidates of one frame side by side for the debug video.
"""

from __future__ import annotations

import csv
import os
import queue
import threading
import uuid
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from .streams import FRAME_COL, Metadata, split_line

__all__ = [
    "FORMATS",
    "OutputsExist",
    "plan_outputs",
    "Outputs",
    "VideoOut",
    "DebugVideo",
    "Background",
    "RowCopier",
    "common_header",
    "debug_canvas",
]

FORMATS = ("auto", "avi", "tiff")
_SUFFIX = {"avi": ".avi", "tiff": ".tif"}
BIGTIFF_BYTES = 2**32 - 2**25  # classic TIFF offsets are 32-bit; keep room for the IFDs


class OutputsExist(ValueError):
    """Some outputs already exist and ``force`` was not given; ``paths`` lists them."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        shown = ", ".join(str(p) for p in self.paths[:4]) + (" ..." if len(self.paths) > 4 else "")
        verb = "exists" if len(self.paths) == 1 else "exist"
        super().__init__(f"{shown}: already {verb}; nothing was written. Overwrite with --force "
                         f"(force=True in Python), or choose another output folder or name")


def video_format(fmt: str, dtype: np.dtype) -> str:
    """``avi`` or ``tiff``: ``auto`` is FFV1 .avi for 8-bit frames, TIFF otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        return "avi" if np.dtype(dtype) == np.uint8 else "tiff"
    if fmt == "avi" and np.dtype(dtype) != np.uint8:
        raise ValueError(f"format 'avi' (FFV1 through OpenCV) holds 8-bit frames only; these "
                         f"are {np.dtype(dtype)}: use format 'tiff'")
    return fmt


def plan_outputs(folder: str | os.PathLike, name: str, fmt: str, dtype: np.dtype,
                 inputs: list[Path], force: bool, *, produce: tuple[str, ...],
                 possible: tuple[str, ...]) -> tuple[dict[str, Path], list[Path]]:
    """Paths of this run's outputs, checked before anything is written.

    Kinds: ``video`` (``<name>.avi`` / ``.tif``), ``metadata`` (``<name>.csv``), ``decisions``
    (``<name>_decisions.csv``), ``debug`` (``<name>_debug.mp4``: .mp4 so that step 2a's
    default ``*.avi`` pattern never picks it up), ``log`` (``<name>_log.txt``). Every kind in
    ``possible`` counts when checking for existing files (a stale debug video of an earlier
    run with the same name must not sit beside new results); ``produce`` are written.
    Returns the paths to write and the existing files to replace (with ``force``).
    """
    if not name or name != Path(name).name or name in (".", ".."):
        raise ValueError(f"output name {name!r}: must be a plain file name without folders")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: is a file; the output must be a folder")
    out = folder.resolve()
    for path in inputs:
        if Path(path).resolve().parent == out:
            raise ValueError(f"{folder}: holds the input {Path(path).name}; write the outputs "
                             f"to another folder (inputs are never written to)")
    suffix = _SUFFIX[video_format(fmt, dtype)]
    names = {"video": f"{name}{suffix}", "metadata": f"{name}.csv",
             "decisions": f"{name}_decisions.csv", "debug": f"{name}_debug.mp4",
             "log": f"{name}_log.txt"}
    paths = {k: folder / names[k] for k in possible}
    if "video" in possible:  # the other video format of the same name is an output too
        other = ".tif" if suffix == ".avi" else ".avi"
        paths["video_other"] = folder / f"{name}{other}"
    existing = [p for p in paths.values() if p.exists()]
    if existing and not force:
        raise OutputsExist(existing)
    return {k: paths[k] for k in produce}, existing


class Outputs:
    """Temporary files for a run's outputs; :meth:`commit` renames them into place.

    Used as a context manager: leaving it with an exception removes every temporary file.
    """

    def __init__(self, paths: dict[str, Path], stale: list[Path] = ()):
        self.final = {k: Path(v) for k, v in paths.items()}
        self.stale = list(stale)
        self.temp: dict[str, Path] = {}
        self.committed = False

    def __enter__(self) -> "Outputs":
        folder = next(iter(self.final.values())).parent
        folder.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        for kind, path in self.final.items():
            # The suffix stays last: OpenCV picks the container from it.
            self.temp[kind] = path.with_name(f".{path.stem}.partial-{tag}{path.suffix}")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def __getitem__(self, kind: str) -> Path:
        return self.temp[kind]

    def __contains__(self, kind: str) -> bool:
        return kind in self.temp

    def commit(self) -> dict[str, Path]:
        """Replace earlier outputs of the same name and move the new files into place."""
        for path in self.stale:
            if path not in self.final.values():
                path.unlink(missing_ok=True)
        for kind, tmp in self.temp.items():
            if not tmp.exists():
                raise RuntimeError(f"{self.final[kind]}: was not written")
            tmp.replace(self.final[kind])
        self.committed = True
        return dict(self.final)

    def abort(self) -> None:
        for tmp in self.temp.values():
            tmp.unlink(missing_ok=True)


class VideoOut:
    """Lossless frame writer: FFV1 ``.avi`` (8-bit) or multi-page TIFF, frame by frame."""

    def __init__(self, path: Path, fmt: str, height: int, width: int, dtype: np.dtype,
                 fps: float, n_frames: int):
        self.path, self.fmt, self.n = Path(path), fmt, 0
        self.shape, self.dtype = (int(height), int(width)), np.dtype(dtype)
        if fmt == "avi":
            self.writer = cv2.VideoWriter(str(self.path), cv2.CAP_FFMPEG,
                                          cv2.VideoWriter_fourcc(*"FFV1"), float(fps),
                                          (int(width), int(height)), False)
            if not self.writer.isOpened():
                raise RuntimeError(f"{self.path}: OpenCV cannot write FFV1 video here; use "
                                   f"format 'tiff'")
        else:
            import tifffile

            nbytes = int(n_frames) * int(height) * int(width) * self.dtype.itemsize
            self.writer = tifffile.TiffWriter(self.path, bigtiff=nbytes > BIGTIFF_BYTES)

    def write(self, frames: np.ndarray) -> None:
        """Append (k, H, W) frames."""
        for frame in frames:
            if frame.shape != self.shape or frame.dtype != self.dtype:
                raise ValueError(f"{self.path}: frame {self.n} is {frame.shape} {frame.dtype}, "
                                 f"the video {self.shape} {self.dtype}")
            if self.fmt == "avi":
                self.writer.write(np.ascontiguousarray(frame))
            else:  # one series of single pages, which TiffReader reads lazily
                self.writer.write(frame, contiguous=True, photometric="minisblack", metadata=None)
            self.n += 1

    def close(self) -> None:
        if self.fmt == "avi":
            self.writer.release()
        else:
            self.writer.close()


class DebugVideo:
    """Colour MP4 (MPEG-4 part 2, lossy: for looking only) of debug canvases."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = Path(path), float(fps), None

    def write(self, canvases: np.ndarray) -> None:
        """Append (k, h, w, 3) BGR uint8 canvases."""
        for canvas in canvases:
            if self.writer is None:
                h, w = canvas.shape[:2]
                self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                              self.fps, (w, h), True)
                if not self.writer.isOpened():
                    raise RuntimeError(f"{self.path}: OpenCV cannot write MP4 video here; run "
                                       f"without the debug video")
            self.writer.write(canvas)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class Background:
    """Runs a writer's ``write`` calls in a thread, so encoding overlaps the next chunk's
    work (OpenCV's encoders release the GIL); at most one batch waits. Errors surface at the
    next ``write`` or at ``close``."""

    def __init__(self, target):
        self.target, self.error = target, None
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, name="stitch-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is None:  # after an error keep draining, so write() never blocks
                try:
                    self.target.write(batch)
                except BaseException as e:  # noqa: BLE001 -- re-raised in the caller
                    self.error = e

    def write(self, batch: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self.target.close()
        if self.error is not None:
            raise self.error


def common_header(metas: list[Metadata]) -> list[str]:
    """The first CSV's header; every other CSV must have the same columns (any order)."""
    header = metas[0].header
    for meta in metas[1:]:
        if set(meta.header) != set(header) or len(meta.header) != len(header):
            only = sorted(set(meta.header) ^ set(header)) or ["(repeated names)"]
            raise ValueError(f"{meta.path}: its columns differ from {metas[0].path.name} "
                             f"({', '.join(only)}); give CSVs of one recording system")
    return header


class RowCopier:
    """Copy metadata rows from their CSV by byte offset into ``out_header`` order, writing a
    new frame index; every other field keeps its text."""

    def __init__(self, meta: Metadata, out_header: list[str]):
        self.meta = meta
        self.columns = [meta.header.index(c) for c in out_header]
        self.frame_at = out_header.index(FRAME_COL)
        self.file: IO[bytes] | None = None

    def __enter__(self) -> "RowCopier":
        self.file = open(self.meta.path, "rb")
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()

    def copy(self, rows: np.ndarray, new_frame: int | np.ndarray, writer) -> None:
        """Write rows (indices into the metadata) with ``new_frame`` (one or per row)."""
        frames = np.broadcast_to(np.asarray(new_frame, np.int64), np.shape(rows))
        for row, frame in zip(rows, frames):
            self.file.seek(int(self.meta.offset[row]))
            fields = split_line(self.file.readline().decode("utf-8"))
            out = [fields[i] for i in self.columns]
            out[self.frame_at] = str(int(frame))
            writer.writerow(out)


def csv_writer(handle) -> "csv._writer":
    """The CSV dialect of every table written here (comma, ``\\n`` line ends)."""
    return csv.writer(handle, lineterminator="\n")


# ----------------------------------------------------------------------------- debug video

_GREEN, _RED, _GREY = (0, 200, 0), (0, 0, 255), (60, 60, 60)
_HEADER = 30


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    f = frame.astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    return np.clip((f - lo) * (255.0 / max(hi - lo, 1e-9)), 0, 255).astype(np.uint8)


def debug_canvas(frames: list[np.ndarray | None], chosen: int, labels: list[str],
                 title: str) -> np.ndarray:
    """One debug frame: each stream's copy side by side (BGR uint8).

    The chosen copy has a green frame; in the others, pixels that differ from the chosen
    copy are tinted red; a stream without this frame shows a grey panel. ``labels`` go above
    each panel, ``title`` above them all.
    """
    ref = frames[chosen]
    h, w = ref.shape
    gap = 4
    width = len(frames) * (w + gap) + gap
    height = h + _HEADER + 2 * gap
    canvas = np.zeros((height + height % 2, width + width % 2, 3), np.uint8)
    cv2.putText(canvas, title, (gap, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
    for k, frame in enumerate(frames):
        x0, y0 = gap + k * (w + gap), _HEADER + gap
        cv2.putText(canvas, labels[k], (x0, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                    _GREEN if k == chosen else (220, 220, 220), 1)
        if frame is None:
            canvas[y0:y0 + h, x0:x0 + w] = _GREY
            continue
        panel = cv2.cvtColor(_to_uint8(frame), cv2.COLOR_GRAY2BGR)
        if k != chosen:
            differs = frame != ref
            panel[differs] = (0.4 * panel[differs] + 0.6 * np.array(_RED)).astype(np.uint8)
        canvas[y0:y0 + h, x0:x0 + w] = panel
        if k == chosen:
            cv2.rectangle(canvas, (x0 - 2, y0 - 2), (x0 + w + 1, y0 + h + 1), _GREEN, 1)
    return canvas
