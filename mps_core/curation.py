"""Curation of the final units: labels, notes and merges kept beside the results, never by
deleting data, and a curated re-export through the writers of :mod:`mps_core.export`.

The labels live in ``SESSION/curation.json`` (:data:`CURATION_FILE`), outside ``steps/``, so
re-running a step never wipes them and they never change a stored result::

    {"format": "mps-curation", "version": 1,
     "created": "2026-...", "modified": "2026-...",
     "made_for": {"7f": RUN_ID, "8b": RUN_ID, "8c": RUN_ID},
     "units": {"12": {"status": "rejected", "note": "vessel", "changed": "2026-..."},
               "40": {"status": "accepted", "note": "", "changed": "...", "restored_from": "4h"}},
     "merges": [[3, 7]],
     "restore_from_quarantine": [40]}

* ``status`` is ``unlabelled`` (the pipeline decides), ``accepted`` or ``rejected``; units
  that are unlabelled with no note are not written.
* ``merges``: groups of unit ids that are one cell; every member carries the same status.
* ``made_for``: the run ids of the results the labels were made on. Unit ids are stable from
  step 4e on, but re-running a step from 4e can give the same id to another cell, so the
  explorer warns when these no longer match (:func:`stale_warning`).
* ``restore_from_quarantine``: quarantined units (step 4h) accepted by the user. They have no
  traces: bringing them into the traces needs steps 5-8 re-run with them; the label records
  the decision.

What a curated export holds (:func:`export_curated`), among the units with traces (A_refined
of 7f, C_final / S_final of 8b): accepted units; unlabelled units that step 8c kept; rejected
units only with ``include_rejected`` (then labelled "rejected" in the JSON). Quarantined units
are never exported (no traces).

Merged units (one exported unit per group, with the smallest id, as the pipeline's merges):
the footprint is the sum of the members' footprints rescaled so its peak equals the largest
member peak (keeps the scale of the other units), and the trace is the footprint-weighted
combination ``c = sum_i w_i c_i`` with ``w_i = <a, a_i> / <a, a>``: the least-squares trace of
the merged footprint for the model ``sum_i a_i c_i`` of the members, so ``a c`` reproduces what
the members explained together instead of dropping the smaller unit's share (taking the larger
unit's trace would). Two halves of one cell with the same trace give exactly that trace back
(up to the footprint's scale). S is combined with the same weights, an approximation (the
members were deconvolved separately). Size and centroid are recomputed from the merged
footprint; its SNR and footprint correlation are not (NaN).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .store import is_inside, jsonable, now_iso

__all__ = ["CURATION_FILE", "CURATED_DIR", "STATUSES", "ORIGINS", "UnitLabel", "Curation",
           "CurationError", "curation_path", "load_curation", "save_curation", "made_for",
           "stale_warning", "UnitTable", "unit_table", "merge_units", "curated_selection",
           "export_curated", "DEFAULT_FORMATS"]

CURATION_FILE = "curation.json"
CURATED_DIR = "curated_export"
CURATION_FORMAT = "mps-curation"
CURATION_VERSION = 1
STATUSES = ("unlabelled", "accepted", "rejected")
# where a unit stands after the pipeline: kept by 8c, left out by 8c's final filter, or set
# apart by 4h's artifact quarantine (no traces)
ORIGINS = ("kept", "removed", "quarantined")
ORIGIN_WORDS = {"kept": "kept by 8c", "removed": "removed by 8c",
                "quarantined": "quarantined at 4h"}
DEFAULT_FORMATS = ("numpy", "zarr", "json", "figures")
FINGERPRINT_STEPS = ("7f", "8b", "8c")
MERGE_TRACES = ("footprint-weighted combination of the members' traces (least-squares trace of "
                "the merged footprint); footprint = members' sum rescaled to the largest "
                "member peak")


class CurationError(ValueError):
    """A curation file or request that cannot be used (the message names file and value)."""


# ============================================================================== labels


@dataclass
class UnitLabel:
    """One unit's label: status, free-text note, when it changed, and (for a restored
    quarantined or filtered unit) which step had set it apart."""

    status: str = "unlabelled"
    note: str = ""
    changed: str | None = None
    restored_from: str | None = None

    def is_default(self) -> bool:
        return self.status == "unlabelled" and not self.note and self.restored_from is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status, "note": self.note, "changed": self.changed}
        if self.restored_from:
            d["restored_from"] = self.restored_from
        return d


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise CurationError(f"curation status '{status}': allowed values are "
                            f"{', '.join(STATUSES)}")
    return status


def _ids(ids: Iterable[int] | int) -> list[int]:
    if isinstance(ids, (int, np.integer)):
        return [int(ids)]
    return [int(u) for u in ids]


@dataclass
class Curation:
    """Labels, notes and merge groups by unit id (pure data; saved by :func:`save_curation`)."""

    units: dict[int, UnitLabel] = field(default_factory=dict)
    merges: list[list[int]] = field(default_factory=list)
    created: str = field(default_factory=now_iso)
    modified: str | None = None
    made_for: dict[str, str] = field(default_factory=dict)

    # -- reading
    def label(self, uid: int) -> UnitLabel:
        return self.units.get(int(uid), UnitLabel())

    def status(self, uid: int) -> str:
        return self.label(uid).status

    def note(self, uid: int) -> str:
        return self.label(uid).note

    def ids_with(self, status: str) -> list[int]:
        _check_status(status)
        return sorted(u for u, lab in self.units.items() if lab.status == status)

    def group_of(self, uid: int) -> list[int] | None:
        """The merge group holding ``uid`` (sorted ids), or None."""
        for g in self.merges:
            if int(uid) in g:
                return list(g)
        return None

    def restored_from_quarantine(self) -> list[int]:
        return sorted(u for u, lab in self.units.items()
                      if lab.restored_from == "4h" and lab.status == "accepted")

    def is_empty(self) -> bool:
        return not self.merges and all(lab.is_default() for lab in self.units.values())

    # -- changing
    def _with_groups(self, ids: Iterable[int]) -> list[int]:
        out: list[int] = []
        for u in _ids(ids):
            for v in self.group_of(u) or [u]:
                if v not in out:
                    out.append(v)
        return out

    def _put(self, uid: int, **changes) -> None:
        lab = self.units.get(uid, UnitLabel())
        for k, v in changes.items():
            setattr(lab, k, v)
        lab.changed = now_iso()
        if lab.is_default():
            self.units.pop(uid, None)
        else:
            self.units[uid] = lab

    def set_status(self, ids: Iterable[int] | int, status: str) -> list[int]:
        """Label units (and the other members of their merge groups); returns the ids changed."""
        _check_status(status)
        changed = self._with_groups(ids)
        for u in changed:
            extra = {"restored_from": None} if status != "accepted" else {}
            self._put(u, status=status, **extra)
        return changed

    def accept(self, ids: Iterable[int] | int) -> list[int]:
        return self.set_status(ids, "accepted")

    def reject(self, ids: Iterable[int] | int) -> list[int]:
        return self.set_status(ids, "rejected")

    def restore(self, ids: Iterable[int] | int,
                origins: dict[int, str] | None = None) -> list[int]:
        """Undo a rejection (back to unlabelled: the pipeline decides again); a unit the
        pipeline had set apart (origin "quarantined" or "removed") is accepted instead, with
        the step that had set it apart recorded."""
        origins = origins or {}
        changed = self._with_groups(ids)
        for u in changed:
            origin = origins.get(u, "kept")
            if origin not in ORIGINS:
                raise CurationError(f"restore: origin '{origin}' of unit {u}: allowed values "
                                    f"are {', '.join(ORIGINS)}")
            if self.status(u) == "rejected" or origin == "kept":
                self._put(u, status="unlabelled", restored_from=None)
            else:
                self._put(u, status="accepted",
                          restored_from="4h" if origin == "quarantined" else "8c")
        return changed

    def set_note(self, uid: int, text: str) -> None:
        self._put(int(uid), note=str(text).strip())

    def merge(self, ids: Iterable[int]) -> list[int]:
        """Join ``ids`` (>= 2 units, with their existing groups) into one group; every member
        takes the group's status: accepted if one was, rejected if all were, else unlabelled."""
        members = sorted(set(self._with_groups(ids)))
        if len(members) < 2:
            raise CurationError(f"merge: select at least two different units (got "
                                f"{members})")
        self.merges = [g for g in self.merges if not set(g) & set(members)] + [members]
        self.merges.sort(key=lambda g: g[0])
        statuses = {self.status(u) for u in members}
        status = ("accepted" if "accepted" in statuses else
                  "rejected" if statuses == {"rejected"} else "unlabelled")
        for u in members:
            self._put(u, status=status)
        return members

    def unmerge(self, uid: int) -> list[int] | None:
        """Dissolve the merge group holding ``uid``; returns it (None when there was none)."""
        g = self.group_of(uid)
        if g is not None:
            self.merges = [m for m in self.merges if m != g]
        return g

    # -- file form
    def to_dict(self) -> dict[str, Any]:
        return {"format": CURATION_FORMAT, "version": CURATION_VERSION,
                "created": self.created, "modified": self.modified,
                "made_for": dict(self.made_for),
                "units": {str(u): self.units[u].to_dict() for u in sorted(self.units)},
                "merges": [list(map(int, g)) for g in self.merges],
                "restore_from_quarantine": self.restored_from_quarantine()}

    @classmethod
    def from_dict(cls, d: Any, source: str = "curation") -> "Curation":
        if not isinstance(d, dict) or d.get("format") != CURATION_FORMAT:
            raise CurationError(f"{source}: not an MPS curation file (expected \"format\": "
                                f"\"{CURATION_FORMAT}\")")
        if d.get("version") != CURATION_VERSION:
            raise CurationError(f"{source}: curation file version {d.get('version')!r}; this "
                                f"MPS reads version {CURATION_VERSION}")
        units: dict[int, UnitLabel] = {}
        for key, v in (d.get("units") or {}).items():
            try:
                uid = int(key)
            except ValueError:
                raise CurationError(f"{source}: unit id '{key}' is not a whole number") from None
            if not isinstance(v, dict):
                raise CurationError(f"{source}: unit {key} must be an object with a status")
            status = v.get("status", "unlabelled")
            if status not in STATUSES:
                raise CurationError(f"{source}: unit {key} has status '{status}'; allowed "
                                    f"values are {', '.join(STATUSES)}")
            units[uid] = UnitLabel(status, str(v.get("note") or ""), v.get("changed"),
                                   v.get("restored_from"))
        merges = []
        for g in d.get("merges") or []:
            try:
                ids = sorted({int(u) for u in g})
            except (TypeError, ValueError):
                raise CurationError(f"{source}: merge group {g!r} must list unit ids") from None
            if len(ids) >= 2:
                merges.append(ids)
        return cls(units=units, merges=merges, created=d.get("created") or now_iso(),
                   modified=d.get("modified"), made_for=dict(d.get("made_for") or {}))


