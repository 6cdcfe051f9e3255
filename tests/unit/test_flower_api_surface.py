"""Flower's Message API, name by name, through flpg's `flwr` import hook.

FLOWER_API lists what an app written for Flower's Message API (1.23, checked against
1.42) uses from flwr.app, flwr.serverapp, flwr.serverapp.strategy (and its
strategy_utils), flwr.clientapp, flwr.clientapp.mod and flwr.common, with Flower's
parameter names (read from Flower with `inspect.signature`): "*args"/"**kwargs" for
variadics, "kw:" before a keyword-only one, None for a value, type or attribute. Each
must resolve through `flpg.compat.flwr` and take the same arguments: Flower's
positional parameters at the same positions, its keyword ones by name, and no required
parameter Flower lacks. LACKING names what flpg leaves out on purpose, and why;
FLOWER_ALL (the modules' `__all__` in Flower 1.23) must be covered by the two lists.

The hook changes `sys.modules`, so the checks run in a fresh interpreter.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

Params = tuple[str, ...] | None

# One name a line: module, path, then Flower's parameters ("-": not called); an
# indented line goes on with the parameters of the line above.
_FLOWER_API_TABLE = """
flwr.app Array *args kw:dtype kw:shape kw:stype kw:data kw:ndarray kw:torch_tensor
flwr.app Array.from_numpy_ndarray ndarray
flwr.app Array.from_torch_tensor tensor
flwr.app Array.numpy
flwr.app Array.dtype -
flwr.app Array.shape -
flwr.app Array.stype -
flwr.app Array.data -
flwr.app ArrayRecord *args kw:numpy_ndarrays kw:torch_state_dict kw:array_dict kw:keep_input
flwr.app ArrayRecord.from_array_dict array_dict kw:keep_input
flwr.app ArrayRecord.from_numpy_ndarrays ndarrays kw:keep_input
flwr.app ArrayRecord.from_torch_state_dict state_dict kw:keep_input
flwr.app ArrayRecord.to_numpy_ndarrays kw:keep_input
flwr.app ArrayRecord.to_torch_state_dict kw:keep_input
flwr.app ArrayRecord.count_bytes
flwr.app ConfigRecord config_dict keep_input
flwr.app ConfigRecord.count_bytes
flwr.app MetricRecord metric_dict keep_input
flwr.app MetricRecord.count_bytes
flwr.app RecordDict records kw:parameters_records kw:metrics_records kw:configs_records
flwr.app RecordDict.array_records -
flwr.app RecordDict.metric_records -
flwr.app RecordDict.config_records -
flwr.app Context run_id node_id node_config state run_config
flwr.app Context.run_id -
flwr.app Context.node_id -
flwr.app Context.node_config -
flwr.app Context.state -
flwr.app Context.run_config -
flwr.app Error code reason
flwr.app Error.code -
flwr.app Error.reason -
flwr.app Message *args kw:dst_node_id kw:message_type kw:content kw:error kw:ttl kw:group_id
    kw:reply_to kw:metadata
flwr.app Message.metadata -
flwr.app Message.content -
flwr.app Message.error -
flwr.app Message.has_content
flwr.app Message.has_error
flwr.app Message.create_reply content ttl
flwr.app Message.create_error_reply error ttl
flwr.app MessageType -
flwr.app MessageType.TRAIN -
flwr.app MessageType.EVALUATE -
flwr.app MessageType.QUERY -
flwr.app MessageType.SYSTEM -
flwr.app Metadata run_id message_id src_node_id dst_node_id reply_to_message_id group_id
    created_at ttl message_type
