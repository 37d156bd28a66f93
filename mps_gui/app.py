"""`mps-gui`: the desktop application's entry point.

    mps-gui [SESSION_FOLDER]
    mps-gui --smoke-test [--screenshot FILE] [--session FOLDER]

`--smoke-test` builds the main window, opens a session (a small generated one unless
`--session` names one), shows every step page with its plots, saves a screenshot and exits
0, so an install can be checked without a person at the screen.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from pathlib import Path

SMOKE_RECORDING = dict(n_frames=240, height=96, width=96, n_cells=8, cell_diameter=9.0,
                       fps=20.0, max_shift=2.0, noise_sd=3.0, seed=3)


def make_smoke_session(folder: Path, stop: str | None = None) -> Path:
    """A small synthetic recording run through the pipeline; returns the session folder."""
    from mps_core.params import ParamSet
    from mps_core.runner import Runner
    from mps_core.steps import STEPS
    from mps_core.store import SessionStore
    from mps_core.synth import simulate, write_miniscope

    folder = Path(folder)
    rec = simulate(**SMOKE_RECORDING)
    raw = folder / "recording"
    write_miniscope(rec, raw, layout="v4")
    session = folder / "session"
    params = ParamSet(STEPS).with_values("1", {
        "animal_id": "smoke", "session_id": "test", "input_dir": str(raw),
        "output_dir": str(session), "cell_diameter_px": SMOKE_RECORDING["cell_diameter"],
        "n_workers": 1, "memory_limit_gb": 1.0})
    params = params.with_values("3a", {"use_full_frame": True})
    Runner(STEPS, params, SessionStore(session)).run(None, stop)
    return session


# The system libraries Qt's Linux (xcb) platform plugin links to. Qt finds a missing one only
# while creating the QApplication, and then aborts the process (no exception to catch), so
# the app checks them first and names what to install.
XCB_LIBRARIES = ("libxcb.so.1", "libX11-xcb.so.1", "libxcb-cursor.so.0", "libxcb-icccm.so.4",
                 "libxcb-image.so.0", "libxcb-keysyms.so.1", "libxcb-randr.so.0",
                 "libxcb-render-util.so.0", "libxcb-shape.so.0", "libxcb-xkb.so.1",
                 "libxkbcommon.so.0", "libxkbcommon-x11.so.0", "libEGL.so.1", "libGL.so.1",
                 "libfontconfig.so.1", "libdbus-1.so.3")


def _debian_package(soname: str) -> str:
    """The Debian/Ubuntu package shipping a library: 'libxcb-cursor.so.0' -> 'libxcb-cursor0',
    'libxkbcommon-x11.so.0' -> 'libxkbcommon-x11-0' (a dash when the stem ends in a digit)."""
    stem, _, version = soname.partition(".so")
    stem, version = stem.lower(), version.lstrip(".").split(".")[0]
    return stem + ("-" if stem[-1:].isdigit() else "") + version


def _xcb_plugin() -> Path | None:
    """Qt's xcb platform plugin file (in PySide6, or in the frozen bundle), None if not found."""
    import os

    folders = [p for p in os.environ.get("QT_PLUGIN_PATH", "").split(os.pathsep) if p]
    try:
        import PySide6
        from PySide6.QtCore import QLibraryInfo

        folders.append(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath))
        folders.append(str(Path(PySide6.__file__).parent / "Qt" / "plugins"))
    except ImportError:
        return None
    for folder in folders:
        plugin = Path(folder) / "platforms" / "libqxcb.so"
        if plugin.is_file():
            return plugin
    return None


def _library_in_error(e: OSError) -> str | None:
    """The library a loader error is about: 'libxcb.so.1: cannot open shared object file'.

    In the frozen app PyInstaller's ctypes re-raises the loader's error with a message naming
    the library asked for; the loader's own text (naming the culprit) is its cause."""
    import re

    if isinstance(e.__cause__, OSError):
        e = e.__cause__
    found = re.findall(r"[\w.+-]+\.so(?:\.\d+)*", Path(str(e).split(":")[0]).name)
    return found[0] if found else None


