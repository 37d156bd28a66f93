"""The numbered step list on the left, grouped by stage, each step with its status."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QHeaderView, QTreeWidget, QTreeWidgetItem

STATUS_COLOURS = {
    "not run": "#6b6b6b", "running": "#1565c0", "done": "#2e7d32", "stale": "#e65100",
    "failed": "#c62828", "not available yet": "#9e9e9e",
}
STATUS_MARKS = {"not run": "○", "running": "▶", "done": "●", "stale": "◐", "failed": "✕",
                "not available yet": "–"}


class StepList(QTreeWidget):
    step_selected = Signal(str)

    def __init__(self, steps, parent=None):
        super().__init__(parent)
        self.setHeaderLabels(["Step", "Status"])
        self.setRootIsDecorated(False)
        self.items: dict[str, QTreeWidgetItem] = {}
        stages: dict[str, QTreeWidgetItem] = {}
        for s in steps:
            parent_item = stages.get(s.stage)
            if parent_item is None:
                parent_item = stages[s.stage] = QTreeWidgetItem(self, [s.stage])
                parent_item.setFirstColumnSpanned(True)
                parent_item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                f = parent_item.font(0)
                f.setBold(True)
                parent_item.setFont(0, f)
                parent_item.setExpanded(True)
            item = QTreeWidgetItem(parent_item, [f"{s.id}  {s.title}", ""])
            item.setData(0, Qt.ItemDataRole.UserRole, s.id)
            item.setToolTip(0, s.summary)
            self.items[s.id] = item
            self.set_status(s.id, "not run" if s.implemented else "not available yet")
        # titles take the room left; the status column is always fully visible
        header = self.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.setMinimumWidth(300)
        self.currentItemChanged.connect(self._changed)

    def set_status(self, step_id: str, status: str) -> None:
        item = self.items[step_id]
        item.setText(1, f"{STATUS_MARKS.get(status, '')} {status}")
        item.setToolTip(1, status)
        item.setForeground(1, QBrush(QColor(STATUS_COLOURS.get(status, "#000000"))))
        item.setData(1, Qt.ItemDataRole.UserRole, status)

    def status(self, step_id: str) -> str:
        return self.items[step_id].data(1, Qt.ItemDataRole.UserRole)

    def select(self, step_id: str) -> None:
        self.setCurrentItem(self.items[step_id])

    def _changed(self, current, _previous) -> None:
        if current is None:
            return
        sid = current.data(0, Qt.ItemDataRole.UserRole)
        if sid:
            self.step_selected.emit(sid)
