"""XGBoost boosters as the JSON `Booster.save_raw("json")` writes, merged tree by tree
without xgboost (FedXgbBagging's aggregation).

A booster travels as one 1-D uint8 array holding that JSON (an empty array: no
model yet), as in Flower's XGBoost apps. Only gbtree boosters are understood (the
`learner.gradient_booster.model` section: `trees`, `tree_info`, `iteration_indptr`,
`gbtree_model_param`); everything else in the document is carried over untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flpg.app.array import Array
from flpg.app.arrayrecord import ArrayRecord
from flpg.errors import PayloadCorrupt
from flpg.serverapp.strategy.aggregate import ReplyRejected, read_array

__all__ = ["BoosterError", "TreeBag", "aggregate_bagging", "booster_array", "booster_bytes"]

Booster = dict[str, Any]

_SAME = ("num_class", "num_target")
"""learner_model_param entries every merged booster must share (the output shape)."""


class BoosterError(ReplyRejected):
    """Bytes that are not a usable gbtree booster JSON; the message says why."""


def booster_bytes(record: ArrayRecord) -> tuple[str, bytes]:
    """`(name, bytes)` of the record's only array, which must be 1-D uint8 (a stored
    array is read without being kept); BoosterError otherwise."""
    if len(record) != 1:
        raise BoosterError(f"expected exactly one array (the booster), got {len(record)}")
    name, array = next(iter(record.items()))
    if array.dtype != "uint8" or len(array.shape) != 1:
        raise BoosterError(
            f"array {name!r} must be 1-D uint8 (booster JSON bytes), "
            f"got {array.dtype} of shape {array.shape}"
        )
    try:
        return name, read_array(array).tobytes()
    except PayloadCorrupt as exc:
        raise BoosterError(f"array {name!r}: {exc}") from exc


def booster_array(raw: bytes) -> Array:
    """The booster bytes as the 1-D uint8 array that carries them."""
    return Array(np.frombuffer(raw, dtype=np.uint8))


def _at(doc: Any, path: str) -> Any:
    """The value at a "/"-separated path of keys; BoosterError naming it if absent."""
    for key in path.split("/"):
        if not isinstance(doc, dict) or key not in doc:
            raise BoosterError(f"not a gbtree booster JSON: no {path}")
        doc = doc[key]
    return doc


def parse(raw: bytes) -> Booster:
    """The booster document; BoosterError unless it is a consistent gbtree booster."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BoosterError(f"not booster JSON: {exc}") from exc
    kind = _at(doc, "learner/gradient_booster/name")
    if kind != "gbtree":
        raise BoosterError(f"gradient booster {kind!r} is not gbtree")
    model = _at(doc, "learner/gradient_booster/model")
    trees, info, indptr = (_at(model, key) for key in ("trees", "tree_info", "iteration_indptr"))
    if not (isinstance(trees, list) and isinstance(info, list) and isinstance(indptr, list)):
        raise BoosterError("trees, tree_info and iteration_indptr must be lists")
    try:
        declared = int(_at(model, "gbtree_model_param/num_trees"))
        int(_at(doc, "learner/learner_model_param/num_feature"))
    except (TypeError, ValueError) as exc:
        raise BoosterError(f"booster: bad num_trees or num_feature: {exc}") from exc
    if not len(trees) == len(info) == declared or not indptr or indptr[-1] != len(trees):
        raise BoosterError(
            f"inconsistent booster: {len(trees)} trees, {len(info)} tree_info, "
            f"num_trees {declared}, iteration_indptr ending at {indptr[-1] if indptr else None}"
        )
    result: Booster = doc
    return result


def _model(doc: Booster) -> dict[str, Any]:
    model: dict[str, Any] = doc["learner"]["gradient_booster"]["model"]
    return model


def _signature(doc: Booster) -> tuple[object, ...]:
    """What boosters merged into one must share: objective, output shape, categories."""
    learner = doc["learner"]
    params = learner["learner_model_param"]
    objective = learner.get("objective")
    objective = objective.get("name") if isinstance(objective, dict) else objective
    return (objective, *(params.get(key) for key in _SAME), _model(doc).get("cats"))


