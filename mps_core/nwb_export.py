"""The NWB (Neurodata Without Borders) export: one ``.nwb`` file written with pynwb.

Built from the same :class:`mps_core.export.ExportData` as every other export format, so
it holds exactly what the NumPy files hold. Layout of ``mps_export.nwb``:

* NWBFile: ``session_id`` / ``session_description`` / ``session_start_time`` (see
  :func:`recording_info` for where the start time comes from), ``identifier`` (deterministic:
  animal, session and a hash of the exported content), ``notes`` (what MPS did, the
  orientation of step 2a and the export's JSON metadata);
* Subject: ``subject_id`` = the animal id of step 1 (species, sex, age are unknown to MPS
  and left out);
* Device "Miniscope", OpticalChannel and ImagingPlane "ImagingPlane": indicator and location
  "unknown", excitation and emission wavelengths NaN (pynwb requires both as numbers and
  accepts NaN; MPS does not know the light path); the description states the orientation
  (rotation / flips) applied at step 2a, the crop of step 3a and the pixel grid;
* processing module ``ophys``:

  - ImageSegmentation / PlaneSegmentation "PlaneSegmentation": ``image_mask`` (unit, height,
    width) float32 in the input video's pixel grid (the crop offsets re-applied, zeros
    outside; the same array as ``A.npy``), table ids and a ``unit_id`` column = MPS unit ids,
    plus the per-unit numbers of the JSON (centroids, size, SNR, ...);
  - Fluorescence with RoiResponseSeries "Denoised" (C) and "Deconvolved" (S), the names
    NeuroConv uses for CNMF-type outputs; data (frame, unit) as NWB puts time first;
    ``timestamps`` in seconds since the recording's first frame (the frame index's
    ``time_s``; with removed frames the timestamps have gaps, so no constant rate is used);
  - when a background is known: PlaneSegmentation "Background" (b as one image mask) and
    RoiResponseSeries "Background" (f) in Fluorescence;
  - TimeSeries "motion" (frame, 2): the (dy, dx) registration shift of each kept frame, px;
  - Images "SummaryImages" with the mean image when known.

Datasets are gzip-compressed and chunked (footprints one unit per chunk).

Determinism: every container's object id is derived from the identifier and the
container's path (uuid5) instead of a random uuid4, so two exports of the same data give the
same content; only ``file_create_date`` (the export time; also ``session_start_time`` when
the recording's start is unknown) differs, and with it a few bytes of the HDF5 file (with the
same export time the files are byte-identical). :func:`read_nwb` returns the content for comparisons.

Miniscope device settings (ndx-miniscope): when the recording folder holds the Miniscope
software's settings (V4 ``metaData.json`` with deviceType, frameRate, gain, led0, ROI...;
V3 ``settings_and_notes.dat`` with excitation and msCamExposure), the Device "Miniscope" is
an ``ndx_miniscope.Miniscope`` carrying them in the extension's types; the settings outside
the extension's schema (ewl, the ROI's edges...) are listed in its description. Without
settings, or when they cannot be read, it is a plain Device and the export goes on (the
reason is recorded, see :func:`miniscope_settings`). The extension is imported only when
it is needed: importing it registers its namespace with pynwb.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .cnmf.sparse_footprints import FramedFootprints

__all__ = ["NWB_NAME", "RecordingInfo", "recording_info", "start_time_from_metadata",
           "miniscope_settings", "read_v3_settings", "orientation_text", "nwb_identifier",
           "write_nwb", "read_nwb", "validate_nwb"]

NWB_NAME = "mps_export.nwb"
_EXPORT_TIME = "time of the export (the recording's start time is unknown)"
_ID_NAMESPACE = uuid.UUID("6f1f0c2e-8d43-4d7e-9a55-6d70732d6e77")  # fixed: MPS's own
# attributes of ndx-miniscope's Miniscope type (spec 0.5), by the type the schema gives them
_MINISCOPE_TEXT = ("compression", "deviceType", "frameRate", "gain")
_MINISCOPE_INT = ("framesPerFile", "led0", "excitation", "msCamExposure")
_V3_SETTINGS = "settings_and_notes.dat"
# metaData.json keys that are no device setting (or a path of the acquisition computer)
_NOT_SETTINGS = ("deviceDirectory", "recordingStartTime")
_KIND = "one-photon head-mounted miniscope"
_PLAIN_DEVICE = f"{_KIND} (model not recorded by MPS)"


@dataclass
class RecordingInfo:
    """What the NWB file says about the session (everything MPS knows; the rest is omitted).

    ``start`` is time-zone aware, or None when unknown (the writer then uses the export time,
    so that the JSON metadata holds no time of its own); ``start_source`` says where it came
    from. ``fps`` is used
    for timestamps only when the frame index has no times. ``orientation`` holds step 2a's
    ``rotate``, ``flip_vertical``, ``flip_horizontal`` (and ``post_process``,
    ``camera_shape`` when known). ``device`` is what :func:`miniscope_settings` found (empty
    when the folder has no Miniscope settings: a plain Device is written).
    """

    animal_id: str = "unknown"
    session_id: str = "unknown"
    start: datetime | None = None
    start_source: str = _EXPORT_TIME
    fps: float | None = None
    orientation: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    indicator: str = "unknown"
    location: str = "unknown"
    excitation_lambda: float = float("nan")
    emission_lambda: float = float("nan")
    description: str = ("One-photon miniscope calcium imaging, processed with MPS: neuron "
                        "footprints, denoised calcium traces (C) and deconvolved activity (S).")

    def to_dict(self) -> dict[str, Any]:
        return {"animal_id": self.animal_id, "session_id": self.session_id,
                "session_start": self.start.isoformat() if self.start else None,
                "session_start_source": self.start_source if self.start else None,
                "fps": self.fps, "orientation": dict(self.orientation),
                "device": json.loads(json.dumps(self.device))}  # a deep copy

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, fallback: str | None = None) -> RecordingInfo:
        """Inverse of :meth:`to_dict`; ``fallback`` (ISO time) when no start is recorded."""
        d = d or {}
        info = cls(animal_id=str(d.get("animal_id") or "unknown"),
                   session_id=str(d.get("session_id") or "unknown"),
                   fps=d.get("fps"), orientation=dict(d.get("orientation") or {}),
                   device=dict(d.get("device") or {}))
        start = d.get("session_start") or fallback
        if start:
            info.start = _aware(datetime.fromisoformat(str(start)))
            info.start_source = str(d.get("session_start_source") or info.start_source)
        return info


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


# ----------------------------------------------------------------------------- start time


def start_time_from_metadata(meta: dict | None) -> datetime | None:
    """The recording start of a Miniscope ``metaData.json`` (``recordingStartTime``), UTC.

    The Miniscope software writes ``{"msecSinceEpoch": ...}`` and/or ``year``, ``month``,
    ``day``, ``hour``, ``minute``, ``second``, ``msec`` (local time of the acquisition
    computer; taken as UTC since its zone is not recorded). None when absent or unreadable.
    """
    rst = (meta or {}).get("recordingStartTime")
    if not isinstance(rst, dict):
        return None
    try:
        if rst.get("msecSinceEpoch") is not None:
            return datetime.fromtimestamp(float(rst["msecSinceEpoch"]) / 1000.0, timezone.utc)
        return datetime(int(rst["year"]), int(rst["month"]), int(rst["day"]),
                        int(rst.get("hour", 0)), int(rst.get("minute", 0)),
                        int(rst.get("second", 0)), int(rst.get("msec", 0)) * 1000,
                        tzinfo=timezone.utc)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return None


def _metadata_files(input_dir: Path) -> list[Path]:
    """``metaData.json`` in the recording folder or its parent (V4 keeps one per level)."""
    out = []
    for folder in (input_dir, input_dir.parent):
        try:
            out += sorted(p for p in folder.iterdir()
                          if p.is_file() and p.name.casefold() == "metadata.json")
        except OSError:
            continue
    return out


# ----------------------------------------------------------------------------- device settings


def _as_int(value: Any) -> int | None:
    """An integer setting: ints, integral floats and numeric text ("10", "10.0"), within the
    schema's int32 (a larger one would fail only when HDF5 writes it); else None."""
    if isinstance(value, bool):  # JSON true/false is no count
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value) or value != int(value):
            return None
        value = int(value)
    if isinstance(value, (int, np.integer)) and -2**31 <= value < 2**31:
        return int(value)
    return None


