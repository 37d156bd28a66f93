"""Supplementing the region seeds with seeds found by the greedy search (step 4e).

The NNDSVD + watershed seeds (3b-4d) give at most one seed per bright spot of a component, so
in dense fields cells next to or under a brighter neighbour get none. The greedy search of
`mps_core.seeding.greedy` looks at the movie itself and finds many of them, but it also finds
again most cells the regions already hold. A greedy seed is therefore added only where no
region seed lies within ``min_distance`` of its centre; later steps (4g merge, CNMF) sort out
the rest.

Traces of the added seeds: a footprint-weighted mean of the movie carries the light of every
overlapping neighbour, and the added seeds sit, by construction, next to or under other
seeds. Their initial traces are therefore the least-squares demixed traces of all seeds
together (`merge.demixed_traces`), computed from the weighted means without another pass.
The region seeds keep their traces as before. On the simulated benchmark recordings this
raised the final F1 from 0.696 to 0.753 (dense CA1) and from 0.535 to 0.562 (cortex) over the
region seeds alone; weighted-mean traces for the added seeds gave 0.731 / 0.540.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

from ..cnmf.sparse_footprints import centroids_csr
from .extract import normalise_rows
from .merge import demixed_traces
from .quarantine import skewness

__all__ = ["far_from", "supplement_seeds"]


def far_from(centres: np.ndarray, existing: np.ndarray, min_distance: float) -> np.ndarray:
    """Boolean (n,): which ``centres`` (n, 2) lie farther than ``min_distance`` px from every
    finite row of ``existing`` (m, 2)."""
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    existing = np.asarray(existing, np.float64).reshape(-1, 2)
    existing = existing[np.isfinite(existing).all(axis=1)]
    if not np.isfinite(min_distance) or min_distance < 0:
        raise ValueError(f"supplement: min_distance must be a number >= 0 px, got {min_distance}")
    if len(existing) == 0 or len(centres) == 0:
        return np.ones(len(centres), bool)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(existing).query(centres, k=1)
    return dist > min_distance


def supplement_seeds(A: sp.csr_array, C: np.ndarray, shape: tuple[int, int], candidates: sp.csr_array,
                     centres: np.ndarray, min_distance: float, recompute: Callable,
                     normalisation: str = "max", min_skewness: float = 0.0
                     ) -> tuple[sp.csr_array, np.ndarray, np.ndarray]:
    """Append the candidate seeds that lie away from the existing ones.

    ``A`` (n, pixels) CSR and ``C`` (n, frames): the region seeds under the 4e convention;
    ``candidates`` (m, pixels) CSR footprints with ``centres`` (m, 2) (y, x) px;
    ``recompute(A_new) -> (k, frames)`` 4e-convention weighted-mean traces of new footprints
    (a streamed pass over the movie, `extract.make_recompute`).
    Candidates whose demixed trace is less skewed than ``min_skewness`` are not added:
    calcium activity is rare positive transients (positively skewed), while the slow drifts of
    vessels and glow the search also picks up are not.
    Returns ``(A_all, C_all, added)``: the seeds with the added ones last (footprints
    normalised as ``normalisation``), float32 traces, and the indices of the candidates added.
    """
    A = sp.csr_array(A)
    C = np.asarray(C, np.float32)
    candidates = sp.csr_array(candidates)
    if candidates.shape[1] != A.shape[1] or A.shape[1] != shape[0] * shape[1]:
        raise ValueError(f"supplement: footprints cover {candidates.shape[1]} and {A.shape[1]} pixels, "
                         f"frames have {shape[0]}x{shape[1]}")
    if len(centres) != candidates.shape[0]:
        raise ValueError(f"supplement: {len(centres)} centres for {candidates.shape[0]} candidates")
    keep = far_from(centres, centroids_csr(A, shape), min_distance)
    keep &= np.asarray(candidates.sum(axis=1)).ravel() > 0
    added = np.flatnonzero(keep)
    if added.size == 0:
        return A, C, added
    A_new = normalise_rows(candidates[added], normalisation)
    C_new = np.asarray(recompute(A_new), np.float32)
    A_all = sp.vstack([A, A_new], format="csr")
    C_all = np.vstack([C, C_new])
    demixed = demixed_traces(A_all, C_all)
    C_new = demixed[len(C):]
    active = np.nan_to_num(skewness(C_new), nan=-np.inf) >= min_skewness
    if not active.any():
        return A, C, added[:0]
    A_all = sp.vstack([A, A_new[np.flatnonzero(active)]], format="csr")
    C_all = np.vstack([C, C_new[active]])
    return sp.csr_array(A_all), C_all.astype(np.float32), added[active]