def _first_iteration(doc: Booster) -> tuple[list[Any], list[Any]]:
    """The trees of the booster's first boosting iteration and their tree_info."""
    model = _model(doc)
    indptr = model["iteration_indptr"]
    end = indptr[1] if len(indptr) > 1 else 0
    if not isinstance(end, int) or end <= 0:
        raise BoosterError("booster has no boosting iteration")
    trees, info = model["trees"][:end], model["tree_info"][:end]
    if not all(isinstance(tree, dict) for tree in trees):
        raise BoosterError("booster trees must be JSON objects")
    if not all(isinstance(output, int) for output in info):
        raise BoosterError("booster tree_info must hold integers")
    return trees, info


def _append(doc: Booster, trees: list[Any], info: list[Any], num_feature: int) -> None:
    """Append one iteration of trees (renumbered) to `doc`."""
    model = _model(doc)
    have = len(model["trees"])
    for offset, tree in enumerate(trees):
        tree["id"] = have + offset
    model["trees"].extend(trees)
    model["tree_info"].extend(info)
    model["iteration_indptr"].append(have + len(trees))
    model["gbtree_model_param"]["num_trees"] = str(have + len(trees))
    params = doc["learner"]["learner_model_param"]
    params["num_feature"] = str(max(int(params["num_feature"]), num_feature))


@dataclass
class _Part:
    """A reply's share of the merge: its first iteration, and the whole booster while
    it is the candidate base (no global model yet)."""

    key: tuple[int, str]
    trees: list[Any]
    info: list[Any]
    num_feature: int
    whole: Booster | None = field(default=None)


class TreeBag:
    """Bagging of boosters: the global booster, then the first boosting iteration of
    every added booster appended as one more iteration.

    Added boosters are appended in the order of their `key` (source node id, message
    id), not of arrival, so the result does not depend on timing. Without a global
    booster (empty bytes) the booster of the smallest key becomes the base, whole,
    and the others' first iterations follow (Flower's rule, in key order). An added
    booster must share the base's objective, `num_class`, `num_target` and
    categorical encodings (BoosterError otherwise); `num_feature` becomes the
    largest seen. Holds one iteration per added booster (and the candidate base).
    """

    def __init__(self, global_bytes: bytes) -> None:
        self._global = parse(global_bytes) if global_bytes else None
        self._signature = None if self._global is None else _signature(self._global)
        self._parts: list[_Part] = []
        self._base: _Part | None = None

    def add(self, raw: bytes, key: tuple[int, str] = (0, "")) -> None:
        """Take one booster's bytes; BoosterError (nothing kept) if unusable."""
        doc = parse(raw)
        signature = _signature(doc)
        if self._signature is not None and signature != self._signature:
            other = "the global one" if self._global is not None else "the first one added"
            raise BoosterError(
                f"booster differs from {other} in objective, num_class, num_target "
                "or categorical encodings"
            )
        trees, info = _first_iteration(doc)
        num_feature = int(doc["learner"]["learner_model_param"]["num_feature"])
        part = _Part(key, trees, info, num_feature)
        self._signature = signature
        if self._global is None and (self._base is None or key < self._base.key):
            if self._base is not None:
                self._base.whole = None
                self._parts.append(self._base)
            part.whole = doc
            self._base = part
            return
        self._parts.append(part)

    @property
    def count(self) -> int:
        """Boosters added."""
        return len(self._parts) + (self._base is not None)

    def result(self) -> bytes:
        """The merged booster's JSON bytes (b"" if there is neither a global booster
        nor an added one). Call once."""
        doc = self._global
        if doc is None:
            if self._base is None:
                return b""
            doc = self._base.whole
            assert doc is not None
        for part in sorted(self._parts, key=lambda p: p.key):
            _append(doc, part.trees, part.info, part.num_feature)
        self._parts = []
        return json.dumps(doc, separators=(",", ":")).encode()


def aggregate_bagging(bst_prev_org: bytes, bst_curr_org: bytes) -> bytes:
    """Flower's `strategy_utils.aggregate_bagging`: `bst_curr_org`'s first boosting
    iteration appended to `bst_prev_org` as one more iteration (`bst_curr_org` itself
    if `bst_prev_org` is empty). BoosterError (a ValueError) for bytes that are not a
    gbtree booster JSON or boosters that cannot be merged. Flower appends
    `num_parallel_tree` trees marked as output 0; here the iteration's trees keep
    their outputs, which is the same for one output and right for several."""
    if not bst_prev_org:
        parse(bst_curr_org)
        return bst_curr_org
    bag = TreeBag(bst_prev_org)
    bag.add(bst_curr_org)
    return bag.result()