flwr.app Metadata.run_id -
flwr.app Metadata.message_id -
flwr.app Metadata.src_node_id -
flwr.app Metadata.dst_node_id -
flwr.app Metadata.reply_to_message_id -
flwr.app Metadata.group_id -
flwr.app Metadata.created_at -
flwr.app Metadata.delivered_at -
flwr.app Metadata.ttl -
flwr.app Metadata.message_type -
flwr.serverapp Grid -
flwr.serverapp Grid.run -
flwr.serverapp Grid.get_node_ids
flwr.serverapp Grid.create_message content message_type dst_node_id group_id ttl
flwr.serverapp Grid.push_messages messages
flwr.serverapp Grid.pull_messages message_ids
flwr.serverapp Grid.send_and_receive messages kw:timeout
flwr.serverapp ServerApp server config strategy client_manager server_fn
flwr.serverapp ServerApp.main
flwr.serverapp ServerApp.lifespan
flwr.serverapp ServerApp.__call__ grid context
flwr.serverapp strategy -
flwr.serverapp.strategy FedAvg fraction_train fraction_evaluate min_train_nodes
    min_evaluate_nodes min_available_nodes weighted_by_key arrayrecord_key configrecord_key
    train_metrics_aggr_fn evaluate_metrics_aggr_fn
flwr.serverapp.strategy FedAvg.start grid initial_arrays num_rounds timeout train_config
    evaluate_config evaluate_fn
flwr.serverapp.strategy FedAvg.configure_train server_round arrays config grid
flwr.serverapp.strategy FedAvg.aggregate_train server_round replies
flwr.serverapp.strategy FedAvg.configure_evaluate server_round arrays config grid
flwr.serverapp.strategy FedAvg.aggregate_evaluate server_round replies
flwr.serverapp.strategy FedAvg.summary
flwr.serverapp.strategy Strategy -
flwr.serverapp.strategy Strategy.start grid initial_arrays num_rounds timeout train_config
    evaluate_config evaluate_fn
flwr.serverapp.strategy Strategy.configure_train server_round arrays config grid
flwr.serverapp.strategy Strategy.aggregate_train server_round replies
flwr.serverapp.strategy Strategy.configure_evaluate server_round arrays config grid
flwr.serverapp.strategy Strategy.aggregate_evaluate server_round replies
flwr.serverapp.strategy Strategy.summary
flwr.serverapp.strategy strategy_utils -
flwr.serverapp.strategy.strategy_utils config_to_str config
flwr.serverapp.strategy.strategy_utils log_strategy_start_info num_rounds arrays
    train_config evaluate_config
flwr.serverapp.strategy.strategy_utils aggregate_arrayrecords records weighting_metric_name
flwr.serverapp.strategy.strategy_utils aggregate_metricrecords records weighting_metric_name
flwr.serverapp.strategy.strategy_utils sample_nodes grid min_available_nodes sample_size
flwr.serverapp.strategy.strategy_utils aggregate_bagging bst_prev_org bst_curr_org
flwr.serverapp.strategy.strategy_utils validate_message_reply_consistency replies
    weighted_by_key check_arrayrecord
flwr.serverapp.strategy Result arrays train_metrics_clientapp evaluate_metrics_clientapp
    evaluate_metrics_serverapp
flwr.clientapp ClientApp client_fn mods
flwr.clientapp ClientApp.train action kw:mods
flwr.clientapp ClientApp.evaluate action kw:mods
flwr.clientapp ClientApp.query action kw:mods
flwr.clientapp ClientApp.lifespan
flwr.clientapp ClientApp.__call__ message context
flwr.clientapp mod -
flwr.clientapp.mod fixedclipping_mod msg ctxt call_next
flwr.clientapp.mod adaptiveclipping_mod msg ctxt call_next
flwr.clientapp.mod LocalDpMod clipping_norm sensitivity epsilon delta
flwr.clientapp.mod LocalDpMod.__call__ msg ctxt call_next
flwr.clientapp.mod message_size_mod msg ctxt call_next
flwr.clientapp.mod arrays_size_mod msg ctxt call_next
flwr.common Array *args kw:dtype kw:shape kw:stype kw:data kw:ndarray kw:torch_tensor
flwr.common ArrayRecord *args kw:numpy_ndarrays kw:torch_state_dict kw:array_dict
    kw:keep_input
flwr.common ConfigRecord config_dict keep_input
flwr.common MetricRecord metric_dict keep_input
flwr.common RecordDict records kw:parameters_records kw:metrics_records kw:configs_records
flwr.common Context run_id node_id node_config state run_config
flwr.common Error code reason
flwr.common Message *args kw:dst_node_id kw:message_type kw:content kw:error kw:ttl
    kw:group_id kw:reply_to kw:metadata
