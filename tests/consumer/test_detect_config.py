"""Detection settings from TOML: defaults, every convention, and one ConfigError per mistake."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from cloud_consumer.detect.config import DetectSettings, default_config, load_detect
from cloud_consumer.detect.neighbourhood import NeighbourhoodConfig
from cloud_consumer.detect.rules import DETECTORS
from cloud_consumer.detect.rules.flatline import StuckValueConfig, ZeroRunConfig
from cloud_consumer.detect.rules.gaps import InterpolationConfig, Interpolator
from cloud_consumer.detect.rules.overload import OverloadConfig
from cloud_consumer.detect.rules.spike import RobustZConfig, SpikeConfig
from cloud_consumer.detect.rules.water import ReverseFlowConfig
from cloud_consumer.detect.validate import ValidationConfig, Validator
from meterlink_config import ConfigError, TomlReader
from meterlink_wire.vocab import Channel

HOUR = 3_600_000
POWER, FLOW = int(Channel.POWER), int(Channel.FLOW)


def load(tmp_path: Path, text: str) -> DetectSettings:
    path = tmp_path / "consumer.toml"
    path.write_text(text)
    return load_detect(TomlReader(path))


def fails(tmp_path: Path, text: str, key: str, reason: str) -> ConfigError:
    """The one ConfigError ``text`` raises; it names the file and ``key``."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    error = caught.value
    assert error.path == str(tmp_path / "consumer.toml")
    assert error.key == key
    assert reason in error.reason
    assert str(error).startswith(f"{tmp_path / 'consumer.toml'}: {key}: ")
    return error


# --- defaults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "[publish]\nport = 1\n", "[detect]\n", "[detect.rules]\n[detect.validation]\n"]
)
def test_defaults_when_nothing_is_configured(tmp_path: Path, text: str) -> None:
    settings = load(tmp_path, text)
    assert list(settings.rules) == list(DETECTORS)
    assert dict(settings.rules) == {name: default_config(name) for name in DETECTORS}
    assert settings.rules["overload"] == OverloadConfig()
    assert settings.rules["stuck_value"] == StuckValueConfig()
    assert settings.window == 60
    assert settings.horizon_ms is None
    assert settings.validation == ValidationConfig()
    assert settings.interpolation == InterpolationConfig()
    assert settings.neighbourhood is None
    assert settings == DetectSettings()


def test_default_engine_has_every_rule(tmp_path: Path) -> None:
    engine = load(tmp_path, "").build_engine()
    assert [d.name for d in engine.detectors] == list(DETECTORS)
    assert isinstance(engine.validator, Validator)
    assert engine.validator.config == ValidationConfig()
    assert isinstance(engine.interpolator, Interpolator)
    assert engine.interpolator.config == InterpolationConfig()
    assert engine.table.window == 60
    assert engine.table.horizon_ms is None


def test_enabled_narrows_the_rules(tmp_path: Path) -> None:
    settings = load(tmp_path, '[detect]\nenabled = ["missing_short", "spike", "overload"]\n')
    assert list(settings.rules) == ["spike", "overload", "missing_short"]  # DETECTORS order
    engine = settings.build_engine()
    assert [d.name for d in engine.detectors] == ["spike", "overload", "missing_short"]
    assert load(tmp_path, "[detect]\nenabled = []\n").build_engine().detectors == ()


def test_window_and_horizon(tmp_path: Path) -> None:
    settings = load(tmp_path, "[detect]\nwindow = 96\nhorizon_h = 24\n")
    assert (settings.window, settings.horizon_ms) == (96, 24 * HOUR)
    engine = settings.build_engine()
    assert (engine.table.window, engine.table.horizon_ms) == (96, 24 * HOUR)


