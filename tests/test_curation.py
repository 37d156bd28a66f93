"""Curation of the final units (mps_core.curation): labels, merges, the curation file, and
the curated re-export, on a small session written in the store's own format.

`build_session` writes the outputs the explorer and the curated export read (steps 2c, 2e,
3a, 4g, 4h, 7f, 8a, 8b, 8c) straight into a SessionStore, from known footprints and traces, so
the results can be checked exactly; tests/test_gui_explorer.py uses it too (small, and at the
size of a 60-minute recording).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from mps_core import curation as cu
from mps_core.cli import main
from mps_core.store import SessionStore

# ============================================================================ the session


def _put(store: SessionStore, step: str, outputs: dict) -> None:
    """Write one step's outputs as the runner does (lazy arrays computed in one pass)."""
    run = store.begin(step)
    jobs = [j for name, v in outputs.items() for j in run.put(name, v)]
    if jobs:
        dask.compute(*jobs, scheduler="threads")
    run.commit({"step": step, "run_id": run.run_id, "status": "done", "params": {},
                "inputs": {}, "outputs": {n: run.path_of(n).name for n in outputs},
                "finished_time": time.time()})


def _frame_coords(frames: np.ndarray, fps: float) -> dict:
    return {"frame": frames, "time_s": ("frame", frames / fps),
            "movie_number": ("frame", np.zeros(frames.size, np.int64)),
            "local_frame": ("frame", frames.copy())}


def _traces(data, ids, frames, fps, name, unit_chunk=64) -> xr.DataArray:
    arr = xr.DataArray(data, dims=("unit_id", "frame"),
                       coords={"unit_id": np.asarray(ids, np.int64),
                               **_frame_coords(frames, fps)}, name=name)
    return arr.chunk({"unit_id": unit_chunk, "frame": -1})


