"""Notifications in the app: the settings dialog, tray messages, sending off the GUI thread.

* :class:`NotifyDialog` (Tools > Notifications...) edits ``notifications.json`` (see
  :mod:`mps_core.notify`): when to notify, the desktop message, the command and the e-mail.
  The SMTP password can be typed once and saved in the system keyring; it is never written
  to the JSON file. "Send test notification" shows what each channel did.
* :func:`send_in_background` shows the tray message (GUI thread) and hands the command and
  e-mail to a plain background thread: an SMTP server can take seconds to answer and the
  window must not freeze meanwhile.
* :class:`RunNotifier` watches the main window's runs and reports the end of a run of
  several steps (Run All, Run From, a step range, or an autorun chain), never a single step
  run by hand: the person who pressed Run is usually watching it.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QApplication, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox,
    QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
    QStyle, QSystemTrayIcon, QVBoxLayout,
)

from mps_core import notify as nt

log = logging.getLogger("mps")
TRAY_MS = 15_000
_tray: QSystemTrayIcon | None = None


# ----------------------------------------------------------------------------- tray


def tray_available() -> bool:
    return QSystemTrayIcon.isSystemTrayAvailable() and QSystemTrayIcon.supportsMessages()


def show_tray(title: str, text: str, ok: bool = True) -> nt.Outcome:
    """A system-tray message; without a tray (offscreen, some desktops) only a log line."""
    global _tray
    if not tray_available():
        log.info("no system tray here: desktop message not shown (%s)", title)
        return nt.Outcome("tray", False, "no system tray on this desktop: message not shown")
    app = QApplication.instance()
    if _tray is None:
        icon = app.windowIcon()
        if icon.isNull():
            icon = app.style().standardIcon(QStyle.StandardPixmap.SP_ComputerIcon)
        _tray = QSystemTrayIcon(icon, app)
        _tray.setToolTip("MPS")
    _tray.show()
    kind = QSystemTrayIcon.MessageIcon.Information if ok else QSystemTrayIcon.MessageIcon.Warning
    _tray.showMessage(title, text, kind, TRAY_MS)
    return nt.Outcome("tray", True, "desktop message shown")


# ----------------------------------------------------------------------------- sending


class _Relay(QObject):
    """Carries a background thread's outcomes back to the GUI thread (a queued signal to a
    slot of this object, which lives there). It stays a child of its parent: deleting it
    (deleteLater) after delivery crashed PySide6 6.11 once the worker thread had ended."""

    done = Signal(object)

    def __init__(self, callback: Callable[[list[nt.Outcome]], None] | None, parent):
        super().__init__(parent)
        self.callback = callback
        self.done.connect(self._deliver)

    @Slot(object)
    def _deliver(self, outcomes) -> None:
        if self.callback is not None:
            self.callback(outcomes)


def send_in_background(event: nt.Event, settings: nt.NotifySettings | None = None,
                       on_done: Callable[[list[nt.Outcome]], None] | None = None,
                       parent: QObject | None = None) -> threading.Thread | None:
    """Report `event`: tray now, command and e-mail in a daemon thread; never raises.

    on_done (GUI thread) receives every channel's outcome, the tray's first. Returns the
    thread, or None when nothing goes to the background."""
    if settings is None:
        try:
            settings = nt.load_settings()
        except ValueError as e:
            log.warning("notification not sent: %s", e)
            return None
    if event.kind != "test" and not settings.wants(event.status):
        return None
    first = [show_tray(event.subject, event.summary, event.status in ("done", "test"))] \
        if settings.tray else []
    if not settings.any_channel():
        if on_done:
            on_done(first)
        return None
    # a parent keeps the relay owned by the GUI thread (never freed from the worker)
    relay = _Relay((lambda outs: on_done(first + outs)) if on_done else None,
                   parent if parent is not None else QApplication.instance())

    def work() -> None:
        outcomes = nt.notify(event, settings)   # logs each outcome itself
        try:
            relay.done.emit(outcomes)
        except RuntimeError:   # the window (relay's parent) is gone: nothing to show
            pass

    thread = threading.Thread(target=work, name="mps-notify", daemon=True)
    thread.start()
    return thread


def notify_batch_end(outcomes, summary: Path | None = None,
                     parent: QObject | None = None) -> nt.Event | None:
    """Report a finished batch (its `SessionOutcome` list) in the background."""
    if not outcomes:
        return None
    event = nt.batch_event(outcomes, summary)
    send_in_background(event, parent=parent)
    return event


class RunNotifier(QObject):
    """Reports the end of the main window's multi-step runs (autorun chains included)."""

    sent = Signal(object)    # the Event, once handed over (tests wait for it)

    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self._continuing = False
        self._t0 = time.monotonic()
        self._n_steps = 0
        self._first = ""
        self._last = ""
        self._status, self._message = "done", ""

    def watch(self, thread, start: str, stop: str) -> None:
        """Called as each run starts; an autorun chain counts as one long run."""
        if not (self._continuing and self.window.autorun):
            self._t0, self._n_steps, self._first = time.monotonic(), 0, start
        self._continuing = False
        ids = [s.id for s in self.window.steps]
        self._n_steps += len(ids[ids.index(start): ids.index(stop) + 1])
        self._last = stop
        self._status, self._message = "done", ""
        thread.outcome.connect(self._on_outcome)
        thread.finished.connect(self._on_finished)   # after the window's own handler

    def _on_outcome(self, outcome: str, message: str) -> None:
        self._status, self._message = outcome, message

    def _on_finished(self) -> None:
        w = self.window
        if w.autorun and w._autorun_target is not None and not w._closing:
            self._continuing = True   # the chain goes on with the next step
            return
        if w._closing or self._n_steps < 2 or self._status not in nt.STATUSES \
                or w.session.store is None:
            return
        summary = (f"{self._n_steps} steps ({self._first}..{self._last}) {self._status}: "
                   f"{self._message}")
        event = nt.Event("run", Path(w.session.store.root), self._status, summary,
                         time.monotonic() - self._t0)
        send_in_background(event, parent=self)
        self.sent.emit(event)

    def open_dialog(self) -> "NotifyDialog":
        dlg = NotifyDialog(parent=self.window)
        dlg.show()
        self.window._notify_dialog = dlg
        return dlg


