"""FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan against numpy references
written from their papers' definitions, over several rounds with uneven weights and
rejected replies; their constructors (Flower's parameters, clear errors) and logs.

No database: replies are built in memory. When a Flower install is found at
FLWR_VENV (default /tmp/flwr-venv), Flower's own strategies run on the same replies
in that environment and must agree.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flpg.app import ArrayRecord, Message, MetricRecord, RecordDict
from flpg.serverapp.strategy.bulyan import Bulyan
from flpg.serverapp.strategy.fedavg import FedAvg
from flpg.serverapp.strategy.fedmedian import FedMedian
from flpg.serverapp.strategy.fedtrimmedavg import FedTrimmedAvg
from flpg.serverapp.strategy.krum import Krum
from flpg.serverapp.strategy.multikrum import MultiKrum, select_multikrum
from flpg.serverapp.strategy.robuststrategy import ChunkwiseFedAvg
from flpg.serverapp.strategy.tally import ReplyTally

FLWR_PYTHON = Path(os.environ.get("FLWR_VENV", "/tmp/flwr-venv")) / "bin" / "python"
SHAPES = {"a": (41, 103), "b": (7,), "c": (1200,)}


def reply(node: int, arrays: dict[str, npt.NDArray[Any]] | None, weight: float | None) -> Message:
    metrics: dict[str, float] = {"loss": float(node)}
    if weight is not None:
        metrics["num-examples"] = weight
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    out = Message(content, reply_to=Message(RecordDict(), node, "train"))
    out.metadata.message_id = str(1000 + node)
    return out


def record(content: RecordDict) -> ArrayRecord:
    found = content["arrays"]
    assert isinstance(found, ArrayRecord)
    return found


def node_of(message: Message) -> int:
    node = message.metadata.src_node_id
    assert node is not None
    return node


def honest(rng: np.random.Generator, centre: float) -> dict[str, npt.NDArray[Any]]:
    return {k: rng.normal(centre, 1.0, s).astype(np.float32) for k, s in SHAPES.items()}


def round_replies(rng: np.random.Generator, n: int) -> tuple[list[Message], list[int]]:
    """n usable replies (uneven weights, the last an outlier) and three unusable
    ones: NaN values, a wrong shape, no weight. Also the usable nodes, in order."""
    usable = [reply(i, honest(rng, 0.1 * i), float(1 + 3 * i)) for i in range(n - 1)]
    outlier = {k: np.full(s, 1e3, np.float32) for k, s in SHAPES.items()}
    usable.append(reply(n - 1, outlier, 2.0))
    nan = honest(rng, 0.0)
    nan["c"][-1] = np.nan
    wrong = honest(rng, 0.0) | {"b": np.zeros(8, np.float32)}
    bad = [reply(50, nan, 1.0), reply(51, wrong, 1.0), reply(52, honest(rng, 0.0), None)]
    messages = [*usable[:2], bad[0], *usable[2:4], bad[1], *usable[4:], bad[2]]
    return messages, list(range(n))


def stack(messages: list[Message], nodes: list[int], name: str) -> npt.NDArray[np.float64]:
    by_node = {node_of(m): m for m in messages}
    return np.stack([record(by_node[n].content)[name].numpy() for n in nodes]).astype(np.float64)


def krum_pick(flat: npt.NDArray[np.float64], f: int, m: int) -> list[int]:
    d = ((flat[:, None] - flat[None, :]) ** 2).sum(axis=2)
    k = max(1, len(flat) - f - 2)
    scores = [np.sort(np.delete(d[i], i))[:k].sum() for i in range(len(flat))]
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def reference(strategy: ChunkwiseFedAvg, messages: list[Message], nodes: list[int]) -> Any:
    """The expected arrays (and the nodes whose metrics count) from the definitions."""
    weights = np.array([1.0 + 3 * i if i < len(nodes) - 1 else 2.0 for i in nodes])
    flat = np.concatenate([stack(messages, nodes, k).reshape(len(nodes), -1) for k in SHAPES], 1)
    if isinstance(strategy, FedMedian):
        return {k: np.median(stack(messages, nodes, k), axis=0) for k in SHAPES}, nodes
    if isinstance(strategy, FedTrimmedAvg):
        cut = int(strategy.beta * len(nodes))
        out = {}
        for k in SHAPES:
            ordered = np.sort(stack(messages, nodes, k), axis=0)
            out[k] = ordered[cut : len(nodes) - cut].mean(axis=0)
        return out, nodes
    f = strategy.num_malicious_nodes  # type: ignore[attr-defined]
    if isinstance(strategy, MultiKrum):
        picked = krum_pick(flat, f, strategy.num_nodes_to_select)
        w = weights[picked]
        mean = {
            k: np.tensordot(w, stack(messages, nodes, k)[picked], axes=1) / w.sum() for k in SHAPES
        }
        return mean, [nodes[p] for p in picked]
    theta = len(nodes) - 2 * f
    picked = krum_pick(flat, f, theta)
    out = {}
    for k in SHAPES:
        values = stack(messages, nodes, k)[picked]
        order = np.argsort(np.abs(values - np.median(values, axis=0)), axis=0, kind="stable")
        out[k] = np.take_along_axis(values, order[: theta - 2 * f], axis=0).mean(axis=0)
    return out, [nodes[p] for p in picked]


STRATEGIES = [
    FedMedian(),
    FedTrimmedAvg(beta=0.25),
    Krum(num_malicious_nodes=1, min_train_nodes=5),
    MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3, min_train_nodes=5),
    Bulyan(num_malicious_nodes=1, min_train_nodes=7),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: type(s).__name__)
def test_rounds_match_the_definition_and_reject_bad_replies(strategy: ChunkwiseFedAvg) -> None:
    rng = np.random.default_rng(7)
    strategy.slice_budget = 8 * 4096  # several slices, none dividing an array's size
    for server_round in (1, 2, 3):
        messages, nodes = round_replies(rng, 8)
        tally = ReplyTally(messages)
        arrays, metrics = strategy.aggregate_train(server_round, tally)
        assert arrays is not None and metrics is not None
        assert sorted(str(mid) for mid, _ in tally.rejected) == ["1050", "1051", "1052"]
        reasons = {int(mid): reason for mid, reason in tally.rejected}
        assert "NaN or Inf" in reasons[1050]
        assert "[8]" in reasons[1051] and "num-examples" in reasons[1052]
        expected, counted = reference(strategy, messages, nodes)
        for name in SHAPES:
            got = arrays[name].numpy()
            assert got.dtype == np.float32 and got.shape == SHAPES[name]
            np.testing.assert_allclose(got, expected[name].astype(np.float32), rtol=1e-6)
        w = {n: 1.0 + 3 * n if n < 7 else 2.0 for n in counted}
        loss = sum(w[n] * n for n in counted) / sum(w.values())
        assert metrics["loss"] == pytest.approx(loss)


@pytest.mark.parametrize("strategy", STRATEGIES[2:], ids=lambda s: type(s).__name__)
def test_distance_strategies_leave_out_the_outlier(strategy: ChunkwiseFedAvg) -> None:
    messages, _ = round_replies(np.random.default_rng(1), 8)
    arrays, _ = strategy.aggregate_train(1, messages)
    assert arrays is not None
    assert np.abs(arrays["c"].numpy()).max() < 100  # the outlier's values are 1000


def test_bulyan_skips_a_round_with_too_few_replies(capsys: pytest.CaptureFixture[str]) -> None:
    messages, _ = round_replies(np.random.default_rng(2), 6)
    assert Bulyan(num_malicious_nodes=1, min_train_nodes=7).aggregate_train(1, messages) == (
        None,
        None,
    )
    assert "Required at least 7 (4*num_malicious_nodes + 3), but received 6" in (
        capsys.readouterr().out
    )


def test_bulyan_takes_a_selection_rule_of_its_own() -> None:
    messages, nodes = round_replies(np.random.default_rng(4), 7)
    seen: list[tuple[int, int, int]] = []

    def first_ones(contents: list[RecordDict], f: int, theta: int) -> list[RecordDict]:
        seen.append((len(contents), f, theta))
        return contents[:theta]

    strategy = Bulyan(num_malicious_nodes=1, min_train_nodes=7, selection_rule=first_ones)
    arrays, _ = strategy.aggregate_train(1, messages)
    # The NaN reply is found while its values are read: rejected, then the rule is
    # asked again without it.
    assert seen == [(8, 1, 6), (7, 1, 5)]
    assert arrays is not None
    values = stack(messages, nodes[:5], "c")
    order = np.argsort(np.abs(values - np.median(values, axis=0)), axis=0, kind="stable")[:3]
    expected = np.take_along_axis(values, order, axis=0).mean(axis=0)
    np.testing.assert_allclose(arrays["c"].numpy(), expected.astype(np.float32), rtol=1e-6)


def test_select_multikrum_returns_the_lowest_scores_first() -> None:
    messages, _ = round_replies(np.random.default_rng(5), 6)
    contents = [m.content for m in messages if node_of(m) < 6]
    flat = np.stack(
        [np.concatenate([a.numpy().ravel() for a in record(c).values()]) for c in contents]
    ).astype(np.float64)
    chosen = select_multikrum(contents, 1, 3)
    assert [contents.index(c) for c in chosen] == krum_pick(flat, 1, 3)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FedTrimmedAvg(beta=0.5), "beta must be within [0, 0.5), got 0.5"),
        (lambda: FedTrimmedAvg(beta=-0.1), "beta must be within [0, 0.5)"),
        (lambda: Krum(num_malicious_nodes=1), "set min_train_nodes >= 5 (it is 2)"),
        (lambda: Krum(num_malicious_nodes=-1), "num_malicious_nodes must be >= 0, got -1"),
        (lambda: MultiKrum(num_nodes_to_select=0), "num_nodes_to_select must be >= 1, got 0"),
        (lambda: Bulyan(num_malicious_nodes=1, min_train_nodes=6), "min_train_nodes >= 7"),
        (lambda: FedMedian(fraction_train=1.5), "fraction_train must be within [0, 1]"),
    ],
)
def test_impossible_parameters_fail_at_construction(build: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        build()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


FLOWER_PARAMETERS = [
    "fraction_train",
    "fraction_evaluate",
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    "weighted_by_key",
    "arrayrecord_key",
    "configrecord_key",
    "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn",
]


@pytest.mark.parametrize(
    ("cls", "extra", "at"),
    [
        (FedMedian, {}, 10),
        (FedTrimmedAvg, {"beta": 0.2}, 10),
        (Krum, {"num_malicious_nodes": 0}, 5),
        (MultiKrum, {"num_malicious_nodes": 0, "num_nodes_to_select": 1}, 5),
        (Bulyan, {"num_malicious_nodes": 0}, 5),
    ],
)
def test_constructors_take_flowers_parameters_in_flowers_order(
    cls: type[FedAvg], extra: dict[str, Any], at: int
) -> None:
    parameters = inspect.signature(cls.__init__).parameters
    names = [p for p in parameters if p != "self"]
    flower = FLOWER_PARAMETERS[:at] + list(extra) + FLOWER_PARAMETERS[at:]
    if cls is Bulyan:
        flower.append("selection_rule")
    assert names == [*flower, "seed"]
    for name, default in extra.items():
        assert parameters[name].default == default
    assert parameters["min_train_nodes"].default == 2


def test_summaries_log_flowers_lines(capsys: pytest.CaptureFixture[str]) -> None:
    Krum(num_malicious_nodes=1, min_train_nodes=5).summary()
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "\t├──> Krum settings:",
        "\t│\t└── Number of malicious nodes: 1",
        "\t├──> MultiKrum settings:",
        "\t│\t├── Number of malicious nodes: 1",
    ]
    Bulyan().summary()
    assert "\t│\t└── Selection rule: select_multikrum" in capsys.readouterr().out
    FedTrimmedAvg(beta=0.3).summary()
    assert capsys.readouterr().out.startswith(
        "\t├──> FedTrimmedAvg settings:\n\t│\t└── beta: 0.3\n"
    )


FLOWER_SCRIPT = """
import json, sys
import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
import flwr.serverapp.strategy as s
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
data = np.load(sys.argv[1])
n = int(data["n"])
def replies():
    out = []
    for i in range(n):
        arrays = ArrayRecord({k: Array(data[f"{i}/{k}"]) for k in %(names)r})
        metrics = MetricRecord({"num-examples": float(data[f"w/{i}"]), "loss": float(i)})
        content = RecordDict({"arrays": arrays, "metrics": metrics})
        out.append(Message(content, reply_to=Message(RecordDict(), i + 1, "train")))
    return out
