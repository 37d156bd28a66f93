"""The whole pipeline on a Dask cluster of worker processes gives the embedded default's results.

A LocalCluster with 2 worker *processes* (one thread each) stands in for lab machines: every
task is pickled and run in another process, so global state the workers cannot see, objects
that cannot be shipped, or file handles opened in the main process would break the run or
change its results. One tiny synthetic session runs every step twice through the batch API
(= `mps run`): once locally, once with step 1's scheduler_address set to the cluster. Every
stored array of every step, the export's NumPy files and every JSON result must agree.

tests/test_distributed.py checks the same for steps 1..2e on a one-process cluster (a quick
smoke test); this file is the full comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mps_core.batch import SessionEntry, run_batch
from mps_core.params import ParamSet
from mps_core.steps import STEPS
from mps_core.store import SessionStore
from mps_core.synth import simulate, write_miniscope

RTOL, ATOL = 1e-5, 1e-6  # relative to each array's largest magnitude (atol is scaled)
# JSON values that name where or how the run went, not what it found
IGNORED_KEYS = {"output_dir", "scheduler_address",
                # a SHA-1 of 3b's singular values: differs when their last bits do (see below)
                "nndsvd_fingerprint"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    base = tmp_path_factory.mktemp("equiv")
    rec = simulate(n_frames=200, height=64, width=64, n_cells=5, cell_diameter=8.0, seed=5)
    write_miniscope(rec, base / "rec", layout="v4", frames_per_file=100)
    params = ParamSet(STEPS).with_values("1", {"n_workers": 2})
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        out = {}
        for name, address in (("local", ""), ("cluster", cluster.scheduler_address)):
            ps = params.with_values("1", {"scheduler_address": address})
            (outcome,) = run_batch([SessionEntry(base / "rec", base / name)], ps)
            assert outcome.status == "done", (name, outcome.failed_step, outcome.cause)
            out[name] = outcome
        address = cluster.scheduler_address
    return out, address


def test_every_step_ran_where_it_was_told(runs):
    out, address = runs
    for name, expect in (("local", "local threads"), ("cluster", address)):
        store = SessionStore(out[name].entry.output_dir, create=False)
        assert out[name].steps_run == [s.id for s in STEPS]
        for s in STEPS:
            assert store.manifest(s.id)["execution"]["scheduler"] == expect, (name, s.id)


def test_every_stored_array_matches(runs):
    out, _ = runs
    a, b = (Path(out[n].entry.output_dir) / "steps" for n in ("local", "cluster"))
    stored_a = sorted(p.relative_to(a) for p in a.glob("*/*") if _compared(p))
    stored_b = sorted(p.relative_to(b) for p in b.glob("*/*") if _compared(p))
    assert stored_a == stored_b
    assert sum(p.suffix == ".zarr" for p in stored_a) >= 40  # every step's arrays
    diffs, n_arrays = [], 0
    for rel in stored_a:
        if rel.suffix == ".zarr":
            da_, db_ = (xr.open_zarr(root / rel, consolidated=False) for root in (a, b))
            assert set(da_.variables) == set(db_.variables), rel
            for var in da_.variables:
                n_arrays += 1
                diffs += _array_diff(f"{rel}:{var}", da_[var].values, db_[var].values)
        elif rel.suffix == ".json":
            ja, jb = (json.loads((root / rel).read_text()) for root in (a, b))
            diffs += _json_diff(str(rel), ja, jb)
        elif (a / rel).read_text() != (b / rel).read_text():
            diffs.append(f"{rel}: the text differs")
    export = sorted((a / "8c" / "export").glob("*.npy"))
    assert {p.name for p in export} >= {"A.npy", "C.npy", "S.npy", "motion.npy", "frames.npy"}
    for p in export:
        diffs += _array_diff(f"export/{p.name}", np.load(p),
                             np.load(b / "8c" / "export" / p.name))
    assert not diffs, f"{len(diffs)} of {n_arrays} arrays differ:\n" + "\n".join(diffs)


def test_the_summary_counts_the_same_units(runs):
    out, _ = runs
    for name in ("local", "cluster"):
        A = np.load(Path(out[name].entry.output_dir) / "steps" / "8c" / "export" / "A.npy")
        assert out[name].units_found == A.shape[0] > 0, name
    assert out["local"].frames_removed == out["cluster"].frames_removed == 0


# ----------------------------------------------------------------------------- comparison


def _compared(p: Path) -> bool:
    return p.suffix in (".zarr", ".json", ".txt") and p.name != "manifest.json"


def _array_diff(where: str, x: np.ndarray, y: np.ndarray) -> list[str]:
    """'' when equal (floats within tolerance), else one line saying how they differ."""
    if x.shape != y.shape:
        return [f"{where}: shape {x.shape} vs {y.shape}"]
    if x.dtype.kind in "fc":
        scale = float(np.nanmax(np.abs(x))) if x.size and np.isfinite(x).any() else 1.0
        if np.allclose(x, y, rtol=RTOL, atol=ATOL * max(scale, 1e-12), equal_nan=True):
            return []
        err = np.abs(x.astype(np.float64) - y)
        return [f"{where}: max |difference| {np.nanmax(err):.3g} (largest value {scale:.3g}), "
                f"{int((err > ATOL * scale).sum())} of {x.size} values"]
    return [] if np.array_equal(x, y) else [f"{where}: {int((x != y).sum())} values differ"]


def _json_diff(where: str, x, y) -> list[str]:
    """Differences of two JSON documents; numbers within tolerance, IGNORED_KEYS skipped.

    3b's singular values (init_stats.json) differ in their last bits (~1e-16 relative): the
    process running `mps` does the small dense algebra itself, with BLAS limited to one thread
    when it also runs the dask tasks (local) and with BLAS's own threads on the cluster path."""
    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            return [f"{where}: keys {sorted(set(x) ^ set(y))} in one only"]
        return [d for k in x if k not in IGNORED_KEYS
                for d in _json_diff(f"{where}.{k}", x[k], y[k])]
    if isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            return [f"{where}: {len(x)} vs {len(y)} items"]
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in _json_diff(f"{where}[{i}]", u, v)]
    numbers = (int, float)
    if isinstance(x, numbers) and isinstance(y, numbers) and not isinstance(x, bool):
        same = np.isclose(x, y, rtol=RTOL, atol=ATOL) or (x != x and y != y)
        return [] if same else [f"{where}: {x!r} vs {y!r}"]
    return [] if x == y else [f"{where}: {x!r} vs {y!r}"]
