"""Notifications in the app: the settings dialog, its test button, and the window's hooks.

The SMTP server is a real aiosmtpd on 127.0.0.1; runs are tiny; where only the call
matters, `mps_core.notify.notify` is replaced by a recorder (it runs in a background thread,
so tests wait for it).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("aiosmtpd")

from aiosmtpd.controller import Controller  # noqa: E402

from mps_core import notify as nt  # noqa: E402
from mps_core.params import ParamSet  # noqa: E402
from mps_core.steps import STEPS  # noqa: E402

RUN_TIMEOUT_MS = 180_000


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd name)
        self.messages.append(envelope.content.decode("utf-8", "replace"))
        return "250 OK"


@pytest.fixture
def smtp():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    yield inbox, port
    ctl.stop()


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("MPS_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def recorder(monkeypatch):
    """Replaces the sending with a list of the events it was asked to send."""
    calls: list[nt.Event] = []
    monkeypatch.setattr(nt, "notify", lambda event, settings: calls.append(event) or [])
    # a channel must be on for anything to reach notify()
    nt.save_settings(nt.NotifySettings(command=nt.CommandSettings(True, sys.executable)))
    return calls


@pytest.fixture
def memory_keyring():
    import keyring
    from keyring.backend import KeyringBackend

    class Memory(KeyringBackend):
        priority = 1

        def __init__(self):
            super().__init__()
            self.store = {}

        def get_password(self, service, username):
            return self.store.get((service, username))

        def set_password(self, service, username, password):
            self.store[(service, username)] = password

        def delete_password(self, service, username):
            self.store.pop((service, username), None)

    previous = keyring.get_keyring()
    backend = Memory()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def _dialog(qtbot):
    from mps_gui.notify_dialog import NotifyDialog

    dlg = NotifyDialog()
    qtbot.addWidget(dlg)
    return dlg


# ----------------------------------------------------------------------------- the dialog


def test_dialog_round_trips_the_settings(qtbot, config_dir):
    saved = nt.NotifySettings(
        on_cancelled=False, tray=False,
        command=nt.CommandSettings(True, sys.executable, ["--tag", "a b"], 12.0),
        email=nt.EmailSettings(True, "smtp.lab.example.org", 465, "ssl", "lab",
                               "mps@lab.example.org", ["a@lab.example.org", "b@lab.example.org"],
                               "LAB_PW", True, 20.0))
    nt.save_settings(saved)
    dlg = _dialog(qtbot)
    assert dlg.settings() == saved
    assert dlg.cmd_args.text() == "--tag 'a b'"
    dlg.recipients.setText("a@lab.example.org; c@lab.example.org")
    dlg.port.setValue(587)
    dlg.security.setCurrentIndex(dlg.security.findData("starttls"))
    dlg.password.setText("typed-but-not-saved")
    assert dlg.save()
    again = nt.load_settings()
    assert again.email.recipients == ["a@lab.example.org", "c@lab.example.org"]
    assert (again.email.port, again.email.security) == (587, "starttls")
    assert again.command == saved.command
    assert "typed-but-not-saved" not in (config_dir / "notifications.json").read_text()


def test_dialog_refuses_bad_values_naming_the_field(qtbot, config_dir):
    dlg = _dialog(qtbot)
    dlg.mail_enabled.setChecked(True)
    dlg.host.setText("smtp.lab.example.org")
    dlg.recipients.setText("not-an-address")
    dlg.sender.setText("mps@lab.example.org")
    assert not dlg.save()
    assert "email.recipients" in dlg.message.text()
    dlg.cmd_enabled.setChecked(True)
    dlg.cmd_program.setText(str(config_dir / "nope"))
    dlg.cmd_args.setText('"unclosed')
    assert not dlg.save() and "command arguments" in dlg.message.text()
    assert not (config_dir / "notifications.json").exists()


def test_bad_settings_file_shows_defaults_and_says_why(qtbot, config_dir):
    config_dir.mkdir()
    (config_dir / "notifications.json").write_text(json.dumps({"email": {"prot": 1}}))
    dlg = _dialog(qtbot)
    assert dlg.settings() == nt.NotifySettings()
    assert "unknown key 'prot'" in dlg.message.text()


def test_password_goes_to_the_keyring_never_to_the_file(qtbot, config_dir, memory_keyring):
    dlg = _dialog(qtbot)
    dlg.user.setText("lab")
    dlg.password.setText("pa55")
    dlg.save_pw_btn.click()
    assert memory_keyring.store == {("mps-smtp", "lab"): "pa55"}
    assert dlg.password.text() == "" and dlg.use_keyring.isChecked()
    assert "saved in the system keyring" in dlg.message.text()
    dlg.mail_enabled.setChecked(True)
    dlg.host.setText("smtp.lab.example.org")
    dlg.recipients.setText("me@lab.example.org")
    dlg.sender.setText("mps@lab.example.org")
    assert dlg.save()
    text = (config_dir / "notifications.json").read_text()
    assert "pa55" not in text and json.loads(text)["email"]["use_keyring"] is True


def test_keyring_without_backend_is_a_message(qtbot):
    import keyring
    from keyring.backends.fail import Keyring as FailKeyring

    previous = keyring.get_keyring()
    keyring.set_keyring(FailKeyring())
    try:
        dlg = _dialog(qtbot)
        dlg.user.setText("lab")
        dlg.password.setText("pa55")
        dlg.save_password()
        assert "keyring is not available" in dlg.message.text()
        assert dlg.password.text() == "pa55"      # kept: nothing was saved
    finally:
        keyring.set_keyring(previous)


def test_test_button_reports_each_channel(qtbot, smtp, tmp_path):
    inbox, port = smtp
    dlg = _dialog(qtbot)
    dlg.tray.setChecked(True)
    dlg.mail_enabled.setChecked(True)
    dlg.host.setText("127.0.0.1")
    dlg.port.setValue(port)
    dlg.security.setCurrentIndex(dlg.security.findData("none"))
    dlg.sender.setText("mps@lab.example.org")
    dlg.recipients.setText("me@lab.example.org")
    dlg.cmd_enabled.setChecked(True)
    dlg.cmd_program.setText(sys.executable)
    dlg.cmd_args.setText("-c 'import sys; sys.exit(4)'")
    with qtbot.waitSignal(dlg.test_finished, timeout=30_000) as sig:
        dlg.test_btn.click()
        assert not dlg.test_btn.isEnabled()   # the GUI is free while it sends
    outcomes = sig.args[0]
    assert [o.channel for o in outcomes] == ["tray", "command", "email"]
    by = {o.channel: o for o in outcomes}
    assert by["email"].ok and not by["command"].ok and "exited with code 4" in by["command"].message
    assert by["tray"].ok or "no system tray" in by["tray"].message   # offscreen: no tray
    assert "email: sent" in dlg.message.text() and "command: FAILED" in dlg.message.text()
    assert len(inbox.messages) == 1 and "MPS: test notification" in inbox.messages[0]
    assert dlg.test_btn.isEnabled()
    assert not nt.settings_path().exists()   # testing does not save


# ----------------------------------------------------------------------------- the window


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    from mps_core.synth import simulate, write_miniscope

    folder = tmp_path_factory.mktemp("rec") / "recording"
    write_miniscope(simulate(n_frames=60, height=48, width=48, n_cells=3, seed=4), folder,
                    layout="v4")
    return folder


@pytest.fixture
def window(qtbot, tmp_path):
    from mps_gui.main_window import MainWindow
    from mps_gui.settings import Settings

    win = MainWindow(settings=Settings(tmp_path / "settings.ini"))
    win.errors = []
    win.show_error = lambda title, text: win.errors.append((title, text))
    win._confirm = lambda title, text: True
    qtbot.addWidget(win)
    yield win
    if win.running():
        win.cancel_run()
        qtbot.waitUntil(lambda: not win.running(), timeout=RUN_TIMEOUT_MS)
    win.preview.wait()


def _wait_idle(qtbot, win) -> None:
    qtbot.waitUntil(lambda: win.thread is None, timeout=RUN_TIMEOUT_MS)
    win.preview.wait()


def _start(qtbot, win, recording, out) -> None:
    params = ParamSet(STEPS).with_values("1", {
        "animal_id": "m1", "session_id": "day1", "input_dir": str(recording),
        "output_dir": str(out), "n_workers": 1, "memory_limit_gb": 1.0})
    win.start_session(params)      # runs step 1 alone
    _wait_idle(qtbot, win)


def test_window_notifies_after_a_multi_step_run_only(qtbot, window, recording, tmp_path,
                                                     recorder):
    out = tmp_path / "session"
    _start(qtbot, window, recording, out)
    assert window.run_steps("2a", "2a")           # one step by hand: not reported
    _wait_idle(qtbot, window)
    with qtbot.waitSignal(window.notifier.sent, timeout=RUN_TIMEOUT_MS):
        assert window.run_steps("2a", "2b")
    qtbot.waitUntil(lambda: len(recorder) == 1, timeout=10_000)
    ev = recorder[0]
    assert (ev.kind, ev.status, ev.folder) == ("run", "done", out)
    assert "2 steps (2a..2b) done" in ev.summary
    _wait_idle(qtbot, window)
    assert window.errors == [] and len(recorder) == 1


def test_autorun_chain_is_reported_once_at_its_end(qtbot, window, recording, tmp_path,
                                                   recorder):
    from mps_gui.settings import AutorunConfig

    window.settings.set_autorun(AutorunConfig(delay_s=0.0, stop_on_error=True, autosave=False))
    _start(qtbot, window, recording, tmp_path / "session")
    window.set_autorun(True)
    window.show_step("2a")
    assert window.run_steps("2a", "2a")
    # the chain's second step is running: turning autorun off ends the chain after it
    qtbot.waitUntil(lambda: window.notifier._n_steps >= 2 and window.running(),
                    timeout=RUN_TIMEOUT_MS)
    window.set_autorun(False)
    _wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: len(recorder) == 1, timeout=10_000)
    assert recorder[0].status == "done" and recorder[0].summary.startswith("2 steps (2a..2b)")


def test_tools_menu_opens_the_dialog(qtbot, window):
    act = next(a for m in window.menuBar().actions() if m.text() == "&Tools"
               for a in m.menu().actions() if a.text() == "Notifications...")
    act.trigger()
    dlg = window._notify_dialog
    assert dlg.isVisible() and dlg.windowTitle() == "Notifications"
    dlg.reject()


def test_batch_window_notifies_at_the_end(qtbot, tmp_path, recorder):
    from mps_gui.batch_window import BatchWindow

    params = ParamSet(STEPS).with_values("1", {"n_workers": 1, "memory_limit_gb": 1.0})
    win = BatchWindow(params, STEPS)
    qtbot.addWidget(win)
    win.add_session(str(tmp_path / "missing"), str(tmp_path / "out" / "x"), "m1", "d1")
    win.stop.setCurrentIndex(win.stop.findData("2a"))
    win.start()
    qtbot.waitUntil(lambda: win.outcomes is not None, timeout=RUN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: len(recorder) == 1, timeout=10_000)
    ev = recorder[0]
    assert (ev.kind, ev.status, ev.folder) == ("batch", "failed", tmp_path / "out")
    assert "1 failed" in ev.summary
    win.thread.wait()
