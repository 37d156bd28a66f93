"""`mps batch`: many sessions, one broken; the summary; skip-if-done, --rerun, parameter changes.

Three tiny synthetic sessions (120 frames of 64x64) run only up to step 2b (`--to`), so the
whole file stays fast; one session's only video is garbage bytes named like a video.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest

from mps_core import batch
from mps_core.batch import SessionEntry, read_session_list, run_batch
from mps_core.cli import main
from mps_core.params import ParamSet
from mps_core.steps import STEPS
from mps_core.store import SessionStore
from mps_core.synth import simulate, write_miniscope

STOP = "2b"
CORRUPT = [17, 18, 90]  # frames of session A given a band of noise rows (removed by 2a)


def _recording(folder: Path, seed: int, corrupt=()) -> None:
    rec = simulate(n_frames=120, height=64, width=64, n_cells=4, cell_diameter=8.0,
                   max_shift=1.5, seed=seed)
    rng = np.random.default_rng(seed)
    for t in corrupt:  # radio loss: rows replaced by random values
        rec.movie[t, 20:28] = rng.integers(0, 256, size=(8, 64), dtype=np.uint8)
    write_miniscope(rec, folder, layout="v4", frames_per_file=60)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("batch")
    _recording(base / "m1" / "day 1", seed=1, corrupt=CORRUPT)  # a space in the path
    broken = base / "m1" / "day2"
    broken.mkdir(parents=True)
    (broken / "0.avi").write_bytes(np.random.default_rng(0).bytes(4096))  # not a video
    _recording(base / "m2" / "day1", seed=2)
    listing = base / "sessions.txt"
    listing.write_text(
        "# input                 output   animal  session\n"
        '"m1/day 1"              -        m1      d1\n'
        "\n"
        "m1/day2                 -        m1      d2   # the broken one\n"
        "m2/day1\n")
    return base, listing


def _cli(base: Path, listing: Path, *extra: str) -> int:
    return main(["batch", str(listing), "--output-root", str(base / "out"), "--summary",
                 str(base / "report"), "--to", STOP, "--set", "1.n_workers=2", "--quiet",
                 *extra])


def _summary(base: Path) -> dict[str, dict[str, str]]:
    with open(base / "report" / "batch_summary.csv", newline="") as f:
        return {row["session"]: row for row in csv.DictReader(f)}


def _run_ids(session: Path) -> dict[str, str]:
    store = SessionStore(session, create=False)
    return {s.id: (store.manifest(s.id) or {}).get("run_id") for s in STEPS[:3]}


# ----------------------------------------------------------------------------- the list file


def test_session_list_format(tmp_path):
    listing = tmp_path / "lists" / "s.txt"
    listing.parent.mkdir()
    listing.write_text(
        "\ufeff# comment line\n"
        "/abs/a\n"
        "   \n"
        "'rel/with space' /out/b  m3 s-1  # trailing comment\n"
        "rel/c\t\tm4\tday_2\n"                    # tabs: the empty field is OUTPUT_DIR
        "C:\\data\\m5\\day1\\Miniscope\\  \n"     # backslashes stay (relative on POSIX)
        "x/y#z\n")                                # '#' inside a path is not a comment
    e = read_session_list(listing)
    assert [x.line for x in e] == [2, 4, 5, 6, 7]
    assert e[0].input_dir == Path("/abs/a") and e[0].output_dir == Path("/abs/a_mps")
    assert e[1].input_dir == listing.parent / "rel" / "with space"
    assert (e[1].output_dir, e[1].animal_id, e[1].session_id) == (Path("/out/b"), "m3", "s-1")
    assert e[1].name == "m3_s-1"
    assert (e[2].output_dir, e[2].animal_id, e[2].session_id) == (
        listing.parent / "rel" / "c_mps", "m4", "day_2")
    assert "\\" in str(e[3].input_dir) and e[4].input_dir.name == "y#z"
    # an output root: labels from the end of the input paths, long enough to be unique
    two = tmp_path / "two.txt"
    two.write_text("/d/m1/day1/Miniscope\n/d/m2/day1/Miniscope\n/d/m2/day2/Miniscope\n")
    names = [x.output_dir for x in read_session_list(two, output_root=tmp_path / "root")]
    assert names == [tmp_path / "root" / "m1_day1_Miniscope",
                     tmp_path / "root" / "m2_day1_Miniscope",
                     tmp_path / "root" / "day2_Miniscope"]


@pytest.mark.parametrize("text, message", [
    ("a b c d e\n", r"line 1: 5 fields; expected INPUT_DIR \[OUTPUT_DIR\]"),
    ('"a b\n', "line 1: no closing quotation"),
    ("- out\n", "line 1: the first field must be the input folder"),
    ("# nothing\n\n", "no sessions"),
    ("/d/a /o/x\n/d/b /o/x\n", "line 1 and line 2 both write to /o/x"),
])
def test_bad_session_lists_name_the_line(tmp_path, text, message):
    listing = tmp_path / "s.txt"
    listing.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_session_list(listing)
    assert main(["batch", str(listing), "--summary", str(tmp_path)]) == 2
    assert not (tmp_path / "batch_summary.csv").exists()


def test_same_parameters_ignore_execution_keys_and_path_spelling(tmp_path):
    real = tmp_path / "out"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    ps = ParamSet(STEPS).with_values("1", {"input_dir": str(tmp_path), "output_dir": str(real)})
    stored = ps["1"].model_dump(mode="json")
    moved = dict(stored, output_dir=str(tmp_path / "link"), n_workers=7,
                 scheduler_address="tcp://h:1", memory_limit_gb=1.5)
    assert batch.same_params("1", moved, ps["1"])
    assert not batch.same_params("1", dict(stored, session_id="other"), ps["1"])
    assert not batch.same_params("2b", dict(ps["2b"].model_dump(mode="json"), median_ksize=3),
                                 ps["2b"])


def test_bad_stop_step_and_parallel_are_usage_errors(data, capsys):
    base, listing = data
    assert main(["batch", str(listing), "--to", "9z", "--summary", str(base / "x")]) == 2
    assert "stop step '9z' is unknown" in capsys.readouterr().err
    assert main(["batch", str(listing), "--parallel", "0"]) == 2


# ----------------------------------------------------------------------------- the batch


def test_batch_broken_session_skip_rerun_and_changed_parameters(data, capsys):
    base, listing = data
    out = base / "out"
    ok = {"m1_d1": out / "m1_d1", "day1": out / "day1"}

    # 1. the broken session fails, the others complete, the summary says which and why
    assert _cli(base, listing) == 1
    printed = capsys.readouterr().out
    rows = _summary(base)
    assert list(rows) == ["m1_d1", "m1_d2", "day1"]
    for name, folder in ok.items():
        r = rows[name]
        assert r["status"] == "done" and r["output"] == str(folder), r
        assert float(r["duration_s"]) > 0 and r["failed_step"] == "" and r["cause"] == ""
        assert r["units_found"] == ""  # 8c did not run
        assert SessionStore(folder, create=False).statuses(
            [s.id for s in STEPS[:4]]) == {"1": "done", "2a": "done", "2b": "done", "2c": "not run"}
        assert Path(r["log"]).is_file()
    assert rows["m1_d1"]["frames_removed"] == str(len(CORRUPT))
    assert rows["day1"]["frames_removed"] == "0"
    bad = rows["m1_d2"]
    assert bad["status"] == "failed" and bad["failed_step"] == "2a"
    assert "no readable video" in bad["cause"] and "\n" not in bad["cause"]
    assert bad["log"] == str(out / "m1_d2" / "session.log")
    assert "step 2a failed: no readable video" in Path(bad["log"]).read_text()
    assert "2 done, 1 failed" in printed and "m1_d2: log " in printed
    assert "failed" in printed.splitlines()[3] and "2a" in printed.splitlines()[3]
    # the ids of the list reached step 1 of each session
    cfg = SessionStore(ok["m1_d1"], create=False).load("1", "config")
    assert (cfg["animal_id"], cfg["session_id"]) == ("m1", "d1")
    before = {name: _run_ids(folder) for name, folder in ok.items()}

    # 2. the same batch again: done sessions are skipped, untouched; the broken one re-tried
    assert _cli(base, listing) == 1
    rows = _summary(base)
    assert [rows[n]["status"] for n in rows] == ["skipped", "failed", "skipped"]
    assert rows["m1_d1"]["frames_removed"] == str(len(CORRUPT))  # still reported
    assert {name: _run_ids(folder) for name, folder in ok.items()} == before

    # 3. --rerun runs them again from step 1
    assert _cli(base, listing, "--rerun") == 1
    assert [r["status"] for r in _summary(base).values()] == ["done", "failed", "done"]
    after = {name: _run_ids(folder) for name, folder in ok.items()}
    for name in ok:
        assert all(after[name][s] != before[name][s] for s in ("1", "2a", "2b"))

    # 4. a changed parameter: resumed from the step it belongs to, earlier results kept
    assert _cli(base, listing, "--set", "2b.median_ksize=3") == 1
    assert [r["status"] for r in _summary(base).values()] == ["done", "failed", "done"]
    changed = {name: _run_ids(folder) for name, folder in ok.items()}
    for name, folder in ok.items():
        assert changed[name]["2a"] == after[name]["2a"]
        assert changed[name]["2b"] != after[name]["2b"]
        assert SessionStore(folder, create=False).manifest("2b")["params"]["median_ksize"] == 3
    # ...and a changed execution setting alone is not a change of results
    assert _cli(base, listing, "--set", "2b.median_ksize=3", "--set", "1.memory_limit_gb=2") == 1
    assert [r["status"] for r in _summary(base).values()] == ["skipped", "failed", "skipped"]


def test_library_api_events_and_outcomes(data, tmp_path):
    base, _ = data
    entries = [SessionEntry(base / "m2" / "day1", tmp_path / "good"),
               SessionEntry(base / "m1" / "day2", tmp_path / "bad"),
               SessionEntry(tmp_path / "missing", tmp_path / "none")]
    params = ParamSet(STEPS).with_values("1", {"n_workers": 2})
    events = []
    out = run_batch(entries, params, on_event=events.append, stop="2a",
                    summary=tmp_path / "s.csv")
    assert [o.status for o in out] == ["done", "failed", "failed"]
    assert out[0].first_step == "1" and out[0].steps_run == ["1", "2a"]
    assert out[1].failed_step == "2a" and out[1].log.endswith("session.log")
    assert out[2].failed_step == "1" and "does not exist" in out[2].cause and out[2].log == ""
    kinds = [(e.index, e.kind) for e in events if e.kind != "progress"]
    assert kinds[0] == (0, "started") and kinds[-1] == (2, "failed")
    assert (0, "done") in kinds and (1, "failed") in kinds
    progress = [e.fraction for e in events if e.index == 0 and e.kind == "progress"]
    assert progress == sorted(progress) and 0 < progress[-1] <= 1
    assert {e.step_id for e in events if e.kind == "step"} == {"1", "2a"}
    assert [r["status"] for r in batch.read_summary(tmp_path / "s.csv")] == [
        "done", "failed", "failed"]
    again = run_batch(entries[:1], params, stop="2a", on_event=events.append)
    assert again[0].status == "skipped" and events[-1].kind == "skipped"


def test_cancel_stops_the_running_session_and_the_rest(data, tmp_path):
    base, _ = data
    entries = [SessionEntry(base / "m2" / "day1", tmp_path / "a"),
               SessionEntry(base / "m1" / "day 1", tmp_path / "b")]
    cancel = threading.Event()

    def on_event(ev):  # the user presses Cancel while session 0 runs step 2a
        if ev.kind == "step" and ev.step_id == "2a" and ev.message.startswith("started"):
            cancel.set()

    out = run_batch(entries, ParamSet(STEPS), on_event=on_event, cancel=cancel, stop="2b")
    assert [o.status for o in out] == ["cancelled", "cancelled"]
    assert out[0].failed_step == "2a" and out[0].steps_run == ["1"]
    store = SessionStore(tmp_path / "a", create=False)
    assert store.manifest("1") and store.manifest("2a") is None
    assert not (tmp_path / "b").exists()


def test_a_crash_outside_the_steps_is_recorded_and_the_batch_goes_on(data, tmp_path,
                                                                       monkeypatch):
    from mps_core import runner

    base, _ = data
    calls = []

    def crash(self, start=None, stop=None, cancel=None):  # e.g. the cluster went away
        calls.append(self.store.root)
        raise OSError("connection to the scheduler lost")

    monkeypatch.setattr(runner.Runner, "run", crash)
    entries = [SessionEntry(base / "m2" / "day1", tmp_path / "a"),
               SessionEntry(base / "m1" / "day 1", tmp_path / "b")]
    out = run_batch(entries, ParamSet(STEPS), stop="2a")
    assert len(calls) == 2 and [o.status for o in out] == ["failed", "failed"]
    assert out[0].cause == "OSError: connection to the scheduler lost"
    assert "Traceback" in (tmp_path / "a" / "session.log").read_text()


def test_parallel_sessions_on_a_cluster_keep_their_own_logs(data, tmp_path):
    distributed = pytest.importorskip("distributed")
    import dask

    base, _ = data
    before = dask.config.get("scheduler", None)
    entries = [SessionEntry(base / "m2" / "day1", tmp_path / "a"),
               SessionEntry(base / "m1" / "day 1", tmp_path / "b")]
    # worker threads in this process (quick to start); tcp: step 1 checks a tcp address
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  protocol="tcp", dashboard_address=":0") as cluster:
        params = ParamSet(STEPS).with_values("1", {"scheduler_address":
                                                   cluster.scheduler_address})
        threads = set()
        out = run_batch(entries, params, parallel=2, stop="2a",
                        on_event=lambda ev: threads.add(threading.get_ident()))
    assert [o.status for o in out] == ["done", "done"], [o.cause for o in out]
    assert len(threads) == 2  # the two sessions ran in two threads
    for o, other in ((out[0], out[1]), (out[1], out[0])):
        store = SessionStore(o.entry.output_dir, create=False)
        assert store.manifest("2a")["execution"]["scheduler"] == cluster.scheduler_address
        text = Path(o.log).read_text()
        assert str(o.entry.output_dir) in text and str(other.entry.output_dir) not in text
    # the sessions' clients are closed and dask's default scheduler is as it was
    assert dask.config.get("scheduler", None) == before
