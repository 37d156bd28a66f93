"""Every pipeline step, declared once each, in pipeline order.

The runner, the `mps` command, the GUI and the docs all read this list; a step's id, title,
parameters, inputs and outputs are written only in its own declaration.
"""

from __future__ import annotations

from ..registry import Step
from .cnmf_prep import STEP_5A, STEP_5B
from .config import STEP_1
from .final import STEP_8A, STEP_8B, STEP_8C
from .initialisation import STEP_3A, STEP_3B, STEP_3C
from .loading import STEP_2A
from .filtering import STEP_2B
from .motion import STEP_2C, STEP_2D, STEP_2E
from .validation import STEP_2F
from .seeding import STEP_4A, STEP_4B, STEP_4C, STEP_4D, STEP_4E, STEP_4F, STEP_4G, STEP_4H
from .spatial import STEP_7A, STEP_7B, STEP_7C, STEP_7D, STEP_7E, STEP_7F
from .temporal import STEP_6A, STEP_6B, STEP_6C, STEP_6D, STEP_6E

STEPS: tuple[Step, ...] = (
    STEP_1,
    STEP_2A, STEP_2B, STEP_2C, STEP_2D, STEP_2E, STEP_2F,
    STEP_3A, STEP_3B, STEP_3C,
    STEP_4A, STEP_4B, STEP_4C, STEP_4D, STEP_4E, STEP_4F, STEP_4G, STEP_4H,
    STEP_5A, STEP_5B,
    STEP_6A, STEP_6B, STEP_6C, STEP_6D, STEP_6E,
    STEP_7A, STEP_7B, STEP_7C, STEP_7D, STEP_7E, STEP_7F,
    STEP_8A, STEP_8B, STEP_8C,
)
BY_ID: dict[str, Step] = {s.id: s for s in STEPS}


def get(step_id: str) -> Step:
    try:
        return BY_ID[step_id]
    except KeyError:
        raise KeyError(f"unknown step '{step_id}'; steps are " + ", ".join(BY_ID)) from None
