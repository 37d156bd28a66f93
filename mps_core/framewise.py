"""Helpers for per-frame work on (frame, height, width) dask movies.

Per-frame statistics are computed chunk by chunk inside dask tasks and come back as small
lazy (frame, k) arrays, so they can be computed in the same pass that writes the movie.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import dask.array as da
import numpy as np
import xarray as xr


def frame_stats(movie: da.Array, func: Callable[[np.ndarray], dict[str, np.ndarray]],
                names: tuple[str, ...]) -> dict[str, da.Array]:
    """Lazy per-frame statistics: `func(block) -> {name: (T,) array}` run on every chunk."""
    if len(movie.chunks[1]) > 1 or len(movie.chunks[2]) > 1:
        movie = movie.rechunk({1: -1, 2: -1})

    stacked = movie.map_blocks(partial(_block_stats, func=func, names=names),
                               dtype=np.float64, drop_axis=2,
                               chunks=(movie.chunks[0], (len(names),)))
    return {n: stacked[:, i] for i, n in enumerate(names)}


def _block_stats(block: np.ndarray, func, names) -> np.ndarray:
    out = func(block)
    return np.stack([np.asarray(out[n], dtype=np.float64) for n in names], axis=1)


def whole(arr: da.Array, func: Callable[[np.ndarray], np.ndarray], dtype) -> da.Array:
    """Apply a whole-series function (e.g. thresholds from global statistics) lazily."""
    one = arr.rechunk(-1)
    return one.map_blocks(func, dtype=dtype).rechunk(arr.chunks)


def kept_frames(movie: xr.DataArray, *tables: xr.Dataset) -> xr.DataArray:
    """The frames of `movie` not removed by any table's `removed` code (> 0).

    Tables are indexed by the original `frame` coordinate; frames they do not list are kept.
    Chunks stay regular after the selection.
    """
    keep = np.ones(movie.sizes["frame"], bool)
    frames = movie["frame"].values
    for t in tables:
        removed = t["removed"].values > 0
        gone = np.asarray(t["frame"].values)[removed]
        keep &= ~np.isin(frames, gone)
    if keep.all():
        return movie
    chunk = movie.chunks[0][0] if movie.chunks else movie.sizes["frame"]
    out = movie.isel(frame=np.flatnonzero(keep))
    return out.chunk({"frame": chunk})


def regular_frames(movie: xr.DataArray, chunk: int) -> xr.DataArray:
    """Rechunk to `chunk` frames per chunk and whole frames (frame-major layout)."""
    return movie.chunk({"frame": chunk, "height": -1, "width": -1})


def sample_indices(chunks: tuple[int, ...], n: int, max_chunks: int = 16) -> np.ndarray:
    """Up to `n` frame indices spread over the recording but taken from at most `max_chunks`
    evenly spaced chunks, so a sample reads a few chunks instead of the whole movie."""
    starts = np.concatenate([[0], np.cumsum(chunks)])
    k = min(len(chunks), max_chunks)
    picks = np.unique(np.linspace(0, len(chunks) - 1, k).round().astype(int))
    per = max(1, int(np.ceil(n / len(picks))))
    idx = [np.arange(starts[c], min(starts[c] + per, starts[c + 1])) for c in picks]
    return np.concatenate(idx)[:n]