def _as_text(key: str, value: Any) -> str | None:
    """A text setting; a numeric frame rate is spelled as the V4 software does ("20FPS")."""
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    if key == "frameRate" and isinstance(value, (int, float)):
        return f"{value:g}FPS" if np.isfinite(value) else None
    text = str(value).strip()
    return text or None


def _as_roi(value: Any) -> list[int] | None:
    """The ROI as the extension's "height x width" int array: V4 writes a dict with height,
    width, leftEdge and topEdge (the edges go to the other settings)."""
    if isinstance(value, dict):
        vals = [_as_int(value.get("height")), _as_int(value.get("width"))]
    elif isinstance(value, (list, tuple)):
        vals = [_as_int(v) for v in value]
    else:
        return None
    return vals if vals and all(v is not None and v >= 0 for v in vals) else None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _split_settings(raw: dict) -> tuple[dict, dict, list[str]]:
    """(ndx-miniscope attributes in the schema's types, other scalar settings, descriptions
    of attributes whose value could not be converted)."""
    spec: dict[str, Any] = {}
    other: dict[str, Any] = {}
    bad: list[str] = []
    for key, value in raw.items():
        if key in _MINISCOPE_TEXT:
            conv = _as_text(key, value)
        elif key in _MINISCOPE_INT:
            conv = _as_int(value)
        elif key == "ROI":
            conv = _as_roi(value)
            if isinstance(value, dict) and all(_is_scalar(v) for v in value.values()):
                other["ROI"] = dict(value)  # keeps leftEdge / topEdge
        else:
            if key not in _NOT_SETTINGS and _is_scalar(value):
                other[key] = value
            continue
        if conv is None:
            bad.append(f"{key}={str(value)[:40]!r}")
        else:
            spec[key] = conv
    return spec, other, bad


