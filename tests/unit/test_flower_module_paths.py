"""Flower's module paths through flpg's `flwr` import hook.

FLOWER_MODULES lists every public module of Flower's `flwr.app`, `flwr.serverapp`,
`flwr.clientapp` and the Message-API part of `flwr.common`, in Flower 1.28 and 1.42
(the union: 1.42 moved the records to `flwr.app.message`), each with the public names
it has in Flower (its `__all__`, else what it defines; left out for the constant,
typing, logger and config modules and `flwr.common`, whose names
test_flower_api_surface checks). Every module must import through the hook; each
name must resolve or be refused in one line naming it; and a name flpg provides
in one of Flower's packages must resolve, as the same object, at every deeper path
where Flower has it (so `aggregate_arrayrecords` imports from where Flower has it).

The hook changes `sys.modules`, so the checks run in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# One module a line, then its names; an indented line goes on with the names above.
_TABLE = """
flwr.app Array ArrayRecord ConfigRecord Context Error Message MessageType Metadata MetricRecord
    RecordDict UserConfig UserConfigValue ConfigRecordValues ConfigScalar ConfigScalarList
    DEFAULT_TTL MetricRecordValues MetricScalar MetricScalarList
flwr.app.constants DEFAULT_TTL
flwr.app.error DEFAULT_TTL MESSAGE_INIT_ERROR_MESSAGE Error
flwr.app.exception AppExitException
flwr.app.message Array ArrayRecord ConfigRecord Context Message MessageInitializationError
    MetricRecord RecordDict get_message_to_descendant_id_mapping make_message
    remove_content_from_message
flwr.app.message.array Array
flwr.app.message.arraychunk ArrayChunk
flwr.app.message.arrayrecord ArrayRecord
flwr.app.message.configrecord ConfigRecord
flwr.app.message.context Context
flwr.app.message.message MESSAGE_INIT_ERROR_MESSAGE MessageInitializationError Message
    make_message remove_content_from_message get_message_to_descendant_id_mapping
flwr.app.message.metricrecord MetricRecord
flwr.app.message.recorddict RecordType T RecordDict
flwr.app.message.typeddict K V TypedDict
flwr.app.message_type MessageType
flwr.app.metadata Metadata validate_message_type validate_legacy_message_type
flwr.app.typing MetricScalar MetricScalarList MetricRecordValues ConfigScalar ConfigScalarList
    ConfigRecordValues
flwr.app.user_config UserConfigValue UserConfig
flwr.clientapp ClientApp mod
flwr.clientapp.client_app DEFAULT_ACTION ClientAppException ClientApp LoadClientAppError
flwr.clientapp.mod LocalDpMod adaptiveclipping_mod arrays_size_mod fixedclipping_mod
    message_size_mod
flwr.clientapp.mod.centraldp_mods fixedclipping_mod adaptiveclipping_mod
flwr.clientapp.mod.comms_mods message_size_mod arrays_size_mod
flwr.clientapp.mod.localdp_mod LocalDpMod
flwr.clientapp.typing ClientAppCallable Mod
flwr.clientapp.utils get_load_client_app_fn
flwr.common
flwr.common.config
flwr.common.constant
flwr.common.context Context
flwr.common.differential_privacy get_norm add_gaussian_noise_inplace clip_inputs_inplace
    compute_stdv compute_clip_model_update adaptive_clip_inputs_inplace
    compute_adaptive_clip_model_update add_gaussian_noise_to_params
    compute_adaptive_noise_params add_localdp_gaussian_noise_to_params
flwr.common.differential_privacy_constants KEY_CLIPPING_NORM KEY_NORM_BIT
    CLIENTS_DISCREPANCY_WARNING
flwr.common.dp add_gaussian_noise clip_by_l2
flwr.common.logger
flwr.common.message DEFAULT_TTL MESSAGE_INIT_ERROR_MESSAGE MessageInitializationError Message
    make_message remove_content_from_message get_message_to_descendant_id_mapping
flwr.common.parameter ndarrays_to_parameters parameters_to_ndarrays ndarray_to_bytes
    bytes_to_ndarray
flwr.common.record Array ArrayRecord ConfigRecord ConfigsRecord MetricRecord MetricsRecord
    ParametersRecord RecordDict RecordSet array_from_numpy
