import contextlib
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterlink_wire import (
    MAX_SEQUENCE,
    MAX_TIMESTAMP_MS,
    Channel,
    Kind,
    ReadingBatch,
    Unit,
    WireError,
    decode,
    encode,
    encode_split,
)
from meterlink_wire.vocab import EVENT_REASON_PATTERN, GATEWAY_ID_PATTERN, METER_ID_PATTERN

SETTINGS = settings(
    max_examples=150,
    deadline=None,  # shared, slow machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

gateway_ids = st.from_regex(GATEWAY_ID_PATTERN, fullmatch=True)
meter_ids = st.from_regex(METER_ID_PATTERN, fullmatch=True)
reason_names = st.from_regex(EVENT_REASON_PATTERN, fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def values(draw: st.DrawFn, raw: bool) -> tuple[int, float, float, float, float]:
    """(count, min, max, mean, last) obeying the contract; raw readings repeat one value."""
    if raw:
        value = draw(finite)
        return 1, value, value, value, value
    lo, last, hi = sorted(draw(st.lists(finite, min_size=3, max_size=3)))
    mean = draw(st.floats(min_value=lo, max_value=hi)) if lo < hi else lo
    return draw(st.integers(1, 2**63 - 1)), lo, hi, mean, last


@st.composite
def batches(draw: st.DrawFn, max_rows: int = 40) -> ReadingBatch:
    kind = draw(st.sampled_from(Kind))
    window_s = 0 if kind is Kind.EVENTS else draw(st.sampled_from([0, 1, 60, 900, 86_400]))
    # Dictionaries may hold entries no row uses, in any order.
    meters = draw(st.lists(meter_ids, min_size=1, max_size=6, unique=True))
    reasons = draw(st.lists(reason_names, min_size=1, max_size=3, unique=True))
    rows = draw(st.integers(0, max_rows))
    columns: dict[str, list[Any]] = {
        name: []
        for name in ("meter", "channel", "unit", "start_ms", "count", "min", "max", "mean", "last")
    }
    reason: list[int] = []
    has_delta = draw(st.booleans())
    delta = draw(
        st.lists(
            st.floats(min_value=0.0, allow_infinity=False, allow_nan=False),
            min_size=rows,
            max_size=rows,
        )
    )
    for _ in range(rows):
        columns["meter"].append(draw(st.integers(0, len(meters) - 1)))
        columns["channel"].append(draw(st.sampled_from(Channel)).value)
        columns["unit"].append(draw(st.sampled_from(Unit)).value)
        columns["start_ms"].append(draw(st.integers(0, MAX_TIMESTAMP_MS)))
        count, lo, hi, mean, last = draw(values(raw=window_s == 0))
        for name, value in zip(
            ("count", "min", "max", "mean", "last"), (count, lo, hi, mean, last), strict=True
        ):
            columns[name].append(value)
        reason.append(draw(st.integers(0, len(reasons) - 1)))
    return ReadingBatch(
        gateway_id=draw(gateway_ids),
        sequence=draw(st.integers(0, MAX_SEQUENCE - 10_000)),
        sent_ms=draw(st.integers(0, MAX_TIMESTAMP_MS)),
        window_s=window_s,
        kind=kind,
        meters=tuple(meters),
        meter=np.array(columns["meter"], dtype=np.int64),
        channel=np.array(columns["channel"], dtype=np.int64),
        unit=np.array(columns["unit"], dtype=np.int64),
        start_ms=np.array(columns["start_ms"], dtype=np.int64),
        count=np.array(columns["count"], dtype=np.int64),
        min=np.array(columns["min"], dtype=np.float64),
        max=np.array(columns["max"], dtype=np.float64),
        mean=np.array(columns["mean"], dtype=np.float64),
        last=np.array(columns["last"], dtype=np.float64),
        reasons=tuple(reasons) if kind is Kind.EVENTS else (),
        reason=np.array(reason, dtype=np.int64) if kind is Kind.EVENTS else None,
        delta=np.array(delta, dtype=np.float64) if has_delta else None,
    )


@SETTINGS
@given(batch=batches(), compress=st.booleans())
def test_round_trip_is_exact(batch: ReadingBatch, compress: bool) -> None:
    decoded = decode(encode(batch, compress=compress))
    assert decoded.equals(batch)
    assert decoded.meters == batch.meters  # dictionaries survive as sent
    assert decoded.reasons == batch.reasons
    assert decoded.rows() == batch.rows()
    assert (decoded.delta is None) is (batch.delta is None)


@SETTINGS
@given(batch=batches(), start=st.integers(0, 40), stop=st.integers(0, 40))
def test_slice_keeps_rows_and_prunes_dictionaries(
    batch: ReadingBatch, start: int, stop: int
) -> None:
    part = batch.slice(start, stop)
    assert part.rows() == batch.rows()[start:stop]
    assert set(part.meters) == {r.meter_id for r in part.rows()}
    assert decode(encode(part)).equals(part)


@settings(SETTINGS, max_examples=60)
@given(
    batch=batches(max_rows=300),
    cap=st.sampled_from([1024, 2048, 5120]),
    compress=st.booleans(),
)
def test_split_parts_fit_and_reassemble(batch: ReadingBatch, cap: int, compress: bool) -> None:
    parts = encode_split(batch, max_bytes=cap, compress=compress)
    assert [p.sequence for p, _ in parts] == [batch.sequence + i for i in range(len(parts))]
    for part, data in parts:
        assert len(data) <= cap
        assert decode(data).equals(part)
    assert sum(len(p) for p, _ in parts) == len(batch)
    assert ReadingBatch.concat([decode(d) for _, d in parts]).equals(batch)


@settings(SETTINGS, max_examples=300)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode(data)
