"""The installers: names, version, executable and icon agree across files; the Linux
install/uninstall scripts work on a stand-in bundle; the app's start-up check turns a missing
display or xcb library into a readable message; the frozen user guide is found.

The real freeze takes minutes, so ``test_frozen_build`` runs only with MPS_BUILD_FROZEN=1
(it calls installer/ci_check.sh with its output in tmp_path).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INST = ROOT / "installer"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scripts")


def spec_constants() -> dict[str, str]:
    """The upper-case string constants assigned at the top level of installer/mps.spec."""
    tree = ast.parse((INST / "mps.spec").read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            out[node.targets[0].id] = node.value.value
    return out


def iss_defines() -> dict[str, str]:
    text = (INST / "windows" / "mps.iss").read_text(encoding="utf-8")
    return dict(re.findall(r'^\s*#define\s+(\w+)\s+"([^"]*)"', text, re.M))


def iss_setup() -> dict[str, str]:
    text = (INST / "windows" / "mps.iss").read_text(encoding="utf-8")
    section = text.split("[Setup]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r"^(\w+)=(.*)$", section, re.M))


def desktop_entry(text: str) -> dict[str, str]:
    assert text.startswith("[Desktop Entry]\n")
    return dict(line.split("=", 1) for line in text.splitlines()[1:] if "=" in line)


# ------------------------------------------------------------------ cross-file consistency


def test_spec_names_match_pyproject():
    c = spec_constants()
    assert c["EXE_NAME"] in PROJECT["scripts"]
    assert PROJECT["scripts"][c["EXE_NAME"]] == "mps_gui.app:main"
    assert c["APP_NAME"] == "MPS"
    spec = (INST / "mps.spec").read_text(encoding="utf-8")
    # the version is read from pyproject.toml, never written into the spec
    assert 'VERSION = PROJECT["version"]' in spec
    assert PROJECT["version"] not in spec
    assert "imageio-ffmpeg is deliberately NOT a dependency" in spec
    assert not any("imageio-ffmpeg" in d or "imageio_ffmpeg" in d
                   for d in PROJECT["dependencies"])


def test_version_agrees_everywhere():
    import mps_core

    version = PROJECT["version"]
    assert mps_core.__version__ == version
    assert iss_defines()["AppVersion"] == version
    entry = desktop_entry((INST / "linux" / "mps.desktop.in").read_text(encoding="utf-8"))
    assert entry["X-MPS-Version"] == "@VERSION@"  # filled in by install_linux.sh


def test_windows_script_matches_spec_and_pyproject():
    c, d, setup = spec_constants(), iss_defines(), iss_setup()
    assert d["AppName"] == c["APP_NAME"]
    assert d["AppExeName"] == c["EXE_NAME"] + ".exe"
    assert d["BundleDir"].replace("\\", "/").endswith("dist/" + c["BUNDLE_DIR"])
    assert setup["PrivilegesRequired"] == "lowest"  # per-user install
    assert setup["AppVersion"] == "{#AppVersion}"
    assert "{#AppVersion}" in setup["OutputBaseFilename"]
    here = INST / "windows"
    for key in ("SetupIconFile", "LicenseFile"):
        assert (here / setup[key].replace("\\", "/")).is_file(), key
    assert Path(setup["SetupIconFile"].replace("\\", "/")).name == "mps.ico"
    text = (here / "mps.iss").read_text(encoding="utf-8")
    assert re.search(r'^Name: "desktopicon".*Flags: unchecked', text, re.M)
    assert re.search(r'^Name: "\{autoprograms\}\\\{#AppName\}"; Filename: "\{app\}\\\{#AppExeName\}"',
                     text, re.M)
    assert re.search(r'^Name: "\{autodesktop\}.*Tasks: desktopicon', text, re.M)
    # the build script passes the version read from pyproject.toml
    ps1 = (here / "build_windows.ps1").read_text(encoding="utf-8")
    assert "pyproject.toml" in ps1 and "/DAppVersion=$Version" in ps1
    assert "installer\\mps.spec" in ps1 and "installer\\windows\\mps.iss" in ps1


def test_desktop_entry_template_matches_spec():
    c = spec_constants()
    entry = desktop_entry((INST / "linux" / "mps.desktop.in").read_text(encoding="utf-8"))
    assert entry["Name"] == c["APP_NAME"]
    assert entry["Type"] == "Application" and entry["Terminal"] == "false"
    assert entry["Exec"] == '"@EXEC@"' and entry["TryExec"] == "@EXEC@"
    assert entry["Icon"] == "@ICON@"
    assert "Science" in entry["Categories"].split(";")
    # the window class Qt gives the main window is the app name set in mps_gui.app.main
    assert entry["StartupWMClass"] == c["APP_NAME"]
    assert f'app.setApplicationName("{c["APP_NAME"]}")' in (ROOT / "mps_gui" / "app.py").read_text()
    install = (INST / "install_linux.sh").read_text(encoding="utf-8")
    assert f'$APP/{c["EXE_NAME"]}' in install  # the exec path the entry gets


def test_icons_exist_in_every_format_and_the_spec_uses_them():
    from PIL import Image
    import xml.etree.ElementTree as ET

    icons = INST / "icons"
    png = Image.open(icons / "mps.png")
    assert png.size == (256, 256) and png.mode == "RGBA"
    ico = Image.open(icons / "mps.ico")
    assert (256, 256) in ico.info["sizes"] and (16, 16) in ico.info["sizes"]
    assert Image.open(icons / "mps.icns").size[0] >= 512
    assert ET.parse(icons / "mps.svg").getroot().tag.endswith("svg")
    spec = (INST / "mps.spec").read_text(encoding="utf-8")
    for name in ("mps.ico", "mps.icns", "mps.png", "mps.svg"):
        assert name in spec


def test_icon_script_reproduces_the_committed_png(tmp_path):
    sys.path.insert(0, str(INST / "icons"))
    try:
        import make_icon
    finally:
        sys.path.pop(0)
    from PIL import Image
    import numpy as np

    make_icon.write_all(tmp_path)
    new = np.asarray(Image.open(tmp_path / "mps.png"))
    old = np.asarray(Image.open(INST / "icons" / "mps.png"))
    assert np.array_equal(new, old)
    assert (tmp_path / "mps.svg").read_text() == (INST / "icons" / "mps.svg").read_text()


def test_build_tools_are_pinned_and_scripts_use_the_pins():
    reqs = [ln for ln in (INST / "build-requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert {r.split("==")[0] for r in reqs} == {"pyinstaller", "pyinstaller-hooks-contrib"}
    assert all(re.fullmatch(r"[\w-]+==[\d.]+", r) for r in reqs)
    for script in ("build_linux.sh", "macos/build_macos.sh", "windows/build_windows.ps1"):
        text = (INST / script).read_text(encoding="utf-8")
        assert "build-requirements.txt" in text, script
        assert "mps.spec" in text, script


def test_entry_script_calls_freeze_support_first():
    tree = ast.parse((INST / "entry_gui.py").read_text(encoding="utf-8"))
    main_block = [n for n in tree.body if isinstance(n, ast.If)][0]
    first = main_block.body[0]
    assert ast.unparse(first) == "multiprocessing.freeze_support()"


# ----------------------------------------------------------- Linux install / uninstall


def fake_bundle(folder: Path) -> Path:
    """A stand-in for dist/mps: an executable that says it started, and the icons."""
    bundle = folder / "mps"
    (bundle / "_internal" / "icons").mkdir(parents=True)
    exe = bundle / "mps-gui"
    exe.write_text('#!/bin/sh\necho "MPS started $*"\n')
    exe.chmod(0o755)
    (bundle / "VERSION").write_text(PROJECT["version"] + "\n")
    for name in ("mps.png", "mps.svg"):
        shutil.copy(INST / "icons" / name, bundle / "_internal" / "icons" / name)
    return bundle


def run_script(script: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env["HOME"] = str(home)
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                          text=True, timeout=60)


@linux_only
def test_install_writes_a_working_desktop_entry_and_uninstall_removes_it(tmp_path):
    home = tmp_path / "home with space"
    apps = home / ".local" / "share" / "applications"
    apps.mkdir(parents=True)
    (apps / "other.desktop").write_text("[Desktop Entry]\nName=Other\n")  # not ours
    bundle = fake_bundle(tmp_path / "build")
    r = run_script(INST / "install_linux.sh", "--desktop", str(bundle), home=home)
    assert r.returncode == 0, r.stderr

    entry_file = apps / "mps.desktop"
    entry = desktop_entry(entry_file.read_text())
    assert entry["Name"] == "MPS" and entry["X-MPS-Version"] == PROJECT["version"]
    argv = shlex.split(entry["Exec"])
    exe = Path(argv[0])
    assert exe == home / ".local" / "share" / "mps" / "mps-gui"
    assert os.access(exe, os.X_OK) and entry["TryExec"] == str(exe)
    assert Path(entry["Icon"]).is_file() and Path(entry["Icon"]).suffix == ".png"
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "MPS started"
    if shutil.which("desktop-file-validate"):  # desktop-file-utils, where installed
        v = subprocess.run(["desktop-file-validate", str(entry_file)], capture_output=True,
                           text=True, timeout=30)
        assert v.returncode == 0, v.stdout + v.stderr
    assert (home / "Desktop" / "mps.desktop").read_text() == entry_file.read_text()
    assert (home / ".local" / "bin" / "mps-gui").resolve() == exe
    assert (home / ".local" / "bin" / "mps").resolve() == exe  # started as `mps`: the CLI

    # reinstall from the tarball (an upgrade), without the desktop launcher
    tarball = tmp_path / "mps.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(bundle, arcname="mps")
    r = run_script(INST / "install_linux.sh", str(tarball), home=home)
    assert r.returncode == 0, r.stderr
    assert entry_file.is_file() and not (home / "Desktop" / "mps.desktop").exists()

    uninstall = home / ".local" / "share" / "mps" / "uninstall_linux.sh"
    r = run_script(uninstall, home=home)
    assert r.returncode == 0, r.stderr
    assert not entry_file.exists() and not exe.exists() and not Path(entry["Icon"]).exists()
    assert not (home / ".local" / "bin" / "mps-gui").is_symlink()
    assert not (home / ".local" / "bin" / "mps").is_symlink()
    assert not (home / ".local" / "share" / "mps").exists()
    assert (apps / "other.desktop").is_file()


@linux_only
def test_install_keeps_an_mps_command_that_is_not_its_own(tmp_path):
    home = tmp_path / "home"
    own = home / ".local" / "bin" / "mps"
    own.parent.mkdir(parents=True)
    own.write_text("#!/bin/sh\necho pip-installed mps\n")
    r = run_script(INST / "install_linux.sh", str(fake_bundle(tmp_path)), home=home)
    assert r.returncode == 0, r.stderr
    assert "left as it is" in r.stdout
    r = run_script(home / ".local" / "share" / "mps" / "uninstall_linux.sh", home=home)
    assert r.returncode == 0, r.stderr
    assert own.read_text() == "#!/bin/sh\necho pip-installed mps\n"


@linux_only
def test_install_refuses_a_folder_that_is_not_a_build(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_script(INST / "install_linux.sh", str(tmp_path / "empty"), home=tmp_path / "h")
    assert r.returncode == 1 and "not an MPS build" in r.stderr
    assert not (tmp_path / "h" / ".local" / "share" / "mps").exists()
    r = run_script(INST / "install_linux.sh", "--bogus", home=tmp_path / "h")
    assert r.returncode == 2 and "--desktop" in r.stderr


# ------------------------------------------------------- start-up without a usable display


def test_debian_package_names():
    from mps_gui.app import XCB_LIBRARIES, _debian_package

    assert _debian_package("libxcb-cursor.so.0") == "libxcb-cursor0"
    assert _debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert _debian_package("libdbus-1.so.3") == "libdbus-1-3"
    assert _debian_package("libEGL.so.1") == "libegl1"
    assert _debian_package("libxcb-render-util.so.0") == "libxcb-render-util0"
    assert len({_debian_package(n) for n in XCB_LIBRARIES}) == len(XCB_LIBRARIES)


def test_the_culprit_is_read_from_the_loader_error_even_when_wrapped():
    from mps_gui.app import _library_in_error

    loader = OSError("/tmp/x/libxcb.so.1: cannot open shared object file: No such file")
    assert _library_in_error(loader) == "libxcb.so.1"
    # PyInstaller's frozen ctypes raises its own error "from" the loader's
    wrapped = OSError("Failed to load dynlib/dll 'libxcb-cursor.so.0'. Most likely ...")
    wrapped.__cause__ = loader
    assert _library_in_error(wrapped) == "libxcb.so.1"
    assert _library_in_error(OSError("something else")) is None


def test_which_platform_is_checked():
    from mps_gui.app import _qt_platform_problem, _uses_xcb

    assert _uses_xcb({}) and _uses_xcb({"QT_QPA_PLATFORM": "xcb"})
    assert not _uses_xcb({"QT_QPA_PLATFORM": "offscreen"})
    assert not _uses_xcb({"QT_QPA_PLATFORM": "xcb;offscreen"})  # Qt falls back
    assert not _uses_xcb({"WAYLAND_DISPLAY": "wayland-0"})
    assert _qt_platform_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    if sys.platform.startswith("linux"):
        msg = _qt_platform_problem({"QT_QPA_PLATFORM": "xcb"})
        assert msg is not None and "DISPLAY is not set" in msg


def run_gui(env_extra: dict[str, str], drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra, MPS_NO_DIALOG="1")
    return subprocess.run([sys.executable, "-m", "mps_gui.app"], env=env, cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@linux_only
def test_no_display_gives_a_message_not_an_abort():
    r = run_gui({"QT_QPA_PLATFORM": "xcb"}, drop=("DISPLAY", "WAYLAND_DISPLAY"))
    assert r.returncode == 1, r.stderr  # Qt alone aborts (SIGABRT, -6)
    assert "cannot start the graphical interface" in r.stderr and "DISPLAY is not set" in r.stderr


@linux_only
def test_missing_xcb_library_names_the_package(tmp_path):
    from mps_gui.app import _xcb_plugin

    if _xcb_plugin() is None:
        pytest.skip("this PySide6 has no xcb plugin")
    (tmp_path / "libxcb-cursor.so.0").write_bytes(b"")  # unloadable, as if not installed
    r = run_gui({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":987",
                 "LD_LIBRARY_PATH": str(tmp_path)})
    assert r.returncode == 1, r.stderr
    assert "libxcb-cursor.so.0" in r.stderr
    assert "sudo apt-get install libxcb-cursor0" in r.stderr


@linux_only
def test_a_missing_libxcb_is_named_once_not_through_its_dependants(tmp_path):
    from mps_gui.app import _xcb_plugin

    if _xcb_plugin() is None:
        pytest.skip("this PySide6 has no xcb plugin")
    (tmp_path / "libxcb.so.1").write_bytes(b"")  # every xcb-* library needs this one
    r = run_gui({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":987",
                 "LD_LIBRARY_PATH": str(tmp_path)})
    assert r.returncode == 1, r.stderr
    assert "sudo apt-get install libxcb1\n" in r.stderr
    assert "libxcb-cursor" not in r.stderr


@linux_only
def test_unreachable_display_gives_a_message(tmp_path):
    from mps_gui.app import _missing_libraries, _xcb_plugin

    if _xcb_plugin() is None or _missing_libraries(("libxcb.so.1",)):
        pytest.skip("no xcb here")
    r = run_gui({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":987"})
    if "are missing" in r.stderr:
        pytest.skip("this machine lacks xcb libraries: " + r.stderr)
    assert r.returncode == 1, r.stderr
    assert "cannot connect to the X display ':987'" in r.stderr


# ----------------------------------------------------------------- frozen user guide


def test_docs_dir_finds_the_frozen_bundle(tmp_path, monkeypatch):
    from mps_core import docsgen

    bundle = tmp_path / "_internal"
    (bundle / "docs").mkdir(parents=True)
    (bundle / "docs" / "index.md").write_text("# MPS\n")
    monkeypatch.setattr(docsgen, "__file__", str(tmp_path / "nowhere" / "mps_core" / "x.py"))
    assert docsgen.docs_dir() is None
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    assert docsgen.docs_dir() == bundle / "docs"
    monkeypatch.delattr(sys, "_MEIPASS")
    monkeypatch.setattr(sys, "executable", str(bundle / "mps-gui"))
    assert docsgen.docs_dir() == bundle / "docs"  # next to the executable


# -------------------------------------------------------------------- the real freeze


@linux_only
@pytest.mark.skipif(os.environ.get("MPS_BUILD_FROZEN") != "1",
                    reason="freezing takes minutes: set MPS_BUILD_FROZEN=1")
def test_frozen_build(tmp_path):
    env = dict(os.environ, MPS_DIST_DIR=str(tmp_path / "dist"),
               MPS_WORK_DIR=str(tmp_path / "work"))
    env.setdefault("MPS_BUILD_VENV", str(tmp_path / "venv"))
    r = subprocess.run(["bash", str(INST / "ci_check.sh")], env=env, capture_output=True,
                       text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert re.search(r"frozen self-check: all \d+ checks passed", r.stdout)
    assert "smoke test passed" in r.stdout