def _missing_libraries(names: tuple[str, ...]) -> list[str]:
    """The libraries that stop any of ``names`` from loading: the library itself when it is
    absent or broken, else the dependency of it that is (so one missing libxcb is reported
    once, not as every xcb library that needs it)."""
    import ctypes

    missing = []
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError as e:
            culprit = _library_in_error(e) or name
            if culprit not in missing:
                missing.append(culprit)
    return missing


def _uses_xcb(env) -> bool:
    """Whether Qt would start with the xcb plugin and nothing to fall back to."""
    wanted = [p.split(":")[0].strip() for p in env.get("QT_QPA_PLATFORM", "").split(";")]
    wanted = [p for p in wanted if p]
    if wanted:
        return all(p == "xcb" for p in wanted)
    # unset: Qt prefers Wayland in a Wayland session and falls back to xcb, else xcb alone
    return not (env.get("WAYLAND_DISPLAY") or env.get("XDG_SESSION_TYPE") == "wayland")


def _qt_platform_problem(env=None) -> str | None:
    """Why creating the QApplication would abort the process, or None when it should start.

    Linux only: no X display to connect to, or a system library of the xcb plugin missing
    (the message names the packages to install). Other platforms are left to Qt.
    """
    import ctypes
    import os

    env = os.environ if env is None else env
    if not sys.platform.startswith("linux") or not _uses_xcb(env):
        return None
    if not env.get("DISPLAY"):
        return ("no graphical display: DISPLAY is not set.\nStart MPS from a desktop "
                "session, or run the pipeline headless with the 'mps' command.")
    plugin = _xcb_plugin()
    if plugin is None:
        return None  # nothing to check against: let Qt report
    try:
        ctypes.CDLL(str(plugin))
    except OSError as e:
        missing = _missing_libraries(XCB_LIBRARIES)
        culprit = _library_in_error(e)
        if culprit and culprit != plugin.name and culprit not in missing:
            missing.append(culprit)
        if not missing:
            return f"Qt's display plugin cannot be loaded: {e.__cause__ or e}"
        pkgs = " ".join(dict.fromkeys(_debian_package(n) for n in missing))
        return ("system libraries needed to open windows are missing:\n  "
                + ", ".join(missing) + "\nInstall them; on Debian/Ubuntu:\n"
                f"  sudo apt-get install {pkgs}\n(elsewhere: the packages that provide "
                "these files)")
    if not _display_reachable(env["DISPLAY"]):
        return (f"cannot connect to the X display {env['DISPLAY']!r} (DISPLAY).\nIs the "
                "desktop session running, and is this user allowed to use it?")
    return None


def _display_reachable(display: str) -> bool:
    """Whether an X connection to ``display`` can be opened (Qt aborts when it cannot)."""
    import ctypes

    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return True  # cannot check here; the plugin loaded, so let Qt try
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    conn = xcb.xcb_connect(display.encode(), None)
    try:
        return not xcb.xcb_connection_has_error(conn)
    finally:
        xcb.xcb_disconnect(conn)  # also frees the error object xcb returns on failure


def _show_without_qt(text: str) -> None:
    """Best effort to show ``text`` in a window when the app was not started from a terminal
    (a desktop shortcut has nowhere to print to), with whatever dialog tool the system has."""
    import os
    import shutil
    import subprocess

    started_from_terminal = sys.stdin is not None and sys.stdin.isatty()
    if os.environ.get("MPS_NO_DIALOG") or not os.environ.get("DISPLAY") or started_from_terminal:
        return
    for cmd in (["zenity", "--error", "--title=MPS", "--text", text],
                ["kdialog", "--title", "MPS", "--error", text],
                ["xmessage", "-center", text]):
        if shutil.which(cmd[0]):
            try:
                subprocess.run(cmd, check=False, timeout=600)
                return
            except (OSError, subprocess.SubprocessError):
                continue


