"""The record types as Flower's Message API spells them: Array fields, tensors,
ArrayRecord's constructors and keep_input, copy() and count_bytes()."""

from __future__ import annotations

import io
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app.array import NUMPY_STYPE
from flpg.app.records import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.errors import RecordError


def _npy(nd: npt.NDArray[Any]) -> bytes:
    out = io.BytesIO()
    np.save(out, nd, allow_pickle=False)
    return out.getvalue()


# --- a stand-in for torch ----------------------------------------------------


class FakeTensor:
    """Something shaped like a CPU `torch.Tensor`: `.detach().cpu().numpy()`."""

    def __init__(self, values: npt.NDArray[Any]) -> None:
        self.values = values

    def detach(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> npt.NDArray[Any]:
        return self.values


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A `torch` module whose `Tensor` is `FakeTensor` and `from_numpy` wraps arrays."""
    module = types.ModuleType("torch")
    module.Tensor = FakeTensor  # type: ignore[attr-defined]
    module.from_numpy = FakeTensor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", module)
    yield module


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import torch` fail (None in sys.modules raises ImportError)."""
    monkeypatch.setitem(sys.modules, "torch", None)


# --- Array: Flower's fields ----------------------------------------------------

SAMPLES = [
    np.arange(6, dtype="<f4").reshape(2, 3),
    np.array(2.5),
    np.array([True, False]),
    np.zeros((0, 3), dtype="<i8"),
    np.array([1 + 2j], dtype="<c16"),
    np.arange(4, dtype="<f2"),
    np.arange(3, dtype="|u1"),
]


@pytest.mark.parametrize("nd", SAMPLES, ids=lambda nd: f"{nd.dtype}{nd.shape}")
def test_array_fields_round_trip(nd: npt.NDArray[Any]) -> None:
    arr = Array(nd)
    assert arr.stype == NUMPY_STYPE == "numpy.ndarray"
    assert arr.data == _npy(nd)
    assert arr.data_nbytes == len(arr.data)
    assert np.load(io.BytesIO(arr.data), allow_pickle=False).tolist() == nd.tolist()
    positional = Array(arr.dtype, arr.shape, arr.stype, arr.data)
    keywords = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=arr.data)
    mixed = Array(arr.dtype, arr.shape, stype=arr.stype, data=arr.data)
    assert positional == keywords == mixed == arr
    assert positional.numpy().dtype == nd.dtype and positional.shape == nd.shape


def test_array_accepts_flower_dtype_spellings_and_byte_orders() -> None:
    big = np.arange(3, dtype=">f4")
    arr = Array(str(big.dtype), big.shape, NUMPY_STYPE, _npy(big))
    assert arr.dtype == ">f4" == str(big.dtype)
    assert arr.numpy().dtype == big.dtype
    assert arr.numpy().tolist() == [0.0, 1.0, 2.0]
    little = np.ones((2, 2), dtype="float32")
    # Flower's docs pass the shape as a list.
    assert Array("float32", [2, 2], NUMPY_STYPE, _npy(little)) == Array(little)


def test_array_data_is_c_order_for_fortran_input() -> None:
    nd = np.asfortranarray(np.arange(6, dtype="<i4").reshape(2, 3))
    arr = Array(nd)
    assert arr.data == _npy(np.ascontiguousarray(nd))
    assert Array(arr.dtype, arr.shape, arr.stype, arr.data).numpy().tolist() == nd.tolist()


def test_array_from_numpy_ndarray_and_keyword() -> None:
    nd = np.arange(3.0)
    assert Array.from_numpy_ndarray(nd).numpy() is nd
    assert Array(ndarray=nd).numpy() is nd


