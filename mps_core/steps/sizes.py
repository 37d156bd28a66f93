"""Pixel sizes that follow the data: every null size parameter derives from one cell diameter.

Step 3a decides the diameter (step 1's `cell_diameter_px`, or an estimate from the data) and
stores it as the `cell_size` output; later steps resolve their null parameters through here
so the rule for each size is written once, next to its parameter's description.
"""

from __future__ import annotations

import math


def diameter(cell_size: dict) -> float:
    return float(cell_size["diameter_px"])


def cell_area(d: float) -> float:
    return math.pi * (d / 2.0) ** 2


def length(value: float | None, d: float, factor: float, minimum: float = 1.0) -> float:
    """`value` if set, else `factor` x diameter (at least `minimum` px)."""
    return float(value) if value is not None else max(minimum, factor * d)


def area(value: float | None, d: float, factor: float, minimum: float = 1.0) -> float:
    """`value` if set, else `factor` x a cell's area (at least `minimum` px^2)."""
    return float(value) if value is not None else max(minimum, factor * cell_area(d))
