"""MPS desktop application (PySide6 + pyqtgraph). Only this package imports Qt."""
