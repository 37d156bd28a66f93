"""The explorer's unit table: id, label, where the unit stands, size, SNR, correlation, merge
group and note; sortable by any column and filtered by a list of views."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from mps_core.curation import ORIGIN_WORDS, Curation, UnitTable

__all__ = ["UnitTableModel", "UnitFilter", "UnitTableView", "COLUMNS", "FILTERS",
           "STATUS_COLOURS"]

COLUMNS = ("unit", "label", "after the pipeline", "size (px)", "SNR", "corr.", "merged with",
           "note")
TIPS = ("Unit id, kept from step 4e to the export",
        "Your label: accepted, rejected, or unlabelled (the pipeline decides)",
        "Kept by 8c's final filter, removed by it (and by which checks), or quarantined as a "
        "likely artifact at step 4h (and which checks it failed)",
        "Pixels of the footprint",
        "Peak of the calcium trace over its noise level (8c); for quarantined units, 4h's "
        "score",
        "Footprint correlation: how well the footprint matches the movie under it while the "
        "unit is active (8c)",
        "Other units merged with this one (exported as one unit, with the smallest id)",
        "Your note")
FILTERS = {"all": "all units", "kept": "kept by 8c", "removed": "removed by 8c",
           "quarantined": "quarantined at 4h", "accepted": "accepted", "rejected": "rejected",
           "unlabelled": "unlabelled"}
STATUS_COLOURS = {"accepted": QColor(40, 160, 40, 90), "rejected": QColor(210, 40, 40, 90)}
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
ID_ROLE = Qt.ItemDataRole.UserRole + 2


def _num(v: float, fmt: str) -> str:
    return "" if not np.isfinite(v) else format(v, fmt)


class UnitTableModel(QAbstractTableModel):
    """One row per unit of a :class:`~mps_core.curation.UnitTable`, labels from a
    :class:`~mps_core.curation.Curation` (call :meth:`refresh` after changing it)."""

    def __init__(self, table: UnitTable, curation: Curation, parent=None) -> None:
        super().__init__(parent)
        self.table = table
        self.curation = curation
        self.row_of = table.index()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 -- Qt's name
        return 0 if parent.isValid() else len(self.table)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return TIPS[section]
        return None

    def unit_id(self, row: int) -> int:
        return int(self.table.unit_id[row])

    def origin_text(self, row: int) -> str:
        origin = str(self.table.origin[row])
        reason = self.table.reason[row]
        return ORIGIN_WORDS[origin] + (f": {reason}" if reason and origin != "kept" else "")

    def _values(self, row: int, col: int):
        t, uid = self.table, self.unit_id(row)
        if col == 0:
            return uid, uid
        if col == 1:
            s = self.curation.status(uid)
            return s, ("accepted", "unlabelled", "rejected").index(s)
        if col == 2:
            return self.origin_text(row), str(t.origin[row])
        if col in (3, 4, 5):
            v = float((t.size_px, t.snr, t.correlation)[col - 3][row])
            key = v if np.isfinite(v) else -np.inf
            return _num(v, (".0f", ".1f", ".2f")[col - 3]), key
        if col == 6:
            g = self.curation.group_of(uid)
            text = ", ".join(str(u) for u in g if u != uid) if g else ""
            return text, text
        note = self.curation.note(uid)
        return note, note

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row, col = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._values(row, col)[0]
        if role == SORT_ROLE:
            return self._values(row, col)[1]
        if role == ID_ROLE:
            return self.unit_id(row)
        if role == Qt.ItemDataRole.BackgroundRole and col == 1:
            c = STATUS_COLOURS.get(self.curation.status(self.unit_id(row)))
            return QBrush(c) if c is not None else None
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == 2 and self.table.origin[row] == "quarantined":
                return (f"{self.origin_text(row)}. Set apart as a likely artifact; it has no "
                        f"traces. Restoring it records the label; its traces need steps 5-8 "
                        f"re-run with it.")
            if col == 2:
                return self.origin_text(row)
            return TIPS[col]
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (0, 3, 4, 5):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def refresh(self, ids=None) -> None:
        """Redraw rows after a label change (all rows when ``ids`` is None)."""
        if ids is None or not len(self.table):
            if len(self.table):
                self.dataChanged.emit(self.index(0, 0),
                                      self.index(len(self.table) - 1, len(COLUMNS) - 1))
            return
        for u in ids:
            r = self.row_of.get(int(u))
            if r is not None:
                self.dataChanged.emit(self.index(r, 0), self.index(r, len(COLUMNS) - 1))


class UnitFilter(QSortFilterProxyModel):
    """Sorts on the raw values (numbers as numbers) and keeps the rows of one view."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.view = "all"

    def set_view(self, view: str) -> None:
        if view not in FILTERS:
            raise ValueError(f"unit table view '{view}': allowed values are "
                             f"{', '.join(FILTERS)}")
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9; invalidateFilter is deprecated
            self.beginFilterChange()
            self.view = view
            self.endFilterChange()
        else:
            self.view = view
            self.invalidateFilter()

    def filterAcceptsRow(self, row, parent) -> bool:  # noqa: N802 -- Qt's name
        if self.view == "all":
            return True
        m: UnitTableModel = self.sourceModel()
        if self.view in ("kept", "removed", "quarantined"):
            return str(m.table.origin[row]) == self.view
        return m.curation.status(m.unit_id(row)) == self.view

    def lessThan(self, left, right) -> bool:  # noqa: N802
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        try:
            return a < b
        except TypeError:
            return str(a) < str(b)


class UnitTableView(QTableView):
    """The sortable table; whole rows are selected, several with Ctrl / Shift."""

    def __init__(self, model: UnitTableModel, parent=None) -> None:
        super().__init__(parent)
        self.source = model
        self.proxy = UnitFilter(self)
        self.proxy.setSourceModel(model)
        self.setModel(self.proxy)
        self.setSortingEnabled(True)
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(20)
        head = self.horizontalHeader()
        head.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        head.setStretchLastSection(True)
        for col, width in enumerate((48, 74, 250, 62, 46, 46, 80)):
            self.setColumnWidth(col, width)

    def selected_ids(self) -> list[int]:
        rows = self.selectionModel().selectedRows() if self.selectionModel() else []
        return [int(self.proxy.data(r, ID_ROLE)) for r in rows]

    def select_ids(self, ids) -> None:
        """Select exactly these units' rows (hidden rows stay unselected) and show the first."""
        from PySide6.QtCore import QItemSelection, QItemSelectionModel

        sel = QItemSelection()
        first = None
        for u in ids:
            r = self.source.row_of.get(int(u))
            if r is None:
                continue
            idx = self.proxy.mapFromSource(self.source.index(r, 0))
            if not idx.isValid():
                continue
            sel.select(idx, self.proxy.index(idx.row(), len(COLUMNS) - 1))
            first = first or idx
        flags = (QItemSelectionModel.SelectionFlag.ClearAndSelect
                 | QItemSelectionModel.SelectionFlag.Rows)
        self.selectionModel().select(sel, flags)
        if first is not None:
            self.selectionModel().setCurrentIndex(first, QItemSelectionModel.SelectionFlag.NoUpdate)
            self.scrollTo(first)