# --- rule tables --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("min_duration_h = 12", 43_200_000),
        ("min_duration_min = 90", 5_400_000),
        ("min_duration_s = 1.5", 1_500),
        ("min_duration_days = 2", 172_800_000),
        ("min_duration_ms = 1234", 1_234),
        ("min_duration_h = 0.5", 1_800_000),
    ],
)
def test_time_fields_in_any_unit(tmp_path: Path, key: str, expected: int) -> None:
    settings = load(tmp_path, f"[detect.rules.stuck_value]\n{key}\n")
    assert settings.rules["stuck_value"] == StuckValueConfig(min_duration_ms=expected)


def test_register_rollover_is_optional(tmp_path: Path) -> None:
    settings = load(tmp_path, "[detect.rules.reverse_flow]\nregister_rollover = 100000\n")
    assert settings.rules["reverse_flow"] == ReverseFlowConfig(register_rollover=100_000.0)
    assert ReverseFlowConfig().register_rollover is None


def test_robust_z_noise_floor_is_off_by_default(tmp_path: Path) -> None:
    settings = load(tmp_path, "[detect.rules.spike_robust_z]\nmin_deviation = 0.05\n")
    assert settings.rules["spike_robust_z"] == RobustZConfig(min_deviation=0.05)
    assert RobustZConfig().min_deviation == 0.0


def test_rule_fields_by_name(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [detect.rules.overload]
        channels = ["power"]
        limit_kw = 15
        min_run = 3
        severity = "warning"

        [detect.rules.spike]
        rise = 2.5

        [detect.rules.stuck_value]
        min_duration_h = 12
        channels = ["power", "flow"]
        """,
    )
    overload = settings.rules["overload"]
    assert overload == OverloadConfig(
        limit_kw=15.0, min_run=3, channels=frozenset({POWER}), severity="warning"
    )
    assert isinstance(overload.limit_kw, float)
    assert settings.rules["spike"] == SpikeConfig(rise=2.5)
    assert settings.rules["stuck_value"] == StuckValueConfig(
        min_duration_ms=43_200_000, channels=frozenset({POWER, FLOW})
    )
    assert settings.rules["zero_run"] == ZeroRunConfig()  # untouched rules keep their defaults
    detectors = {d.name: d for d in settings.build_engine().detectors}
    assert detectors["overload"].severity == "warning"
    assert getattr(detectors["overload"], "config") == overload  # noqa: B009


def test_ids_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "vacant.txt").write_text(
        "# properties known to be vacant\n\nm-001\n  m-002   # since March\n\n#m-003\nm-004\n"
    )
    settings = load(tmp_path, '[detect.rules.zero_run]\nvacant_meters_file = "vacant.txt"\n')
    assert settings.rules["zero_run"] == ZeroRunConfig(
        vacant_meters=frozenset({"m-001", "m-002", "m-004"})
    )


def test_ids_as_a_list(tmp_path: Path) -> None:
    settings = load(tmp_path, '[detect.rules.zero_run]\nvacant_meters = ["a", "b"]\n')
    assert settings.rules["zero_run"].vacant_meters == frozenset({"a", "b"})


def test_ids_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "vacant.txt").write_text("x\n")
    config = tmp_path / "conf" / "consumer.toml"
    config.parent.mkdir()
    config.write_text('[detect.rules.zero_run]\nvacant_meters_file = "../lists/vacant.txt"\n')
    settings = load_detect(TomlReader(config))
    assert settings.rules["zero_run"].vacant_meters == frozenset({"x"})


# --- validation and interpolation ---------------------------------------------------------------


def test_validation_settings(tmp_path: Path) -> None:
    (tmp_path / "meters.txt").write_text("# fleet\nm1\nm2\n\nm3 # new\n")
    settings = load(
        tmp_path,
        """
        [detect.validation]
        registry_file = "meters.txt"
        max_value = { power = 30.0, flow = 120 }
        late_min = 90
        max_future_s = 30
        non_negative = ["energy_import", "voltage"]
        """,
    )
    validation = settings.validation
    assert validation.registry == frozenset({"m1", "m2", "m3"})
    assert validation.max_value == MappingProxyType({POWER: 30.0, FLOW: 120.0})
    assert validation.late_ms == 5_400_000
    assert validation.max_future_ms == 30_000
    assert validation.non_negative == frozenset({int(Channel.ENERGY_IMPORT), int(Channel.VOLTAGE)})
    assert validation.min_ts_ms == ValidationConfig().min_ts_ms
    engine = settings.build_engine()
    assert isinstance(engine.validator, Validator)
    assert engine.validator.config == validation


def test_registry_as_a_list(tmp_path: Path) -> None:
    settings = load(tmp_path, '[detect.validation]\nregistry = ["a"]\n')
    assert settings.validation.registry == frozenset({"a"})


def test_interpolation_settings(tmp_path: Path) -> None:
    settings = load(tmp_path, "[detect.interpolation]\nmax_gap_h = 2\nmax_points = 8\n")
    assert settings.interpolation == InterpolationConfig(max_gap_ms=2 * HOUR, max_points=8)
    explicit = load(tmp_path, "[detect.interpolation]\nenabled = true\n")
    assert explicit.interpolation == InterpolationConfig()


def test_interpolation_disabled(tmp_path: Path) -> None:
    settings = load(tmp_path, "[detect.interpolation]\nenabled = false\n")
    assert settings.interpolation is None
    assert settings.build_engine().interpolator is None


# --- neighbourhood ------------------------------------------------------------------------------


def test_neighbourhood_groups_table(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [detect.neighbourhood]
        min_correlation = 0.5
        min_members = 2
        channel = "power"

        [detect.neighbourhood.groups]
        feeder_a = ["m1", "m2"]
        feeder_b = ["m3"]
        """,
    )
    assert settings.neighbourhood == NeighbourhoodConfig.from_mapping(
        {"m1": "feeder_a", "m2": "feeder_a", "m3": "feeder_b"},
        min_correlation=0.5,
        min_members=2,
        channel=Channel.POWER,
    )


