"""The detector toolkit: per-frame memo and threshold evidence columns."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_consumer.detect.base import Frame, PerFrame, constant


def frame(n: int) -> Frame:
    zeros = np.zeros(n, dtype=np.int64)
    return Frame(
        zeros, zeros, np.zeros(n), np.zeros(n, np.uint8), np.zeros(n, np.uint8),
        np.zeros(n, np.int32), ("m",),
    )  # fmt: skip


def test_per_frame_computes_once_per_frame_and_take_forgets() -> None:
    calls: list[int] = []

    def compute(value: int) -> int:
        calls.append(value)
        return value

    memo: PerFrame[int] = PerFrame()
    first, second = frame(2), frame(2)
    assert memo.get(first, lambda: compute(1)) == 1
    assert memo.get(first, lambda: compute(2)) == 1  # held: not computed again
    assert memo.take(first, lambda: compute(3)) == 1
    assert memo.get(first, lambda: compute(4)) == 4  # taken: computed afresh
    assert memo.get(second, lambda: compute(5)) == 5  # another frame, however alike
    memo.clear()
    assert memo.take(second, lambda: compute(6)) == 6
    assert calls == [1, 4, 5, 6]


def test_per_frame_put_and_pop_hand_a_value_from_score_to_learn() -> None:
    memo: PerFrame[str] = PerFrame()
    first, second = frame(1), frame(1)
    memo.put(first, "baselines")
    assert memo.pop(second) is None  # held for another frame: not handed over, and forgotten
    assert memo.pop(first) is None
    memo.put(first, "baselines")
    assert memo.pop(first) == "baselines"
    assert memo.pop(first) is None  # popped once


def test_constant_is_a_read_only_column_of_the_threshold() -> None:
    column = constant(3.5, 4)
    assert column.tolist() == [3.5] * 4
    assert column.dtype == np.float64
    assert column[[1, 3]].tolist() == [3.5, 3.5]
    with pytest.raises(ValueError, match="read-only"):
        column[0] = 1.0


def test_constant_columns_are_cached_but_keep_the_sign_of_zero() -> None:
    assert constant(2.0, 5) is constant(2.0, 5)
    assert constant(2.0, 5) is not constant(2.0, 6)
    negative, positive = constant(-0.0, 3), constant(0.0, 3)
    assert np.signbit(negative).all()
    assert not np.signbit(positive).any()
    assert np.signbit(constant(-0.0, 3)).all()
