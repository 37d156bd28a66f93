"""Writers of the export formats: plain functions of in-memory arrays and a target folder.

Step 8c builds one :class:`ExportData` from the store (footprints already placed back in the
input video's pixel grid, traces, frame index) and calls :func:`write_formats`; the ``mps
export`` command can do the same from a finished session. Nothing here reads the session
store, so every writer is testable on its own.

Files (all in one folder):

* NumPy (the layout the benchmark scores, ``../shared/bench/README.md``): ``A.npy`` (unit,
  height, width) float32 in the input video's grid (zeros outside the crop); ``C.npy`` and
  ``S.npy`` (unit, frame) float32; ``motion.npy`` (frame, 2) float32, the (dy, dx) shift that
  registered each kept frame; ``frames.npy`` (frame,) int64, the original index of every column
  of C / S and row of motion; ``unit_ids.npy`` (unit,) int64; ``b.npy`` (height, width) and
  ``f.npy`` (frame,) float32 when a background is known.
* zarr (``mps_export.zarr``): one Dataset with every array above, their coordinates (unit ids,
  full-frame pixel indices, the frame index table) and per-unit scalars; chunked.
* JSON (``mps_export.json``): units (ids, centroids in full-frame pixels, sizes, SNR, labels),
  parameters, frame summary, versions, time stamp (the only field that changes between two
  exports of the same data).
  The JSON is written last and lists every file of the export (``files``), itself included.
* pickle (``mps_export.pkl``): everything in one dict, for Python users (written, never read).
* NWB (``mps_export.nwb``): footprints, C, S, timestamps, motion and session facts in the
  Neurodata Without Borders format (:mod:`mps_core.nwb_export` has the layout).
* per-frame tables (``C_table.csv`` / ``S_table.csv``, or ``.parquet`` with pyarrow, a
  dependency of MPS): frame index columns, then one column per unit.
* figures (``figures/*.png``).

Writers are deterministic: the same data gives byte-identical files (the JSON's time stamp
aside; the NWB file also records the export time as its ``file_create_date``).
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .cnmf.sparse_footprints import FramedFootprints
from .store import jsonable

__all__ = ["ExportData", "place_in_frame", "export_step", "write_numpy", "write_zarr", "write_json",
           "write_pickle", "write_tables", "write_figures", "write_formats", "FORMATS"]

FORMATS = ("numpy", "zarr", "json", "pickle", "nwb", "table", "figures")
FRAME_COLUMNS = ("frame", "movie_number", "local_frame", "time_s", "hw_stamp")


@dataclass
class ExportData:
    """Everything exported, already in its final form (no further filtering here).

    ``A`` (unit, height, width) float32 in the input video's grid; ``C``, ``S`` (unit, frame);
    ``unit_ids`` (unit,); ``frames`` (frame,) original frame indices of C's columns;
    ``motion`` (frame, 2) (dy, dx); ``frame_table`` per-frame columns (``frame``,
    ``movie_number``, ``local_frame``, ``time_s``, ``hw_stamp`` when known), each (frame,);
    ``units`` per-unit columns (lists or arrays of length unit) such as centroids, size, SNR;
    ``metadata`` JSON-able dict (parameters, crop, frame summary, versions, ...);
    ``b`` (height, width) / ``f`` (frame,) background, ``mean_frame`` (height, width), or None;
    ``exported_at`` time stamp, written only into the JSON (so every other file is
    byte-identical between two exports of the same data).
    """

    A: np.ndarray | FramedFootprints
    C: np.ndarray
    S: np.ndarray
    unit_ids: np.ndarray
    frames: np.ndarray
    motion: np.ndarray
    frame_table: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    b: np.ndarray | None = None
    f: np.ndarray | None = None
    mean_frame: np.ndarray | None = None
    exported_at: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.A, FramedFootprints):  # that one stays sparse until written
            self.A = np.asarray(self.A, np.float32)
        self.C = np.asarray(self.C, np.float32)
        self.S = np.asarray(self.S, np.float32)
        self.unit_ids = np.asarray(self.unit_ids, np.int64)
        self.frames = np.asarray(self.frames, np.int64)
        self.motion = np.asarray(self.motion, np.float32)
        n, T = self.C.shape
        if self.A.ndim != 3 or self.A.shape[0] != n or self.S.shape != (n, T) \
                or self.unit_ids.shape != (n,):
            raise ValueError(f"ExportData: A {self.A.shape}, C {self.C.shape}, S {self.S.shape} "
                             f"and unit_ids {self.unit_ids.shape} must agree on units (and C, S "
                             f"on frames)")
        if self.frames.shape != (T,) or self.motion.shape != (T, 2):
            raise ValueError(f"ExportData: frames {self.frames.shape} and motion "
                             f"{self.motion.shape} must be ({T},) and ({T}, 2)")
        for k, v in self.frame_table.items():
            if np.shape(v) != (T,):
                raise ValueError(f"ExportData: frame_table[{k!r}] must have shape ({T},)")
        # a fixed column order (coordinates read back from a store come in any order), so
        # every file is written the same way every time
        order = [k for k in FRAME_COLUMNS if k in self.frame_table]
        order += sorted(set(self.frame_table) - set(order))
        self.frame_table = {k: np.asarray(self.frame_table[k]) for k in order}
        for k, v in self.units.items():
            if len(v) != n:
                raise ValueError(f"ExportData: units[{k!r}] must have {n} entries")
        if self.b is not None:
            self.b = np.asarray(self.b, np.float32)
            if self.b.shape != self.A.shape[1:]:
                raise ValueError(f"ExportData: b must be {self.A.shape[1:]}, got {self.b.shape}")
        if self.f is not None:
            self.f = np.asarray(self.f, np.float32)
            if self.f.shape != (T,):
                raise ValueError(f"ExportData: f must be ({T},), got {self.f.shape}")


def place_in_frame(A: np.ndarray, y0: int, x0: int, full_shape: tuple[int, int]) -> np.ndarray:
    """Images (..., h, w) placed at (y0, x0) of zero (..., H, W) frames (the crop undone)."""
    A = np.asarray(A)
    h, w = A.shape[-2:]
    H, W = (int(v) for v in full_shape)
    if y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
        raise ValueError(f"place_in_frame: a {h}x{w} crop at ({y0}, {x0}) does not fit in the "
                         f"{H}x{W} frame")
    out = np.zeros(A.shape[:-2] + (H, W), A.dtype)
    out[..., y0:y0 + h, x0:x0 + w] = A
    return out


# ----------------------------------------------------------------------------- entries


def _entry(folder: Path, path: Path, fmt: str, shape=None, dtype=None) -> dict:
    e = {"path": path.relative_to(folder).as_posix(), "format": fmt}
    if shape is not None:
        e["shape"] = [int(s) for s in shape]
    if dtype is not None:
        e["dtype"] = str(dtype)
    return e


def _fresh(path: Path) -> None:
    """Remove a previous export's file or folder so the result never mixes two exports."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ----------------------------------------------------------------------------- numpy