def test_neighbourhood_groups_file(tmp_path: Path) -> None:
    (tmp_path / "groups.csv").write_text(
        "meter_id,group\n# transformer T1\nm1,T1\nm2,T1\n\nm3,T2\n"
    )
    settings = load(
        tmp_path, '[detect.neighbourhood]\ngroups_file = "groups.csv"\nchannel = "flow"\n'
    )
    assert settings.neighbourhood == NeighbourhoodConfig.from_mapping(
        {"m1": "T1", "m2": "T1", "m3": "T2"}, channel=Channel.FLOW
    )
    assert settings.neighbourhood.group_of == {"m1": "T1", "m2": "T1", "m3": "T2"}


# --- errors -------------------------------------------------------------------------------------


def test_unknown_rule_table(tmp_path: Path) -> None:
    fails(tmp_path, "[detect.rules.spikes]\nrise = 2\n", "detect.rules.spikes", "no such rule")


def test_unknown_rule_enabled(tmp_path: Path) -> None:
    fails(tmp_path, '[detect]\nenabled = ["spike", "leak"]\n', "detect.enabled", "unknown rule")
    fails(tmp_path, "[detect]\nenabled = [1]\n", "detect.enabled", "unknown rule")
    fails(tmp_path, "[detect]\nenabled = [{ a = 1 }]\n", "detect.enabled", "unknown rule")
    fails(tmp_path, '[detect]\nenabled = "spike"\n', "detect.enabled", "expected list")


def test_unknown_key_in_a_rule_table(tmp_path: Path) -> None:
    error = fails(
        tmp_path, "[detect.rules.overload]\nlimit_kW = 15\n", "detect.rules.overload.limit_kW",
        "unknown key",
    )  # fmt: skip
    assert "limit_kw" in error.reason  # the expected keys are listed
    assert "channels" in error.reason


