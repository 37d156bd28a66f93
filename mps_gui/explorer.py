"""The results explorer: judge and curate the units of a finished session.

Opened from the main window (Tools > Open data explorer, and when step 8c finishes) and with
``mps explore OUTPUT_DIR``. One window:

* left, the footprint map (:mod:`mps_gui.explorer_map`) over the unit table
  (:mod:`mps_gui.explorer_table`) and the curation buttons;
* right, the movie (:mod:`mps_gui.explorer_movie`) over the traces of the selected units
  (:mod:`mps_gui.explorer_traces`); the movie's frame and the traces' cursor follow each other.

Selecting a unit anywhere (map click, box, table row) selects it everywhere. Labels are saved
at once to ``SESSION/curation.json`` (:mod:`mps_core.curation`); nothing stored is changed or
deleted, and "Export curated..." writes the result again with the labels applied.

Everything heavy is read lazily (:mod:`mps_gui.explorer_data`): footprints in a background
thread while the window is already usable, traces when a unit is selected, movie frames a
chunk at a time.

Keys: Space play / pause, Left / Right step, Up / Down step size, A accept, R reject,
U restore, M merge.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QThread, Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QApplication, QCheckBox, QComboBox, QDialog, QFileDialog,
                               QFormLayout, QHBoxLayout, QLabel, QLineEdit, QMainWindow,
                               QPushButton, QSplitter, QVBoxLayout, QWidget)

from mps_core import curation as cu
from mps_core.export import FORMATS
from mps_core.store import SessionStore
from mps_gui.explorer_data import ExplorerData, Footprints
from mps_gui.explorer_map import LABEL_RGB, FootprintMap, unit_colours, value_colours
from mps_gui.explorer_movie import MoviePlayer
from mps_gui.explorer_table import FILTERS, ID_ROLE, UnitTableModel, UnitTableView
from mps_gui.explorer_traces import MAX_ROWS, TracePanel
from mps_gui.gui_gc import GuiThreadCollector

__all__ = ["ExplorerWindow", "open_explorer", "run_explorer", "CuratedExportDialog"]

QUARANTINE_NOTE = ("has no traces yet: restoring records your decision in curation.json; "
                   "re-run steps 5-8 with it to get its traces")


class Job(QThread):
    """Runs ``fn(cancel_event)`` in a thread; ``done(result)`` or ``failed(message)``."""

    done = Signal(object)
    failed = Signal(str)

    def __init__(self, fn: Callable[[threading.Event], Any], parent=None) -> None:
        super().__init__(parent)
        self.fn = fn
        self.cancel = threading.Event()

    def run(self) -> None:
        try:
            result = self.fn(self.cancel)
        except Exception as e:  # noqa: BLE001 -- shown to the user as one line
            if not self.cancel.is_set():
                self.failed.emit(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError)
                                 else str(e))
            return
        if not self.cancel.is_set():
            self.done.emit(result)


class ExplorerWindow(QMainWindow):
    """The explorer of one session (a :class:`~mps_core.store.SessionStore` or its folder)."""

    def __init__(self, store, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        if not isinstance(store, SessionStore):
            store = SessionStore(Path(store), create=False)
        self.store = store
        self.data = ExplorerData(store)
        self.curation = cu.load_curation(store.root)
        # its jobs run in threads: a collection there would delete plot items off the GUI
        # thread (seen: a deadlock in Qt); `mps explore` has no main window to prevent it
        self._collector = GuiThreadCollector(self)
        self.footprints: Footprints | None = None
        self.jobs: list[Job] = []
        self._selected: list[int] = []
        self._syncing = False
        self._activity: tuple[np.ndarray, np.ndarray] | None = None
        self._trace_request = 0
        self._unit_rgb = unit_colours(self.data.table.unit_id)
        self.setWindowTitle(f"MPS explorer \u2014 {store.root.name}")
        self._build()
        self._shortcuts()
        self.resize(1560, 980)
        warn = cu.stale_warning(self.curation, store)
        if warn:
            self.banner.setText(warn)
            self.banner.show()
        self.statusBar().showMessage(
            f"{int(np.sum(self.data.table.origin == 'kept'))} units kept by 8c, "
            f"{int(np.sum(self.data.table.origin == 'removed'))} removed by 8c, "
            f"{int(np.sum(self.data.table.origin == 'quarantined'))} quarantined at 4h; "
            f"labels are saved to {cu.curation_path(store.root)}")
        self._start_background(self.map.background_name())
        self._run(self.data.load_footprints, self._footprints_loaded, "loading footprints")

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background: #7a5b00; color: white; padding: 4px")
        self.banner.hide()

        self.map = FootprintMap(self.data.background_names())
        self.map.describe = self.describe_row
        self.map.set_message("loading footprints\u2026")
        self.map.units_clicked.connect(self.select_units)
        self.map.background_changed.connect(self._start_background)
        self.map.colour_changed.connect(lambda _: self._recolour())
        self.map.visibility_changed.connect(lambda: self._recolour())

        self.model = UnitTableModel(self.data.table, self.curation)
        self.table = UnitTableView(self.model)
        self.table.selectionModel().selectionChanged.connect(self._table_selection)
        self.filter_box = QComboBox()
        for key, words in FILTERS.items():
            self.filter_box.addItem(f"show {words}", key)
        self.filter_box.setToolTip("Which units the table lists")
        self.filter_box.currentIndexChanged.connect(self._filter_changed)
        self.count_label = QLabel()

        self.buttons: dict[str, QPushButton] = {}
        specs = (("accept", "Accept (A)", "Label the selected units as real cells",
                  self.accept_selected),
                 ("reject", "Reject (R)", "Label the selected units as not cells; they are "
                  "left out of a curated export (never deleted)", self.reject_selected),
                 ("restore", "Restore (U)", "Undo a rejection (the pipeline decides again); a "
                  "unit removed by 8c or quarantined at 4h is accepted instead",
                  self.restore_selected),
                 ("merge", "Merge (M)", "The selected units are one cell: exported as one "
                  "unit (footprints summed, traces combined by footprint weight)",
                  self.merge_selected),
                 ("unmerge", "Split", "Undo the merge holding the selected unit",
                  self.unmerge_selected),
                 ("export", "Export curated\u2026", "Write the results again with your labels "
                  "applied (beside the pipeline's export, which stays as it is)",
                  self.open_export_dialog))
        row = QHBoxLayout()
        for key, text, tip, slot in specs:
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda _=False, f=slot: f())
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys stay with the explorer
            self.buttons[key] = b
            row.addWidget(b)
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("note for the selected unit (Enter saves)")
        self.note_edit.returnPressed.connect(lambda: self.set_note(self.note_edit.text()))
        self.message = QLabel()
        self.message.setWordWrap(True)

        head = QHBoxLayout()
        head.addWidget(self.filter_box)
        head.addWidget(self.count_label, 1)
        table_box = QWidget()
        tl = QVBoxLayout(table_box)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(head)
        tl.addWidget(self.table, 1)
        tl.addLayout(row)
        tl.addWidget(self.note_edit)
        tl.addWidget(self.message)

        self.player = MoviePlayer(self.data)
        self.player.frame_changed.connect(self._movie_moved)
        self.traces = TracePanel(self.data.trace_kinds(), self.data.time_words)
        self.traces.cursor_moved.connect(self._cursor_moved)
        self.traces.set_cursor(self.data.time_of(self.player.frame_number()))

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.map)
        left.addWidget(table_box)
        left.setSizes([560, 420])
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.player)
        right.addWidget(self.traces)
        right.setSizes([520, 460])
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([700, 860])
        central = QWidget()
        cl = QVBoxLayout(central)
        cl.setContentsMargins(4, 4, 4, 4)
        cl.addWidget(self.banner)
        cl.addWidget(split, 1)
        self.setCentralWidget(central)
        self._update_buttons()
        self._update_count()

    def _shortcuts(self) -> None:
        keys = {"Space": self.player.toggle_play, "Left": lambda: self.player.step(-1),
                "Right": lambda: self.player.step(1),
                "Up": lambda: self.player.change_step_size(1),
                "Down": lambda: self.player.change_step_size(-1),
                "A": self.accept_selected, "R": self.reject_selected,
                "U": self.restore_selected, "M": self.merge_selected}
        self.shortcuts: dict[str, QShortcut] = {}
        for key, slot in keys.items():
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(slot)
            self.shortcuts[key] = sc

    # ------------------------------------------------------------------ background work
    def _run(self, fn, on_done, what: str) -> Job:
        job = Job(fn, self)
        job.done.connect(on_done)
        job.failed.connect(lambda msg: self._say(f"{what} failed: {msg}"))
        job.finished.connect(lambda: self.jobs.remove(job) if job in self.jobs else None)
        self.jobs.append(job)
        job.start()
        return job

    def is_ready(self) -> bool:
        """Whether the footprints are loaded (the map is drawn)."""
        return self.footprints is not None

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Process events until the background loads are done (tests, screenshots)."""
        import time

        end = time.monotonic() + timeout_s
        app = QApplication.instance()
        while (self.jobs or not self.is_ready()) and time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)
        app.processEvents()
        return self.is_ready() and not self.jobs

    def _footprints_loaded(self, fp: Footprints) -> None:
        self.footprints = fp
        self.map.set_units(fp, self.data.table.unit_id, self.data.table.origin)
        self._recolour()
        self._show_selection(from_table=False)

    def _start_background(self, name: str) -> None:
        if not name:
            return
        if name == "correlation" and name not in self.data._images:
            self.map.set_message("computing the correlation image\u2026")
            self._run(lambda cancel: self.data.background(name, cancel),
                      lambda img: (self.map.set_background(img), self.map.set_message("")),
                      "the correlation image")
            return
        try:
            self.map.set_background(self.data.background(name))
        except Exception as e:  # noqa: BLE001 -- a missing image must not close the window
            self._say(f"cannot show the {name} image: {e}")

    def closeEvent(self, event) -> None:  # noqa: N802 -- Qt's name
        self.player.pause()
        for job in list(self.jobs):
            job.cancel.set()
            job.wait(10000)
        self._collector.stop()
        super().closeEvent(event)

    # ------------------------------------------------------------------ words
    def describe_row(self, row: int) -> str:
        t = self.data.table
        uid = int(t.unit_id[row])
        parts = [f"unit {uid}", self.model.origin_text(row)]
        if np.isfinite(t.size_px[row]):
            parts.append(f"{t.size_px[row]:.0f} px")
        if np.isfinite(t.snr[row]):
            parts.append(f"SNR {t.snr[row]:.1f}")
        parts.append(self.curation.status(uid))
        note = self.curation.note(uid)
        if note:
            parts.append(f"\u201c{note}\u201d")
        return " \u00b7 ".join(parts)

    def _say(self, text: str) -> None:
        self.message.setText(text)
        self.statusBar().showMessage(text, 15000)

    # ------------------------------------------------------------------ selection
    def selected_ids(self) -> list[int]:
        return list(self._selected)

    def select_units(self, ids, mode: str = "replace") -> None:
        """Select units by id everywhere. mode: "replace", "add" or "toggle"."""
        known = self.model.row_of
        ids = [int(u) for u in ids if int(u) in known]
        if mode == "replace":
            new = list(dict.fromkeys(ids))
        elif mode == "add":
            new = list(dict.fromkeys(self._selected + ids))
        elif mode == "toggle":
            new = [u for u in self._selected if u not in ids] + \
                  [u for u in ids if u not in self._selected]
        else:
            raise ValueError(f"select_units mode '{mode}': allowed values are replace, add, "
                             f"toggle")
        self._selected = new
        self._show_selection(from_table=False)

    def _table_selection(self, *_) -> None:
        if self._syncing:
            return
        ids = self.table.selected_ids()
        current = self.table.selectionModel().currentIndex()
        if current.isValid() and len(ids) > 1:  # the row clicked last goes first
            first = int(self.table.proxy.data(current, ID_ROLE))
            if first in ids:
                ids.remove(first)
                ids.insert(0, first)
        self._selected = ids
        self._show_selection(from_table=True)

    def _show_selection(self, from_table: bool) -> None:
        ids = self._selected
        if not from_table:
            self._syncing = True
            try:
                self.table.select_ids(ids)
            finally:
                self._syncing = False
        rows = [self.model.row_of[u] for u in ids]
        self.map.set_selected_rows(rows)
        self._show_traces(ids)
        outlines = []
        if self.footprints is not None:
            for u in ids:
                r = self.model.row_of[u]
                ys, xs = self.footprints.contours[r]
                outlines.append((ys, xs, tuple(int(c) for c in self._unit_rgb[r])))
        self.player.set_outlines(outlines)
        self.note_edit.setText(self.curation.note(ids[0]) if len(ids) == 1 else "")
        self.note_edit.setEnabled(len(ids) == 1)
        self._update_buttons()
        if ids:
            words = self.describe_row(self.model.row_of[ids[0]])
            more = f" (+{len(ids) - 1} more)" if len(ids) > 1 else ""
            self.statusBar().showMessage(words + more)

    def _show_traces(self, ids: list[int]) -> None:
        """Draw the traces of ``ids``: at once when they are in memory, else read in a thread
        (a new chunk of 64 units' traces takes a moment) while the window stays usable; a
        newer selection wins over a read still under way."""
        shown = ids[:MAX_ROWS]
        kinds = self.data.trace_kinds()
        colours = {u: tuple(int(c) for c in self._unit_rgb[self.model.row_of[u]]) for u in shown}
        self._trace_request += 1
        request = self._trace_request

        def fetch(cancel=None):
            return {u: {k: self.data.trace(k, u) for k in kinds} for u in shown}

        def ready(traces):
            if request == self._trace_request:
                self.traces.set_units(ids, traces, colours, self.data.times)

        if all(self.data.is_cached(k, u) for u in shown for k in kinds):
            ready(fetch())
            return
        self.traces.info.setText(f"reading the traces of {len(shown)} unit(s)\u2026")
        self._run(fetch, ready, "reading traces")

    def _filter_changed(self, _=None) -> None:
        self.table.proxy.set_view(self.filter_box.currentData())
        self._syncing = True
        try:
            self.table.select_ids(self._selected)
        finally:
            self._syncing = False
        self._update_count()

    def _update_count(self) -> None:
        n = self.table.proxy.rowCount()
        self.count_label.setText(f"{n} of {len(self.data.table)} units")

    def _update_buttons(self) -> None:
        ids = self._selected
        with_traces = [u for u in ids if self.data.table.has_traces[self.model.row_of[u]]]
        self.buttons["accept"].setEnabled(bool(ids))
        self.buttons["reject"].setEnabled(bool(ids))
        self.buttons["restore"].setEnabled(bool(ids))
        self.buttons["merge"].setEnabled(len(with_traces) >= 2 and len(with_traces) == len(ids))
        self.buttons["unmerge"].setEnabled(any(self.curation.group_of(u) for u in ids))

    # ------------------------------------------------------------------ colours and time
    def _recolour(self) -> None:
        if self.footprints is None:
            return
        mode = self.map.colour_mode()
        t = self.data.table
        strength = None
        if mode == "unit":
            rgb = self._unit_rgb.copy()
            for g in self.curation.merges:  # a merge group shares its first unit's colour
                rows = [self.model.row_of[u] for u in g if u in self.model.row_of]
                if rows:
                    rgb[rows] = rgb[rows[0]]
        elif mode == "label":
            rgb = np.array([LABEL_RGB[s] if s != "unlabelled" else LABEL_RGB[str(o)]
                            for s, o in zip((self.curation.status(u) for u in t.unit_id),
                                            t.origin)], np.uint8).reshape(-1, 3)
        elif mode == "snr":
            fin = t.snr[np.isfinite(t.snr)]
            hi = float(np.percentile(fin, 95)) if fin.size else 1.0
            rgb = value_colours(t.snr, "viridis", 0.0, hi)
        else:
            level = self._activity_now()
            if level is None:
                return
            level = np.round(level * 16) / 16  # 16 shades: outlines change only on a real step
            rgb = value_colours(level, "inferno", 0.0, 1.0)
            strength = np.clip(level, 0.15, 1.0)
        self.map.set_colours(rgb, strength)

    def _activity_now(self) -> np.ndarray | None:
        """Each unit's activity (0..1) at the movie's frame; starts loading it if needed."""
        if self._activity is None:
            self.map.set_message("reading the traces to colour by activity\u2026")
            self._run(self.data.activity, self._activity_loaded, "colouring by activity")
            self._activity = (np.zeros(0, np.int64), np.zeros((0, 0)))  # loading
            return None
        frames, act = self._activity
        if not frames.size:
            return None
        i = int(np.clip(np.searchsorted(frames, self.player.frame_number(), side="right") - 1,
                        0, frames.size - 1))
        return np.asarray(act[:, i], np.float32)

    def _activity_loaded(self, result) -> None:
        self._activity = result
        self.map.set_message("")
        self._recolour()

    def _movie_moved(self, frame_number: int) -> None:
        self.traces.set_cursor(self.data.time_of(frame_number))
        if self.map.colour_mode() == "activity":
            self._recolour()

    def _cursor_moved(self, seconds: float) -> None:
        self.player.set_frame_number(self.data.frame_at(seconds))
        if self.map.colour_mode() == "activity":
            self._recolour()

    # ------------------------------------------------------------------ curation
    def _changed(self, ids, message: str) -> None:
        self.curation.made_for = cu.made_for(self.store)
        try:
            path = cu.save_curation(self.store.root, self.curation)
        except OSError as e:
            self._say(f"{message}, but the labels could not be saved: {e}")
        else:
            self._say(f"{message}; saved to {path.name}")
        self.model.refresh(None)
        self.table.proxy.invalidate()
        self._syncing = True
        try:
            self.table.select_ids(self._selected)
        finally:
            self._syncing = False
        self._update_buttons()
        self._update_count()
        if self.map.colour_mode() in ("label", "unit"):
            self._recolour()

    def _ids_words(self, ids) -> str:
        ids = list(ids)
        head = ", ".join(map(str, ids[:8])) + ("\u2026" if len(ids) > 8 else "")
        return f"unit{'s' if len(ids) > 1 else ''} {head}"

    def accept_selected(self) -> None:
        if not self._selected:
            return
        changed = self.curation.accept(self._selected)
        self._changed(changed, f"accepted {self._ids_words(changed)}")

    def reject_selected(self) -> None:
        if not self._selected:
            return
        changed = self.curation.reject(self._selected)
        self._changed(changed, f"rejected {self._ids_words(changed)}")

    def restore_selected(self) -> None:
        if not self._selected:
            return
        origins = self.data.table.origins()
        changed = self.curation.restore(self._selected, origins)
        msg = f"restored {self._ids_words(changed)}"
        q = [u for u in changed if origins.get(u) == "quarantined"
             and self.curation.status(u) == "accepted"]
        if q:
            msg += f". Quarantined {self._ids_words(q)} {QUARANTINE_NOTE}"
        self._changed(changed, msg)

    def merge_selected(self) -> None:
        ids = self._selected
        no_traces = [u for u in ids if not self.data.table.has_traces[self.model.row_of[u]]]
        if no_traces:
            self._say(f"cannot merge: {self._ids_words(no_traces)} {QUARANTINE_NOTE}")
            return
        try:
            group = self.curation.merge(ids)
        except cu.CurationError as e:
            self._say(str(e))
            return
        self._changed(group, f"merged {self._ids_words(group)} into unit {group[0]}")

    def unmerge_selected(self) -> None:
        done = [g for g in {tuple(self.curation.group_of(u) or ()) for u in self._selected} if g]
        for g in done:
            self.curation.unmerge(g[0])
        if done:
            self._changed([u for g in done for u in g],
                          "split " + "; ".join("+".join(map(str, g)) for g in done))

    def set_note(self, text: str) -> None:
        if len(self._selected) != 1:
            self._say("select one unit to write a note")
            return
        uid = self._selected[0]
        self.curation.set_note(uid, text)
        self._changed([uid], f"note saved for unit {uid}")

    # ------------------------------------------------------------------ export
    def open_export_dialog(self) -> "CuratedExportDialog":
        dlg = CuratedExportDialog(self)
        dlg.show()
        self._export_dialog = dlg
        return dlg

    def export_curated(self, dest: Path | None = None, include_rejected: bool = False,
                       formats=cu.DEFAULT_FORMATS, on_done=None) -> Job:
        """Write the curated export in a thread; ``on_done(summary)`` when written."""
        cur = cu.Curation.from_dict(self.curation.to_dict())  # a copy: labels may change

        def job(cancel):
            return cu.export_curated(self.store, dest, include_rejected=include_rejected,
                                     formats=formats, curation=cur)

        def done(summary):
            self._say(f"curated export: {summary['n_units']} units written to "
                      f"{summary['folder']}")
            if on_done:
                on_done(summary)
        return self._run(job, done, "the curated export")


