"""Movie and video exports (mps_core.movies, video_export, movie_export, `mps export-*`).

One small synthetic recording is run through steps 1..3a once; the model entries a
reconstruction needs (4e background, 7f footprints, 8a / 8b traces, 8c kept units) are then
written straight into a copy of the session from the synthetic truth, so the exported values
can be checked against numpy formulas and the outlines against the planted cells.
"""

import shutil
import threading
import time

import dask
import numpy as np
import pytest
import scipy.io
import tifffile
import xarray as xr

from mps_core import movie_export as me
from mps_core import movies as mv
from mps_core import video_export as ve
from mps_core.cli import main
from mps_core.params import ParamSet
from mps_core.registry import Cancelled
from mps_core.runner import Runner
from mps_core.steps import STEPS
from mps_core.store import SessionStore
from mps_core.synth import simulate, write_miniscope

N_FRAMES, DROPPED = 130, [3, 50, 51]  # frames the traces leave out (removed frames)
HIDDEN_UNIT = 4  # a unit 8c did not keep: never outlined


def _put(store, step, outputs, params=None):
    """Write outputs as a finished step run (what the runner would commit)."""
    run = store.begin(step)
    jobs = [j for name, value in outputs.items() for j in run.put(name, value)]
    dask.compute(*jobs)
    run.commit({"step": step, "run_id": run.run_id, "status": "done", "params": params or {},
                "inputs": {}, "outputs": {n: run.path_of(n).name for n in outputs},
                "finished_time": time.time()})


def _model_entries(store, rec):
    """4e / 7f / 8a / 8b / 8c entries from the truth: A = planted footprints (crop grid)."""
    crop = store.load("3a", "crop")
    y0, x0, h, w = crop["y0"], crop["x0"], crop["height"], crop["width"]
    Y = store.load("3a", "movie_cropped")
    frames = Y.frame.values
    coords = {k: ("frame", v.values) for k, v in Y.coords.items() if v.dims == ("frame",)}
    n = rec.footprints.shape[0]
    ids = np.arange(n)
    rng = np.random.default_rng(5)
    A = rec.footprints[:, y0:y0 + h, x0:x0 + w].astype(np.float32)
    A_da = xr.DataArray(A, dims=("unit_id", "height", "width"),
                        coords={"unit_id": ids, "height": np.arange(h), "width": np.arange(w)})
    b = rng.uniform(0, 2, (h, w)).astype(np.float32)
    f = rng.uniform(0.5, 1.5, frames.size).astype(np.float32)
    _put(store, "4e", {
        "b_init": xr.DataArray(b, dims=("height", "width")),
        "f_init": xr.DataArray(f, dims=("frame",), coords=coords)})
    _put(store, "7f", {"A_refined": A_da})
    keep = ~np.isin(frames, DROPPED)
    kc = {k: (d, v[keep]) for k, (d, v) in coords.items()}
    C = (rec.calcium[:, frames[keep]] * 10).astype(np.float32)
    b0 = rng.uniform(-1, 1, n).astype(np.float32)
    beta = rng.uniform(0, 0.5, n)
    _put(store, "8a", {"YrA_final": xr.DataArray(C, dims=("unit_id", "frame"),
                                                 coords={"unit_id": ids, **kc})},
         params={"subtract_background": True})
    _put(store, "8b", {
        "C_final": xr.DataArray(C, dims=("unit_id", "frame"), coords={"unit_id": ids, **kc}),
        "b0_final": xr.DataArray(b0, dims=("unit_id",), coords={"unit_id": ids}),
        "solver_report_final": {"settings": {"include_background": True},
                                "background_weight": beta.tolist()}})
    _put(store, "8c", {"final_units": {"unit_id": ids.tolist(),
                                       "kept": [i != HIDDEN_UNIT for i in ids]}})
    return {"A": A, "C": C, "b0": b0, "beta": beta, "b": b, "f": f, "keep": keep}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("movies")
    rec = simulate(n_frames=N_FRAMES, height=56, width=64, n_cells=5, cell_diameter=10.0,
                   max_shift=1.5, seed=4)
    write_miniscope(rec, tmp / "rec", layout="v4", frames_per_file=50)
    pre = tmp / "pre"
    ps = ParamSet(STEPS).with_values("1", {"input_dir": str(tmp / "rec"), "output_dir": str(pre),
                                           "n_workers": 2, "cell_diameter_px": 10.0})
    ps = ps.with_values("3a", {"shape": "square", "size_fraction": 0.9})
    Runner(STEPS, ps, SessionStore(pre)).run(stop="3a")
    shutil.copytree(pre, tmp / "full")
    full = SessionStore(tmp / "full", create=False)
    truth = _model_entries(full, rec)
    return {"rec": rec, "pre": SessionStore(pre, create=False), "full": full, "truth": truth,
            "tmp": tmp}


