"""Steps 1-2f through the runner on synthetic recordings whose truth is known."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from mps_core.demo import shift_rmse
from mps_core.params import ParamSet
from mps_core.registry import StepError
from mps_core.runner import Runner
from mps_core.steps import STEPS
from mps_core.store import REMOVED_FILE, SessionStore
from mps_core.synth import simulate, write_miniscope

CORRUPT = [11, 40, 77]  # global frames given a band of noise rows


def _recording(folder: Path, n_frames=120, seed=3, corrupt=CORRUPT, **kw):
    rec = simulate(n_frames=n_frames, height=112, width=120, n_cells=12, cell_diameter=9.0,
                   max_shift=2.5, seed=seed, **kw)
    rng = np.random.default_rng(0)
    for t in corrupt:  # radio loss: rows replaced by random values
        rec.movie[t, 30:38] = rng.integers(0, 256, size=(8, rec.movie.shape[2]), dtype=np.uint8)
    write_miniscope(rec, folder, layout="v4", frames_per_file=50)
    return rec


def _session(tmp_path, rec_dir, **changes):
    out = tmp_path / "session"
    ps = ParamSet(STEPS).with_values("1", {"input_dir": str(rec_dir), "output_dir": str(out),
                                           "n_workers": 2})
    for sid, values in changes.items():
        ps = ps.with_values(sid, values)
    return ps, SessionStore(out)


@pytest.fixture(scope="module")
def done_session(tmp_path_factory):
    """One full 1..2f run shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("pre")
    rec = _recording(tmp / "rec")
    ps, store = _session(tmp, tmp / "rec")
    Runner(STEPS, ps, store).run(stop="2f")
    return rec, ps, store


def test_all_preprocessing_steps_done(done_session):
    rec, ps, store = done_session
    st = store.statuses([s.id for s in STEPS])
    assert all(st[i] == "done" for i in ("1", "2a", "2b", "2c", "2d", "2e", "2f"))
    assert st["3a"] == "not run"
    for sid in ("2a", "2b", "2c", "2d", "2f"):
        assert list(store.step_dir(sid).glob("preview_*.png")), sid


def test_frame_qc_removes_exactly_the_corrupted_frames(done_session):
    rec, ps, store = done_session
    table = store.load("2a", "frame_index")
    removed = table.frame.values[table["removed"].values > 0]
    assert removed.tolist() == CORRUPT
    lines = (store.root / REMOVED_FILE).read_text().splitlines()[1:]
    listed = {int(line.split("\t")[0]): line for line in lines}
    for t in CORRUPT:
        assert "transmission corruption" in listed[t]
    movie = store.load("2e", "movie")
    assert not set(CORRUPT) & set(movie.frame.values.tolist())


