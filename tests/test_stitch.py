"""Stitching receivers' streams and editing segments (mps_core.stitch, `mps stitch` & co).

Synthetic streams are made here: one clean movie, two "receivers" that each miss some
frames and damage others (missing buffers = black rows, garbled rows, faint specks), with
per-buffer metadata CSVs in the real column layout. The real two-receiver recording in
../shared/data/mio/stitch is used when present (skipped otherwise).
"""

from __future__ import annotations

import csv
import hashlib
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from mps_core.cli import main
from mps_core.io.readers import open_reader
from mps_core.registry import Cancelled
from mps_core.stitch import (OutputsExist, concat_segments, parse_frame_list, remove_frames,
                             stitch_streams, trim_frames)
from mps_core.stitch.align import align_streams, is_continuous, mutual_nearest
from mps_core.stitch.choose import edge_energy, rank, reason
from mps_core.stitch.streams import FrameTable, open_stream, read_metadata

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mio" / "stitch"
COLUMNS = ["linked_list", "frame_num", "buffer_count", "frame_buffer_count", "write_buffer_count",
           "dropped_buffer_count", "timestamp", "pixel_count", "write_timestamp",
           "battery_voltage_raw", "input_voltage_raw", "buffer_recv_index",
           "buffer_recv_unix_time", "black_padding_px", "reconstructed_frame_index"]
H, W, NBUF = 32, 48, 4
ROWS = H // NBUF  # image rows carried by one buffer
PERIOD = 0.05


# ----------------------------------------------------------------------------- synthetic data


def clean_movie(n: int, seed: int = 0) -> np.ndarray:
    """Smooth moving blobs on a vignette, uint8, no black or noisy rows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    centres = rng.uniform([4, 4], [H - 4, W - 4], size=(5, 2))
    frames = []
    for t in range(n):
        blobs = sum(rng.uniform(20, 60)
                    * np.exp(-((yy - cy - 0.2 * t) ** 2 + (xx - cx) ** 2) / 18.0)
                    for cy, cx in centres)
        frames.append(60 + 0.8 * xx + 0.5 * yy + blobs + rng.normal(0, 1.0, (H, W)))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def damage(frame: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, list[int]]:
    """A damaged copy of a frame and the buffers its metadata lists as received."""
    out, buffers = frame.copy(), list(range(NBUF))
    rng = np.random.default_rng(seed)
    if kind == "lost_buffer":  # buffer 2 never arrived: black padding, no metadata row
        out[2 * ROWS:3 * ROWS] = 0
        buffers.remove(2)
    elif kind == "meta_lost_buffer":  # the metadata lacks a buffer, the image looks whole
        buffers.remove(3)
    elif kind == "black":  # black rows in the image although every buffer is listed
        out[ROWS:2 * ROWS] = 0
    elif kind == "black_most":  # like a real frame of which only a little arrived
        out[ROWS // 2:] = 0
    elif kind == "noise":  # garbled rows
        out[ROWS:2 * ROWS] = rng.integers(0, 256, (ROWS, W))
    elif kind == "faint_band":  # garbled rows of moderate contrast
        out[ROWS:2 * ROWS] = np.clip(out[ROWS:2 * ROWS] + rng.integers(-25, 26, (ROWS, W)), 0, 255)
    elif kind == "grain":  # grainy all over: many edges, but no row stands out
        out[:] = np.clip(out.astype(int) + rng.integers(-30, 31, (H, W)), 0, 255)
    elif kind == "specks":  # faint isolated pixels: invisible to the row scores
        ys, xs = rng.integers(2, H - 2, 12), rng.integers(2, W - 2, 12)
        out[ys, xs] = np.clip(out[ys, xs].astype(int) + 14, 0, 255)
    elif kind != "clean":
        raise ValueError(kind)
    return out, buffers


def write_video(path: Path, frames: np.ndarray) -> None:
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), 20.0,
                             (frames.shape[2], frames.shape[1]), False)
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


def write_stream(folder: Path, name: str, movie: np.ndarray, frame_nums: list[int],
                 damages: dict[int, str], *, drop=(), jitter: float = 0.0, extra_frame=False,
                 seed: int = 0) -> tuple[Path, Path]:
    """One receiver's video + metadata CSV; ``movie[k]`` is the sensor frame ``frame_nums[k]``."""
    folder.mkdir(parents=True, exist_ok=True)
    frames, rows, recv = [], [], 0
    rng = np.random.default_rng(seed)
    for k, fnum in enumerate(frame_nums):
        if fnum in drop:
            continue
        image, buffers = damage(movie[k], damages.get(fnum, "clean"), seed + k)
        rfi = len(frames)
        frames.append(image)
        for b in buffers:
            t = 1000.0 + k * PERIOD + b * 0.005 + jitter + rng.normal(0, 0.001)
            rows.append([b, fnum, fnum * NBUF + b, b, fnum * NBUF + b, 0, fnum * 100 + b,
                         ROWS * W, 0, 190, 108, recv, f"{t:.6f}", 0, rfi])
            recv += 1
    if extra_frame:  # the receiver logged buffers of a frame it never wrote
        rows.append([0, 99999, 0, 0, 0, 0, 0, ROWS * W, 0, 190, 108, recv, "2000.0", 0,
                     len(frames)])
    video, table = folder / f"{name}.avi", folder / f"{name}.csv"
    write_video(video, np.stack(frames))
    with open(table, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)
    return video, table


