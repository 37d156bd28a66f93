"""The `mps` command: listing, one-line errors, exit codes."""

import subprocess
import sys

from mps_core.cli import main
from mps_core.steps import STEPS


def run(*args):
    return subprocess.run([sys.executable, "-m", "mps_core.cli", *args],
                          capture_output=True, text=True)


def test_steps_lists_every_step_and_what_is_implemented(capsys):
    assert main(["steps"]) == 0
    out = capsys.readouterr().out
    for s in STEPS:
        assert f"{s.id:<4}{s.title}" in out
    assert "2a  File loading" in out
    for s in STEPS:
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{s.id} "))
        assert line.rstrip().endswith("implemented" if s.implemented else "not implemented yet")


def test_missing_input_folder_is_one_line(tmp_path):
    r = run("run", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_without_inputs_refused_before_running(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    r = run("run", "--input", str(inp), "--output", str(tmp_path / "out"), "--from", "2c")
    assert r.returncode == 2 and "needs 'movie_filtered' from step 2b" in r.stderr
    assert not (tmp_path / "out" / "steps" / "2c").exists()


def test_failed_step_names_log_and_exits_1(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "notes.txt").write_text("no videos here")
    r = run("run", "--input", str(inp), "--output", str(tmp_path / "out"), "--to", "2a", "--quiet")
    assert r.returncode == 1
    assert "step 2a (File loading) failed" in r.stderr and "log:" in r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "out" / "steps" / "2a.failed.json").exists()


def test_bad_override_is_reported(tmp_path):
    r = run("run", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
            "--set", "2b.median_ksize=4")
    assert r.returncode == 2 and "median_ksize" in r.stderr and "odd" in r.stderr


def test_piped_progress_shows_every_pass_of_a_multi_pass_step():
    """Written to a file, progress prints every 10 % and again when a new pass starts."""
    import io

    from mps_core.cli import ProgressBar

    out = io.StringIO()  # not a terminal
    bar = ProgressBar(stream=out)
    bar.event("3b", "started", "NNDSVD")
    for p in (1, 2):
        for f in (0.05, 0.5, 1.0):
            bar.update("3b", f, f"pass {p}/2")
    lines = out.getvalue().splitlines()
    assert sum("pass 2/2" in line for line in lines) >= 2  # pass 2 starts and ends visibly
    assert not any("pass 1/2" in line and " 5%" in line for line in lines)  # < 10 %: quiet