def write_numpy(folder: Path, data: ExportData) -> list[dict]:
    """The benchmark's NumPy layout (module docstring), plus unit ids and the background."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"A": data.A, "C": data.C, "S": data.S, "motion": data.motion,
              "frames": data.frames, "unit_ids": data.unit_ids}
    if data.b is not None:
        arrays["b"] = data.b
    if data.f is not None:
        arrays["f"] = data.f
    out = []
    for name, arr in arrays.items():
        path = folder / f"{name}.npy"
        _fresh(path)
        if isinstance(arr, FramedFootprints):
            _save_blocks(path, arr)
        else:
            np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
        out.append(_entry(folder, path, "numpy", arr.shape, arr.dtype))
    return out


def _save_blocks(path: Path, A: FramedFootprints) -> None:
    """``np.save`` of the dense stack, written one block of units at a time (same bytes)."""
    header = {"descr": np.lib.format.dtype_to_descr(A.dtype), "fortran_order": False,
              "shape": A.shape}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for _, block in A.blocks():
            fh.write(np.ascontiguousarray(block).tobytes())


# ----------------------------------------------------------------------------- zarr


def to_dataset(data: ExportData) -> xr.Dataset:
    """One Dataset of every exported array with coordinates (also what the pickle holds)."""
    n, H, W = data.A.shape
    coords: dict[str, Any] = {"unit_id": data.unit_ids, "height": np.arange(H),
                              "width": np.arange(W)}
    coords["frame"] = data.frames
    for k, v in data.frame_table.items():
        if k != "frame":
            coords[k] = ("frame", np.asarray(v))
    ds = xr.Dataset(coords=coords)
    A = data.A
    if isinstance(A, FramedFootprints):  # lazy: filled a chunk of units at a time when read
        A = da.from_array(A, chunks=(64, -1, -1), meta=np.zeros((0, 0, 0), np.float32))
    ds["A"] = (("unit_id", "height", "width"), A)
    ds["C"] = (("unit_id", "frame"), data.C)
    ds["S"] = (("unit_id", "frame"), data.S)
    ds["motion"] = (("frame", "axis"), data.motion)
    ds["motion"].attrs["axis"] = "dy, dx"
    if data.b is not None:
        ds["b"] = (("height", "width"), data.b)
    if data.f is not None:
        ds["f"] = (("frame",), data.f)
    if data.mean_frame is not None and np.shape(data.mean_frame) == (H, W):
        ds["mean_frame"] = (("height", "width"), np.asarray(data.mean_frame, np.float32))
    for k, v in data.units.items():
        arr = np.asarray(v)
        if arr.dtype.kind in "biuf":  # numbers only; labels stay in the JSON
            ds[f"unit_{k}"] = (("unit_id",), arr)
    ds.attrs["metadata"] = json.dumps(data.metadata, sort_keys=True, default=jsonable)
    return ds


def write_zarr(folder: Path, data: ExportData, name: str = "mps_export.zarr") -> list[dict]:
    """Every array with its coordinates as one zarr store, footprints 64 units per chunk."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    _fresh(path)
    ds = to_dataset(data)
    n, T = data.C.shape
    chunks = {"unit_id": max(1, min(64, n)), "frame": max(1, min(T, 100_000)),
              "height": -1, "width": -1}
    # The footprints are written chunk by chunk below: written by xarray through dask, the
    # export held about another copy of A (+760 MB for 419 units of 608 x 608 px; +350 MB
    # this way, measured). A lazy all-zero stand-in lays the array out.
    A = data.A
    step = chunks["unit_id"]
    ds["A"] = ds["A"].copy(data=da.zeros(A.shape, A.dtype, chunks=(step, -1, -1)))
    ds = ds.chunk({k: v for k, v in chunks.items() if k in ds.dims})
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    target = zarr.open_array(path / "A", mode="r+")
    for i in range(0, A.shape[0], step):
        target[i:i + step] = A[i:i + step]
    return [_entry(folder, path, "zarr", None, None)
            | {"arrays": {k: [int(s) for s in ds[k].shape] for k in ds.data_vars}}]