def _disc(h, w, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return np.where(d2 <= r * r, np.exp(-d2 / (2 * (r / 2) ** 2)), 0).astype(np.float32)


def build_session(root: Path, *, n_units: int = 6, n_frames: int = 60, height: int = 16,
                  width: int = 20, offset: tuple[int, int] = (2, 3), n_quarantined: int = 2,
                  movie_chunk: int = 30, fps: float = 20.0, lazy: bool = False,
                  seed: int = 0) -> dict:
    """A finished session at ``root`` (the store format of the real steps).

    Units 0..n-1 get Gaussian discs (the last unit of each row of 4 left out by 8c), traces
    from a seeded RNG (``lazy``: zeros with a few transients, computed chunk by chunk, for the
    60-minute size); quarantined units have ids n.. and footprints in 4g's A_merged only.
    Returns the truth: ids, A (crop grid), C, S, kept, quarantined ids, full grid.
    """
    rng = np.random.default_rng(seed)
    store = SessionStore(root)
    y0, x0 = offset
    H, W = height + y0 + 2, width + x0 + 1
    frames = np.arange(n_frames, dtype=np.int64)
    ids = np.arange(n_units, dtype=np.int64)
    cols = max(1, int(np.ceil(np.sqrt(n_units * width / height))))
    A = np.zeros((n_units, height, width), np.float32)
    for i in range(n_units):
        cy = (i // cols + 0.5) * height / max(1, int(np.ceil(n_units / cols)))
        cx = (i % cols + 0.5) * width / cols
        A[i] = _disc(height, width, cy, cx, max(1.5, min(height, width) / (2.5 * cols)))
    q_ids = np.arange(n_units, n_units + n_quarantined, dtype=np.int64)
    Aq = np.stack([_disc(height, width, height / 2, width / 2 + k, 2.0)
                   for k in range(n_quarantined)]) if n_quarantined else \
        np.zeros((0, height, width), np.float32)
    kept = np.array([i % 4 != 3 for i in range(n_units)])

    if lazy:  # zeros with one transient per unit, never held in memory
        def block(rows, kind):
            def make(x, block_info=None):
                r0 = block_info[None]["array-location"][0][0]
                out = np.zeros(x.shape, np.float32)
                for k in range(x.shape[0]):
                    t = (37 * (r0 + k)) % max(1, x.shape[1] - 50)
                    out[k, t:t + 40] = np.exp(-np.arange(40) / 10.0) * (1 if kind != "S" else
                                                                     (np.arange(40) == 0))
                return out
            z = da.zeros((rows, n_frames), np.float32, chunks=(64, n_frames))
            return z.map_blocks(make, dtype=np.float32)
        C, S, Y = block(n_units, "C"), block(n_units, "S"), block(n_units, "C")
    else:
        S = (rng.random((n_units, n_frames)) < 0.05).astype(np.float32) * rng.uniform(
            1, 3, (n_units, n_frames)).astype(np.float32)
        C = np.zeros_like(S)
        for t in range(n_frames):
            C[:, t] = (0.9 * C[:, t - 1] if t else 0) + S[:, t]
        Y = (C + rng.normal(0, 0.1, C.shape)).astype(np.float32)

    def movie(h, w, name):
        m = da.zeros((n_frames, h, w), np.float32, chunks=(movie_chunk, h, w)) + np.float32(1)
        return xr.DataArray(m, dims=("frame", "height", "width"),
                            coords={**_frame_coords(frames, fps), "height": np.arange(h),
                                    "width": np.arange(w)}, name=name)

    crop = {"y0": y0, "x0": x0, "height": height, "width": width, "full_height": H,
            "full_width": W, "shape": "rectangle", "size_fraction": 1.0, "offset_y": 0,
            "offset_x": 0, "full_frame": False}
    mean_full = np.zeros((H, W), np.float32)
    mean_full[y0:y0 + height, x0:x0 + width] = A.sum(0) + 0.1
    shifts = xr.DataArray(np.zeros((n_frames, 2), np.float32), dims=("frame", "axis"),
                          coords=_frame_coords(frames, fps), name="shifts")
    _put(store, "2c", {"shifts": shifts})
    _put(store, "2e", {"movie": movie(H, W, "movie")})
    _put(store, "3a", {
        "crop": crop, "cell_size": {"diameter_px": 4.0, "source": "parameter"},
        "mean_frame": xr.DataArray(mean_full, dims=("height", "width"), name="mean_frame"),
        "max_projection": xr.DataArray(mean_full * 2, dims=("height", "width"),
                                       name="max_projection"),
        "movie_cropped": movie(height, width, "movie_cropped")})
    A_all = np.concatenate([A, Aq])
    all_ids = np.concatenate([ids, q_ids])
    fa = lambda a, i, name: xr.DataArray(  # noqa: E731
        a, dims=("unit_id", "height", "width"),
        coords={"unit_id": i, "height": np.arange(height), "width": np.arange(width)},
        name=name).chunk({"unit_id": 64, "height": -1, "width": -1})
    _put(store, "4g", {"A_merged": fa(A_all, all_ids, "A_merged")})
    _put(store, "4h", {
        "quarantine": {"unit_id": q_ids.tolist(), "reason": ["size,skewness"] * q_ids.size,
                       "n_quarantined": int(q_ids.size), "n_kept": n_units,
                       "restore_from": {"step": "4g", "A": "A_merged", "C": "C_merged"}},
        "component_scores": {"unit_id": all_ids.tolist(), "size": [30] * all_ids.size,
                             "snr": [3.0] * all_ids.size}})
    _put(store, "7f", {"A_refined": fa(A, ids, "A_refined")})
    _put(store, "8a", {"YrA_final": _traces(Y, ids, frames, fps, "YrA_final")})
    _put(store, "8b", {"C_final": _traces(C, ids, frames, fps, "C_final"),
                       "S_final": _traces(S, ids, frames, fps, "S_final")})
    size = (A > 0).reshape(n_units, -1).sum(1)
    cent = np.array([np.unravel_index(np.argmax(a), a.shape) for a in A], float) + [y0, x0]
    _put(store, "8c", {
        "final_units": {"unit_id": ids.tolist(), "kept": kept.tolist(),
                        "removed_by": ["" if k else "min_snr" for k in kept],
                        "size_px": size.tolist(), "snr": [10.0 + i for i in range(n_units)],
                        "footprint_correlation": [0.9] * n_units,
                        "centroid_y": cent[:, 0].tolist(), "centroid_x": cent[:, 1].tolist()},
        "export_manifest": {"folder": "export", "files": []}})
    return {"store": store, "ids": ids, "A": A, "C": C, "S": S, "kept": kept, "q_ids": q_ids,
            "offset": offset, "full": (H, W), "Aq": Aq}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_session(tmp_path_factory.mktemp("curation") / "session")


@pytest.fixture
def session(built, tmp_path):
    """A fresh copy of the module's session (tests write labels and manifests into it)."""
    import shutil

    root = tmp_path / "session"
    shutil.copytree(built["store"].root, root)
    return {**built, "store": SessionStore(root, create=False)}


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ============================================================================ labels


def test_the_core_never_imports_qt():
    import subprocess
    import sys

    code = ("import sys, mps_core.cli, mps_core.curation; "
            "print([m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_labels_notes_and_merges():
    c = cu.Curation()
    assert c.status(3) == "unlabelled" and c.is_empty()
    assert c.accept([1, 2]) == [1, 2] and c.reject(5) == [5]
    c.set_note(1, "  bright soma  ")
    assert c.note(1) == "bright soma" and c.ids_with("accepted") == [1, 2]
    # a merge gives every member one status (accepted wins) and grows existing groups
    assert c.merge([5, 1]) == [1, 5] and c.status(5) == "accepted"
    assert c.merge([7, 5]) == [1, 5, 7] and c.merges == [[1, 5, 7]]
    # labelling one member labels its group
    assert c.reject(7) == [1, 5, 7] and {c.status(u) for u in (1, 5, 7)} == {"rejected"}
    assert c.unmerge(5) == [1, 5, 7] and c.merges == [] and c.unmerge(5) is None
    with pytest.raises(cu.CurationError, match="at least two"):
        c.merge([4, 4])
    with pytest.raises(cu.CurationError, match="allowed values are unlabelled, accepted, "
                                               "rejected"):
        c.set_status([1], "maybe")


def test_restore_undoes_a_rejection_and_accepts_what_the_pipeline_set_apart():
    c = cu.Curation()
    origins = {1: "kept", 2: "removed", 3: "quarantined"}
    c.reject([1, 2, 3])
    c.restore([1, 2, 3], origins)
    assert [c.status(u) for u in (1, 2, 3)] == ["unlabelled"] * 3
    c.restore([1, 2, 3], origins)
    assert [c.status(u) for u in (1, 2, 3)] == ["unlabelled", "accepted", "accepted"]
    assert c.label(3).restored_from == "4h" and c.label(2).restored_from == "8c"
    assert c.restored_from_quarantine() == [3]
    c.reject(3)
    assert c.restored_from_quarantine() == [] and c.label(3).restored_from is None
    with pytest.raises(cu.CurationError, match="origin 'lost'"):
        c.restore([9], {9: "lost"})


def test_the_curation_file_round_trips_and_is_written_atomically(tmp_path):
    c = cu.Curation(made_for={"8c": "run-1"})
    c.accept(4)
    c.reject([2])
    c.set_note(2, "vessel")
    c.merge([4, 6])
    path = cu.save_curation(tmp_path, c)
    assert path == tmp_path / "curation.json"
    assert [p.name for p in tmp_path.iterdir()] == ["curation.json"]  # no temporary left
    d = json.loads(path.read_text())
    assert d["format"] == "mps-curation" and d["version"] == 1
    assert d["units"]["2"] == {"status": "rejected", "note": "vessel",
                               "changed": d["units"]["2"]["changed"]}
    assert d["merges"] == [[4, 6]] and d["made_for"] == {"8c": "run-1"}
    assert d["created"] and d["modified"]
    back = cu.load_curation(tmp_path)
    assert back.to_dict() == c.to_dict()
    # an empty folder gives empty labels; a broken file names itself
    assert cu.load_curation(tmp_path / "none").is_empty()
    path.write_text("{not json")
    with pytest.raises(cu.CurationError, match="curation.json: cannot be read"):
        cu.load_curation(tmp_path)
    path.write_text(json.dumps({**d, "version": 9}))
    with pytest.raises(cu.CurationError, match="version 9"):
        cu.load_curation(tmp_path)
    path.write_text(json.dumps({**d, "units": {"2": {"status": "gone"}}}))
    with pytest.raises(cu.CurationError, match="unit 2 has status 'gone'"):
        cu.load_curation(tmp_path)


def test_labels_made_on_an_earlier_run_are_flagged(session):
    store = session["store"]
    c = cu.Curation(made_for=cu.made_for(store))
    c.accept(1)
    assert set(c.made_for) == {"7f", "8b", "8c"} and cu.stale_warning(c, store) is None
    m = store.manifest("8c")
    m["run_id"] = "another"
    (store.step_dir("8c") / "manifest.json").write_text(json.dumps(m))
    assert "earlier run of step(s) 8c" in cu.stale_warning(c, store)


# ============================================================================ units


def test_unit_table_lists_final_and_quarantined_units(session):
    t = cu.unit_table(session["store"])
    n = session["ids"].size
    assert t.unit_id.tolist() == session["ids"].tolist() + session["q_ids"].tolist()
    assert t.origin[:n].tolist() == ["kept" if k else "removed" for k in session["kept"]]
    assert set(t.origin[n:]) == {"quarantined"} and t.reason[n] == "size,skewness"
    assert t.has_traces.tolist() == [True] * n + [False] * session["q_ids"].size
    assert t.snr[n] == 3.0 and t.size_px[n] == 30  # 4h's scores for quarantined units
    # centroids in the crop grid (8c's are in the full frame)
    peak = np.unravel_index(np.argmax(session["A"][0]), session["A"][0].shape)
    assert (t.centroid_y[0], t.centroid_x[0]) == peak


def test_merging_two_halves_of_one_cell_gives_the_cell_back():
    rng = np.random.default_rng(1)
    a = _disc(12, 12, 6, 6, 4)
    left, right = a.copy(), a.copy()
    left[:, 6:] = 0
    right[:, :6] = 0
    c = rng.random(50).astype(np.float32)
    s = rng.random(50).astype(np.float32)
    A = np.stack([left, right])
    m_a, m_c, m_s = cu.merge_units(A, np.stack([c, c]), np.stack([s, s]))
    assert m_a.max() == pytest.approx(a.max())  # rescaled to the largest member's peak
    np.testing.assert_allclose(np.outer(m_c, m_a.ravel()), np.outer(c, a.ravel()), atol=1e-5)
    np.testing.assert_allclose(m_s, s * m_c[0] / c[0], rtol=1e-5)
    # different traces: the merged model is the least-squares fit of the members' model
    c2 = rng.random(50).astype(np.float32)
    m_a, m_c, _ = cu.merge_units(A, np.stack([c, c2]), np.stack([s, s]))
    model = np.outer(c, left.ravel()) + np.outer(c2, right.ravel())
    best = model @ m_a.ravel() / (m_a.ravel() @ m_a.ravel())
    np.testing.assert_allclose(m_c, best, rtol=1e-5)
    with pytest.raises(cu.CurationError, match="empty footprints"):
        cu.merge_units(np.zeros((2, 3, 3)), np.zeros((2, 4)), np.zeros((2, 4)))


def test_selection_follows_the_labels(session):
    t = cu.unit_table(session["store"])
    q = int(session["q_ids"][0])
    c = cu.Curation()
    c.reject(0)
    c.accept(3)  # removed by 8c, accepted by the user
    c.restore([q], t.origins())
    sel = cu.curated_selection(t, c)
    exported = [g[0] for g in sel.groups]
    assert exported == [1, 2, 3, 4, 5] and sel.labels[2] == "accepted"
    assert sel.excluded["rejected"] == [0] and sel.excluded["quarantined_no_traces"] == [q]
    sel = cu.curated_selection(t, c, include_rejected=True)
    assert [g[0] for g in sel.groups] == [0, 1, 2, 3, 4, 5] and sel.labels[0] == "rejected"
    c.merge([1, 2])
    sel = cu.curated_selection(t, c)
    assert sel.groups[:2] == [[1, 2], [3]]


# ============================================================================ export


def test_export_curated_applies_labels_and_changes_nothing_stored(session, tmp_path):
    store = session["store"]
    before = _tree_digest(store.root / "steps")
    c = cu.Curation()
    c.reject(0)
    c.accept(3)
    c.merge([1, 2])
    c.set_note(4, "dim")
    cu.save_curation(store.root, c)
    out = cu.export_curated(store, formats=("numpy", "json"))
    dest = store.root / "curated_export"
    assert Path(out["folder"]) == dest
    assert _tree_digest(store.root / "steps") == before  # nothing stored changed
    ids = np.load(dest / "unit_ids.npy")
    assert ids.tolist() == [1, 3, 4, 5] == out["unit_ids"]
    A, C = np.load(dest / "A.npy"), np.load(dest / "C.npy")
    y0, x0 = session["offset"]
    h, w = session["A"].shape[1:]
    assert A.shape == (4,) + session["full"] and not A[:, :y0].any()
    np.testing.assert_array_equal(A[1, y0:y0 + h, x0:x0 + w], session["A"][3])
    np.testing.assert_array_equal(C[2], session["C"][4])
    m_a, m_c, _ = cu.merge_units(session["A"][[1, 2]], session["C"][[1, 2]],
                                 session["S"][[1, 2]])
    np.testing.assert_allclose(A[0, y0:y0 + h, x0:x0 + w], m_a, rtol=1e-6)
    np.testing.assert_allclose(C[0], m_c, rtol=1e-6)
    summary = json.loads((dest / "mps_export.json").read_text())
    u = summary["units"]
    assert u["label"] == ["unlabelled", "accepted", "unlabelled", "unlabelled"]
    assert u["merged_from"][0] == "1+2" and u["note"][2] == "dim"
    assert u["snr"][0] is None and u["snr"][1] == 13.0
    assert summary["curation"]["excluded"]["rejected"] == [0]
    assert json.loads((dest / "curation.json").read_text())["merges"] == [[1, 2]]
    # rejected units come back, labelled, on request
    out = cu.export_curated(store, tmp_path / "with", include_rejected=True,
                            formats=("numpy", "json"))
    assert out["unit_ids"] == [0, 1, 3, 4, 5] and out["labels"][0] == "rejected"


def test_export_curated_refuses_the_steps_folder_and_unknown_formats(session):
    store = session["store"]
    with pytest.raises(cu.CurationError, match="outside .*steps"):
        cu.export_curated(store, store.step_dir("8c") / "export")
    with pytest.raises(cu.CurationError, match="allowed values are numpy"):
        cu.export_curated(store, formats=("numpy", "hdf5"))


def test_export_curated_command(session, tmp_path, capsys):
    store = session["store"]
    c = cu.Curation()
    c.reject([0, 1])
    cu.save_curation(store.root, c)
    dest = tmp_path / "curated"
    assert main(["export-curated", str(store.root), str(dest), "--formats", "numpy"]) == 0
    assert np.load(dest / "unit_ids.npy").tolist() == [2, 4, 5]
    assert "3 units" in capsys.readouterr().out
    assert main(["export-curated", str(store.root), str(dest), "--include-rejected",
                 "--formats", "numpy", "json"]) == 0
    assert np.load(dest / "unit_ids.npy").tolist() == [0, 1, 2, 4, 5]
    assert main(["export-curated", str(tmp_path / "nothing"), str(dest)]) == 1
    assert "not an MPS session" in capsys.readouterr().err