flwr.common.record.array Array
flwr.common.record.arraychunk ArrayChunk
flwr.common.record.arrayrecord ArrayRecord ParametersRecord
flwr.common.record.configrecord ConfigRecord ConfigsRecord
flwr.common.record.conversion_utils WARN_DEPRECATED_MESSAGE array_from_numpy
flwr.common.record.metricrecord MetricRecord MetricsRecord
flwr.common.record.recorddict RecordType T RecordDict RecordSet
flwr.common.record.typeddict K V TypedDict
flwr.common.typing
flwr.serverapp Grid ServerApp strategy GaussianPrivacyEvent NeighboringRelation
    PrivacyAccountant PrivacyConfig PrivacySpent RdpAccountant SamplingMethod
flwr.serverapp.exception InconsistentMessageReplies AggregationError PrivacyBudgetExhausted
flwr.serverapp.grid Grid
flwr.serverapp.grid.grid Grid
flwr.serverapp.server_app SERVER_FN_USAGE_EXAMPLE GRID_USAGE_EXAMPLE
    BOTH_MAIN_FN_SERVER_FN_PROVIDED_ERROR_MSG DRIVER_DEPRECATION_MSG DRIVER_EXAMPLE_MSG
    ServerApp LoadServerAppError
flwr.serverapp.strategy Bulyan DifferentialPrivacyClientSideAdaptiveClipping
    DifferentialPrivacyClientSideFixedClipping DifferentialPrivacyServerSideAdaptiveClipping
    DifferentialPrivacyServerSideFixedClipping FedAdagrad FedAdam FedAvg FedAvgM FedMedian
    FedProx FedTrimmedAvg FedXgbBagging FedXgbCyclic FedYogi Krum MultiKrum QFedAvg Result
    Strategy
flwr.serverapp.strategy.bulyan Bulyan aggregate_n_closest_weights
flwr.serverapp.strategy.dp_adaptive_clipping DifferentialPrivacyAdaptiveBase
    DifferentialPrivacyServerSideAdaptiveClipping DifferentialPrivacyClientSideAdaptiveClipping
flwr.serverapp.strategy.dp_fixed_clipping DifferentialPrivacyFixedClippingBase
    DifferentialPrivacyServerSideFixedClipping DifferentialPrivacyClientSideFixedClipping
    validate_replies
flwr.serverapp.strategy.fedadagrad FedAdagrad
flwr.serverapp.strategy.fedadam FedAdam
flwr.serverapp.strategy.fedavg FedAvg
flwr.serverapp.strategy.fedavgm FedAvgM
flwr.serverapp.strategy.fedmedian FedMedian
flwr.serverapp.strategy.fedopt FedOpt
flwr.serverapp.strategy.fedprox FedProx
flwr.serverapp.strategy.fedtrimmedavg FedTrimmedAvg trim_mean
flwr.serverapp.strategy.fedxgb_bagging FedXgbBagging
flwr.serverapp.strategy.fedxgb_cyclic FedXgbCyclic
flwr.serverapp.strategy.fedyogi FedYogi
flwr.serverapp.strategy.krum Krum
flwr.serverapp.strategy.multikrum MultiKrum compute_distances select_multikrum
flwr.serverapp.strategy.qfedavg QFedAvg get_train_loss get_local_weights l2_norm
    compute_delta_and_h
flwr.serverapp.strategy.result Result format_value stringify_dict
flwr.serverapp.strategy.strategy Strategy
flwr.serverapp.strategy.strategy_utils config_to_str log_strategy_start_info
    aggregate_arrayrecords aggregate_metricrecords sample_nodes
    validate_message_reply_consistency aggregate_bagging
flwr.serverapp.typing ServerAppCallable
"""

PACKAGES = (
    "flwr.app",
    "flwr.common",
    "flwr.serverapp",
    "flwr.serverapp.strategy",
    "flwr.serverapp.strategy.strategy_utils",
    "flwr.clientapp",
    "flwr.clientapp.mod",
)
"""Where flpg's Flower names are first exported; a name found here is one flpg has."""

RESOLVING_AT_LEAST = 100
"""(module, name) pairs of FLOWER_MODULES that resolve now."""


