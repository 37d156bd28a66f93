"""Tests for mps_core.io.natural and mps_core.io.readers (small generated movies only)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import cv2
import dask
import numpy as np
import pytest
import tifffile
import zarr

from mps_core.io.natural import find_files, natural_key, natural_sort
from mps_core.io.readers import (
    ImageFolderReader,
    NpyReader,
    ReadError,
    TiffReader,
    VideoReader,
    ZarrReader,
    lazy_movie,
    open_reader,
    to_grey,
)

N, H, W = 30, 48, 64


def make_frames(n: int = N, h: int = H, w: int = W, seed: int = 0, colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, h, w, 3) if colour else (n, h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_video(path: Path, frames: np.ndarray, fourcc: str = "FFV1", fps: float = 20.0) -> Path:
    colour = frames.ndim == 4
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h), isColor=colour)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def grey_video(tmp_path):
    frames = make_frames()
    return write_video(tmp_path / "msCam1.avi", frames), frames


# --------------------------------------------------------------------------- natural


@pytest.mark.parametrize(
    "names, expected",
    [
        (["msCam10.avi", "msCam2.avi", "msCam1.avi"], ["msCam1.avi", "msCam2.avi", "msCam10.avi"]),
        (["10.avi", "2.avi", "0.avi", "1.avi"], ["0.avi", "1.avi", "2.avi", "10.avi"]),
        (["B.avi", "a.avi", "C2.avi", "c10.avi"], ["a.avi", "B.avi", "C2.avi", "c10.avi"]),
        (["x", "x1", "x0"], ["x", "x0", "x1"]),
    ],
)
def test_natural_sort_orders(names, expected):
    assert natural_sort(names) == expected


def test_natural_sort_is_stable_for_equal_keys_and_accepts_paths():
    # "a1" and "A01" compare equal (case-insensitive, numeric): input order kept.
    assert natural_sort(["A01", "a1"]) == ["A01", "a1"]
    assert natural_sort(["a1", "A01"]) == ["a1", "A01"]
    paths = [Path("/d/msCam11.avi"), Path("/d/msCam9.avi")]
    assert natural_sort(paths) == [Path("/d/msCam9.avi"), Path("/d/msCam11.avi")]
    assert natural_key("msCam2.avi") < natural_key("MSCAM10.avi")


def test_find_files_fullmatch_sorted_not_recursive(tmp_path):
    for name in ["msCam10.avi", "msCam2.avi", "0.avi", "x.avi.bak", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "1.avi").write_bytes(b"")
    (tmp_path / "dir.avi").mkdir()  # folders never match
    names = [p.name for p in find_files(tmp_path)]
    assert names == ["0.avi", "msCam2.avi", "msCam10.avi"]
    assert [p.name for p in find_files(tmp_path, r"msCam\d+\.avi")] == ["msCam2.avi", "msCam10.avi"]


def test_find_files_errors_name_folder_and_pattern(tmp_path):
    with pytest.raises(ValueError, match="missing.*pattern"):
        find_files(tmp_path / "missing")
    (tmp_path / "a.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no file in folder .* matches pattern '\.\*\\\\\.avi\$'"):
        find_files(tmp_path)
    with pytest.raises(ValueError, match="invalid file pattern"):
        find_files(tmp_path, "(")


# --------------------------------------------------------------------------- video


def test_video_reader_reads_back_exactly(grey_video):
    path, frames = grey_video
    reader = VideoReader(path)
    assert (reader.n_frames, reader.height, reader.width, reader.dtype) == (N, H, W, np.uint8)
    assert reader.seeks  # FFV1 is intra-only
    np.testing.assert_array_equal(reader.read(0, N), frames)
    np.testing.assert_array_equal(reader.read(7, 19), frames[7:19])
    np.testing.assert_array_equal(reader.read(N - 1, N), frames[N - 1 :])
    assert reader.read(5, 5).shape == (0, H, W)


def test_video_reader_sequential_mode_matches_seek(grey_video):
    path, frames = grey_video
    reader = VideoReader(path, seek_mode="sequential")
    assert not reader.seeks
    np.testing.assert_array_equal(reader.read(11, 14), frames[11:14])


def test_video_reader_colour_to_grey(tmp_path):
    frames = make_frames(10, colour=True, seed=3)
    reader = VideoReader(write_video(tmp_path / "colour.avi", frames))
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])
    out = reader.read(2, 8)
    assert out.dtype == np.uint8 and out.shape == (6, H, W)
    np.testing.assert_array_equal(out, expected[2:8])


def test_video_reader_is_picklable_and_range_checked(grey_video):
    path, frames = grey_video
    reader = pickle.loads(pickle.dumps(VideoReader(path)))
    np.testing.assert_array_equal(reader.read(3, 4), frames[3:4])
    with pytest.raises(ValueError, match="msCam1.avi.*outside"):
        reader.read(0, N + 1)
    with pytest.raises(ValueError, match="seek_mode"):
        VideoReader(path, seek_mode="fast")


def test_video_reader_n_frames_override_and_read_error(tmp_path):
    frames = make_frames(20)
    path = write_video(tmp_path / "cut.avi", frames)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    reader = VideoReader(path)
    assert reader.n_frames == 20  # header still claims 20
    decodable = reader.count_decodable()
    assert 0 < decodable < 20
    with pytest.raises(ReadError, match="cut.avi.*frame"):
        reader.read(0, 20)
    limited = VideoReader(path, n_frames=decodable)
    np.testing.assert_array_equal(limited.read(0, decodable), frames[:decodable])


def test_garbage_video_is_rejected(tmp_path):
    path = tmp_path / "junk.avi"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="junk.avi"):
        VideoReader(path)


# --------------------------------------------------------------------------- other readers


def test_tiff_reader_uint16_stack(tmp_path):
    frames = np.random.default_rng(1).integers(0, 65535, (N, H, W), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, frames)
    reader = TiffReader(path)
    assert (reader.n_frames, reader.height, reader.width, reader.dtype) == (N, H, W, np.uint16)
    np.testing.assert_array_equal(reader.read(0, N), frames)
    np.testing.assert_array_equal(reader.read(4, 5), frames[4:5])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reader)).read(10, 20), frames[10:20])


def test_tiff_reader_rgb_to_grey(tmp_path):
    rgb = make_frames(6, colour=True, seed=2)
    path = tmp_path / "rgb.tiff"
    tifffile.imwrite(path, rgb, photometric="rgb")
    reader = TiffReader(path)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb])
    np.testing.assert_array_equal(reader.read(1, 4), expected[1:4])


def test_image_folder_reader_png_and_tiff(tmp_path):
    frames = make_frames(12, seed=4)
    for i, frame in enumerate(frames):  # unpadded numbers: natural order needed
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), frame)
    reader = ImageFolderReader(tmp_path)
    assert reader.n_frames == 12
    np.testing.assert_array_equal(reader.read(0, 12), frames)

    tif_dir = tmp_path / "tifs"
    tif_dir.mkdir()
    frames16 = frames.astype(np.uint16) * 100
    for i, frame in enumerate(frames16):
        tifffile.imwrite(tif_dir / f"{i}.tif", frame)
    reader = open_reader(tif_dir)
    assert isinstance(reader, ImageFolderReader) and reader.dtype == np.uint16
    np.testing.assert_array_equal(reader.read(8, 12), frames16[8:12])


def test_image_folder_colour_png_to_grey(tmp_path):
    bgr = make_frames(3, colour=True, seed=5)
    for i, frame in enumerate(bgr):
        cv2.imwrite(str(tmp_path / f"{i}.png"), frame)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in bgr])
    np.testing.assert_array_equal(ImageFolderReader(tmp_path).read(0, 3), expected)


def test_npy_reader(tmp_path):
    frames = np.random.default_rng(6).normal(size=(N, H, W)).astype(np.float32)
    path = tmp_path / "movie.npy"
    np.save(path, frames)
    reader = open_reader(path)
    assert isinstance(reader, NpyReader) and reader.dtype == np.float32
    np.testing.assert_array_equal(reader.read(5, 25), frames[5:25])
    np.save(tmp_path / "flat.npy", frames[0])
    with pytest.raises(ValueError, match="flat.npy.*3-D"):
        NpyReader(tmp_path / "flat.npy")


def test_zarr_reader_array_and_group(tmp_path):
    frames = np.random.default_rng(7).integers(0, 4000, (N, H, W), dtype=np.uint16)
    arr = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=frames.shape, chunks=(8, H, W), dtype="u2")
    arr[:] = frames
    reader = open_reader(tmp_path / "a.zarr")
    assert isinstance(reader, ZarrReader)
    np.testing.assert_array_equal(reader.read(3, 17), frames[3:17])

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("data/varr", shape=frames.shape, chunks=(8, H, W), dtype="u2")[:] = frames
    group.create_array("frame", shape=(N,), dtype="i8")[:] = np.arange(N)
    reader = pickle.loads(pickle.dumps(ZarrReader(tmp_path / "g.zarr")))
    assert reader.array_path == "data/varr"
    np.testing.assert_array_equal(reader.read(20, 30), frames[20:30])

    group.create_array("other", shape=frames.shape, dtype="u2")
    with pytest.raises(ValueError, match="exactly one 3-D array"):
        ZarrReader(tmp_path / "g.zarr")
    assert ZarrReader(tmp_path / "g.zarr", array_path="data/varr").n_frames == N


def test_open_reader_dispatch_and_unknown(tmp_path, grey_video):
    path, _ = grey_video
    assert isinstance(open_reader(path), VideoReader)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="notes.txt.*supported.*avi.*npy.*zarr"):
        open_reader(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="does not exist"):
        open_reader(tmp_path / "nope.avi")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="supported"):
        open_reader(empty)


def test_to_grey_non_opencv_dtype():
    frame = np.zeros((2, 2, 3), np.int32)
    frame[..., 2] = 1000  # red in BGR order
    assert to_grey(frame, "bgr")[0, 0] == 299
    assert to_grey(frame, "rgb")[0, 0] == 114


# --------------------------------------------------------------------------- lazy movie


def test_lazy_movie_equals_concatenation_with_requested_chunks(tmp_path):
    parts = [make_frames(n, seed=s) for n, s in [(30, 1), (17, 2), (25, 3)]]
    readers = [VideoReader(write_video(tmp_path / f"{i}.avi", f)) for i, f in enumerate(parts)]
    movie = lazy_movie(readers, chunk_frames=10)
    assert movie.shape == (72, H, W) and movie.dtype == np.uint8
    assert movie.chunks == ((10,) * 7 + (2,), (H,), (W,))
    expected = np.concatenate(parts)
    np.testing.assert_array_equal(movie.compute(scheduler="synchronous"), expected)
    # Block 4 = frames 40..49 straddles the boundary between movies 1 and 2 (at frame 47).
    np.testing.assert_array_equal(movie.blocks[4].compute(), expected[40:50])
    np.testing.assert_array_equal(movie[45:52:3, 5:9, ::7].compute(), expected[45:52:3, 5:9, ::7])


def test_lazy_movie_mixed_readers_and_determinism(tmp_path):
    frames = make_frames(20, seed=8)
    write_video(tmp_path / "m.avi", frames[:12])
    np.save(tmp_path / "m.npy", frames[12:])
    readers = [open_reader(tmp_path / "m.avi"), open_reader(tmp_path / "m.npy")]
    movie = lazy_movie(readers, 6)
    np.testing.assert_array_equal(movie.compute(), frames)
    assert lazy_movie([open_reader(tmp_path / "m.avi"), open_reader(tmp_path / "m.npy")], 6).name == movie.name
    assert lazy_movie(readers, 5).name != movie.name


class _CountingReader:
    """Duck-typed reader that records which ranges were read."""

    def __init__(self, n: int, log: list):
        self.path, self.n_frames, self.height, self.width = Path(f"fake{n}"), n, 4, 5
        self.dtype, self.log = np.dtype(np.int64), log

    def read(self, start: int, stop: int) -> np.ndarray:
        self.log.append((str(self.path), start, stop))
        return np.broadcast_to(np.arange(start, stop)[:, None, None], (stop - start, 4, 5)).copy()


def test_lazy_movie_chunk_reads_only_its_frames():
    log: list = []
    movie = lazy_movie([_CountingReader(23, log), _CountingReader(11, log)], chunk_frames=8)
    with dask.config.set(scheduler="synchronous"):
        block = movie.blocks[2].compute()  # global frames 16..23 -> 16..22 of reader 0, 0 of reader 1
    np.testing.assert_array_equal(block[:, 0, 0], [16, 17, 18, 19, 20, 21, 22, 0])
    assert log == [("fake23", 16, 23), ("fake11", 0, 1)]


def test_lazy_movie_rejects_bad_input(tmp_path):
    a = np.zeros((3, 4, 5), np.uint8)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", np.zeros((3, 4, 6), np.uint8))
    with pytest.raises(ValueError, match="b.npy.*4x6"):
        lazy_movie([NpyReader(tmp_path / "a.npy"), NpyReader(tmp_path / "b.npy")], 2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_frames"):
            lazy_movie([NpyReader(tmp_path / "a.npy")], bad)
    with pytest.raises(ValueError, match="at least one"):
        lazy_movie([], 2)


# --------------------------------------------------------------------------- speed (reported only)


def test_report_video_decode_speed(tmp_path, capsys):
    """Measure VideoReader.read on a 200-frame 608x608 FFV1 movie (printed, not asserted)."""
    rng = np.random.default_rng(9)
    base = cv2.GaussianBlur(rng.integers(0, 256, (608, 608), dtype=np.uint8), (0, 0), 3)
    frames = np.stack([np.roll(base, i, axis=0) + rng.integers(0, 8, base.shape, dtype=np.uint8) for i in range(200)])
    reader = VideoReader(write_video(tmp_path / "speed.avi", frames))
    t0 = time.perf_counter()
    out = reader.read(0, 200)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    reader.read(150, 200)
    tail = time.perf_counter() - t0
    np.testing.assert_array_equal(out[::50], frames[::50])
    with capsys.disabled():
        print(
            f"\n[decode speed] VideoReader.read 608x608 FFV1: {full / 200 * 1e3:.2f} ms/frame over 200 frames; "
            f"seek+50 frames from 150: {tail / 50 * 1e3:.2f} ms/frame"
        )


def test_lazy_movie_read_blocks_are_whole_chunks():
    log: list = []
    readers = [_CountingReader(23, log), _CountingReader(11, log)]
    movie = lazy_movie(readers, chunk_frames=4, read_frames=10)  # blocks of 2 chunks
    assert movie.chunks[0] == (4,) * 8 + (2,)
    assert lazy_movie(readers, 4, read_frames=10).name == movie.name  # deterministic keys
    assert lazy_movie(readers, 4).name != movie.name
    with dask.config.set(scheduler="synchronous"):
        values = movie.compute()[:, 0, 0]
    np.testing.assert_array_equal(values, np.concatenate([np.arange(23), np.arange(11)]))
    # one read per block of 8 frames (the block 16..24 spans both files), none twice
    assert sorted(log) == sorted([("fake23", 0, 8), ("fake23", 8, 16), ("fake23", 16, 23),
                                  ("fake11", 0, 1), ("fake11", 1, 9), ("fake11", 9, 11)])
    with pytest.raises(ValueError, match="read_frames"):
        lazy_movie(readers, 4, read_frames=0)


def test_concatenated_read_keeps_common_dtype():
    log: list = []
    small = _CountingReader(5, log)
    small.dtype = np.dtype(np.int32)
    small.read = lambda a, b: np.zeros((b - a, 4, 5), np.int32)
    movie = lazy_movie([small, _CountingReader(6, log)], chunk_frames=3)
    with dask.config.set(scheduler="synchronous"):
        assert movie.blocks[0].compute().dtype == np.int64  # one file, still the common dtype
