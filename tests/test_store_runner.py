"""Session store and runner on a small fake pipeline: atomic commits, staleness, cancel, resume."""

import json
import threading

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