def read_v3_settings(path: Path) -> dict[str, str]:
    """The settings row of a Miniscope V3 ``settings_and_notes.dat``, as text.

    The V3 software writes a tab-separated header line (``animal``, ``excitation``,
    ``msCamExposure``, ``recordLength``) and one line of values; the table of notes below
    them is not read. ValueError naming the file when it has not that shape.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    if len(lines) < 2 or "\t" not in lines[0]:
        raise ValueError(f"{path}: expected a tab-separated header line and a line of values")
    head = [h.strip() for h in lines[0].split("\t")]
    values = [v.strip() for v in lines[1].split("\t")]
    return {h: v for h, v in zip(head, values) if h}


def _read_settings_file(path: Path) -> dict:
    """The raw settings of a ``metaData.json`` or V3 ``settings_and_notes.dat``; ValueError
    saying why when unreadable."""
    if path.name.casefold() == _V3_SETTINGS.casefold():
        return read_v3_settings(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path.parent.name}/{path.name} is not readable JSON "
                         f"({str(exc)[:80]})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path.parent.name}/{path.name} holds a {type(raw).__name__}, "
                         f"not an object")
    return raw


def _v3_settings_files(input_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in input_dir.iterdir()
                      if p.is_file() and p.name.casefold() == _V3_SETTINGS.casefold())
    except OSError:
        return []


def miniscope_settings(input_dir: Path) -> dict[str, Any]:
    """The Miniscope device settings of a recording folder, for the NWB Device.

    Candidates, in order: ``metaData.json`` in ``input_dir`` then in its parent (V4: the
    device folder's file holds the settings, the session folder's only the start time), then
    ``settings_and_notes.dat`` in ``input_dir`` (V3). The first file holding an attribute of
    ndx-miniscope's Miniscope type is used. Returns ``{}`` when no file has one; else a dict
    with ``settings`` (those attributes in the schema's types: text for compression,
    deviceType, frameRate such as "20FPS", gain; int for framesPerFile, led0, excitation,
    msCamExposure; ROI as [height, width]), ``other`` (the file's other scalar settings,
    e.g. ewl, deviceName, and the V4 ROI with its edges), ``source`` (which file) and
    ``problem`` when a file or value could not be read. Never raises: an unreadable file or
    value is skipped (and named in ``problem``), so the export always goes on.
    """
    input_dir = Path(input_dir)
    problems: list[str] = []
    for path in _metadata_files(input_dir) + _v3_settings_files(input_dir):
        try:
            raw = _read_settings_file(path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        spec, other, bad = _split_settings(raw)
        if bad:
            problems.append(f"{path.name}: unreadable values {', '.join(bad)}")
        if spec:
            out: dict[str, Any] = {"settings": spec, "other": other,
                                   "source": f"{path.name} of folder '{path.parent.name}'"}
            if problems:
                out["problem"] = "; ".join(problems)
            return out
    return {"problem": "; ".join(problems)} if problems else {}


def _video_mtime(file_health: Any) -> tuple[datetime, str] | None:
    files = (file_health or {}).get("files") if isinstance(file_health, dict) else None
    for f in files or []:
        path = f.get("path") if isinstance(f, dict) else None
        if path and f.get("status", "ok") not in ("missing", "unreadable"):
            try:
                ts = Path(path).stat().st_mtime
            except OSError:
                continue
            return (datetime.fromtimestamp(ts, timezone.utc),
                    f"modification time of the first video file {Path(path).name} "
                    f"(approximate: when that file was last written)")
    return None


def recording_info(config: dict | None, frame_index: Any = None, file_health: Any = None,
                   fallback: str | None = None) -> RecordingInfo:
    """Session facts for the NWB file from step 1's config, 2a's frame index and file health.

    Start time, first found of: ``recordingStartTime`` in a ``metaData.json`` of the input
    folder (or its parent); the modification time of the first video file; ``fallback``
    (ISO time); else None (:func:`write_nwb` then uses the export time). Orientation: the
    ``rotate`` / ``flip_vertical`` /
    ``flip_horizontal`` attributes step 2a records on the frame index. Device: the Miniscope
    settings of the input folder (:func:`miniscope_settings`).
    """
    config = config or {}
    info = RecordingInfo(animal_id=str(config.get("animal_id") or "unknown"),
                         session_id=str(config.get("session_id") or "unknown"))
    attrs = dict(getattr(frame_index, "attrs", {}) or {})
    info.orientation = {k: _plain(attrs[k]) for k in
                        ("rotate", "flip_vertical", "flip_horizontal", "post_process",
                         "camera_shape") if k in attrs}
    start = None
    if config.get("input_dir"):
        for path in _metadata_files(Path(config["input_dir"])):
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            t = start_time_from_metadata(meta if isinstance(meta, dict) else None)
            if info.fps is None and isinstance(meta, dict):
                from .io.layout import parse_frame_rate

                info.fps = parse_frame_rate(meta.get("frameRate"))
            if t is not None and start is None:
                start = (t, f"recordingStartTime in {path.name} of {path.parent.name}")
    if config.get("input_dir"):
        info.device = miniscope_settings(Path(config["input_dir"]))
    start = start or _video_mtime(file_health)
    if start is None and fallback:
        start = (_aware(datetime.fromisoformat(fallback)), _EXPORT_TIME)
    if start is not None:
        info.start, info.start_source = start
    return info


def _plain(v: Any) -> Any:
    """Attribute values as plain JSON types (zarr attrs may give numpy scalars / lists)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    return v


