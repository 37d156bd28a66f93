"""What the app remembers between launches: geometry, recent sessions, autorun, defaults.

Backed by QSettings (the platform's usual place); tests pass an INI file path instead so
they never touch the user's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

MAX_RECENT = 8


@dataclass
class AutorunConfig:
    delay_s: float = 1.0        # pause between steps, so a person can glance at each plot
    stop_on_error: bool = True
    autosave: bool = True       # also save the last parameter file used after each run


class Settings:
    def __init__(self, path: Path | None = None):
        if path is None:
            self.q = QSettings("MPS", "MPS")
        else:
            self.q = QSettings(str(path), QSettings.Format.IniFormat)

    @property
    def folder(self) -> Path:
        return Path(self.q.fileName()).parent

    @property
    def default_params_path(self) -> Path:
        """Where "Save parameters as default" writes; new sessions start from it."""
        return self.folder / "mps-default-params.json"

    # -- recent sessions ------------------------------------------------------------------
    def recent_sessions(self) -> list[str]:
        value = self.q.value("recent_sessions", [])
        if isinstance(value, str):  # QSettings gives a bare string for a one-item list
            value = [value]
        return [v for v in (value or []) if v]

    def add_recent(self, folder: Path) -> None:
        folder = str(Path(folder).absolute())
        items = [folder] + [r for r in self.recent_sessions() if r != folder]
        self.q.setValue("recent_sessions", items[:MAX_RECENT])

    # -- geometry ---------------------------------------------------------------------------
    def geometry(self) -> QByteArray | None:
        v = self.q.value("window/geometry")
        return v if isinstance(v, QByteArray) else None

    def window_state(self) -> QByteArray | None:
        v = self.q.value("window/state")
        return v if isinstance(v, QByteArray) else None

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self.q.setValue("window/geometry", geometry)
        self.q.setValue("window/state", state)

    # -- autorun ----------------------------------------------------------------------------
    def autorun(self) -> AutorunConfig:
        d = AutorunConfig()
        return AutorunConfig(
            delay_s=float(self.q.value("autorun/delay_s", d.delay_s)),
            stop_on_error=_bool(self.q.value("autorun/stop_on_error", d.stop_on_error)),
            autosave=_bool(self.q.value("autorun/autosave", d.autosave)))

    def set_autorun(self, cfg: AutorunConfig) -> None:
        self.q.setValue("autorun/delay_s", cfg.delay_s)
        self.q.setValue("autorun/stop_on_error", cfg.stop_on_error)
        self.q.setValue("autorun/autosave", cfg.autosave)

    # -- last parameter file ----------------------------------------------------------------
    def last_params_file(self) -> str:
        return str(self.q.value("last_params_file", "") or "")

    def set_last_params_file(self, path: Path) -> None:
        self.q.setValue("last_params_file", str(path))

    def sync(self) -> None:
        self.q.sync()


def _bool(v) -> bool:
    # INI files give strings back
    return v if isinstance(v, bool) else str(v).lower() in ("true", "1", "yes")
