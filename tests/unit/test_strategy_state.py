"""How a strategy's state is packed into a checkpoint and taken out again (no database:
the stored arrays a save returns are stood in for by copies)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flpg.app import Array, ArrayRecord
from flpg.serverapp.strategy import Result, StrategyState
from flpg.serverapp.strategy.state import (
    STATE_KEY,
    STATE_PREFIX,
    StateSaver,
    check_model_names,
    model_only,
    split,
)

MODEL = ArrayRecord({"w": np.ones(3, np.float32), "b": np.zeros(2, np.int64)})


def state() -> StrategyState:
    return StrategyState(
        arrays={
            "m_t": ArrayRecord({"w": np.full(3, 0.5, np.float32), "b": np.zeros(2)}),
            "v_t": ArrayRecord({"w": np.full(3, 0.25, np.float32)}),
        },
        values={"clip": 1.5, "count": 3, "on": True, "name": "x", "none": None},
    )


def test_a_checkpoint_holds_the_model_then_the_state_and_splits_back() -> None:
    saver = StateSaver()
    given = state()
    arrays, doc = saver.content(MODEL, given, {"train_metrics_clientapp": {}})
    assert list(arrays.keys()) == [
        "w",
        "b",
        f"{STATE_PREFIX}m_t/w",
        f"{STATE_PREFIX}m_t/b",
        f"{STATE_PREFIX}v_t/w",
    ]
    assert doc == {
        "train_metrics_clientapp": {},
        STATE_KEY: {"values": given.values, "arrays": ["m_t", "v_t"]},
    }
    model, back = split(arrays, doc)
    assert list(model.keys()) == ["w", "b"]
    assert back is not None
    assert back.values == given.values
    assert list(back.arrays) == ["m_t", "v_t"]
    assert back.arrays["m_t"] == given.arrays["m_t"]
    assert back.arrays["v_t"] == given.arrays["v_t"]
    # Result, as `flpg` code elsewhere builds it from a checkpoint, sees the model only.
    result = Result.from_checkpoint(arrays, doc)
    assert list(result.arrays.keys()) == ["w", "b"]
    assert result.metrics_to_json()["train_metrics_clientapp"] == {}


def test_no_state_section_means_no_state_and_an_empty_record_survives() -> None:
    assert split(MODEL, {"train_metrics_clientapp": {}}) == (MODEL, None)
    saver = StateSaver()
    arrays, doc = saver.content(MODEL, StrategyState(), {})
    assert list(arrays.keys()) == ["w", "b"]
    assert doc == {STATE_KEY: {"values": {}, "arrays": []}}
    assert split(arrays, doc) == (MODEL, StrategyState())  # an empty state is still one
    arrays, doc = saver.content(MODEL, StrategyState(arrays={"empty": ArrayRecord()}), {})
    _, back = split(arrays, doc)
    assert back is not None and back.arrays == {"empty": ArrayRecord()}
    assert model_only(MODEL) is MODEL


def stored_copy(arrays: ArrayRecord) -> ArrayRecord:
    return ArrayRecord({n: Array(a.numpy().copy()) for n, a in arrays.items()})


def test_state_arrays_returned_again_are_linked_to_what_the_last_save_stored() -> None:
    saver = StateSaver()
    first = state()
    arrays, doc = saver.content(MODEL, first, {})
    stored = stored_copy(arrays)
    model = saver.saved(first, doc, stored)
    assert list(model.keys()) == ["w", "b"] and model["w"] is stored["w"]
    assert saver.unchanged(first, {})
    # The same objects again: the stored ones go into the next checkpoint.
    again, _ = saver.content(MODEL, first, {})
    assert again[f"{STATE_PREFIX}v_t/w"] is stored[f"{STATE_PREFIX}v_t/w"]
    # A new object for one array: only that one is given as new.
    changed = StrategyState(arrays=dict(first.arrays), values=first.values)
    changed.arrays["v_t"] = ArrayRecord({"w": np.full(3, 0.125, np.float32)})
    assert not saver.unchanged(changed, {})
    arrays, _ = saver.content(MODEL, changed, {})
    assert arrays[f"{STATE_PREFIX}v_t/w"] is changed.arrays["v_t"]["w"]
    assert arrays[f"{STATE_PREFIX}m_t/w"] is stored[f"{STATE_PREFIX}m_t/w"]
    # Changed values or metrics are changes too.
    assert not saver.unchanged(StrategyState(first.arrays, {**first.values, "clip": 2.0}), {})
    assert not saver.unchanged(first, {"train_metrics_clientapp": {"1": {}}})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (StrategyState(arrays={"a/b": ArrayRecord()}), "record name 'a/b' must be a str"),
        (StrategyState(arrays={"": ArrayRecord()}), "record name '' must be a str"),
        (StrategyState(values={"x": float("inf")}), "value 'x' must be finite"),
        (StrategyState(values={"x": [1, 2]}), "value 'x' must be a JSON scalar, got list"),  # type: ignore[dict-item]
        (StrategyState(arrays={"m": {"w": 1}}), "record 'm' must be an ArrayRecord"),  # type: ignore[dict-item]
    ],
)
def test_a_state_that_cannot_be_stored_is_refused_in_one_line(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StateSaver().content(MODEL, bad, {})


def test_a_model_array_named_with_the_reserved_prefix_is_refused() -> None:
    check_model_names(MODEL)
    with pytest.raises(ValueError, match="starts with the reserved"):
        check_model_names(ArrayRecord({f"{STATE_PREFIX}x": np.ones(1)}))
