"""The rules: one small detector per utility practice, each with a frozen config.

:data:`DETECTORS` maps every rule name to a factory of a default-configured detector; the
conformance suite runs over all of them, so a new rule joins it by being listed here.
"""

from __future__ import annotations

from collections.abc import Callable

from cloud_consumer.detect.base import Detector
from cloud_consumer.detect.rules.overload import OverloadConfig, OverloadDetector
from cloud_consumer.detect.rules.spike import (
    RobustZConfig,
    RobustZDetector,
    SpikeConfig,
    SpikeDetector,
)

DETECTORS: dict[str, Callable[[], Detector]] = {
    SpikeDetector.name: SpikeDetector,
    RobustZDetector.name: RobustZDetector,
    OverloadDetector.name: OverloadDetector,
}
"""Rule name -> factory of the detector with its default config."""


def default_detectors() -> list[Detector]:
    """A fresh instance of every rule with its default config, in :data:`DETECTORS` order."""
    return [factory() for factory in DETECTORS.values()]


__all__ = [
    "DETECTORS",
    "OverloadConfig",
    "OverloadDetector",
    "RobustZConfig",
    "RobustZDetector",
    "SpikeConfig",
    "SpikeDetector",
    "default_detectors",
]
