"""Entry script of the frozen MPS application (the `mps-gui` executable of the bundle).

PyInstaller runs this file as ``__main__``. Worker processes (multiprocessing's spawn, e.g. a
dask ``LocalCluster`` with processes) re-run this same executable, so
``multiprocessing.freeze_support()`` comes first: in a worker it runs the worker's code and
exits before anything else of the app is imported or any window is opened.

Started under the name ``mps`` (the link install_linux.sh makes in ~/.local/bin), the same
executable is the headless command line, so a frozen install has both without a second copy
of the libraries.

``--frozen-self-check`` (not in ``--help``) checks the bundled libraries without a display and
exits; the installer's CI check uses it (see installer/frozen_check.py).
"""

import multiprocessing
import os
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    if sys.argv[1:2] == ["--frozen-self-check"]:
        from frozen_check import main as check

        sys.exit(check(sys.argv[2:]))
    if os.path.splitext(os.path.basename(sys.argv[0]))[0] == "mps":
        from mps_core.cli import main as run
    else:
        from mps_gui.app import main as run
    sys.exit(run())
