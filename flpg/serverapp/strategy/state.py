"""A strategy's own state (server momentum, Adam moments, a clipping norm), kept
in the run's checkpoint so a restarted or resumed run continues with it.

The checkpoint holds one ArrayRecord and one JSON document. The state's arrays go
into that ArrayRecord after the global model's, each named
`STATE_PREFIX + record name + "/" + array name`; its values go into the JSON
document under `STATE_KEY` (beside the metrics `Result` keeps). `Result` and
`Strategy.start` strip both again, so `Result.arrays` is the global model only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from flpg.app.array import Array
from flpg.app.arrayrecord import ArrayRecord
from flpg.serverapp.strategy.aggregate import read_array, state_dtype

StateValue: TypeAlias = bool | int | float | str | None
"""A JSON scalar (a float must be finite)."""

STATE_PREFIX = "__flpg_strategy_state__/"
"""Checkpoint array names starting with this hold strategy state, not the model;
a model whose arrays start with it is refused."""

STATE_KEY = "strategy_state"
"""Key of the strategy state in the checkpoint's JSON document: `{"values": {...},
"arrays": [record names, in order]}`."""


@dataclass
class StrategyState:
    """What a strategy needs besides the global model to continue a run.

    - `arrays`: named ArrayRecords (e.g. "m_t", "v_t"); a record name is a non-empty
      str without "/". Array names and dtypes are free.
    - `values`: JSON scalars (bool, int, finite float, str, None) by name.

    Both are saved as they are and given back as they were: arrays with their
    names, order, dtypes, shapes and exact bytes (stored: `numpy()` reads them),
    values with their JSON types (an int stays an int; their order may change).
    """

    arrays: dict[str, ArrayRecord] = field(default_factory=dict)
    values: dict[str, StateValue] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.arrays or self.values)

    def validate(self) -> None:
        """ValueError (one line, naming the entry) unless the state can be stored."""
        for name, record in self.arrays.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"strategy state record name {name!r} must be a str without '/'")
            if not isinstance(record, ArrayRecord):
                raise ValueError(f"strategy state record {name!r} must be an ArrayRecord")
        for key, value in self.values.items():
            if not isinstance(key, str):
                raise ValueError(f"strategy state value name {key!r} must be a str")
            if value is not None and not isinstance(value, bool | int | float | str):
                kind = type(value).__name__
                raise ValueError(f"strategy state value {key!r} must be a JSON scalar, got {kind}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"strategy state value {key!r} must be finite, got {value}")


def check_model_names(arrays: ArrayRecord) -> None:
    """ValueError if a model array's name starts with the reserved STATE_PREFIX."""
    for name in arrays:
        if name.startswith(STATE_PREFIX):
            raise ValueError(f"array name {name!r} starts with the reserved {STATE_PREFIX!r}")


def split(arrays: ArrayRecord, doc: dict[str, Any]) -> tuple[ArrayRecord, StrategyState | None]:
    """A checkpoint's `(model arrays, strategy state)`; the state is None if the
    checkpoint has no state section (saved by a `start` that did not keep state)."""
    model = ArrayRecord()
    found: dict[str, ArrayRecord] = {}
    for name, array in arrays.items():
        if not name.startswith(STATE_PREFIX):
            model[name] = array
            continue
        record, _, array_name = name[len(STATE_PREFIX) :].partition("/")
        found.setdefault(record, ArrayRecord())[array_name] = array
    section = doc.get(STATE_KEY)
    if not isinstance(section, dict):
        return model, None
    names = [str(n) for n in section.get("arrays", [])]
    records = {n: found.pop(n, ArrayRecord()) for n in names} | found
    return model, StrategyState(arrays=records, values=dict(section.get("values", {})))


def model_only(arrays: ArrayRecord) -> ArrayRecord:
    """`arrays` without the strategy state's (the same record if it holds none)."""
    if not any(name.startswith(STATE_PREFIX) for name in arrays):
        return arrays
    return ArrayRecord({n: a for n, a in arrays.items() if not n.startswith(STATE_PREFIX)})


class StateSaver:
    """Joins the model and the strategy state into one checkpoint, remembering what
    it saved so that state arrays a strategy returns again are linked to their
    stored bytes instead of written again."""

    def __init__(self) -> None:
        self._given: dict[str, Array] = {}
        self._stored: dict[str, Array] = {}
        self._saved: tuple[dict[str, Any], dict[str, Array]] | None = None

    def content(
        self, model: ArrayRecord, state: StrategyState, metrics: dict[str, Any]
    ) -> tuple[ArrayRecord, dict[str, Any]]:
        """The checkpoint's ArrayRecord and JSON document. ValueError for a state that
        cannot be stored."""
        state.validate()
        arrays = ArrayRecord(model)
        for name, array in self._state_arrays(state).items():
            stored = self._stored.get(name)
            same = stored is not None and self._given.get(name) is array
            arrays[name] = stored if same and stored is not None else array
        doc = dict(metrics)
        doc[STATE_KEY] = {"values": dict(state.values), "arrays": list(state.arrays)}
        return arrays, doc

    def saved(self, state: StrategyState, doc: dict[str, Any], stored: ArrayRecord) -> ArrayRecord:
        """Remember a checkpoint saved from `state` and `doc` (`stored`: the arrays
        `save_checkpoint` returned); returns the model's part of them."""
        given = self._state_arrays(state)
        self._given = given
        self._stored = {n: stored[n] for n in given}
        self._saved = (doc, given)
        return model_only(stored)

    def unchanged(self, state: StrategyState, metrics: dict[str, Any]) -> bool:
        """Whether saving `state` with `metrics` would store what the last save stored
        (same document, the same Array objects)."""
        if self._saved is None:
            return False
        doc, given = self._saved
        _, new_doc = self.content(ArrayRecord(), state, metrics)
        now = self._state_arrays(state)
        return (
            new_doc == doc and now.keys() == given.keys() and all(now[n] is given[n] for n in now)
        )

    @staticmethod
    def _state_arrays(state: StrategyState) -> dict[str, Array]:
        return {
            f"{STATE_PREFIX}{record}/{name}": array
            for record, arrays in state.arrays.items()
            for name, array in arrays.items()
        }


class ArrayState:
    """One array of server state per model array (server momentum, a moment estimate),
    updated in place while the strategy applies its update and handed out as a new
    ArrayRecord (new `Array` objects) after each update, as `Strategy.state` requires.

    Buffers are flat, in `aggregate.state_dtype` of their model array, and start at
    zero unless `record` (e.g. from `load_state`) holds the array.
    """

    def __init__(self, record: ArrayRecord | None = None) -> None:
        self.record = record
        """The state as of the last `commit` (or as loaded); None before any."""
        self._buffers: dict[str, npt.NDArray[Any]] = {}

    def buffer(self, name: str, model: Array) -> npt.NDArray[Any]:
        """The flat, writeable state of model array `name` (read from `record` on
        first use, else zeros); ValueError if the stored one does not fit `model`."""
        found = self._buffers.get(name)
        if found is not None:
            return found
        dtype = state_dtype(model.dtype)
        if self.record is not None and name in self.record:
            stored = self.record[name]
            if stored.shape != model.shape or np.dtype(stored.dtype) != dtype:
                raise ValueError(
                    f"strategy state for array {name!r} is {stored.dtype}{list(stored.shape)}, "
                    f"the model needs {dtype}{list(model.shape)}"
                )
            found = read_array(stored).reshape(-1)
            if stored.in_memory:  # the caller's ndarray: updated in place, so copy it
                found = found.copy()
        else:
            found = np.zeros(math.prod(model.shape), dtype=dtype)
        self._buffers[name] = found
        return found

    def commit(self, model: ArrayRecord) -> ArrayRecord:
        """The updated state, one new `Array` per array of `model` (its shape), as
        `record`."""
        self.record = ArrayRecord(
            {name: self.buffer(name, array).reshape(array.shape) for name, array in model.items()}
        )
        return self.record