class CuratedExportDialog(QDialog):
    """Folder, formats and whether rejected units are kept (labelled) in the export."""

    def __init__(self, win: ExplorerWindow) -> None:
        super().__init__(win)
        self.win = win
        self.setWindowTitle("Export curated results")
        self.folder = QLineEdit(str(win.store.root / cu.CURATED_DIR))
        browse = QPushButton("Browse\u2026")
        browse.clicked.connect(self._browse)
        frow = QHBoxLayout()
        frow.addWidget(self.folder, 1)
        frow.addWidget(browse)
        self.include_rejected = QCheckBox("include rejected units (labelled \"rejected\")")
        self.formats = {}
        fl = QHBoxLayout()
        for fmt in FORMATS:
            box = QCheckBox(fmt)
            box.setChecked(fmt in cu.DEFAULT_FORMATS)
            self.formats[fmt] = box
            fl.addWidget(box)
        self.status = QLabel("Accepted units, and unlabelled units kept by 8c, are exported; "
                             "merged units as one. The pipeline's own export is not changed.")
        self.status.setWordWrap(True)
        self.go = QPushButton("Export")
        self.go.clicked.connect(self.start)
        form = QFormLayout(self)
        form.addRow("folder", frow)
        form.addRow("formats", fl)
        form.addRow("", self.include_rejected)
        form.addRow(self.status)
        form.addRow(self.go)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder for the curated export",
                                             self.folder.text())
        if d:
            self.folder.setText(d)

    def start(self) -> Job:
        self.go.setEnabled(False)
        self.status.setText("writing\u2026")
        formats = [f for f, b in self.formats.items() if b.isChecked()]
        job = self.win.export_curated(Path(self.folder.text()), self.include_rejected.isChecked(),
                                      formats, on_done=self._done)
        job.failed.connect(self._failed)
        return job

    def _done(self, summary) -> None:
        self.go.setEnabled(True)
        self.status.setText(f"{summary['n_units']} units written to {summary['folder']}")

    def _failed(self, msg: str) -> None:
        self.go.setEnabled(True)
        self.status.setText(f"export failed: {msg}")


# ====================================================================== entry points


def open_explorer(store, parent: QWidget | None = None) -> ExplorerWindow:
    """Create and show the explorer of ``store`` (the main window keeps the reference)."""
    win = ExplorerWindow(store, parent)
    win.show()
    win.raise_()
    return win


def run_explorer(session: Path | str) -> int:
    """``mps explore SESSION``: the explorer as its own application; returns the exit code."""
    from mps_core.store import StoreError

    try:
        store = SessionStore(Path(session), create=False)
    except StoreError as e:
        print(f"mps explore: {e}", file=sys.stderr)
        return 1
    try:  # the desktop app's checks, so a missing display is one line, not an abort
        from mps_gui.app import _cannot_start_qt, _qt_platform_problem

        problem = _qt_platform_problem()
        if problem:
            return _cannot_start_qt(problem)
    except ImportError:
        pass
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("MPS")
    try:
        win = ExplorerWindow(store)
    except (cu.CurationError, ValueError) as e:
        print(f"mps explore: {e}", file=sys.stderr)
        return 1
    win.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    win.show()
    return app.exec()
