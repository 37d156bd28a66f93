"""Steps 7a-8c (spatial update, final pass, export) on a synthetic recording with known truth.

Upstream steps (1-6e) are written into the session store as fake runs built from the synthetic
truth: perturbed true footprints as A_filtered, true calcium as C_filtered, the movie (float32,
cropped out of a larger frame, some frames removed) as movie_cropped. Steps 7a-8c then run
through the real Runner; the remaining tests call the step functions directly.
"""

import json
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage as ndi

from mps_core.params import ParamSet
from mps_core.registry import SimpleContext, StepError
from mps_core.runner import Runner
from mps_core.steps import STEPS
from mps_core.steps import final as s8
from mps_core.steps import spatial as s7
from mps_core.store import SessionStore
from mps_core.synth import _ar_calcium, _make_footprints, _make_spikes, simulate

T_ALL, H, W = 640, 80, 80
FULL = (100, 110)  # the input video's frame; the movie is its crop at (Y0, X0)
Y0, X0 = 7, 11
REMOVED = [5, 6, 200, 401]  # original frames removed upstream (2a / 2d)
D = 10.0


def _iou(x, y, frac=0.1):
    sx, sy = x > frac * x.max(), y > frac * y.max()
    return (sx & sy).sum() / (sx | sy).sum()


def _corr(x, y):
    return float(np.corrcoef(x, y)[0, 1])


