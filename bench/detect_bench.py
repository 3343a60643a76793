"""Detection bench: wire decode + validation + every rule, end to end, beside a naive Python loop.

    .venv/bin/python bench/detect_bench.py [--meters 10000,1000000] [--repeat 3] [--quick]
        [--naive-meters 20000] [--batch-messages 150] [--no-profile]

Workload (live gateway traffic, the path a Kinesis consumer sees):

* a fleet of --meters meters, one series each, in gateways of 1,000 meters; every poll a gateway
  sends ONE wire message of 1,000 window rows (``window_s`` 60, count 60, min/max/mean/last; the
  engine reads ``mean``), so every batch holds one reading per series, at a 60 s cadence
  (``start_ms`` = T0 + step * 60 s, ``now_ms`` = window end + 5 s). Messages are plain JSON
  (the edge agent's default), ~64 KB each, all encoded before any timing;
* the consumer takes a poll's messages --batch-messages (150) at a time, one ``Engine.process``
  call each: what one Kinesis GetRecords call hands it (at most 10 MB, ~156 such messages).
  A 10,000-meter poll is one batch of 10 messages; a 1,000,000-meter poll is 7 batches that
  together touch every one of the 1,000,000 tracked series;
* power meters in kW (3 decimals), every tenth in W (whole watts: the validator converts), 2 %
  water meters on ``flow`` (L/min, every other one in m3/h: converted); values are a per-meter
  level with 5 % Gaussian noise, so the robust z-score fires now and then on its own;
* planted faults, the same local meters in every gateway (11 per 1,000): a x20 spike every 10
  polls (spike, then drop), an 8-poll run at 25 kW (overload), gateway clocks 5 h / 25 h / 49 h /
  8 days / 40 min behind that NTP fixes on the second timed poll (missing_short; missing_extended
  with a frozen register -> stuck_value, with zeros -> zero_run, with a flat signal ->
  low_variance; a 40 min gap -> interpolated estimates and a burst at 45 L/min), a stuck clock
  (backdated, rejected), a clock 1 h ahead (future, rejected), a water meter replaying an hourly
  backlog (late; continuous_flow after 24 flowing hours), backflow every 10 polls (reverse_flow);
* meters come online over the first ``refresh`` (6) polls, one sixth per poll, so the robust
  z-score's baseline refreshes (a series recomputes its median and MAD every 6 of its readings)
  are spread evenly: about a sixth of the series sort their window on each poll, as in a fleet
  that did not all start at the same minute;
* the last warm-up poll is decoded from wire messages like the timed ones, so the decoder and
  the series table know each gateway's meter dictionary, as in a consumer that has run for a
  minute (a gateway resends the same dictionary every window);
* sizes: up to 100,000 meters, 60 warm-up polls (full windows) then 30 timed polls; above,
  ``min_points + refresh - 1`` (35) warm-up polls, so every series has the robust z-score's 30
  points and it judges every timed reading, then 3 timed polls. Other warm-up polls go to the engine
  as ReadingColumns (untimed; equal to what decode + join gives, checked on the timed polls);
  every run starts from a deep copy of the warmed engine, so all runs do the same work.

Figures (medians of --repeat runs, process pinned to one core; the machine is shared and noisy):

1. end to end: readings/s for decode (``meterlink_wire.decode`` of every message, joined into
   ReadingColumns by ``cloud_consumer.replay_input._WireChunk``, exactly as the replay reader
   does) + ``Engine.process`` (``DetectSettings().build_engine()``: validator, all 11 rules,
   interpolator), per batch of --batch-messages; the split in seconds; beside the target
   (>= 1,000,000 readings/s);
2. join: ``_WireChunk``'s join (a global meter-id dict, one ``setdefault`` per id per message)
   against concatenating the messages' meter dictionaries with index offsets, on the same
   decoded batches (equal columns here: each meter is in one message per poll);
3. naive: a per-reading Python implementation of the same validation and rules (a deque of the
   last 60 values per meter-channel, ``statistics.median`` for the robust z-score's median and
   MAD, reused for ``refresh`` readings as the engine's rule does; plain floats and counters for
   the runs and day buckets; the same episode open/resolve logic; parameters read from the
   default configs, the logic written out independently), fed the same
   messages (``orjson.loads`` + a loop over the rows; no wire validation beyond that), warmed up
   on the same readings. Above --naive-meters it runs on the first gateways only (its state for
   1,000,000 series would take ~3 GB; its cost per reading is the median sorts, not the dict),
   which flatters it a little (smaller dict, better cache: once on all 1,000,000 meters,
   ``--naive-meters 1000000``, a 10-minute run, it did 150,757/s against 156,730/s on 20,000
   an hour before, the ratio 9.1x against 8.7x). Ratio = engine / naive; target 20x;
4. agreement: alerts per rule, quality score sum, rejected readings and interpolated estimates
   over the timed polls, engine (restricted to the naive's meters) beside naive: they must match;
5. memory: state bytes per meter-channel at window 60 (``engine.table.nbytes`` + every
   detector's per-row arrays + the episode trackers' arrays, over series; allocated capacity,
   so doubling slack counts), plus the RSS growth of each warm-up and tracemalloc of a
   10,000-meter engine (Python keys and dicts included); target <= 2 KB;
6. profile: cProfile of one decode + process pass per size (outside the timed runs): the top 8
   functions by cumulative time, and the engine's stages (decode, join, validation, rows,
   each detector's score + learn, interpolation, table update, episodes).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import math
import os
import pstats
import statistics
import sys
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from cloud_consumer.analytics import DAY_MS, HOUR_MS, MINUTE_MS
from cloud_consumer.detect import quality as quality_module
from cloud_consumer.detect.config import DetectSettings
from cloud_consumer.detect.engine import Detection, Engine
from cloud_consumer.detect.episodes import EpisodeTracker
from cloud_consumer.detect.rules.gaps import InterpolationConfig, Interpolator
from cloud_consumer.detect.state import SeriesTable, series_order
from cloud_consumer.detect.validate import REJECTIONS, Validator
from cloud_consumer.replay_input import ReadingColumns, _WireChunk
from meterlink_wire import Channel, Kind, ReadingBatch, Unit, decode, encode
from meterlink_wire.codec import DEFAULT_MAX_BYTES

T0 = 1_764_201_600_000  # 2025-11-27T00:00:00Z: a day boundary
CADENCE_MS = MINUTE_MS
LATENCY_MS = 5_000  # processed 5 s after the window closes
GATEWAY_METERS = 1_000  # rows per wire message
WINDOW = 60
SMALL = 100_000  # fleets up to this size get full windows and 30 timed polls
BATCH_MESSAGES = 150
"""Messages per ``Engine.process`` call: what one Kinesis GetRecords call returns (at most 10 MB,
156 of these ~64 KB messages), the batch a consumer of the stream has in hand."""
TARGET_RATE = 1_000_000
TARGET_RATIO = 20.0
TARGET_BYTES = 2_048
ROOT = Path(__file__).resolve().parent.parent

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Plants: local index (within a gateway) of the meter carrying each fault.
SPIKE, OVERLOAD, GAP_5H, FROZEN_25H, ZEROS_49H, FLAT_8D, STUCK_CLOCK, FAST_CLOCK = range(1, 9)
BURST, BACKLOG, BACKFLOW = 200, 250, 300  # water meters (local % 50 == 0)


def now_ms(step: int) -> int:
    """Server time when poll ``step`` is processed."""
    return T0 + (step + 1) * CADENCE_MS + LATENCY_MS


# --- workload ---------------------------------------------------------------------------------


class Fleet:
    """Meters, their channels/units/levels, and the readings of each poll (see module docstring)."""

    def __init__(self, meters: int, warm: int, seed: int = 7) -> None:
        self.meters = meters
        self.warm = warm  # polls before the first timed one (periodic plants are phased on it)
        self.correction = warm + 1  # the poll at which lagging gateway clocks are fixed
        self.seed = seed
        self.local = np.arange(meters) % GATEWAY_METERS
        # Meters come online over the first JOIN_SPREAD polls, so the robust z-score's baseline
        # refreshes (every Z_REFRESH readings of a series) are spread evenly over the polls.
        self.join = np.arange(meters) % JOIN_SPREAD
        water = self.local % 50 == 0
        self.channel = np.where(water, Channel.FLOW, Channel.POWER).astype(np.uint8)
        unit = np.full(meters, Unit.KW, dtype=np.uint8)
        unit[~water & (self.local % 10 == 9)] = Unit.W
        unit[water] = Unit.L_PER_MIN
        unit[water & (self.local % 100 == 0)] = Unit.M3_PER_H
        self.unit = unit
        # canonical -> wire unit factor, and the meter's resolution (10**decimals)
        self.to_wire = np.ones(meters)
        self.to_wire[unit == Unit.W] = 1000.0
        self.to_wire[unit == Unit.M3_PER_H] = 0.06
        self.resolution = np.full(meters, 1000.0)
        self.resolution[unit == Unit.W] = 1.0
        self.resolution[unit == Unit.L_PER_MIN] = 100.0
        self.resolution[unit == Unit.M3_PER_H] = 10_000.0
        self.ids = tuple(
            f"{'water' if w else 'elec'}-{i:07d}" for i, w in enumerate(water.tolist())
        )
        rng = np.random.default_rng(seed)
        self.base = np.where(
            water, rng.uniform(2.0, 8.0, meters), np.clip(rng.gamma(2.0, 0.75, meters), 0.2, 10.0)
        )

    def _at(self, local: int) -> IntArray:
        return np.flatnonzero(self.local == local)

    def readings(self, step: int) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        """(start_ms, wire value, wire min, wire max) of every meter at poll ``step``."""
        rng = np.random.default_rng([self.seed, step])
        noise = rng.standard_normal(self.meters)
        value = self.base * (1.0 + 0.05 * noise)  # canonical units (kW, L/min)
        ts = np.full(self.meters, T0 + step * CADENCE_MS, dtype=np.int64)
        late = step < self.correction
        phase = step - self.warm  # 0 at the first timed poll
        if phase % 10 == 1:
            value[self._at(SPIKE)] *= 20.0
        if (phase + 5) % 20 < 8:  # 8 polls above the limit: opens at the 6th (phase 0, 20...)
            value[self._at(OVERLOAD)] = 25.0 + np.abs(noise[self._at(OVERLOAD)])
        value[self._at(FROZEN_25H)] = 2.5
        value[self._at(ZEROS_49H)] = 0.0
        value[self._at(FLAT_8D)] = 2.0 if step % 2 else 2.001
        value[self._at(BURST)] = 45.0 if step >= self.correction - 5 else 3.0
        if (phase + 24) % 40 == 0:  # flow stops for an hour: continuous_flow opens 25 h later
            value[self._at(BACKLOG)] = 0.0
        if phase % 10 == 2:
            value[self._at(BACKFLOW)] = -1.5
        for local, behind in (
            (GAP_5H, 5 * HOUR_MS),
            (FROZEN_25H, 25 * HOUR_MS),
            (ZEROS_49H, 49 * HOUR_MS),
            (FLAT_8D, 8 * DAY_MS),
            (BURST, 40 * MINUTE_MS),
        ):
            if late:
                ts[self._at(local)] -= behind
        ts[self._at(STUCK_CLOCK)] = T0
        ts[self._at(FAST_CLOCK)] += HOUR_MS
        ts[self._at(BACKLOG)] = T0 - 200 * HOUR_MS + step * HOUR_MS
        wire = value * self.to_wire
        scale = self.resolution
        rounded = np.rint(wire * scale) / scale
        low = np.rint(np.minimum(0.9 * wire, 1.1 * wire) * scale) / scale
        high = np.rint(np.maximum(0.9 * wire, 1.1 * wire) * scale) / scale
        return ts, rounded, np.minimum(low, rounded), np.maximum(high, rounded)

    def columns(self, step: int, upto: int | None = None) -> ReadingColumns:
        """Poll ``step`` as decode + join gives it (meters online, in order; the first ``upto``)."""
        ts, value, _, _ = self.readings(step)
        n = self.meters if upto is None else upto
        online = np.flatnonzero(self.join[:n] <= step)
        return ReadingColumns(
            meter_ids=self.ids[:n],
            meter=online.astype(np.int32),
            channel=self.channel[online],
            unit=self.unit[online],
            ts_ms=ts[online],
            value=value[online],
            count=np.full(online.size, 60, dtype=np.int64),
        )

    def messages(self, step: int) -> list[bytes]:
        """Poll ``step`` as one encoded wire message per gateway (every meter online by then)."""
        assert step >= JOIN_SPREAD - 1
        ts, value, low, high = self.readings(step)
        out = []
        for gateway, begin in enumerate(range(0, self.meters, GATEWAY_METERS)):
            rows = slice(begin, min(begin + GATEWAY_METERS, self.meters))
            size = rows.stop - begin
            batch = ReadingBatch(
                gateway_id=f"gw-{gateway:05d}",
                sequence=step,
                sent_ms=now_ms(step) - LATENCY_MS // 2,
                window_s=60,
                kind=Kind.TELEMETRY,
                meters=self.ids[rows],
                meter=np.arange(size, dtype=np.int32),
                channel=self.channel[rows],
                unit=self.unit[rows],
                start_ms=ts[rows],
                count=np.full(size, 60),
                min=low[rows],
                max=high[rows],
                mean=value[rows],
                last=value[rows],
            )
            data = encode(batch)
            assert len(data) <= DEFAULT_MAX_BYTES
            out.append(data)
        return out


def join_wire_chunk(messages: Sequence[bytes]) -> ReadingColumns:
    """Decode and join messages exactly as the replay reader does."""
    chunk = _WireChunk()
    for data in messages:
        chunk.add(data)
    columns, _ = chunk.take()
    return columns


def join_by_lookup(batches: Sequence[ReadingBatch]) -> ReadingColumns:
    """Join that gives each meter id one entry: a dictionary lookup per meter per message.

    The obvious join, kept to show what ``_WireChunk``'s offset join (``join_offsets``) saves.
    """
    ids: dict[str, int] = {}
    meter, channel, unit, ts, value, count = [], [], [], [], [], []
    for batch in batches:
        remap = np.array([ids.setdefault(m, len(ids)) for m in batch.meters], np.int32)
        meter.append(remap[batch.meter] if len(batch) else np.empty(0, np.int32))
        channel.append(batch.channel)
        unit.append(batch.unit)
        ts.append(batch.start_ms)
        value.append(batch.last if batch.window_s == 0 else batch.mean)
        count.append(batch.count)
    return ReadingColumns(
        meter_ids=tuple(ids),
        meter=np.concatenate(meter).astype(np.int32, copy=False),
        channel=np.concatenate(channel).astype(np.uint8, copy=False),
        unit=np.concatenate(unit).astype(np.uint8, copy=False),
        ts_ms=np.concatenate(ts).astype(np.int64, copy=False),
        value=np.concatenate(value).astype(np.float64, copy=False),
        count=np.concatenate(count).astype(np.int64, copy=False),
    )


def join_offsets(batches: Sequence[ReadingBatch]) -> ReadingColumns:
    """Join by concatenating meter dictionaries with index offsets (no per-id Python work).

    A meter in two messages of one chunk appears twice in ``meter_ids``; the engine maps both
    entries to one row (``SeriesTable.rows_for`` resolves rows by name), so results are equal.
    """
    ids: list[str] = []
    meter = []
    for batch in batches:
        meter.append(batch.meter + np.int32(len(ids)))
        ids.extend(batch.meters)
    return ReadingColumns(
        meter_ids=tuple(ids),
        meter=np.concatenate(meter),
        channel=np.concatenate([b.channel for b in batches]),
        unit=np.concatenate([b.unit for b in batches]),
        ts_ms=np.concatenate([b.start_ms for b in batches]),
        value=np.concatenate([b.last if b.window_s == 0 else b.mean for b in batches]),
        count=np.concatenate([b.count for b in batches]),
    )


def same_columns(a: ReadingColumns, b: ReadingColumns) -> bool:
    return a.meter_ids == b.meter_ids and all(
        np.array_equal(getattr(a, name), getattr(b, name))
        for name in ("meter", "channel", "unit", "ts_ms", "value")
    )


# --- the naive implementation -------------------------------------------------------------------

# Parameters come from the default configs (so a changed default changes both sides); the logic
# below is written out independently, one reading at a time.
_SETTINGS = DetectSettings()
_RULES = _SETTINGS.rules
_VALIDATION = _SETTINGS.validation
_INTERPOLATION = _SETTINGS.interpolation or InterpolationConfig()
POWER, FLOW, VOLUME, TAMPER = (int(c) for c in (Channel.POWER, Channel.FLOW, Channel.VOLUME,
                                                 Channel.TAMPER))  # fmt: skip
CHANNEL_CODE = {c.wire_name: int(c) for c in Channel}
UNIT_CODE = {u.wire_name: int(u) for u in Unit}
# (channel, unit) -> factor to the channel's canonical unit (validate.py's table, written out).
SCALE: dict[tuple[int, int], float] = {}
for _channel, _units in {
    Channel.ENERGY_IMPORT: {Unit.KWH: 1.0, Unit.WH: 1e-3, Unit.MWH: 1e3},
    Channel.ENERGY_EXPORT: {Unit.KWH: 1.0, Unit.WH: 1e-3, Unit.MWH: 1e3},
    Channel.POWER: {Unit.KW: 1.0, Unit.W: 1e-3, Unit.MW: 1e3},
    Channel.REACTIVE_POWER: {Unit.KVAR: 1.0, Unit.VAR: 1e-3},
    Channel.VOLTAGE: {Unit.V: 1.0},
    Channel.CURRENT: {Unit.A: 1.0},
    Channel.FREQUENCY: {Unit.HZ: 1.0},
    Channel.POWER_FACTOR: {Unit.RATIO: 1.0},
    Channel.VOLUME: {Unit.M3: 1.0, Unit.L: 1e-3},
    Channel.FLOW: {Unit.L_PER_MIN: 1.0, Unit.M3_PER_H: 1000.0 / 60.0},
    Channel.TEMPERATURE: {Unit.DEG_C: 1.0},
    Channel.PRESSURE: {Unit.KPA: 1.0, Unit.BAR: 100.0},
    Channel.TAMPER: {Unit.FLAG: 1.0},
}.items():
    for _unit, _factor in _units.items():
        SCALE[int(_channel), int(_unit)] = _factor
INFERRED_CHANNELS = {int(Channel.POWER), int(Channel.ENERGY_IMPORT), int(Channel.ENERGY_EXPORT)}
NON_NEGATIVE = set(_VALIDATION.non_negative)
MAX_VALUE = dict(_VALIDATION.max_value)
MIN_TS_MS, MAX_FUTURE_MS = _VALIDATION.min_ts_ms, _VALIDATION.max_future_ms
LATE_MS = _VALIDATION.late_ms
# validation flag bits (validate.Flag)
CONVERTED, INFERRED, AMBIGUOUS, NEGATIVE, ABOVE_MAX, LATE = 1, 2, 4, 8, 16, 32
FUTURE, BAD_TIME, NOT_FINITE, MISMATCH = 64, 512, 1024, 2048
REJECT = FUTURE | BAD_TIME | NOT_FINITE | MISMATCH
WARNING_FLAGS = (AMBIGUOUS, NEGATIVE, ABOVE_MAX, LATE)
RISE, DROP, EPS = _RULES["spike"].rise, _RULES["spike"].drop, _RULES["spike"].eps
Z_THRESHOLD, MIN_POINTS = _RULES["spike_robust_z"].threshold, _RULES["spike_robust_z"].min_points
Z_REFRESH = getattr(_RULES["spike_robust_z"], "refresh", 1)  # baseline reuse (1: every reading)
LIMIT_KW, MIN_RUN = _RULES["overload"].limit_kw, _RULES["overload"].min_run
OVERLOAD_CHANNELS = set(_RULES["overload"].channels)
STUCK_MS = _RULES["stuck_value"].min_duration_ms
STUCK_CHANNELS = set(_RULES["stuck_value"].channels)
ZERO_MS, ZERO_CHANNELS = _RULES["zero_run"].min_duration_ms, set(_RULES["zero_run"].channels)
LV_DAYS, LV_MAX_CV = _RULES["low_variance"].days, _RULES["low_variance"].max_cv
LV_CHANNELS = set(_RULES["low_variance"].channels)
FLOW_HOURS = _RULES["continuous_flow"].min_hours
BURST_FLOW, BURST_MS = _RULES["burst"].min_flow, _RULES["burst"].min_duration_ms
FLOW_TOLERANCE = _RULES["reverse_flow"].flow_tolerance
VOLUME_TOLERANCE = _RULES["reverse_flow"].volume_tolerance
GAP_RULES = [
    (name, _RULES[name].min_gap_ms, _RULES[name].max_gap_ms)
    for name in ("missing_short", "missing_extended")
]
FILL_MAX_MS, FILL_TOLERANCE = _INTERPOLATION.max_gap_ms, _INTERPOLATION.tolerance
FILL_POINTS, FILL_PENALTY = _INTERPOLATION.max_points, _INTERPOLATION.penalty_per_hour
JOIN_SPREAD = Z_REFRESH
# episode rules, in order; the first two are rate-of-change rules, the rest faults
EPISODE_RULES = (
    "spike", "spike_robust_z", "overload", "stuck_value", "zero_run", "low_variance",
    "continuous_flow", "burst", "reverse_flow",
)  # fmt: skip


class NaiveSeries:
    """Everything the naive implementation keeps for one (meter, channel)."""

    __slots__ = (
        "active", "as_of", "burst_start", "counts", "days", "first_ts", "hour", "hour_min",
        "hour_run", "last_ts", "mad", "median", "opened", "prev_ts", "run", "seen", "shift",
        "squares", "stuck_start", "sums", "values", "zero_start",
    )  # fmt: skip

    def __init__(self) -> None:
        self.values: deque[float] = deque(maxlen=WINDOW)
        self.seen = 0
        self.last_ts = -1
        self.prev_ts = -1
        self.median = self.mad = 0.0
        self.as_of = 0
        self.run = 0
        self.stuck_start = 0
        self.zero_start = 0
        self.first_ts = 0
        self.shift = 0.0
        self.days = [0] * LV_DAYS
        self.counts = [0] * LV_DAYS
        self.sums = [0.0] * LV_DAYS
        self.squares = [0.0] * LV_DAYS
        self.hour = -1
        self.hour_min = 0.0
        self.hour_run = 0
        self.burst_start = -1
        self.active = [False] * len(EPISODE_RULES)
        self.opened = [0] * len(EPISODE_RULES)


@dataclass
class Tally:
    """What the timed polls produced (engine or naive), for the agreement check."""

    alerts: Counter[str] = field(default_factory=Counter)
    quality: int = 0
    rejected: int = 0
    estimates: int = 0

    def key(self) -> tuple[dict[str, int], int, int, int]:
        return dict(self.alerts), self.quality, self.rejected, self.estimates


class Naive:
    """Per-reading Python implementation of validation + the default rules + episodes."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, int], NaiveSeries] = {}
        self.alerts: list[tuple[str, str, int, int, int | None]] = []
        self.estimates: list[tuple[str, int, int, float, int]] = []
        self.tally = Tally()

    def feed_message(self, data: bytes, now: int) -> None:
        document = orjson.loads(data)
        meters = document["meters"]
        channels = [CHANNEL_CODE[name] for name in document["channels"]]
        units = [UNIT_CODE[name] for name in document["units"]]
        rows = document["rows"]
        values = rows["last"] if document["window_s"] == 0 else rows["mean"]
        for m, c, u, ts, v in zip(
            rows["meter"], rows["channel"], rows["unit"], rows["start_ms"], values, strict=True
        ):
            self.reading(meters[m], channels[c], units[u], ts, float(v), now)

    def feed_columns(self, columns: ReadingColumns, now: int) -> None:
        ids = columns.meter_ids
        for m, c, u, ts, v in zip(
            columns.meter.tolist(),
            columns.channel.tolist(),
            columns.unit.tolist(),
            columns.ts_ms.tolist(),
            columns.value.tolist(),
            strict=True,
        ):
            self.reading(ids[m], c, u, ts, v, now)

    def reading(  # noqa: PLR0912, PLR0915, PLR0917  # one straight-line function, on purpose
        self, meter_id: str, channel: int, unit: int, ts: int, raw: float, now: int
    ) -> None:
        tally = self.tally
        # validation
        flags = 0
        if not math.isfinite(raw):
            flags |= NOT_FINITE
        if ts < MIN_TS_MS:
            flags |= BAD_TIME
        if ts > now + MAX_FUTURE_MS:
            flags |= FUTURE
        if ts < now - LATE_MS:
            flags |= LATE
        value = raw
        if unit:
            scale = SCALE.get((channel, unit))
            if scale is None:
                flags |= MISMATCH
            else:
                if scale != 1.0:
                    flags |= CONVERTED
                value = raw * scale
        else:
            flags |= INFERRED
            if channel in INFERRED_CHANNELS:
                magnitude = abs(raw)
                if magnitude > 1000.0:
                    value = raw * 1e-3
                elif magnitude >= 10.0:
                    flags |= AMBIGUOUS
        if value < 0 and channel in NON_NEGATIVE:
            flags |= NEGATIVE
        if value > MAX_VALUE.get(channel, math.inf):
            flags |= ABOVE_MAX
        if flags & REJECT:
            tally.rejected += 1
            return
        key = (meter_id, channel)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = NaiveSeries()
        if ts <= s.last_ts:  # backdated
            tally.rejected += 1
            return
        window = s.values
        prev = window[-1] if s.seen else math.nan
        holds = [False] * len(EPISODE_RULES)
        # spike and drop against the previous reading
        if s.seen:
            change = (value - prev) / max(abs(prev), EPS)
            holds[0] = abs(change) > RISE or (prev > 0 and value < DROP * prev)
        # robust z-score against the window (baseline recomputed every Z_REFRESH readings)
        if len(window) >= MIN_POINTS:
            if s.as_of == 0 or s.seen - s.as_of >= Z_REFRESH:
                s.median = statistics.median(window)
                s.mad = statistics.median([abs(x - s.median) for x in window])
                s.as_of = s.seen
            if s.mad > 0:
                holds[1] = abs(value - s.median) / (1.4826 * s.mad) > Z_THRESHOLD
        # overload run
        if channel in OVERLOAD_CHANNELS and value > LIMIT_KW:
            s.run += 1
        else:
            s.run = 0
        holds[2] = s.run >= MIN_RUN
        # stuck value
        if channel in STUCK_CHANNELS:
            start = s.stuck_start if value == prev else ts
            holds[3] = value != 0 and ts - start >= STUCK_MS
            s.stuck_start = start
        # zero run
        if channel in ZERO_CHANNELS and value == 0:
            start = s.zero_start if prev == 0 else ts
            holds[4] = ts - start >= ZERO_MS
            s.zero_start = start
        # low variance: daily buckets of (count, sum, sum of squares) of value - shift
        if channel in LV_CHANNELS:
            if not s.seen:
                s.first_ts, s.shift = ts, value + 0.0
            deviation = value - s.shift
            day = ts // DAY_MS
            slot = day % LV_DAYS
            same = s.days[slot] == day and s.counts[slot] > 0
            count = (s.counts[slot] if same else 0) + 1
            total = (s.sums[slot] if same else 0.0) + deviation + 0.0
            squares = (s.squares[slot] if same else 0.0) + deviation * deviation
            rest_n = rest_s = rest_q = 0.0  # the window's other days, in slot order
            for k in range(LV_DAYS):
                if k != slot and s.counts[k] > 0 and day - LV_DAYS < s.days[k] < day:
                    rest_n += s.counts[k]
                    rest_s += s.sums[k]
                    rest_q += s.squares[k]
            s.days[slot], s.counts[slot], s.sums[slot], s.squares[slot] = (
                day, count, total, squares
            )  # fmt: skip
            n, total, squares = count + rest_n, total + rest_s, squares + rest_q
            centre = total / n
            std = math.sqrt(max(squares / n - centre * centre, 0.0))
            level = s.shift + centre
            holds[5] = (
                ts - s.first_ts >= LV_DAYS * DAY_MS and level != 0 and std / abs(level) < LV_MAX_CV
            )
        if channel == FLOW:
            # continuous flow: consecutive clock hours whose minimum flow was > 0
            hour = ts // HOUR_MS
            if hour > s.hour:
                flowing = s.hour_min > 0 and hour == s.hour + 1
                s.hour_run = s.hour_run + 1 if flowing else 0
                s.hour_min = value + 0.0
                s.hour = hour
            else:
                s.hour_min = min(s.hour_min, value) + 0.0
            holds[6] = s.hour_run >= FLOW_HOURS and s.hour_min > 0
            # burst: a sustained high flow
            if value >= BURST_FLOW:
                if s.burst_start < 0:
                    s.burst_start = ts
                holds[7] = ts - s.burst_start >= BURST_MS
            else:
                s.burst_start = -1
            holds[8] = value < -FLOW_TOLERANCE
        elif channel == VOLUME:
            holds[8] = value < prev - VOLUME_TOLERANCE
        # gaps (retrospective alerts) and interpolation of short ones
        if s.last_ts >= 0:
            gap = ts - s.last_ts
            for rule, low, high in GAP_RULES:
                if gap >= low and (high is None or gap < high):
                    self.alerts.append((rule, meter_id, channel, s.last_ts, ts))
                    tally.alerts[rule] += 1
            cadence = s.last_ts - s.prev_ts
            if s.prev_ts >= 0 and cadence > 0 and FILL_TOLERANCE * cadence < gap < FILL_MAX_MS:
                points = max(min(round(gap / cadence) - 1, FILL_POINTS), 1)
                score = max(100 - FILL_PENALTY * -(-gap // HOUR_MS), 0)
                for k in range(1, points + 1):
                    fraction = k / (points + 1)
                    self.estimates.append(
                        (meter_id, channel, s.last_ts + int(gap * fraction),
                         prev + (value - prev) * fraction, score)
                    )  # fmt: skip
                tally.estimates += points
        # episodes
        active, opened = s.active, s.opened
        for k, rule in enumerate(EPISODE_RULES):
            if holds[k] and not active[k]:
                active[k], opened[k] = True, ts
                self.alerts.append((rule, meter_id, channel, ts, None))
                tally.alerts[rule] += 1
            elif active[k] and not holds[k]:
                active[k] = False
                self.alerts.append((rule, meter_id, channel, opened[k], ts))
                tally.alerts[rule] += 1
        # quality score
        penalty = 5 if flags & (CONVERTED | INFERRED) else 0
        for flag in WARNING_FLAGS:
            if flags & flag:
                penalty += 15
        if holds[0] or holds[1]:
            penalty += 20
        if any(holds[2:]):
            penalty += 30
        tally.quality += min(max(100 - penalty, 0), 100)
        # the window learns the reading
        window.append(value)
        s.seen += 1
        s.prev_ts, s.last_ts = s.last_ts, ts


# --- measurement helpers -------------------------------------------------------------------------


def clone(engine: Engine) -> Engine:
    """A deep copy of a warmed engine (the validator, read-only, is shared)."""
    copied: Engine = copy.deepcopy(engine, {id(engine.validator): engine.validator})
    return copied


def tally_engine(
    tally: Tally, engine: Engine, detection: Detection, subset: int, first: int = 0
) -> None:
    """Add a batch's results for the fleet's first ``subset`` meters.

    The batch's readings are in meter order from fleet meter ``first``. Meter ids end in the
    meter's fleet index (``elec-0001234``), which says whether an alert or estimate is one of the
    first ``subset``.
    """

    def counted(meter_id: str) -> bool:
        return int(meter_id.rsplit("-", 1)[1]) < subset

    for alert in detection.alerts:
        if counted(alert.meter_id):
            tally.alerts[alert.rule] += 1
    inside = max(subset - first, 0)
    tally.quality += int(detection.quality[:inside].sum(dtype=np.int64))
    tally.rejected += int(np.count_nonzero(detection.flags[:inside] & REJECTIONS))
    keys = engine.table.key_of(detection.estimates.rows)
    tally.estimates += sum(1 for meter_id, _ in keys if counted(meter_id))


def state_bytes(engine: Engine) -> tuple[int, int, int]:
    """(table, detectors, trackers) bytes of numpy state."""

    def nbytes(value: object) -> int:
        if isinstance(value, np.ndarray):
            return int(value.nbytes)
        if isinstance(value, tuple | list):
            return sum(nbytes(item) for item in value)
        size = getattr(value, "nbytes", None)
        return size if isinstance(size, int) else 0

    detectors = sum(nbytes(v) for d in engine.detectors for v in vars(d).values())
    trackers = sum(t._active.nbytes + t._opened.nbytes for t in engine.trackers)
    return engine.table.nbytes, detectors, trackers


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def traced_bytes(meters: int, warm: int) -> tuple[float, int]:
    """tracemalloc bytes per series of an engine warmed on ``meters`` meters, and its capacity."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fleet = Fleet(meters, warm)
    engine = DetectSettings().build_engine()
    for step in range(warm):
        engine.process(fleet.columns(step), now_ms=now_ms(step))
    del fleet  # the table keeps its own references to the ids
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(engine.table), engine.table.capacity


# --- profile -------------------------------------------------------------------------------------


def _key(function: Callable[..., Any]) -> tuple[str, int, str]:
    code = function.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def _where(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    path = Path(filename)
    if path.is_relative_to(ROOT):
        return f"{path.relative_to(ROOT)}:{line}({name})"
    if filename == "~":
        return name
    return f"{'/'.join(path.parts[-2:])}:{line}({name})"


def profile(engine: Engine, polls: Sequence[tuple[int, list[bytes]]], batch: int) -> list[str]:
    """cProfile one decode + process pass: lines for the top functions and the engine's stages."""
    # builtins=False: a C call's time goes to its Python caller (tracing every builtin call
    # would inflate loops of dict.setdefault & co. several times over).
    profiler = cProfile.Profile(builtins=False)
    profiler.enable()
    for step, messages in polls:
        for _, part in batches_of(messages, batch):
            engine.process(join_wire_chunk(part), now_ms=now_ms(step))
    profiler.disable()
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    own = _key(profile), _key(join_wire_chunk)

    def cumulative(*functions: Callable[..., Any]) -> float:
        return sum(float(stats[_key(f)][3]) for f in functions if _key(f) in stats)

    total = cumulative(join_wire_chunk, Engine.process)
    ranked = sorted(
        ((float(row[3]), float(row[2]), int(row[1]), key) for key, row in stats.items()),
        reverse=True,
    )
    lines = [f"  top 8 by cumulative time (of {total:.2f} s in decode + join + process):"]
    for spent, own_time, calls, key in [r for r in ranked if r[3] not in own][:8]:
        lines.append(
            f"    {spent:7.3f} s {100 * spent / total:5.1f} %  tottime {own_time:6.3f} s "
            f"{calls:>6} calls  {_where(key)}"
        )

    stages: list[tuple[str, float]] = [
        ("wire decode (meterlink_wire.decode)", cumulative(decode)),
        ("join (_WireChunk.add minus decode, take)",
         cumulative(_WireChunk.add, _WireChunk.take) - cumulative(decode)),
        ("validation (Validator.check)", cumulative(Validator.check)),
        ("rows (SeriesTable.rows_for)", cumulative(SeriesTable.rows_for)),
        ("ordering (series_order) + backdated", cumulative(series_order, Validator.backdated)),
    ]  # fmt: skip
    for detector in engine.detectors:
        kind: Any = type(detector)
        stages.append((f"{detector.name} score + learn", cumulative(kind.score, kind.learn)))
    stages += [
        ("interpolation (Interpolator.fill)", cumulative(Interpolator.fill)),
        ("table update (SeriesTable.update)", cumulative(SeriesTable.update)),
        ("episodes (EpisodeTracker.update)", cumulative(EpisodeTracker.update)),
        ("quality score", cumulative(quality_module.score)),
    ]
    lines.append("  stages (cumulative; a rule's score/learn include the table reads it makes):")
    lines += [f"    {s:7.3f} s {100 * s / total:5.1f} %  {name}" for name, s in stages]
    return lines


# --- one fleet size ------------------------------------------------------------------------------


@dataclass
class SizeResult:
    meters: int
    warm: int
    timed: int
    naive_meters: int
    rate: float = 0.0
    decode_s: float = 0.0
    engine_s: float = 0.0
    join_lookup_s: float = 0.0
    join_offsets_s: float = 0.0
    naive_rate: float = 0.0
    engine_tally: Tally = field(default_factory=Tally)
    naive_tally: Tally = field(default_factory=Tally)
    state: tuple[int, int, int] = (0, 0, 0)
    series: int = 0
    capacity: int = 0
    rss_delta: int = 0
    profile: list[str] = field(default_factory=list)


Polls = list[tuple[int, list[bytes]]]


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def warm_up(fleet: Fleet, warm: int, naive_meters: int) -> tuple[Engine, Naive, int]:
    """An engine and a naive implementation fed ``warm`` polls, and the RSS the warm-up added."""
    gc.collect()
    before = rss_bytes()
    engine = DetectSettings().build_engine()
    naive = Naive()
    for step in range(warm):
        # The last warm-up poll goes through the wire path, as a consumer that has been running
        # for a while: gateways' meter dictionaries are known to the decoder and the table.
        columns = join_wire_chunk(fleet.messages(step)) if step == warm - 1 else fleet.columns(step)
        engine.process(columns, now_ms=now_ms(step))
        naive.feed_columns(fleet.columns(step, naive_meters), now_ms(step))
    gc.collect()
    naive.tally = Tally()
    return engine, naive, rss_bytes() - before


def batches_of(messages: list[bytes], size: int) -> Iterator[tuple[int, list[bytes]]]:
    """``(first meter, messages)`` per Engine.process call: ``size`` messages at a time."""
    for begin in range(0, len(messages), size):
        yield begin * GATEWAY_METERS, messages[begin : begin + size]


def engine_run(
    engine: Engine, polls: Polls, subset: int, fleet: Fleet | None, batch: int
) -> tuple[float, float, Tally]:
    """(decode s, engine s, results) of the timed polls; ``fleet`` given: check the columns."""
    tally = Tally()
    decode_s = engine_s = 0.0
    for step, messages in polls:
        for first, part in batches_of(messages, batch):
            start = time.perf_counter()
            columns = join_wire_chunk(part)
            middle = time.perf_counter()
            detection = engine.process(columns, now_ms=now_ms(step))
            end = time.perf_counter()
            decode_s += middle - start
            engine_s += end - middle
            tally_engine(tally, engine, detection, subset, first)
        if fleet is not None:
            joined = join_wire_chunk(messages)
            assert same_columns(joined, fleet.columns(step)), "decode + join != workload"
    return decode_s, engine_s, tally


def join_times(batches: Sequence[ReadingBatch], check: bool) -> tuple[float, float]:
    """Seconds to join decoded batches with a lookup per meter id, and with offsets."""
    start = time.perf_counter()
    lookup = join_by_lookup(batches)
    middle = time.perf_counter()
    offsets = join_offsets(batches)
    end = time.perf_counter()
    if check:
        assert same_columns(lookup, offsets), "offset join differs"
    return middle - start, end - middle


def naive_run(naive: Naive, polls: Polls, gateways: int) -> tuple[float, Tally]:
    """Seconds for the naive implementation on the first ``gateways`` messages of each poll."""
    start = time.perf_counter()
    for step, messages in polls:
        for data in messages[:gateways]:
            naive.feed_message(data, now_ms(step))
    return time.perf_counter() - start, naive.tally


def run_size(
    meters: int,
    *,
    warm: int,
    timed: int,
    repeat: int,
    naive_cap: int,
    with_profile: bool,
    batch: int = BATCH_MESSAGES,
) -> SizeResult:
    fleet = Fleet(meters, warm)
    gateways = -(-min(meters, naive_cap) // GATEWAY_METERS)
    result = SizeResult(meters, warm, timed, min(meters, gateways * GATEWAY_METERS))
    log(f"{meters:,} meters: encoding {timed} polls of {-(-meters // GATEWAY_METERS):,} messages")
    polls = [(step, fleet.messages(step)) for step in range(warm, warm + timed)]
    log(f"{meters:,} meters: warming up ({warm} polls)")
    engine, naive, result.rss_delta = warm_up(fleet, warm, result.naive_meters)
    result.state = state_bytes(engine)
    result.series, result.capacity = len(engine.table), engine.table.capacity
    batches = [decode(data) for data in polls[0][1]]
    rates, decodes, engines, naive_rates, lookup_joins, offset_joins = [], [], [], [], [], []
    for run in range(repeat):
        log(f"{meters:,} meters: run {run + 1}/{repeat}")
        live = clone(engine)
        gc.collect()
        decode_s, engine_s, tally = engine_run(
            live, polls, result.naive_meters, fleet if run == 0 else None, batch
        )
        del live
        rates.append(meters * len(polls) / (decode_s + engine_s))
        decodes.append(decode_s)
        engines.append(engine_s)
        if run == 0:
            result.engine_tally = tally
        assert tally.key() == result.engine_tally.key(), "engine results differ between runs"
        lookup_s, offsets_s = join_times(batches, check=run == 0)
        lookup_joins.append(lookup_s)
        offset_joins.append(offsets_s)
        baseline = copy.deepcopy(naive)
        gc.collect()
        seconds, result.naive_tally = naive_run(baseline, polls, gateways)
        naive_rates.append(result.naive_meters * len(polls) / seconds)
        del baseline
    del batches
    result.rate, result.naive_rate = statistics.median(rates), statistics.median(naive_rates)
    result.decode_s, result.engine_s = statistics.median(decodes), statistics.median(engines)
    result.join_lookup_s = statistics.median(lookup_joins)
    result.join_offsets_s = statistics.median(offset_joins)
    if with_profile:
        log(f"{meters:,} meters: profiling")
        profiled = polls if meters <= SMALL else polls[:1]
        result.profile = [
            f"\nprofile at {meters:,} meters: {len(profiled)} poll(s) of {meters:,} readings, "
            "decode + join + process, cProfile, one pass outside the timed runs",
            *profile(clone(engine), profiled, batch),
        ]
    return result


# --- report --------------------------------------------------------------------------------------


def report(results: list[SizeResult], repeat: int, traced: tuple[int, float, int] | None) -> None:
    print(
        f"\nend to end, one core, median of {repeat}: wire decode + join (_WireChunk) + "
        "Engine.process (validation, 11 rules, interpolation)"
    )
    print(
        f"{'meters':>10} {'timed polls':>17} {'readings/s':>11} {'decode s':>9} {'engine s':>9} "
        f"{'decode/s':>10} {'engine/s':>10}   target >= {TARGET_RATE:,}/s"
    )
    for r in results:
        readings = r.meters * r.timed
        verdict = "met" if r.rate >= TARGET_RATE else f"NOT met ({r.rate / TARGET_RATE:.2f}x)"
        print(
            f"{r.meters:>10,} {f'{r.timed} x {r.meters:,}':>17} {r.rate:>11,.0f} "
            f"{r.decode_s:>9.2f} {r.engine_s:>9.2f} {readings / r.decode_s:>10,.0f} "
            f"{readings / r.engine_s:>10,.0f}   {verdict}"
        )
    print(
        "\njoin of one poll's decoded messages (median): a lookup per meter id vs _WireChunk's "
        "offset concat"
    )
    for r in results:
        print(
            f"{r.meters:>10,}   lookups {1000 * r.join_lookup_s:8.1f} ms   offsets "
            f"{1000 * r.join_offsets_s:8.1f} ms   ({r.join_lookup_s / r.join_offsets_s:.1f}x; "
            f"same columns)"
        )
    print(
        f"\nnaive per-reading Python (orjson.loads + a loop; deque(60) + statistics.median), "
        f"median of {repeat}"
    )
    print(
        f"{'meters':>10} {'naive meters':>13} {'naive/s':>10} {'engine/s':>11} {'ratio':>7}"
        f"   target >= {TARGET_RATIO:.0f}x"
    )
    for r in results:
        ratio = r.rate / r.naive_rate
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(
            f"{r.meters:>10,} {r.naive_meters:>13,} {r.naive_rate:>10,.0f} {r.rate:>11,.0f} "
            f"{ratio:>6.1f}x   {verdict}"
        )
    print("\nagreement over the timed polls (engine restricted to the naive's meters):")
    for r in results:
        engine, naive = r.engine_tally, r.naive_tally
        same = "AGREE" if engine.key() == naive.key() else "DIFFER"
        print(
            f"  {r.meters:,} meters ({r.naive_meters:,} compared): alerts engine "
            f"{sum(engine.alerts.values()):,} naive {sum(naive.alerts.values()):,}; quality sum "
            f"{engine.quality:,} / {naive.quality:,}; rejected {engine.rejected:,} / "
            f"{naive.rejected:,}; estimates {engine.estimates:,} / {naive.estimates:,}: {same}"
        )
        rules = sorted(set(engine.alerts) | set(naive.alerts))
        pairs = [f"{rule} {engine.alerts[rule]}/{naive.alerts[rule]}" for rule in rules]
        print("    per rule, engine/naive: " + "  ".join(pairs))
    print(
        f"\nstate per meter-channel at window {WINDOW} (allocated arrays / series; "
        f"target <= {TARGET_BYTES:,} B)"
    )
    print(
        f"{'meters':>10} {'rows':>10} {'capacity':>10} {'table':>7} {'rules':>6} {'episodes':>9} "
        f"{'total':>7} {'per row':>8} {'RSS delta':>10}"
    )
    for r in results:
        table, detectors, trackers = (b / r.series for b in r.state)
        total = table + detectors + trackers
        per_row = sum(r.state) / max(r.capacity, 1)
        verdict = "met" if total <= TARGET_BYTES else "NOT met"
        print(
            f"{r.meters:>10,} {r.series:>10,} {r.capacity:>10,} {table:>7,.0f} {detectors:>6,.0f} "
            f"{trackers:>9,.0f} {total:>7,.0f} {per_row:>8,.0f} {r.rss_delta / r.series:>10,.0f}"
            f"   {verdict}"
        )
    if traced is not None:
        meters, per_series, capacity = traced
        print(
            f"  tracemalloc, engine warmed on {meters:,} meters (capacity {capacity:,}): "
            f"{per_series:,.0f} B/series (numpy arrays, keys, ids, dicts)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--meters",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[10_000, 1_000_000],
        help="comma-separated fleet sizes (default 10000,1000000)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive-meters", type=int, default=20_000)
    parser.add_argument(
        "--batch-messages",
        type=int,
        default=BATCH_MESSAGES,
        help=f"messages per Engine.process call (default {BATCH_MESSAGES}: one GetRecords call)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (< 30 s)")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.meters, args.repeat = [2_000, 10_000], 1
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    started = time.perf_counter()
    print(
        f"detection bench: gateways of {GATEWAY_METERS:,} meters, one 60 s window row per meter "
        f"per poll, window {WINDOW}; medians of {args.repeat}; one core"
    )
    results = []
    for meters in args.meters:
        if args.quick or meters > SMALL:
            # every series has MIN_POINTS readings by the first timed poll: the robust z-score
            # judges every timed reading
            warm, timed = MIN_POINTS + JOIN_SPREAD - 1, 3
        else:
            warm, timed = WINDOW, 30  # full windows
        results.append(
            run_size(
                meters,
                warm=warm,
                timed=timed,
                repeat=args.repeat,
                naive_cap=args.naive_meters,
                with_profile=not args.no_profile,
                batch=args.batch_messages,
            )
        )
    traced_meters = 2_000 if args.quick else 10_000
    log(f"tracemalloc at {traced_meters:,} meters")
    per_series, capacity = traced_bytes(traced_meters, 12)
    report(results, args.repeat, (traced_meters, per_series, capacity))
    for result in results:
        print("\n".join(result.profile))
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