result = {}
for name, strategy in [
    ("FedMedian", s.FedMedian()), ("FedTrimmedAvg", s.FedTrimmedAvg(beta=0.25)),
    ("Krum", s.Krum(num_malicious_nodes=1)),
    ("MultiKrum", s.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3)),
    ("Bulyan", s.Bulyan(num_malicious_nodes=1)),
]:
    arrays, _ = strategy.aggregate_train(1, replies())
    result[name] = {k: arrays[k].numpy().astype(float).ravel().tolist() for k in %(names)r}
print(json.dumps(result))
"""


@pytest.mark.skipif(not FLWR_PYTHON.exists(), reason="no Flower install at FLWR_VENV")
def test_flowers_own_strategies_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    messages = [m for m in round_replies(rng, 8)[0] if node_of(m) < 8]
    saved: dict[str, Any] = {"n": np.array(len(messages))}
    for i, m in enumerate(messages):
        saved[f"w/{i}"] = np.array(m.content.metric_records["metrics"]["num-examples"])
        for k in SHAPES:
            saved[f"{i}/{k}"] = record(m.content)[k].numpy()
    np.savez(tmp_path / "replies.npz", **saved)
    script = FLOWER_SCRIPT % {"names": list(SHAPES)}
    done = subprocess.run(
        [str(FLWR_PYTHON), "-c", script, str(tmp_path / "replies.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    flower = json.loads(done.stdout.splitlines()[-1])
    for strategy in STRATEGIES:
        name = type(strategy).__name__
        arrays, _ = strategy.aggregate_train(1, messages)
        assert arrays is not None
        for k in SHAPES:
            np.testing.assert_allclose(
                arrays[k].numpy().ravel(), flower[name][k], rtol=1e-5, atol=1e-6, err_msg=name
            )