# ------------------------------------------------------------------------------ frame ranges


def test_frame_range_parsing():
    assert mv.parse_frames("0:100:2") == slice(0, 100, 2)
    assert mv.parse_frames(":50") == slice(None, 50, None)
    assert mv.parse_frames("10:") == slice(10, None, None)
    assert mv.parse_frames("::3") == slice(None, None, 3)
    assert mv.parse_frames(None) == slice(None)
    for bad in ("a:b", "5", "1:2:0", "-1:5", "1:2:3:4", "9:3"):
        with pytest.raises(ValueError, match="START:STOP:STEP"):
            mv.parse_frames(bad)
    # original frame numbers: removed frames (7, 8) are simply absent
    frames = np.array([0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12])
    assert mv.select_positions(frames, "2:11:2").tolist() == [2, 4, 6, 8]
    with pytest.raises(ValueError, match="selects no frame"):
        mv.select_positions(frames, "100:")


def test_colour_mapping():
    x = np.array([[0.0, 5.0, 10.0, 20.0, np.nan]])
    assert mv.to_uint8(x, 0, 10).tolist() == [[0, 128, 255, 255, 0]]
    gray = mv.colorize(mv.to_uint8(x, 0, 10), mv.colormap_lut("gray"))
    assert gray.shape == (1, 5, 3) and (gray[..., 0] == gray[..., 2]).all()
    div = mv.colormap_lut("diverging")
    assert div[127:129].min() >= 250  # 0 of a symmetric range is white
    assert div[0, 0] > div[0, 2] and div[255, 2] > div[255, 0]  # blue below, red above (BGR)
    with pytest.raises(ValueError, match="allowed maps"):
        mv.colormap_lut("nope")


# ------------------------------------------------------------------------------ stages


def test_missing_stage_says_what_to_run(sessions, tmp_path):
    empty = SessionStore(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"stage '2e'.*step 2e.*--to 2e"):
        mv.open_stage(empty, "2e")
    with pytest.raises(ValueError, match=r"stage 'residual'.*--to 8b"):
        mv.open_stage(sessions["pre"], "residual")  # has 3a, no footprints / traces
    with pytest.raises(ValueError, match="allowed stages"):
        mv.open_stage(empty, "3b")