# ----------------------------------------------------------------------------- JSON


def _clean(v: Any) -> Any:
    """NaN / Inf -> None (JSON has no NaN)."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def summary(data: ExportData, with_time: bool = False) -> dict:
    """The JSON summary: units table, counts and the metadata (and the time stamp)."""
    units = {"unit_id": data.unit_ids.tolist()}
    for k, v in data.units.items():
        units[k] = np.asarray(v).tolist()
    head = {"exported_at": data.exported_at} if with_time else {}
    return _clean({**head, "units": units, "n_units": int(data.unit_ids.size),
                   "n_frames": int(data.frames.size), **data.metadata})


def write_json(folder: Path, data: ExportData, name: str = "mps_export.json",
               files: list[dict] | None = None) -> list[dict]:
    """The JSON summary; ``files``: the export's other files, listed with this one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    _fresh(path)
    entry = _entry(folder, path, "json")
    body = summary(data, with_time=True)
    if files is not None:  # after the metadata: a re-export's own list replaces a copied one
        body["files"] = [*files, entry]
    path.write_text(json.dumps(body, indent=1, default=jsonable) + "\n")
    return [entry]


# ----------------------------------------------------------------------------- pickle


def write_pickle(folder: Path, data: ExportData, name: str = "mps_export.pkl") -> list[dict]:
    """Everything as one dict of numpy arrays and plain values (MPS never loads pickles)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    _fresh(path)
    obj = {"A": np.asarray(data.A), "C": data.C, "S": data.S, "unit_ids": data.unit_ids,
           "frames": data.frames, "motion": data.motion, "b": data.b, "f": data.f,
           "mean_frame": data.mean_frame,
           "frame_table": {k: np.asarray(v) for k, v in data.frame_table.items()},
           "summary": summary(data)}
    with open(path, "wb") as fh:
        pickler = pickle.Pickler(fh, protocol=4)
        # no memo: the bytes then depend only on the values, not on which equal strings
        # happen to be the same Python object (there are no reference cycles here)
        pickler.fast = True
        pickler.dump(obj)
    return [_entry(folder, path, "pickle")]


# ----------------------------------------------------------------------------- tables


def per_frame_table(data: ExportData, traces: np.ndarray):
    """pandas DataFrame: frame index columns (``time_s`` is the time since the recording's
    first frame, from the frame index), then one column ``unit_<id>`` per unit."""
    import pandas as pd

    cols: dict[str, Any] = {}
    for k in FRAME_COLUMNS:
        if k == "frame":
            cols[k] = data.frames
        elif k in data.frame_table:
            cols[k] = np.asarray(data.frame_table[k])
    unit_cols = {f"unit_{int(u)}": traces[i] for i, u in enumerate(data.unit_ids)}
    return pd.DataFrame({**cols, **unit_cols})


def write_tables(folder: Path, data: ExportData, fmt: str = "csv") -> list[dict]:
    """``C_table`` and ``S_table`` as CSV or parquet (pyarrow engine, no pandas index; the
    file's embedded pandas metadata holds no time stamp, so it is byte-identical between
    two exports of the same data)."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"write_tables: fmt must be 'csv' or 'parquet', got {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, traces in (("C_table", data.C), ("S_table", data.S)):
        df = per_frame_table(data, traces)
        path = folder / f"{name}.{fmt}"
        _fresh(path)
        if fmt == "csv":
            df.to_csv(path, index=False, float_format="%.6g")
        else:
            df.to_parquet(path, index=False, engine="pyarrow", compression="zstd")
        out.append(_entry(folder, path, fmt, df.shape, None))
    return out


# ----------------------------------------------------------------------------- figures


def write_figures(folder: Path, data: ExportData, n_units: int = 20,
                  counts: dict[str, int] | None = None) -> list[dict]:
    """Summary PNGs: footprints over the mean image, strongest traces, size / SNR histograms,
    and (when given) the number of units after each stage."""
    from .figures import Figure, HistPanel, ImagePanel, LinePanel, TextPanel, render_png

    folder = Path(folder) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    n = data.unit_ids.size
    base = (np.asarray(data.mean_frame, np.float32) if data.mean_frame is not None
            else np.zeros(data.A.shape[1:], np.float32))
    # one unit at a time: A may be filled from sparse footprints only where read
    outlines = [_outline(data.A[i], "") for i in range(min(300, n))]
    figs = {"footprints": Figure("Footprints over the mean image", [
        ImagePanel(f"{n} units", base, outlines=[o for o in outlines if o is not None])])}
    strength = data.C.max(axis=1) if n else np.zeros(0)
    top = np.argsort(-strength, kind="stable")[:n_units]
    x = data.frames
    figs["traces"] = Figure(f"Traces of the {top.size} strongest units", [
        LinePanel("C (offset per unit)", x, {f"unit {int(data.unit_ids[i])}":
                                             data.C[i] / max(float(strength[i]), 1e-12) + k
                                             for k, i in enumerate(top)}, xlabel="frame")]
        if top.size else [TextPanel("no units", "")])
    hists = [HistPanel(k, {k: np.asarray(data.units[k], float)})
             for k in ("size_px", "snr") if k in data.units]
    figs["histograms"] = Figure("Unit sizes and SNR", hists or [TextPanel("no units", "")])
    if counts:
        figs["unit_counts"] = Figure("Units after each stage", [
            LinePanel("units", np.arange(len(counts)), {"units": np.array(list(counts.values()))},
                      xlabel=" / ".join(counts))])
    out = []
    for name, fig in figs.items():
        path = folder / f"{name}.png"
        _fresh(path)
        render_png(fig, path)
        out.append(_entry(Path(folder).parent, path, "png"))
    return out


def _outline(a: np.ndarray, label: str):
    """Contour of a footprint at a quarter of its peak, as (ys, xs, label); None if empty."""
    import cv2

    peak = float(a.max()) if a.size else 0.0
    if peak <= 0:
        return None
    mask = (a > 0.25 * peak).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=len)[:, 0, :]
    c = np.vstack([c, c[:1]])
    return c[:, 1].astype(float), c[:, 0].astype(float), ""


