"""Session store and runner on a small fake pipeline: atomic commits, staleness, cancel, resume."""

import json
import shutil
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from mps_core.figures import Figure, LinePanel
from mps_core.paramtypes import P, StepParams
from mps_core.params import ParamSet
from mps_core.registry import Preview, Step, StepError
from mps_core.runner import PlanError, Runner, StepFailed
from mps_core.steps.config import STEP_1
from mps_core.store import REMOVED_FILE, SessionStore


class MakeParams(StepParams):
    n: int = P(40, "frames", ge=1)
    crash: bool = P(False, "crash half way (test)")


class AddParams(StepParams):
    offset: float = P(1.0, "added")
    crash: bool = P(False, "crash half way (test)")
    cancel_after: int = P(0, "set the cancel flag after this many chunks (test)", ge=0)


CANCEL = threading.Event()


def make(p, ctx, config):
    x = da.arange(p.n * 4, chunks=40, dtype="float32").reshape(p.n, 4).rechunk((10, 4))
    arr = xr.DataArray(x, dims=("frame", "width"), coords={"frame": np.arange(p.n)})
    removed = np.zeros(p.n, np.int8)
    removed[[3, 7]] = 1
    index = xr.Dataset({"removed": ("frame", removed)}, coords={"frame": np.arange(p.n)})
    index["removed"].attrs["removal_codes"] = json.dumps({"1": "test removal"})
    if p.crash:
        raise RuntimeError("injected crash")
    return {"seq": arr, "index": index}


def add(p, ctx, seq):
    done = {"n": 0}

    def block(b):
        done["n"] += 1
        if p.cancel_after and done["n"] >= p.cancel_after:
            CANCEL.set()
        if p.crash and done["n"] >= 2:
            raise RuntimeError("injected crash mid-step")
        return b + p.offset

    out = seq.copy(data=seq.data.map_blocks(block, dtype=seq.dtype))
    return {"seq2": out}


def total(p, ctx, seq2):
    (s,) = ctx.compute(seq2.sum())
    if not np.isfinite(float(s)):
        raise StepError("not finite")
    return {"total": {"sum": float(s)}}


def preview(outputs, inputs, params):
    y = np.asarray(outputs["seq2"].mean("width"))
    return Figure("fake", [LinePanel("mean", np.arange(len(y)), {"mean": y})])


STEPS = [
    STEP_1,
    Step("a", "Make", "Fake", "makes", MakeParams, ("config",), ("seq", "index"), make),
    Step("b", "Add", "Fake", "adds", AddParams, ("seq",), ("seq2",), add,
         previews=(Preview("mean", "Mean", preview),)),
    Step("c", "Total", "Fake", "sums", StepParams, ("seq2",), ("total",), total),
    Step("d", "Later", "Fake", "not yet", StepParams, ("total",), ("later",), None),
]


