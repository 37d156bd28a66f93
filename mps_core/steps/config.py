"""Step 1: project configuration (who, where, and how much of the machine to use)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..paramtypes import P, StepParams
from ..registry import StepError, Step
from ..store import is_inside

_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigParams(StepParams):
    animal_id: str = P("animal", "Animal identifier: letters, digits, '-' and '_', not "
                       "numeric-only (e.g. 'm12').")
    session_id: str = P("session", "Session identifier: letters, digits, '-' and '_', not "
                        "numeric-only.")
    input_dir: str = P("", "Folder holding the recording's video files. Never written to.")
    output_dir: str = P("", "Folder where this session's results are written (not inside the "
                        "input folder).")
    cell_diameter_px: float | None = P(
        None, "Expected cell diameter in pixels as it appears in the movie (after optical blur); "
        "null estimates it from the data. Every pixel size from step 3a on derives from it.",
        ge=2, le=200, unit="px")
    n_workers: int = P(0, "Number of parallel workers; 0 uses every core of this machine.",
                       ge=0, le=512, advanced=True)
    memory_limit_gb: float = P(4.0, "Memory per worker in GB; chunk sizes are derived from it.",
                               gt=0.1, le=4096, advanced=True, unit="GB")
    video_percent: float = P(100.0, "Process only the first N% of frames (for a quick test run).",
                             gt=0, le=100, unit="%")
    scheduler_address: str = P("", "Address of an existing Dask distributed scheduler "
                               "(e.g. tcp://10.0.0.5:8786); empty runs on this machine.",
                               advanced=True)
    delete_intermediate_movies: bool = P(
        False, "Delete the loaded (2a), denoised (2b) and motion-corrected (2e) movies as soon "
        "as every step reading them is done; the cropped movie of 3a, which all later steps "
        "read, is kept. A session then needs about a third of the disk (hours-long "
        "recordings). Changing 2b to 3a afterwards needs a rerun from 2a.", advanced=True)


def check_config(p: ConfigParams) -> None:
    """All checks that need no data; raises StepError with the first problem."""
    for key, value in (("animal_id", p.animal_id), ("session_id", p.session_id)):
        if not _ID.match(value):
            raise StepError(f"{key} {value!r} may only hold letters, digits, '-' and '_' "
                            f"and must not be empty")
        if value.isdigit():
            raise StepError(f"{key} {value!r} must not be numeric-only (e.g. 'day{value}')")
    if not p.input_dir:
        raise StepError("input_dir is empty: choose the folder holding the videos")
    inp = Path(p.input_dir).expanduser()
    if not inp.is_dir():
        raise StepError(f"input folder {inp} does not exist or is not a folder")
    if not os.access(inp, os.R_OK | os.X_OK):
        raise StepError(f"input folder {inp} is not readable")
    if not p.output_dir:
        raise StepError("output_dir is empty: choose where the results go")
    out = Path(p.output_dir).expanduser()
    if is_inside(out, inp):
        raise StepError(f"output folder {out} is inside the input folder {inp}; raw data folders "
                        f"are never written to: choose another output folder")
    probe = out if out.exists() else next((a for a in out.parents if a.exists()), out)
    if not os.access(probe, os.W_OK):
        raise StepError(f"output folder {out} is not writable")
    if p.scheduler_address:
        _check_scheduler(p.scheduler_address)


def _check_scheduler(address: str) -> None:
    import socket
    from urllib.parse import urlparse

    u = urlparse(address if "://" in address else f"tcp://{address}")
    if not u.hostname or not u.port:
        raise StepError(f"scheduler_address {address!r} should look like tcp://HOST:PORT")
    try:
        socket.create_connection((u.hostname, u.port), timeout=5).close()
    except OSError as e:
        raise StepError(f"cannot reach the Dask scheduler at {address} ({e}); start it with "
                        f"'dask scheduler' or leave the address empty") from None


def configure(p: ConfigParams, ctx) -> dict:
    check_config(p)
    from ..execution import default_workers

    return {"config": {
        "animal_id": p.animal_id, "session_id": p.session_id,
        "input_dir": str(Path(p.input_dir).expanduser().absolute()),
        "output_dir": str(Path(p.output_dir).expanduser().absolute()),
        "n_workers": p.n_workers or default_workers(), "memory_limit_gb": p.memory_limit_gb,
        "video_percent": p.video_percent, "cell_diameter_px": p.cell_diameter_px, "scheduler_address": p.scheduler_address,
    }}


STEP_1 = Step(
    id="1", title="Project configuration", stage="Setup",
    summary="Names the animal and session, the input and output folders, and how much of the "
            "machine (workers, memory) or which Dask cluster to use. Checks the folders before "
            "anything runs.",
    params=ConfigParams, outputs=("config",), run=configure, preflight=check_config,
)
