"""Checks that the frozen bundle carries everything MPS imports, without a display.

Run by the frozen executable as ``mps-gui --frozen-self-check [NAME ...]`` (see entry_gui.py);
installer/ci_check.sh calls it after a build. Each check exercises one bundled dependency the
way MPS uses it and prints one line; the exit status is 0 only when every check passed.

The process-cluster check starts a ``distributed.LocalCluster`` with worker *processes*:
they are spawned by re-running the frozen executable (``multiprocessing.freeze_support()`` in
entry_gui.py), so it shows that MPS's functions run in such workers, not only in threads.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np


def check_data() -> str:
    """The user guide and the parameter presets are bundled where the app looks for them."""
    from mps_core.demo import demo_params_path
    from mps_core.docsgen import docs_dir, step_page

    docs = docs_dir()
    if docs is None:
        raise RuntimeError("docs_dir() found no user guide in the bundle")
    if step_page("1", docs) is None:
        raise RuntimeError(f"no page for step 1 in {docs}")
    if demo_params_path() is None:
        raise RuntimeError("params/demo.json is not bundled")
    return f"docs at {docs}"


def check_imports() -> str:
    """Every step and every GUI module imports (hidden imports collected)."""
    import pkgutil

    import mps_core
    import mps_gui
    from mps_core.steps import STEPS

    names = []
    for pkg in (mps_core, mps_gui):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            __import__(mod.name)
            names.append(mod.name)
    return f"{len(STEPS)} steps, {len(names)} modules"


def check_threads() -> str:
    """dask's threaded scheduler, the default MPS runs on, through MPS's Execution."""
    import dask.array as da

    from mps_core.execution import Execution

    x = da.arange(1_000_000, chunks=50_000, dtype="f8")
    with Execution(n_workers=2, memory_limit_gb=0.5) as ex:
        (total,) = ex.compute(x.sum())
    if total != 999_999 * 1_000_000 / 2:
        raise RuntimeError(f"wrong sum {total}")
    return "threaded sum of 20 chunks"


def _worker_facts() -> tuple[int, str, bool]:
    return os.getpid(), sys.executable, bool(getattr(sys, "frozen", False))


def _small_movie_sum(seed: int) -> float:
    from mps_core.synth import simulate

    rec = simulate(n_frames=20, height=48, width=48, n_cells=2, cell_diameter=6.0, seed=seed)
    return float(np.asarray(rec.movie, dtype="f8").sum())


def check_process_cluster() -> str:
    """A LocalCluster with worker processes: they re-enter this executable and run MPS code."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as cluster, \
            Client(cluster, timeout="120s") as client:
        facts = client.run(_worker_facts)
        for addr, (pid, exe, frozen) in facts.items():
            if pid == os.getpid() or exe != sys.executable or frozen != bool(
                    getattr(sys, "frozen", False)):
                raise RuntimeError(f"worker {addr}: pid {pid}, executable {exe}, "
                                   f"frozen {frozen}")
        remote = client.gather(client.map(_small_movie_sum, [1, 2]))
    local = [_small_movie_sum(1), _small_movie_sum(2)]
    if not np.allclose(remote, local):
        raise RuntimeError(f"workers computed {remote}, this process {local}")
    return f"{len(facts)} worker processes ran {Path(sys.executable).name}"


def check_numba() -> str:
    """numba and llvmlite load, and MPS's deconvolution kernels are compiled, not the
    pure-Python fallback deconv.py uses when numba cannot be imported."""
    import numba
    from numba.core.registry import CPUDispatcher

    from mps_core.cnmf import deconv

    if not isinstance(deconv._oasis_ar1, CPUDispatcher):
        raise RuntimeError("mps_core.cnmf.deconv runs without numba (import failed)")
    y = np.r_[np.zeros(5), 3.0, 2.7, 2.43, 2.19, np.zeros(5)]
    deconv.deconvolve_fast(y, np.array([0.9]), 0.1)
    if not deconv._oasis_ar1.signatures:
        raise RuntimeError("the numba kernel was not compiled")
    return f"numba {numba.__version__}, kernels compiled"