def test_array_data_follows_in_place_changes() -> None:
    nd = np.zeros(2)
    arr = Array(nd)
    nd[0] = 7.0
    assert arr.data == _npy(nd)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        (("<f4", (1,), NUMPY_STYPE, b"", 5), {}),
        (("<f4", (1,), NUMPY_STYPE), {}),
        ((np.zeros(1),), {"dtype": "<f8"}),
        ((), {"ndarray": np.zeros(1), "dtype": "<f8"}),
        (("<f4",), {"dtype": "<f4", "shape": (1,), "stype": NUMPY_STYPE, "data": b""}),
        ((1, (1,), NUMPY_STYPE, b""), {}),
        (("<f4", (1.0,), NUMPY_STYPE, b""), {}),
        (("<f4", (1,), NUMPY_STYPE, "text"), {}),
    ],
)
def test_array_rejects_bad_argument_combinations(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(RecordError, match="Array takes"):
        Array(*args, **kwargs)


def test_array_explicit_fields_must_describe_their_data() -> None:
    data = _npy(np.zeros((2, 3), "<f4"))
    with pytest.raises(RecordError, match="do not match"):
        Array("<f4", (3, 2), NUMPY_STYPE, data)
    with pytest.raises(RecordError, match="do not match"):
        Array("float64", (2, 3), NUMPY_STYPE, data)
    with pytest.raises(RecordError, match="do not match"):
        Array("no-such-dtype", (2, 3), NUMPY_STYPE, data)
    with pytest.raises(RecordError, match=r"stype 'torch\.Tensor'"):
        Array("<f4", (2, 3), "torch.Tensor", data)
    with pytest.raises(RecordError, match=r"np\.save"):
        Array("<f4", (2, 3), NUMPY_STYPE, b"not npy")
    pickled = io.BytesIO()
    np.save(pickled, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(RecordError, match=r"np\.save"):
        Array("object", (1,), NUMPY_STYPE, pickled.getvalue())
    strings = _npy(np.array(["a"]))
    with pytest.raises(RecordError, match="cannot be stored"):
        Array("<U1", (1,), NUMPY_STYPE, strings)
    # Flower raises TypeError for bad arguments; RecordError is one.
    with pytest.raises(TypeError):
        Array()


class _Source:
    run_id = 1
    array_id = 2
    digest = b""

    def __init__(self, nd: npt.NDArray[Any]) -> None:
        self.nd = nd
        self.loads = 0

    def load(self) -> npt.NDArray[Any]:
        self.loads += 1
        return self.nd.copy()

    def chunks(self) -> Iterator[bytes]:
        yield self.nd.tobytes()


def test_stored_array_has_fields_and_counts_bytes_without_reading() -> None:
    nd = np.arange(5, dtype="<i2")
    source = _Source(nd)
    stored = Array.stored("<i2", (5,), source)
    assert stored.stype == NUMPY_STYPE
    assert ArrayRecord({"w": stored}).count_bytes() == len(_npy(nd)) + 1
    assert source.loads == 0
    assert stored.data == _npy(nd)
    assert source.loads == 1
    assert stored.source is source


# --- Array: tensors --------------------------------------------------------------


def test_array_from_tensor_copies_its_values(fake_torch: types.ModuleType) -> None:
    values = np.arange(4, dtype="<f4")
    tensor = FakeTensor(values)
    arr = Array(tensor)
    assert arr == Array(values)
    values[0] = 9.0
    assert arr.numpy()[0] == 0.0  # a copy, as Flower's serialised Array is
    assert Array.from_torch_tensor(tensor) == Array(values)
    assert Array(torch_tensor=tensor) == Array(values)
    with pytest.raises(RecordError, match="PyTorch tensor"):
        Array.from_torch_tensor(values)


def test_array_does_not_take_tensors_while_torch_is_not_imported(no_torch: None) -> None:
    with pytest.raises(RecordError, match="must be a numpy ndarray, got FakeTensor"):
        Array(FakeTensor(np.zeros(1)))


# --- ArrayRecord: Flower's constructors ---------------------------------------------


def test_array_record_from_state_dict_and_back(fake_torch: types.ModuleType) -> None:
    state = OrderedDict(
        [("fc.weight", FakeTensor(np.ones((2, 3), "<f4"))), ("fc.bias", FakeTensor(np.zeros(2)))]
    )
    record = ArrayRecord(state)
    assert list(record) == ["fc.weight", "fc.bias"]
    assert record["fc.weight"] == Array(np.ones((2, 3), "<f4"))
    assert ArrayRecord.from_torch_state_dict(state) == record
    assert ArrayRecord(torch_state_dict=state) == record
    back = record.to_torch_state_dict()
    assert isinstance(back, OrderedDict)
    assert list(back) == ["fc.weight", "fc.bias"]
    assert all(isinstance(t, FakeTensor) for t in back.values())
    assert back["fc.weight"].values is record["fc.weight"].numpy()
    assert len(state) == 2  # keep_input defaults to True


def test_array_record_keep_input_false_empties_the_input(fake_torch: types.ModuleType) -> None:
    state = {"w": FakeTensor(np.ones(2))}
    assert list(ArrayRecord(state, keep_input=False)) == ["w"]
    assert state == {}
    ndarrays = [np.zeros(1), np.ones(1)]
    record = ArrayRecord.from_numpy_ndarrays(ndarrays, keep_input=False)
    assert ndarrays == [] and len(record) == 2
    arrays = {"a": Array(np.zeros(1))}
    assert ArrayRecord.from_array_dict(arrays, keep_input=False)["a"] == Array(np.zeros(1))
    assert arrays == {}
    back = record.to_torch_state_dict(keep_input=False)
    assert list(back) == ["0", "1"] and len(record) == 0


def test_array_record_keep_input_false_keeps_input_on_error() -> None:
    bad = [np.zeros(1), "not an array"]
    with pytest.raises(RecordError, match=r"'1'.*str"):
        ArrayRecord(bad, keep_input=False)
    assert len(bad) == 2
    frozen = (np.zeros(1),)
    with pytest.raises(RecordError, match="keep_input=False"):
        ArrayRecord(frozen, keep_input=False)


def test_array_record_keyword_forms_and_single_input() -> None:
    nd = np.arange(3)
    assert ArrayRecord(numpy_ndarrays=[nd]) == ArrayRecord([nd])
    assert ArrayRecord(array_dict={"x": Array(nd)}) == ArrayRecord({"x": nd})
    assert ArrayRecord.from_array_dict({"x": Array(nd)})["x"].numpy() is nd
    with pytest.raises(RecordError, match="keep_input is keyword-only"):
        ArrayRecord([nd], [nd])
    with pytest.raises(RecordError, match="one of"):
        ArrayRecord([nd], array_dict={"x": Array(nd)})


def test_array_record_to_numpy_ndarrays_keep_input_false() -> None:
    a, b = np.zeros(1), np.ones(2)
    record = ArrayRecord([a, b])
    got = record.to_numpy_ndarrays(keep_input=False)
    assert got[0] is a and got[1] is b
    assert len(record) == 0


def test_to_torch_state_dict_without_torch(no_torch: None) -> None:
    with pytest.raises(RuntimeError, match="PyTorch is required to use to_torch_state_dict"):
        ArrayRecord([np.zeros(1)]).to_torch_state_dict()


def test_real_torch_state_dict_round_trip() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    record = ArrayRecord(model.state_dict())
    assert list(record) == ["weight", "bias"]
    assert record["weight"].shape == (2, 3) and record["weight"].dtype == "float32"
    state = record.to_torch_state_dict()
    assert list(state) == ["weight", "bias"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor)
    assert Array(model.weight) == record["weight"]


def test_real_torch_model_round_trips_and_edge_tensors() -> None:
    """A model with integer buffers loads back; a transposed view, a tensor changed
    after conversion, arrays that are big-endian or read-only, and bfloat16."""
    torch = pytest.importorskip("torch")

    def net() -> Any:
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))

    model, other = net(), net()
    record = ArrayRecord(model.state_dict())
    assert record["1.num_batches_tracked"].dtype == "int64"
    assert record["1.num_batches_tracked"].shape == ()
    other.load_state_dict(record.to_torch_state_dict())
    for mine, theirs in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    view = torch.arange(6.0).reshape(2, 3).t()
    np.testing.assert_array_equal(Array(view).numpy(), view.numpy())
    tensor = torch.zeros(3)
    array = Array(tensor)
    tensor += 1
    np.testing.assert_array_equal(array.numpy(), np.zeros(3))
    read_only = np.arange(3, dtype="float32")
    read_only.flags.writeable = False
    odd = ArrayRecord({"be": np.arange(3, dtype=">f4"), "ro": read_only})
    state = odd.to_torch_state_dict()
    assert torch.equal(state["be"], torch.arange(3.0)) and torch.equal(
        state["ro"], torch.arange(3.0)
    )
    with pytest.raises(TypeError, match=r"torch.bfloat16 tensor has no numpy dtype"):
        Array(torch.zeros(2, dtype=torch.bfloat16))


