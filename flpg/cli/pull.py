"""`flpg pull RUN_ID`: a run's final model (its checkpoint) and per-round metrics as
files (`flpg.cli.modelfiles`), read as the connected role may (a user: its own runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from flpg.cli import modelfiles, options, render_accounting
from flpg.cli._base import handle_errors, open_db, user_db_option
from flpg.cli.modelfiles import OutputError, Tensor
from flpg.store.db import Connection

if TYPE_CHECKING:
    from flpg.store.pull import Model


def _model_path(run_id: int, output: Path | None, fmt: str | None) -> tuple[Path, str]:
    """Where the model goes and in which format (OutputError if it cannot be told)."""
    if output is None:
        fmt = fmt or "npz"
        return Path(f"run-{run_id}{modelfiles.SUFFIX[fmt]}"), fmt
    return output, modelfiles.format_of(output, fmt, modelfiles.MODEL_FORMATS, "model")


@click.command("pull")
@click.argument("run_id", type=options.RUN_ID)
@user_db_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="The model file (default: run-RUN_ID.npz, or the suffix of --model-format).",
)
@click.option(
    "--model-format",
    type=click.Choice(["npz", "safetensors", "torch"]),
    default=None,
    help="npz (numpy.load), safetensors, or torch (a state_dict for torch.load; needs "
    "PyTorch). Default: from the --output extension (.npz, .safetensors, .pt), else npz.",
)
@click.option(
    "--round",
    "server_round",
    type=click.IntRange(min=0),
    default=None,
    metavar="K",
    help="Pull the checkpoint of round K (flpg keeps the latest one; refused otherwise).",
)
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="Also write the per-round metrics to FILE (.csv or .json).",
)
@click.option(
    "--metrics-format",
    type=click.Choice(["csv", "json"]),
    default=None,
    help="Format of --metrics (default: from its extension).",
)
@click.option("--no-model", is_flag=True, help="Write only --metrics, no model file.")
@click.option("--force", is_flag=True, help="Replace files that exist.")
@handle_errors
def pull_cmd(
    run_id: int,
    db: str | None,
    output: Path | None,
    model_format: str | None,
    server_round: int | None,
    metrics_path: Path | None,
    metrics_format: str | None,
    no_model: bool,
    force: bool,
) -> None:
    """Write run RUN_ID's final model (or --round K's checkpoint) to a file, and with
    --metrics its per-round metrics. A file appears whole or not at all."""
    from flpg.store import pull as store_pull

    if no_model and metrics_path is None:
        raise click.UsageError("--no-model writes nothing without --metrics FILE")
    model_path, fmt = (None, None) if no_model else _model_path(run_id, output, model_format)
    metrics_fmt = None
    if metrics_path is not None:
        metrics_fmt = modelfiles.format_of(
            metrics_path, metrics_format, modelfiles.METRICS_FORMATS, "metrics"
        )
        modelfiles.check_writable(metrics_path, force)
    if model_path is not None:
        if metrics_path is not None and model_path.resolve() == metrics_path.resolve():
            raise OutputError(f"the model and the metrics would both be {str(model_path)!r}")
        modelfiles.check_writable(model_path, force)
        if fmt == "torch":
            modelfiles.require_torch()
    _, conn = open_db(db)
    with conn, store_pull.snapshot(conn):  # read first, then write: no file on a refusal
        model = None if fmt is None else store_pull.model(conn, run_id, server_round)
        rounds = None if metrics_fmt is None else store_pull.metrics(conn, run_id)
        if model is not None and model_path is not None and fmt is not None:
            _write_model(conn, model, model_path, fmt, force)
            render_accounting.pulled_model(model, model_path, fmt)
        if rounds is not None and metrics_path is not None and metrics_fmt is not None:
            with modelfiles.replacing(metrics_path, force) as out:
                modelfiles.write_metrics(out, rounds, metrics_fmt)
            render_accounting.pulled_metrics(run_id, len(rounds), metrics_path)
        where = store_pull.artifact_dir(conn, run_id)
    render_accounting.artifacts(where)


def _write_model(conn: Connection, model: Model, path: Path, fmt: str, force: bool) -> None:
    from flpg.store import pull as store_pull

    tensors = [
        Tensor(
            ref.array_name,
            ref.dtype,
            ref.shape,
            ref.nbytes,
            lambda ref=ref: store_pull.chunks(conn, ref),  # type: ignore[misc]
        )
        for ref in model.arrays
    ]
    with modelfiles.replacing(path, force) as out:
        if fmt == "npz":
            modelfiles.write_npz(out, tensors)
        elif fmt == "safetensors":
            meta = {"run_id": str(model.run_id), "round": str(model.round), "format": "np"}
            modelfiles.write_safetensors(out, tensors, meta)
        else:
            modelfiles.write_torch(out, tensors)


COMMANDS = (pull_cmd,)
"""The commands this module adds to `flpg`."""