def test_reconstruction_is_the_model_of_the_cropped_movie(sessions):
    store, t = sessions["full"], sessions["truth"]
    Y = store.load("3a", "movie_cropped")
    recon = mv.open_stage(store, "reconstruction")
    res = mv.open_stage(store, "residual")
    kept = Y.frame.values[t["keep"]]
    np.testing.assert_array_equal(recon.frame.values, kept)  # aligned on `frame`
    np.testing.assert_array_equal(res.frame.values, kept)
    # Y ~ A (C + b0 + beta (f - mean f)) + b f, with f on the traces' frames
    f = t["f"][t["keep"]]
    coef = t["C"] + t["b0"][:, None] + t["beta"][:, None] * (f - t["f"].mean())[None, :]
    want = np.einsum("nt,nhw->thw", coef, t["A"]) + f[:, None, None] * t["b"][None]
    np.testing.assert_allclose(recon.values, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(res.values, Y.sel(frame=kept).values - want, rtol=1e-4,
                               atol=1e-3)
    assert "A_refined" in recon.attrs["model"] and "b_init" in recon.attrs["model"]


def test_earlier_model_without_background(sessions, tmp_path):
    """6e footprints / traces with 6d's baseline; 6a ran without subtracting b f."""
    shutil.copytree(sessions["pre"].root, tmp_path / "s")
    store = SessionStore(tmp_path / "s", create=False)
    Y = store.load("3a", "movie_cropped")
    coords = {k: ("frame", v.values) for k, v in Y.coords.items() if v.dims == ("frame",)}
    h, w = Y.shape[1:]
    A = np.zeros((2, h, w), np.float32)
    A[0, 5:9, 5:9], A[1, 20:25, 10:14] = 1.0, 0.5
    C = np.random.default_rng(0).uniform(0, 3, (2, Y.sizes["frame"])).astype(np.float32)
    _put(store, "4e", {"b_init": xr.DataArray(np.ones((h, w), np.float32), dims=("height", "width")),
                       "f_init": xr.DataArray(np.ones(Y.sizes["frame"], np.float32),
                                              dims=("frame",), coords=coords)})
    _put(store, "6a", {"YrA": xr.DataArray(C, dims=("unit_id", "frame"),
                                           coords={"unit_id": [3, 7], **coords})},
         params={"subtract_background": False})
    _put(store, "6d", {"b0_temporal": xr.DataArray(np.array([9.0, 1.0, 2.0], np.float32),
                                                   dims=("unit_id",), coords={"unit_id": [1, 3, 7]})})
    _put(store, "6e", {
        "A_filtered": xr.DataArray(A, dims=("unit_id", "height", "width"),
                                   coords={"unit_id": [3, 7]}),
        "C_filtered": xr.DataArray(C, dims=("unit_id", "frame"),
                                   coords={"unit_id": [3, 7], **coords})})
    recon = mv.open_stage(store, "reconstruction")
    want = np.einsum("nt,nhw->thw", C + np.array([[1.0], [2.0]], np.float32), A)
    np.testing.assert_allclose(recon.values, want, rtol=1e-5, atol=1e-5)
    assert "6e" in recon.attrs["model_source"] and "b_init" not in recon.attrs["model"]


# ------------------------------------------------------------------------------ MP4


def test_mp4_of_100_frames_decodes_to_100_frames(sessions, tmp_path):
    store = sessions["full"]
    movie = mv.open_stage(store, "2e")
    r = ve.export_video(store, tmp_path / "v.mp4", "2e", frames="0:100")
    video = ve.read_mp4(r.path)
    h, w = movie.shape[1:]
    assert video.shape == (100, h + h % 2, w + w % 2, 3)
    assert abs(r.fps - 20.0) < 0.5  # the recording's rate, from its timestamps
    # the grey values are the frames mapped through the robust limits
    want = mv.to_uint8(movie.values[:100], r.limits["2e"][0], r.limits["2e"][1])
    assert np.abs(video[:, :h, :w, 1].astype(float) - want).mean() < 6
    assert list(tmp_path.iterdir()) == [r.path]  # no temporary file left


def test_frame_step_limits_fps_and_colour_map(sessions, tmp_path):
    store = sessions["full"]
    r = ve.export_video(store, tmp_path / "v.mp4", "raw", frames="10:70:3", vmin=0, vmax=1,
                        fps=7.5, cmap="gray")
    video = ve.read_mp4(r.path)
    assert len(video) == 20 and r.limits["raw"] == (0.0, 1.0)
    assert video.mean() > 240  # every raw value >= 1 is white
    r = ve.export_video(store, tmp_path / "c.mp4", "residual", cmap="diverging", frames=":40")
    lo, hi = r.limits["residual"]
    assert lo == -hi  # residuals: symmetric around 0
    assert len(ve.read_mp4(r.path)) == 39  # frame 3 has no trace: no residual


def test_side_by_side(sessions, tmp_path):
    store = sessions["full"]
    r = ve.export_video(store, tmp_path / "s.mp4", "2b", compare="reconstruction",
                        frames="0:60", labels=False)
    video = ve.read_mp4(r.path)
    H, W = mv.open_stage(store, "2b").shape[1:]
    rec = mv.open_stage(store, "reconstruction")
    h, w = rec.shape[1:]
    width = W + ve.GAP_PX + w
    assert video.shape[1:3] == (max(H, h) + max(H, h) % 2, width + width % 2)
    # frames the traces lack (3, 50, 51) are left out of both panels
    assert len(video) == 60 - 3 and r.n_frames == 57
    frames = rec.frame.values[rec.frame.values < 60]
    right = mv.to_uint8(rec.sel(frame=frames).values, *r.limits["reconstruction"])
    left = mv.to_uint8(mv.open_stage(store, "2b").sel(frame=frames).values, *r.limits["2b"])
    x = W + ve.GAP_PX
    assert np.abs(video[:, :h, x:x + w, 1].astype(float) - right).mean() < 6
    assert np.abs(video[:, :H, :W, 1].astype(float) - left).mean() < 6
    assert video[:, :, W + 1:x - 1].max() < 30  # the black gap


def _redness(video):
    v = video.astype(float)
    return (v[..., 2] - v[..., 1]).mean(axis=0)  # R - G over frames (BGR)


def test_overlay_marks_the_planted_cells(sessions, tmp_path):
    store, rec = sessions["full"], sessions["rec"]
    plain = ve.export_video(store, tmp_path / "p.mp4", "2e", frames=":30")
    over = ve.export_video(store, tmp_path / "o.mp4", "2e", frames=":30", contours=True)
    red_plain, red = _redness(ve.read_mp4(plain.path)), _redness(ve.read_mp4(over.path))
    assert red_plain.max() < 30  # grey frames carry no colour
    yy, xx = np.mgrid[:red.shape[0], :red.shape[1]]
    dist = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in rec.centers])
    for k in range(len(rec.centers)):
        ring = (dist[k] > 2.0) & (dist[k] < 5.5)  # the 0.3 level lies ~3.3-4.5 px out
        if k == HIDDEN_UNIT:  # 8c did not keep it: no outline
            assert red[ring].max() < 30, k
        else:
            assert (red[ring] > 60).sum() >= 8, k
            assert red[dist[k] < 1.0].max() < 40, k  # the centre is not painted
    far = dist.min(axis=0) > 9
    assert red[far].max() < 30