# ----------------------------------------------------------------------------- the dialog


class NotifyDialog(QDialog):
    """Edit and test the notification settings (saved to notifications.json)."""

    test_finished = Signal(object)   # list[Outcome] of the last test

    def __init__(self, path: Path | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Notifications")
        self.path = Path(path) if path is not None else nt.settings_path()
        self.last_outcomes: list[nt.Outcome] | None = None
        self._build()
        try:
            self.set_settings(nt.load_settings(self.path))
        except ValueError as e:
            self.set_settings(nt.NotifySettings())
            self._say(f"The saved settings could not be read, defaults shown: {e}", ok=False)

    # -- construction ------------------------------------------------------------------------
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        intro = QLabel("Be told when a run of several steps or a batch ends, e.g. overnight. "
                       "Single steps run by hand are not reported.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        lay.addWidget(self._when_box())
        lay.addWidget(self._command_box())
        lay.addWidget(self._email_box())
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.message)
        self.test_btn = QPushButton("Send test notification")
        self.test_btn.setToolTip("Send a test through every enabled channel with the values "
                                 "shown (saved or not) and show what each did.")
        self.test_btn.clicked.connect(self.send_test)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.addButton(self.test_btn, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.resize(560, 640)

    def _when_box(self) -> QGroupBox:
        box = QGroupBox("When and where")
        row = QHBoxLayout(box)
        self.on_done = QCheckBox("finished")
        self.on_failed = QCheckBox("failed")
        self.on_cancelled = QCheckBox("cancelled")
        self.tray = QCheckBox("Desktop message")
        self.tray.setToolTip("A message from the system tray (notification area)."
                             + ("" if tray_available() else
                                " This desktop has no system tray: nothing will be shown."))
        row.addWidget(QLabel("Notify when the work"))
        for w in (self.on_done, self.on_failed, self.on_cancelled):
            row.addWidget(w)
        row.addStretch(1)
        row.addWidget(self.tray)
        return box

    def _command_box(self) -> QGroupBox:
        box = QGroupBox("Run a command")
        form = QFormLayout(box)
        self.cmd_enabled = QCheckBox("Run this program at the end")
        self.cmd_program = QLineEdit()
        self.cmd_program.setPlaceholderText("a program or script, e.g. /home/me/bin/tell-me.sh")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse_program)
        prow = QHBoxLayout()
        prow.addWidget(self.cmd_program, 1)
        prow.addWidget(browse)
        self.cmd_args = QLineEdit()
        self.cmd_args.setPlaceholderText("optional, e.g. --channel lab")
        self.cmd_args.setToolTip("Written as on a command line (quotes for spaces). The "
                                 "session folder and the status (done, failed, cancelled) are "
                                 "added after them; the program also gets MPS_SESSION, "
                                 "MPS_STATUS and MPS_SUMMARY in its environment. No shell "
                                 "is used.")
        self.cmd_timeout = _seconds(60.0)
        form.addRow(self.cmd_enabled)
        form.addRow("Program", prow)
        form.addRow("Arguments", self.cmd_args)
        form.addRow("Time limit", self.cmd_timeout)
        return box

    def _email_box(self) -> QGroupBox:
        box = QGroupBox("E-mail")
        form = QFormLayout(box)
        self.mail_enabled = QCheckBox("Send an e-mail through this SMTP server")
        self.host = QLineEdit()
        self.host.setPlaceholderText("smtp.example.org")
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.security = QComboBox()
        for value, text in (("starttls", "STARTTLS (usually port 587)"),
                            ("ssl", "SSL/TLS (usually port 465)"),
                            ("none", "none (a lab server inside the network, port 25)")):
            self.security.addItem(text, value)
        self.user = QLineEdit()
        self.user.setPlaceholderText("login name; empty if the server needs none")
        self.sender = QLineEdit()
        self.sender.setPlaceholderText("From address (default: the user name)")
        self.recipients = QLineEdit()
        self.recipients.setPlaceholderText("me@example.org, colleague@example.org")
        self.password_env = QLineEdit()
        self.password_env.setToolTip("The environment variable holding the password, read "
                                     "when sending (checked before the keyring).")
        self.use_keyring = QCheckBox("Read the password from the system keyring")
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setPlaceholderText("type it once, then Save password in keyring")
        self.save_pw_btn = QPushButton("Save password in keyring")
        self.save_pw_btn.setToolTip("Stores the password in the system keyring (service "
                                    f"{nt.KEYRING_SERVICE}, under the user name). It is never "
                                    "written to the settings file.")
        self.save_pw_btn.clicked.connect(self.save_password)
        pw = QHBoxLayout()
        pw.addWidget(self.password, 1)
        pw.addWidget(self.save_pw_btn)
        self.mail_timeout = _seconds(30.0)
        form.addRow(self.mail_enabled)
        form.addRow("Server", self.host)
        form.addRow("Port", self.port)
        form.addRow("Security", self.security)
        form.addRow("User", self.user)
        form.addRow("From", self.sender)
        form.addRow("To", self.recipients)
        form.addRow("Password variable", self.password_env)
        form.addRow(self.use_keyring)
        form.addRow("Password", pw)
        form.addRow("Time limit", self.mail_timeout)
        return box

    # -- values ------------------------------------------------------------------------------
    def set_settings(self, s: nt.NotifySettings) -> None:
        self.on_done.setChecked(s.on_done)
        self.on_failed.setChecked(s.on_failed)
        self.on_cancelled.setChecked(s.on_cancelled)
        self.tray.setChecked(s.tray)
        c, e = s.command, s.email
        self.cmd_enabled.setChecked(c.enabled)
        self.cmd_program.setText(c.program)
        self.cmd_args.setText(shlex.join(c.args))
        self.cmd_timeout.setValue(c.timeout_s)
        self.mail_enabled.setChecked(e.enabled)
        self.host.setText(e.host)
        self.port.setValue(e.port)
        i = self.security.findData(e.security)
        self.security.setCurrentIndex(max(i, 0))
        self.user.setText(e.user)
        self.sender.setText(e.sender)
        self.recipients.setText(", ".join(e.recipients))
        self.password_env.setText(e.password_env)
        self.use_keyring.setChecked(e.use_keyring)
        self.mail_timeout.setValue(e.timeout_s)

    def settings(self) -> nt.NotifySettings:
        """The values shown (ValueError if the arguments cannot be split)."""
        try:
            args = shlex.split(self.cmd_args.text())
        except ValueError as e:
            raise ValueError(f"command arguments: {e} (close the quotes)") from None
        recipients = [r.strip() for r in self.recipients.text().replace(";", ",").split(",")
                      if r.strip()]
        return nt.NotifySettings(
            on_done=self.on_done.isChecked(), on_failed=self.on_failed.isChecked(),
            on_cancelled=self.on_cancelled.isChecked(), tray=self.tray.isChecked(),
            command=nt.CommandSettings(self.cmd_enabled.isChecked(),
                                       self.cmd_program.text().strip(), args,
                                       self.cmd_timeout.value()),
            email=nt.EmailSettings(
                enabled=self.mail_enabled.isChecked(), host=self.host.text().strip(),
                port=self.port.value(), security=self.security.currentData(),
                user=self.user.text().strip(), sender=self.sender.text().strip(),
                recipients=recipients, password_env=self.password_env.text().strip(),
                use_keyring=self.use_keyring.isChecked(), timeout_s=self.mail_timeout.value()))

    def _checked(self) -> nt.NotifySettings | None:
        """The values shown when valid; else None with the problems on show."""
        try:
            s = self.settings()
        except ValueError as e:
            self._say(str(e), ok=False)
            return None
        problems = nt.validate(s)
        if problems:
            self._say("Fix these first:\n" + "\n".join(problems), ok=False)
            return None
        return s

    # -- actions -----------------------------------------------------------------------------
    def save(self) -> bool:
        s = self._checked()
        if s is None:
            return False
        try:
            nt.save_settings(s, self.path)
        except OSError as e:
            self._say(f"Cannot write {self.path}: {e.strerror or e}", ok=False)
            return False
        log.info("notification settings saved to %s", self.path)
        self.accept()
        return True

    def save_password(self) -> None:
        text = self.password.text()
        if not text:
            self._say("Type the password first.", ok=False)
            return
        try:
            nt.store_password(self.user.text().strip(), text)
        except ValueError as e:
            self._say(f"Password not saved: {e}", ok=False)
            return
        self.password.clear()     # it lives in the keyring now, not in this window
        self.use_keyring.setChecked(True)
        self._say(f"Password saved in the system keyring ({nt.KEYRING_SERVICE}, user "
                  f"{self.user.text().strip()}).", ok=True)

    def send_test(self) -> None:
        s = self._checked()
        if s is None:
            return
        if not (s.tray or s.any_channel()):
            self._say("Nothing to test: every channel is off.", ok=False)
            return
        self.test_btn.setEnabled(False)
        self._say("Sending the test...", ok=True)
        event = nt.Event("test", nt.config_dir(), "test",
                         "This is a test notification from MPS: the settings work.")
        send_in_background(event, s, on_done=self._test_done, parent=self)

    def _test_done(self, outcomes: list[nt.Outcome]) -> None:
        self.last_outcomes = outcomes
        self.test_btn.setEnabled(True)
        self._say("\n".join(o.line() for o in outcomes), ok=all(o.ok for o in outcomes))
        self.test_finished.emit(outcomes)

    def _browse_program(self) -> None:
        path = QFileDialog.getOpenFileName(self, "Program to run at the end")[0]
        if path:
            self.cmd_program.setText(path)

    def _say(self, text: str, ok: bool) -> None:
        self.message.setStyleSheet("" if ok else "color: #b00020")
        self.message.setText(text)


def _seconds(value: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(1.0, 3600.0)
    box.setDecimals(0)
    box.setSuffix(" s")
    box.setValue(value)
    return box