# ----------------------------------------------------------------------------- all


def write_formats(folder: Path, data: ExportData, formats: set[str] | list[str], *,
                  table_format: str = "csv", figure_units: int = 20,
                  counts: dict[str, int] | None = None) -> list[dict]:
    """Write every format of ``formats`` (names in :data:`FORMATS`); returns the file list.

    The JSON summary is written last so that it can list every other file.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"write_formats: unknown formats {sorted(unknown)}; allowed: "
                         f"{', '.join(FORMATS)}")
    out: list[dict] = []
    for fmt in FORMATS:  # fixed order, so the file list is the same every time
        if fmt not in formats or fmt == "json":
            continue
        if fmt == "numpy":
            out += write_numpy(folder, data)
        elif fmt == "zarr":
            out += write_zarr(folder, data)
        elif fmt == "pickle":
            out += write_pickle(folder, data)
        elif fmt == "nwb":
            from .nwb_export import write_nwb

            out += write_nwb(folder, data)
        elif fmt == "table":
            out += write_tables(folder, data, table_format)
        elif fmt == "figures":
            out += write_figures(folder, data, figure_units, counts)
    if "json" in formats:
        out += write_json(folder, data, files=list(out))
    return out


def export_step(store, step_id: str, dest: Path) -> list[Path]:
    """Write one step's footprints and traces in the benchmark's NumPy layout.

    Any step with a footprint output (unit_id, height, width) can be graded this way, e.g.
    the initialisation after 4h. Where the step keeps a smoothed copy of its footprints (4h,
    7f), that copy is written, as 8c writes by default. A is placed back in the input video's
    pixel grid with the crop of step 3a; motion and frames come from steps 2c and the traces'
    frame coordinate.
    """
    m = store.manifest(step_id)
    if m is None:
        raise ValueError(f"step {step_id} has no result in {store.root}; run it first")
    arrays = {n: store.load(step_id, n) for n, f in m["outputs"].items() if f.endswith(".zarr")}
    footprints = {n: a for n, a in arrays.items()
                  if isinstance(a, xr.DataArray) and a.dims == ("unit_id", "height", "width")}
    # a step that keeps a smoothed copy (4h, 7f) exports it, as 8c does by default: the raw
    # footprints stop where their region or support ends, the cells' light does not
    smoothed = [a for n, a in footprints.items() if n.endswith("_smoothed") and a.sizes["unit_id"]]
    A = smoothed[0] if smoothed else next(iter(footprints.values()), None)
    if A is None:
        raise ValueError(f"step {step_id} has no footprints (unit_id, height, width) to export; "
                         f"steps from 4e on do")
    traces = [a for a in arrays.values()
              if isinstance(a, xr.DataArray) and a.dims == ("unit_id", "frame")]
    crop = store.load("3a", "crop")
    full = (int(crop["full_height"]), int(crop["full_width"]))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = {"A": place_in_frame(A.values.astype(np.float32), int(crop["y0"]), int(crop["x0"]), full)}
    for name, arr in zip(("C", "S"), traces):
        out[name] = arr.sel(unit_id=A.unit_id.values).values.astype(np.float32)
    if traces:
        frames = traces[0].frame.values
        out["frames"] = frames.astype(np.int64)
        if store.has("2c", "shifts"):
            s = store.load("2c", "shifts")
            r = s.sel(frame=frames).values
            out["motion"] = (r if r.ndim == 2 else r.mean(axis=(1, 2))).astype(np.float32)
    written = []
    for name, value in out.items():
        path = dest / f"{name}.npy"
        np.save(path, value)
        written.append(path)
    return written
