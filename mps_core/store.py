"""The session store: one output folder per session, one folder per step run.

    SESSION/
      mps_session.json          marks the folder as an MPS session (format version, created)
      params.json               the parameters of the last run (auto-saved at every run)
      session.log               the session log
      all_removed_frames.txt    every removed original frame and why (absent when none)
      steps/<id>/manifest.json  parameters, input fingerprints, versions, times, status
      steps/<id>/<name>.zarr    labelled arrays (xarray DataArray or Dataset)
      steps/<id>/<name>.json    small JSON-able results (tables, suggestions, reports)
      steps/<id>/<name>.txt     text reports
      steps/<id>/preview_*.png  preview figures
      steps/<id>.failed.json    the last failure of a step (its last good result is untouched)

A step run is written into a hidden temporary folder and renamed into place only when it
has completed, so a crash or a cancel never damages the previous good result. Whether a
step is done, stale or failed is derived from the manifests, never stored twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import xarray as xr

from . import bitround

SESSION_FILE = "mps_session.json"
# In a step's temporary folder: which process writes it. Opening a session removes the
# temporary folders of crashed runs, never those of a run still going in another process
# (a viewer or a second command opening the session mid-run used to delete a step's
# half-written output, and the run then committed what was left of it).
OWNER_FILE = ".owner.json"
SESSION_FORMAT = "mps-session"
SESSION_VERSION = 1
REMOVED_FILE = "all_removed_frames.txt"
STORED_SUFFIXES = (".zarr", ".json", ".txt")


class StoreError(RuntimeError):
    pass


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    from . import __version__

    out = {"mps": __version__}
    for name in ("numpy", "dask", "xarray", "zarr", "scipy", "cvxpy", "opencv-python-headless"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _this_process() -> dict[str, Any]:
    import socket

    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "created": psutil.Process().create_time()}


def _run_alive(tmp: Path) -> bool:
    """Whether the process that owns a step's temporary folder still runs. A folder owned on
    another machine (a shared session folder) is taken as alive: it cannot be checked."""
    import socket

    import psutil

    try:
        owner = json.loads((tmp / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False  # a crashed run from before owners were recorded, or a torn write
    if owner.get("host") != socket.gethostname():
        return True
    try:  # the creation time tells a reused pid from the owner
        return abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["created"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class StepRun:
    """A step run being written: outputs go to a temporary folder until commit()."""

    store: "SessionStore"
    step_id: str
    run_id: str
    tmp: Path
    started: float

    def path_for(self, name: str, suffix: str) -> Path:
        return self.tmp / f"{name}{suffix}"

    def put(self, name: str, value: Any) -> list:
        """Persist one output. Arrays are written lazily: the returned dask jobs must be
        computed; computing all of a step's jobs together reads shared inputs once."""
        links = {}
        if isinstance(value, xr.DataArray):
            if value.encoding.get(SAME_DATA):
                links[name] = value.encoding[SAME_DATA]
            value = value.to_dataset(name=name, promote_attrs=False)
            value.attrs["mps_dataarray"] = name
        if isinstance(value, xr.Dataset):
            return _write_zarr(_zarr_safe(value), self.path_for(name, ".zarr"), links)
        if isinstance(value, str):
            self.path_for(name, ".txt").write_text(value)
        else:
            self.path_for(name, ".json").write_text(json.dumps(value, indent=1, default=jsonable))
        return []

    def path_of(self, name: str) -> Path:
        """Where output `name` was stored (only the store's own kinds: files a step writes
        itself, such as exports, may share the name)."""
        for suffix in STORED_SUFFIXES:
            p = self.path_for(name, suffix)
            if p.exists():
                return p
        raise StoreError(f"step {self.step_id} wrote no output '{name}'")

    def load(self, name: str) -> Any:
        """Read back an output written in this run (previews draw from what was stored)."""
        return load_path(self.path_of(name))

    def commit(self, manifest: dict[str, Any]) -> Path:
        owner = self.tmp / OWNER_FILE
        if not owner.exists():
            raise StoreError(f"step {self.step_id}: its working folder {self.tmp.name} was removed "
                             "while it ran (by another program?); nothing was saved, the previous "
                             "result is kept. Run the step again.")
        owner.unlink()
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=jsonable))
        final = self.store.step_dir(self.step_id)
        old = final.with_name(f".{self.step_id}.old-{self.run_id}")
        if final.exists():
            final.rename(old)
        self.tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        self.store.failure_path(self.step_id).unlink(missing_ok=True)
        self.store.write_removed_frames()
        return final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def jsonable(o: Any) -> Any:
    """`json.dumps(default=...)` for numpy values and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} as JSON")


# Movies (frame, height, width) are stored in shards of one dask chunk of frames, each made of
# spatial tiles: a frame-wise pass reads whole shards as fast as whole-frame chunks, and one
# pixel's time series reads only its tile (1/25 of a 600 px movie), not every frame.
MOVIE_TILE = 128


def movie_tiles(shape: tuple[int, ...]) -> list[int]:
    """Tile edge per spatial axis: as few tiles as edges of at most MOVIE_TILE allow, of equal
    size, so shards carry no padding (160 px in 128 px tiles stored and decoded 256 px, 2.6x
    the pixels of the frame; in two 80 px tiles, none)."""
    return [-(-n // -(-n // MOVIE_TILE)) for n in shape]


# Float movies keep 11 significant bits (relative error <= 2^-11, 0.06 grey levels at 128):
# far below the shot noise of any recording, and they compress about 2.5x better. Rounded in
# the write tasks, not by a zarr filter: plain zarr reads them, and the filter (numcodecs
# BitRound) with sharding raised 2b's peak memory by 0.6 GB (measured).
MOVIE_KEEPBITS = 10


def round_mantissa(block: np.ndarray, keepbits: int = MOVIE_KEEPBITS) -> np.ndarray:
    """float32 values rounded (half to even) to `keepbits` explicit mantissa bits; NaN and
    infinities unchanged."""
    return bitround.round_mantissa(block, keepbits)


def _is_movie(v: xr.Variable) -> bool:
    import dask.array as da

    data = v.data
    return (isinstance(data, da.Array) and v.ndim == 3 and v.dims[0] == "frame" and data.size > 0
            and all(len(c) == 1 for c in data.chunks[1:]))


def _movie_encoding(var: xr.Variable) -> dict[str, Any] | None:
    """The zarr encoding of a dask-backed movie variable; None for every other variable.

    lz4 rather than zstd: movies are written 3 times and read about 12 times per session;
    on rounded movie data (one core) zstd level 3 encodes 440 MB/s and decodes 1000 MB/s,
    lz4 1330 and 1345 MB/s, for files 9 % larger (compression 2.76x instead of 3.03x)."""
    from zarr.codecs import BloscCodec

    if not _is_movie(var):
        return None
    data = var.data
    t = data.chunks[0][0]
    tiles = movie_tiles(data.shape[1:])
    shard = [-(-n // k) * k for n, k in zip(data.shape[1:], tiles)]  # whole tiles per shard
    return {"chunks": (t, *tiles), "shards": (t, *shard),
            "compressors": [BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")]}


def _prepare_movies(ds: xr.Dataset) -> xr.Dataset:
    """Give movies equal frame chunks (the last may be shorter), so each chunk fills whole
    shards and no two tasks ever write into one shard; round float movies' mantissas."""
    for k, v in ds.data_vars.items():
        if not _is_movie(v.variable):
            continue
        c = v.data.chunks[0]
        if len(c) > 1 and (len(set(c[:-1])) > 1 or c[-1] > c[0]):
            v = ds[k] = v.chunk({"frame": c[0]})
        if v.dtype == np.float32:
            ds[k] = v.copy(data=v.data.map_blocks(round_mantissa, dtype=np.float32))
    return ds


