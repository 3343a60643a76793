"""Planted-fault series for the conformance suite, one module per rule family.

Each module in this package defines ``PLANTS``: rule name -> a function of a seeded
``numpy.random.Generator`` returning whole series (lists of readings in time order) in which that
rule fires and clears at least once. The conformance suite interleaves them with its base stream,
so a rule whose condition needs hours or days of data (stuck value, leaks...) still fires there.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Reading = tuple[str, int, int, int, float]
"""meter, channel code, unit code, ts_ms, value"""
Plant = Callable[[np.random.Generator], list[list[Reading]]]


def series(
    meter: str,
    kind: tuple[int, int],
    ts: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
) -> list[Reading]:
    """One meter's readings of one ``(channel, unit)``, from timestamps and values."""
    channel, unit = kind
    return [(meter, channel, unit, int(t), float(v)) for t, v in zip(ts, values, strict=True)]


def all_plants() -> dict[str, Plant]:
    """Every module's ``PLANTS``, merged (rule names are unique across modules)."""
    found: dict[str, Plant] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for rule, plant in getattr(module, "PLANTS", {}).items():
            if rule in found:
                raise ValueError(f"rule {rule!r} planted twice")
            found[rule] = plant
    return found