class Scene:
    """Truth and the upstream artifacts of a synthetic recording."""

    def __init__(self):
        rec = simulate(n_frames=T_ALL, height=H, width=W, n_cells=8, cell_diameter=D,
                       max_shift=0, glow=0, noise_sd=3.0, seed=2)
        rng = np.random.default_rng(7)
        # a ninth cell overlapping cell 0 (centres 6 px apart, d = 10) whose activity follows
        # cell 0's: the hard case for a spatial update
        extra = _make_footprints(rng, rec.centers[:1] + np.array([4.0, 4.5]), H, W, D)
        own = _ar_calcium(_make_spikes(rng, 1, T_ALL, 0.3 / 20), rec.g[0])[0]
        c9 = rec.calcium[0] + 0.4 * own
        A = np.concatenate([rec.footprints, extra])
        C = (np.vstack([rec.calcium, c9]) * np.float32(rec.cell_brightness)).astype(np.float32)
        Y = np.einsum("nhw,nt->thw", A, C) + rec.background + rng.normal(0, 3, (T_ALL, H, W))
        keep = np.setdiff1d(np.arange(T_ALL), REMOVED)
        self.frames = keep  # original frame numbers of the kept frames
        self.A, self.C, self.Y = A, C[:, keep], Y[keep].astype(np.float32)
        self.b = rec.background.astype(np.float32)
        self.ids = np.arange(len(A), dtype=np.int64) * 3 + 2  # ids as 4e-6e leave them
        self.shifts_all = rng.normal(0, 0.5, (T_ALL, 2)).astype(np.float32)
        self.pair = (0, len(A) - 1)

    def coords(self, frames=None):
        f = self.frames if frames is None else frames
        return {"frame": ("frame", f), "movie_number": ("frame", f // 320),
                "local_frame": ("frame", f % 320), "time_s": ("frame", f / 20.0)}

    def movie(self):
        data = da.from_array(self.Y, chunks=(100, -1, -1))
        return xr.DataArray(data, dims=("frame", "height", "width"),
                            coords={**self.coords(), "height": np.arange(H),
                                    "width": np.arange(W)}, name="movie_cropped",
                            attrs={"y0": Y0, "x0": X0})

    def footprints(self, A, ids=None):
        return xr.DataArray(np.asarray(A, np.float32), dims=("unit_id", "height", "width"),
                            coords={"unit_id": self.ids if ids is None else ids})

    def traces(self, C, ids=None):
        return xr.DataArray(np.asarray(C, np.float32), dims=("unit_id", "frame"),
                            coords={"unit_id": self.ids if ids is None else ids,
                                    **self.coords()})

    def perturbed(self):
        """Blurred, shifted true footprints: a poor but plausible A_filtered."""
        return np.stack([ndi.shift(ndi.gaussian_filter(a, 1.5), (1, -1), order=1)
                         for a in self.A]).astype(np.float32)

    def upstream(self, config: dict) -> dict[str, dict]:
        all_frames = np.arange(T_ALL)
        removed = np.isin(all_frames, REMOVED[:2]).astype(np.int8)
        qc = np.isin(all_frames, REMOVED[2:]).astype(np.int8) * 3
        index = xr.Dataset({"removed": ("frame", removed)}, coords=self.coords(all_frames))
        index["removed"].attrs["removal_codes"] = json.dumps({"1": "transmission corruption"})
        index.attrs["frames_in_files"] = T_ALL
        motion_qc = xr.Dataset({"removed": ("frame", qc)}, coords=self.coords(all_frames))
        motion_qc["removed"].attrs["removal_codes"] = json.dumps({"3": "motion outlier"})
        shifts = xr.DataArray(self.shifts_all, dims=("frame", "axis"),
                              coords=self.coords(all_frames), attrs={"axis": "dy, dx"})
        crop = {"y0": Y0, "x0": X0, "height": H, "width": W, "full_height": FULL[0],
                "full_width": FULL[1], "shape": "square"}
        cell = {"diameter_px": D, "source": "parameter"}
        return {
            "1": {"config": config},
            "2a": {"frame_index": index, "file_health": {
                "files": [{"height": FULL[0], "width": FULL[1]}]}},
            "2c": {"shifts": shifts}, "2d": {"motion_qc": motion_qc},
            "3a": {"crop": crop, "cell_size": cell, "movie_cropped": self.movie(),
                   "mean_frame": xr.DataArray(self.Y.mean(0), dims=("height", "width"))},
            "4e": {"b_init": xr.DataArray(self.b, dims=("height", "width")),
                   "f_init": xr.DataArray(np.ones(len(self.frames), np.float32),
                                          dims=("frame",), coords=self.coords())},
            "5a": {"noise": xr.DataArray(np.full((H, W), 3.0, np.float32),
                                         dims=("height", "width"))},
            "6e": {"A_filtered": self.footprints(self.perturbed()),
                   "C_filtered": self.traces(self.C)},
        }


def _fake_run(store: SessionStore, sid: str, outputs: dict) -> None:
    run = store.begin(sid)
    jobs = [j for j in (run.put(n, v) for n, v in outputs.items()) if j is not None]
    if jobs:
        dask.compute(*jobs)
    run.commit({"step": sid, "run_id": run.run_id, "status": "done", "inputs": {},
                "outputs": {n: next(run.tmp.glob(f"{n}.*")).name for n in outputs},
                "finished_time": time.time()})


@pytest.fixture(scope="module")
def scene():
    return Scene()


@pytest.fixture(scope="module")
def session(scene, tmp_path_factory):
    """Fake 1-6e in a store, then 7a-8c through the Runner."""
    tmp = tmp_path_factory.mktemp("s78")
    (tmp / "videos").mkdir()
    out = tmp / "session"
    ps = ParamSet(STEPS).with_values("1", {"input_dir": str(tmp / "videos"),
                                           "output_dir": str(out), "n_workers": 2})
    ps = ps.with_values("7f", {"keep_both_versions": True})
    store = SessionStore(out)
    config = {"input_dir": str(tmp / "videos"), "output_dir": str(out), "animal_id": "m1",
              "session_id": "s1"}
    for sid, outputs in scene.upstream(config).items():
        _fake_run(store, sid, outputs)
    results = Runner(STEPS, ps, store).run(start="7a", stop="8c")
    return store, results


# ----------------------------------------------------------------------------- runner chain


def test_chain_runs_through_the_runner_with_previews(session):
    store, results = session
    assert [r.step_id for r in results] == ["7a", "7b", "7c", "7d", "7e", "7f", "8a", "8b", "8c"]
    assert all(r.status == "done" for r in results)
    for sid in ("7a", "7b", "7c", "7d", "7e", "7f", "8a", "8b", "8c"):
        assert list(store.step_dir(sid).glob("preview_*.png")), sid
    assert not any(r.warnings for r in results if r.step_id != "8c")


def test_every_unit_belongs_to_exactly_one_cluster(session, scene):
    store, _ = session
    c = store.load("7b", "clusters")
    assert sorted(c["unit_id"]) == scene.ids.tolist()  # each unit once
    labels = dict(zip(c["unit_id"], c["cluster"]))
    assert sorted(set(c["cluster"])) == list(range(c["n_clusters"]))
    i, j = scene.pair  # the overlapping pair is solved together
    assert labels[int(scene.ids[i])] == labels[int(scene.ids[j])]
    bounds = store.load("7c", "cluster_bounds")
    assert len(bounds["y0"]) == c["n_clusters"] and bounds["resolved"]["padding_px"] == 20


def test_spatial_update_recovers_planted_footprints(session, scene):
    store, _ = session
    before = store.load("6e", "A_filtered").values
    A_upd = store.load("7e", "A_updated")
    assert np.array_equal(A_upd.unit_id.values, scene.ids)  # every unit updated, ids kept
    assert A_upd.dtype == np.float32 and A_upd.chunks[0][0] == 9
    ious = [_iou(A_upd.values[k], scene.A[k]) for k in range(len(scene.ids))]
    assert min(ious) > 0.8, ious
    assert min(_iou(before[k], scene.A[k]) for k in range(len(scene.ids))) < 0.8
    for k in scene.pair:  # the overlapping, correlated pair too, with the right amplitude
        assert np.abs(A_upd.values[k] - scene.A[k]).max() < 0.15
    report = json.loads(A_upd.attrs["report"])
    assert report["n_frames"] == len(scene.frames) and report["empty_units"] == []


def test_7f_keeps_raw_and_smoothed(session, scene):
    store, _ = session
    raw, sm = store.load("7f", "A_refined"), store.load("7f", "A_refined_smoothed")
    assert raw.attrs["smoothed"] == 0  # smoothing off: step 8 gets the raw footprints
    assert np.array_equal(sm.unit_id.values, raw.unit_id.values)
    r, s = raw.values, sm.values
    assert not np.allclose(r, s)
    # smoothing spreads each footprint without moving it
    for k in range(len(r)):
        assert (s[k] > 0).sum() > (r[k] > 0).sum()
        assert _iou(s[k], r[k], 0.3) > 0.6
    C = store.load("7f", "C_refined")
    assert np.array_equal(C.frame.values, scene.frames)


def test_7f_smooths_with_the_scale_7e_measured(session, scene):
    store, _ = session
    sm = json.loads(store.load("7e", "A_updated").attrs["report"])["smoothness"]
    # bright, compact synthetic cells estimated well: (almost) no smoothing is measured
    assert sm["units_scored"] == len(scene.ids) and 0 <= sm["sigma_px"] <= 0.1 * D
    assert sm["median_correlation"][sm["candidates_px"].index(sm["sigma_px"])] == \
        max(sm["median_correlation"])
    rep = json.loads(store.load("7f", "A_refined").attrs["report"])
    assert rep["smoothing_sigma_px"] == sm["sigma_px"]
    assert rep["smoothing_sigma_rule"] == "measured from the data in 7e"
    # a value set in 7f wins; without 7e's measurement the old rule applies
    p = s7.MergeValidateParams(smoothing_sigma=2.0)
    assert s7.smoothing_sigma(p, {"smoothness": sm}, D) == (2.0, "parameter")
    assert s7.smoothing_sigma(s7.MergeValidateParams(), {}, D)[0] == pytest.approx(0.1 * D)


def test_8c_exports_the_refined_footprints_when_asked(session, tmp_path):
    store, _ = session
    p = s8.ExportParams(footprints="refined", figures=False, export_zarr=False)
    s8.run_export(p, SimpleContext(output_dir=tmp_path), **_inputs_8c(store))
    A = np.load(tmp_path / "export" / "A.npy")
    ids = np.load(tmp_path / "export" / "unit_ids.npy")
    refined = store.load("7f", "A_refined").sel(unit_id=ids).values
    np.testing.assert_array_equal(A[:, Y0:Y0 + H, X0:X0 + W], refined)
    js = json.loads((tmp_path / "export" / "mps_export.json").read_text())
    assert js["footprints"] == "A_refined"


def test_final_traces_correlate_with_truth(session, scene):
    store, _ = session
    C = store.load("8b", "C_final")
    S = store.load("8b", "S_final")
    assert np.array_equal(C.unit_id.values, scene.ids)
    assert np.array_equal(C.frame.values, scene.frames)
    r = [_corr(C.values[k], scene.C[k]) for k in range(len(scene.ids))]
    assert min(r) > 0.95, r
    assert (S.values >= 0).all()
    rep = store.load("8b", "solver_report_final")
    assert rep["failed_unit_ids"] == []


def test_numpy_export_layout(session, scene):
    store, _ = session
    folder = store.step_dir("8c") / "export"
    A = np.load(folder / "A.npy")
    C, S = np.load(folder / "C.npy"), np.load(folder / "S.npy")
    motion, frames = np.load(folder / "motion.npy"), np.load(folder / "frames.npy")
    ids = np.load(folder / "unit_ids.npy")
    units = store.load("8c", "final_units")
    kept = np.asarray(units["unit_id"])[np.asarray(units["kept"])]
    n, T = len(kept), len(scene.frames)
    assert n == len(scene.ids)  # every planted cell passes the final filter
    assert A.shape == (n, *FULL) and A.dtype == np.float32
    assert C.shape == S.shape == (n, T) and C.dtype == S.dtype == np.float32
    assert motion.shape == (T, 2) and motion.dtype == np.float32
    assert frames.dtype == np.int64 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, kept)
    np.testing.assert_array_equal(frames, scene.frames)  # original indices of C's columns
    np.testing.assert_array_equal(motion, scene.shifts_all[scene.frames])
    # 7f's smoothed copy (the default export) placed back at the crop offsets, zeros outside
    refined = store.load("7f", "A_refined_smoothed").sel(unit_id=kept).values
    np.testing.assert_array_equal(A[:, Y0:Y0 + H, X0:X0 + W], refined)
    outside = A.copy()
    outside[:, Y0:Y0 + H, X0:X0 + W] = 0
    assert not outside.any()
    np.testing.assert_array_equal(C, store.load("8b", "C_final").sel(unit_id=kept).values)
    assert np.load(folder / "b.npy").shape == FULL and np.load(folder / "f.npy").shape == (T,)
    # the JSON: centroids in full-frame pixels, frame summary, grid, versions
    js = json.loads((folder / "mps_export.json").read_text())
    cy = np.asarray(js["units"]["centroid_y"])
    true_cy = np.array([ndi.center_of_mass(a)[0] for a in scene.A]) + Y0
    assert np.abs(cy - true_cy).max() < 0.5
    assert js["frames"]["removed"] == {"transmission corruption": 2, "motion outlier": 2}
    assert js["pixel_grid"]["grid"] == "input video" and "numpy" in js["versions"]
    assert js["footprints"].startswith("A_refined_smoothed")
    zs = xr.open_zarr(folder / "mps_export.zarr", consolidated=False)
    np.testing.assert_array_equal(zs["A"].values, A)
    np.testing.assert_array_equal(zs["frame"].values, frames)
    manifest = store.load("8c", "export_manifest")
    shapes = {e["path"]: e.get("shape") for e in manifest["files"]}
    for e in manifest["files"]:  # the manifest lists exactly the files written
        assert (folder / e["path"]).exists(), e
    assert "figures/footprints.png" in shapes
    assert shapes["A.npy"] == [n, *FULL] and shapes["motion.npy"] == [T, 2]


