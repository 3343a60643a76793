"""Known meter dictionaries: validated once, returned as one canonical tuple afterwards."""

from __future__ import annotations

import pytest

from meterlink_wire import WireError, decode, encode
from meterlink_wire.batch import ReadingBatch, WindowRow
from meterlink_wire.vocab import (
    METER_DICTIONARIES,
    Channel,
    KnownDictionaries,
    Reason,
    Unit,
    validate_dictionary,
)


def message(meters: list[str], sequence: int = 1) -> bytes:
    rows = [
        WindowRow(m, Channel.POWER, Unit.KW, 1_767_571_200_000, 1, 1.0, 1.0, 1.0, 1.0)
        for m in meters
    ]
    return encode(ReadingBatch.from_rows("gw-1", sequence, 1_767_571_260_000, 60, rows))


def test_the_same_dictionary_decodes_to_the_same_tuple_object() -> None:
    meters = [f"cache-test-{i}" for i in range(50)]
    first, second = decode(message(meters, 1)), decode(message(meters, 2))
    assert first.meters == tuple(meters)
    assert second.meters is first.meters
    other = decode(message([*meters[1:], meters[0]], 3))  # same ids, other order: not the same
    assert other.meters is not first.meters and other.meters == (*meters[1:], meters[0])


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["ok-1", "bad id with spaces"], Reason.BAD_ID),
        (["dup", "dup"], Reason.BAD_VALUE),
        (["ok-1", 7], Reason.BAD_TYPE),
        (["ok-1", ["nested"]], Reason.BAD_TYPE),
    ],
)
def test_bad_dictionaries_are_never_cached(values: list[object], reason: Reason) -> None:
    for _ in range(2):  # the second attempt must fail exactly like the first
        with pytest.raises(WireError) as caught:
            validate_dictionary(values, "meters", Reason.BAD_ID)
        assert caught.value.reason == reason
    if all(isinstance(v, str) for v in values):
        assert METER_DICTIONARIES.get(tuple(values)) is None  # type: ignore[arg-type]


def test_the_cache_is_bounded_by_ids_held() -> None:
    cache = KnownDictionaries(max_ids=5)
    a = cache.add(("a", "b", "c"))
    assert cache.get(("a", "b", "c")) is a
    cache.add(("d", "e", "f"))  # 6 ids > 5: starts over
    assert cache.get(("a", "b", "c")) is None
    assert cache.get(("d", "e", "f")) == ("d", "e", "f")