# --- copy() and count_bytes() ---------------------------------------------------------


def test_copy_is_shallow_and_keeps_the_type() -> None:
    arrays = ArrayRecord({"w": np.zeros(2)})
    metrics = MetricRecord({"acc": 0.5})
    config = ConfigRecord({"lr": 0.1})
    content = RecordDict({"a": arrays, "m": metrics, "c": config})
    for original in (arrays, metrics, config, content):
        copied = original.copy()
        assert type(copied) is type(original)
        assert copied == original and copied is not original
    copied_arrays = arrays.copy()
    assert copied_arrays["w"] is arrays["w"]
    del copied_arrays["w"]
    assert "w" in arrays
    copied_content = content.copy()
    assert copied_content["a"] is arrays
    copied_content["x"] = MetricRecord()
    assert "x" not in content


def test_metric_record_count_bytes() -> None:
    record = MetricRecord({"a": 1, "bb": [1.0, 2.0, 3.0], "empty": [], "f": 0.5})
    assert record.count_bytes() == (8 + 1) + (24 + 2) + (0 + 5) + (8 + 1)


def test_config_record_count_bytes() -> None:
    record = ConfigRecord(
        {
            "flag": True,
            "n": 3,
            "lr": 0.1,
            "name": "héllo",
            "blob": b"\x00\x01\x02",
            "masks": [True, False, True],
            "sizes": [1, 2],
            "tags": ["ab", "c"],
            "none": [],
        }
    )
    values = 1 + 8 + 8 + 5 + 3 + 3 + 16 + 3 + 0
    keys = sum(len(k) for k in record)
    assert record.count_bytes() == values + keys


def test_array_record_count_bytes_matches_np_save() -> None:
    arrays = {"weight": np.ones((3, 4), "<f4"), "b": np.array(True)}
    expected = sum(len(_npy(nd)) + len(name) for name, nd in arrays.items())
    assert ArrayRecord(arrays).count_bytes() == expected


def test_record_dict_count_bytes_sums_its_records() -> None:
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.zeros(2)]),
            "metrics": MetricRecord({"acc": 0.5}),
            "config": ConfigRecord({"on": True}),
        }
    )
    expected = (len(_npy(np.zeros(2))) + 1) + (8 + 3) + (1 + 2)
    assert content.count_bytes() == expected
    assert RecordDict().count_bytes() == 0


def test_scalar_records_keep_input_false_empty_the_input() -> None:
    metrics: dict[str, Any] = {"acc": 0.5}
    assert MetricRecord(metrics, keep_input=False) == MetricRecord({"acc": 0.5})
    assert metrics == {}
    config: dict[str, Any] = {"lr": 0.1}
    assert ConfigRecord(config, False)["lr"] == 0.1
    assert config == {}
    kept = {"acc": 0.5}
    MetricRecord(kept)
    assert kept == {"acc": 0.5}
