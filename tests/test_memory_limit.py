"""A long recording stays within step 1's memory limit (issue 11).

20,000 frames run through every step in a fresh process with `memory_limit_gb=1`; the process
reports its own peak resident size (VmHWM), which must stay below the limit. The per-step
peaks the runner records go into each manifest and are checked for presence too.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mps_core import synth

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the peak from /proc (Linux)")

N_FRAMES = 20_000
LIMIT_GB = 1.0

# The child's own high-water mark is VmHWM: ru_maxrss would also count the test process
# it was forked from (Linux keeps the larger of the pre-exec and post-exec peaks).
CHILD = """
import sys
from mps_core.cli import main
rc = main(["run", "--input", sys.argv[1], "--output", sys.argv[2], "--quiet",
           "--set", "1.memory_limit_gb=%s", "--set", "1.n_workers=2"])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("PEAK_KB", hwm)
sys.exit(rc)
""" % LIMIT_GB


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long") / "recording"
    rec = synth.simulate(n_frames=N_FRAMES, height=64, width=64, n_cells=8, seed=3)
    synth.write_miniscope(rec, folder, frames_per_file=2000)
    return folder


def test_twenty_thousand_frames_stay_under_one_gigabyte(long_recording, tmp_path):
    out = tmp_path / "session"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(long_recording), str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_kb = int(proc.stdout.split("PEAK_KB")[-1].split()[0])
    manifests = [json.loads(p.read_text()) for p in (out / "steps").glob("*/manifest.json")]
    by_step = {m["step"]: m["peak_memory_mb"] for m in manifests}
    assert peak_kb * 1024 < LIMIT_GB * 1024**3, f"peak {peak_kb / 1024:.0f} MB; steps {by_step}"
    assert {m["step"] for m in manifests} >= {"2e", "3b", "8c"}
    for m in manifests:
        assert 0 < m["peak_memory_mb"] < LIMIT_GB * 1024, m["step"]
    units = json.loads((out / "steps" / "8c" / "final_units.json").read_text())
    assert sum(units["exported"]) >= 6  # it found the 8 planted cells, not just survived