def orientation_text(o: dict[str, Any]) -> str:
    """One sentence on the orientation step 2a applied (rotation first, then flips)."""
    if not o:
        return "Orientation applied at step 2a: not recorded."
    flips = [name for key, name in (("flip_vertical", "flipped upside down"),
                                    ("flip_horizontal", "mirrored left-right")) if o.get(key)]
    parts = [f"rotated {int(o.get('rotate') or 0)} degrees clockwise"] + flips
    text = ("Orientation applied at step 2a (to every frame, before any analysis; footprints "
            f"and images are in this orientation): {', then '.join(parts)}")
    if o.get("camera_shape"):
        text += f"; camera frames were {o['camera_shape'][0]}x{o['camera_shape'][1]} px"
    if o.get("post_process"):
        text += f"; then the user's function {o['post_process']!r} was applied"
    return text + ". Settings: " + json.dumps(
        {k: o[k] for k in ("rotate", "flip_vertical", "flip_horizontal") if k in o},
        sort_keys=True) + "."


# ----------------------------------------------------------------------------- writing


def nwb_identifier(data, info: RecordingInfo) -> str:
    """``mps-<animal>-<session>-<hash>``: the hash covers the metadata (parameters, filter,
    curation...), unit ids and array shapes, so one export always gets the same identifier
    and a different export another one."""
    h = hashlib.sha256()
    h.update(json.dumps(data.metadata, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(data.unit_ids).tobytes())
    h.update(np.ascontiguousarray(data.frames).tobytes())
    h.update(repr((data.A.shape, data.C.shape)).encode())
    return f"mps-{info.animal_id}-{info.session_id}-{h.hexdigest()[:16]}"


def _timestamps(data, info: RecordingInfo) -> tuple[np.ndarray, str]:
    """Seconds since the recording's first frame, and how they were obtained."""
    t = np.asarray(data.frame_table.get("time_s", np.full(data.frames.size, np.nan)),
                   np.float64)
    if t.size and np.all(np.isfinite(t)):
        return t, "time_s of the frame index (timestamp file or frame number / frame rate)"
    if info.fps:
        return (data.frames / float(info.fps),
                f"frame number / {info.fps:g} fps (the frame index has no times)")
    return (data.frames.astype(np.float64),
            "UNKNOWN RATE: the frame number itself (no timestamps and no frame rate)")


def _io(arr: np.ndarray, chunks: tuple[int, ...] | None):
    from hdmf.backends.hdf5.h5_utils import H5DataIO

    if isinstance(arr, FramedFootprints) and arr.size:  # streamed, one footprint at a time
        from hdmf.data_utils import DataChunkIterator

        ch = tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks, arr.shape))
        frames = (arr[i] for i in range(arr.shape[0]))
        it = DataChunkIterator(data=frames, maxshape=arr.shape, dtype=arr.dtype,
                               buffer_size=ch[0])
        return H5DataIO(it, compression="gzip", compression_opts=4, shuffle=True, chunks=ch)
    arr = np.ascontiguousarray(arr)
    if arr.size == 0:
        return arr
    ch = tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks, arr.shape)) \
        if chunks else True
    return H5DataIO(arr, compression="gzip", compression_opts=4, shuffle=True, chunks=ch)