def _cannot_start_qt(e: BaseException | str) -> int:
    text = f"mps-gui: cannot start the graphical interface:\n{e}"
    if isinstance(e, BaseException):
        text += ("\nOn Linux this usually means a system library is missing: install "
                 "libxkbcommon-x11-0, libxcb-cursor0 and libegl1 (e.g. sudo apt-get install "
                 "libxkbcommon-x11-0 libxcb-cursor0 libegl1), or run headless with the 'mps' "
                 "command.")
    print(text, file=sys.stderr)
    _show_without_qt(text)
    return 1


def main(argv: list[str] | None = None) -> int:
    multiprocessing.freeze_support()
    from mps_core.memwatch import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread exists
    ap = argparse.ArgumentParser(prog="mps-gui", description="MPS desktop application")
    ap.add_argument("session", nargs="?", type=Path, help="a session output folder to open")
    ap.add_argument("--smoke-test", action="store_true",
                    help="open a session, show every page, save a screenshot, exit")
    ap.add_argument("--screenshot", type=Path, default=Path("mps-gui-smoke.png"))
    ap.add_argument("--settings", type=Path, help="settings file (INI) instead of the user's")
    args = ap.parse_args(argv)
    problem = _qt_platform_problem()  # before Qt can abort the process
    if problem:
        return _cannot_start_qt(problem)
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError as e:
        return _cannot_start_qt(e)
    try:
        app = QApplication.instance() or QApplication(sys.argv[:1])
    except Exception as e:  # noqa: BLE001 -- e.g. no platform plugin could be loaded
        return _cannot_start_qt(e)
    app.setApplicationName("MPS")
    app.setOrganizationName("MPS")
    from .main_window import MainWindow
    from .settings import Settings

    if args.smoke_test:
        return smoke_test(app, args.session, args.screenshot, args.settings)
    settings = Settings(args.settings) if args.settings else Settings()
    win = MainWindow(settings=settings)
    if args.session is not None:
        win.open_session(args.session)
    win.show()
    return app.exec()


def smoke_test(app, session: Path | None, screenshot: Path, settings_path: Path | None) -> int:
    """Open a session, visit every page (plots drawn), save a screenshot of the last one."""
    from .main_window import MainWindow
    from .settings import Settings

    with tempfile.TemporaryDirectory(prefix="mps-smoke-") as tmp:
        if session is None:
            print("mps-gui: generating a small session...", file=sys.stderr)
            session = make_smoke_session(Path(tmp))
        settings = Settings(settings_path or Path(tmp) / "settings.ini")
        win = MainWindow(settings=settings)
        win.show_error = lambda title, text: print(f"mps-gui: {title}: {text}", file=sys.stderr)
        win.resize(1500, 900)
        win.show()
        if not win.open_session(session):
            return 1
        problems = []
        for s in win.steps:
            win.show_step(s.id)
            app.processEvents()
            win.preview.wait(60000)
            app.processEvents()
            if win.step_list.status(s.id) not in ("done", "not available yet"):
                problems.append(f"{s.id}: {win.step_list.status(s.id)}")
        win.show_step("4e" if "4e" in win.pages else win.steps[-1].id)
        win.preview.wait(60000)
        _settle(app)
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        ok = win.grab().save(str(screenshot))
        win.close()
        app.processEvents()
        if problems:
            print("mps-gui: steps not done in the session: " + ", ".join(problems),
                  file=sys.stderr)
        print(f"mps-gui: smoke test {'passed' if ok else 'failed'}; screenshot {screenshot}")
        return 0 if ok else 1


def _settle(app, seconds: float = 0.5) -> None:
    """Let queued signals, layouts and the first paint of the plots happen."""
    import time

    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
