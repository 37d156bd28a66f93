"""Step 1's scheduler address: the same steps on a Dask distributed cluster give the same result."""

import numpy as np
import pytest

from mps_core.params import ParamSet
from mps_core.runner import Runner
from mps_core.steps import STEPS
from mps_core.store import SessionStore
from mps_core.synth import simulate, write_miniscope


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as c:
        yield c


def test_cluster_run_matches_local_run(tmp_path, cluster):
    rec = simulate(n_frames=60, height=64, width=64, n_cells=4, cell_diameter=8.0, seed=5)
    write_miniscope(rec, tmp_path / "rec", layout="v4", frames_per_file=30)
    out = {}
    for name, address in (("local", ""), ("cluster", cluster.scheduler_address)):
        ps = ParamSet(STEPS).with_values("1", {
            "input_dir": str(tmp_path / "rec"), "output_dir": str(tmp_path / name),
            "scheduler_address": address})
        store = SessionStore(tmp_path / name)
        Runner(STEPS, ps, store).run(stop="2e")
        assert store.manifest("2e")["execution"]["scheduler"] == (address or "local threads")
        out[name] = store.load("2e", "movie").values
    np.testing.assert_allclose(out["cluster"], out["local"], atol=1e-5)