def _regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    """Make every dask variable's chunks regular along each dimension (all equal, the last
    not larger), which zarr requires. Selecting some units of a chunked array leaves uneven
    chunks such as (5, 5, 5, 7); any step can produce them, so the store mends them."""
    for k, v in list(ds.variables.items()):
        chunks = getattr(v, "chunks", None)
        if not chunks:
            continue
        fix = {d: max(c) for d, c in zip(v.dims, chunks)
               if len(c) > 1 and (len(set(c[:-1])) > 1 or c[-1] > c[0])}
        if fix and k in ds.data_vars:
            ds[k] = ds[k].chunk(fix)
        elif fix:
            ds = ds.assign_coords({k: v.chunk(fix)})
    return ds


# An output whose values are those of a stored array, bit for bit (3a's movie when nothing is
# cropped or subtracted), says so with `same_data`: the store then hard-links that array's
# chunk files instead of reading, compressing and writing the movie again (101 s of 3a on a
# 10-minute recording). A link outlives the deletion of the original's folder.
SAME_DATA = "mps_same_data_as"
_STORED_AT = "mps_stored_at"
_LINK_KEYS = ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "codecs", "fill_value")


def same_data(out: xr.DataArray, source: xr.DataArray) -> xr.DataArray:
    """Mark `out` as holding exactly `source`'s values (only metadata differs), so storing
    it can reuse `source`'s files when `source` was loaded from a session store."""
    if source.encoding.get(_STORED_AT):
        out.encoding[SAME_DATA] = source.encoding[_STORED_AT]
    return out