def _parse(table: str) -> dict[str, list[str]]:
    modules: dict[str, list[str]] = {}
    last = ""
    for line in table.strip("\n").splitlines():
        if line.startswith(" "):
            modules[last] += line.split()
            continue
        last, *names = line.split()
        modules[last] = names
    return modules


FLOWER_MODULES = _parse(_TABLE)


def check_paths(modules: dict[str, list[str]]) -> dict[str, object]:
    """Run inside a fresh interpreter: what each module and name does under the hook."""
    import importlib
    import types

    from flpg.compat.flwr import FlwrUnsupported, install

    install()
    provided: dict[str, object] = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        provided.update({n: getattr(module, n) for n in module.__all__})
    problems: list[str] = []
    resolved = 0
    for name, names in modules.items():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name} does not import: {exc}")
            continue
        for attr in names:
            try:
                value = getattr(module, attr)
            except FlwrUnsupported as exc:
                if not str(exc).startswith(f"{name}.{attr} is not supported by flpg (supported: "):
                    problems.append(f"{name}.{attr}: unclear refusal: {exc}")
                elif attr in provided:
                    problems.append(f"{name}.{attr} is refused but flpg provides {attr}")
                continue
            resolved += 1
            if (
                attr in provided
                and not isinstance(value, types.ModuleType)
                and value is not provided[attr]
            ):
                problems.append(f"{name}.{attr} is not the {attr} flpg provides")
    return {"problems": problems, "resolved": resolved}


def _run(code: str) -> str:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_flower_module_path_imports_and_its_names_resolve_or_are_refused() -> None:
    out = json.loads(
        _run(
            "import json\n"
            "from tests.unit.test_flower_module_paths import FLOWER_MODULES, check_paths\n"
            "print(json.dumps(check_paths(FLOWER_MODULES)))\n"
        )
    )
    assert out["problems"] == []
    assert out["resolved"] >= RESOLVING_AT_LEAST, out["resolved"]


def test_the_hook_serves_exactly_flowers_module_paths() -> None:
    from flpg.compat.flwr_modules import FLOWER_MODULES as SERVED

    assert sorted(SERVED) == sorted(["flwr", *FLOWER_MODULES])


def test_where_flower_has_a_name_flpg_has_it_there_too() -> None:
    out = _run(
        "from flpg.compat.flwr import install\n"
        "install()\n"
        "from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords as a\n"
        "from flwr.serverapp.strategy.fedavg import FedAvg\n"
        "from flwr.serverapp.strategy.result import Result\n"
        "from flwr.serverapp.exception import InconsistentMessageReplies\n"
        "from flwr.common.record import ArrayRecord as R1\n"
        "from flwr.app.message.arrayrecord import ArrayRecord as R2\n"
        "from flwr.app.metadata import Metadata\n"
        "from flwr.app.user_config import UserConfig\n"
        "from flwr.clientapp.mod.localdp_mod import LocalDpMod\n"
        "import flpg.app, flpg.serverapp.strategy as s\n"
        "from flpg.serverapp.strategy import strategy_utils as u\n"
        "print(a is u.aggregate_arrayrecords, FedAvg is s.FedAvg, Result is s.Result,\n"
        "      R1 is R2 is flpg.app.ArrayRecord, Metadata is flpg.app.Metadata,\n"
        "      InconsistentMessageReplies is u.InconsistentMessageReplies)\n"
    )
    assert out.split() == ["True"] * 6


def test_a_module_flpg_lacks_is_refused_naming_it_and_its_neighbours() -> None:
    out = _run(
        "from flpg.compat.flwr import FlwrUnsupportedModule, install\n"
        "install()\n"
        "for name in ('flwr.common.grpc', 'flwr.serverapp.strategy.fedfoo'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except FlwrUnsupportedModule as exc:\n"
        "        print(exc)\n"
    )
    grpc, fedfoo = out.splitlines()
    assert grpc.startswith("flwr.common.grpc is not supported by flpg (supported: flwr.common, ")
    assert "flwr.common.record.array" in grpc and "flwr.serverapp" not in grpc
    assert fedfoo.startswith(
        "flwr.serverapp.strategy.fedfoo is not supported by flpg "
        "(supported: flwr.serverapp.strategy, flwr.serverapp.strategy.bulyan, "
    )
