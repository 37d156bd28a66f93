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


def test_runs_in_parallel_threads_keep_their_own_client():
    """A batch runs sessions in threads on one cluster: one run ending must not cancel the
    other's computations (it did while each run set the process-wide default client, which
    the later run's client became)."""
    import threading
    import time

    import dask

    distributed = pytest.importorskip("distributed")
    from mps_core.execution import Execution

    result = {}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster:
        b_entered, a_entered = threading.Event(), threading.Event()

        def slow(x):
            time.sleep(3.0)
            return x + 1

        def run_b():
            try:
                with Execution(scheduler_address=cluster.scheduler_address) as ex:
                    b_entered.set()
                    assert a_entered.wait(30)  # A's client is the newer one now
                    result["own client"] = distributed.get_client() is ex.client
                    result["value"] = dask.delayed(slow)(1).compute()  # an implicit compute
            except Exception as e:  # noqa: BLE001 -- reported by the assertion below
                result["error"] = repr(e)

        t = threading.Thread(target=run_b)
        t.start()
        assert b_entered.wait(30)
        with Execution(scheduler_address=cluster.scheduler_address):
            a_entered.set()
            time.sleep(1.0)  # B's task is running now (it takes 3 s)
        # run A has ended (its client closed) while B's task was running
        t.join(60)
    assert result == {"own client": True, "value": 2}