def pixel_tiles(movie: xr.DataArray, frames: int) -> xr.DataArray:
    """``movie`` in chunks of ``frames`` frames by one stored spatial tile, for passes that need
    each pixel's time series (the noise of 5a). A movie loaded from a session store is opened
    again with those chunks, so every task reads only its tile from the shards; rechunking the
    loaded frame-major chunks instead held all frame chunks a task spans, whole (5a on 608 x
    608 px: 2.0 GB -> 0.8 GB). Anything else is rechunked by dask."""
    import zarr

    frames = max(1, min(int(frames), movie.sizes["frame"]))
    where = movie.encoding.get(_STORED_AT)
    if where and Path(where[0]).exists():
        path, var = where
        tile = zarr.open_array(str(Path(path) / var), mode="r").chunks  # inner chunks
        chunks = {"frame": frames, "height": tile[1], "width": tile[2]}
        with warnings.catch_warnings():  # tasks span several stored frame chunks: intended
            warnings.filterwarnings("ignore", message="The specified chunks separate")
            arr = xr.open_zarr(path, consolidated=False, chunks=chunks)[var]
        if arr.shape == movie.shape and arr.dims == movie.dims:
            return arr
    tile_h, tile_w = movie_tiles(movie.shape[1:])
    return movie.chunk({"frame": frames, "height": tile_h, "width": tile_w})


def _link_array(src: Path, dst: Path) -> bool:
    """Give the freshly created (metadata only) array `dst` the chunk files of `src`, by hard
    link (a copy where the file system has none); False, touching nothing, unless both are
    stored alike (shape, type, chunks, shards, codecs)."""
    try:
        a, b = (json.loads((d / "zarr.json").read_text()) for d in (src, dst))
    except (OSError, ValueError):
        return False
    if any(a.get(k) != b.get(k) for k in _LINK_KEYS):
        return False
    for f in src.rglob("*"):
        if f.is_dir() or f == src / "zarr.json":
            continue
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    return True


def _write_zarr(ds: xr.Dataset, path: Path, links: dict[str, tuple[str, str]] | None = None):
    """Write metadata and in-memory variables now; return one lazy job for the dask ones
    (`links`: variables whose files are taken from a stored array, see `same_data`).

    The data are stored with `dask.array.store` straight from the step's own arrays, so
    outputs that share inputs (a movie and its per-frame scores) keep the same task keys
    and a single compute of all jobs reads the shared input once; xarray's own delayed
    writes re-key the sources and made 2a decode every video twice (measured).
    """
    import dask.array as da
    import zarr

    ds = _prepare_movies(_regular_chunks(ds))
    encoding = {k: e for k, v in ds.data_vars.items() if (e := _movie_encoding(v.variable))}
    ds.to_zarr(path, mode="w", compute=False, consolidated=False, zarr_format=3,
               encoding=encoding)
    lazy = {k: v.data for k, v in ds.variables.items() if isinstance(v.data, da.Array)}
    for k, (src, var) in (links or {}).items():
        if k in lazy and _link_array(Path(src) / var, path / k):
            del lazy[k]
    if not lazy:
        return []
    targets = [_open_target(path / k, movie=k in encoding) for k in lazy]
    job = da.store(list(lazy.values()), targets, lock=False, compute=False)
    return list(job) if isinstance(job, (tuple, list)) else [job]  # several sources: a tuple


def _open_target(path: Path, movie: bool):
    """A stored array opened for the write tasks. Movie chunks are written as they come:
    zarr otherwise compares every chunk with the fill value first, to leave empty ones out,
    which was a third of the time of a movie write (measured) and movies are never empty."""
    import zarr

    with zarr.config.set({"array.write_empty_chunks": movie}):
        return zarr.open_array(path, mode="r+")


def _shard_chunks(path: Path) -> dict[str, int] | None:
    """Dask chunks for a stored dataset: one shard per chunk where movies are sharded
    (xarray would otherwise make one task per tile)."""
    import zarr

    sizes: dict[str, int] = {}
    group = zarr.open_group(str(path), mode="r")
    for name, arr in group.arrays():
        dims = arr.metadata.dimension_names if hasattr(arr.metadata, "dimension_names") else None
        shards = getattr(arr, "shards", None)
        if shards and dims:
            for d, n, s in zip(dims, arr.shape, shards):
                sizes[d] = min(n, s)
    return sizes or None


