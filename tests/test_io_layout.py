"""Tests for mps_core.io.layout (Miniscope layouts, timestamps, frame index) and mps_core.io.health."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mps_core.io.health import check_files
from mps_core.io.layout import build_frame_index, detect_layout, parse_frame_rate, read_timestamps
from mps_core.io.readers import lazy_movie

H, W = 24, 32


def frames_for(n: int, seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: float = 20.0) -> Path:
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h), isColor=False)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# --------------------------------------------------------------------------- layouts


def make_v3(folder: Path, counts=(4, 3, 2)) -> tuple[list[int], np.ndarray]:
    """msCam1/2/10.avi + behavCam1.avi + a two-camera timestamp.dat; returns counts and scope clock."""
    names = ["msCam1.avi", "msCam2.avi", "msCam10.avi"]
    for i, (name, n) in enumerate(zip(names, counts)):
        write_video(folder / name, frames_for(n, i))
    write_video(folder / "behavCam1.avi", frames_for(5, 9))
    total = sum(counts)
    scope_clock = 50_000 + np.arange(total) * 50 + np.array([0, 1, 0, 2, 0, 1, 0, 0, 3])[:total]
    behav_clock = 50_010 + np.arange(5) * 33
    rows = ["camNum\tframeNum\tsysClock\tbuffer"]
    # Interleave the two cameras as the DAQ does; scope is camNum 1 here.
    for k in range(max(total, 5)):
        if k < 5:
            rows.append(f"0\t{k + 1}\t{behav_clock[k]}\t0")
        if k < total:
            rows.append(f"1\t{k + 1}\t{scope_clock[k]}\t{k % 3}")
    (folder / "timestamp.dat").write_text("\n".join(rows) + "\n")
    return list(counts), scope_clock


def test_detect_v3_layout_and_timestamps(tmp_path):
    counts, clock = make_v3(tmp_path)
    layout = detect_layout(tmp_path)
    assert layout.kind == "v3"
    assert [p.name for p in layout.videos] == ["msCam1.avi", "msCam2.avi", "msCam10.avi"]
    assert layout.timestamps == tmp_path / "timestamp.dat"
    assert layout.metadata == {} and layout.fps is None
    time_s, hw = read_timestamps(layout)  # camera picked via the videos' header frame counts
    assert time_s.dtype == np.float64 and time_s[0] == 0.0
    np.testing.assert_allclose(time_s, (clock - clock[0]) / 1000.0)
    np.testing.assert_array_equal(hw, clock)
    # Explicit frame total that matches the behaviour camera (5 frames) picks camNum 0 instead.
    time_b, _ = read_timestamps(layout, n_video_frames=5)
    assert time_b.size == 5 and time_b[1] == pytest.approx(0.033)


def test_detect_v4_layout_and_timestamps(tmp_path):
    for i, n in enumerate([3, 3, 2]):
        write_video(tmp_path / f"{i}.avi", frames_for(n, i))
    (tmp_path / "metaData.json").write_text(json.dumps({"frameRate": "20FPS", "deviceName": "Miniscope"}))
    stamps = [0, 49, 101, 150, 199, 251, 300, 349]
    lines = ["Frame Number,Time Stamp (ms),Buffer Index"] + [f"{i},{t + 1000},{i % 2}" for i, t in enumerate(stamps)]
    (tmp_path / "timeStamps.csv").write_text("\n".join(lines) + "\n")
    layout = detect_layout(tmp_path)
    assert layout.kind == "v4"
    assert [p.name for p in layout.videos] == ["0.avi", "1.avi", "2.avi"]
    assert layout.metadata["deviceName"] == "Miniscope" and layout.fps == 20.0
    time_s, hw = read_timestamps(layout)
    np.testing.assert_allclose(time_s, np.array(stamps) / 1000.0)
    np.testing.assert_array_equal(hw, np.array(stamps) + 1000)


def test_v4_natural_order_beyond_nine(tmp_path):
    for i in [10, 2, 0, 1]:
        (tmp_path / f"{i}.avi").write_bytes(b"")  # detection only lists names
    (tmp_path / "timeStamps.csv").write_text("Frame Number,Time Stamp (ms),Buffer Index\n")
    layout = detect_layout(tmp_path)
    assert layout.kind == "v4" and [p.name for p in layout.videos] == ["0.avi", "1.avi", "2.avi", "10.avi"]
    assert layout.metadata == {} and layout.fps is None


def test_generic_layouts_and_errors(tmp_path):
    (tmp_path / "b10.avi").write_bytes(b"")
    (tmp_path / "b9.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    layout = detect_layout(tmp_path)
    assert layout.kind == "generic" and [p.name for p in layout.videos] == ["b9.mp4", "b10.avi"]
    assert layout.timestamps is None

    numbered = tmp_path / "numbered"  # numbered AVIs without V4 side files are generic
    numbered.mkdir()
    (numbered / "0.avi").write_bytes(b"")
    assert detect_layout(numbered).kind == "generic"

    tifs = tmp_path / "tifs"
    tifs.mkdir()
    (tifs / "s2.tif").write_bytes(b"")
    (tifs / "s1.tif").write_bytes(b"")
    assert [p.name for p in detect_layout(tifs).videos] == ["s1.tif", "s2.tif"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no movie files"):
        detect_layout(empty)
    with pytest.raises(ValueError, match="does not exist"):
        detect_layout(tmp_path / "missing")
    with pytest.raises(ValueError, match="no timestamp file"):
        read_timestamps(layout)


def test_bad_timestamp_and_metadata_files(tmp_path):
    (tmp_path / "0.avi").write_bytes(b"")
    (tmp_path / "timeStamps.csv").write_text("Frame,When\n0,1\n")
    with pytest.raises(ValueError, match="timeStamps.csv.*missing column 'Frame Number'"):
        read_timestamps(detect_layout(tmp_path))
    (tmp_path / "metaData.json").write_text("{not json")
    with pytest.raises(ValueError, match="metaData.json"):
        detect_layout(tmp_path)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("20FPS", 20.0), (30, 30.0), ("30.5 fps", 30.5), ("15", 15.0),
        (None, None), ("fast", None), (0, None), (True, None),
    ],
)
def test_parse_frame_rate(value, expected):
    assert parse_frame_rate(value) == expected


# --------------------------------------------------------------------------- frame index


def test_frame_index_from_fps_across_movies():
    table, warnings = build_frame_index([3, 0, 4], fps=10.0)
    assert warnings == []
    np.testing.assert_array_equal(table["frame"], np.arange(7))
    np.testing.assert_array_equal(table["movie"], [0, 0, 0, 2, 2, 2, 2])
    np.testing.assert_array_equal(table["local_frame"], [0, 1, 2, 0, 1, 2, 3])
    np.testing.assert_allclose(table["time_s"], np.arange(7) / 10.0)
    assert table["hw_stamp"].dtype == np.int64 and np.all(table["hw_stamp"] == -1)


def test_frame_index_from_timestamps_exact_length():
    time_s = np.array([0.0, 0.05, 0.11, 0.15, 0.2])
    hw = np.array([100, 150, 210, 250, 300])
    table, warnings = build_frame_index([2, 3], fps=20.0, time_s=time_s, hw_stamp=hw)
    assert warnings == []
    np.testing.assert_array_equal(table["time_s"], time_s)
    np.testing.assert_array_equal(table["hw_stamp"], hw)
    np.testing.assert_array_equal(table["movie"], [0, 0, 1, 1, 1])


def test_frame_index_short_and_long_timestamps_warn():
    time_s = np.array([0.0, 0.1, 0.2, 0.3])
    table, warnings = build_frame_index([3, 3], fps=None, time_s=time_s, hw_stamp=np.arange(4) + 7)
    np.testing.assert_allclose(table["time_s"], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])  # extrapolated at 10 fps
    np.testing.assert_array_equal(table["hw_stamp"], [7, 8, 9, 10, -1, -1])
    assert len(warnings) == 1 and "cover 4 of 6" in warnings[0]

    table, warnings = build_frame_index([2], fps=5.0, time_s=np.arange(5) * 0.2)
    np.testing.assert_allclose(table["time_s"], [0.0, 0.2])
    assert len(warnings) == 1 and "5 rows" in warnings[0]


def test_frame_index_row_offsets_skip_lost_frames():
    # Movie 0 recorded 4 frames but only 2 decode: movie 1 must still use rows 4.. of the table.
    time_s = np.arange(7) * 0.05
    table, warnings = build_frame_index([2, 3], fps=20.0, time_s=time_s, row_offsets=[0, 4])
    np.testing.assert_allclose(table["time_s"], time_s[[0, 1, 4, 5, 6]])
    assert warnings == []


def test_frame_index_without_time_information_and_bad_input():
    table, warnings = build_frame_index([2], fps=None)
    assert np.isnan(table["time_s"]).all() and warnings
    with pytest.raises(ValueError, match="n_frames_per_movie"):
        build_frame_index([3, -1], fps=10.0)
    with pytest.raises(ValueError, match="fps"):
        build_frame_index([3], fps=0.0)
    with pytest.raises(ValueError, match="row_offsets"):
        build_frame_index([3, 1], fps=10.0, time_s=np.zeros(4), row_offsets=[0])


# --------------------------------------------------------------------------- health


@pytest.fixture
def mixed_files(tmp_path):
    ok1 = frames_for(20, 1)
    cut = frames_for(20, 2)
    ok2 = frames_for(15, 3)
    paths = {
        "ok1": write_video(tmp_path / "msCam1.avi", ok1),
        "cut": truncate(write_video(tmp_path / "msCam2.avi", cut), keep=0.6),
        "junk": tmp_path / "msCam3.avi",
        "big": write_video(tmp_path / "msCam4.avi", frames_for(10, 4, h=H + 8)),
        "ok2": write_video(tmp_path / "msCam5.avi", ok2),
    }
    paths["junk"].write_bytes(np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8).tobytes())
    return paths, {"ok1": ok1, "cut": cut, "ok2": ok2}


def test_health_report_statuses_ranges_and_usable_movie(mixed_files):
    paths, frames = mixed_files
    report = check_files(list(paths.values()))
    by_name = {f.path.name: f for f in report.files}
    assert [f.status for f in report.files] == ["ok", "truncated", "unreadable", "size_mismatch", "ok"]

    cut = by_name["msCam2.avi"]
    assert cut.header_frames == 20 and 0 < cut.readable_frames < 19  # 60 % of the bytes -> ~11 frames
    d = cut.readable_frames
    assert by_name["msCam1.avi"].frame_range == (0, 20)
    assert cut.frame_range == (20, 20 + d)
    assert by_name["msCam5.avi"].frame_range == (20 + d, 35 + d)
    assert by_name["msCam3.avi"].frame_range is None and by_name["msCam4.avi"].frame_range is None
    assert "msCam1.avi" in by_name["msCam4.avi"].message
    assert report.usable_paths == [paths["ok1"], paths["cut"], paths["ok2"]]
    assert report.n_frames == 35 + d and report.frames_per_movie == [20, d, 15]
    assert not report.all_ok
    assert report.row_offsets() is None  # unreadable msCam3 hides how many rows msCam5 must skip

    movie = lazy_movie(report.readers(), chunk_frames=8)
    expected = np.concatenate([frames["ok1"], frames["cut"][:d], frames["ok2"]])
    np.testing.assert_array_equal(movie.compute(), expected)


def test_health_report_text_and_dict(mixed_files):
    paths, _ = mixed_files
    report = check_files(list(paths.values()))
    text = report.to_text()
    lines = text.splitlines()
    assert len(lines) == 6 and "3 usable" in lines[0]
    assert "msCam1.avi" in lines[1] and "frames 0-19" in lines[1] and "20/20" in lines[1]
    assert lines[2].lstrip().startswith("truncated") and "msCam2.avi" in lines[2]
    assert "unreadable" in lines[3] and "not used" in lines[3]
    assert "size_mismatch" in lines[4]
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["n_usable"] == 3 and as_dict["files"][0]["frame_range"] == [0, 20]
    assert as_dict["files"][2]["status"] == "unreadable" and as_dict["files"][2]["header_frames"] is None


def test_health_row_offsets_and_unverified_mode(mixed_files):
    paths, _ = mixed_files
    report = check_files([paths["ok1"], paths["cut"], paths["ok2"]])
    assert report.row_offsets() == [0, 20, 40]  # cut file recorded 20 frames even if fewer decode
    quick = check_files([paths["ok1"], paths["cut"], paths["ok2"]], verify_frames=False)
    # Without decoding every frame, truncation is invisible: headers are trusted.
    assert [f.status for f in quick.files] == ["ok", "ok", "ok"]
    assert quick.files[1].readable_frames is None and quick.n_frames == 55
    assert "20 frames in header" in quick.to_text()


def test_health_reference_is_first_readable_file_and_bad_args(mixed_files, tmp_path):
    paths, _ = mixed_files
    report = check_files([paths["junk"], paths["big"], paths["ok1"]])
    assert [f.status for f in report.files] == ["unreadable", "ok", "size_mismatch"]
    with pytest.raises(ValueError, match="min_fraction"):
        check_files([paths["ok1"]], min_fraction=0)
    with pytest.raises(ValueError, match="at least one"):
        check_files([])
    missing = check_files([tmp_path / "gone.avi"])
    assert missing.files[0].status == "unreadable" and "gone.avi" in missing.files[0].message
