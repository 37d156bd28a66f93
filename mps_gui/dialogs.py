"""Short modal dialogs: new session, load previous data, autorun settings, about, help.

The pipeline itself is a list of pages (people go back and re-run); only these short,
one-off questions are dialogs. Each dialog returns plain values; the window applies them.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtWidgets import (
    QCheckBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout,
    QHeaderView, QLabel, QLineEdit, QListWidget, QPushButton, QTableWidget, QTableWidgetItem,
    QTextBrowser, QVBoxLayout, QWidget, QWizard, QWizardPage,
)

from .settings import AutorunConfig


def field_with_button(edit: QLineEdit, on_click, parent: QWidget | None = None,
                      text: str = "Browse...") -> QWidget:
    """One form row: a text field that takes the width and a button after it."""
    row = QWidget(parent)
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    btn = QPushButton(text, row)
    btn.clicked.connect(on_click)
    lay.addWidget(btn)
    return row


def _browse_row(edit: QLineEdit, caption: str, parent: QWidget) -> QWidget:
    return field_with_button(edit, lambda: _pick_dir(edit, caption, parent), parent)


def _pick_dir(edit: QLineEdit, caption: str, parent: QWidget) -> None:
    d = QFileDialog.getExistingDirectory(parent, caption, edit.text() or str(Path.home()))
    if d:
        edit.setText(d)


# ------------------------------------------------------------------------------ new session
class NewSessionDialog(QWizard):
    """Names, folders, then the files that will be loaded, in the order they will be read."""

    def __init__(self, params, parent=None):
        super().__init__(parent)
        self.setWindowTitle("New session")
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        c, load = params["1"], params["2a"]
        self.animal = QLineEdit(c.animal_id)
        self.session = QLineEdit(c.session_id)
        self.input_dir = QLineEdit(c.input_dir)
        self.output_dir = QLineEdit(c.output_dir)
        self.pattern = QLineEdit(load.file_pattern)
        self.files = QListWidget()
        self.files_label = QLabel()
        self.files_label.setWordWrap(True)
        self.problem = QLabel()
        self.problem.setStyleSheet("color: #b00020")
        self.problem.setWordWrap(True)

        first = _Page(self, "Who and where",
                      "Name the animal and the session, choose the folder holding the videos "
                      "and an empty folder for the results. The input folder is never written to.")
        form = QFormLayout()
        form.addRow("Animal ID", self.animal)
        form.addRow("Session ID", self.session)
        form.addRow("Input folder", _browse_row(self.input_dir, "Folder with the videos", self))
        form.addRow("Output folder", _browse_row(self.output_dir, "Folder for the results", self))
        first.layout().addLayout(form)
        first.layout().addWidget(self.problem)
        first.check = self._check_first

        second = _Page(self, "Files to load",
                       "These files will be loaded in this order (natural order: 2 before 10). "
                       "Change the pattern if files are missing or extra.")
        f2 = QFormLayout()
        f2.addRow("File pattern (regular expression)", self.pattern)
        second.layout().addLayout(f2)
        second.layout().addWidget(self.files_label)
        second.layout().addWidget(self.files, 1)
        second.check = self._refresh_files
        self.pattern.textChanged.connect(self._refresh_files)
        for w in (self.animal, self.session, self.input_dir, self.output_dir):
            w.textChanged.connect(lambda *_: first.completeChanged.emit())
        self.addPage(first)
        self.addPage(second)
        self.resize(640, 480)

    def values(self) -> dict[str, dict]:
        return {"1": {"animal_id": self.animal.text().strip(),
                      "session_id": self.session.text().strip(),
                      "input_dir": self.input_dir.text().strip(),
                      "output_dir": self.output_dir.text().strip()},
                "2a": {"file_pattern": self.pattern.text()}}

    def _check_first(self) -> bool:
        from mps_core.registry import StepError
        from mps_core.steps.config import ConfigParams, check_config

        try:
            check_config(ConfigParams(**self.values()["1"]))
        except StepError as e:
            self.problem.setText(str(e))
            return False
        except Exception as e:  # noqa: BLE001 -- a pydantic error on a field: show it
            self.problem.setText(str(e).splitlines()[0])
            return False
        self.problem.setText("")
        return True

    def _refresh_files(self, *_) -> bool:
        from mps_core.io.layout import detect_layout
        from mps_core.io.natural import find_files

        self.files.clear()
        folder = Path(self.input_dir.text().strip()).expanduser()
        try:
            files = find_files(folder, self.pattern.text())
        except ValueError as e:
            self.files_label.setText(f"<span style='color:#b00020'>{e}</span>")
            return False
        for p in files:
            self.files.addItem(p.name)
        try:
            layout = detect_layout(folder)
            kind = {"v3": "Miniscope V3 layout", "v4": "Miniscope V4 layout"}.get(
                layout.kind, "plain folder of videos")
            fps = f", {layout.fps:g} frames per second" if layout.fps else ""
            stamps = f", time stamps from {layout.timestamps.name}" if layout.timestamps else ""
        except ValueError:
            kind, fps, stamps = "plain folder", "", ""
        self.files_label.setText(f"{len(files)} file(s); {kind}{fps}{stamps}.")
        return True


class _Page(QWizardPage):
    def __init__(self, wizard, title: str, text: str):
        super().__init__(wizard)
        self.setTitle(title)
        self.setSubTitle(text)
        self.setLayout(QVBoxLayout())
        self.check = lambda: True

    def isComplete(self) -> bool:  # noqa: N802 (Qt name)
        return bool(self.check())

    def initializePage(self) -> None:  # noqa: N802
        self.check()


# ------------------------------------------------------------------------ load previous data
class LoadPreviousDialog(QDialog):
    """Pick a session folder, see what is done (when, how long, with which changes), resume."""

    def __init__(self, steps, folder: str = "", parent=None):
        super().__init__(parent)
        self.setWindowTitle("Load previous data")
        self.steps = steps
        self.folder = QLineEdit(folder)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Step", "Title", "Status", "Finished",
                                              "Changed parameters"])
        self.table.horizontalHeader().setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.message = QLabel("Choose a session folder (the output folder of an earlier run).")
        self.message.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.resume = buttons.addButton("Resume from selected step",
                                        QDialogButtonBox.ButtonRole.AcceptRole)
        self.resume.setEnabled(False)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(_browse_row(self.folder, "Session folder", self))
        lay.addWidget(self.message)
        lay.addWidget(self.table, 1)
        lay.addWidget(buttons)
        self.folder.textChanged.connect(self.refresh)
        self.table.itemSelectionChanged.connect(
            lambda: self.resume.setEnabled(self.selected_step() is not None))
        self.resize(820, 560)
        self.refresh()

    def refresh(self, *_) -> None:
        from mps_core.store import SessionStore, StoreError

        self.table.setRowCount(0)
        text = self.folder.text().strip()
        if not text:
            return
        try:
            store = SessionStore(Path(text).expanduser(), create=False)
        except StoreError as e:
            self.message.setText(str(e))
            return
        statuses = store.statuses([s.id for s in self.steps])
        resume_at = None
        for s in self.steps:
            m = store.manifest(s.id) or {}
            finished = ""
            if m.get("finished_time"):
                finished = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["finished_time"]))
                finished += f" ({m.get('duration_s', 0):.1f} s)"
            row = self.table.rowCount()
            self.table.insertRow(row)
            for col, val in enumerate((s.id, s.title, statuses[s.id], finished,
                                       _changed(s, m.get("params")))):
                self.table.setItem(row, col, QTableWidgetItem(val))
            if resume_at is None and statuses[s.id] != "done":
                resume_at = row
        self.table.resizeColumnsToContents()
        done = sum(v == "done" for v in statuses.values())
        self.message.setText(f"{done} of {len(self.steps)} steps done in {store.root}. The first "
                             "step that is not done is selected; pick another to re-run from it.")
        self.table.selectRow(resume_at if resume_at is not None else len(self.steps) - 1)

    def selected_step(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return self.table.item(rows[0].row(), 0).text() if rows else None

    def result_values(self) -> tuple[Path, str | None]:
        return Path(self.folder.text().strip()).expanduser(), self.selected_step()


def _changed(step, stored: dict | None) -> str:
    """'key=value' for each stored parameter that differs from its default."""
    if not stored:
        return ""
    defaults = step.params().model_dump(mode="json")
    diffs = [f"{k}={v}" for k, v in stored.items() if defaults.get(k, v) != v]
    return ", ".join(diffs) if diffs else "defaults"


# ----------------------------------------------------------------------------------- autorun
class AutorunDialog(QDialog):
    def __init__(self, cfg: AutorunConfig, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Configure Autorun")
        self.delay = QDoubleSpinBox()
        self.delay.setRange(0.0, 600.0)
        self.delay.setDecimals(1)
        self.delay.setSuffix(" s")
        self.delay.setValue(cfg.delay_s)
        self.stop_on_error = QCheckBox("Stop when a step fails")
        self.stop_on_error.setChecked(cfg.stop_on_error)
        self.autosave = QCheckBox("Also save the current parameter file after every step")
        self.autosave.setChecked(cfg.autosave)
        form = QFormLayout(self)
        form.addRow(QLabel("With Autorun on, each finished step moves to the next page and runs "
                           "it, so a whole session runs while you watch the plots."))
        form.addRow("Delay between steps", self.delay)
        form.addRow(self.stop_on_error)
        form.addRow(self.autosave)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok |
                                   QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def config(self) -> AutorunConfig:
        return AutorunConfig(self.delay.value(), self.stop_on_error.isChecked(),
                             self.autosave.isChecked())


# ------------------------------------------------------------------------------ about, help
def about_text() -> str:
    from mps_core import __version__
    from mps_core.store import library_versions

    libs = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in library_versions().items())
    return (f"<h3>MPS {__version__}</h3><p>From raw miniscope videos to neuron footprints, "
            f"calcium traces and spike estimates.</p><p>Licence: Apache-2.0.</p>"
            f"<table>{libs}</table>")


class HelpWindow(QDialog):
    """The user guide (docs/*.md) rendered in the app; links between pages work."""

    def __init__(self, parent=None, page: Path | None = None):
        super().__init__(parent)
        self.setWindowTitle("MPS user guide")
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.browser)
        self.resize(820, 720)
        index = page if page is not None and page.exists() else guide_index()
        if index is None:
            self.browser.setMarkdown("The user guide was not found next to this installation. "
                                     "It is in the `docs/` folder of the MPS source.")
        else:
            self.browser.setSearchPaths([str(index.parent)])
            self.browser.setSource(QUrl.fromLocalFile(str(index)))
        self.home = QPushButton("Contents")
        self.home.clicked.connect(self._go_home)
        lay.insertWidget(0, self.home)

    def _go_home(self) -> None:
        index = guide_index()
        if index is not None:
            self.browser.setSource(QUrl.fromLocalFile(str(index)))


def step_help_page(step_id: str) -> Path | None:
    """The guide's page for one step, when the guide is installed."""
    try:
        from mps_core.docsgen import step_page
        return step_page(step_id)
    except (ImportError, ValueError, OSError):
        return None


def guide_index() -> Path | None:
    """docs/index.md (or the first page found) of this installation."""
    try:
        from mps_core.docsgen import docs_dir
        folder = docs_dir()
    except ImportError:
        folder = None
    if folder is None:
        cand = Path(__file__).resolve().parents[1] / "docs"
        folder = cand if cand.is_dir() else None
    if folder is None:
        return None
    for name in ("index.md", "quick-start.md", "session-folder.md"):
        if (folder / name).exists():
            return folder / name
    pages = sorted(folder.glob("*.md"))
    return pages[0] if pages else None