def _inputs_8c(store, **replace):
    names = s8.STEP_8C.inputs + s8.STEP_8C.optional_inputs
    out = {}
    for name in names:
        src = next(s.id for s in STEPS if name in s.outputs)
        if store.has(src, name):
            out[name] = store.load(src, name)
    out.update(replace)
    return out


def test_exporting_twice_gives_identical_files(session, tmp_path):
    store, _ = session
    p = s8.ExportParams(export_pickle=True, export_table=True, figures=False)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        s8.run_export(p, SimpleContext(output_dir=tmp_path / sub), **_inputs_8c(store))
    a, b = tmp_path / "a" / "export", tmp_path / "b" / "export"
    files = sorted(q.relative_to(a) for q in a.rglob("*") if q.is_file())
    assert files == sorted(q.relative_to(b) for q in b.rglob("*") if q.is_file())
    assert {"A.npy", "C.npy", "S.npy", "motion.npy", "frames.npy", "C_table.csv",
            "mps_export.pkl"} <= {f.name for f in files}
    for f in files:
        if f.name == "mps_export.json":  # equal but for the time stamp
            ja, jb = (json.loads((d / f).read_text()) for d in (a, b))
            ja.pop("exported_at"), jb.pop("exported_at")
            assert ja == jb
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    header = (a / "C_table.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["frame", "movie_number", "local_frame", "time_s"]
    assert header[4:] == [f"unit_{u}" for u in np.load(a / "unit_ids.npy")]
    table = np.loadtxt(a / "C_table.csv", delimiter=",", skiprows=1)
    frames = np.load(a / "frames.npy")
    np.testing.assert_array_equal(table[:, 0], frames)
    np.testing.assert_allclose(table[:, 3], frames / 20.0)  # time since the first frame
    np.testing.assert_allclose(table[:, 4:], np.load(a / "C.npy").T, rtol=1e-5, atol=1e-4)


def test_final_filter_reports_what_each_check_removed(session, scene, tmp_path):
    store, _ = session
    A = store.load("7f", "A_refined").values
    C = store.load("8b", "C_final").values
    S = store.load("8b", "S_final").values
    rep = store.load("8b", "solver_report_final")
    rng = np.random.default_rng(3)
    tiny = np.zeros((H, W), np.float32)
    tiny[40:42, 40] = 1.0  # 2 pixels
    blob = np.zeros((H, W), np.float32)  # a footprint where there is no cell, random trace
    blob[2:9, 2:9] = 1.0
    ids = np.concatenate([scene.ids, [100, 101, 102]])
    A2 = np.concatenate([A, [tiny * A[1].max()], [blob], [A[2]]])
    C2 = np.concatenate([C, [C[1]], [rng.random(C.shape[1]) * 50], [C[2] * 0.05]])
    S2 = np.concatenate([S, S[:3]])
    sn = dict(zip(rep["units"]["unit_id"], rep["units"]["sn"]))
    report = {"units": {"unit_id": ids.tolist(),
                        "sn": [sn.get(int(u), 1.0) for u in scene.ids] + [1.0, 1.0,
                                                                          sn[int(scene.ids[2])]]}}
    ctx = SimpleContext(output_dir=tmp_path)
    out = s8.run_export(s8.ExportParams(min_snr=3.0, figures=False), ctx, **_inputs_8c(
        store, A_refined=scene.footprints(A2, ids), C_final=scene.traces(C2, ids),
        S_final=scene.traces(S2, ids), solver_report_final=report))
    u = out["final_units"]
    why = dict(zip(u["unit_id"], u["removed_by"]))
    assert all(why[int(i)] == "" for i in scene.ids)
    assert "min_size" in why[100]
    assert "min_correlation" in why[101]
    assert why[102] == "min_snr"
    np.testing.assert_array_equal(np.load(tmp_path / "export" / "unit_ids.npy"), scene.ids)
    js = json.loads((tmp_path / "export" / "mps_export.json").read_text())
    assert js["final_filter"]["removed"]["min_snr"] == [102]
    assert js["final_filter"]["units_after_each_check"]["after min_correlation"] == len(scene.ids)


# ----------------------------------------------------------------------------- direct calls


def _update_inputs(scene):
    cs = {"diameter_px": D}
    A_f = scene.footprints(scene.perturbed())
    Ad = s7.run_dilation(s7.DilationParams(), SimpleContext(), A_f, cs)["A_dilated"]
    cl = s7.run_clustering(s7.ClusteringParams(), SimpleContext(), Ad, cs)["clusters"]
    bd = s7.run_bounds(s7.BoundsParams(), SimpleContext(), cl, Ad, cs)["cluster_bounds"]
    up = scene.upstream({})
    return dict(A_dilated=Ad, C_filtered=scene.traces(scene.C), clusters=cl, cluster_bounds=bd,
                movie_cropped=scene.movie(), noise=up["5a"]["noise"], b_init=up["4e"]["b_init"],
                f_init=up["4e"]["f_init"], cell_size=cs)


def test_suggestions_are_deterministic_and_used_exactly(scene):
    up = scene.upstream({})
    args = (SimpleContext(), up["6e"]["A_filtered"], up["6e"]["C_filtered"], scene.movie(),
            up["5a"]["noise"])
    sugg = [s7.run_suggestions(s7.SpatialSuggestionParams(), *args)["spatial_suggestions"]
            for _ in range(2)]
    assert sugg[0] == sugg[1]
    v = sugg[0]["values"]
    assert set(v) == {"min_std", "penalty_scale", "min_penalty", "max_penalty"}
    assert set(sugg[0]["reasons"]) == set(v)
    assert 0 < v["min_std"] < 3.0 and 1 < v["penalty_scale"] < 6
    assert v["min_penalty"] <= v["max_penalty"]
    cons = s7.run_suggestions(s7.SpatialSuggestionParams(preference="conservative"),
                              *args)["spatial_suggestions"]["values"]
    assert cons["penalty_scale"] > v["penalty_scale"] and cons["min_std"] > v["min_std"]
    inputs = _update_inputs(scene)
    out = s7.run_update(s7.SpatialUpdateParams(use_suggestions=True), SimpleContext(),
                        spatial_suggestions=sugg[0], **inputs)["A_updated"]
    report = json.loads(out.attrs["report"])
    assert {k: report[k] for k in v} == v
    assert set(report["source"].values()) == {"7d suggestion"}
    ious = [_iou(out.values[k], scene.A[k]) for k in range(len(scene.ids))]
    assert min(ious) > 0.8, ious
    with pytest.raises(StepError, match="7d"):
        s7.run_update(s7.SpatialUpdateParams(use_suggestions=True), SimpleContext(), **inputs)


def test_7e_cancels_between_clusters(scene):
    inputs = _update_inputs(scene)
    ctx = SimpleContext()
    seen = []

    def progress(fraction, message=""):
        seen.append(message)
        if "cluster" in message:
            ctx.cancel_event.set()

    ctx.progress = progress
    from mps_core.registry import Cancelled

    with pytest.raises(Cancelled):
        s7.run_update(s7.SpatialUpdateParams(), ctx, **inputs)
    assert sum("cluster" in m for m in seen) == 1  # stopped after the first cluster


def test_7f_merges_a_planted_duplicate_with_a_recomputed_trace(scene):
    k = 3  # split cell k into two units with the same footprint shape: a duplicate pair
    rng = np.random.default_rng(9)
    A = np.concatenate([scene.A, [0.5 * scene.A[k]]]).astype(np.float32)
    A[k] *= 0.5
    ids = np.concatenate([scene.ids, [1000]])
    truth = scene.C[k]
    noisy = [truth + rng.normal(0, 0.3 * truth.std(), truth.shape) for _ in range(2)]
    C = np.concatenate([scene.C, [noisy[1]]]).astype(np.float32)
    C[k] = noisy[0]
    assert _corr(noisy[0], noisy[1]) > 0.8
    up = scene.upstream({})
    out = s7.run_merge(s7.MergeValidateParams(), SimpleContext(), scene.footprints(A, ids),
                       scene.traces(C, ids), {"diameter_px": D}, scene.movie(),
                       up["4e"]["b_init"], up["4e"]["f_init"])
    assert np.array_equal(out["A_refined"].unit_id.values, scene.ids)  # 1000 absorbed
    report = json.loads(out["A_refined"].attrs["report"])
    assert report["merged_duplicates"] == [{"kept": int(scene.ids[k]), "absorbed": [1000]}]
    merged = out["A_refined"].values[k]
    assert _iou(merged, scene.A[k]) > 0.9 and np.abs(merged - scene.A[k]).max() < 0.1
    c = out["C_refined"].values[k]
    # recomputed from the movie, not copied from either duplicate
    assert _corr(c, truth) > 0.99 > max(_corr(n, truth) for n in noisy)
    others = [i for i in range(len(scene.ids)) if i != k]
    np.testing.assert_array_equal(out["C_refined"].values[others], scene.C[others])


def test_7f_drops_empty_footprints_and_needs_no_movie_without_duplicates(scene):
    A = scene.A.copy()
    A[4] = 0
    out = s7.run_merge(s7.MergeValidateParams(smoothing=True), SimpleContext(),
                       scene.footprints(A), scene.traces(scene.C), {"diameter_px": D},
                       None, None, None)  # the movie is not touched
    ids = out["A_refined"].unit_id.values
    assert int(scene.ids[4]) not in ids and len(ids) == len(scene.ids) - 1
    # smoothing on: step 8 gets the smoothed footprints
    assert out["A_refined"].attrs["smoothed"] == 1
    np.testing.assert_array_equal(out["A_refined"].values, out["A_refined_smoothed"].values)
    assert (out["A_refined"].values > 0).sum() > (A > 0).sum() - (A[4] > 0).sum()
    off = s7.run_merge(s7.MergeValidateParams(keep_both_versions=False), SimpleContext(),
                       scene.footprints(A), scene.traces(scene.C), {"diameter_px": D},
                       None, None, None)
    assert off["A_refined_smoothed"].sizes["unit_id"] == 0  # no copy asked for


def test_8b_background_weights_recover_a_planted_share():
    rng = np.random.default_rng(1)
    f = np.sin(np.linspace(0, 20, 500)) + 5
    c = np.clip(rng.normal(0, 1, (3, 500)), 0, None)
    beta = np.array([0.0, 2.0, -1.0])
    y = c + 3.0 + beta[:, None] * (f - f.mean())
    np.testing.assert_allclose(s8.background_weights(y, c, np.full(3, 3.0), f), beta, atol=1e-9)


def test_export_rejects_a_crop_that_does_not_fit(session):
    store, _ = session
    bad = {"y0": 50, "x0": 0, "full_height": 100, "full_width": 110}
    with pytest.raises(StepError, match="crop"):
        s8.run_export(s8.ExportParams(), SimpleContext(output_dir=Path("/nonexistent")),
                      **_inputs_8c(store, crop=bad))
