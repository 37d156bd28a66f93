"""The main window: step list, step pages, viewers, log and progress, menus.

Everything runs through the same Runner as the ``mps`` command, in a worker thread, so a
session tuned here and one replayed from its parameter file are the same run. The window
keeps the parameters in one ParamSet (the open :class:`~mps_gui.session.Session`); pages edit
it, the runner reads a snapshot of it, and it is saved into the session folder at every run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QPlainTextEdit,
    QProgressBar, QPushButton, QSplitter, QStackedWidget, QVBoxLayout, QWidget,
)

from mps_core.params import ParamError, ParamSet
from mps_core.registry import StepError
from mps_core.store import StoreError

from .dialogs import (
    AutorunDialog, HelpWindow, LoadPreviousDialog, NewSessionDialog, about_text, step_help_page,
)
from .gui_gc import GuiThreadCollector
from .notify_dialog import RunNotifier
from .preview_panel import PreviewPanel
from .session import Session
from .settings import Settings
from .step_list import StepList
from .step_page import StepPage
from .worker import QtLogHandler, RunThread

log = logging.getLogger("mps")
_DASHBOARD = re.compile(r"dask dashboard: (\S+)")


class MainWindow(QMainWindow):
    def __init__(self, session: Session | None = None, settings: Settings | None = None):
        super().__init__()
        self.settings = settings or Settings()
        self.session = session or self._fresh_session()
        self.steps = self.session.steps
        self.thread: RunThread | None = None
        self.autorun = False
        self._autorun_timer = QTimer(self)
        self._autorun_timer.setSingleShot(True)
        self._autorun_timer.timeout.connect(self._autorun_next)
        self._autorun_target: str | None = None
        self._run_range: tuple[str, str] | None = None
        self._pending_outcome = "done"
        self._closing = False
        self.last_error: str | None = None   # the last failure shown (tests read it)

        self._collector = GuiThreadCollector(self)
        self.notifier = RunNotifier(self)   # reports the end of multi-step runs
        self.setWindowTitle("MPS")
        self._build_central()
        self._build_docks()
        self._build_menus()
        self._attach_log()
        self._apply_session_to_pages()
        self._restore_geometry()
        self.step_list.select(self.steps[0].id)

    # ------------------------------------------------------------------------ construction
    def _fresh_session(self) -> Session:
        path = self.settings.default_params_path
        if path.exists():
            try:
                return Session(ParamSet.load(path, Session().steps))
            except ParamError as e:
                log.warning("default parameters not used: %s", e)
        return Session()

    def _build_central(self) -> None:
        self.step_list = StepList(self.steps)
        self.pages: dict[str, StepPage] = {}
        self.stack = QStackedWidget()
        for s in self.steps:
            page = StepPage(s)
            page.run_requested.connect(lambda sid: self.run_steps(sid, sid))
            page.cancel_requested.connect(self.cancel_run)
            page.next_requested.connect(self.go_next)
            page.params_changed.connect(self._page_params_changed)
            page.help_requested.connect(self.show_help)
            self.pages[s.id] = page
            self.stack.addWidget(page)
        self._add_special_editors()
        self.preview = PreviewPanel(self.steps)
        self.step_list.step_selected.connect(self.show_step)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.step_list)
        split.addWidget(self.stack)
        split.addWidget(self.preview)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 2)
        split.setSizes([330, 440, 730])
        self.splitter = split
        self.setCentralWidget(split)

    def _add_special_editors(self) -> None:
        from .crop_editor import CropEditor

        new = QPushButton("New session...")
        new.setToolTip("Set animal, session and folders in one short dialog, "
                       "and see the files that will be loaded.")
        new.clicked.connect(self.new_session)
        self.pages["1"].extra.addWidget(new)
        self.crop_editor = CropEditor()
        self.crop_editor.setMinimumHeight(320)
        self.pages["3a"].extra.addWidget(QLabel("Drag and resize the crop on the motion-corrected "
                                                "mean frame; the parameters below follow."))
        self.pages["3a"].extra.addWidget(self.crop_editor)
        self.crop_editor.crop_changed.connect(self._crop_dragged)

    def _build_docks(self) -> None:
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress_label = QLabel("Ready")
        self.dashboard = QLabel()
        self.dashboard.setOpenExternalLinks(True)
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.log_view)
        dock = QDockWidget("Log", self)
        dock.setObjectName("log_dock")
        dock.setWidget(box)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        self.resizeDocks([dock], [150], Qt.Orientation.Vertical)  # the plots need the height
        self.statusBar().addWidget(self.progress_label, 1)
        self.statusBar().addPermanentWidget(self.dashboard)
        self.statusBar().addPermanentWidget(self.progress)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self.act_new = _action(f, "New session...", self.new_session, QKeySequence.StandardKey.New)
        _action(f, "Open session...", self.open_session_dialog, QKeySequence.StandardKey.Open)
        self.recent_menu = f.addMenu("Recent sessions")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        f.addSeparator()
        _action(f, "Load parameters...", self.load_params_dialog)
        _action(f, "Save parameters...", self.save_params_dialog, QKeySequence.StandardKey.Save)
        _action(f, "Save parameters as default", self.save_params_as_default)
        f.addSeparator()
        _action(f, "Quit", self.close, QKeySequence.StandardKey.Quit)

        d = mb.addMenu("&Data")
        _action(d, "Load previous data...", self.load_previous_dialog)

        a = mb.addMenu("&Automation")
        self.act_autorun = _action(a, "Toggle Autorun", self.toggle_autorun)
        self.act_autorun.setCheckable(True)
        _action(a, "Configure Autorun...", self.configure_autorun)
        a.addSeparator()
        self.act_run_all = _action(a, "Run All Steps", self.run_all)
        self.act_run_from = _action(a, "Run From Current Step", self.run_from_current)
        self.act_cancel = _action(a, "Cancel", self.cancel_run)
        a.addSeparator()
        _action(a, "Batch: many sessions...", self.open_batch)

        t = mb.addMenu("&Tools")
        _action(t, "Export video (MP4)...", lambda: self.open_export("video"))
        _action(t, "Export movie (TIFF, npy, mat, zarr)...", lambda: self.open_export("movie"))
        _action(t, "Open data explorer", self.open_explorer)
        _action(t, "Stitch streams...", self.open_stitch)
        _action(t, "Open session folder", self.open_folder_in_files)
        _action(t, "Notifications...", self.notifier.open_dialog)

        h = mb.addMenu("&Help")
        _action(h, "User guide", self.show_help, QKeySequence.StandardKey.HelpContents)
        _action(h, "About MPS", self.show_about)

    def _attach_log(self) -> None:
        self._log_handler = QtLogHandler()
        self._log_handler.bridge.line.connect(self._log_line)
        log.addHandler(self._log_handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)

    def _restore_geometry(self) -> None:
        g = self.settings.geometry()
        if g is not None:
            self.restoreGeometry(g)
        else:
            self.resize(1500, 900)
        s = self.settings.window_state()
        if s is not None:
            self.restoreState(s)

    # ------------------------------------------------------------------------ navigation
    def current_step_id(self) -> str:
        return self.stack.currentWidget().step.id

    def show_step(self, step_id: str) -> None:
        page = self.pages[step_id]
        self.stack.setCurrentWidget(page)
        if self.step_list.currentItem() is not self.step_list.items[step_id]:
            self.step_list.select(step_id)
        self._refresh_page(step_id)
        self.preview.show_step(page.step, self.session.store)
        if step_id == "3a":
            self._load_crop_image()

    def go_next(self, step_id: str | None = None) -> None:
        ids = [s.id for s in self.steps]
        i = ids.index(step_id or self.current_step_id())
        if i + 1 < len(ids):
            self.show_step(ids[i + 1])
            if self.autorun and not self.running():
                self._schedule_autorun(ids[i + 1])

    # ------------------------------------------------------------------------ state display
    def running(self) -> bool:
        return self.thread is not None and self.thread.isRunning()

    def refresh_statuses(self) -> None:
        statuses = self.session.statuses()
        for s in self.steps:
            if not s.implemented:
                self.step_list.set_status(s.id, "not available yet")
            elif not (self.running() and self.step_list.status(s.id) == "running"):
                self.step_list.set_status(s.id, statuses[s.id])
        for sid in self.pages:
            self._refresh_page(sid)

    def _refresh_page(self, step_id: str) -> None:
        page = self.pages[step_id]
        store = self.session.store
        status = self.step_list.status(step_id)
        page.show_state(status, store.manifest(step_id) if store else None,
                        store.failure(step_id) if store else None)
        page.set_blocked("another run is in progress" if self.running() and
                         not page.is_running() else self.session.why_not_runnable(step_id))

    def _apply_session_to_pages(self) -> None:
        for sid, page in self.pages.items():
            page.form.set_params(self.session.params[sid])
        self._update_title()
        self.refresh_statuses()

    def _update_title(self) -> None:
        c = self.session.params["1"]
        where = f" — {self.session.store.root}" if self.session.store else ""
        self.setWindowTitle(f"MPS — {c.animal_id} / {c.session_id}{where}")

    def _log_line(self, text: str, level: int) -> None:
        self.log_view.appendPlainText(text)
        m = _DASHBOARD.search(text)
        if m:
            self.dashboard.setText(f'<a href="{m.group(1)}">Dask dashboard</a>')

    # ------------------------------------------------------------------------ parameters
    def _page_params_changed(self, step_id: str) -> None:
        model = self.pages[step_id].form.params()
        if model is None:
            return
        self.session.set_step_params(step_id, model)
        if step_id == "1":
            self._update_title()
        if step_id == "3a":
            self._sync_crop_editor()
        self._refresh_page(self.current_step_id())

    def invalid_pages(self, start: str, stop: str) -> list[str]:
        ids = [s.id for s in self.steps]
        chosen = ids[ids.index(start): ids.index(stop) + 1]
        return [f"{sid}: {self.pages[sid].form.error()}" for sid in chosen
                if self.pages[sid].form.error()]

    def load_params_file(self, path: Path) -> list[str]:
        """Apply every valid value of a parameter file to every page; return the problems."""
        try:
            params, problems = ParamSet.load_lenient(path, self.steps, base=self.session.params)
        except ParamError as e:
            self.show_error("Load parameters", str(e))
            return [str(e)]
        # keep the open session's folders: a parameter file carries settings, not places
        if self.session.store is not None:
            params = params.with_values("1", {"output_dir": str(self.session.store.root)})
        self.session.params = params
        self._apply_session_to_pages()
        self.settings.set_last_params_file(path)
        log.info("parameters loaded from %s", path)
        if problems:
            self.show_error("Some parameters were not applied",
                            f"{len(problems)} entr{'y' if len(problems) == 1 else 'ies'} of "
                            f"{path} kept their previous value:\n\n" + "\n".join(problems))
        return problems

    def save_params_file(self, path: Path) -> None:
        self.session.params.save(Path(path))
        self.settings.set_last_params_file(Path(path))
        log.info("parameters saved to %s", path)

    def load_params_dialog(self) -> None:
        path = self._ask_open_file("Load parameters", "Parameter files (*.json)")
        if path:
            self.load_params_file(Path(path))

    def save_params_dialog(self) -> None:
        path = self._ask_save_file("Save parameters", "Parameter files (*.json)")
        if path:
            if not path.endswith(".json"):
                path += ".json"
            self.save_params_file(Path(path))

    def save_params_as_default(self) -> None:
        target = self.settings.default_params_path
        target.parent.mkdir(parents=True, exist_ok=True)
        self.session.params.save(target)
        log.info("parameters saved as the default for new sessions (%s)", target)

    # ------------------------------------------------------------------------ sessions
    def new_session(self) -> None:
        if self._refuse_while_running("start a new session"):
            return
        dlg = NewSessionDialog(self.session.params, self)
        if not self._exec(dlg):
            return
        values = dlg.values()
        try:
            params = self.session.params
            for sid, updates in values.items():
                params = params.with_values(sid, updates, source="New session")
        except ParamError as e:
            self.show_error("New session", str(e))
            return
        self.start_session(params)

    def start_session(self, params: ParamSet) -> None:
        """Use `params` for a new session: create its folder and run step 1."""
        session = Session(params)
        try:
            session.ensure_store()
        except (StepError, StoreError) as e:
            self.show_error("New session", str(e))
            return
        self.session = session
        self.settings.add_recent(session.store.root)
        self._apply_session_to_pages()
        self.show_step("1")
        self.run_steps("1", "1")

    def open_session(self, folder: Path, step_id: str | None = None) -> bool:
        if self._refuse_while_running("open another session"):
            return False
        try:
            session, problems = Session.open_folder(Path(folder))
        except StoreError as e:
            self.show_error("Open session", str(e))
            return False
        self.session = session
        self.settings.add_recent(session.store.root)
        self._apply_session_to_pages()
        log.info("opened session %s", session.store.root)
        if problems:
            self.show_error("Some stored parameters were not applied", "\n".join(problems))
        self.show_step(step_id or self._first_not_done())
        return True

    def _first_not_done(self) -> str:
        statuses = self.session.statuses()
        for s in self.steps:
            if s.implemented and statuses[s.id] != "done":
                return s.id
        return self.steps[-1].id

    def open_session_dialog(self) -> None:
        d = self._ask_directory("Open session (an output folder)")
        if d:
            self.open_session(Path(d))

    def load_previous_dialog(self) -> None:
        start = str(self.session.store.root) if self.session.store else ""
        dlg = LoadPreviousDialog(self.steps, start, self)
        if self._exec(dlg):
            folder, step_id = dlg.result_values()
            self.open_session(folder, step_id)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_sessions()
        if not recent:
            self.recent_menu.addAction("(none)").setEnabled(False)
        for folder in recent:
            act = self.recent_menu.addAction(folder)
            act.triggered.connect(lambda _=False, f=folder: self.open_session(Path(f)))

    # ------------------------------------------------------------------------ running
    def run_steps(self, start: str, stop: str) -> bool:
        """Start steps start..stop in the worker; False (with the reason shown) if refused."""
        if self._refuse_while_running("start another run"):
            return False
        bad = self.invalid_pages(start, stop)
        if bad:
            self.show_error("Cannot run", "Fix these parameters first:\n" + "\n".join(bad))
            return False
        if start == self.steps[0].id or self.session.store is None:
            try:
                self.session.ensure_store()
            except (StepError, StoreError) as e:
                self.show_error("Cannot run", f"step 1 (Project configuration): {e}")
                return False
            self.settings.add_recent(self.session.store.root)
            self._update_title()
        why = self.session.why_not_runnable(start, stop)
        if why:
            self.show_error("Cannot run", why)
            return False
        self._run_range = (start, stop)
        self.thread = RunThread(self.session, start, stop, self)
        self.thread.progress.connect(self._on_progress)
        self.thread.step_event.connect(self._on_step_event)
        self.thread.outcome.connect(self._on_outcome)
        self.thread.finished.connect(self._on_thread_finished)
        self.notifier.watch(self.thread, start, stop)
        for page in self.pages.values():
            page.set_blocked("another run is in progress")
            page.set_cancellable(True)
        self.act_run_all.setEnabled(False)
        self.act_run_from.setEnabled(False)
        self.progress.setValue(0)
        self.progress_label.setText(f"Running {start}..{stop}")
        self.thread.start()
        return True

    def run_all(self) -> None:
        self.run_steps(self.steps[0].id, self._last_implemented())

    def run_from_current(self) -> None:
        self.run_steps(self.current_step_id(), self._last_implemented())

    def _last_implemented(self) -> str:
        return [s.id for s in self.steps if s.implemented][-1]

    def cancel_run(self) -> None:
        self._autorun_timer.stop()
        self._autorun_target = None
        if self.running():
            self.thread.cancel()
            self.progress_label.setText("Cancelling... (the step stops at its next check)")
            log.info("cancel requested")

    def _on_progress(self, step_id: str, fraction: float, message: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress_label.setText(f"Step {step_id}: {message}")
        self.pages[step_id].set_progress(fraction, message)

    def _on_step_event(self, step_id: str, event: str, message: str) -> None:
        page = self.pages[step_id]
        if event == "started":
            self.step_list.set_status(step_id, "running")
            page.set_running(True)
            if self.autorun or self.current_step_id() == self._prev_id(step_id):
                self.show_step(step_id)   # follow the run through the pages
            else:
                self._refresh_page(self.current_step_id())
            return
        page.set_running(False)
        statuses = self.session.statuses()
        self.step_list.set_status(step_id, statuses[step_id])
        if step_id == "2f" or step_id == "3a":
            self._load_crop_image()
        if step_id == self.steps[-1].id and event == "done" and not self._closing:
            self.open_explorer(quiet=True)   # the user's next job: judge the units
        if self.current_step_id() == step_id:
            self._refresh_page(step_id)
            self.preview.show_step(page.step, self.session.store)

    def _prev_id(self, step_id: str) -> str | None:
        ids = [s.id for s in self.steps]
        i = ids.index(step_id)
        return ids[i - 1] if i > 0 else None

    def _on_outcome(self, outcome: str, message: str) -> None:
        self.progress_label.setText(message)
        if outcome == "done":
            self.progress.setValue(1000)
        if outcome in ("failed", "refused"):
            where = f" Details are in the log: {self.session.store.log_path}" \
                if self.session.store else ""
            self.show_error("Step failed" if outcome == "failed" else "Cannot run",
                            message + "." + where)
        self._pending_outcome = outcome

    def _on_thread_finished(self) -> None:
        outcome = self._pending_outcome
        for page in self.pages.values():
            page.set_running(False)
            page.set_cancellable(False)
        self.thread = None
        self.act_run_all.setEnabled(True)
        self.act_run_from.setEnabled(True)
        self.refresh_statuses()
        if self.settings.autorun().autosave and self.settings.last_params_file():
            try:
                self.session.params.save(Path(self.settings.last_params_file()))
            except OSError as e:
                log.warning("could not autosave parameters: %s", e)
        if self._closing:
            self.close()
            return
        if self.autorun and self._run_range and self._run_range[0] == self._run_range[1]:
            cfg = self.settings.autorun()
            if outcome == "done" or (outcome == "failed" and not cfg.stop_on_error):
                nxt = self._next_implemented(self._run_range[1])
                if nxt:
                    self.show_step(nxt)
                    self._schedule_autorun(nxt)

    def _next_implemented(self, step_id: str) -> str | None:
        ids = [s.id for s in self.steps]
        for s in self.steps[ids.index(step_id) + 1:]:
            if s.implemented:
                return s.id
        return None

    # ------------------------------------------------------------------------ autorun
    def toggle_autorun(self) -> None:
        self.set_autorun(not self.autorun)

    def set_autorun(self, on: bool) -> None:
        self.autorun = on
        self.act_autorun.setChecked(on)
        if not on:
            self._autorun_timer.stop()
            self._autorun_target = None
        log.info("autorun %s", "on" if on else "off")

    def configure_autorun(self) -> None:
        dlg = AutorunDialog(self.settings.autorun(), self)
        if self._exec(dlg):
            self.settings.set_autorun(dlg.config())

    def _schedule_autorun(self, step_id: str) -> None:
        self._autorun_target = step_id
        self._autorun_timer.start(int(self.settings.autorun().delay_s * 1000))

    def _autorun_next(self) -> None:
        sid, self._autorun_target = self._autorun_target, None
        if sid and self.autorun and not self.running():
            if self.session.why_not_runnable(sid) is None and not self.pages[sid].form.error():
                self.run_steps(sid, sid)
            else:
                log.info("autorun stopped at step %s: %s", sid,
                         self.pages[sid].run_blocker() or self.session.why_not_runnable(sid))

    # ------------------------------------------------------------------------ 3a crop editor
    def _load_crop_image(self) -> None:
        store = self.session.store
        if store is None:
            return
        img = None
        try:
            if store.has("2f", "projections"):
                proj = store.load("2f", "projections")
                name = "mean_after" if "mean_after" in proj else list(proj.data_vars)[0]
                img = proj[name].values
            elif store.has("2e", "movie"):
                img = store.load("2e", "movie").isel(frame=0).values
        except Exception as e:  # noqa: BLE001 -- the editor is a help, not a requirement
            log.warning("crop editor: cannot read the mean frame (%s)", e)
        if img is not None:
            self.crop_editor.set_image(img)
            self._sync_crop_editor()

    def _sync_crop_editor(self) -> None:
        p = self.session.params["3a"]
        self.crop_editor.blockSignals(True)
        self.crop_editor.set_crop(p.shape, p.size_fraction, p.offset_x, p.offset_y,
                                  p.use_full_frame)
        self.crop_editor.blockSignals(False)

    def _crop_dragged(self, crop: dict) -> None:
        form = self.pages["3a"].form
        for key in ("shape", "size_fraction", "offset_x", "offset_y"):
            if key in crop and form.values().get(key) != crop[key]:
                form.set_value(key, crop[key])

    # ------------------------------------------------------------------------ tools
    def open_export(self, kind: str):
        from .export_dialog import ExportDialog

        if self.session.store is None:
            self.show_error("Export", "Open or run a session first: exports read its results.")
            return None
        dlg = ExportDialog(self.session.store, kind, self)
        dlg.show()
        self._export_dialog = dlg
        return dlg

    def open_explorer(self, quiet: bool = False):
        """The results explorer of this session (quiet: no dialog when there is nothing yet)."""
        from mps_core.curation import CurationError

        from .explorer import ExplorerWindow

        if self.session.store is None:
            if not quiet:
                self.show_error("Data explorer", "Open or run a session first.")
            return None
        try:
            win = ExplorerWindow(self.session.store, self)
        except CurationError as e:
            if not quiet:
                self.show_error("Data explorer", str(e))
            return None
        win.show()
        self._explorer = win
        return win

    def open_batch(self):
        from .batch_window import BatchWindow

        dlg = BatchWindow(self.session.params, self.steps, self)
        dlg.show()
        self._batch_window = dlg
        return dlg

    def open_stitch(self):
        from .stitch_dialog import StitchDialog

        dlg = StitchDialog(self)
        dlg.show()
        self._stitch_dialog = dlg
        return dlg

    # ------------------------------------------------------------------------ help
    def show_help(self, step_id: str | None = None) -> None:
        page = step_help_page(step_id) if step_id else None
        self._help = HelpWindow(self, page)
        self._help.show()

    def show_about(self) -> None:
        QMessageBox.about(self, "About MPS", about_text())

    # ------------------------------------------------------------------------ dialogs (tests
    # replace these small methods so no modal dialog blocks)
    def show_error(self, title: str, text: str) -> None:
        self.last_error = text
        log.error("%s: %s", title, text.replace("\n", " | "))
        if not self._closing:
            QMessageBox.warning(self, title, text)

    def _confirm(self, title: str, text: str) -> bool:
        return QMessageBox.question(self, title, text) == QMessageBox.StandardButton.Yes

    def _exec(self, dialog) -> bool:
        return bool(dialog.exec())

    def _ask_open_file(self, caption: str, filt: str) -> str:
        return QFileDialog.getOpenFileName(self, caption, self.settings.last_params_file(), filt)[0]

    def _ask_save_file(self, caption: str, filt: str) -> str:
        return QFileDialog.getSaveFileName(self, caption, self.settings.last_params_file(), filt)[0]

    def _ask_directory(self, caption: str) -> str:
        return QFileDialog.getExistingDirectory(self, caption)

    def _refuse_while_running(self, what: str) -> bool:
        if self.running():
            self.show_error("A run is in progress",
                            f"Cannot {what} while steps are running: cancel the run first.")
            return True
        return False

    def open_folder_in_files(self) -> None:
        if self.session.store:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.session.store.root)))

    # ------------------------------------------------------------------------ closing
    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        if self.running():
            if not self._closing and not self._confirm(
                    "Quit MPS", "A step is running. Cancel it and quit? Its previous result is "
                                "kept."):
                event.ignore()
                return
            self._closing = True
            self.cancel_run()
            event.ignore()          # closes again when the worker has stopped
            return
        self._autorun_timer.stop()
        for attr in ("_explorer", "_export_dialog", "_stitch_dialog", "_batch_window",
                     "_notify_dialog"):
            child = getattr(self, attr, None)
            if child is not None:
                child.close()      # each stops and waits for its own worker first
        self.preview.wait(10000)
        self.settings.save_window(self.saveGeometry(), self.saveState())
        self.settings.sync()
        log.removeHandler(self._log_handler)
        self._collector.stop()
        event.accept()


def _action(menu, text: str, slot, shortcut=None) -> QAction:
    act = QAction(text, menu)
    if shortcut is not None:
        act.setShortcut(QKeySequence(shortcut))
    act.triggered.connect(lambda _=False: slot())
    menu.addAction(act)
    return act