flwr.common MessageType -
flwr.common Metadata run_id message_id src_node_id dst_node_id reply_to_message_id group_id
    created_at ttl message_type
flwr.common DEFAULT_TTL -
flwr.common ConfigRecordValues -
flwr.common MetricRecordValues -
flwr.common NDArray -
flwr.common NDArrays -
flwr.common Scalar -
flwr.common Config -
flwr.common Metrics -
flwr.common Properties -
flwr.common log level msg *args **kwargs
flwr.common ndarray_to_bytes ndarray
flwr.common bytes_to_ndarray tensor
flwr.common array_from_numpy ndarray
flwr.common now
flwr.common.constant ErrorCode -
flwr.common.constant MessageType -
"""


def _parse(table: str) -> list[tuple[str, str, Params]]:
    entries: list[tuple[str, str, Params]] = []
    for line in table.strip("\n").splitlines():
        if line.startswith(" "):
            module, path, before = entries.pop()
            entries.append((module, path, (*(before or ()), *line.split())))
            continue
        module, path, *words = line.split()
        entries.append((module, path, None if words == ["-"] else tuple(words)))
    return entries


def _words(text: str) -> list[str]:
    return text.split()


FLOWER_API: list[tuple[str, str, Params]] = _parse(_FLOWER_API_TABLE)

_STRATEGIES = "a Flower strategy flpg does not ship (yet)"
_LEGACY = "Flower's legacy (pre-Message API) interface: flpg has the Message API only"
_WIRE = "Flower's wire serialisation (InflatableObject): flpg keeps records in PostgreSQL"
_STRATEGY_NAMES = _words(
    "Bulyan DifferentialPrivacyClientSideAdaptiveClipping"
    " DifferentialPrivacyClientSideFixedClipping DifferentialPrivacyServerSideAdaptiveClipping"
    " DifferentialPrivacyServerSideFixedClipping"
    " FedAdagrad FedAdam FedAvgM FedMedian FedProx FedTrimmedAvg FedXgbBagging FedXgbCyclic FedYogi"
    " Krum MultiKrum QFedAvg"
)
_MOD_NAMES = _words(
    "LocalDpMod adaptiveclipping_mod arrays_size_mod fixedclipping_mod message_size_mod"
)
_LEGACY_NAMES = _words(
    "ClientMessage Code ConfigsRecord DisconnectRes EvaluateIns EvaluateRes EventType FitIns"
    " FitRes GRPC_MAX_MESSAGE_LENGTH GetParametersIns GetParametersRes GetPropertiesIns"
    " GetPropertiesRes MessageTypeLegacy MetricsAggregationFn MetricsRecord Parameters"
    " ParametersRecord ReconnectIns RecordSet ServerMessage Status configure event"
    " ndarrays_to_parameters parameters_to_ndarrays"
)

SHIPPED_STRATEGIES = set(importlib.import_module("flpg.serverapp.strategy").__all__)
"""The strategies flpg ships; the other Flower strategies are LACKING (and must be
refused), these must resolve (test_shipped_strategies_resolve_through_the_hook)."""

LACKING: dict[str, str] = {
    "flwr.serverapp.Grid.set_run": (
        "Flower's runner binds a Grid to a run; flpg builds each Grid for one run"
    ),
    **{
        f"flwr.serverapp.strategy.{name}": _STRATEGIES
        for name in _STRATEGY_NAMES
        if name not in SHIPPED_STRATEGIES
    },
    **{f"flwr.common.{name}": _LEGACY for name in _LEGACY_NAMES},
    **{
        f"flwr.app.{cls}.{name}": _WIRE
        for cls in _words("Array ArrayRecord ConfigRecord MetricRecord RecordDict Message")
        for name in _words("children deflate inflate object_id is_dirty")
    },
    **{
        f"flwr.app.RecordDict.{name}": _LEGACY
        for name in _words("parameters_records metrics_records configs_records")
    },
}

FLOWER_ALL: dict[str, list[str]] = {
    "flwr.app": _words(
        "Array ArrayRecord ConfigRecord Context Error Message MessageType Metadata MetricRecord"
        " RecordDict"
    ),
    "flwr.serverapp": _words("Grid ServerApp strategy"),
    "flwr.serverapp.strategy": sorted([*_STRATEGY_NAMES, "FedAvg", "Result", "Strategy"]),
    # strategy_utils has no __all__: the functions it defines.
    "flwr.serverapp.strategy.strategy_utils": _words(
        "aggregate_arrayrecords aggregate_bagging aggregate_metricrecords config_to_str"
        " log_strategy_start_info sample_nodes validate_message_reply_consistency"
    ),
    "flwr.clientapp": _words("ClientApp mod"),
    "flwr.clientapp.mod": _MOD_NAMES,
    "flwr.common": sorted(
        [
            *_LEGACY_NAMES,
            *_words(
                "Array ArrayRecord Config ConfigRecord ConfigRecordValues Context DEFAULT_TTL Error"
                " Message MessageType Metadata MetricRecord MetricRecordValues Metrics NDArray"
                " NDArrays Properties RecordDict Scalar array_from_numpy bytes_to_ndarray log"
                " ndarray_to_bytes now"
            ),
        ]
    ),
}

PASSING_AT_LEAST = 130
"""Entries of FLOWER_API that resolve and take Flower's arguments (all of them now)."""


