"""Movie export for other tools: TIFF stack, NumPy .npy, MATLAB .mat or zarr.

Every writer streams the frames batch by batch (:func:`mps_core.movies.iter_frames`), so
memory stays bounded for any recording length:

* ``tiff``: one multi-page stack (tifffile, frames written as they are read), BigTIFF when
  the data pass ~4 GB (the classic TIFF offset limit);
* ``npy``: ``numpy.lib.format.open_memmap`` filled batch by batch;
* ``mat``: MATLAB level-5 MAT-file written frame by frame by the small writer below (scipy's
  ``savemat`` needs the whole array in memory). The movie is stored as ``movie`` of size
  height x width x frames (MATLAB's usual layout, and what column-major order lets us stream),
  with ``frame`` and ``time_s`` vectors. MATLAB limits a v5 variable to 2 GB: a bigger export
  is refused before anything is written, suggesting TIFF;
* ``zarr``: a zarr (format 2, widely readable) store that xarray opens as a Dataset with the
  frame coordinates, chunked by frames.

TIFF and .npy get a ``<name>_frames.csv`` beside them with the frame-index columns (original
frame number, movie number, frame in movie, time). Values keep the stage's dtype (uint8 for
raw, float32 otherwise). Every file is written under a temporary name and renamed at the end,
so an interrupted export leaves no half file.
"""

from __future__ import annotations

import shutil
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import xarray as xr

from . import movies as mv

FORMATS = ("tiff", "npy", "mat", "zarr")
SUFFIX = {"tiff": ".tif", "npy": ".npy", "mat": ".mat", "zarr": ".zarr"}
MAT_MAX_BYTES = 2**31 - 1  # MATLAB: variables of a v5 / v7 MAT-file must stay under 2 GB
BIGTIFF_BYTES = 2**32 - 2**25  # classic TIFF offsets are 32-bit; keep room for the IFDs
ZARR_CHUNK_BYTES = 16 * 1024**2


@dataclass
class MovieResult:
    path: Path
    format: str
    shape: tuple[int, ...]
    dtype: str
    n_frames: int
    seconds: float
    files: list[Path] = field(default_factory=list)

    def line(self) -> str:
        extra = "".join(f", {p.name}" for p in self.files if p != self.path)
        return (f"wrote {self.path} ({self.format}, {' x '.join(map(str, self.shape))} "
                f"{self.dtype}, {self.seconds:.1f} s){extra}")


# ============================================================================== temp files


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _commit(tmp: Path, path: Path) -> None:
    """Move a finished temporary file / folder into place (replacing an older export)."""
    if path.is_dir():
        shutil.rmtree(path)
    tmp.replace(path)


# ============================================================================== frames CSV


def write_frames_csv(path: Path, table: dict[str, np.ndarray]) -> None:
    """The frame-index columns as CSV (written to a temporary name, then renamed)."""
    cols = list(table)
    n = len(table[cols[0]]) if cols else 0
    fmt = {k: ("{:.6f}" if np.issubdtype(np.asarray(v).dtype, np.floating) else "{}")
           for k, v in table.items()}
    lines = [",".join(cols)]
    lines += [",".join(fmt[c].format(table[c][i]) for c in cols) for i in range(n)]
    tmp = _tmp_name(path)
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


# ============================================================================== TIFF


def write_tiff(path: Path, frames: Iterator[np.ndarray], shape: tuple[int, int, int],
               dtype: np.dtype, description: str = "") -> None:
    """A (frame, height, width) stack written page by page from ``frames``."""
    import tifffile

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with tifffile.TiffWriter(path, bigtiff=nbytes > BIGTIFF_BYTES) as tif:
        tif.write(_pages(frames), shape=shape, dtype=dtype, photometric="minisblack",
                  metadata={"axes": "TYX"}, description=description or None)


def _pages(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    for block in batches:
        yield from block


# ============================================================================== MAT v5

_MI = {"int8": 1, "uint8": 2, "int16": 3, "uint16": 4, "int32": 5, "uint32": 6,
       "single": 7, "double": 9, "int64": 12, "uint64": 13, "matrix": 14}
_MX = {np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.int8): 8,
       np.dtype(np.uint8): 9, np.dtype(np.int16): 10, np.dtype(np.uint16): 11,
       np.dtype(np.int32): 12, np.dtype(np.uint32): 13, np.dtype(np.int64): 14,
       np.dtype(np.uint64): 15}
_MI_OF = {np.dtype(np.float64): "double", np.dtype(np.float32): "single",
          np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16",
          np.dtype(np.uint16): "uint16", np.dtype(np.int32): "int32",
          np.dtype(np.uint32): "uint32", np.dtype(np.int64): "int64",
          np.dtype(np.uint64): "uint64"}