def test_overlay_on_a_cropped_stage_is_not_offset(sessions, tmp_path):
    store, rec = sessions["full"], sessions["rec"]
    crop = store.load("3a", "crop")
    r = ve.export_video(store, tmp_path / "o.mp4", "reconstruction", frames=":20",
                        contours=True)
    red = _redness(ve.read_mp4(r.path))
    cy, cx = rec.centers[0] - [crop["y0"], crop["x0"]]
    yy, xx = np.mgrid[:red.shape[0], :red.shape[1]]
    d = np.hypot(yy - cy, xx - cx)
    assert (red[(d > 2.0) & (d < 5.5)] > 60).sum() >= 8


def test_cancelled_video_leaves_no_file(sessions, tmp_path):
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        ve.export_video(sessions["full"], tmp_path / "v.mp4", "2e", max_bytes=20_000,
                        progress=lambda f, m: f > 0 and cancel.set(), cancel=cancel)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ movie formats


def _read(result):
    p = result.path
    if result.format == "tiff":
        return tifffile.imread(p)
    if result.format == "npy":
        return np.load(p)
    if result.format == "mat":
        return np.moveaxis(scipy.io.loadmat(p)["movie"], 2, 0)
    return xr.open_zarr(p)["movie"].values


@pytest.mark.parametrize("fmt", me.FORMATS)
@pytest.mark.parametrize("stage", ["raw", "residual"])
def test_movie_formats_round_trip(sessions, tmp_path, fmt, stage):
    store = sessions["full"]
    movie = mv.open_stage(store, stage)
    pos = mv.select_positions(movie.frame.values, "5:65:2")
    calls = []
    r = me.export_movie(store, tmp_path, stage, fmt, frames="5:65:2", max_bytes=60_000,
                        progress=lambda f, m: calls.append(f))
    got = _read(r)
    assert got.dtype == movie.dtype  # uint8 stays uint8
    np.testing.assert_array_equal(got, movie.values[pos])
    assert calls[-1] == 1.0 and len(calls) > 2  # several batches
    frames = movie.frame.values[pos]
    if fmt == "mat":
        np.testing.assert_array_equal(scipy.io.loadmat(r.path)["frame"].ravel(), frames)
    elif fmt == "zarr":
        np.testing.assert_array_equal(xr.open_zarr(r.path).frame.values, frames)
    else:
        csv = np.loadtxt(tmp_path / f"movie_{stage}_frames.csv", delimiter=",", skiprows=1)
        np.testing.assert_array_equal(csv[:, 0], frames)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_mat_size_check_refuses_oversize(sessions, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="2 GB.*--format tiff"):
        me.check_mat_size((20000, 600, 600), np.float32, "2e")  # 28.8 GB
    me.check_mat_size((1000, 600, 600), np.uint8, "raw")  # 360 MB: fine
    monkeypatch.setattr(me, "MAT_MAX_BYTES", 10_000)
    with pytest.raises(ValueError, match="--format tiff"):
        me.export_movie(sessions["full"], tmp_path / "out", "2e", "mat")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_large_tiff_becomes_bigtiff(sessions, tmp_path, monkeypatch):
    monkeypatch.setattr(me, "BIGTIFF_BYTES", 1000)
    r = me.export_movie(sessions["full"], tmp_path, "2e", "tiff", frames=":10")
    with tifffile.TiffFile(r.path) as tif:
        assert tif.is_bigtiff and len(tif.pages) == 10
        np.testing.assert_array_equal(tif.asarray(), mv.open_stage(sessions["full"], "2e")
                                      .values[:10])