def check_cvxpy() -> str:
    """cvxpy with the solvers MPS's reference deconvolution uses (ECOS, then SCS)."""
    from mps_core.cnmf.deconv import deconvolve_cvxpy, deconvolve_fast

    rng = np.random.default_rng(0)
    s = (rng.random(200) < 0.05) * rng.random(200) * 5
    c = np.zeros(200)
    for t in range(200):
        c[t] = s[t] + (0.9 * c[t - 1] if t else 0.0)
    y = c + 1.0 + rng.normal(0, 0.1, 200)
    g = np.array([0.9])
    out = []
    for name in ("ECOS", "SCS"):
        res = deconvolve_cvxpy(y, g, 0.5, solver_order=(name,))
        out.append(f"{name} {res.status}")
    fast = deconvolve_fast(y, g, 0.5)  # MPS's own solver, the reference must agree
    ref = deconvolve_cvxpy(y, g, 0.5, solver_order=("ECOS",))
    if not np.allclose(fast.c, ref.c, atol=1e-3 * max(1.0, np.abs(ref.c).max())):
        raise RuntimeError("numba and ECOS solutions differ")
    return ", ".join(out) + ", MPS's fast solver agrees"


def check_io(tmp: Path) -> str:
    """zarr 3 + numcodecs via xarray, tifffile, OpenCV's MP4 writer, matplotlib's Agg."""
    import cv2
    import matplotlib
    import tifffile
    import xarray as xr

    arr = xr.DataArray(np.arange(60, dtype="f4").reshape(3, 4, 5), dims=("frame", "y", "x"))
    arr.to_dataset(name="a").chunk({"frame": 1}).to_zarr(tmp / "t.zarr", mode="w",
                                                       consolidated=False)
    back = xr.open_zarr(tmp / "t.zarr", consolidated=False)["a"].values
    if not np.array_equal(back, arr.values):
        raise RuntimeError("zarr round trip differs")
    tifffile.imwrite(tmp / "t.tif", arr.values)
    if not np.array_equal(tifffile.imread(tmp / "t.tif"), arr.values):
        raise RuntimeError("tiff round trip differs")
    writer = cv2.VideoWriter(str(tmp / "t.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20.0,
                             (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    cap = cv2.VideoCapture(str(tmp / "t.mp4"))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    if n != 10:
        raise RuntimeError(f"MP4 written by OpenCV has {n} frames, expected 10")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 2))
    fig.gca().plot([0, 1], [1, 0])
    fig.savefig(tmp / "t.png")
    plt.close(fig)
    return "zarr, tiff, mp4 (OpenCV), png (Agg)"


def check_nwb(tmp: Path) -> str:
    """pynwb with its schema files and the ndx-miniscope extension (the NWB export's device):
    both load their YAML specs from package data, which a freeze can leave behind."""
    from datetime import datetime, timezone

    import pynwb
    from ndx_miniscope import Miniscope
    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile(session_description="self-check", identifier="frozen-check",
                  session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    nwb.add_device(Miniscope(name="Miniscope", deviceType="Miniscope_V4_BNO", framesPerFile=1000))
    with NWBHDF5IO(str(tmp / "t.nwb"), "w") as io:
        io.write(nwb)
    with NWBHDF5IO(str(tmp / "t.nwb"), "r") as io:
        dev = io.read().devices["Miniscope"]
        if (dev.deviceType, int(dev.framesPerFile)) != ("Miniscope_V4_BNO", 1000):
            raise RuntimeError(f"Miniscope device read back as {dev}")
    return f"pynwb {pynwb.__version__}, ndx-miniscope device round trip"


CHECKS: dict[str, Callable[..., str]] = {
    "data": check_data, "imports": check_imports, "threads": check_threads,
    "process-cluster": check_process_cluster, "numba": check_numba, "cvxpy": check_cvxpy,
    "io": check_io, "nwb": check_nwb,
}


def main(argv: list[str]) -> int:
    """Run the named checks (all when none is named); 0 when every one passed."""
    unknown = [n for n in argv if n not in CHECKS]
    if unknown:
        print(f"frozen self-check: unknown check(s) {unknown}; allowed: {list(CHECKS)}",
              file=sys.stderr)
        return 2
    failed = 0
    with tempfile.TemporaryDirectory(prefix="mps-selfcheck-") as tmp:
        for name in argv or list(CHECKS):
            fn = CHECKS[name]
            t0 = time.perf_counter()
            try:
                detail = fn(Path(tmp)) if name in ("io", "nwb") else fn()
                print(f"ok      {name:16s} {time.perf_counter() - t0:6.1f} s  {detail}",
                      flush=True)
            except Exception:  # noqa: BLE001 -- report every failing check, then fail
                failed += 1
                print(f"FAILED  {name:16s} {time.perf_counter() - t0:6.1f} s", flush=True)
                traceback.print_exc()
    total = len(argv or CHECKS)
    # worded so CI does not mistake it for the test runner's closing "N passed, N failed"
    print(f"frozen self-check: {failed} of {total} checks failed" if failed
          else f"frozen self-check: all {total} check{'s' * (total != 1)} passed")
    return 1 if failed else 0
