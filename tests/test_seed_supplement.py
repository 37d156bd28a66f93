"""Supplementing region seeds with greedy seeds (step 4e): which candidates are added, and the
demixed traces the added ones get."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mps_core.seeding.extract import make_recompute, normalise_rows
from mps_core.seeding.supplement import far_from, supplement_seeds

H = W = 40


def disk(cy: float, cx: float, r: float = 6.0) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r / 2) ** 2)).astype(np.float32) * \
        (((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2)


def test_far_from_uses_the_nearest_existing_centre():
    existing = np.array([[10.0, 10.0], [30.0, 30.0], [np.nan, np.nan]])
    centres = np.array([[10.0, 13.0], [20.0, 20.0], [30.0, 36.5]])
    np.testing.assert_array_equal(far_from(centres, existing, 5.0), [False, True, True])
    assert far_from(centres, np.zeros((0, 2)), 5.0).all()
    with pytest.raises(ValueError, match="min_distance"):
        far_from(centres, existing, -1)


def test_added_seed_gets_its_own_activity_back_from_a_mixed_neighbourhood():
    rng = np.random.default_rng(0)
    T = 400
    a1, a2 = disk(20, 18), disk(20, 22)  # two overlapping cells 4 px apart
    c1 = np.convolve(rng.random(T) < 0.03, np.exp(-np.arange(30) / 8))[:T] * 5
    c2 = np.convolve(rng.random(T) < 0.03, np.exp(-np.arange(30) / 8))[:T] * 5
    movie = (a1[None] * c1[:, None, None] + a2[None] * c2[:, None, None]
             + 0.05 * rng.standard_normal((T, H, W))).astype(np.float32)
    recompute = make_recompute(movie)
    A = normalise_rows(sp.csr_array(a1.reshape(1, -1)), "max")
    C = recompute(A)
    cand = sp.csr_array(np.stack([a1 * 0.9, a2]).reshape(2, -1))  # a duplicate of cell 1, and cell 2
    A_all, C_all, added = supplement_seeds(A, C, (H, W), cand, np.array([[20.0, 18.5], [20.0, 22.0]]),
                                           3.0, recompute)
    np.testing.assert_array_equal(added, [1])
    assert A_all.shape == (2, H * W) and C_all.shape == (2, T) and C_all.dtype == np.float32
    np.testing.assert_array_equal(C_all[0], C[0])  # the region seed keeps its trace
    # the weighted mean of cell 2's footprint carries cell 1's light; the demixed trace does not
    mean2 = recompute(normalise_rows(cand[[1]], "max"))[0]
    r_mean = np.corrcoef(mean2, c1)[0, 1]
    r_demixed = np.corrcoef(C_all[1], c1)[0, 1]
    assert r_mean > 0.3 and abs(r_demixed) < 0.1
    assert np.corrcoef(C_all[1], c2)[0, 1] > 0.99


def test_nothing_to_add_returns_the_seeds_unchanged():
    A = sp.csr_array(disk(20, 20).reshape(1, -1))
    C = np.ones((1, 5), np.float32)
    cand = sp.csr_array(disk(21, 20).reshape(1, -1))
    calls = []
    A2, C2, added = supplement_seeds(A, C, (H, W), cand, np.array([[21.0, 20.0]]), 3.0,
                                     lambda a: calls.append(a) or np.zeros((a.shape[0], 5)))
    assert added.size == 0 and not calls and A2.shape == A.shape
    np.testing.assert_array_equal(C2, C)
    with pytest.raises(ValueError, match="pixels"):
        supplement_seeds(A, C, (H, W + 1), cand, np.array([[21.0, 20.0]]), 3.0, lambda a: None)
