"""The desktop application's main window, offscreen: pages, menus, runs, cancel, autorun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from mps_core.params import ParamSet  # noqa: E402
from mps_core.steps import STEPS  # noqa: E402

RUN_TIMEOUT_MS = 300_000
TINY = dict(n_frames=160, height=80, width=80, n_cells=6, cell_diameter=9.0, fps=20.0,
            max_shift=2.0, noise_sd=3.0, seed=5)


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    from mps_core.synth import simulate, write_miniscope

    folder = tmp_path_factory.mktemp("rec") / "recording"
    write_miniscope(simulate(**TINY), folder, layout="v4")
    return folder


def _params(recording: Path, output: Path) -> ParamSet:
    p = ParamSet(STEPS).with_values("1", {
        "animal_id": "m1", "session_id": "day1", "input_dir": str(recording),
        "output_dir": str(output), "cell_diameter_px": TINY["cell_diameter"], "n_workers": 1,
        "memory_limit_gb": 1.0})
    return p.with_values("3a", {"use_full_frame": True})


@pytest.fixture(scope="module")
def session_to_2c(recording, tmp_path_factory) -> Path:
    """A session folder with steps 1..2c done (made headless, copied by each test)."""
    from mps_core.runner import Runner
    from mps_core.store import SessionStore

    out = tmp_path_factory.mktemp("base") / "session"
    Runner(STEPS, _params(recording, out), SessionStore(out)).run(None, "2c")
    return out


@pytest.fixture
def session_copy(session_to_2c, tmp_path) -> Path:
    dst = tmp_path / "session"
    shutil.copytree(session_to_2c, dst)
    return dst


@pytest.fixture
def window(qtbot, tmp_path):
    from mps_gui.main_window import MainWindow
    from mps_gui.settings import Settings

    win = MainWindow(settings=Settings(tmp_path / "settings.ini"))
    errors: list[tuple[str, str]] = []
    win.show_error = lambda title, text: errors.append((title, text))
    win._confirm = lambda title, text: True
    win.errors = errors
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.running():
        win.cancel_run()
        qtbot.waitUntil(lambda: not win.running(), timeout=RUN_TIMEOUT_MS)
    win.preview.wait()


def wait_idle(qtbot, win) -> None:
    # the window drops its worker only after handling the worker's last queued signal
    qtbot.waitUntil(lambda: win.thread is None, timeout=RUN_TIMEOUT_MS)
    win.preview.wait()


# ------------------------------------------------------------------------------- pages
def test_every_page_opens_with_its_parameters(window):
    ids = []
    for s in STEPS:
        window.show_step(s.id)
        page = window.stack.currentWidget()
        ids.append(page.step.id)
        assert page.form.params() == s.params()
        assert window.step_list.currentItem() is window.step_list.items[s.id]
    assert ids == [s.id for s in STEPS]
    assert list(window.step_list.items) == [s.id for s in STEPS]


def test_bad_value_disables_run_with_the_reason(window):
    window.show_step("2b")
    page = window.pages["2b"]
    name = next(k for k, f in STEPS[2].params.model_fields.items() if f.annotation is float)
    page.form.set_value(name, "abc")
    assert not page.run_btn.isEnabled()
    assert name in page.reason.text()
    assert name in page.run_btn.toolTip()
    page.form.reset_to_defaults()
    assert page.form.error() is None
    # still blocked, but now because no session exists yet
    assert "session" in page.reason.text()


def test_without_a_session_only_step_1_can_run(window):
    assert window.session.why_not_runnable("2a") is not None
    window.show_step("1")
    assert "input" in (window.pages["1"].run_blocker() or "")   # no input folder yet


# ------------------------------------------------------------------------------- parameters
def test_save_and_load_parameters_through_the_menus(window, tmp_path, monkeypatch):
    path = tmp_path / "my-params.json"
    window.pages["2b"].form.set_value("denoise_method", "gaussian")
    window._ask_save_file = lambda *a: str(path)
    window.save_params_dialog()
    saved = json.loads(path.read_text())
    assert saved["steps"]["2b"]["denoise_method"] == "gaussian"
    window.pages["2b"].form.reset_to_defaults()
    assert window.session.params["2b"].denoise_method != "gaussian"
    window._ask_open_file = lambda *a: str(path)
    window.load_params_dialog()
    assert window.pages["2b"].form.params().denoise_method == "gaussian"
    assert window.session.params["2b"].denoise_method == "gaussian"
    assert window.errors == []


def test_loading_a_file_with_bad_entries_applies_the_rest_and_reports(window, tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"format": "mps-params", "version": 1, "steps": {
        "2b": {"denoise_method": "gaussian", "no_such_key": 1},
        "2c": {"max_shift": "far"},
        "9z": {}}}))
    problems = window.load_params_file(path)
    assert window.pages["2b"].form.params().denoise_method == "gaussian"
    assert len(problems) == 3
    assert any("no_such_key" in p for p in problems)
    assert any("max_shift" in p for p in problems)
    assert any("9z" in p for p in problems)
    assert window.errors and "kept their previous value" in window.errors[-1][1]


def test_not_a_parameter_file_changes_nothing(window, tmp_path):
    path = tmp_path / "junk.json"
    path.write_text("{not json")
    before = window.session.params.to_dict()
    window.load_params_file(path)
    assert window.session.params.to_dict() == before
    assert "not valid JSON" in window.errors[-1][1]


def test_save_parameters_as_default_is_used_by_new_windows(window, qtbot, tmp_path):
    from mps_gui.main_window import MainWindow

    window.pages["2c"].form.set_value("max_shift", 7.0)
    window.save_params_as_default()
    other = MainWindow(settings=window.settings)
    qtbot.addWidget(other)
    assert other.pages["2c"].form.params().max_shift == 7.0


# ------------------------------------------------------------------------------- sessions
def test_new_session_runs_step_1_then_run_all_completes(window, qtbot, recording, tmp_path):
    out = tmp_path / "new-session"
    window.start_session(_params(recording, out))
    wait_idle(qtbot, window)
    assert window.step_list.status("1") == "done"
    assert (out / "params.json").exists()
    window.run_all()
    wait_idle(qtbot, window)
    assert window.errors == []
    statuses = window.session.statuses()
    assert all(statuses[s.id] == "done" for s in STEPS if s.implemented), statuses
    assert all(window.step_list.status(s.id) == "done" for s in STEPS if s.implemented)
    # the results explorer opens by itself when the last step is done
    assert window._explorer is not None and window._explorer.isVisible()
    window._explorer.wait_ready()
    # every finished page reloads its plots from the store
    for sid in ("2c", "4e", "8b"):
        window.show_step(sid)
        window.preview.wait()
        qtbot.waitUntil(lambda: window.preview.choice.count() > 0, timeout=30_000)
        fig = window.preview.figure
        assert fig.panels and not fig.message_label.isVisible(), fig.message_label.text()
    assert str(out) in window.settings.recent_sessions()[0]


def test_open_session_shows_statuses_and_resumes_at_first_not_done(window, session_copy):
    assert window.open_session(session_copy)
    assert window.step_list.status("2c") == "done"
    assert window.step_list.status("2d") == "not run"
    assert window.current_step_id() == "2d"
    assert window.pages["2d"].run_btn.isEnabled()
    assert not window.pages["2e"].run_btn.isEnabled()       # needs 2d's result
    assert "2d" in window.pages["2e"].reason.text()


def test_load_previous_data_dialog_lists_steps(qtbot, session_copy):
    from mps_gui.dialogs import LoadPreviousDialog

    dlg = LoadPreviousDialog(STEPS, str(session_copy))
    qtbot.addWidget(dlg)
    assert dlg.table.rowCount() == len(STEPS)
    assert dlg.selected_step() == "2d"
    statuses = [dlg.table.item(r, 2).text() for r in range(dlg.table.rowCount())]
    assert statuses[:4] == ["done"] * 4
    assert dlg.table.item(0, 3).text()      # finished time shown
    folder, step = dlg.result_values()
    assert folder == session_copy and step == "2d"


def test_new_session_dialog_lists_files_in_natural_order(qtbot, tmp_path):
    from mps_gui.dialogs import NewSessionDialog

    rec = tmp_path / "rec"
    rec.mkdir()
    for n in (10, 2, 1):
        (rec / f"{n}.avi").write_bytes(b"")
    dlg = NewSessionDialog(ParamSet(STEPS))
    qtbot.addWidget(dlg)
    dlg.animal.setText("m1")
    dlg.session.setText("d1")
    dlg.input_dir.setText(str(rec))
    dlg.output_dir.setText(str(rec))            # inside the input: refused
    assert not dlg._check_first()
    assert "inside the input" in dlg.problem.text()
    dlg.output_dir.setText(str(tmp_path / "out"))
    assert dlg._check_first()
    assert dlg._refresh_files()
    assert [dlg.files.item(i).text() for i in range(dlg.files.count())] == \
        ["1.avi", "2.avi", "10.avi"]
    assert dlg.values()["1"]["animal_id"] == "m1"


# ------------------------------------------------------------------------------- cancel, close
def test_cancel_mid_step_keeps_the_previous_result(window, qtbot, session_copy):
    from PySide6.QtCore import Qt

    from mps_core.store import SessionStore

    window.open_session(session_copy)
    before = SessionStore(session_copy, create=False).manifest("2b")["run_id"]
    window.pages["2b"].form.set_value("denoise_method", "gaussian")
    window.show_step("2b")
    assert window.run_steps("2b", "2b")
    # cancel from inside the worker at the step's first progress report: truly mid-step
    window.thread.progress.connect(lambda *a: window.thread.cancel_event.set(),
                                   Qt.ConnectionType.DirectConnection)
    wait_idle(qtbot, window)
    store = SessionStore(session_copy, create=False)
    assert store.manifest("2b")["run_id"] == before
    assert store.status("2b") == "done"
    assert window.step_list.status("2b") == "done"
    assert "cancel" in window.progress_label.text().lower()
    assert not list((session_copy / "steps").glob(".2b.tmp-*"))
    assert window.errors == []


def test_cancel_button_stops_the_run(window, qtbot, session_copy):
    from mps_core.store import SessionStore

    window.open_session(session_copy)
    window.show_step("2d")
    page = window.pages["2d"]
    page.run_btn.click()
    assert window.running() and page.cancel_btn.isEnabled()
    page.cancel_btn.click()
    wait_idle(qtbot, window)
    assert SessionStore(session_copy, create=False).manifest("2d") is None
    assert window.step_list.status("2d") == "not run"
    assert page.run_btn.isEnabled() and not page.cancel_btn.isEnabled()


def test_closing_while_running_asks_then_cancels(window, qtbot, session_copy):
    asked = []
    window._confirm = lambda title, text: asked.append(text) or True
    window.open_session(session_copy)
    assert window.run_steps("2d", "2f")
    window.close()
    qtbot.waitUntil(lambda: not window.running(), timeout=RUN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    assert asked


def test_refusing_the_close_keeps_running(window, qtbot, session_copy):
    window._confirm = lambda title, text: False
    window.open_session(session_copy)
    assert window.run_steps("2d", "2e")
    window.close()
    assert window.isVisible()
    wait_idle(qtbot, window)


# ------------------------------------------------------------------------------- autorun
def test_autorun_runs_the_next_step(window, qtbot, session_copy):
    from mps_gui.settings import AutorunConfig

    window.settings.set_autorun(AutorunConfig(delay_s=0.0, stop_on_error=True, autosave=False))
    window.open_session(session_copy)
    window.set_autorun(True)
    assert window.act_autorun.isChecked()
    window.run_steps("2d", "2d")
    qtbot.waitUntil(lambda: window.step_list.status("2e") == "done", timeout=RUN_TIMEOUT_MS)
    window.set_autorun(False)
    wait_idle(qtbot, window)
    assert window.current_step_id() in ("2e", "2f")


def test_autorun_settings_persist(qtbot, tmp_path):
    from mps_gui.dialogs import AutorunDialog
    from mps_gui.settings import AutorunConfig, Settings

    s = Settings(tmp_path / "s.ini")
    s.set_autorun(AutorunConfig(2.5, False, True))
    s.sync()
    again = Settings(tmp_path / "s.ini")
    dlg = AutorunDialog(again.autorun())
    qtbot.addWidget(dlg)
    assert dlg.delay.value() == 2.5
    assert not dlg.stop_on_error.isChecked()
    assert dlg.config() == AutorunConfig(2.5, False, True)


def test_geometry_and_recent_sessions_persist(qtbot, tmp_path, session_copy):
    from mps_gui.main_window import MainWindow
    from mps_gui.settings import Settings

    ini = tmp_path / "g.ini"
    win = MainWindow(settings=Settings(ini))
    qtbot.addWidget(win)
    win.show()
    win.resize(700, 500)   # smaller than the offscreen screen, so no clamping
    size = (win.width(), win.height())
    win.open_session(session_copy)
    win.close()
    again = MainWindow(settings=Settings(ini))
    qtbot.addWidget(again)
    assert again.height() == size[1]   # (the width is clamped to the 800 px offscreen screen)
    assert again.settings.geometry() is not None
    assert again.settings.recent_sessions()[0] == str(session_copy)


# ------------------------------------------------------------------------------- help, leaks
def test_help_shows_the_user_guide(qtbot):
    from mps_gui.dialogs import HelpWindow, guide_index

    w = HelpWindow()
    qtbot.addWidget(w)
    assert guide_index() is not None
    assert len(w.browser.toPlainText()) > 100


def test_no_widgets_leak(qtbot, tmp_path):
    from PySide6.QtWidgets import QApplication

    from mps_gui.main_window import MainWindow
    from mps_gui.settings import Settings

    before = len(QApplication.topLevelWidgets())
    for _ in range(2):
        win = MainWindow(settings=Settings(tmp_path / "l.ini"))
        win.show()
        win.close()
        win.deleteLater()
        qtbot.wait(20)
    QApplication.sendPostedEvents(None, 0)
    qtbot.wait(20)
    assert len(QApplication.topLevelWidgets()) <= before


# ------------------------------------------------------------------------------- tools
def test_export_movie_from_the_tools_menu(window, qtbot, session_copy, tmp_path):
    import tifffile

    window.open_session(session_copy)
    dlg = window.open_export("movie")
    qtbot.addWidget(dlg)
    dlg.stage.setCurrentIndex(dlg.stage.findData("2b"))
    dlg.format.setCurrentText("tiff")
    dlg.frames.setText("0:20:2")
    dlg.target.setText(str(tmp_path / "out"))
    dlg.start()
    qtbot.waitUntil(lambda: dlg.ok is not None, timeout=120_000)
    assert dlg.ok, dlg.message.text()
    files = list((tmp_path / "out").glob("*.tif"))
    assert len(files) == 1 and tifffile.imread(files[0]).shape[0] == 10


def test_export_video_bad_frame_range_is_one_line(window, qtbot, session_copy, tmp_path):
    window.open_session(session_copy)
    dlg = window.open_export("video")
    qtbot.addWidget(dlg)
    dlg.frames.setText("ten:twenty")
    dlg.target.setText(str(tmp_path / "v.mp4"))
    dlg.start()
    qtbot.waitUntil(lambda: dlg.ok is not None, timeout=60_000)
    assert dlg.ok is False and "START:STOP:STEP" in dlg.message.text()
    assert not (tmp_path / "v.mp4").exists()


def test_step_help_opens_the_steps_page_of_the_guide(window, qtbot):
    window.show_step("2c")
    window.pages["2c"].help_btn.click()
    qtbot.addWidget(window._help)
    text = window._help.browser.toPlainText()
    assert "2c" in text and "max_shift" in text