# --- the check, run inside the fresh interpreter ------------------------------------


def _flower_params(spec: tuple[str, ...]) -> list[tuple[str, str]]:
    """`(kind, name)` of Flower's parameters: kind is pos, kw, *args or **kwargs."""
    out = []
    for item in spec:
        if item.startswith("**"):
            out.append(("**", item[2:]))
        elif item.startswith("*"):
            out.append(("*", item[1:]))
        elif item.startswith("kw:"):
            out.append(("kw", item[3:]))
        else:
            out.append(("pos", item))
    return out


def signature_problems(obj: Any, spec: tuple[str, ...]) -> list[str]:
    """Why calls written for Flower's parameters `spec` would not fit `obj` (empty: fit)."""
    sig = inspect.signature(obj)
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    kinds = inspect.Parameter
    var_pos = any(p.kind is kinds.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind is kinds.VAR_KEYWORD for p in params)
    positional = [
        p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    by_name = {p.name: p for p in params if p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)}
    problems = []
    wanted = _flower_params(spec)
    index = 0
    for kind, name in wanted:
        if kind == "*":
            if not var_pos:
                problems.append("takes no *args")
        elif kind == "**":
            if not var_kw:
                problems.append("takes no **kwargs")
        elif kind == "kw":
            p = by_name.get(name)
            if not (var_kw or (p is not None and p.kind is not kinds.POSITIONAL_ONLY)):
                problems.append(f"no keyword {name!r}")
        else:
            at = positional[index] if index < len(positional) else None
            if at is None and not var_pos:
                problems.append(f"no positional parameter {index} ({name!r})")
            elif at is not None and at.name != name:
                problems.append(f"positional parameter {index} is {at.name!r}, not {name!r}")
            index += 1
    known = {name for _, name in wanted}
    for p in params:
        required = p.default is inspect.Parameter.empty and p.kind not in (
            kinds.VAR_POSITIONAL,
            kinds.VAR_KEYWORD,
        )
        if required and p.name not in known:
            problems.append(f"requires {p.name!r}, which Flower does not have")
    return problems


def _resolve(module: str, path: str) -> tuple[Any, bool]:
    """The object at `path` in the hooked module, and whether it is an instance
    attribute declared on its class (dataclass field or slot) rather than an object."""
    import dataclasses
    import importlib

    obj: Any = importlib.import_module(module)
    parts = path.split(".")
    for i, part in enumerate(parts):
        if inspect.ismodule(obj):
            obj = getattr(obj, part)
            continue
        try:
            obj = inspect.getattr_static(obj, part)
        except AttributeError:
            fields = (
                {f.name for f in dataclasses.fields(obj)}
                if dataclasses.is_dataclass(obj)
                else set()
            )
            if part in fields and i == len(parts) - 1:
                return None, True
            raise
        if isinstance(obj, classmethod | staticmethod):
            obj = obj.__func__
    return obj, False