# ============================================================================== file


def curation_path(root: Path | str) -> Path:
    return Path(root) / CURATION_FILE


def load_curation(root: Path | str) -> Curation:
    """The session's labels (an empty :class:`Curation` when it has none yet)."""
    path = curation_path(root)
    if not path.exists():
        return Curation()
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CurationError(f"{path}: cannot be read as JSON ({e}); fix or move the file") \
            from None
    return Curation.from_dict(d, str(path))


def save_curation(root: Path | str, curation: Curation) -> Path:
    """Write ``SESSION/curation.json`` atomically (a temporary file renamed over the old one,
    so a crash leaves either the old or the new labels, never half a file)."""
    path = curation_path(root)
    curation.modified = now_iso()
    text = json.dumps(curation.to_dict(), indent=1, default=jsonable) + "\n"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def made_for(store) -> dict[str, str]:
    """Run ids of the results that labels refer to (steps 7f, 8b, 8c when present)."""
    out = {}
    for sid in FINGERPRINT_STEPS:
        m = store.manifest(sid)
        if m and m.get("run_id"):
            out[sid] = m["run_id"]
    return out


def stale_warning(curation: Curation, store) -> str | None:
    """A sentence when the labels were made on other results than the session holds now."""
    if not curation.made_for or curation.is_empty():
        return None
    now = made_for(store)
    changed = [s for s, rid in curation.made_for.items() if now.get(s) != rid]
    if not changed:
        return None
    return (f"The labels in {CURATION_FILE} were made on an earlier run of step(s) "
            f"{', '.join(changed)}. Unit ids are kept from step 4e on, but if steps from 4e "
            f"were re-run an id may now be a different cell: check the labelled units.")


