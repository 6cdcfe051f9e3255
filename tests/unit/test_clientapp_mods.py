"""Flower's built-in mods (flpg.clientapp.mod): the clipping arithmetic, the local DP
noise, the sizes they log, the error replies they answer with, and Flower's rule for
message types. Expected numbers were checked against Flower 1.23's own mods."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from flpg.app.context import Context
from flpg.app.message import Error, ErrorCode, Message, Metadata
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.clientapp import ClientApp
from flpg.clientapp.mod import (
    LocalDpMod,
    adaptiveclipping_mod,
    arrays_size_mod,
    fixedclipping_mod,
    message_size_mod,
)
from flpg.clientapp.mod.clipping import clip_update, gaussian_std, update_norm
from flpg.clientapp.mod.comms import array_record_size_stats, message_bytes

Handler = Callable[[Message, Context], Message]


def context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def instruction(content: RecordDict, message_type: str = "train") -> Message:
    msg = Message(content, 1, message_type)
    msg.metadata.message_id = 9
    return msg


def model(w: list[float], b: float = 0.0) -> ArrayRecord:
    return ArrayRecord(
        {"w": Array(np.array(w, dtype=np.float32)), "b": Array(np.array([b], dtype=np.float32))}
    )


def train_msg(clipping_norm: object = 1.0, w: list[float] | None = None) -> Message:
    values: dict[str, object] = {"server-round": 1}
    if clipping_norm is not None:
        values["clipping_norm"] = clipping_norm
    config = ConfigRecord(values)
    return instruction(RecordDict({"arrays": model(w or [0.0, 0.0]), "config": config}))


def adds(delta: float, metrics: bool = True) -> Handler:
    """A handler that returns the received arrays + `delta` (and a MetricRecord)."""

    def handler(msg: Message, ctx: Context) -> Message:
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)
        out = ArrayRecord({k: Array(a.numpy() + delta) for k, a in arrays.items()})
        content = RecordDict({"arrays": out})
        if metrics:
            content["metrics"] = MetricRecord({"num-examples": 10})
        return Message(content, reply_to=msg)

    return handler


def arrays_of(reply: Message) -> list[np.ndarray]:
    record = reply.content["arrays"]
    assert isinstance(record, ArrayRecord)
    return record.to_numpy_ndarrays()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The messages logged to `flpg.app` (where `flwr.common.logger.log` writes)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.getMessage()}")

    handler = Collect(logging.INFO)
    logger = logging.getLogger("flpg.app")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # app processes log INFO (flpg.common.logger, or the root)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- the clipping arithmetic ---------------------------------------------------------


def test_the_update_norm_is_taken_over_all_arrays() -> None:
    received = [np.zeros(2), np.ones((1, 1))]
    returned = [np.array([3.0, 0.0]), np.full((1, 1), 5.0)]
    assert update_norm(received, returned) == 5.0  # sqrt(3^2 + 4^2)


def test_a_long_update_is_scaled_to_the_clipping_norm() -> None:
    received = [np.array([1.0, 1.0]), np.array([2.0])]
    returned = [np.array([4.0, 1.0]), np.array([6.0])]  # update (3, 0, 4), norm 5
    clipped, scaled = clip_update(received, returned, 2.0)
    assert scaled
    np.testing.assert_allclose(clipped[0], [1.0 + 1.2, 1.0])
    np.testing.assert_allclose(clipped[1], [2.0 + 1.6])
    assert update_norm(received, clipped) == pytest.approx(2.0)


def test_a_short_or_null_update_is_left_as_returned() -> None:
    received = [np.array([1.0, 1.0])]
    returned = [np.array([1.5, 1.0])]
    clipped, scaled = clip_update(received, returned, 2.0)
    assert not scaled and np.array_equal(clipped[0], returned[0])
    clipped, scaled = clip_update(received, received, 2.0)  # Flower divides by 0 here
    assert not scaled and np.array_equal(clipped[0], received[0])


def test_clipped_arrays_keep_numpys_result_dtype_and_integers_are_rounded() -> None:
    received: list[np.ndarray] = [np.zeros(3, dtype=np.float32), np.zeros(2, dtype=np.int64)]
    returned: list[np.ndarray] = [np.full(3, 10.0, dtype=np.float32), np.array([10, 0])]
    clipped, _ = clip_update(received, returned, 10.0)  # norm 20 -> scale 1/2
    assert [a.dtype for a in clipped] == [np.float32, np.int64]
    np.testing.assert_allclose(clipped[0], [5.0, 5.0, 5.0])
    assert clipped[1].tolist() == [5, 0]
    scalar, _ = clip_update([np.zeros(())], [np.full((), 4.0)], 1.0)
    assert isinstance(scalar[0], np.ndarray) and scalar[0].shape == () and scalar[0] == 1.0


@pytest.mark.parametrize(
    ("received", "returned", "match"),
    [
        ([np.zeros(2)], [np.zeros(3)], "shape"),
        ([np.zeros(2)], [np.zeros(2), np.zeros(1)], "2 arrays returned for 1"),
        ([np.zeros(2, dtype=bool)], [np.ones(2, dtype=bool)], "only numbers"),
        ([np.zeros(2)], [np.array([np.inf, 0.0])], "not finite"),
    ],
)
def test_updates_that_cannot_be_clipped_raise(
    received: list[np.ndarray], returned: list[np.ndarray], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        clip_update(received, returned, 1.0)


# --- fixedclipping_mod / adaptiveclipping_mod -------------------------------------------


def test_fixedclipping_mod_clips_the_update_to_the_configs_norm(logged: list[str]) -> None:
    app = ClientApp()
    app.train(mods=[fixedclipping_mod])(adds(10.0))
    reply = app(train_msg(clipping_norm=0.5, w=[1.0, 2.0]), context())
    w, b = arrays_of(reply)
    update = np.concatenate([w - [1.0, 2.0], b])
    assert np.linalg.norm(update) == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_allclose(update, np.full(3, 0.5 / math.sqrt(3)), rtol=1e-6)
    assert list(reply.content["arrays"].keys()) == ["w", "b"]
    assert w.dtype == np.float32
    assert reply.content["metrics"] == MetricRecord({"num-examples": 10})
    assert "INFO fixedclipping_mod: parameters are clipped by value: 0.5000." in logged


def test_clipping_is_relative_to_the_arrays_as_received_even_if_changed_in_place() -> None:
    """flpg hands a handler the received arrays themselves: the mod keeps a copy."""

    def in_place(msg: Message, ctx: Context) -> Message:
        record = msg.content["arrays"]
        assert isinstance(record, ArrayRecord)
        for array in record.to_numpy_ndarrays():
            array += 3.0
        return Message(RecordDict({"arrays": record}), reply_to=msg)

    reply = fixedclipping_mod(train_msg(clipping_norm=1.0), context(), in_place)
    assert np.linalg.norm(np.concatenate(arrays_of(reply))) == pytest.approx(1.0, rel=1e-6)


def test_an_update_within_the_norm_is_sent_as_returned() -> None:
    reply = fixedclipping_mod(train_msg(clipping_norm=100.0), context(), adds(1.0))
    assert [a.tolist() for a in arrays_of(reply)] == [[1.0, 1.0], [1.0]]


def test_adaptiveclipping_mod_adds_the_norm_bit() -> None:
    clipped = adaptiveclipping_mod(train_msg(clipping_norm=1.0), context(), adds(1.0))
    assert clipped.content["metrics"]["norm_bit"] == 1
    assert np.linalg.norm(np.concatenate(arrays_of(clipped))) == pytest.approx(1.0, rel=1e-6)
    kept = adaptiveclipping_mod(train_msg(clipping_norm=2.0), context(), adds(1.0))
    assert kept.content["metrics"]["norm_bit"] == 0  # sqrt(3) < 2


def _echo(msg: Message, ctx: Context) -> Message:
    return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)


def _renamed(msg: Message, ctx: Context) -> Message:
    return Message(RecordDict({"arrays": ArrayRecord({"other": Array(np.zeros(1))})}), reply_to=msg)


def _failing(msg: Message, ctx: Context) -> Message:
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "own error"), reply_to=msg)


@pytest.mark.parametrize(
    ("mod", "msg", "handler", "reason"),
    [
        (
            fixedclipping_mod,
            train_msg(clipping_norm=None),
            _echo,
            "requires the key 'clipping_norm'",
        ),
        (fixedclipping_mod, train_msg(clipping_norm="1"), _echo, "must be a number, got '1'"),
        (fixedclipping_mod, train_msg(clipping_norm=0.0), _echo, "must be positive, got 0.0"),
        (
            fixedclipping_mod,
            instruction(RecordDict({"a": model([0.0]), "b": model([0.0])})),
            _echo,
            "fixedclipping_mod expects exactly one ArrayRecord, but found 2 ArrayRecord(s).",
        ),
        (
            fixedclipping_mod,
            instruction(RecordDict({"arrays": model([0.0])})),
            _echo,
            "fixedclipping_mod expects exactly one ConfigRecord, but found 0 ConfigRecord(s).",
        ),
        (fixedclipping_mod, train_msg(), _renamed, "expects the keys in the ArrayRecord"),
        (
            adaptiveclipping_mod,
            train_msg(),
            adds(1.0, metrics=False),
            "adaptiveclipping_mod expects exactly one MetricRecord, but found 0",
        ),
        (LocalDpMod(1.0, 1.0, 1.0, 1e-5), train_msg(), _renamed, "LocalDpMod expects the keys"),
    ],
)
def test_what_a_mod_cannot_work_with_is_answered_with_a_precondition_error(
    mod: Callable[[Message, Context, Handler], Message],
    msg: Message,
    handler: Handler,
    reason: str,
    logged: list[str],
) -> None:
    reply = mod(msg, context(), handler)
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert reason in (reply.error.reason or "")
    assert reply.metadata.reply_to_message_id == "9"
    assert any(line.startswith("ERROR ") and reason in line for line in logged)


@pytest.mark.parametrize("mod", [fixedclipping_mod, adaptiveclipping_mod, LocalDpMod(1, 1, 1, 0.1)])
def test_an_error_reply_passes_through_a_mod(
    mod: Callable[[Message, Context, Handler], Message],
) -> None:
    reply = mod(train_msg(), context(), _failing)
    assert (reply.error.code, reply.error.reason) == (
        ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        "own error",
    )


# --- LocalDpMod -----------------------------------------------------------------------


def test_local_dp_noise_has_flowers_standard_deviation() -> None:
    assert gaussian_std(1.0, 1.0, 1e-5) == pytest.approx(4.844805262605389)
    mod = LocalDpMod(clipping_norm=1.0, sensitivity=0.5, epsilon=2.0, delta=1e-5)
    assert mod.std_dev == pytest.approx(0.5 * 4.844805262605389 / 2.0)


def test_local_dp_clips_then_adds_noise_drawn_as_flower_draws_it() -> None:
    size = 200_000
    msg = instruction(RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(size))})}))
    mod = LocalDpMod(clipping_norm=1.0, sensitivity=0.1, epsilon=1.0, delta=1e-5)

    def returns_ones(m: Message, ctx: Context) -> Message:  # update norm sqrt(size)
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(size))})}), reply_to=m)

    np.random.seed(1234)
    (noisy,) = arrays_of(mod(msg, context(), returns_ones))
    np.random.seed(1234)
    expected_noise = np.random.normal(0, mod.std_dev, size)
    clipped = np.full(size, 1.0 / math.sqrt(size))
    np.testing.assert_allclose(noisy, clipped + expected_noise)
    noise = noisy - clipped
    assert noise.std() == pytest.approx(mod.std_dev, rel=0.01)
    assert abs(noise.mean()) < 4 * mod.std_dev / math.sqrt(size)


# What Flower 1.23's LocalDpMod(1.0, 0.1, 1.0, 1e-5) returns for zeros(10) received and
# ones(10) returned, after np.random.seed(1234).
FLOWER_LOCAL_DP_SEED_1234 = [
    0.5446289222396795,
    -0.260776765318061,
    1.010346392057055,
    0.16475401086196953,
    -0.03288344274125804,
    0.7460409342159782,
    0.7326816130621138,
    0.007844523619518207,
    0.3238323526392177,
    -0.7703094208235,
]


def test_local_dp_with_a_seed_gives_what_flower_gives() -> None:
    msg = instruction(RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(10))})}))

    def returns_ones(m: Message, ctx: Context) -> Message:
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(10))})}), reply_to=m)

    np.random.seed(1234)
    (noisy,) = arrays_of(LocalDpMod(1.0, 0.1, 1.0, 1e-5)(msg, context(), returns_ones))
    np.testing.assert_allclose(noisy, FLOWER_LOCAL_DP_SEED_1234, rtol=1e-12)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0.0, 1.0, 1.0, 1e-5), ValueError, "clipping norm should be a positive"),
        ((1.0, -1.0, 1.0, 1e-5), ValueError, "sensitivity should be a non-negative"),
        ((1.0, 1.0, 0.0, 1e-5), ValueError, "Epsilon should be a positive"),
        ((1.0, 1.0, 1.0, 0.0), ValueError, r"Delta should be a value in \(0, 1\)"),
        ((1.0, 1.0, 1.0, 1.0), ValueError, r"Delta should be a value in \(0, 1\)"),
        (("1", 1.0, 1.0, 1e-5), TypeError, "clipping_norm must be a finite number"),
        ((1.0, 1.0, float("nan"), 1e-5), TypeError, "epsilon must be a finite number"),
    ],
)
def test_local_dp_refuses_parameters_without_a_finite_noise(
    args: tuple[float, float, float, float], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        LocalDpMod(*args)


# --- message_size_mod / arrays_size_mod ------------------------------------------------


def sized_msg() -> Message:
    arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    return instruction(RecordDict({"arrays": arrays, "config": ConfigRecord({"lr": 0.1})}))


def test_message_size_mod_logs_the_bytes_flower_counts(logged: list[str]) -> None:
    def metrics_only(msg: Message, ctx: Context) -> Message:
        return Message(
            RecordDict({"m": MetricRecord({"loss": 1.0, "num-examples": 3})}), reply_to=msg
        )

    msg = sized_msg()
    assert message_bytes(msg) == 151  # 128 (np.save header) + 12 + len("w"), + 8 + len("lr")
    reply = message_size_mod(msg, context(), metrics_only)
    assert message_bytes(reply) == 32
    assert logged == [
        "INFO Incoming message size: 151 bytes",
        "INFO Outgoing message size: 32 bytes",
    ]
    logged.clear()
    message_size_mod(msg, context(), _failing)
    assert logged[-1] == "INFO Outgoing message size: 0 bytes"


def test_arrays_size_mod_logs_elements_and_bytes_of_each_array_record(logged: list[str]) -> None:
    def bigger(msg: Message, ctx: Context) -> Message:
        out = ArrayRecord({"w": Array(np.zeros((2, 3))), "s": Array(np.zeros(()))})
        return Message(RecordDict({"out": out}), reply_to=msg)

    msg = sized_msg()
    assert array_record_size_stats(msg) == {"arrays": {"elements": 3, "bytes": 141}}
    arrays_size_mod(msg, context(), bigger)
    assert logged == [
        "INFO Incoming `ArrayRecord` size statistics:",
        "INFO {'arrays': {'elements': 3, 'bytes': 141}}",
        "INFO Total array elements received: 141 bytes",
        "INFO Outgoing `ArrayRecord` size statistics:",
        "INFO {'out': {'elements': 7, 'bytes': 314}}",  # 128 + 48 + 1, 128 + 8 + 1
        "INFO Total array elements sent: 314 bytes",
    ]


# --- mods in a ClientApp ----------------------------------------------------------------


def test_app_mods_wrap_handler_mods_and_reach_only_their_handlers(logged: list[str]) -> None:
    app = ClientApp(mods=[message_size_mod])
    app.train(mods=[fixedclipping_mod])(adds(10.0))
    app.query()(_echo)
    reply = app(train_msg(clipping_norm=1.0), context())
    assert np.linalg.norm(np.concatenate(arrays_of(reply))) == pytest.approx(1.0, rel=1e-6)
    assert logged[0].startswith("INFO Incoming message size:")
    assert logged[1].startswith("INFO fixedclipping_mod:")
    assert logged[2].startswith("INFO Outgoing message size:")
    logged.clear()
    echoed = app(instruction(RecordDict({"arrays": model([7.0])}), "query"), context())
    assert arrays_of(echoed)[0].tolist() == [7.0]  # not clipped: no clipping mod on query
    assert [line.split(":")[0] for line in logged] == [
        "INFO Incoming message size",
        "INFO Outgoing message size",
    ]


# --- Flower's message types -------------------------------------------------------------


@pytest.mark.parametrize(
    "message_type",
    ["train", "evaluate", "query", "system", "train.x", "query.custom_1", "system.y"],
)
def test_flowers_message_types_are_accepted(message_type: str) -> None:
    assert Message(RecordDict(), 1, message_type).metadata.message_type == message_type


@pytest.mark.parametrize(
    "message_type",
    ["", "foo", "train.", "train.a.b", "train.1a", "TRAIN", "get_parameters", "x.train"],
)
def test_other_message_types_are_refused_naming_the_valid_forms(message_type: str) -> None:
    with pytest.raises(ValueError) as info:
        Message(RecordDict(), 1, message_type)
    assert str(info.value) == (
        f"invalid message_type {message_type!r}: expected '<category>' or '<category>.<action>', "
        "where <category> is 'train', 'evaluate', 'query' or 'system' and <action> is a "
        "Python identifier"
    )


def test_a_stored_message_of_another_type_is_refused_by_the_clientapp() -> None:
    md = Metadata(
        run_id=1,
        message_id=3,
        src_node_id=None,
        dst_node_id=1,
        reply_to_message_id=None,
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type="fit",
    )
    app = ClientApp()
    app.train()(_echo)
    with pytest.raises(ValueError, match="invalid message_type 'fit': expected"):
        app(Message.from_metadata(md, content=RecordDict()), context())
    with pytest.raises(ValueError, match="invalid message_type 'fit'"):
        Message(RecordDict(), metadata=md)  # type: ignore[call-overload]