def _zarr_safe(ds: xr.Dataset) -> xr.Dataset:
    """Drop encodings inherited from a source store (chunks, codecs) that may not fit."""
    ds = ds.copy()
    for v in ds.variables.values():
        v.encoding = {}
    return ds


class SessionStore:
    """Read and write one session folder."""

    def __init__(self, root: Path, create: bool = True):
        self.root = Path(root).absolute()
        marker = self.root / SESSION_FILE
        if marker.exists():
            info = json.loads(marker.read_text())
            if info.get("format") != SESSION_FORMAT or info.get("version") != SESSION_VERSION:
                raise StoreError(f"{self.root}: not an MPS session folder of version "
                                 f"{SESSION_VERSION} ({SESSION_FILE} says {info})")
        elif create:
            if self.root.exists() and any(self.root.iterdir()):
                if not (self.root / "steps").exists():
                    raise StoreError(
                        f"{self.root}: the output folder is not empty and is not an MPS session; "
                        f"choose an empty or new folder")
            self.root.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"format": SESSION_FORMAT, "version": SESSION_VERSION,
                                          "created": now_iso()}, indent=1))
        else:
            raise StoreError(f"{self.root}: not an MPS session folder (no {SESSION_FILE})")
        (self.root / "steps").mkdir(exist_ok=True)
        self._recover()

    # -- paths ----------------------------------------------------------------------------
    @property
    def params_path(self) -> Path:
        return self.root / "params.json"

    @property
    def log_path(self) -> Path:
        return self.root / "session.log"

    def step_dir(self, step_id: str) -> Path:
        return self.root / "steps" / step_id

    def failure_path(self, step_id: str) -> Path:
        return self.root / "steps" / f"{step_id}.failed.json"

    def _recover(self) -> None:
        """Undo what a crash between the two renames of a commit could leave behind."""
        steps = self.root / "steps"
        for p in steps.glob(".*.old-*"):
            sid = p.name[1:].split(".old-")[0]
            if not self.step_dir(sid).exists():
                p.rename(self.step_dir(sid))
            else:
                shutil.rmtree(p, ignore_errors=True)
        for p in steps.glob(".*.tmp-*"):
            if not _run_alive(p):
                shutil.rmtree(p, ignore_errors=True)

    # -- writing --------------------------------------------------------------------------
    def begin(self, step_id: str) -> StepRun:
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp = self.root / "steps" / f".{step_id}.tmp-{run_id}"
        tmp.mkdir(parents=True)
        (tmp / OWNER_FILE).write_text(json.dumps(_this_process()))
        return StepRun(self, step_id, run_id, tmp, time.time())

    def record_failure(self, step_id: str, message: str, log_path: Path | None = None) -> None:
        info = {"step": step_id, "failed": now_iso(), "time": time.time(), "error": message,
                "log": str(log_path or self.log_path)}
        self.failure_path(step_id).write_text(json.dumps(info, indent=1))

    # -- reading --------------------------------------------------------------------------
    def manifest(self, step_id: str) -> dict[str, Any] | None:
        p = self.step_dir(step_id) / "manifest.json"
        if not p.exists():
            return None
        return json.loads(p.read_text())

    def failure(self, step_id: str) -> dict[str, Any] | None:
        p = self.failure_path(step_id)
        return json.loads(p.read_text()) if p.exists() else None

    def released(self, step_id: str, name: str) -> bool:
        """True when the output was deleted after use to save disk (see `release`)."""
        m = self.manifest(step_id)
        return bool(m and name in m.get("released", {}))

    def release(self, step_id: str, name: str) -> bool:
        """Delete one stored output to free disk; the rest of the step's result stays done.

        The manifest stops listing the output first (under "released" instead), so a crash
        before the files are gone leaves an orphan folder, never a listed half-deleted one.
        Returns False when there was nothing to delete.
        """
        m = self.manifest(step_id)
        if not m or name not in m.get("outputs", {}):
            return False
        fname = m["outputs"].pop(name)
        m.setdefault("released", {})[name] = {"file": fname, "time": now_iso()}
        target = self.step_dir(step_id) / "manifest.json"
        tmp = target.with_name("manifest.json.tmp")
        tmp.write_text(json.dumps(m, indent=1, default=jsonable))
        tmp.replace(target)
        path = self.step_dir(step_id) / fname
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return True

    def has(self, step_id: str, name: str) -> bool:
        m = self.manifest(step_id)
        return bool(m and name in m.get("outputs", {}))

    def load(self, step_id: str, name: str) -> Any:
        """Load one output lazily (arrays stay on disk until computed)."""
        m = self.manifest(step_id)
        if not m or name not in m.get("outputs", {}):
            if m and name in m.get("released", {}):
                raise StoreError(f"{self.root}: {released_message(step_id, name)}")
            raise StoreError(f"{self.root}: step {step_id} has no output '{name}' "
                             f"(run step {step_id} first)")
        return load_path(self.step_dir(step_id) / m["outputs"][name])

    def status(self, step_id: str, _seen: dict[str, str] | None = None) -> str:
        """'not run', 'done', 'stale' (an input changed since) or 'failed'."""
        seen = {} if _seen is None else _seen
        if step_id in seen:
            return seen[step_id]
        m = self.manifest(step_id)
        fail = self.failure(step_id)
        if fail and (m is None or fail.get("time", 0) >= m.get("finished_time", 0)):
            status = "failed"
        elif m is None:
            status = "not run"
        else:
            status = "done"
            for src in m.get("inputs", {}).values():
                pm = self.manifest(src["step"])
                if pm is None or pm.get("run_id") != src["run_id"] or \
                        self.status(src["step"], seen) in ("stale", "not run"):
                    status = "stale"
                    break
        seen[step_id] = status
        return status

    def statuses(self, step_ids: Iterable[str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        return {sid: self.status(sid, seen) for sid in step_ids}

    # -- derived reports --------------------------------------------------------------------
    def write_removed_frames(self) -> None:
        """Gather every current removal into all_removed_frames.txt (absent when none).

        A stored dataset with a per-frame ``removed`` code (> 0 = removed) and a
        ``removal_codes`` legend contributes its removed frames; stale runs do not.
        """
        rows: list[tuple[int, str]] = []
        seen: dict[str, str] = {}
        for d in sorted((self.root / "steps").iterdir(), key=lambda p: p.name):
            if d.name.startswith(".") or not d.is_dir():
                continue
            m = self.manifest(d.name)
            # only outputs holding a `removed` array are opened: this runs after every commit,
            # and opening all of a session's outputs cost ~0.4 s each time (8 s over a run)
            tables = [d / f for f in (m or {}).get("outputs", {}).values()
                      if f.endswith(".zarr") and (d / f / "removed").is_dir()]
            if not tables or self.status(d.name, seen) == "stale":
                continue
            for path in tables:
                rows += _removals(path, d.name)
        target = self.root / REMOVED_FILE
        if not rows:
            target.unlink(missing_ok=True)
            return
        rows.sort()
        header = "# original_frame\tmovie\tlocal_frame\tstep\treason\n"
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(header + "".join(line + "\n" for _, line in rows))
        tmp.replace(target)


def released_message(step_id: str, name: str) -> str:
    """What to tell a user who needs an output that `SessionStore.release` deleted."""
    return (f"'{name}' of step {step_id} was deleted after use to save disk (step 1's "
            f"delete_intermediate_movies); run from step {step_id} to make it again")


def _removals(path: Path, step_id: str) -> list[tuple[int, str]]:
    ds = xr.open_zarr(path, consolidated=False)
    if "removed" not in ds or "removal_codes" not in ds["removed"].attrs:
        return []
    codes = json.loads(ds["removed"].attrs["removal_codes"])
    removed = ds["removed"].values
    idx = np.flatnonzero(removed > 0)
    frames = ds["frame"].values
    movie = ds["movie_number"].values if "movie_number" in ds.coords else None
    local = ds["local_frame"].values if "local_frame" in ds.coords else None
    out = []
    for i in idx:
        m = "" if movie is None else int(movie[i])
        lf = "" if local is None else int(local[i])
        reason = codes.get(str(int(removed[i])), f"code {int(removed[i])}")
        out.append((int(frames[i]), f"{int(frames[i])}\t{m}\t{lf}\t{step_id}\t{reason}"))
    return out


def load_path(path: Path) -> Any:
    """Open one stored output: zarr lazily as xarray, JSON and text eagerly."""
    if path.suffix == ".zarr":
        shards = _shard_chunks(path)
        with warnings.catch_warnings():
            # the frame coordinates are stored whole; one chunk per shard is what we want
            warnings.filterwarnings("ignore", message="The specified chunks separate")
            ds = xr.open_zarr(path, consolidated=False, **({"chunks": shards} if shards else {}))
        var = ds.attrs.get("mps_dataarray")
        if not var:
            return ds
        arr = ds[var]
        arr.encoding[_STORED_AT] = (str(path), var)  # lets a step pass it on unchanged
        return arr
    if path.suffix == ".txt":
        return path.read_text()
    return json.loads(path.read_text())


def is_inside(child: Path, parent: Path) -> bool:
    child, parent = Path(os.path.realpath(child)), Path(os.path.realpath(parent))
    return child == parent or parent in child.parents