# ============================================================================== units


@dataclass
class UnitTable:
    """Every unit the explorer lists, one entry per unit in each array.

    ``origin``: "kept" / "removed" (by 8c's final filter) / "quarantined" (at 4h); ``reason``:
    the checks that removed or quarantined it; ``size_px``, ``snr``, ``correlation`` (NaN
    when unknown); ``centroid_y`` / ``centroid_x`` in the crop grid of step 3a (NaN when
    unknown); ``has_traces``: whether C_final holds the unit.
    """

    unit_id: np.ndarray
    origin: np.ndarray
    reason: list[str]
    size_px: np.ndarray
    snr: np.ndarray
    correlation: np.ndarray
    centroid_y: np.ndarray
    centroid_x: np.ndarray
    has_traces: np.ndarray
    crop_offset: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return int(self.unit_id.size)

    def index(self) -> dict[int, int]:
        return {int(u): i for i, u in enumerate(self.unit_id)}

    def origins(self) -> dict[int, str]:
        return {int(u): str(o) for u, o in zip(self.unit_id, self.origin)}


def _floats(values: Any, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    return np.array([np.nan if v is None else float(v) for v in values], np.float64)


def _crop_yx(store) -> tuple[int, int]:
    if store.has("3a", "crop"):
        c = store.load("3a", "crop")
        return int(c.get("y0", 0)), int(c.get("x0", 0))
    return 0, 0


def unit_table(store) -> UnitTable:
    """The units of the session's final result, plus the quarantined ones (reads JSON and
    coordinates only, never footprints or traces)."""
    if not store.has("7f", "A_refined"):
        raise CurationError(f"{store.root}: no final footprints (step 7f); run the pipeline to "
                            f"step 8c first")
    A = store.load("7f", "A_refined")
    ids = np.asarray(A.unit_id.values, np.int64)
    n = ids.size
    y0, x0 = _crop_yx(store)
    fu = store.load("8c", "final_units") if store.has("8c", "final_units") else None
    if fu is not None and np.array_equal(np.asarray(fu.get("unit_id", []), np.int64), ids):
        kept = np.asarray(fu["kept"], bool)
        reason = [str(r) for r in fu.get("removed_by", [""] * n)]
        size = _floats(fu.get("size_px"), n)
        snr = _floats(fu.get("snr"), n)
        corr = _floats(fu.get("footprint_correlation"), n)
        cy = _floats(fu.get("centroid_y"), n) - y0
        cx = _floats(fu.get("centroid_x"), n) - x0
    else:  # 8c not run (or stale): every unit counts as kept, scores unknown
        kept = np.ones(n, bool)
        reason = [""] * n
        size = snr = corr = cy = cx = np.full(n, np.nan)
    origin = np.where(kept, "kept", "removed").astype(object)
    has = np.ones(n, bool)
    if store.has("8b", "C_final"):
        has = np.isin(ids, np.asarray(store.load("8b", "C_final").unit_id.values))
    q_ids, q_reason, q_size, q_snr = _quarantined(store, ids)
    m = q_ids.size
    return UnitTable(
        unit_id=np.concatenate([ids, q_ids]),
        origin=np.concatenate([origin, np.full(m, "quarantined", object)]),
        reason=reason + q_reason,
        size_px=np.concatenate([size, q_size]), snr=np.concatenate([snr, q_snr]),
        correlation=np.concatenate([corr, np.full(m, np.nan)]),
        centroid_y=np.concatenate([cy, np.full(m, np.nan)]),
        centroid_x=np.concatenate([cx, np.full(m, np.nan)]),
        has_traces=np.concatenate([has, np.zeros(m, bool)]), crop_offset=(y0, x0))


def _quarantined(store, final_ids: np.ndarray):
    """Ids, reasons, sizes and (4h) SNR of the quarantined units not among ``final_ids``."""
    empty = (np.zeros(0, np.int64), [], np.zeros(0), np.zeros(0))
    if not store.has("4h", "quarantine"):
        return empty
    q = store.load("4h", "quarantine")
    if not isinstance(q, dict) or not q.get("unit_id"):
        return empty
    ids = np.asarray(q["unit_id"], np.int64)
    reasons = list(q.get("reason") or [""] * ids.size)
    keep = ~np.isin(ids, final_ids)
    ids, reasons = ids[keep], [str(r) for r, k in zip(reasons, keep) if k]
    size, snr = np.full(ids.size, np.nan), np.full(ids.size, np.nan)
    if store.has("4h", "component_scores"):
        scores = store.load("4h", "component_scores")
        look = {int(u): i for i, u in enumerate(scores.get("unit_id", []))}
        rows = [look.get(int(u)) for u in ids]
        for name, out in (("size", size), ("snr", snr)):
            col = scores.get(name) or []
            for k, i in enumerate(rows):
                if i is not None and i < len(col) and col[i] is not None:
                    out[k] = float(col[i])
    return ids, reasons, size, snr


# ============================================================================== export


def merge_units(A: np.ndarray, C: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """One footprint and trace for ``k`` merged units (module docstring for why).

    ``A`` (k, h, w), ``C`` and ``S`` (k, T) -> (h, w), (T,), (T,) float32.
    """
    A = np.asarray(A, np.float64)
    k = A.shape[0]
    total = A.sum(axis=0)
    peak = float(total.max()) if total.size else 0.0
    if k == 0 or peak <= 0:
        raise CurationError("merge: the merged units have empty footprints")
    a = total * (max(float(A[i].max()) for i in range(k)) / peak)
    flat = a.ravel()
    w = (A.reshape(k, -1) @ flat) / float(flat @ flat)
    c = w @ np.asarray(C, np.float64)
    s = w @ np.asarray(S, np.float64)
    return a.astype(np.float32), c.astype(np.float32), s.astype(np.float32)


@dataclass
class Selection:
    """What a curated export holds: ``groups`` (one list of member ids per exported unit,
    the first id naming it), their ``labels``, and the ids left out with why."""

    groups: list[list[int]]
    labels: list[str]
    excluded: dict[str, list[int]]


def curated_selection(table: UnitTable, curation: Curation,
                      include_rejected: bool = False) -> Selection:
    """Apply the labels to the units with traces (rules in the module docstring)."""
    origin = table.origins()
    has = {int(u): bool(h) for u, h in zip(table.unit_id, table.has_traces)}
    seen: set[int] = set()
    groups, labels = [], []
    excluded: dict[str, list[int]] = {"rejected": [], "removed_by_8c": [],
                                      "quarantined_no_traces": [], "unknown_ids": []}
    for u in map(int, table.unit_id):
        if u in seen:
            continue
        members = [v for v in (curation.group_of(u) or [u]) if v in origin]
        seen.update(members)
        if not all(has.get(v, False) for v in members):
            # a quarantined unit has nothing to export yet: say so for those the user wanted
            excluded["quarantined_no_traces"] += [
                v for v in members if not has.get(v)
                and (curation.status(v) == "accepted" or len(members) > 1)]
            members = [v for v in members if has.get(v)]
            if not members:
                continue
        status = curation.status(members[0])
        kept = any(origin[v] == "kept" for v in members)
        if status == "accepted" or (status == "unlabelled" and kept):
            groups.append(sorted(members))
            labels.append(status)
        elif status == "rejected" and include_rejected:
            groups.append(sorted(members))
            labels.append("rejected")
        else:
            excluded["rejected" if status == "rejected" else "removed_by_8c"] += members
    labelled = set(curation.units) | {v for g in curation.merges for v in g}
    excluded["unknown_ids"] = sorted(labelled - set(origin))
    order = np.argsort([g[0] for g in groups], kind="stable")
    return Selection([groups[i] for i in order], [labels[i] for i in order],
                     {k: sorted(v) for k, v in excluded.items()})


def _rigid(shifts: np.ndarray) -> np.ndarray:
    """(frame, 2) shifts; the mean over patches of piecewise-rigid ones (as 8c exports)."""
    s = np.asarray(shifts, np.float32)
    return s if s.ndim == 2 else s.mean(axis=(1, 2))


def _centroids(A: np.ndarray) -> np.ndarray:
    """(n, 2) intensity-weighted (y, x) centres of footprints (NaN when empty)."""
    A = np.asarray(A, np.float64)
    mass = A.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = A.sum(axis=2) @ np.arange(A.shape[1]) / mass
        cx = A.sum(axis=1) @ np.arange(A.shape[2]) / mass
    return np.column_stack([cy, cx])


def _check_dest(store, dest: Path) -> Path:
    dest = Path(dest).absolute()
    if is_inside(dest, store.root / "steps"):
        raise CurationError(f"curated export folder {dest}: choose a folder outside "
                            f"{store.root / 'steps'} (the steps' results are never overwritten)")
    return dest


def _require(store, step: str, name: str) -> Any:
    if not store.has(step, name):
        raise CurationError(f"{store.root}: the curated export needs '{name}' of step {step}; "
                            f"run the pipeline to step 8c first")
    return store.load(step, name)


def _export_metadata(store) -> dict[str, Any]:
    """8c's export metadata (parameters, frames, versions...) when its JSON was written."""
    path = store.step_dir("8c") / "export" / "mps_export.json"
    if path.exists():
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return {k: v for k, v in d.items()
                    if k not in ("units", "n_units", "n_frames", "exported_at")}
        except (OSError, ValueError):
            pass
    m = store.manifest("8c") or {}
    return {"parameters": {"8c": m.get("params")}}


def export_curated(store, dest: Path | str | None = None, *, include_rejected: bool = False,
                   formats: Iterable[str] = DEFAULT_FORMATS, curation: Curation | None = None,
                   table_format: str = "csv", figure_units: int = 20,
                   progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Write the final result again with the curation applied (module docstring).

    ``dest`` defaults to ``SESSION/curated_export`` (never inside ``steps/``); the session's
    labels are read from ``curation.json`` unless ``curation`` is given, and copied into
    ``dest``. Returns a summary: folder, files, unit ids, labels, merges, excluded ids.
    """
    from . import export as ex

    say = progress or (lambda f, m: None)
    formats = set(formats)
    unknown = formats - set(ex.FORMATS)
    if unknown:
        raise CurationError(f"curated export formats {sorted(unknown)}: allowed values are "
                            f"{', '.join(ex.FORMATS)}")
    cur = curation if curation is not None else load_curation(store.root)
    dest = _check_dest(store, Path(dest) if dest is not None else store.root / CURATED_DIR)
    _require(store, "8c", "final_units")
    table = unit_table(store)
    sel = curated_selection(table, cur, include_rejected)
    A_da = _require(store, "7f", "A_refined")
    C_da, S_da = _require(store, "8b", "C_final"), _require(store, "8b", "S_final")
    crop = _require(store, "3a", "crop")
    y0, x0 = int(crop["y0"]), int(crop["x0"])
    full = (int(crop["full_height"]), int(crop["full_width"]))

    say(0.1, "reading footprints and traces")
    ids = sorted({v for g in sel.groups for v in g})
    A = np.asarray(A_da.sel(unit_id=ids).values, np.float32) if ids else \
        np.zeros((0,) + tuple(A_da.shape[1:]), np.float32)
    C = np.asarray(C_da.sel(unit_id=ids).values, np.float32) if ids else \
        np.zeros((0, C_da.sizes["frame"]), np.float32)
    S = np.asarray(S_da.sel(unit_id=ids).values, np.float32) if ids else np.zeros_like(C)
    row = {u: i for i, u in enumerate(ids)}
    idx = table.index()
    out_A, out_C, out_S, merged_from = [], [], [], []
    snr, corr, origin = [], [], []
    for g in sel.groups:
        rows = [row[v] for v in g]
        if len(g) == 1:
            out_A.append(A[rows[0]])
            out_C.append(C[rows[0]])
            out_S.append(S[rows[0]])
            snr.append(table.snr[idx[g[0]]])
            corr.append(table.correlation[idx[g[0]]])
        else:
            a, c, s = merge_units(A[rows], C[rows], S[rows])
            out_A += [a]
            out_C += [c]
            out_S += [s]
            snr.append(np.nan)
            corr.append(np.nan)
        merged_from.append("+".join(map(str, g)) if len(g) > 1 else "")
        origin.append(ORIGIN_WORDS["kept" if any(table.origin[idx[v]] == "kept" for v in g)
                                   else "removed"])
    n, T = len(sel.groups), C_da.sizes["frame"]
    Ak = np.stack(out_A) if n else np.zeros((0,) + tuple(A_da.shape[1:]), np.float32)
    Ck = np.stack(out_C) if n else np.zeros((0, T), np.float32)
    Sk = np.stack(out_S) if n else np.zeros((0, T), np.float32)
    exported_ids = np.array([g[0] for g in sel.groups], np.int64)

    say(0.4, "frames, motion and background")
    frames = np.asarray(C_da.frame.values, np.int64)
    frame_table = {k: np.asarray(v.values) for k, v in C_da.coords.items()
                   if v.dims == ("frame",) and k in ex.FRAME_COLUMNS}
    motion = np.zeros((T, 2), np.float32)
    if store.has("2c", "shifts"):
        shifts = store.load("2c", "shifts")
        if np.isin(frames, shifts.frame.values).all():
            motion = _rigid(shifts.sel(frame=frames).values)
    b = f = mean = None
    if store.has("4e", "b_init"):
        b = ex.place_in_frame(np.asarray(store.load("4e", "b_init").values, np.float32),
                              y0, x0, full)
    if store.has("4e", "f_init"):
        fi = store.load("4e", "f_init")
        if np.isin(frames, fi.frame.values).all():
            f = np.asarray(fi.sel(frame=frames).values, np.float32)
    if store.has("3a", "mean_frame"):
        m = np.asarray(store.load("3a", "mean_frame").values, np.float32)
        mean = m if m.shape == full else ex.place_in_frame(m, y0, x0, full)

    cent = _centroids(Ak) + np.array([y0, x0])
    notes = [cur.note(g[0]) for g in sel.groups]
    units = {"centroid_y": np.round(cent[:, 0], 3), "centroid_x": np.round(cent[:, 1], 3),
             "size_px": (Ak > 0).reshape(n, -1).sum(axis=1),
             "snr": np.round(np.asarray(snr, float), 4),
             "footprint_correlation": np.round(np.asarray(corr, float), 4),
             "label": list(sel.labels), "note": notes, "merged_from": merged_from,
             "origin": origin}
    metadata = _export_metadata(store)
    metadata["curation"] = {
        "file": CURATION_FILE, "include_rejected": bool(include_rejected),
        "made_for": cur.made_for, "labels_modified": cur.modified,
        "accepted": cur.ids_with("accepted"), "rejected": cur.ids_with("rejected"),
        "merges": [list(g) for g in cur.merges], "merged_units": MERGE_TRACES,
        "excluded": sel.excluded,
        "restore_from_quarantine": cur.restored_from_quarantine(),
        "note": "quarantined units restored here get traces only when steps 5-8 are re-run "
                "with them",
        "source_runs": made_for(store)}
    data = ex.ExportData(
        A=ex.place_in_frame(Ak, y0, x0, full), C=Ck, S=Sk, unit_ids=exported_ids,
        frames=frames, motion=motion, frame_table=frame_table, units=units,
        metadata=metadata, b=b, f=f, mean_frame=mean, exported_at=now_iso())
    say(0.6, "writing the files")
    n_kept = int(np.sum(table.origin == "kept"))
    counts = {"from 7f": int(np.sum(table.origin != "quarantined")), "kept by 8c": n_kept,
              "curated": n}
    files = ex.write_formats(dest, data, formats, table_format=table_format,
                             figure_units=figure_units, counts=counts)
    (dest / CURATION_FILE).write_text(json.dumps(cur.to_dict(), indent=1, default=jsonable)
                                      + "\n", encoding="utf-8")
    files.append({"path": CURATION_FILE, "format": "json"})
    say(1.0, "done")
    return {"folder": str(dest), "files": files, "n_units": n,
            "unit_ids": exported_ids.tolist(), "labels": list(sel.labels),
            "merged": [g for g in sel.groups if len(g) > 1], "excluded": sel.excluded,
            "include_rejected": bool(include_rejected)}
