"""The rules: one small detector per utility practice, each with a frozen config.

:data:`DETECTORS` maps every rule name to a factory of a default-configured detector; the
conformance suite runs over all of them, so a new rule joins it by being listed here.
"""

from __future__ import annotations

from collections.abc import Callable

from cloud_consumer.detect.base import Detector
from cloud_consumer.detect.rules.flatline import (
    LowVarianceConfig,
    LowVarianceDetector,
    StuckValueConfig,
    StuckValueDetector,
    ZeroRunConfig,
    ZeroRunDetector,
)
from cloud_consumer.detect.rules.gaps import (
    MissingDataConfig,
    MissingExtendedDetector,
    MissingShortDetector,
)
from cloud_consumer.detect.rules.overload import OverloadConfig, OverloadDetector
from cloud_consumer.detect.rules.spike import (
    RobustZConfig,
    RobustZDetector,
    SpikeConfig,
    SpikeDetector,
)
from cloud_consumer.detect.rules.water import (
    BurstConfig,
    BurstDetector,
    ContinuousFlowConfig,
    ContinuousFlowDetector,
    ReverseFlowConfig,
    ReverseFlowDetector,
)

DETECTORS: dict[str, Callable[..., Detector]] = {
    SpikeDetector.name: SpikeDetector,
    RobustZDetector.name: RobustZDetector,
    OverloadDetector.name: OverloadDetector,
    StuckValueDetector.name: StuckValueDetector,
    ZeroRunDetector.name: ZeroRunDetector,
    LowVarianceDetector.name: LowVarianceDetector,
    ContinuousFlowDetector.name: ContinuousFlowDetector,
    BurstDetector.name: BurstDetector,
    ReverseFlowDetector.name: ReverseFlowDetector,
    MissingShortDetector.name: MissingShortDetector,
    MissingExtendedDetector.name: MissingExtendedDetector,
}
"""Rule name -> detector class: called bare for the default config, or with a config."""


def default_detectors() -> list[Detector]:
    """A fresh instance of every rule with its default config, in :data:`DETECTORS` order."""
    return [factory() for factory in DETECTORS.values()]


__all__ = [
    "DETECTORS",
    "BurstConfig",
    "BurstDetector",
    "ContinuousFlowConfig",
    "ContinuousFlowDetector",
    "LowVarianceConfig",
    "LowVarianceDetector",
    "MissingDataConfig",
    "MissingExtendedDetector",
    "MissingShortDetector",
    "OverloadConfig",
    "OverloadDetector",
    "ReverseFlowConfig",
    "ReverseFlowDetector",
    "RobustZConfig",
    "RobustZDetector",
    "SpikeConfig",
    "SpikeDetector",
    "StuckValueConfig",
    "StuckValueDetector",
    "ZeroRunConfig",
    "ZeroRunDetector",
    "default_detectors",
]