def test_unknown_key_in_a_disabled_rules_table(tmp_path: Path) -> None:
    text = '[detect]\nenabled = ["spike"]\n[detect.rules.overload]\nlimt_kw = 3\n'
    fails(tmp_path, text, "detect.rules.overload.limt_kw", "unknown key")
    # A valid table of a disabled rule is fine, and the rule stays disabled.
    settings = load(
        tmp_path, '[detect]\nenabled = ["spike"]\n[detect.rules.overload]\nmin_run = 3\n'
    )
    assert list(settings.rules) == ["spike"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[detect]\nwindows = 5\n", "detect.windows"),
        ("[detect]\nhorizon_hours = 5\n", "detect.horizon_hours"),
        ("[detect.validation]\nlate = 5\n", "detect.validation.late"),
        ("[detect.validation]\nregistry_files = 'x'\n", "detect.validation.registry_files"),
        ("[detect.interpolation]\nmax_pionts = 3\n", "detect.interpolation.max_pionts"),
        ("[detect.interpolation]\nenabled = false\nmax_pionts = 3\n",
         "detect.interpolation.max_pionts"),
        ("[detect.rules.stuck_value]\nmin_duration = 5\n", "detect.rules.stuck_value.min_duration"),
        ("[detect.rules.overload]\nlimit_kw_h = 5\n", "detect.rules.overload.limit_kw_h"),
        ("[detect.neighbourhood]\ngroups_file = 'g.csv'\nmin_member = 2\n",
         "detect.neighbourhood.min_member"),
    ],
)  # fmt: skip
def test_unknown_keys_everywhere(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "g.csv").write_text("m1,a\n")
    fails(tmp_path, text, key, "unknown key")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[detect.rules.overload]\nmin_run = "six"\n', "detect.rules.overload.min_run",
         "expected int"),
        ("[detect.rules.overload]\nmin_run = 6.0\n", "detect.rules.overload.min_run",
         "expected int"),
        ('[detect.rules.overload]\nlimit_kw = "15"\n', "detect.rules.overload.limit_kw",
         "expected int or float"),
        ("[detect.rules.overload]\nlimit_kw = true\n", "detect.rules.overload.limit_kw",
         "expected int or float"),
        ('[detect.rules.overload]\nchannels = "power"\n', "detect.rules.overload.channels",
         "expected list"),
        ('[detect.rules.overload]\nseverity = "fatal"\n', "detect.rules.overload.severity",
         "must be one of"),
        ('[detect.rules.stuck_value]\nmin_duration_h = "12"\n',
         "detect.rules.stuck_value.min_duration_h", "expected int or float"),
        ("[detect.rules.zero_run]\nvacant_meters = [1, 2]\n", "detect.rules.zero_run.vacant_meters",
         "expected a list of strings"),
        ("[detect.validation]\nmax_value = 30\n", "detect.validation.max_value", "expected dict"),
        ('[detect.validation]\nmax_value = { power = "30" }\n',
         "detect.validation.max_value.power", "expected int or float"),
        ('[detect.interpolation]\nenabled = "no"\n', "detect.interpolation.enabled",
         "expected bool"),
        ("[detect]\nwindow = 0\n", "detect.window", "must be >= 1"),
        ('[detect.neighbourhood.groups]\nf = "m1"\n', "detect.neighbourhood.groups.f",
         "expected a list of meter ids"),
    ],
)  # fmt: skip
def test_wrong_types(tmp_path: Path, text: str, key: str, reason: str) -> None:
    fails(tmp_path, text, key, reason)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[detect.rules.overload]\nchannels = ["powr"]\n', "detect.rules.overload.channels"),
        ('[detect.validation]\nnon_negative = ["volts"]\n', "detect.validation.non_negative"),
        ("[detect.validation]\nmax_value = { watts = 3 }\n", "detect.validation.max_value.watts"),
        ("[detect.neighbourhood]\nchannel = \"pwr\"\n[detect.neighbourhood.groups]\nf = [\"a\"]\n",
         "detect.neighbourhood.channel"),
    ],
)  # fmt: skip
def test_unknown_channel_name(tmp_path: Path, text: str, key: str) -> None:
    error = fails(tmp_path, text, key, "unknown channel")
    assert "energy_import" in error.reason  # the channel names are listed


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[detect.rules.overload]\nmin_run = 0\n", "detect.rules.overload", "min_run"),
        ("[detect.rules.stuck_value]\nmin_duration_h = -1\n",
         "detect.rules.stuck_value.min_duration_h", "must be >= 0"),
        ("[detect.rules.missing_short]\nmin_gap_h = 0\n", "detect.rules.missing_short",
         "min_gap_ms must be positive"),
        ("[detect.rules.missing_short]\nmax_gap_h = 2\n", "detect.rules.missing_short",
         "max_gap_ms must exceed"),
        ("[detect.validation]\nlate_ms = 0\n", "detect.validation", "late_ms"),
        ("[detect.interpolation]\ntolerance = 1.0\n", "detect.interpolation", "tolerance > 1"),
        ("[detect]\nhorizon_min = 0\n", "detect.horizon_*", "must be positive"),
        ("[detect.neighbourhood]\nmin_members = 1\n[detect.neighbourhood.groups]\nf = [\"a\"]\n",
         "detect.neighbourhood", "min_members"),
        ("[detect.neighbourhood.groups]\nf = [\"a\"]\ng = [\"a\"]\n",
         "detect.neighbourhood.groups.g", "in two groups"),
        ("[detect.neighbourhood]\nmin_members = 2\n", "[detect.neighbourhood.groups]",
         "missing table"),
    ],
)  # fmt: skip
def test_values_a_config_rejects(tmp_path: Path, text: str, key: str, reason: str) -> None:
    fails(tmp_path, text, key, reason)