def _pad8(n: int) -> int:
    return (8 - n % 8) % 8


def _element(mi: str, payload: bytes) -> bytes:
    return struct.pack("<II", _MI[mi], len(payload)) + payload + b"\0" * _pad8(len(payload))


def mat_variable_bytes(name: str, dims: tuple[int, ...], dtype: np.dtype) -> int:
    """Size of one numeric variable's miMATRIX element (the 2 GB limit applies to it)."""
    data = int(np.prod(dims)) * np.dtype(dtype).itemsize
    return (8 + 16  # the miMATRIX tag, the array flags element
            + 8 + 4 * len(dims) + _pad8(4 * len(dims))  # dimensions
            + 8 + len(name) + _pad8(len(name))  # name
            + 8 + data + _pad8(data))  # the values


def _matrix_header(name: str, dims: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The miMATRIX tag, array flags, dimensions, name and the data tag (data follows)."""
    dtype = np.dtype(dtype)
    if dtype not in _MX:
        raise ValueError(f"MAT export: dtype {dtype} is not supported")
    total = mat_variable_bytes(name, dims, dtype)
    data = int(np.prod(dims)) * dtype.itemsize
    out = struct.pack("<II", _MI["matrix"], total - 8)
    out += _element("uint32", struct.pack("<II", _MX[dtype], 0))
    out += _element("int32", struct.pack(f"<{len(dims)}i", *dims))
    out += _element("int8", name.encode("ascii"))
    out += struct.pack("<II", _MI[_MI_OF[dtype]], data)
    return out


def _mat_file_header() -> bytes:
    text = (f"MATLAB 5.0 MAT-file, Platform: MPS, Created on: "
            f"{time.strftime('%a %b %d %H:%M:%S %Y')}").encode("ascii")
    return text.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"


def _mat_small(fh, name: str, values: np.ndarray) -> None:
    """A small numeric column vector (n x 1) written in one go."""
    values = np.ascontiguousarray(values)
    dims = (int(values.size), 1)
    fh.write(_matrix_header(name, dims, values.dtype))
    fh.write(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
    fh.write(b"\0" * _pad8(values.nbytes))


def check_mat_size(shape: tuple[int, int, int], dtype: np.dtype, stage: str) -> None:
    """Refuse a movie that MATLAB cannot hold in one v5 variable (suggests TIFF)."""
    t, h, w = shape
    size = mat_variable_bytes("movie", (h, w, t), dtype)
    if size > MAT_MAX_BYTES:
        raise ValueError(
            f"the '{stage}' movie ({t} frames of {h}x{w} {np.dtype(dtype)}) is "
            f"{size / 1024**3:.2f} GB; a MATLAB .mat variable holds at most 2 GB: use "
            f"--format tiff (MATLAB reads it with tiffreadVolume) or fewer frames with --frames")


def write_mat(path: Path, frames: Iterator[np.ndarray], shape: tuple[int, int, int],
              dtype: np.dtype, table: dict[str, np.ndarray]) -> None:
    """``movie`` (height x width x frames) streamed frame by frame, then ``frame`` / ``time_s``."""
    t, h, w = shape
    dtype = np.dtype(dtype)
    with open(path, "wb") as fh:
        fh.write(_mat_file_header())
        fh.write(_matrix_header("movie", (h, w, t), dtype))
        written = 0
        for block in frames:
            for frame in block:  # column-major: within a frame, rows vary fastest
                fh.write(np.asarray(frame, dtype.newbyteorder("<")).T.tobytes())
            written += len(block)
        if written != t:
            raise RuntimeError(f"MAT export: {written} frames read, {t} expected")
        fh.write(b"\0" * _pad8(t * h * w * dtype.itemsize))
        for key in ("frame", "time_s"):
            if key in table:
                _mat_small(fh, key, np.asarray(table[key], np.float64))


# ============================================================================== npy / zarr


def write_npy(path: Path, frames: Iterator[np.ndarray], shape: tuple[int, int, int],
              dtype: np.dtype) -> None:
    """A .npy file: ``open_memmap`` writes the header and sizes the file, then the frames are
    written with plain file writes (a memory map's dirty pages would count as resident)."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    offset = mm.offset
    del mm
    dtype = np.dtype(dtype)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        written = 0
        for block in frames:
            fh.write(np.ascontiguousarray(block, dtype).data)
            written += len(block)
    if written != shape[0]:
        raise RuntimeError(f"npy export: {written} frames read, {shape[0]} expected")


def write_zarr(path: Path, frames: Iterator[np.ndarray], movie: xr.DataArray,
               positions: np.ndarray, chunk_frames: int) -> None:
    """An xarray-readable zarr (format 2): the movie plus its frame coordinates."""
    import dask.array as da
    import zarr

    t, h, w = len(positions), movie.sizes["height"], movie.sizes["width"]
    coords = {k: ("frame", v) for k, v in mv.frame_table(movie, positions).items()}
    coords.update(height=np.arange(h), width=np.arange(w))
    placeholder = da.zeros((t, h, w), dtype=movie.dtype, chunks=(chunk_frames, h, w))
    attrs = {k: v for k, v in movie.attrs.items() if isinstance(v, (str, int, float, bool))}
    ds = xr.Dataset({"movie": (("frame", "height", "width"), placeholder)}, coords=coords,
                    attrs=attrs)
    ds.to_zarr(path, mode="w", compute=False, zarr_format=2, consolidated=True)
    target = zarr.open_array(str(path / "movie"), mode="r+")
    i = 0
    for block in rebatch(frames, chunk_frames):  # whole chunks: no read-modify-write
        target[i:i + len(block)] = block
        i += len(block)


def rebatch(blocks: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """The frames of ``blocks`` regrouped into blocks of exactly ``n`` (the last may be
    shorter); holds at most n + one input block."""
    pending: list[np.ndarray] = []
    have = 0
    for block in blocks:
        pending.append(block)
        have += len(block)
        while have >= n:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:n]
            rest = joined[n:]
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


# ============================================================================== export


def zarr_chunk_frames(shape: tuple[int, int, int], dtype: np.dtype,
                      target_bytes: int = ZARR_CHUNK_BYTES) -> int:
    """Frames per zarr chunk: about ``target_bytes`` (a size other readers handle well)."""
    frame_bytes = shape[1] * shape[2] * np.dtype(dtype).itemsize
    return int(max(1, min(shape[0], target_bytes // max(frame_bytes, 1))))


def export_movie(store, output_dir: Path, stage: str, fmt: str, *,
                 frames: str | slice | None = None, name: str | None = None,
                 max_bytes: int = mv.BATCH_BYTES, progress: mv.Progress | None = None,
                 cancel: threading.Event | None = None) -> MovieResult:
    """Write the frames ``frames`` ("START:STOP:STEP", original numbers) of ``stage`` as
    ``output_dir / movie_<stage>.<ext>`` in ``fmt`` (one of :data:`FORMATS`).

    ``progress(fraction, message)`` per batch; setting ``cancel`` stops the export
    (:class:`~mps_core.registry.Cancelled`) and removes the partial file.
    """
    t0 = time.time()
    report = progress or (lambda f, m: None)
    if fmt not in FORMATS:
        raise ValueError(f"format '{fmt}': allowed formats are {', '.join(FORMATS)}")
    mv._check_stage(stage)
    movie = mv.open_stage(store, stage)
    pos = mv.select_positions(movie.frame.values, frames, f"stage '{stage}'")
    shape = (int(pos.size), int(movie.sizes["height"]), int(movie.sizes["width"]))
    dtype = np.dtype(movie.dtype)
    if fmt == "mat":
        check_mat_size(shape, dtype, stage)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name or f'movie_{stage}'}{SUFFIX[fmt]}"
    table = mv.frame_table(movie, pos)
    tmp = _tmp_name(path)
    stream = _counted(mv.iter_frames(movie, pos, max_bytes=max_bytes, cancel=cancel),
                      shape[0], report)
    files = [path]
    try:
        if fmt == "tiff":
            write_tiff(tmp, stream, shape, dtype, description=mv.json_attrs(movie))
        elif fmt == "npy":
            write_npy(tmp, stream, shape, dtype)
        elif fmt == "mat":
            write_mat(tmp, stream, shape, dtype, table)
        else:
            write_zarr(tmp, stream, movie, pos, zarr_chunk_frames(shape, dtype))
        mv.check_cancel(cancel)
        _commit(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if fmt in ("tiff", "npy"):
        csv = output_dir / f"{path.stem}_frames.csv"
        write_frames_csv(csv, table)
        files.append(csv)
    return MovieResult(path, fmt, shape if fmt != "mat" else (shape[1], shape[2], shape[0]),
                       str(dtype), shape[0], time.time() - t0, files)


def _counted(batches: Iterator[tuple[np.ndarray, np.ndarray]], total: int,
             report: Callable[[float, str], None]) -> Iterator[np.ndarray]:
    """The frame blocks of ``batches``, reporting progress after each."""
    done = 0
    report(0.0, f"0 of {total} frames")
    for idx, block in batches:
        yield block
        done += len(idx)
        report(done / total, f"{done} of {total} frames")