def check_all(entries: list[tuple[str, str, Params]]) -> dict[str, str]:
    """`{module.path: ""}` for each entry that resolves and fits, else the reason."""
    from flpg.compat.flwr import install

    install()
    out: dict[str, str] = {}
    for module, path, spec in entries:
        key = f"{module}.{path}"
        try:
            obj, _field = _resolve(module, path)
        except (ImportError, AttributeError) as exc:
            out[key] = f"does not resolve: {exc}"
            continue
        if spec is None:
            out[key] = ""
        elif isinstance(obj, property) or not callable(obj):
            out[key] = f"is {type(obj).__name__}, not callable"
        else:
            out[key] = "; ".join(signature_problems(obj, spec))
    return out


# --- the tests ---------------------------------------------------------------------


def _run_checks() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    code = (
        "import json, sys\n"
        "from tests.unit.test_flower_api_surface import FLOWER_API, check_all\n"
        "print(json.dumps(check_all(FLOWER_API)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_flowers_message_api_resolves_through_the_hook_with_flowers_parameters() -> None:
    results = _run_checks()
    failing = {name: why for name, why in results.items() if why}
    assert failing == {}
    passing = len(results) - len(failing)
    assert passing >= PASSING_AT_LEAST, f"{passing} names pass, fewer than {PASSING_AT_LEAST}"


def test_shipped_strategies_resolve_through_the_hook() -> None:
    shipped = sorted(n for n in _STRATEGY_NAMES if n in SHIPPED_STRATEGIES)
    code = (
        "from flpg.compat.flwr import install\n"
        "install()\n"
        "import flwr.serverapp.strategy as s, flpg.serverapp.strategy as f\n"
        f"print(all(getattr(s, n) is getattr(f, n) for n in {shipped!r}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert done.stdout.strip() == "True", done.stderr


def test_every_public_flower_name_is_listed_as_supported_or_lacking() -> None:
    shipped = {f"flwr.serverapp.strategy.{n}" for n in _STRATEGY_NAMES if n in SHIPPED_STRATEGIES}
    listed = {f"{m}.{p}" for m, p, _ in FLOWER_API} | set(LACKING) | shipped
    missing = [
        f"{m}.{n}" for m, names in FLOWER_ALL.items() for n in names if f"{m}.{n}" not in listed
    ]
    assert missing == []
    both = {f"{m}.{p}" for m, p, _ in FLOWER_API} & set(LACKING)
    assert both == set()
    assert len(FLOWER_API) == PASSING_AT_LEAST


def test_names_flpg_lacks_are_refused_in_one_line() -> None:
    """A lacking module-level name fails with FlwrUnsupported, naming it."""
    top = sorted(n for n in LACKING if _module_level(n))
    code = (
        "import importlib, json\n"
        "from flpg.compat.flwr import FlwrUnsupported, install\n"
        "install()\n"
        "out = {}\n"
        f"for name in {top!r}:\n"
        "    module, attr = name.rsplit('.', 1)\n"
        "    try:\n"
        "        getattr(importlib.import_module(module), attr)\n"
        "        out[name] = 'resolved'\n"
        "    except FlwrUnsupported as exc:\n"
        "        out[name] = '' if str(exc).startswith(name + ' is not supported by flpg') else str(exc)\n"  # noqa: E501
        "print(json.dumps(out))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results and {k: v for k, v in results.items() if v} == {}


def test_the_signature_check_finds_what_would_break_a_flower_call() -> None:
    def flpg_like(content: Any, dst: int, *, ttl: float = 1, owner: str) -> None: ...

    assert signature_problems(flpg_like, ("content", "dst")) == [
        "requires 'owner', which Flower does not have"
    ]
    assert signature_problems(flpg_like, ("content", "dst_node_id", "kw:group_id", "*args")) == [
        "positional parameter 1 is 'dst', not 'dst_node_id'",
        "no keyword 'group_id'",
        "takes no *args",
        "requires 'dst', which Flower does not have",
        "requires 'owner', which Flower does not have",
    ]
    assert signature_problems(lambda *args, **kwargs: None, ("a", "kw:b", "*args", "**kw")) == []


def _module_level(name: str) -> bool:
    """Whether `name` is a module's attribute (not a member of one of its classes)."""
    module, _ = name.rsplit(".", 1)
    return module in FLOWER_ALL