def test_time_given_in_two_units(tmp_path: Path) -> None:
    text = "[detect.rules.stuck_value]\nmin_duration_h = 12\nmin_duration_min = 720\n"
    fails(tmp_path, text, "detect.rules.stuck_value.min_duration_*", "more than one unit")
    text = "[detect.validation]\nlate_ms = 1\nlate_s = 1\n"
    fails(tmp_path, text, "detect.validation.late_*", "more than one unit")


def test_missing_ids_file(tmp_path: Path) -> None:
    error = fails(
        tmp_path, '[detect.rules.zero_run]\nvacant_meters_file = "vacant.txt"\n',
        "detect.rules.zero_run.vacant_meters_file", "no such file",
    )  # fmt: skip
    assert str(tmp_path / "vacant.txt") in error.reason
    fails(
        tmp_path, '[detect.validation]\nregistry_file = "fleet.txt"\n',
        "detect.validation.registry_file", "no such file",
    )  # fmt: skip
    fails(
        tmp_path, '[detect.neighbourhood]\ngroups_file = "groups.csv"\n',
        "detect.neighbourhood.groups_file", "no such file",
    )  # fmt: skip


def test_bad_groups_file(tmp_path: Path) -> None:
    (tmp_path / "groups.csv").write_text("m1,T1\nm2\n")
    text = '[detect.neighbourhood]\ngroups_file = "groups.csv"\n'
    fails(
        tmp_path, text, "detect.neighbourhood.groups_file", "groups.csv:2: expected meter_id,group"
    )
    (tmp_path / "groups.csv").write_text("m1,T1\nm1,T2\n")
    fails(tmp_path, text, "detect.neighbourhood.groups_file", "meter 'm1' in two groups")


def test_engine_detectors_match_the_enabled_rules(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [detect]
        enabled = ["overload", "zero_run", "missing_extended", "burst"]

        [detect.rules.overload]
        limit_kw = 15

        [detect.rules.zero_run]
        min_duration_h = 6
        """,
    )
    engine = settings.build_engine()
    names = [d.name for d in engine.detectors]
    assert names == ["overload", "zero_run", "burst", "missing_extended"]
    configs = [getattr(d, "config") for d in engine.detectors]  # noqa: B009
    assert configs == [settings.rules[name] for name in names]
    assert configs[0] == OverloadConfig(limit_kw=15.0)
    assert configs[1] == ZeroRunConfig(min_duration_ms=6 * HOUR)
    assert [d.name for d in settings.detectors()] == names
    fresh = settings.build_engine()
    assert fresh.detectors[0] is not engine.detectors[0]  # fresh detectors each time