def test_cancelled_movie_export_leaves_no_file(sessions, tmp_path):
    for fmt in me.FORMATS:
        cancel = threading.Event()
        with pytest.raises(Cancelled):
            me.export_movie(sessions["full"], tmp_path, "2e", fmt, max_bytes=20_000,
                            progress=lambda f, m: f > 0 and cancel.set(), cancel=cancel)
        assert list(tmp_path.iterdir()) == [], fmt


# ------------------------------------------------------------------------------ command line


def test_cli_exports(sessions, tmp_path, capsys):
    root = str(sessions["full"].root)
    assert main(["export-video", root, str(tmp_path / "a.mp4"), "--stage", "2b", "--compare",
                 "2e", "--frames", "0:40:2", "--contours", "--quiet"]) == 0
    assert len(ve.read_mp4(tmp_path / "a.mp4")) == 20
    assert main(["export-movie", root, str(tmp_path / "m"), "--stage", "raw", "--format", "npy",
                 "--frames", ":25", "--quiet"]) == 0
    assert np.load(tmp_path / "m" / "movie_raw.npy").shape[0] == 25
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_are_one_line(sessions, tmp_path, capsys):
    root = str(sessions["pre"].root)
    assert main(["export-movie", root, str(tmp_path), "--stage", "raw", "--format", "tiff",
                 "--frames", "1:x", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "START:STOP:STEP" in err
    assert main(["export-video", root, str(tmp_path / "r.mp4"), "--stage", "residual",
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "residual" in err and "--to 8b" in err
    assert not list(tmp_path.iterdir())
