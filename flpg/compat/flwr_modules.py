"""Flower's module tree as flpg's `flwr` import hook serves it (`flpg.compat.flwr`).

FLOWER_MODULES holds every public module path of Flower's `flwr.app`,
`flwr.serverapp`, `flwr.clientapp` and `flwr.common` (its Message-API modules) in
Flower 1.20 to 1.42: the union of the trees of 1.28 and 1.42, where 1.42 moved the
records to `flwr.app.message` and 1.28 still had `flwr.common.record`. Flower's
transport and tooling modules (`flwr.common.grpc`, `.serde`, `.telemetry`,
`.secure_aggregation`, `.exit`, ...) are left out: importing one names it.

Each entry is `flwr module: (flpg modules, Flower's public names)`:
- flpg modules: where the names are looked up first, space-separated; None for the
  flpg module at the same path (`flwr.x.y` -> `flpg.x.y`) if there is one. The
  modules of the entry's ancestors are looked up next, nearest first.
- names: the module's public names in Flower (its `__all__`, or what it defines);
  `*` adds the flpg module's own `__all__`. A name flpg has nowhere in that chain
  is refused, naming it, when an app uses it.
"""

from __future__ import annotations

__all__ = ["FLOWER_MODULES"]

FLOWER_MODULES: dict[str, tuple[str | None, str]] = {
    "flwr": (None, "app clientapp common serverapp"),
    "flwr.app": (
        None,
        "* Array ArrayRecord ConfigRecord Context Error Message MessageType Metadata "
        "MetricRecord RecordDict UserConfig UserConfigValue ConfigRecordValues "
        "ConfigScalar ConfigScalarList DEFAULT_TTL MetricRecordValues MetricScalar "
        "MetricScalarList",
    ),
    "flwr.app.constants": ("flpg.app.message", "DEFAULT_TTL"),
    "flwr.app.error": (None, "DEFAULT_TTL MESSAGE_INIT_ERROR_MESSAGE Error"),
    "flwr.app.exception": (None, "AppExitException"),
    "flwr.app.message": (
        "flpg.app.message",
        "Array ArrayRecord ConfigRecord Context Message MessageInitializationError "
        "MetricRecord RecordDict get_message_to_descendant_id_mapping make_message "
        "remove_content_from_message",
    ),
    "flwr.app.message.array": ("flpg.app.array", "Array"),
    "flwr.app.message.arraychunk": ("flpg.app.array", "ArrayChunk"),
    "flwr.app.message.arrayrecord": ("flpg.app.arrayrecord", "ArrayRecord"),
    "flwr.app.message.configrecord": ("flpg.app.records", "ConfigRecord"),
    "flwr.app.message.context": ("flpg.app.context", "Context"),
    "flwr.app.message.message": (
        "flpg.app.message",
        "MESSAGE_INIT_ERROR_MESSAGE MessageInitializationError Message make_message "
        "remove_content_from_message get_message_to_descendant_id_mapping",
    ),
    "flwr.app.message.metricrecord": ("flpg.app.records", "MetricRecord"),
    "flwr.app.message.recorddict": ("flpg.app.records", "RecordType T RecordDict"),
    "flwr.app.message.typeddict": ("flpg.app.records", "K V TypedDict"),
    "flwr.app.message_type": ("flpg.app.message", "MessageType"),
    "flwr.app.metadata": (
        None,
        "Metadata validate_message_type validate_legacy_message_type",
    ),
    "flwr.app.typing": (
        None,
        "MetricScalar MetricScalarList MetricRecordValues ConfigScalar ConfigScalarList "
        "ConfigRecordValues",
    ),
    "flwr.app.user_config": (None, "UserConfigValue UserConfig"),
    "flwr.clientapp": (None, "* ClientApp mod"),
    "flwr.clientapp.client_app": (
        "flpg.clientapp.clientapp",
        "DEFAULT_ACTION ClientAppException ClientApp LoadClientAppError",
    ),
    "flwr.clientapp.mod": (
        None,
        "* LocalDpMod adaptiveclipping_mod arrays_size_mod fixedclipping_mod message_size_mod",
    ),
    "flwr.clientapp.mod.centraldp_mods": (
        "flpg.clientapp.mod.centraldp",
        "fixedclipping_mod adaptiveclipping_mod",
    ),
    "flwr.clientapp.mod.comms_mods": (
        "flpg.clientapp.mod.comms",
        "message_size_mod arrays_size_mod",
    ),
    "flwr.clientapp.mod.localdp_mod": ("flpg.clientapp.mod.localdp", "LocalDpMod"),
    "flwr.clientapp.typing": ("flpg.clientapp.clientapp", "ClientAppCallable Mod"),
    "flwr.clientapp.utils": ("flpg.clientapp.clientapp", "get_load_client_app_fn"),
    "flwr.common": (
        None,
        "* Array ArrayRecord ClientMessage Code Config ConfigRecord ConfigRecordValues "
        "ConfigsRecord Context DEFAULT_TTL DisconnectRes Error EvaluateIns EvaluateRes "
        "EventType FitIns FitRes GRPC_MAX_MESSAGE_LENGTH GetParametersIns "
        "GetParametersRes GetPropertiesIns GetPropertiesRes Message MessageType "
        "MessageTypeLegacy Metadata MetricRecord MetricRecordValues Metrics "
        "MetricsAggregationFn MetricsRecord NDArray NDArrays Parameters ParametersRecord "
        "Properties ReconnectIns RecordDict RecordSet Scalar ServerMessage Status "
        "array_from_numpy bytes_to_ndarray configure event log ndarray_to_bytes "
        "ndarrays_to_parameters now parameters_to_ndarrays NDArrayFloat NDArrayInt Value",
    ),
    "flwr.common.config": (None, "*"),
    "flwr.common.constant": (None, "*"),
    "flwr.common.context": ("flpg.app.context", "Context"),
    "flwr.common.differential_privacy": (
        None,
        "get_norm add_gaussian_noise_inplace clip_inputs_inplace compute_stdv "
        "compute_clip_model_update adaptive_clip_inputs_inplace "
        "compute_adaptive_clip_model_update add_gaussian_noise_to_params "
        "compute_adaptive_noise_params add_localdp_gaussian_noise_to_params",
    ),
    "flwr.common.differential_privacy_constants": (
        "flpg.clientapp.mod.precondition",
        "KEY_CLIPPING_NORM KEY_NORM_BIT CLIENTS_DISCREPANCY_WARNING",
    ),
    "flwr.common.dp": (None, "add_gaussian_noise clip_by_l2"),
    "flwr.common.logger": (None, "*"),
    "flwr.common.message": (
        "flpg.app.message",
        "DEFAULT_TTL MESSAGE_INIT_ERROR_MESSAGE MessageInitializationError Message "
        "make_message remove_content_from_message get_message_to_descendant_id_mapping",
    ),
    "flwr.common.parameter": (
        None,
        "ndarrays_to_parameters parameters_to_ndarrays ndarray_to_bytes bytes_to_ndarray",
    ),
    "flwr.common.record": (
        "flpg.app.records",
        "Array ArrayRecord ConfigRecord ConfigsRecord MetricRecord MetricsRecord "
        "ParametersRecord RecordDict RecordSet array_from_numpy",
    ),
    "flwr.common.record.array": ("flpg.app.array", "Array"),
    "flwr.common.record.arraychunk": ("flpg.app.array", "ArrayChunk"),
    "flwr.common.record.arrayrecord": ("flpg.app.arrayrecord", "ArrayRecord ParametersRecord"),
    "flwr.common.record.configrecord": ("flpg.app.records", "ConfigRecord ConfigsRecord"),
    "flwr.common.record.conversion_utils": (
        "flpg.common.parameter",
        "WARN_DEPRECATED_MESSAGE array_from_numpy",
    ),
    "flwr.common.record.metricrecord": ("flpg.app.records", "MetricRecord MetricsRecord"),
    "flwr.common.record.recorddict": ("flpg.app.records", "RecordType T RecordDict RecordSet"),
    "flwr.common.record.typeddict": ("flpg.app.records", "K V TypedDict"),
    "flwr.common.typing": (None, "*"),
    "flwr.serverapp": (
        None,
        "* Grid ServerApp strategy GaussianPrivacyEvent NeighboringRelation "
        "PrivacyAccountant PrivacyConfig PrivacySpent RdpAccountant SamplingMethod",
    ),
    "flwr.serverapp.exception": (
        "flpg.serverapp.strategy.strategy_utils flpg.serverapp.strategy.strategy",
        "InconsistentMessageReplies AggregationError PrivacyBudgetExhausted",
    ),
    "flwr.serverapp.grid": (None, "Grid"),
    "flwr.serverapp.grid.grid": ("flpg.serverapp.grid", "Grid"),
    "flwr.serverapp.server_app": (
        "flpg.serverapp.serverapp",
        "SERVER_FN_USAGE_EXAMPLE GRID_USAGE_EXAMPLE "
        "BOTH_MAIN_FN_SERVER_FN_PROVIDED_ERROR_MSG DRIVER_DEPRECATION_MSG "
        "DRIVER_EXAMPLE_MSG ServerApp LoadServerAppError",
    ),
    "flwr.serverapp.strategy": (
        None,
        "* Bulyan DifferentialPrivacyClientSideAdaptiveClipping "
        "DifferentialPrivacyClientSideFixedClipping "
        "DifferentialPrivacyServerSideAdaptiveClipping "
        "DifferentialPrivacyServerSideFixedClipping FedAdagrad FedAdam FedAvg FedAvgM "
        "FedMedian FedProx FedTrimmedAvg FedXgbBagging FedXgbCyclic FedYogi Krum "
        "MultiKrum QFedAvg Result Strategy",
    ),
    "flwr.serverapp.strategy.bulyan": (None, "Bulyan aggregate_n_closest_weights"),
    "flwr.serverapp.strategy.dp_adaptive_clipping": (
        None,
        "DifferentialPrivacyAdaptiveBase DifferentialPrivacyServerSideAdaptiveClipping "
        "DifferentialPrivacyClientSideAdaptiveClipping",
    ),
    "flwr.serverapp.strategy.dp_fixed_clipping": (
        None,
        "DifferentialPrivacyFixedClippingBase DifferentialPrivacyServerSideFixedClipping "
        "DifferentialPrivacyClientSideFixedClipping validate_replies",
    ),
    "flwr.serverapp.strategy.fedadagrad": (None, "FedAdagrad"),
    "flwr.serverapp.strategy.fedadam": (None, "FedAdam"),
    "flwr.serverapp.strategy.fedavg": (None, "FedAvg"),
    "flwr.serverapp.strategy.fedavgm": (None, "FedAvgM"),
    "flwr.serverapp.strategy.fedmedian": (None, "FedMedian"),
    "flwr.serverapp.strategy.fedopt": (None, "FedOpt"),
    "flwr.serverapp.strategy.fedprox": (None, "FedProx"),
    "flwr.serverapp.strategy.fedtrimmedavg": (None, "FedTrimmedAvg trim_mean"),
    "flwr.serverapp.strategy.fedxgb_bagging": (None, "FedXgbBagging"),
    "flwr.serverapp.strategy.fedxgb_cyclic": (None, "FedXgbCyclic"),
    "flwr.serverapp.strategy.fedyogi": (None, "FedYogi"),
    "flwr.serverapp.strategy.krum": (None, "Krum"),
    "flwr.serverapp.strategy.multikrum": (None, "MultiKrum compute_distances select_multikrum"),
    "flwr.serverapp.strategy.qfedavg": (
        None,
        "QFedAvg get_train_loss get_local_weights l2_norm compute_delta_and_h",
    ),
    "flwr.serverapp.strategy.result": (None, "Result format_value stringify_dict"),
    "flwr.serverapp.strategy.strategy": (None, "Strategy"),
    "flwr.serverapp.strategy.strategy_utils": (
        None,
        "* config_to_str log_strategy_start_info aggregate_arrayrecords "
        "aggregate_metricrecords sample_nodes validate_message_reply_consistency "
        "aggregate_bagging",
    ),
    "flwr.serverapp.typing": ("flpg.serverapp.serverapp", "ServerAppCallable"),
}
"""Each Flower module path flpg serves, where its names come from, and Flower's names."""
