"""Lazy, picklable movie readers and their concatenation into one dask array.

Every reader exposes the same small interface (``path``, ``n_frames``,
``height``, ``width``, ``dtype``, ``read(start, stop)``) and keeps **no open
file handle** between calls: a reader only stores its path and a few numbers,
so it pickles cheaply and can be shipped to dask distributed workers, and each
``read`` opens, reads and closes the file itself.

Frames always come back as ``(stop - start, height, width)`` arrays in the
file's native dtype; colour frames are converted to grey with OpenCV's
``cvtColor`` (``BGR2GRAY`` for OpenCV-decoded video/PNG, ``RGB2GRAY`` for TIFF,
which stores RGB), keeping the dtype.

:func:`lazy_movie` concatenates several readers into one
``(frame, height, width)`` dask array whose chunks each decode only their own
frames.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import cv2
import dask.array as da
import numpy as np
import tifffile
import zarr
from dask.base import tokenize

from mps_core.io.natural import natural_sort

__all__ = [
    "VIDEO_SUFFIXES",
    "TIFF_SUFFIXES",
    "IMAGE_SUFFIXES",
    "SUPPORTED_KINDS",
    "ReadError",
    "Reader",
    "VideoReader",
    "TiffReader",
    "ImageFolderReader",
    "NpyReader",
    "ZarrReader",
    "open_reader",
    "lazy_movie",
    "to_grey",
]

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
SUPPORTED_KINDS = (
    "video file (.avi .mp4 .mkv .mov), multi-page TIFF (.tif .tiff), "
    "folder of single-frame images (.tif .tiff .png), NumPy array (.npy), "
    "zarr array or group with one 3-D array (.zarr folder)"
)

# Codecs whose every frame is a key frame: seeking with CAP_PROP_POS_FRAMES
# lands exactly on the requested frame. For inter-frame codecs (H.264, XVID,
# ...) OpenCV's seek can be off by a few frames depending on the container's
# timestamps, so "auto" mode decodes sequentially from frame 0 instead.
_INTRA_FOURCCS = frozenset(
    {
        "FFV1", "MJPG", "MJPA", "AVRN", "LJPG", "JPEG", "GREY", "Y800", "Y8  ", "Y16 ",
        "DIB ", "RAW ", "RGBA", "BGRA", "HFYU", "FFVH", "UYVY", "YUY2", "YUYV", "I420",
        "IYUV", "PNG ", "MPNG", "RGB ", "\x00\x00\x00\x00",
    }
)
_SEEK_MODES = ("auto", "seek", "sequential")


class ReadError(ValueError):
    """A frame range could not be read from a file that opened fine (e.g. truncated)."""


# --------------------------------------------------------------------------- helpers


def to_grey(frame: np.ndarray, order: str = "bgr") -> np.ndarray:
    """Convert one ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` frame to grey.

    ``order`` is the channel order of colour frames: ``"bgr"`` (OpenCV) or
    ``"rgb"`` (TIFF). The dtype is kept; dtypes OpenCV cannot convert
    (anything but uint8/uint16/float32) use the same ITU-R 601 weights in numpy.
    """
    if order not in ("bgr", "rgb"):
        raise ValueError(f"order must be 'bgr' or 'rgb', got {order!r}")
    if frame.ndim == 2:
        return frame
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ValueError(f"cannot convert frame of shape {frame.shape} to grey")
    if frame.shape[2] == 1:
        return frame[:, :, 0]
    if frame.dtype in (np.uint8, np.uint16, np.float32):
        code = {
            ("bgr", 3): cv2.COLOR_BGR2GRAY,
            ("bgr", 4): cv2.COLOR_BGRA2GRAY,
            ("rgb", 3): cv2.COLOR_RGB2GRAY,
            ("rgb", 4): cv2.COLOR_RGBA2GRAY,
        }[(order, frame.shape[2])]
        return cv2.cvtColor(np.ascontiguousarray(frame), code)
    weights = np.array([0.114, 0.587, 0.299] if order == "bgr" else [0.299, 0.587, 0.114])
    grey = frame[:, :, :3].astype(np.float64) @ weights
    if np.issubdtype(frame.dtype, np.integer):
        grey = np.rint(grey)
    return grey.astype(frame.dtype)


def _stat_token(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) so dask tokens change when the file changes."""
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return -1, -1


# --------------------------------------------------------------------------- base


class Reader(ABC):
    """Common interface of all movie readers (see module docstring)."""

    kind: str = "abstract"
    path: Path
    n_frames: int
    height: int
    width: int
    dtype: np.dtype

    @abstractmethod
    def _read(self, start: int, stop: int) -> np.ndarray:
        """Read frames ``[start, stop)`` (already validated, non-empty)."""

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as a ``(stop - start, height, width)`` array."""
        start, stop = self._check_range(start, stop)
        if stop == start:
            return np.empty((0, self.height, self.width), self.dtype)
        return self._read(start, stop)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_frames, self.height, self.width)

    def __len__(self) -> int:
        return self.n_frames

    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_frames:
            raise ValueError(
                f"{self.path}: frame range [{start}, {stop}) outside [0, {self.n_frames}]"
            )
        return start, stop

    def _check_frame_shape(self, frame: np.ndarray, index: int) -> None:
        if frame.shape != (self.height, self.width):
            raise ReadError(
                f"{self.path}: frame {index} has shape {frame.shape}, "
                f"expected {(self.height, self.width)}"
            )

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, str(self.path), self.shape, str(self.dtype), _stat_token(self.path))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, n_frames={self.n_frames}, "
            f"height={self.height}, width={self.width}, dtype={self.dtype})"
        )


# --------------------------------------------------------------------------- video


def _fourcc_string(code: float) -> str:
    code = int(code)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))


def _open_capture(path: Path) -> cv2.VideoCapture:
    """Open with the FFmpeg backend (consistent across platforms), else any backend.

    When OpenCV is limited to one thread (the pipeline does so: dask already runs one task
    per core), FFmpeg decodes in one thread too; its own decoding threads only add
    switching (measured: 4 % more CPU per frame with 2 dask workers).
    """
    params = [cv2.CAP_PROP_N_THREADS, 1] if cv2.getNumThreads() == 1 else []
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"{path}: cannot open video (unreadable file or unsupported codec)")
    return cap


class VideoReader(Reader):
    """Video files (.avi .mp4 .mkv .mov) decoded with OpenCV's FFmpeg backend.

    Parameters
    ----------
    path
        Video file.
    n_frames
        Number of frames to expose. ``None`` uses the container header
        (``CAP_PROP_FRAME_COUNT``), which a truncated or oddly muxed file can
        overstate: pass the decodable count from :func:`mps_core.io.health.check_files`
        to be safe. A header count of 0 or less is replaced by a decode count.
    seek_mode
        ``"seek"``: jump with ``CAP_PROP_POS_FRAMES`` (exact for intra-only
        codecs). ``"sequential"``: always decode from frame 0 (exact for every
        codec, but reading late chunks costs a decode of everything before them).
        ``"auto"`` (default): seek for intra-only codecs (FFV1, MJPG, raw, ...),
        sequential otherwise.
    """

    kind = "video"

    def __init__(self, path: str | os.PathLike, n_frames: int | None = None, seek_mode: str = "auto"):
        if seek_mode not in _SEEK_MODES:
            raise ValueError(f"seek_mode must be one of {_SEEK_MODES}, got {seek_mode!r}")
        self.path = Path(path)
        self.seek_mode = seek_mode
        cap = _open_capture(self.path)
        try:
            self.header_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            self.fps = float(cap.get(cv2.CAP_PROP_FPS))
            self.fourcc = _fourcc_string(cap.get(cv2.CAP_PROP_FOURCC))
        finally:
            cap.release()
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"{self.path}: video reports frame size {self.height}x{self.width} (height x width)")
        # OpenCV's FFmpeg backend always hands out 8-bit BGR frames.
        self.dtype = np.dtype(np.uint8)
        if n_frames is None:
            n_frames = self.header_frames if self.header_frames > 0 else self.count_decodable()
        if int(n_frames) < 0:
            raise ValueError(f"{self.path}: n_frames must be >= 0, got {n_frames}")
        self.n_frames = int(n_frames)

    @property
    def seeks(self) -> bool:
        """Whether ``read`` jumps straight to ``start`` instead of decoding from 0."""
        if self.seek_mode == "auto":
            return self.fourcc.upper() in _INTRA_FOURCCS
        return self.seek_mode == "seek"

    def count_decodable(self, limit: int | None = None) -> int:
        """Count frames that really decode, from frame 0 until the first failure.

        ``grab`` decodes without the colour conversion, so this costs one decode
        pass (~6 ms/frame for 608x608 FFV1 here). ``limit`` stops counting early.
        """
        cap = _open_capture(self.path)
        n = 0
        try:
            while (limit is None or n < limit) and cap.grab():
                n += 1
        finally:
            cap.release()
        return n

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.height, self.width), self.dtype)
        cap = _open_capture(self.path)
        try:
            self._move_to(cap, start)
            for i in range(stop - start):
                ok, frame = cap.read()
                if not ok or frame is None:
                    raise ReadError(
                        f"{self.path}: could not decode frame {start + i} "
                        f"(file holds fewer frames than {self.n_frames}; truncated?)"
                    )
                if frame.shape[:2] != (self.height, self.width):
                    self._check_frame_shape(frame[:, :, 0] if frame.ndim == 3 else frame, start + i)
                if frame.ndim == 3 and frame.shape[2] == 3:
                    cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY, dst=out[i])  # straight into the output
                else:
                    out[i] = to_grey(frame, "bgr")
        finally:
            cap.release()
        return out

    def _move_to(self, cap: cv2.VideoCapture, start: int) -> None:
        if start == 0:
            return
        if self.seeks:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
            return
        for i in range(start):
            if not cap.grab():
                raise ReadError(f"{self.path}: could not decode frame {i} while skipping to {start}")


# --------------------------------------------------------------------------- TIFF


def _tiff_layout(path: Path) -> tuple[int, int, int, int, np.dtype]:
    """(n_frames, height, width, samples, dtype) of the first series of a TIFF."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes = tuple(series.shape), series.axes
        n_pages = len(series.pages)
        dtype = np.dtype(series.dtype)
    samples = 1
    if axes.endswith("S"):
        samples, shape = shape[-1], shape[:-1]
    if len(shape) < 2:
        raise ValueError(f"{path}: TIFF series of shape {series.shape} is not an image stack")
    height, width = shape[-2:]
    n_frames = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
    if n_pages != n_frames:
        # One page holding several frames (or tiles): frame-wise lazy access by
        # page index would be wrong, so refuse rather than read garbage.
        raise ValueError(
            f"{path}: TIFF has {n_pages} pages for {n_frames} frames; only one-frame-per-page "
            "stacks are supported"
        )
    return n_frames, int(height), int(width), int(samples), dtype


class TiffReader(Reader):
    """Multi-page TIFF stack (one frame per page), read page range by page range."""

    kind = "tiff"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            layout = _tiff_layout(self.path)
        except ValueError:
            raise
        except Exception as exc:  # tifffile raises several types for bad files
            raise ValueError(f"{self.path}: cannot read TIFF ({exc})") from exc
        self.n_frames, self.height, self.width, self.samples, self.dtype = layout

    def _read(self, start: int, stop: int) -> np.ndarray:
        try:
            with tifffile.TiffFile(self.path) as tif:
                data = tif.asarray(key=range(start, stop), series=0)
        except Exception as exc:
            raise ReadError(f"{self.path}: could not read pages [{start}, {stop}) ({exc})") from exc
        frame_shape = (self.height, self.width) + ((self.samples,) if self.samples > 1 else ())
        data = data.reshape((stop - start,) + frame_shape)
        if self.samples > 1:
            data = np.stack([to_grey(f, "rgb") for f in data])
        return np.ascontiguousarray(data)


# --------------------------------------------------------------------------- image folder


def _read_image(path: Path) -> np.ndarray:
    """One grey frame from a .png (OpenCV, BGR) or .tif/.tiff (tifffile, RGB) file."""
    if path.suffix.lower() == ".png":
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ReadError(f"{path}: cannot read PNG image")
        return to_grey(img, "bgr")
    try:
        img = tifffile.imread(path)
    except Exception as exc:
        raise ReadError(f"{path}: cannot read TIFF image ({exc})") from exc
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        return to_grey(img, "rgb")
    if img.ndim != 2:
        raise ReadError(f"{path}: image of shape {img.shape} is not a single frame")
    return img


class ImageFolderReader(Reader):
    """A folder of single-frame images (.tif .tiff .png), one frame per file, naturally sorted.

    Only file *names* are stored (relative to the folder); shape and dtype come
    from the first image and every later image must match.
    """

    kind = "image_folder"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: not a folder")
        names = [p.name for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not names:
            raise ValueError(f"{self.path}: folder holds no {'/'.join(IMAGE_SUFFIXES)} images")
        self.names = natural_sort(names)
        first = _read_image(self.path / self.names[0])
        self.n_frames = len(self.names)
        self.height, self.width = first.shape
        self.dtype = first.dtype

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.height, self.width), self.dtype)
        for i, name in enumerate(self.names[start:stop]):
            img = _read_image(self.path / name)
            self._check_frame_shape(img, start + i)
            out[i] = img
        return out


# --------------------------------------------------------------------------- npy / zarr


class NpyReader(Reader):
    """A 3-D ``(frame, height, width)`` .npy file, memory-mapped on every read."""

    kind = "npy"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot load .npy ({exc})") from exc
        if not isinstance(arr, np.ndarray) or arr.ndim != 3:
            shape = getattr(arr, "shape", None)
            raise ValueError(f"{self.path}: expected a 3-D (frame, height, width) array, got shape {shape}")
        self.n_frames, self.height, self.width = (int(s) for s in arr.shape)
        self.dtype = arr.dtype
        del arr  # drop the memmap: readers keep no open handles

    def _read(self, start: int, stop: int) -> np.ndarray:
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return np.array(arr[start:stop])


class ZarrReader(Reader):
    """A 3-D zarr array, or a zarr group holding exactly one 3-D array (searched recursively).

    ``array_path`` selects the array inside a group explicitly (e.g. when an
    xarray dataset stores several 3-D variables).
    """

    kind = "zarr"

    def __init__(self, path: str | os.PathLike, array_path: str | None = None):
        self.path = Path(path)
        try:
            node = zarr.open(store=str(self.path), mode="r")
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot open zarr store ({exc})") from exc
        if isinstance(node, zarr.Array):
            if array_path not in (None, ""):
                raise ValueError(f"{self.path}: is a single array; array_path {array_path!r} not allowed")
            arr, self.array_path = node, None
        else:
            self.array_path = array_path or self._single_3d_array(node)
            try:
                arr = node[self.array_path]
            except KeyError as exc:
                raise ValueError(f"{self.path}: no array {self.array_path!r} in zarr group") from exc
        if not isinstance(arr, zarr.Array) or arr.ndim != 3:
            raise ValueError(f"{self.path}: expected a 3-D (frame, height, width) zarr array")
        self.n_frames, self.height, self.width = (int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype)

    def _single_3d_array(self, group: zarr.Group) -> str:
        found = [name for name, m in group.members(max_depth=None) if isinstance(m, zarr.Array) and m.ndim == 3]
        if len(found) != 1:
            raise ValueError(
                f"{self.path}: zarr group must hold exactly one 3-D array, found {found or 'none'}; "
                "pass array_path"
            )
        return found[0]

    def _open(self) -> zarr.Array:
        if self.array_path is None:
            return zarr.open_array(store=str(self.path), mode="r")
        return zarr.open_array(store=str(self.path), path=self.array_path, mode="r")

    def _read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self._open()[start:stop])

    def __dask_tokenize__(self) -> tuple:
        return super().__dask_tokenize__() + (self.array_path,)


# --------------------------------------------------------------------------- dispatch


def _is_zarr_dir(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any(
        (path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup")
    )


def open_reader(path: str | os.PathLike) -> Reader:
    """Pick the reader for ``path`` from its suffix (files) or content (folders)."""
    path = Path(path)
    if path.is_dir():
        if _is_zarr_dir(path):
            return ZarrReader(path)
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            return ImageFolderReader(path)
        raise ValueError(f"{path}: folder is neither a zarr store nor a folder of images; supported: {SUPPORTED_KINDS}")
    if not path.exists():
        raise ValueError(f"{path}: file does not exist")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return VideoReader(path)
    if suffix in TIFF_SUFFIXES:
        return TiffReader(path)
    if suffix == ".npy":
        return NpyReader(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; supported: {SUPPORTED_KINDS}")


# --------------------------------------------------------------------------- concatenation


class ConcatenatedMovie:
    """Array-like view of several readers end to end, for :func:`dask.array.from_array`.

    ``__getitem__`` reads only the frames the key asks for, so each dask chunk
    decodes just its own frames (touching two readers when it straddles a
    file boundary). Holds only the (picklable) readers.
    """

    ndim = 3

    def __init__(self, readers: list[Reader]):
        self.readers = list(readers)
        counts = np.array([r.n_frames for r in self.readers], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        first = self.readers[0]
        self.shape = (int(self.offsets[-1]), first.height, first.width)
        self.dtype = np.result_type(*[r.dtype for r in self.readers])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Global frames ``[start, stop)``."""
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        if (0 <= k < len(self.readers) and stop <= self.offsets[k + 1]
                and self.readers[k].dtype == self.dtype):  # one file: no copy
            local = start - int(self.offsets[k])
            return self.readers[k].read(local, local + stop - start)
        out = np.empty((stop - start,) + self.shape[1:], self.dtype)
        for k, reader in enumerate(self.readers):
            lo = max(start, int(self.offsets[k]))
            hi = min(stop, int(self.offsets[k + 1]))
            if lo < hi:
                local = lo - int(self.offsets[k])
                out[lo - start : hi - start] = reader.read(local, local + hi - lo)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        frames = key[0]
        if isinstance(frames, (int, np.integer)):
            index = int(frames) + (self.shape[0] if frames < 0 else 0)
            return self.read(index, index + 1)[0][key[1:]]
        if not isinstance(frames, slice):
            raise TypeError(f"unsupported frame index {frames!r}")
        idx = range(*frames.indices(self.shape[0]))
        if len(idx) == 0:
            return np.empty((0,) + self.shape[1:], self.dtype)[(slice(None),) + key[1:]]
        lo, hi = min(idx), max(idx) + 1
        block = self.read(lo, hi)
        if idx.step != 1:
            block = block[np.asarray(idx) - lo]
        return block[(slice(None),) + key[1:]]

    def __dask_tokenize__(self) -> tuple:
        return ("ConcatenatedMovie", tokenize(*self.readers))


def lazy_movie(readers: list[Reader], chunk_frames: int, read_frames: int | None = None) -> da.Array:
    """Readers concatenated into one lazy ``(frame, height, width)`` dask array.

    Chunks hold ``chunk_frames`` frames (the last one fewer) and the full
    frame; computing a chunk reads only that chunk's frames. The readers are
    stored in the graph once (one key, ``inline_array=False``), so
    distributed workers receive them once rather than with every task.

    ``read_frames`` (optional, >= 2 * ``chunk_frames``): decode in blocks of as many
    whole chunks as fit in ``read_frames`` frames and cut them into the chunks. Why:
    OpenCV's seek in a video decodes the 16 frames before the target again (measured:
    with 45-frame chunks, 38 % of 2a's decoding was spent seeking), so fewer, longer
    reads cost less (a block that starts a file needs no seek). Blocks are whole chunks
    so the chunks are plain slices of one block each: blocks cut at file starts made
    chunks that join two blocks, and dask then held more blocks as the movie got longer
    (measured: 2a peak 620 / 711 / 907 MB at 3,000 / 6,000 / 12,000 frames, against a
    flat ~590 MB now). A chunk costs the decoding of its whole block, so use this for
    passes that read every frame.
    """
    readers = list(readers)
    if not readers:
        raise ValueError("readers: need at least one reader")
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
    if read_frames is not None and (isinstance(read_frames, bool) or not isinstance(read_frames, (int, np.integer))
                                    or read_frames < 1):
        raise ValueError(f"read_frames must be None or a positive integer, got {read_frames!r}")
    first = readers[0]
    for reader in readers[1:]:
        if (reader.height, reader.width) != (first.height, first.width):
            raise ValueError(
                f"{reader.path}: frame size {reader.height}x{reader.width} differs from "
                f"{first.path} ({first.height}x{first.width})"
            )
    movie = ConcatenatedMovie(readers)
    if movie.shape[0] == 0:
        raise ValueError("readers: the movie has no frames")
    blocked = read_frames is not None and read_frames >= 2 * chunk_frames
    frame_chunks = int(chunk_frames) * (int(read_frames) // int(chunk_frames) if blocked else 1)
    name = "movie-" + tokenize(movie, frame_chunks)
    arr = da.from_array(
        movie,
        chunks=(frame_chunks, movie.shape[1], movie.shape[2]),
        name=name,
        lock=False,
        asarray=False,
        fancy=False,
        inline_array=False,
        meta=np.empty((0, 0, 0), movie.dtype),
    )
    return arr.rechunk({0: int(chunk_frames)}) if blocked else arr
