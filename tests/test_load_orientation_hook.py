"""Step 2a orientation (rotate / flips) and the user's per-frame post_process function.

A small synthetic recording carries one bright planted cell off-centre and one frame with a
band of corrupted camera rows; every rotation/flip must move the cell to where the
documented mapping says, keep frame QC working on the camera rows, and record the settings.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mps_core.params import ParamSet
from mps_core.runner import PlanError, Runner, StepFailed
from mps_core.steps import STEPS
from mps_core.steps.loading import orient_frames
from mps_core.store import SessionStore
from mps_core.synth import simulate, write_miniscope

H, W = 40, 56
CELL = (9, 40)       # planted cell centre (y, x): off-centre in both axes
CORRUPT = 13         # frame with a band of noisy camera rows

HOOKS = '''
import numpy as np
from pathlib import Path

NOT_CALLABLE = 3


def _count(name):
    # each call leaves a mark next to this file: the tests count how often a hook ran
    with open(Path(__file__).with_name("calls_" + name), "a") as f:
        f.write("x")


def stripes(frame):
    frame = frame.astype(np.float32)
    return frame - np.median(frame, axis=1, keepdims=True)


def crop(frame):
    return frame[2:-2, 2:-2]


def boom(frame):
    _count("boom")
    return 1 / 0


def flat(frame):
    _count("flat")
    return frame.ravel()


def words(frame):
    _count("words")
    return frame.astype(str)


def holes(frame):
    _count("holes")
    out = frame.astype(np.float64)
    out[0, 0] = np.nan
    return out
'''


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("orient")
    rec = simulate(n_frames=40, height=H, width=W, n_cells=3, cell_diameter=7.0, max_shift=1.0,
                   seed=1)
    y, x = CELL
    rec.movie[:, y - 1:y + 2, x - 1:x + 2] = 230  # far above the simulated cells (~110 max)
    rec.movie[:, y, x] = 255
    rng = np.random.default_rng(0)
    rec.movie[CORRUPT, 20:27] = rng.integers(0, 256, size=(7, W), dtype=np.uint8)
    write_miniscope(rec, tmp / "rec", layout="v4", frames_per_file=20)
    (tmp / "hooks").mkdir()
    (tmp / "hooks" / "hooks.py").write_text(HOOKS)
    return rec, tmp / "rec", tmp / "hooks" / "hooks.py"


def _run(tmp_path, rec_dir, stop="2a", scheduler="", **load):
    out = tmp_path / "session"
    ps = ParamSet(STEPS).with_values("1", {"input_dir": str(rec_dir), "output_dir": str(out),
                                           "n_workers": 2, "scheduler_address": scheduler})
    ps = ps.with_values("2a", load)
    store = SessionStore(out)
    Runner(STEPS, ps, store).run(stop=stop)
    return store


def _expected(rotate, fv, fh):
    """Where the planted cell must land, written out from the documented mapping:
    rotate clockwise first, then flip the rotated frame."""
    y, x = CELL
    h, w = H, W
    for _ in range(rotate // 90):  # clockwise 90: (y, x) of h x w -> (x, h-1-y) of w x h
        y, x, h, w = x, h - 1 - y, w, h
    if fv:
        y = h - 1 - y
    if fh:
        x = w - 1 - x
    return (y, x), (h, w)


ORIENTATIONS = [(0, False, False), (90, False, False), (180, False, False),
                (270, False, False), (0, True, False), (0, False, True), (90, False, True),
                (270, True, False)]


@pytest.mark.parametrize("rotate,fv,fh", ORIENTATIONS)
def test_orientation_moves_the_planted_cell(tmp_path, recording, rotate, fv, fh):
    rec, rec_dir, _ = recording
    store = _run(tmp_path, rec_dir, rotate=rotate, flip_vertical=fv, flip_horizontal=fh)
    raw = store.load("2a", "movie_raw")
    (ey, ex), shape = _expected(rotate, fv, fh)
    assert raw.dims == ("frame", "height", "width") and raw.shape[1:] == shape
    np.testing.assert_array_equal(raw.height.values, np.arange(shape[0]))
    np.testing.assert_array_equal(raw.width.values, np.arange(shape[1]))
    mean = raw.mean("frame").values
    assert np.unravel_index(np.argmax(mean), mean.shape) == (ey, ex)
    # every pixel, not only the cell: lossless video, so the frames are exact
    np.testing.assert_array_equal(raw.values, orient_frames(rec.movie, rotate, fv, fh))
    table = store.load("2a", "frame_index")
    for attrs in (table.attrs, raw.attrs):
        assert attrs["rotate"] == rotate
        assert attrs["flip_vertical"] is fv and attrs["flip_horizontal"] is fh
        assert attrs["post_process"] == "" and list(attrs["camera_shape"]) == [H, W]
    # frame QC scores the camera rows whatever the orientation
    assert table.frame.values[table["removed"].values > 0].tolist() == [CORRUPT]


def test_orient_frames_rejects_other_angles():
    with pytest.raises(ValueError, match="rotate must be 0, 90, 180 or 270"):
        orient_frames(np.zeros((2, 3, 4)), 45, False, False)


def test_stripe_filter_runs_after_the_rotation(tmp_path, recording):
    rec, rec_dir, hooks = recording
    spec = f"{hooks}:stripes"
    store = _run(tmp_path, rec_dir, rotate=90, post_process=spec)
    raw = store.load("2a", "movie_raw")
    assert raw.dtype == np.float32 and raw.shape[1:] == (W, H)
    turned = orient_frames(rec.movie, 90, False, False).astype(np.float32)
    expect = turned - np.median(turned, axis=2, keepdims=True)
    np.testing.assert_allclose(raw.values, expect, atol=1e-5)
    # every row of the stored frames has median zero: the filter acted on the rotated rows
    assert np.abs(np.median(raw.values, axis=2)).max() < 1e-5
    table = store.load("2a", "frame_index")
    assert table.attrs["post_process"] == spec and table.attrs["rotate"] == 90
    assert table.attrs["post_process_sha256"] == hashlib.sha256(hooks.read_bytes()).hexdigest()
    # QC still saw the camera frames (the stripe filter would flatten the noisy band's rows)
    assert table.frame.values[table["removed"].values > 0].tolist() == [CORRUPT]


def test_cropping_hook_gives_the_new_shape_downstream(tmp_path, recording):
    rec, rec_dir, hooks = recording
    store = _run(tmp_path, rec_dir, stop="2b", rotate=270, post_process=f"{hooks}:crop")
    raw = store.load("2a", "movie_raw")
    assert raw.shape[1:] == (W - 4, H - 4) and raw.dtype == np.uint8
    np.testing.assert_array_equal(raw.values,
                                  orient_frames(rec.movie, 270, False, False)[:, 2:-2, 2:-2])
    np.testing.assert_array_equal(raw.width.values, np.arange(H - 4))
    assert list(store.load("2a", "frame_index").attrs["camera_shape"]) == [H, W]
    filtered = store.load("2b", "movie_filtered")
    assert filtered.shape[1:] == (W - 4, H - 4)


def _spec(hooks: Path, name: str) -> str:
    return {"missing file": f"{hooks.with_name('nope.py')}:stripes",
            "missing function": f"{hooks}:nothing",
            "not callable": f"{hooks}:NOT_CALLABLE",
            "no module": "mps_no_such_module_xyz:stripes",
            "malformed": "just_a_name"}.get(name, f"{hooks}:{name}")


@pytest.mark.parametrize("name,message", [
    ("missing file", "nope.py not found"),
    ("missing function", "has no 'nothing'"),
    ("not callable", "'NOT_CALLABLE' is a int, not a function"),
    ("no module", "cannot import module 'mps_no_such_module_xyz'"),
    ("malformed", "expected 'package.module:function'"),
])
def test_unusable_hook_stops_the_run_before_anything_runs(tmp_path, recording, name, message):
    rec, rec_dir, hooks = recording
    spec = _spec(hooks, name)
    with pytest.raises(PlanError, match=message) as err:
        _run(tmp_path, rec_dir, post_process=spec)
    assert spec in str(err.value) and "step 2a" in str(err.value)
    store = SessionStore(tmp_path / "session")
    assert not store.has("1", "config") and not store.has("2a", "movie_raw")


@pytest.mark.parametrize("name,message", [
    ("boom", r"raised ZeroDivisionError: division by zero on the first frame"),
    ("flat", rf"returned shape \({H * W},\) for a frame of \({H}, {W}\)"),
    ("words", r"returned dtype <U\d+ for the first frame"),
    ("holes", r"returned 1 NaN/infinite values on the first frame"),
])
def test_bad_first_frame_fails_before_any_output(tmp_path, recording, name, message):
    rec, rec_dir, hooks = recording
    spec = _spec(hooks, name)
    with pytest.raises(StepFailed, match=message) as err:
        _run(tmp_path, rec_dir, post_process=spec)
    assert f"post_process '{spec}'" in str(err.value)
    store = SessionStore(tmp_path / "session")
    assert not store.has("2a", "movie_raw") and not store.step_dir("2a").exists()
    # called on the first frame only: the check came before the work
    calls = hooks.with_name(f"calls_{name}")
    assert calls.read_text() == "x"
    calls.unlink()


def test_hook_runs_on_a_cluster_and_says_when_a_worker_cannot_import_it(
        tmp_path, recording, monkeypatch):
    distributed = pytest.importorskip("distributed")
    rec, rec_dir, hooks = recording
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        # a file hook: the worker process loads it from the same path
        store = _run(tmp_path / "file", rec_dir, scheduler=address, rotate=180,
                     post_process=f"{hooks}:crop")
        raw = store.load("2a", "movie_raw").values
        np.testing.assert_array_equal(raw, orient_frames(rec.movie, 180, False, False)
                                      [:, 2:-2, 2:-2])
        # a module importable here (added to sys.path after the worker started) but not there
        mods = tmp_path / "mods"
        mods.mkdir()
        (mods / "mps_local_only_hook.py").write_text(HOOKS)
        monkeypatch.syspath_prepend(str(mods))
        with pytest.raises(StepFailed, match="importable .* on every worker") as err:
            _run(tmp_path / "module", rec_dir, scheduler=address,
                 post_process="mps_local_only_hook:crop")
        assert "post_process 'mps_local_only_hook:crop'" in str(err.value)
        assert "cannot import module 'mps_local_only_hook'" in str(err.value)
