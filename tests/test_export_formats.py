"""Step 8c's NWB and parquet exports and its curated exclusion (exclude_rejected).

The session is `test_curation.build_session` (steps 2c-8c in the store's own format, known
footprints and traces), plus what 8c reads besides: step 1's config (pointing at a recording
folder with a Miniscope metaData.json), 2a's frame index (with the orientation attributes) and
file health, 2d's motion QC and 4e's background. Step 8c's function runs directly with a
SimpleContext; its filter thresholds are open so that every unit passes and only the curation
decides.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_curation import _frame_coords, _put, build_session  # the store-format session

from mps_core import curation as cu
from mps_core import export as ex
from mps_core import nwb_export as ne
from mps_core import synth
from mps_core.registry import SimpleContext, StepError
from mps_core.steps import STEPS
from mps_core.steps import final as s8
from mps_core.store import SessionStore

FPS = 20.0
START_MS = 1_700_000_000_123  # recordingStartTime.msecSinceEpoch of the recording
ORIENT = {"rotate": 90, "flip_vertical": True, "flip_horizontal": False,
          "post_process": "", "camera_shape": [22, 24]}
OPEN = dict(min_size=0, min_snr=0.0, min_correlation=-1.0, figures=False)


def _add_8c_inputs(root: Path, truth: dict) -> dict:
    """Steps 1, 2a, 2d and 4e of the session, and the recording folder they point at."""
    store: SessionStore = truth["store"]
    videos = root.parent / "videos"
    videos.mkdir()
    (videos / "0.avi").write_bytes(b"not a real video")
    (videos / "metaData.json").write_text(json.dumps(
        {"frameRate": "20FPS", "recordingStartTime": {"msecSinceEpoch": START_MS}}))
    C = store.load("8b", "C_final")
    frames = np.asarray(C.frame.values, np.int64)
    H, W = truth["full"]
    index = xr.Dataset({"removed": ("frame", np.zeros(frames.size, np.int8))},
                       coords=_frame_coords(frames, FPS))
    index["removed"].attrs["removal_codes"] = json.dumps({"1": "transmission corruption"})
    index.attrs.update(frames_in_files=int(frames.size), **ORIENT)
    qc = xr.Dataset({"removed": ("frame", np.zeros(frames.size, np.int8))},
                    coords=_frame_coords(frames, FPS))
    rng = np.random.default_rng(3)
    h, w = truth["A"].shape[1:]
    _put(store, "1", {"config": {"animal_id": "m7", "session_id": "day3",
                                 "input_dir": str(videos), "output_dir": str(root)}})
    _put(store, "2a", {"frame_index": index, "file_health": {"files": [
        {"path": str(videos / "0.avi"), "status": "ok", "height": H, "width": W}]}})
    _put(store, "2d", {"motion_qc": qc})
    _put(store, "4e", {
        "b_init": xr.DataArray(rng.random((h, w)).astype(np.float32), dims=("height", "width")),
        "f_init": xr.DataArray(rng.random(frames.size).astype(np.float32), dims=("frame",),
                               coords=_frame_coords(frames, FPS))})
    return truth


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats") / "session"
    return _add_8c_inputs(root, build_session(root, fps=FPS))


@pytest.fixture
def session(built, tmp_path):
    """A fresh copy of the session (tests write curation labels into it)."""
    root = tmp_path / "session"
    shutil.copytree(built["store"].root, root)
    store = SessionStore(root, create=False)
    return {**built, "store": store}


def _inputs(store: SessionStore) -> dict:
    names = s8.STEP_8C.inputs + s8.STEP_8C.optional_inputs
    out = {}
    for name in names:
        src = next(s.id for s in STEPS if name in s.outputs)
        if store.has(src, name):
            out[name] = store.load(src, name)
    ids = out["A_refined"].unit_id.values
    # step 8b's noise levels (build_session stores C and S only)
    out["solver_report_final"] = {"units": {"unit_id": ids.tolist(),
                                            "sn": [0.05] * ids.size}, "settings": {}}
    # the session was copied: step 1's output_dir must name the copy
    out["config"] = {**out["config"], "output_dir": str(store.root)}
    return out


def _export(store, out: Path, **params) -> dict:
    p = s8.ExportParams(**{**OPEN, **params})
    res = s8.run_export(p, SimpleContext(output_dir=out), **_inputs(store))
    return res | {"folder": out / "export"}


# ----------------------------------------------------------------------------- NWB


def test_nwb_is_valid_and_holds_what_the_numpy_export_holds(session, tmp_path):
    res = _export(session["store"], tmp_path / "run", export_nwb=True)
    folder = res["folder"]
    path = folder / ne.NWB_NAME
    assert ne.validate_nwb(path) == []
    r = ne.read_nwb(path)  # opened with NWBHDF5IO(path, "r")
    A, C, S = (np.load(folder / f"{k}.npy") for k in ("A", "C", "S"))
    ids = np.load(folder / "unit_ids.npy")
    np.testing.assert_array_equal(ids, session["ids"])
    # footprints in the input video's grid: the crop offsets re-applied, as in A.npy
    y0, x0 = session["offset"]
    h, w = session["A"].shape[1:]
    assert r["A"].shape == (ids.size, *session["full"])
    np.testing.assert_array_equal(r["A"], A)
    np.testing.assert_array_equal(r["A"][:, y0:y0 + h, x0:x0 + w], session["A"])
    np.testing.assert_array_equal(r["C"], C)
    np.testing.assert_array_equal(r["S"], S)
    np.testing.assert_array_equal(r["ids"], ids)
    np.testing.assert_array_equal(r["unit_id"], ids)
    frames = np.load(folder / "frames.npy")
    np.testing.assert_allclose(r["timestamps"], frames / FPS)  # the frame index's time_s
    np.testing.assert_array_equal(r["motion"], np.load(folder / "motion.npy"))
    np.testing.assert_array_equal(r["b"], np.load(folder / "b.npy"))
    np.testing.assert_array_equal(r["f"], np.load(folder / "f.npy"))
    # session facts: ids of step 1, start from metaData.json, orientation of step 2a
    assert r["subject_id"] == "m7" and r["session_id"] == "day3"
    assert datetime.fromisoformat(r["session_start_time"]) == datetime.fromtimestamp(
        START_MS / 1000, timezone.utc)
    assert "rotated 90 degrees clockwise, then flipped upside down" in r["imaging_plane"]
    assert '"rotate": 90' in r["imaging_plane"] and "rotated 90" in r["notes"]
    assert r["identifier"].startswith("mps-m7-day3-")
    # the manifest and the JSON list the NWB file
    js = json.loads((folder / "mps_export.json").read_text())
    assert ne.NWB_NAME in {e["path"] for e in js["files"]}
    assert js["recording"]["orientation"]["rotate"] == 90
    assert ne.NWB_NAME in {e["path"] for e in res["export_manifest"]["files"]}


def test_nwb_without_times_or_units(tmp_path):
    """No timestamps and no frame rate: frame numbers, said so; no units: still valid."""
    T, H, W = 30, 8, 9
    frames = np.arange(T) * 2
    data = ex.ExportData(
        A=np.zeros((0, H, W)), C=np.zeros((0, T)), S=np.zeros((0, T)),
        unit_ids=np.zeros(0), frames=frames, motion=np.zeros((T, 2)),
        frame_table={"frame": frames, "time_s": np.full(T, np.nan)},
        units={"snr": [], "label": []}, exported_at="2026-01-02T03:04:05+00:00")
    ne.write_nwb(tmp_path, data)
    assert ne.validate_nwb(tmp_path / ne.NWB_NAME) == []
    r = ne.read_nwb(tmp_path / ne.NWB_NAME)
    assert r["A"].shape == (0, H, W) and r["C"].shape == (0, T)
    np.testing.assert_array_equal(r["timestamps"], frames)
    assert r["session_start_time"] == "2026-01-02T03:04:05+00:00"  # the export time
    assert r["subject_id"] == "unknown"


def test_recording_start_time_sources(tmp_path):
    assert ne.start_time_from_metadata({"recordingStartTime": {
        "year": 2024, "month": 5, "day": 6, "hour": 7, "minute": 8, "second": 9,
        "msec": 250}}) == datetime(2024, 5, 6, 7, 8, 9, 250000, timezone.utc)
    assert ne.start_time_from_metadata({"recordingStartTime": "yesterday"}) is None
    video = tmp_path / "rec" / "0.avi"
    video.parent.mkdir()
    video.write_bytes(b"x")
    health = {"files": [{"path": str(video), "status": "ok"}]}
    info = ne.recording_info({"input_dir": str(video.parent)}, None, health,
                             fallback="2026-01-01T00:00:00+00:00")
    assert info.start == datetime.fromtimestamp(video.stat().st_mtime, timezone.utc)
    assert "modification time" in info.start_source
    info = ne.recording_info({}, None, None, fallback="2026-01-01T00:00:00+00:00")
    assert info.start.year == 2026 and "export" in info.start_source
    assert info.orientation == {} and "not recorded" in ne.orientation_text({})


# ----------------------------------------------------------------------------- Miniscope device


def _small_export(info: ne.RecordingInfo) -> ex.ExportData:
    """Two units over 6 frames, with ``info`` as step 8c records it (through its JSON)."""
    T = 6
    frames = np.arange(T)
    rng = np.random.default_rng(5)
    return ex.ExportData(
        A=rng.random((2, 5, 6)), C=rng.random((2, T)), S=np.zeros((2, T)), unit_ids=[3, 8],
        frames=frames, motion=np.zeros((T, 2)), units={"snr": [1.0, 2.0]},
        frame_table={"frame": frames, "time_s": frames / FPS},
        metadata={"recording": json.loads(json.dumps(info.to_dict()))},
        exported_at="2026-01-02T03:04:05+00:00")


def _nwb_device(folder: Path, out: Path, validate: bool = True) -> dict:
    """Export with the recording facts of ``folder``; the file must validate; its device."""
    info = ne.recording_info({"input_dir": str(folder)})
    ne.write_nwb(out, _small_export(info))  # never fails because of device metadata
    if validate:  # pynwb's validation is the slow part: once per kind of device
        assert ne.validate_nwb(out / ne.NWB_NAME) == []
    return ne.read_nwb(out / ne.NWB_NAME)["device"]


def test_nwb_device_is_a_miniscope_with_the_v4_settings(tmp_path):
    rec = synth.simulate(n_frames=6, height=40, width=40, n_cells=1, cell_diameter=6.0,
                         max_shift=1.0, seed=2)
    folder = tmp_path / "rec" / "Miniscope"
    synth.write_miniscope(rec, folder, "v4")
    meta = json.loads((folder / "metaData.json").read_text())
    dev = _nwb_device(folder, tmp_path / "out")  # the file synth writes, as it is
    assert dev["neurodata_type"] == "Miniscope" and dev["name"] == "Miniscope"
    for key in ("compression", "deviceType", "frameRate", "gain", "framesPerFile", "led0"):
        assert dev[key] == meta[key], key
    assert dev["ROI"] == [40, 40]
    assert '"ewl": 0' in dev["description"] and '"leftEdge": 0' in dev["description"]
    assert "deviceDirectory" not in dev["description"]
    # planted values in the types the software may write: numbers as text, a numeric rate
    meta.update(frameRate=30, framesPerFile="500", led0=37.0, gain="High", ewl=-12,
                deviceType="Miniscope_V4_BNO_custom", ROI={"height": 33, "width": 35,
                                                           "leftEdge": 4, "topEdge": 2})
    (folder / "metaData.json").write_text(json.dumps(meta))
    dev = _nwb_device(folder, tmp_path / "out2")
    assert {k: dev[k] for k in ("frameRate", "framesPerFile", "led0", "gain", "deviceType",
                                "ROI")} == {
        "frameRate": "30FPS", "framesPerFile": 500, "led0": 37, "gain": "High",
        "deviceType": "Miniscope_V4_BNO_custom", "ROI": [33, 35]}
    assert "excitation" not in dev and '"ewl": -12' in dev["description"]
    assert dev["description"].startswith("Miniscope_V4_BNO_custom: ")


def test_nwb_device_settings_in_the_parent_folder_and_v3(tmp_path):
    """V4 settings one level up are found; V3 settings_and_notes.dat gives excitation and
    msCamExposure; a V3 folder without it gives the plain device."""
    rec = synth.simulate(n_frames=6, height=40, width=40, n_cells=1, cell_diameter=6.0,
                         max_shift=1.0, seed=2)
    v3 = tmp_path / "v3"
    synth.write_miniscope(rec, v3, "v3")
    assert ne.miniscope_settings(v3) == {}
    assert _nwb_device(v3, tmp_path / "o1", validate=False)["neurodata_type"] == "Device"
    (v3 / "settings_and_notes.dat").write_text(
        "animal\texcitation\tmsCamExposure\trecordLength\n"
        "m7\t42\t255\t0\n\nelapsedTime\tNote\n1200\tlights off\n")
    dev = _nwb_device(v3, tmp_path / "o2")
    assert dev["neurodata_type"] == "Miniscope"
    assert (dev["excitation"], dev["msCamExposure"]) == (42, 255)
    assert "deviceType" not in dev and '"animal": "m7"' in dev["description"]
    inner = tmp_path / "session" / "Miniscope"
    inner.mkdir(parents=True)
    (inner.parent / "metaData.json").write_text(json.dumps({"deviceType": "Miniscope_V3",
                                                            "led0": 5}))
    got = ne.miniscope_settings(inner)
    assert got["settings"] == {"deviceType": "Miniscope_V3", "led0": 5}
    assert got["source"] == "metaData.json of folder 'session'"


def test_nwb_device_without_settings_is_the_plain_device(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "0.avi").write_bytes(b"x")
    info = ne.recording_info({"input_dir": str(folder)})
    assert info.device == {} and info.to_dict()["device"] == {}
    dev = _nwb_device(folder, tmp_path / "out")
    assert dev == {"name": "Miniscope", "neurodata_type": "Device",
                   "description": "one-photon head-mounted miniscope (model not recorded "
                                  "by MPS)"}
    # only a start time (the session-level metaData.json of V4): no device settings either
    (folder / "metaData.json").write_text(json.dumps({"recordingStartTime": {
        "msecSinceEpoch": START_MS}, "animalName": "m7"}))
    assert ne.miniscope_settings(folder) == {}


def test_nwb_device_with_malformed_settings(tmp_path):
    """Unreadable metadata never stops the export: plain Device, the reason in its description;
    unreadable values are left out and the rest written."""
    folder = tmp_path / "Miniscope"
    folder.mkdir()
    meta = folder / "metaData.json"
    for text, why in (('{"deviceType": "Miniscope_V4_BNO", "led0": ', "not readable JSON"),
                      ('["deviceType", "Miniscope_V4_BNO"]', "holds a list"),
                      (b"\xff\xfe{}", "not readable JSON")):
        meta.write_bytes(text if isinstance(text, bytes) else text.encode())
        dev = _nwb_device(folder, tmp_path / f"out{len(why)}{len(text)}",
                          validate=why == "holds a list")
        assert dev["neurodata_type"] == "Device", text
        assert "Miniscope settings not written" in dev["description"]
        assert why in dev["description"], (text, dev["description"])
    meta.write_text(json.dumps({"led0": "bright", "framesPerFile": 2.5, "gain": {"x": 1},
                                "ROI": "whole", "frameRate": True}))
    got = ne.miniscope_settings(folder)
    assert "settings" not in got and "led0='bright'" in got["problem"]
    assert "framesPerFile=" in got["problem"] and "frameRate=" in got["problem"]
    meta.write_text(json.dumps({"deviceType": "Miniscope_V4_BNO", "led0": "bright",
                                "framesPerFile": 10**12, "ROI": {"height": -1, "width": 3}}))
    dev = _nwb_device(folder, tmp_path / "partly")
    assert dev["neurodata_type"] == "Miniscope" and dev["deviceType"] == "Miniscope_V4_BNO"
    assert "led0" not in dev and "ROI" not in dev and "framesPerFile" not in dev
    assert ("not read: metaData.json: unreadable values led0='bright', "
            "framesPerFile='1000000000000', ROI=") in dev["description"]
    # a V3 file of another shape: plain device, said so
    meta.unlink()
    (folder / "settings_and_notes.dat").write_text("no tabs here\n")
    dev = _nwb_device(folder, tmp_path / "v3bad", validate=False)
    assert dev["neurodata_type"] == "Device" and "tab-separated" in dev["description"]
    with pytest.raises(ValueError, match="settings_and_notes.dat"):
        ne.read_v3_settings(folder / "settings_and_notes.dat")


def test_step_8c_writes_the_recording_folders_settings(session, tmp_path):
    """Through step 8c: the recording folder's metaData.json (frameRate and start time only)
    gives a Miniscope device, and mps_export.json keeps the settings for later exports."""
    folder = _export(session["store"], tmp_path / "run", export_nwb=True)["folder"]
    dev = ne.read_nwb(folder / ne.NWB_NAME)["device"]
    assert (dev["neurodata_type"], dev["frameRate"]) == ("Miniscope", "20FPS")
    rec = json.loads((folder / "mps_export.json").read_text())["recording"]
    assert rec["device"]["settings"] == {"frameRate": "20FPS"}
    assert rec["device"]["source"] == "metaData.json of folder 'videos'"
    assert ne.RecordingInfo.from_dict(rec).device == rec["device"]


def test_nwb_device_from_an_edited_export_json_is_checked_again(tmp_path):
    """The curated export rebuilds the device from mps_export.json: wrong types there are
    converted or dropped, never passed to ndx-miniscope as they are."""
    info = ne.RecordingInfo.from_dict({"device": {
        "settings": {"led0": "12", "gain": 3, "ROI": [10, "x"]}, "source": "metaData.json"}})
    data = _small_export(info)
    ne.write_nwb(tmp_path, data, info)
    assert ne.validate_nwb(tmp_path / ne.NWB_NAME) == []
    dev = ne.read_nwb(tmp_path / ne.NWB_NAME)["device"]
    assert (dev["neurodata_type"], dev["led0"], dev["gain"]) == ("Miniscope", 12, "3")
    assert "ROI" not in dev


# ----------------------------------------------------------------------------- parquet


def test_parquet_tables_equal_the_csv_tables(session, tmp_path):
    a = _export(session["store"], tmp_path / "csv", export_table=True)["folder"]
    b = _export(session["store"], tmp_path / "pq", export_table=True,
                table_format="parquet")["folder"]
    ids = np.load(a / "unit_ids.npy")
    for name, arr in (("C_table", "C"), ("S_table", "S")):
        csv = pd.read_csv(a / f"{name}.csv")
        pq = pd.read_parquet(b / f"{name}.parquet")
        assert list(pq.columns) == list(csv.columns) == (
            ["frame", "movie_number", "local_frame", "time_s"] + [f"unit_{u}" for u in ids])
        pd.testing.assert_frame_equal(pq, csv, check_dtype=False, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(pq.filter(like="unit_").to_numpy().T,
                                      np.load(b / f"{arr}.npy"))  # exact in parquet
        assert pq["frame"].dtype == np.int64
    listed = {e["path"] for e in json.loads((b / "mps_export.json").read_text())["files"]}
    assert {"C_table.parquet", "S_table.parquet"} <= listed


def test_parquet_keeps_the_hardware_stamp(tmp_path):
    T = 12
    frames = np.arange(T)
    data = ex.ExportData(
        A=np.ones((2, 3, 3)), C=np.arange(2 * T).reshape(2, T), S=np.zeros((2, T)),
        unit_ids=[4, 9], frames=frames, motion=np.zeros((T, 2)),
        frame_table={"frame": frames, "time_s": frames / 30.0, "hw_stamp": frames * 33 + 5,
                     "movie_number": frames // 5, "local_frame": frames % 5})
    ex.write_tables(tmp_path, data, "parquet")
    df = pd.read_parquet(tmp_path / "C_table.parquet")
    assert list(df.columns) == ["frame", "movie_number", "local_frame", "time_s", "hw_stamp",
                                "unit_4", "unit_9"]
    np.testing.assert_array_equal(df["hw_stamp"], frames * 33 + 5)
    np.testing.assert_array_equal(df["unit_9"], np.arange(T, 2 * T))
    with pytest.raises(ValueError, match="'csv' or 'parquet'"):
        ex.write_tables(tmp_path, data, "xlsx")


# ----------------------------------------------------------------------------- curation


def _label(store: SessionStore, rejected: int, accepted: int) -> None:
    cur = cu.Curation()
    cur.reject(rejected)
    cur.accept(accepted)
    cur.set_note(rejected, "a vessel")
    cu.save_curation(store.root, cur)


def test_exclude_rejected_drops_a_rejected_unit_everywhere(session, tmp_path):
    store = session["store"]
    _label(store, rejected=1, accepted=2)
    res = _export(store, tmp_path / "on", export_nwb=True, export_table=True)
    folder = res["folder"]
    ids = np.load(folder / "unit_ids.npy")
    assert 1 not in ids and ids.tolist() == [u for u in session["ids"] if u != 1]
    assert np.load(folder / "A.npy").shape[0] == ids.size
    assert 1 not in ne.read_nwb(folder / ne.NWB_NAME)["unit_id"]
    assert "unit_1" not in pd.read_csv(folder / "C_table.csv").columns
    js = json.loads((folder / "mps_export.json").read_text())
    assert js["curation"]["excluded"] == [1] and js["curation"]["exclude_rejected"] is True
    assert js["curation"]["rejected"] == [1] and js["curation"]["accepted"] == [2]
    assert res["export_manifest"]["excluded_by_curation"] == [1]
    fu = res["final_units"]
    assert fu["kept"] == [True] * len(session["ids"])  # the filter's verdict, unchanged
    assert fu["exported"][1] is False and fu["curation"][1] == "rejected"
    assert js["units"]["curation"][ids.tolist().index(2)] == "accepted"


def test_exclude_rejected_off_exports_them_labelled(session, tmp_path):
    store = session["store"]
    _label(store, rejected=1, accepted=2)
    res = _export(store, tmp_path / "off", exclude_rejected=False, export_nwb=True)
    folder = res["folder"]
    ids = np.load(folder / "unit_ids.npy").tolist()
    assert ids == session["ids"].tolist()
    js = json.loads((folder / "mps_export.json").read_text())
    assert js["units"]["curation"][ids.index(1)] == "rejected"
    assert js["units"]["curation_note"][ids.index(1)] == "a vessel"
    assert js["curation"]["excluded"] == []
    r = ne.read_nwb(folder / ne.NWB_NAME)
    assert r["column_curation"][ids.index(1)] == "rejected"


def test_no_curation_file_and_a_broken_one(session, tmp_path):
    store = session["store"]
    res = _export(store, tmp_path / "none")
    js = json.loads((res["folder"] / "mps_export.json").read_text())
    assert js["curation"]["excluded"] == [] and "no curation.json" in js["curation"]["source"]
    assert "curation" not in js["units"]
    (store.root / cu.CURATION_FILE).write_text("{not json")
    with pytest.raises(StepError, match="curation.json"):
        _export(store, tmp_path / "broken")


# ----------------------------------------------------------------------------- determinism


def test_exporting_twice_gives_identical_content(session, tmp_path):
    store = session["store"]
    _label(store, rejected=4, accepted=0)
    kw = dict(export_nwb=True, export_table=True, table_format="parquet", export_pickle=True,
              figures=True)
    a = _export(store, tmp_path / "a", **kw)["folder"]
    b = _export(store, tmp_path / "b", **kw)["folder"]
    files = sorted(q.relative_to(a) for q in a.rglob("*") if q.is_file())
    assert files == sorted(q.relative_to(b) for q in b.rglob("*") if q.is_file())
    js = json.loads((a / "mps_export.json").read_text())
    # the JSON lists every file written (zarr: its folder)
    listed = {e["path"] for e in js["files"]}
    tops = {f.parts[0] if f.parts[0].endswith(".zarr") else f.as_posix() for f in files}
    assert listed == tops
    for f in files:
        if f.name == "mps_export.json":  # equal but for the time stamp
            ja, jb = (json.loads((d / f).read_text()) for d in (a, b))
            assert ja.pop("exported_at") and jb.pop("exported_at")
            assert ja == jb
        elif f.suffix == ".nwb":  # equal content; the file records its creation time
            ra, rb = ne.read_nwb(a / f), ne.read_nwb(b / f)
            ra.pop("file_create_date"), rb.pop("file_create_date")
            assert ra.keys() == rb.keys()
            for k in ra:
                if isinstance(ra[k], np.ndarray):
                    np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
                else:
                    assert ra[k] == rb[k], k
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_the_curated_export_writes_nwb_too(session, tmp_path):
    """The explorer's curated re-export goes through the same writers (format "nwb")."""
    store = session["store"]
    cur = cu.Curation()
    cur.reject(0)
    out = cu.export_curated(store, tmp_path / "curated", formats={"nwb", "json"}, curation=cur)
    r = ne.read_nwb(tmp_path / "curated" / ne.NWB_NAME)
    assert ne.validate_nwb(tmp_path / "curated" / ne.NWB_NAME) == []
    assert r["unit_id"].tolist() == out["unit_ids"] and 0 not in out["unit_ids"]
    listed = json.loads((tmp_path / "curated" / "mps_export.json").read_text())["files"]
    assert [e["path"] for e in listed] == [ne.NWB_NAME, "mps_export.json"]