def read_all(path: Path) -> np.ndarray:
    r = open_reader(path)
    return r.read(0, r.n_frames)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


N = 30
NUMS = list(range(100, 100 + N))
DAMAGE_A = {105: "lost_buffer", 110: "noise", 120: "specks"}
DAMAGE_B = {107: "lost_buffer", 118: "noise", 112: "black"}
DROP_A, DROP_B = {100, 115}, {112 + 1, 129}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two receivers of one 30-frame movie; every frame has a clean copy somewhere."""
    root = tmp_path_factory.mktemp("pair")
    movie = clean_movie(N)
    a = write_stream(root / "rx1", "a", movie, NUMS, DAMAGE_A, drop=DROP_A, seed=1)
    b = write_stream(root / "rx2", "b", movie, NUMS, DAMAGE_B, drop=DROP_B, jitter=0.002, seed=2)
    return movie, a, b


@pytest.fixture(scope="module")
def stitched(pair, tmp_path_factory):
    movie, a, b = pair
    out = tmp_path_factory.mktemp("out")
    result = stitch_streams([a[0], b[0]], out, debug_video=True)
    return result, out


# ----------------------------------------------------------------------------- stitching


def test_synthetic_stitch_restores_every_frame(pair, stitched):
    movie, _, _ = pair
    result, out = stitched
    assert result.mode == "frame_num"
    frames = read_all(out / "stitched.avi")
    assert frames.shape == movie.shape
    assert np.array_equal(frames, movie)  # FFV1: bit-exact, and the clean copy each time
    assert result.corrupted_rows_out == 0
    assert min(result.corrupted_rows_in) > 0
    assert sum(result.frames_per_stream) == N and min(result.frames_per_stream) > 0


def test_decision_table_names_the_score_that_decided(stitched):
    result, out = stitched
    rows = {int(r["frame_num"]): r for r in read_csv(out / "stitched_decisions.csv")}
    assert [int(r["frame"]) for r in rows.values()] == list(range(N))
    expect = {100: ("2", "only_copy"), 115: ("2", "only_copy"), 129: ("1", "only_copy"),
              105: ("2", "buffers"), 107: ("1", "buffers"), 110: ("2", "corrupted_rows"),
              118: ("1", "corrupted_rows"), 112: ("1", "corrupted_rows"),
              120: ("2", "edge_energy"), 101: ("1", "identical")}
    for fnum, (stream, why) in expect.items():
        assert (rows[fnum]["chosen_stream"], rows[fnum]["reason"]) == (stream, why), fnum
    specks = rows[120]  # the edge tie-break decided: the row scores were equal
    assert specks["stream1_black_rows"] == specks["stream2_black_rows"] == "0"
    assert specks["stream1_noisy_rows"] == specks["stream2_noisy_rows"] == "0"
    assert float(specks["stream1_edge_energy"]) > float(specks["stream2_edge_energy"])
    assert int(rows[110]["stream1_noisy_rows"]) >= ROWS - 1
    assert int(rows[112]["stream2_black_rows"]) == ROWS
    assert rows[105]["stream1_buffers"] == "3" and rows[105]["stream2_buffers"] == "4"
    assert rows[100]["stream1_frame"] == "" and rows[100]["stream2_frame"] == "0"


def test_metadata_is_renumbered_and_copied_verbatim(pair, stitched):
    _, a, b = pair
    result, out = stitched
    rows = read_csv(out / "stitched.csv")
    decisions = read_csv(out / "stitched_decisions.csv")
    assert list(rows[0]) == COLUMNS
    assert sorted({int(r["reconstructed_frame_index"]) for r in rows}) == list(range(N))
    sources = {1: read_csv(a[1]), 2: read_csv(b[1])}
    for d in decisions:  # each output frame carries exactly its chosen copy's rows
        mine = [r for r in rows if r["reconstructed_frame_index"] == d["frame"]]
        src = [r for r in sources[int(d["chosen_stream"])]
               if r["reconstructed_frame_index"] == d["chosen_frame"]]
        assert [{**r, "reconstructed_frame_index": "x"} for r in mine] == \
               [{**r, "reconstructed_frame_index": "x"} for r in src]
        assert all(r["frame_num"] == d["frame_num"] for r in mine)


def test_debug_video_and_log(stitched):
    result, out = stitched
    cap = cv2.VideoCapture(str(out / "stitched_debug.mp4"))
    ok, frame = cap.read()
    assert ok and frame.shape[1] > 2 * W and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N
    cap.release()
    log = (out / "stitched_log.txt").read_text()
    assert "aligned by frame_num" in log and "corrupted rows" in log
    assert not list(out.glob(".*partial*"))


# One test per score component: only that component differs between the copies, and the
# damage sits in the stream listed first, so the default tie-break (first stream) would be
# wrong. The last two show the priorities.
@pytest.mark.parametrize("damage_a, damage_b, winner, why", [
    ("meta_lost_buffer", "clean", 2, "buffers"),       # buffers, images identical
    ("black", "clean", 2, "corrupted_rows"),           # black padding rows
    ("noise", "clean", 2, "corrupted_rows"),           # garbled rows
    ("specks", "clean", 2, "edge_energy"),             # Sobel edge energy
    ("noise", "lost_buffer", 1, "buffers"),            # buffers outrank corrupted rows
    ("clean", "black_most", 1, "corrupted_rows"),      # black rows outrank (lower) edges
    ("faint_band", "grain", 2, "corrupted_rows"),      # noisy rows outrank (lower) edges
])
def test_each_score_component_decides(tmp_path, damage_a, damage_b, winner, why):
    movie = clean_movie(3, seed=5)
    nums = [7, 8, 9]
    a = write_stream(tmp_path / "a", "a", movie, nums, {8: damage_a}, seed=3)
    b = write_stream(tmp_path / "b", "b", movie, nums, {8: damage_b}, seed=4)
    result = stitch_streams([a[0], b[0]], tmp_path / "out")
    row = read_csv(result.paths["decisions"])[1]
    assert (int(row["chosen_stream"]), row["reason"]) == (winner, why)
    edges = [float(row[f"stream{k}_edge_energy"]) for k in (1, 2)]
    if damage_b == "black_most":
        assert edges[1] < edges[0] and int(row["stream2_black_rows"]) > 0
    if damage_b == "grain":
        assert edges[1] > edges[0] and int(row["stream1_noisy_rows"]) > 0


def test_rank_and_reason_units():
    order = rank(np.array([4, 4, 3]), np.array([8, 0, 0]), np.array([0, 0, 0]),
                 np.array([1.0, 5.0, 0.1]))
    assert list(order) == [1, 0, 2]
    assert reason(1, 0, [4, 4], [0, 8], [0, 0], [5.0, 1.0]) == "corrupted_rows"
    assert reason(0, 1, [4, 4], [0, 0], [0, 0], [1.0, 1.0], same_pixels=True) == "identical"
    assert reason(0, 1, [4, 4], [0, 0], [0, 0], [1.0, 1.0]) == "tie"
    assert reason(0, None, [4], [0], [0], [1.0]) == "only_copy"
    frame = clean_movie(1)[0]
    shifted = np.ascontiguousarray(np.concatenate([np.zeros(7, np.uint8), frame.ravel()])[7:])
    assert edge_energy(frame)[0] == edge_energy(shifted.reshape(H, W))[0]  # exact, any alignment


def test_three_streams_union(tmp_path):
    movie = clean_movie(12, seed=9)
    nums = list(range(12))
    paths = [write_stream(tmp_path / f"r{k}", f"r{k}", movie, nums, {}, drop=drop, seed=k)[0]
             for k, drop in enumerate([{0, 1, 2}, {5, 6}, {10, 11, 3}])]
    result = stitch_streams(paths, tmp_path / "out", fmt="tiff")
    assert result.paths["video"].suffix == ".tif"
    assert np.array_equal(read_all(result.paths["video"]), movie)
    header = read_csv(result.paths["decisions"])[0]
    assert "stream3_edge_energy" in header


# ----------------------------------------------------------------------------- alignment


def test_restart_falls_back_to_time_alignment(tmp_path):
    movie = clean_movie(24, seed=2)
    nums = list(range(12)) + list(range(12))  # the device restarted: frame_num repeats
    keep_a = [k for k in range(24) if k not in (0, 13)]
    keep_b = [k for k in range(24) if k not in (5, 23)]
    a = _subset_stream(tmp_path / "a2", "a", movie, nums, keep_a, 0.0)
    b = _subset_stream(tmp_path / "b2", "b", movie, nums, keep_b, 0.004)
    result = stitch_streams([a[0], b[0]], tmp_path / "out")
    assert result.mode == "time"
    assert np.array_equal(read_all(result.paths["video"]), movie)
    forced = stitch_streams([a[0], b[0]], tmp_path / "out2", align="frame_num")
    assert forced.n_frames == 12  # what frame_num alone would have done


def _subset_stream(folder, name, movie, nums, keep, jitter):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for rfi, k in enumerate(keep):
        for b in range(NBUF):
            rows.append([b, nums[k], 0, b, 0, 0, 0, 0, 0, 0, 0, 0,
                         f"{1000 + k * PERIOD + b * 0.005 + jitter:.6f}", 0, rfi])
    write_video(folder / f"{name}.avi", movie[keep])
    with open(folder / f"{name}.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)
    return folder / f"{name}.avi", folder / f"{name}.csv"


def test_mutual_nearest_pairs_only_mutual_neighbours():
    ia, ib = mutual_nearest(np.array([0.0, 1.0, 2.0]), np.array([0.1, 0.15, 2.4]), 0.3)
    assert list(ia) == [0] and list(ib) == [0]
    ia, ib = mutual_nearest(np.array([2.0, 0.0]), np.array([0.05, 1.98]), 0.1)
    assert sorted(zip(ia, ib)) == [(0, 1), (1, 0)]


def test_is_continuous():
    assert is_continuous([1, 2, 3, 4])
    assert is_continuous([1, 2, 2, 3, 5, 9])  # repeats and gaps are fine
    assert is_continuous([10, 11, 12, 5, 13, 14])  # one stray frame is not a restart
    assert not is_continuous([10, 11, 12, 0, 1, 2])
    tables = [FrameTable(np.array([5, 6, 7, 0, 1]), np.ones(5, int), np.arange(5.0)),
              FrameTable(np.array([6, 7, 0, 1, 2]), np.ones(5, int), np.arange(1, 6.0))]
    assert align_streams(tables).mode == "time"
    assert align_streams(tables).n_frames == 6


# ----------------------------------------------------------------------------- validation


def test_one_extra_metadata_frame_is_dropped_with_a_warning(tmp_path):
    movie = clean_movie(5)
    video, table = write_stream(tmp_path / "s", "s", movie, list(range(5)), {}, extra_frame=True)
    stream = open_stream(video)
    assert stream.warnings and "one metadata frame more" in stream.warnings[0]
    assert stream.meta.frame.max() == 4
    assert read_metadata(table).frame.max() == 5


def test_mismatch_lists_missing_ranges(tmp_path):
    movie = clean_movie(10)
    video, table = write_stream(tmp_path / "s", "s", movie, list(range(10)), {})
    rows = read_csv(table)
    kept = [r for r in rows if r["reconstructed_frame_index"] not in ("3", "4", "5")]
    kept += [{**rows[0], "reconstructed_frame_index": str(i)} for i in (11, 12)]
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(kept)
    with pytest.raises(ValueError, match=r"s\.csv.*without metadata: 3-5.*without video: 11-12"):
        open_stream(video)


def test_missing_column_and_missing_csv(tmp_path):
    movie = clean_movie(3)
    video, table = write_stream(tmp_path / "s", "s", movie, [1, 2, 3], {})
    table.write_text(table.read_text().replace("frame_num", "frame_number"))
    with pytest.raises(ValueError, match="missing column.*frame_num"):
        open_stream(video)
    table.unlink()
    with pytest.raises(ValueError, match="no metadata CSV"):
        open_stream(video)


def test_refuses_existing_outputs_before_writing(pair, tmp_path):
    _, a, b = pair
    out = tmp_path / "out"
    stitch_streams([a[0], b[0]], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputsExist):
        stitch_streams([a[0], b[0]], out, debug_video=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no debug
    stitch_streams([a[0], b[0]], out, debug_video=True, force=True)
    assert (out / "stitched_debug.mp4").exists()


def test_never_writes_into_an_input_folder(pair):
    _, a, b = pair
    before = sorted(p.name for p in a[0].parent.iterdir())
    with pytest.raises(ValueError, match="inputs are never written"):
        stitch_streams([a[0], b[0]], a[0].parent)
    assert sorted(p.name for p in a[0].parent.iterdir()) == before


def test_cancel_leaves_no_files(pair, tmp_path):
    _, a, b = pair
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        stitch_streams([a[0], b[0]], tmp_path / "out", chunk_frames=8, cancel=cancel,
                       progress=lambda f, m: cancel.set())
    assert list((tmp_path / "out").iterdir()) == []


def test_stream_errors_are_one_line(pair, tmp_path):
    _, a, _ = pair
    with pytest.raises(ValueError, match="at least 2"):
        stitch_streams([a[0]], tmp_path / "o")
    with pytest.raises(ValueError, match="one CSV per video"):
        stitch_streams([a[0], a[0]], tmp_path / "o", metadata=[a[1]])
    other = tmp_path / "big"
    other.mkdir()
    big = clean_movie(3)
    write_video(other / "x.avi", np.pad(big, ((0, 0), (0, 2), (0, 0))))
    (other / "x.csv").write_text(a[1].read_text())
    with pytest.raises(ValueError) as err:
        stitch_streams([a[0], other / "x.avi"], tmp_path / "o")
    assert "\n" not in str(err.value) and "x.avi" in str(err.value)


# ----------------------------------------------------------------------------- segments


@pytest.fixture()
def segments(pair, stitched, tmp_path):
    """The stitched synthetic recording split into two segments with their tables."""
    result, out = stitched
    first = remove_frames(result.paths["video"], tmp_path / "seg1", "18-29", name="part1")
    second = trim_frames(result.paths["video"], tmp_path / "seg2", start=18, name="part2")
    return result, first, second


def test_trim_and_remove_renumber_tables_and_log(segments, pair):
    movie = pair[0]
    result, first, second = segments
    assert np.array_equal(read_all(first.paths["video"]), movie[:18])
    assert np.array_equal(read_all(second.paths["video"]), movie[18:])
    for part, lo in ((first, 0), (second, 18)):
        meta = read_csv(part.paths["metadata"])
        dec = read_csv(part.paths["decisions"])
        assert [int(d["frame"]) for d in dec] == list(range(part.n_frames))
        assert [int(d["frame_num"]) for d in dec] == NUMS[lo:lo + part.n_frames]
        renumbered = sorted({int(r["reconstructed_frame_index"]) for r in meta})
        assert renumbered == list(range(part.n_frames))
        for r in meta:  # renumbered consistently: metadata and decisions agree
            assert r["frame_num"] == dec[int(r["reconstructed_frame_index"])]["frame_num"]
    log = second.paths["log"].read_text()
    assert "removed frame,frame_num,metadata rows" in log
    assert "0,100," in log and "17,117," in log and "18,118" not in log


def test_concat_restores_the_recording(segments, pair, tmp_path):
    movie = pair[0]
    result, first, second = segments
    joined = concat_segments([first.paths["video"], second.paths["video"]], tmp_path / "joined")
    assert np.array_equal(read_all(joined.paths["video"]), movie)
    a = read_csv(joined.paths["metadata"])
    b = read_csv(result.paths["metadata"])
    assert a == b  # same rows, same renumbering as the unsplit stitch
    assert read_csv(joined.paths["decisions"]) == read_csv(result.paths["decisions"])
    assert joined.warnings == []
    swapped = concat_segments([second.paths["video"], first.paths["video"]], tmp_path / "swap")
    assert any("out of order" in w for w in swapped.warnings)


def test_concat_validates_segment_tables(tmp_path):
    movie = clean_movie(8)
    v1, c1 = write_stream(tmp_path / "s1", "seg1", movie[:4], [0, 1, 2, 3], {}, extra_frame=True)
    v2, c2 = write_stream(tmp_path / "s2", "seg2", movie[4:], [4, 5, 6, 7], {})
    out = concat_segments([v1, v2], tmp_path / "out")
    assert out.n_frames == 8 and len(out.warnings) == 1  # the extra metadata frame
    meta = read_csv(out.paths["metadata"])
    assert sorted({int(r["reconstructed_frame_index"]) for r in meta}) == list(range(8))
    c2.unlink()
    with pytest.raises(ValueError, match="seg2.avi: no metadata CSV"):
        concat_segments([v1, v2], tmp_path / "out2")


def test_segments_without_tables(tmp_path):
    import tifffile

    movie = clean_movie(9).astype(np.uint16) * 50  # 16-bit: TIFF in, TIFF out
    for k in range(3):
        tifffile.imwrite(tmp_path / f"seg{k}.tif", movie[3 * k:3 * k + 3], photometric="minisblack")
    out = tmp_path / "out"
    joined = concat_segments([tmp_path / f"seg{k}.tif" for k in range(3)], out)
    assert set(joined.paths) == {"video", "log"} and joined.paths["video"].suffix == ".tif"
    assert np.array_equal(read_all(joined.paths["video"]), movie)
    cut = remove_frames(joined.paths["video"], tmp_path / "cut", "0,8")
    assert np.array_equal(read_all(cut.paths["video"]), movie[1:8])
    assert "0,," in cut.paths["log"].read_text()
    with pytest.raises(ValueError, match="8-bit"):
        trim_frames(joined.paths["video"], tmp_path / "t", start=1, fmt="avi")


def test_edit_argument_errors(pair, tmp_path):
    _, a, _ = pair
    assert list(parse_frame_list("3, 10-12,40")) == [3, 10, 11, 12, 40]
    for bad in ("3-1", "x", "1,,2"):
        with pytest.raises(ValueError, match="frames"):
            parse_frame_list(bad)
    with pytest.raises(ValueError, match="do not exist"):
        remove_frames(a[0], tmp_path / "o", [500])
    with pytest.raises(ValueError, match="leaves none"):
        trim_frames(a[0], tmp_path / "o", start=20, end=20)


# ----------------------------------------------------------------------------- command line


def test_cli_commands(pair, tmp_path, capsys):
    _, a, b = pair
    out = tmp_path / "cli"
    assert main(["stitch", str(a[0]), str(b[0]), "--output", str(out), "--quiet"]) == 0
    assert "frames" in capsys.readouterr().out
    assert main(["stitch", str(a[0]), str(b[0]), "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stitched.avi" in err and "--force" in err
    video = out / "stitched.avi"
    assert main(["trim", str(video), "--start", "2", "--output", str(tmp_path / "t"),
                 "--quiet"]) == 0
    assert main(["remove-frames", str(video), "--frames", "0,3-4", "--output",
                 str(tmp_path / "r"), "--quiet"]) == 0
    assert main(["remove-frames", str(video), "--frames", "a-b", "--output",
                 str(tmp_path / "r2"), "--quiet"]) == 2
    assert main(["concat", str(tmp_path / "t" / "stitched_trimmed.avi"),
                 str(tmp_path / "r" / "stitched_cleaned.avi"), "--output", str(tmp_path / "c"),
                 "--name", "both", "--quiet"]) == 0
    assert open_reader(tmp_path / "c" / "both.avi").n_frames == (N - 2) + (N - 3)


# ----------------------------------------------------------------------------- real data

needs_data = pytest.mark.skipif(not (DATA / "video1.avi").exists(),
                                reason="real stitch data (../shared/data/mio/stitch) not present")
GOLDEN_SHA256 = "4be20bb0052c08e3648ffa239e7c4ea0271d903f63b190064c91082776ba7518"


@needs_data
def test_real_two_receivers(tmp_path):
    videos = [DATA / "video1.avi", DATA / "video2.avi"]
    result = stitch_streams(videos, tmp_path / "out")
    distinct = {r["frame_num"] for v in videos for r in read_csv(v.with_suffix(".csv"))}
    frames = read_all(result.paths["video"])
    assert frames.shape[0] == len(distinct) == result.n_frames > 0
    assert frames.any()
    assert hashlib.sha256(frames.tobytes()).hexdigest() == GOLDEN_SHA256
    # every output frame is bit-exactly the input frame its decision names
    inputs = [read_all(v) for v in videos]
    for d in read_csv(result.paths["decisions"]):
        src = inputs[int(d["chosen_stream"]) - 1][int(d["chosen_frame"])]
        assert np.array_equal(frames[int(d["frame"])], src)
    # independently: receiver 1 alone has frame_num 2514-2516, and every other frame's best
    # copy is pixel-identical to receiver 2's
    assert np.array_equal(frames, np.concatenate([inputs[0][:3], inputs[1]]))
    assert result.frames_per_stream == [41, 12]
    assert result.frames_missing == [5, 3]
    assert result.corrupted_rows_in == [448, 0] and result.corrupted_rows_out == 0
    # rows lost or corrupted on the common timeline (a missing frame loses all its rows)
    lost_in = [c + m * frames.shape[1] for c, m in zip(result.corrupted_rows_in,
                                                        result.frames_missing)]
    assert result.corrupted_rows_out < min(lost_in)
    meta = read_csv(result.paths["metadata"])
    assert sorted({int(r["reconstructed_frame_index"]) for r in meta}) == list(range(len(distinct)))