@pytest.fixture
def session(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    out = tmp_path / "out"
    params = ParamSet(STEPS).with_values("1", {"input_dir": str(inp), "output_dir": str(out),
                                               "n_workers": 2})
    store = SessionStore(out)
    return params, store


def test_run_all_then_outputs_and_manifest(session):
    params, store = session
    events = []
    res = Runner(STEPS, params, store, on_event=lambda *e: events.append(e)).run(stop="c")
    assert [r.status for r in res] == ["done"] * 4
    seq2 = store.load("b", "seq2")
    np.testing.assert_allclose(seq2.values, np.arange(160).reshape(40, 4) + 1)
    assert store.load("c", "total")["sum"] == float((np.arange(160) + 1).sum())
    m = store.manifest("b")
    assert m["params"] == {"offset": 1.0, "crash": False, "cancel_after": 0}
    assert m["inputs"]["seq"]["step"] == "a" and m["status"] == "done"
    assert {"numpy", "dask", "xarray", "zarr", "scipy", "cvxpy", "mps"} <= set(m["versions"])
    assert (store.step_dir("b") / "preview_mean.png").stat().st_size > 1000
    assert json.loads(store.params_path.read_text())["steps"]["b"]["offset"] == 1.0
    assert ("b", "done") == events[-3][:2]
    assert store.statuses(["1", "a", "b", "c", "d"]) == {
        "1": "done", "a": "done", "b": "done", "c": "done", "d": "not run"}
    # removal lists are gathered into one file in the session folder
    lines = (store.root / REMOVED_FILE).read_text().splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == ["3", "7"]
    assert "test removal" in lines[1]


def test_previews_are_drawn_after_the_commit_and_a_broken_one_only_warns(session, monkeypatch):
    """Previews are drawn on a background thread while later steps run; every one is on disk
    when run() returns, and one that raises leaves the step done with a warning."""
    import threading

    from mps_core import preview_drawer

    params, store = session
    threads = set()
    real = preview_drawer.render_png

    def render(fig, path):
        threads.add(threading.current_thread().name)
        if fig.title == "broken":
            raise RuntimeError("no ink")
        return real(fig, path)

    monkeypatch.setattr(preview_drawer, "render_png", render)
    Runner(STEPS, params, store).run(stop="c")
    assert threads and all(t.startswith("mps-previews") for t in threads)
    assert (store.step_dir("b") / "preview_mean.png").stat().st_size > 1000
    assert not list(store.step_dir("b").glob(".preview_*"))

    broken = Step("b", "Add", "Fake", "adds", AddParams, ("seq",), ("seq2",), add,
                  previews=(Preview("mean", "Mean", lambda o, i, p: Figure("broken", [])),))
    steps = [s if s.id != "b" else broken for s in STEPS]
    res = Runner(steps, ParamSet(steps).with_values("1", params["1"].model_dump()), store).run(
        "b", "c")
    assert [r.status for r in res] == ["done", "done"]
    assert store.status("b") == "done"
    assert any("preview 'mean' could not be drawn: no ink" in w
               for w in store.manifest("b")["warnings"])
    assert not (store.step_dir("b") / "preview_mean.png").exists()


def test_crash_mid_step_keeps_previous_result(session):
    params, store = session
    Runner(STEPS, params, store).run(stop="c")
    before = store.manifest("b")
    data_before = store.load("b", "seq2").values.copy()
    bad = params.with_values("b", {"crash": True, "offset": 5.0})
    with pytest.raises(StepFailed, match="injected crash"):
        Runner(STEPS, bad, store).run(start="b", stop="b")
    assert store.manifest("b") == before
    np.testing.assert_array_equal(store.load("b", "seq2").values, data_before)
    assert store.status("b") == "failed"
    assert "injected crash" in store.failure("b")["error"]
    # no temporary folders left behind
    assert not [p for p in (store.root / "steps").iterdir() if p.name.startswith(".")]
    # a good re-run clears the failure
    Runner(STEPS, params, store).run(start="b", stop="b")
    assert store.status("b") == "done"


def test_opening_a_session_mid_run_leaves_the_run_alone(session, tmp_path):
    """A viewer or a second command opening the session while a step runs must not delete the
    step's working folder; a crashed run's folder (its process gone) is still cleaned up."""
    import subprocess
    import sys

    from mps_core.store import OWNER_FILE, StoreError

    params, store = session
    Runner(STEPS, params, store).run(stop="b")
    before = store.load("b", "seq2").values.copy()
    run = store.begin("b")
    (run.tmp / "partial.bin").write_bytes(b"x")
    SessionStore(store.root, create=False)  # opened elsewhere while the run goes on
    assert (run.tmp / "partial.bin").exists()
    # a folder left by a process that has ended is removed on the next open
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    crashed = store.begin("c")
    owner = json.loads((crashed.tmp / OWNER_FILE).read_text())
    owner["pid"] = int(dead.stdout)
    (crashed.tmp / OWNER_FILE).write_text(json.dumps(owner))
    SessionStore(store.root, create=False)
    assert not crashed.tmp.exists() and run.tmp.exists()
    # a run whose folder was removed under it (an older MPS opening the session) commits
    # nothing: the previous result stays
    shutil.rmtree(run.tmp)
    run.tmp.mkdir()  # writers recreate folders as they write their next chunk
    with pytest.raises(StoreError, match="removed while it ran"):
        run.commit({"step": "b"})
    np.testing.assert_array_equal(store.load("b", "seq2").values, before)


def test_rerun_marks_downstream_stale(session):
    params, store = session
    Runner(STEPS, params, store).run(stop="c")
    Runner(STEPS, params.with_values("b", {"offset": 2.0}), store).run(start="b", stop="b")
    assert store.status("b") == "done"
    assert store.status("c") == "stale"
    Runner(STEPS, params, store).run(start="a", stop="a")
    assert store.statuses(["a", "b", "c"]) == {"a": "done", "b": "stale", "c": "stale"}


def test_cancel_between_chunks_keeps_store(session):
    params, store = session
    Runner(STEPS, params, store).run(stop="c")
    before = store.manifest("b")
    CANCEL.clear()
    p2 = params.with_values("b", {"cancel_after": 1, "offset": 9.0}).with_values("1", {"n_workers": 1})
    res = Runner(STEPS, p2, store).run(start="b", stop="c", cancel=CANCEL)
    assert [r.status for r in res] == ["cancelled"]
    assert store.manifest("b") == before
    assert store.status("b") == "done"
    CANCEL.clear()


def test_plan_errors_before_anything_runs(session):
    params, store = session
    r = Runner(STEPS, params, store)
    with pytest.raises(PlanError, match="not implemented yet.*--to c"):
        r.plan()
    with pytest.raises(PlanError, match="needs 'seq' from step a"):
        r.plan(start="b", stop="c")
    with pytest.raises(PlanError, match="unknown step 'zz'"):
        r.plan(start="zz")
    assert not (store.step_dir("a")).exists()
    from mps_core.registry import SimpleContext, StepNotImplemented

    with pytest.raises(StepNotImplemented, match="step d .Later. is not implemented yet"):
        STEPS[-1](StepParams(), SimpleContext())


def test_resume_from_middle_uses_stored_inputs(session):
    params, store = session
    Runner(STEPS, params, store).run(stop="b")
    res = Runner(STEPS, params, store).run(start="c", stop="c")
    assert res[0].status == "done"
    assert store.manifest("c")["inputs"]["seq2"]["run_id"] == store.manifest("b")["run_id"]


def test_bad_config_stops_before_anything(tmp_path):
    out = tmp_path / "out"
    params = ParamSet(STEPS).with_values("1", {"input_dir": str(tmp_path / "missing"),
                                               "output_dir": str(out)})
    with pytest.raises(PlanError, match="does not exist"):
        Runner(STEPS, params, SessionStore(out)).run(stop="c")
    assert not store_has_steps(out)


def test_output_inside_input_refused(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    params = ParamSet(STEPS).with_values("1", {"input_dir": str(inp),
                                               "output_dir": str(inp / "results")})
    out = tmp_path / "elsewhere"
    with pytest.raises(PlanError, match="inside the input folder"):
        Runner(STEPS, params, SessionStore(out)).run(stop="a")
    assert not (inp / "results").exists()


def store_has_steps(root):
    d = root / "steps"
    return d.exists() and any(d.iterdir())


def test_non_session_folder_refused(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    from mps_core.store import StoreError

    with pytest.raises(StoreError, match="not empty and is not an MPS session"):
        SessionStore(tmp_path)


# -- how movies are stored -------------------------------------------------------------------

def _movie(frames=100, h=300, w=200, chunks=30, seed=0):
    rng = np.random.default_rng(seed)
    m = (rng.random((frames, h, w), dtype=np.float32) * 200).astype(np.float32)
    m[0, 0, :3] = [np.nan, np.inf, -np.inf]
    arr = xr.DataArray(da.from_array(m, chunks=(chunks, -1, -1)), dims=("frame", "height", "width"),
                       coords={"frame": np.arange(frames) * 2}, name="movie")
    return m, arr


def _put_and_load(tmp_path, value):
    store = SessionStore(tmp_path / "s")
    run = store.begin("x")
    jobs = run.put("movie", value)
    dask.compute(*jobs)
    return run.path_of("movie"), run.load("movie")


def test_round_mantissa_keeps_eleven_significant_bits():
    from mps_core.store import MOVIE_KEEPBITS, round_mantissa

    x = np.random.default_rng(1).normal(0, 1000, 10_000).astype(np.float32)
    r = round_mantissa(x)
    assert np.all(np.abs(r - x) <= np.abs(x) * 2.0 ** -(MOVIE_KEEPBITS + 1))
    assert np.array_equal(round_mantissa(r), r)  # rounding twice changes nothing
    low = r.view(np.uint32) & np.uint32((1 << (23 - MOVIE_KEEPBITS)) - 1)
    assert not low.any() and not np.array_equal(r, x)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    assert np.array_equal(round_mantissa(special), special, equal_nan=True)


def test_round_mantissa_rounds_half_to_even_like_the_integer_formula():
    """The compiled kernel against the rounding written out in numpy: every bit equal, over
    the whole float32 range, strided input, and NaN payloads that must not turn into
    infinities (a carry would)."""
    from mps_core.store import round_mantissa

    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**32, (6, 40, 30), dtype=np.uint64).astype(np.uint32)
    bits.flat[:3] = [0x7F800001, 0xFFFFFFFF, 0x7F800000]  # NaN, NaN, +inf
    x = bits.view(np.float32)[:, ::2, 1::3]
    for keep in (10, 2, 22):
        drop = 23 - keep
        b = np.ascontiguousarray(x).view(np.uint32)
        want = (b + np.uint32((1 << (drop - 1)) - 1) + ((b >> np.uint32(drop)) & np.uint32(1))) \
            & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
        want = np.where(np.isfinite(np.ascontiguousarray(x)), want, b)
        got = round_mantissa(x, keep)
        assert got.shape == x.shape and np.array_equal(got.view(np.uint32), want)
    with pytest.raises(ValueError, match="keepbits"):
        round_mantissa(x, 23)


def test_movies_are_sharded_in_tiles_and_read_back_in_whole_frame_chunks(tmp_path):
    import zarr

    from mps_core.store import MOVIE_TILE, movie_tiles

    m, arr = _movie()
    path, back = _put_and_load(tmp_path, arr)
    z = zarr.open_array(str(path / "movie"), mode="r")
    assert z.chunks == (30, 100, 100)  # one pixel's series reads one tile
    assert z.shards == (30, 300, 200)  # equal tiles: no padding stored
    assert movie_tiles((160, 608, 256, 90)) == [80, 122, 128, 90]
    assert all(t <= MOVIE_TILE for t in movie_tiles((1000, 129, 4096)))
    assert back.data.chunks[1:] == ((300,), (200,)) and back.data.chunks[0][0] == 30
    got = back.values
    finite = np.isfinite(m)
    assert np.array_equal(np.isfinite(got), finite)
    assert np.allclose(got[finite], m[finite], rtol=2.0 ** -11, atol=0)
    assert np.array_equal(back[:, 150, 100].values, got[:, 150, 100])


def test_uneven_frame_chunks_are_regularised_before_storing(tmp_path):
    m, arr = _movie(frames=95, h=40, w=50)
    uneven = arr.chunk({"frame": (10, 40, 5, 40)})
    _, back = _put_and_load(tmp_path, uneven)
    c = back.data.chunks[0]
    assert len(set(c[:-1])) == 1 and c[-1] <= c[0]
    finite = np.isfinite(m)
    assert np.allclose(back.values[finite], m[finite], rtol=2.0 ** -11, atol=0)


def test_integer_movies_are_stored_exactly(tmp_path):
    m = np.random.default_rng(2).integers(0, 256, (50, 70, 130), dtype=np.uint8)
    arr = xr.DataArray(da.from_array(m, chunks=(20, -1, -1)), dims=("frame", "height", "width"))
    _, back = _put_and_load(tmp_path, arr)
    assert back.dtype == np.uint8 and np.array_equal(back.values, m)


def test_manifest_records_the_steps_peak_memory(session):
    params, store = session
    Runner(STEPS, params, store).run(stop="c")
    for step_id in ("1", "a", "b", "c"):
        assert 50 < store.manifest(step_id)["peak_memory_mb"] < 100_000


def test_store_writes_arrays_with_uneven_chunks(tmp_path):
    """Selecting units of a chunked array leaves chunks like (5, 5, 5, 7), which zarr
    refuses; the store evens them out (4h failed so in a 20,000-frame run)."""
    store = SessionStore(tmp_path / "s")
    run = store.begin("x")
    values = np.arange(22 * 30, dtype=np.float32).reshape(22, 30)
    C = xr.DataArray(da.from_array(values, chunks=((5, 5, 5, 7), (30,))), dims=("unit_id", "frame"),
                     coords={"unit_id": np.arange(22),
                             "time_s": ("frame", da.from_array(np.arange(30.0), chunks=((7, 23),)))},
                     name="C")
    dask.compute(*run.put("C", C))
    back = run.load("C")
    assert np.array_equal(back.values, values)
    assert np.array_equal(back["time_s"].values, np.arange(30.0))
    run.abort()


def test_same_data_output_links_the_stored_files_and_outlives_the_original(tmp_path):
    """An output marked as holding a stored array's values is stored by hard-linking that
    array's chunk files (no rewrite); it reads back equal, with its own name and attributes,
    and still reads after the original's folder is deleted. Stored differently (other
    chunks), it is written normally."""
    from mps_core.store import same_data

    m, arr = _movie(frames=60, h=140, w=130, chunks=20)
    store = SessionStore(tmp_path / "s")
    first = store.begin("x")
    dask.compute(*first.put("movie", arr))
    first.commit({"run_id": first.run_id, "outputs": {"movie": "movie.zarr"}})
    source = store.load("x", "movie")

    def put(step, value):
        run = store.begin(step)
        dask.compute(*run.put("copy", value))
        run.commit({"run_id": run.run_id, "outputs": {"copy": "copy.zarr"}})
        return store.step_dir(step) / "copy.zarr" / "copy"

    out = xr.DataArray(source.data.map_blocks(lambda b: b + 0), dims=source.dims,
                       coords=source.coords, attrs={"y0": 0}, name="copy")
    stored = source.values
    linked = put("y", same_data(out, source))
    files = [f for f in linked.rglob("*") if f.is_file() and f.name != "zarr.json"]
    assert files and all(f.stat().st_nlink == 2 for f in files)
    shutil.rmtree(store.step_dir("x"))
    back = store.load("y", "copy")
    assert back.name == "copy" and back.attrs["y0"] == 0
    np.testing.assert_array_equal(back.values, stored)

    # stored with other frame chunks, the files do not fit: written normally
    first = store.begin("x")
    dask.compute(*first.put("movie", arr))
    first.commit({"run_id": first.run_id, "outputs": {"movie": "movie.zarr"}})
    source = store.load("x", "movie")
    other = xr.DataArray(source.data.rechunk({0: 15}), dims=source.dims, coords=source.coords,
                         name="copy")
    written = put("z", same_data(other, source))
    assert all(f.stat().st_nlink == 1 for f in written.rglob("*") if f.is_file())
    np.testing.assert_array_equal(store.load("z", "copy").values, source.values)