def _unit_columns(data) -> dict[str, tuple[np.ndarray, str]]:
    """Per-unit columns for the PlaneSegmentation: numbers and strings of ``data.units``."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    for k, v in data.units.items():
        arr = np.asarray(v)
        if arr.dtype.kind in "biuf":
            out[k] = (arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64),
                      f"MPS per-unit value '{k}' (see mps_export.json)")
        else:
            # numpy strings: an empty list has no dtype hdmf could write
            out[k] = (np.array([str(x) for x in v], dtype=object).astype(str)
                      if len(v) else np.zeros(0, "U1"), f"MPS per-unit label '{k}'")
    return out


def _build(data, info: RecordingInfo, created: datetime):
    """The in-memory NWBFile (module docstring for the layout)."""
    from pynwb import NWBFile, TimeSeries
    from pynwb.base import Images
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage
    from hdmf.common import DynamicTableRegion, VectorData
    from pynwb.ophys import (Fluorescence, ImageSegmentation, OpticalChannel,
                             PlaneSegmentation, RoiResponseSeries)

    n, H, W = data.A.shape
    T = data.frames.size
    identifier = nwb_identifier(data, info)
    grid = data.metadata.get("pixel_grid") or {}
    meta_json = json.dumps(data.metadata, sort_keys=True, default=str)
    orient = orientation_text(info.orientation)
    notes = "\n".join([
        "Written by MPS (miniscope processing). Footprints are in the input video's pixel "
        "grid (step 3a's crop undone); C = denoised calcium traces, S = deconvolved activity, "
        "in the fluorescence units of the movie.",
        orient,
        f"session_start_time: {info.start_source}.",
        "MPS export metadata (JSON): " + meta_json])
    nwb = NWBFile(
        session_description=info.description, identifier=identifier,
        session_start_time=info.start, file_create_date=created,
        session_id=info.session_id, notes=notes,
        subject=Subject(subject_id=info.animal_id),
        source_script="mps_core.nwb_export", source_script_file_name="mps_core/nwb_export.py")
    device = _device(nwb, info.device)
    channel = OpticalChannel(name="OpticalChannel", description="emission channel "
                             "(wavelength unknown: NaN)", emission_lambda=info.emission_lambda)
    plane = nwb.create_imaging_plane(
        name="ImagingPlane", optical_channel=channel, device=device,
        indicator=info.indicator, location=info.location,
        excitation_lambda=info.excitation_lambda,
        imaging_rate=float(info.fps) if info.fps else None,
        description=(f"{orient} Pixel grid: {grid.get('grid', 'input video')} "
                     f"{H}x{W} px; the analysis ran on the crop at (y0, x0) = "
                     f"({grid.get('crop_y0', '?')}, {grid.get('crop_x0', '?')}) of step 3a."))
    ophys = nwb.create_processing_module(name="ophys", description="MPS results: "
                                         "segmentation, traces, motion")
    seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(seg)
    cols = [VectorData(name="image_mask", description="footprint of each unit (height, "
                       "width) in the input video's pixel grid, zeros outside the analysed "
                       "crop", data=_io(data.A, (1, H, W))),
            VectorData(name="unit_id", description="MPS unit id (stable from step 4e on)",
                       data=data.unit_ids.copy())]
    cols += [VectorData(name=k, description=desc, data=vals)
             for k, (vals, desc) in _unit_columns(data).items()]
    ps = PlaneSegmentation(
        name="PlaneSegmentation", imaging_plane=plane, id=data.unit_ids.copy(),
        columns=cols, description="MPS final units; image_mask is (unit, height, width), the "
                                  "same array as A.npy; table ids = MPS unit ids")
    seg.add_plane_segmentation(ps)
    times, time_note = _timestamps(data, info)
    fl = Fluorescence(name="Fluorescence")
    ophys.add(fl)
    # built directly: create_roi_table_region wants a list, which cannot be empty
    rois = DynamicTableRegion(name="rois", data=np.arange(n, dtype=np.int64), table=ps,
                              description="all exported units")
    first = None
    for name, arr, what in (("Denoised", data.C, "C: denoised calcium trace of each unit"),
                            ("Deconvolved", data.S, "S: deconvolved activity (spike "
                                                    "amplitude) of each unit")):
        series = RoiResponseSeries(
            name=name, data=_io(arr.T, (min(T, 4096), min(n, 64))), unit="a.u.", rois=rois,
            timestamps=first if first is not None else _io(times, None),
            description=f"{what}; (frame, unit); timestamps: {time_note}",
            comments="frames removed by MPS (frame QC, motion outliers) are absent: see the "
                     "timestamps and the frame numbers in mps_export.json / frames.npy")
        fl.add_roi_response_series(series)
        if first is None:
            first = series
    if data.b is not None and data.f is not None:
        bps = PlaneSegmentation(
            name="Background", imaging_plane=plane, id=[0],
            description="MPS background: spatial component b (one image mask)",
            columns=[VectorData(name="image_mask", description="background image b in the "
                                "input video's pixel grid", data=_io(data.b[None], (1, H, W)))])
        seg.add_plane_segmentation(bps)
        fl.add_roi_response_series(RoiResponseSeries(
            name="Background", data=_io(data.f[:, None], (min(T, 4096), 1)), unit="a.u.",
            rois=bps.create_roi_table_region(region=[0], description="background"),
            timestamps=first, description="f: temporal background component"))
    ophys.add(TimeSeries(name="motion", data=_io(data.motion, (min(T, 4096), 2)),
                         unit="pixels", timestamps=first,
                         description="(dy, dx) shift that registered each kept frame "
                                     "(the mean over patches when piecewise-rigid)"))
    if data.mean_frame is not None and np.shape(data.mean_frame) == (H, W):
        ophys.add(Images(name="SummaryImages", description="summary images of the movie",
                         images=[GrayscaleImage(name="mean", data=_io(
                             np.asarray(data.mean_frame, np.float32), (H, W)),
                             description="mean image of the registered movie")]))
    _fix_object_ids(nwb, identifier)
    return nwb


def _device(nwb, device: dict[str, Any]):
    """The Device "Miniscope": ndx-miniscope's Miniscope type carrying the recording's settings
    when they are known (:func:`miniscope_settings`), else a plain Device, as without them."""
    device = device or {}
    # converted again: ``device`` may come from an older or edited mps_export.json
    spec, _, _ = _split_settings(dict(device.get("settings") or {}))
    other = json.dumps(device.get("other") or {}, sort_keys=True, default=str)
    if spec:
        desc = (f"{spec.get('deviceType', 'Miniscope')}: {_KIND}; settings read from "
                f"{device.get('source', 'the recording folder')}")
        if device.get("other"):
            desc += f"; other settings of that file: {other}"
        if device.get("problem"):
            desc += f"; not read: {device['problem']}"
        try:
            from ndx_miniscope import Miniscope  # registers the extension's namespace
        except ImportError:
            problem = "the ndx-miniscope package is not installed; settings: " + json.dumps(
                spec, sort_keys=True)
        else:
            try:
                dev = Miniscope(name="Miniscope", description=desc, **spec)
            except (TypeError, ValueError) as exc:  # docval's type checks
                problem = f"ndx-miniscope refused the settings ({exc})"
            else:
                nwb.add_device(dev)
                return dev
    else:
        problem = device.get("problem")
    desc = _PLAIN_DEVICE + (f"; Miniscope settings not written: {problem}" if problem else "")
    return nwb.create_device(name="Miniscope", description=desc)


def _path(obj) -> str:
    names = []
    while obj is not None:
        names.append(f"{type(obj).__name__}:{obj.name}")
        obj = obj.parent
    return "/".join(reversed(names))


def _fix_object_ids(nwb, identifier: str) -> None:
    """Object ids from uuid5(identifier, container path) instead of random uuid4s.

    hdmf assigns ids when containers are created and offers no public setter; the id lives
    in a name-mangled attribute of AbstractContainer, set here (checked by read-back tests).
    """
    for obj in nwb.all_children():  # includes nwb itself
        if hasattr(obj, "_AbstractContainer__object_id"):
            obj._AbstractContainer__object_id = str(uuid.uuid5(
                _ID_NAMESPACE, f"{identifier}|{_path(obj)}"))


def write_nwb(folder: Path, data, info: RecordingInfo | None = None,
              name: str = NWB_NAME) -> list[dict]:
    """Write ``folder / name``; returns the file list entry (as the other writers).

    ``info`` defaults to ``data.metadata["recording"]`` (written there by step 8c); the
    export time (``data.exported_at``) is the start when none is known.
    """
    from pynwb import NWBHDF5IO

    from .export import _entry, _fresh

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if info is None:
        info = RecordingInfo.from_dict(data.metadata.get("recording"), data.exported_at)
    created = _aware(datetime.fromisoformat(data.exported_at)) if data.exported_at else \
        datetime.now(timezone.utc)
    if info.start is None:
        info = replace(info, start=created, start_source=_EXPORT_TIME)
    path = folder / name
    _fresh(path)
    nwb = _build(data, info, created)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return [_entry(folder, path, "nwb", None, None) | {"identifier": nwb.identifier}]


# ----------------------------------------------------------------------------- reading


def validate_nwb(path: Path) -> list[str]:
    """pynwb's schema validation of ``path``: the list of problems (empty when valid)."""
    from pynwb.validation import validate

    errors = validate(path=str(path))
    if isinstance(errors, tuple):  # older pynwb returned (errors, status)
        errors = errors[0]
    return [str(e) for e in errors]