def test_frame_index_travels_with_the_movie(done_session):
    rec, ps, store = done_session
    movie = store.load("2e", "movie")
    f = movie.frame.values
    np.testing.assert_array_equal(movie.movie_number.values, f // 50)
    np.testing.assert_array_equal(movie.local_frame.values, f % 50)
    # times come from timeStamps.csv (ms, jittered), not from an assumed rate
    stamps = np.loadtxt(store.load("1", "config")["input_dir"] + "/timeStamps.csv",
                        delimiter=",", skiprows=1)
    np.testing.assert_allclose(movie.time_s.values, (stamps[f, 1] - stamps[0, 1]) / 1000)


def test_motion_recovered_within_a_fifth_of_a_pixel(done_session):
    rec, ps, store = done_session
    s = store.load("2c", "shifts")
    rmse = shift_rmse(s.values, rec.shifts[s.frame.values])
    # The estimator reaches <= 0.05 px on textured scenes (tests/test_motion.py); these sparse
    # scenes (a few cells on smooth neuropil, after the tophat) hold it to ~0.15 px, so the bar
    # here is 0.2 px. Issue 3's 0.1 px on the benchmark recordings is not met yet.
    assert rmse < 0.2, rmse


def test_corrected_movie_is_float32_and_finite(done_session):
    rec, ps, store = done_session
    movie = store.load("2e", "movie")
    assert movie.dtype == np.float32
    v = store.load("2f", "validation")
    assert v["nan"] == 0 and v["inf"] == 0 and v["shape"][0] == movie.sizes["frame"]


def test_rank_filtered_movie_keeps_the_recordings_8_bits(done_session):
    """2b's defaults (top-hat, median) keep 8-bit frames integer-valued: the stored movie is
    uint8 and holds exactly the float filters' values; other filters give float32."""
    from mps_core.framewise import kept_frames
    from mps_core.preprocess import filters
    from mps_core.steps.filtering import _filter_kwargs, integer_output_dtype

    rec, ps, store = done_session
    stored = store.load("2b", "movie_filtered")
    assert stored.dtype == np.uint8
    raw = kept_frames(store.load("2a", "movie_raw"), store.load("2a", "frame_index"))
    p = ps["2b"]
    want = filters.preprocess_frames(raw.values[:20].astype(np.float32), **_filter_kwargs(p))
    np.testing.assert_array_equal(stored.values[:20], want)
    for changed in ({"denoise_method": "gaussian"}, {"background_method": "uniform"}):
        assert integer_output_dtype(p.model_copy(update=changed), np.uint8) is None
    assert integer_output_dtype(p, np.uint16) == np.uint16
    assert integer_output_dtype(p, np.float32) is None


def test_whole_pipeline_then_rerun_of_2b_marks_2c_to_8c_stale(tmp_path):
    rec_dir = tmp_path / "rec"
    _recording(rec_dir, n_frames=150, corrupt=[])
    ps, store = _session(tmp_path, rec_dir)
    results = Runner(STEPS, ps, store).run()
    assert [r.step_id for r in results] == [s.id for s in STEPS]
    assert (store.step_dir("8c") / "export" / "A.npy").exists()
    # any step with footprints can be exported in the benchmark's layout
    from mps_core.cli import main

    assert main(["export", str(store.root), "--step", "4h", "--format", "numpy",
                 str(tmp_path / "x4h")]) == 0
    A, C = np.load(tmp_path / "x4h" / "A.npy"), np.load(tmp_path / "x4h" / "C.npy")
    assert A.shape[1:] == (112, 120) and A.shape[0] == C.shape[0] > 0
    assert np.load(tmp_path / "x4h" / "frames.npy").shape == (C.shape[1],)
    assert np.load(tmp_path / "x4h" / "motion.npy").shape == (C.shape[1], 2)
    # 4h keeps a smoothed copy of its footprints: that copy is the one exported
    sm, crop = store.load("4h", "A_seed_smoothed"), store.load("3a", "crop")
    y0, x0 = int(crop["y0"]), int(crop["x0"])
    np.testing.assert_array_equal(A[:, y0:y0 + sm.sizes["height"], x0:x0 + sm.sizes["width"]],
                                  sm.values)
    Runner(STEPS, ps.with_values("2b", {"median_ksize": 3}), store).run(start="2b", stop="2b")
    st = store.statuses([s.id for s in STEPS])
    assert st["2a"] == "done" and st["2b"] == "done"
    assert [st[s.id] for s in STEPS[3:]] == ["stale"] * (len(STEPS) - 3)


def test_2d_drops_planted_outliers_and_2e_resumes_from_it(tmp_path):
    rec_dir = tmp_path / "rec"
    rec = _recording(rec_dir, n_frames=90, corrupt=[])
    # two frames jump far away: the estimated shifts must flag exactly those
    jump = {20: (9.0, 0.0), 61: (0.0, -9.0)}
    for t, (dy, dx) in jump.items():
        rec.movie[t] = np.roll(rec.movie[t], (int(dy), int(dx)), axis=(0, 1))
    shutil.rmtree(rec_dir)
    write_miniscope(rec, rec_dir, layout="v4", frames_per_file=50)
    ps, store = _session(tmp_path, rec_dir)
    Runner(STEPS, ps, store).run(stop="2d")
    qc = store.load("2d", "motion_qc")
    assert qc.frame.values[qc["flagged"].values].tolist() == sorted(jump)
    # resume: 2e alone, from what 2d stored
    Runner(STEPS, ps, store).run(start="2e", stop="2e")
    movie = store.load("2e", "movie")
    assert movie.sizes["frame"] == 88 and not set(jump) & set(movie.frame.values.tolist())
    lines = (store.root / REMOVED_FILE).read_text()
    assert "motion outlier" in lines


def test_trims_downsampling_and_video_percent(tmp_path):
    rec_dir = tmp_path / "rec"
    _recording(rec_dir, n_frames=100, corrupt=[41])
    ps, store = _session(tmp_path, rec_dir,
                         **{"2a": {"trim_start": 5, "trim_end": 3, "downsample_frames": 2,
                                   "downsample_space": 2},
                            "1": {"video_percent": 80.0}})
    Runner(STEPS, ps, store).run(stop="2a")
    raw = store.load("2a", "movie_raw")
    expect = np.arange(5, 80 - 3, 2)
    np.testing.assert_array_equal(raw.frame.values, expect)
    assert raw.shape[1:] == (56, 60)
    t = store.load("2a", "frame_index")
    assert t.frame.values[t["removed"].values > 0].tolist() == [41]
    # mean strategy averages groups of frames
    ps2, store2 = _session(tmp_path / "b", rec_dir,
                           **{"2a": {"downsample_frames": 4, "downsample_strategy": "mean",
                                     "frame_qc": False}})
    Runner(STEPS, ps2, store2).run(stop="2a")
    raw2 = store2.load("2a", "movie_raw")
    assert raw2.sizes["frame"] == 25 and raw2.dtype == np.float32
    np.testing.assert_array_equal(raw2.frame.values, np.arange(0, 100, 4))


def test_truncated_file_is_reported_and_the_rest_used(tmp_path):
    rec_dir = tmp_path / "rec"
    _recording(rec_dir, n_frames=150, corrupt=[])
    f = rec_dir / "1.avi"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    ps, store = _session(tmp_path, rec_dir)
    Runner(STEPS, ps, store).run(stop="2a")
    health = store.load("2a", "file_health")
    status = {Path(x["path"]).name: x["status"] for x in health["files"]}
    assert status == {"0.avi": "ok", "1.avi": "truncated", "2.avi": "ok"}
    raw = store.load("2a", "movie_raw")
    assert 100 < raw.sizes["frame"] < 150
    assert any("1.avi" in w for w in store.manifest("2a")["warnings"])


MIO = Path(__file__).resolve().parents[2] / "shared" / "data" / "mio"


@pytest.mark.skipif(not (MIO / "wireless_corrupted.avi").exists(), reason="mio data not here")
def test_real_wireless_corruption_found(tmp_path):
    import yaml

    labels = yaml.safe_load((MIO / "wireless_corrupted.yaml").read_text())["frames"]
    truth = sorted(i for kind in labels["check_pattern"].values() for i in kind)
    ps, store = _session(tmp_path, MIO, **{"2a": {"file_pattern": r"wireless_corrupted\.avi"}})
    Runner(STEPS, ps, store).run(stop="2a")
    t = store.load("2a", "frame_index")
    found = t.frame.values[t["removed"].values > 0].tolist()
    assert found == truth


def test_demo_command_runs(tmp_path, capsys):
    from mps_core.cli import main

    assert main(["demo", "--output", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "motion: error against the planted shifts" in out
    rmse = float(out.split("planted shifts")[1].split("px")[0])
    assert rmse < 0.2  # see test_motion_recovered_within_a_fifth_of_a_pixel
    assert "planted cells found" in out


def test_intermediate_movies_deleted_once_used(tmp_path):
    """delete_intermediate_movies: 2a/2b/2e movies go once every reader is done, 3a's stays,
    the removed-frames list and the statuses are unaffected, and a resume that needs a
    deleted movie is refused with a message saying why."""
    from mps_core.runner import PlanError

    _recording(tmp_path / "rec")
    ps, store = _session(tmp_path, tmp_path / "rec", **{"1": {"delete_intermediate_movies": True}})
    Runner(STEPS, ps, store).run(stop="2b")
    assert store.has("2a", "movie_raw")  # 2c reads it too and has not run
    Runner(STEPS, ps, store).run(start="2c", stop="3a")
    for sid, name in (("2a", "movie_raw"), ("2b", "movie_filtered"), ("2e", "movie")):
        assert not store.has(sid, name) and store.released(sid, name)
        assert not (store.step_dir(sid) / f"{name}.zarr").exists()
    assert store.has("3a", "movie_cropped") and store.has("2a", "frame_index")
    assert set(store.statuses(["2a", "2b", "2c", "2d", "2e", "2f", "3a"]).values()) == {"done"}
    listed = (store.root / REMOVED_FILE).read_text()
    assert all(f"\n{t}\t" in listed for t in CORRUPT)
    with pytest.raises(PlanError, match="deleted after use to save disk"):
        Runner(STEPS, ps, store).run(start="2c", stop="2c")
    Runner(STEPS, ps, store).run(start="2a", stop="2a")  # rerun from the source: fine
    assert store.has("2a", "movie_raw")


def test_intermediate_movies_kept_by_default(done_session):
    _, _, store = done_session
    assert store.has("2a", "movie_raw") and store.has("2b", "movie_filtered")
    assert store.has("2e", "movie") and not store.released("2a", "movie_raw")


def test_validation_statistics_equal_numpy_on_the_sample():
    """2f's per-piece partial sums give the statistics numpy gives on the sampled frames,
    NaN and Inf counted apart and left out of the statistics and the mean image."""
    import dask.array as da
    import xarray as xr

    from mps_core.framewise import sample_indices
    from mps_core.registry import SimpleContext
    from mps_core.steps.validation import ValidationParams, validate

    rng = np.random.default_rng(4)
    T, H, W = 300, 12, 10
    after = rng.normal(50, 5, (T, H, W)).astype(np.float32)
    after[0, 3, 4], after[1, 0, 0], after[250, 5, 5] = np.nan, np.inf, -np.inf  # all sampled
    before = rng.normal(60, 5, (T, H, W)).astype(np.float32)
    frames = np.arange(T) * 2
    mk = lambda a, c: xr.DataArray(da.from_array(a, chunks=(c, -1, -1)),
                                   dims=("frame", "height", "width"), coords={"frame": frames})
    out = validate(ValidationParams(sample_frames=120, fail_on_nonfinite=False), SimpleContext(),
                   movie=mk(after, 25), movie_filtered=mk(before, 40))
    idx = sample_indices(tuple([25] * 12), 120)
    s = after[idx]
    v = s[np.isfinite(s)].astype(np.float64)
    got = out["validation"]
    assert got["frames_sampled"] == 120 and (got["nan"], got["inf"]) == (1, 2)
    np.testing.assert_allclose([got["mean"], got["std"], got["min"], got["max"]],
                               [v.mean(), v.std(), v.min(), v.max()], rtol=1e-10)
    proj = out["projections"]
    np.testing.assert_allclose(proj["mean_before"].values, before[idx].mean(0), rtol=1e-6)
    np.testing.assert_allclose(proj["mean_after"].values,
                               np.where(np.isfinite(s), s, 0).mean(0), rtol=1e-6)
    with pytest.raises(StepError, match="1 NaN and 2 Inf"):
        validate(ValidationParams(sample_frames=120), SimpleContext(), movie=mk(after, 25),
                 movie_filtered=mk(before, 40))


def test_pipeline_previews_are_drawn_in_the_drawing_process(done_session):
    """Registered steps are drawn in the separate drawing process (not this interpreter);
    every preview is on disk when run() returns."""
    import os

    from mps_core import preview_drawer

    rec, ps, store = done_session
    pool = preview_drawer._pool
    assert pool is not None and not getattr(pool, "_broken", False)
    pids = {p.pid for p in pool._processes.values()}
    assert pids and os.getpid() not in pids
    for sid in ("2a", "2b", "2c", "2d", "2e", "2f"):
        assert not list(store.step_dir(sid).glob(".preview_*")), sid  # no half-written PNG


def test_previews_of_a_stale_or_unreadable_result_are_skipped_or_reported(done_session, tmp_path):
    from mps_core.preview_drawer import draw_files

    rec, ps, store = done_session
    folder = store.step_dir("2c")
    run_id = store.manifest("2c")["run_id"]
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("preview_*.png")}
    # a newer run of the step owns the folder: the old job draws nothing
    assert draw_files("2c", "an-older-run", str(folder), {}, {}, ps["2c"]) == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("preview_*.png")} == before
    problems = draw_files("2c", run_id, str(folder), {"shifts": str(tmp_path / "gone.zarr")}, {},
                          ps["2c"])
    assert len(problems) == 1 and problems[0].startswith("previews could not be drawn")


def test_previews_are_drawn_on_a_thread_under_a_small_memory_limit(tmp_path, monkeypatch):
    """Below SEPARATE_DRAWING_MIN_GB the drawing process (~350 MB) is not used."""
    from mps_core import preview_drawer

    rec_dir = tmp_path / "rec"
    _recording(rec_dir, n_frames=60, corrupt=[])
    ps, store = _session(tmp_path, rec_dir)
    ps = ps.with_values("1", {"memory_limit_gb": preview_drawer.SEPARATE_DRAWING_MIN_GB - 1})
    monkeypatch.setattr(preview_drawer, "_process_pool",
                        lambda: pytest.fail("the drawing process was used"))
    Runner(STEPS, ps, store).run(stop="2a")
    assert list(store.step_dir("2a").glob("preview_*.png"))
