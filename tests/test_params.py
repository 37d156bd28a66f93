"""The parameter file: exact round trip, and one clear error per kind of bad file."""

import json
import subprocess
import sys

import pytest

from mps_core.cli import main
from mps_core.params import ParamError, ParamSet
from mps_core.steps import STEPS


def test_defaults_round_trip_exactly(tmp_path, capsys):
    assert main(["params", "--defaults"]) == 0
    text = capsys.readouterr().out
    f = tmp_path / "p.json"
    f.write_text(text)
    loaded = ParamSet.load(f, STEPS)
    assert loaded.dumps() == text
    # every step has a section; booleans stay booleans and zeros stay zeros
    data = json.loads(text)
    assert list(data["steps"]) == [s.id for s in STEPS]
    assert data["steps"]["1"]["n_workers"] == 0 and isinstance(data["steps"]["1"]["n_workers"], int)


def test_changed_values_round_trip(tmp_path):
    ps = ParamSet(STEPS).with_values("1", {"video_percent": 12.5, "n_workers": 0,
                                          "animal_id": "m7"})
    f = tmp_path / "a.json"
    ps.save(f)
    again = ParamSet.load(f, STEPS)
    assert again.to_dict() == ps.to_dict()
    f2 = tmp_path / "b.json"
    again.save(f2)
    assert f2.read_text() == f.read_text()


def test_partial_file_takes_defaults(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"format": "mps-params", "version": 1,
                             "steps": {"1": {"video_percent": 50}}}))
    ps = ParamSet.load(f, STEPS)
    assert ps["1"].video_percent == 50.0
    assert ps["1"].memory_limit_gb == ParamSet(STEPS)["1"].memory_limit_gb


GOOD = {"format": "mps-params", "version": 1, "steps": {}}


def _with(**changes):
    d = json.loads(json.dumps(GOOD))
    d.update(changes)
    return d


BAD_FILES = [
    # (what, file text, words the one-line error must contain)
    ("not JSON", "{not json", ["not valid JSON", "line 1"]),
    ("not an object", "[1, 2]", ["JSON object"]),
    ("wrong format tag", json.dumps(_with(format="other")), ["'format'", "mps-params"]),
    ("unsupported version", json.dumps(_with(version=99)), ["version 99", "reads version 1"]),
    ("unknown top-level key", json.dumps(_with(extra=1)), ["unknown top-level key 'extra'"]),
    ("unknown step", json.dumps(_with(steps={"9z": {}})), ["unknown step '9z'", "2a"]),
    ("section not an object", json.dumps(_with(steps={"1": 5})), ["step 1", "object"]),
    ("unknown key", json.dumps(_with(steps={"1": {"animal": "x"}})),
     ["step 1", "unknown key 'animal'", "animal_id"]),
    ("wrong type", json.dumps(_with(steps={"1": {"n_workers": "four"}})),
     ["step 1", "'n_workers'", '"four"', "an integer"]),
    ("bool for number", json.dumps(_with(steps={"1": {"video_percent": True}})),
     ["'video_percent'", "true", "a number"]),
    ("out of range", json.dumps(_with(steps={"1": {"video_percent": 150}})),
     ["'video_percent'", "150", "<= 100"]),
    ("steps not an object", json.dumps(_with(steps=[1])), ["'steps' must be an object"]),
]


@pytest.mark.parametrize("what,text,words", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_parameter_file_gives_one_clear_line(tmp_path, what, text, words):
    f = tmp_path / "bad.json"
    f.write_text(text)
    with pytest.raises(ParamError) as e:
        ParamSet.load(f, STEPS)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(f) in msg
    for w in words:
        assert w in msg, (what, msg)


def test_choice_error_lists_allowed_values():
    ps = ParamSet(STEPS)
    step = next(s for s in STEPS if s.id == "2b")
    field = next(k for k, f in step.params.model_fields.items()
                 if "Literal" in str(f.annotation))
    with pytest.raises(ParamError) as e:
        ps.with_values("2b", {field: "nonsense"})
    assert "one of" in str(e.value) and "'nonsense'" not in str(e.value).split("expected")[1]


def test_missing_file_error(tmp_path):
    with pytest.raises(ParamError, match="not found"):
        ParamSet.load(tmp_path / "nope.json", STEPS)


def test_overrides_are_validated():
    ps = ParamSet(STEPS).with_overrides(["1.video_percent=10", "1.animal_id=m3"])
    assert ps["1"].video_percent == 10.0 and ps["1"].animal_id == "m3"
    with pytest.raises(ParamError, match="expected STEP.key=value"):
        ParamSet(STEPS).with_overrides(["video_percent=10"])
    with pytest.raises(ParamError, match="<= 100"):
        ParamSet(STEPS).with_overrides(["1.video_percent=1000"])


def test_bad_file_runs_nothing(tmp_path):
    """`mps run` with a bad parameter file exits non-zero with one line and writes nothing."""
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(_with(steps={"2a": {"no_such_key": 1}})))
    inp = tmp_path / "in"
    inp.mkdir()
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "mps_core.cli", "run", "--params", str(f),
                        "--input", str(inp), "--output", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "unknown key 'no_such_key'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_sample_parameter_files_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "params"
    names = sorted(p.name for p in root.glob("*.json"))
    assert {"defaults.json", "demo.json", "bench.json"} <= set(names)
    for p in root.glob("*.json"):
        ParamSet.load(p, STEPS)
    assert (root / "defaults.json").read_text() == ParamSet(STEPS).dumps()


def test_lenient_load_applies_valid_entries_and_reports_each_bad_one(tmp_path):
    import json

    from mps_core.params import ParamError, ParamSet
    from mps_core.steps import STEPS

    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": "mps-params", "version": 1, "steps": {
        "2b": {"denoise_method": "gaussian", "bogus": 1},
        "2c": {"max_shift": "far"},
        "zz": {}, "2d": 7}}))
    base = ParamSet(STEPS).with_values("2c", {"max_shift": 9.0})
    params, problems = ParamSet.load_lenient(path, STEPS, base=base)
    assert params["2b"].denoise_method == "gaussian"
    assert params["2c"].max_shift == STEPS[3].params().max_shift  # the file's section replaces
    assert len(problems) == 4
    assert all(str(path) in p for p in problems)
    assert any("'bogus'" in p for p in problems) and any("'zz'" in p for p in problems)
    path.write_text('{"format": "other"}')
    try:
        ParamSet.load_lenient(path, STEPS)
    except ParamError as e:
        assert "format" in str(e)
    else:
        raise AssertionError("a file that is not a parameter file must be refused")