def read_nwb(path: Path) -> dict[str, Any]:
    """The content of an MPS NWB file as plain values (arrays, strings, object ids), to check
    it and to compare two exports; ``file_create_date`` is returned separately. ``device``:
    name, neurodata_type ("Miniscope" or "Device"), description and the Miniscope settings
    present (ROI as a list)."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        ophys = nwb.processing["ophys"]
        ps = ophys["ImageSegmentation"]["PlaneSegmentation"]
        fl = ophys["Fluorescence"]
        den, dec = fl["Denoised"], fl["Deconvolved"]
        out: dict[str, Any] = {
            "identifier": nwb.identifier, "session_id": nwb.session_id,
            "session_description": nwb.session_description,
            "session_start_time": nwb.session_start_time.isoformat(),
            "subject_id": nwb.subject.subject_id if nwb.subject else None,
            "notes": nwb.notes,
            "imaging_plane": nwb.imaging_planes["ImagingPlane"].description,
            "A": np.asarray(ps["image_mask"].data[:]),
            "ids": np.asarray(ps.id.data[:]),
            "unit_id": np.asarray(ps["unit_id"].data[:]),
            "columns": list(ps.colnames),
            "C": np.asarray(den.data[:]).T, "S": np.asarray(dec.data[:]).T,
            "timestamps": np.asarray(den.timestamps[:]),
            "motion": np.asarray(ophys["motion"].data[:]),
            "device": _device_dict(nwb.devices["Miniscope"]),
            "object_ids": sorted({(_path(o), o.object_id) for o in nwb.all_children()}),
            "file_create_date": [d.isoformat() for d in nwb.file_create_date],
        }
        if "Background" in fl.roi_response_series:
            out["f"] = np.asarray(fl["Background"].data[:])[:, 0]
            out["b"] = np.asarray(ophys["ImageSegmentation"]["Background"]["image_mask"]
                                  .data[:])[0]
        if "SummaryImages" in ophys.data_interfaces:
            out["mean"] = np.asarray(ophys["SummaryImages"]["mean"].data[:])
        for k in ps.colnames:
            if k not in ("image_mask", "unit_id"):
                out[f"column_{k}"] = np.asarray(ps[k].data[:])
    return out


def _device_dict(dev) -> dict[str, Any]:
    """The device as plain values (read inside the open file: ROI is a lazy dataset)."""
    out: dict[str, Any] = {"name": dev.name, "neurodata_type": dev.neurodata_type,
                           "description": dev.description}
    for key in _MINISCOPE_TEXT + _MINISCOPE_INT:
        value = getattr(dev, key, None)
        if value is not None:
            out[key] = str(value) if key in _MINISCOPE_TEXT else int(value)
    roi = getattr(dev, "ROI", None)
    if roi is not None:
        out["ROI"] = [int(v) for v in np.asarray(roi[:])]
    return out
