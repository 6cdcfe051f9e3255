"""`flpg.local.scaffold.create_app`: the generated app parses, imports, trains and runs."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from flpg import ClientApp, ConfigRecord, Context, Message, MessageType, RecordDict
from flpg.app.records import ArrayRecord
from flpg.bundle.appdir import check_components, load_component, read_app
from flpg.errors import AppError
from flpg.local.scaffold import create_app, package_name


def node_context(node_id: int, partition_id: int, run_config: dict[str, Any]) -> Context:
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": partition_id, "num-partitions": 2},
        state=RecordDict(),
        run_config=dict(run_config),
    )


def test_generated_app_parses_and_imports(tmp_path: Path) -> None:
    app_dir = create_app("my-app", tmp_path)
    assert app_dir == tmp_path / "my-app"
    spec = read_app(app_dir)
    assert spec.name == "my-app"
    assert spec.serverapp == "my_app.server_app:app"
    assert spec.clientapp == "my_app.client_app:app"
    assert spec.config == {"num-server-rounds": 3, "lr": 0.1, "local-epochs": 1}
    check_components(app_dir, spec)
    files = sorted(p.relative_to(app_dir).as_posix() for p in app_dir.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "my_app/__init__.py",
        "my_app/client_app.py",
        "my_app/server_app.py",
        "my_app/task.py",
        "pyproject.toml",
    ]
    for path in app_dir.rglob("*"):
        assert "{{" not in path.name
        if path.is_file():
            assert "{{" not in path.read_text(), f"{path} has an unrendered placeholder"
    assert "# my-app" in (app_dir / "README.md").read_text()


def test_train_handler_replies_with_arrays_of_the_same_shapes(tmp_path: Path) -> None:
    app_dir = create_app("my-app", tmp_path)
    spec = read_app(app_dir)
    check_components(app_dir, spec)
    client_app = load_component(app_dir.resolve(), spec.clientapp, ClientApp)
    task = importlib.import_module("my_app.task")
    initial = ArrayRecord(task.initial_params())
    context = node_context(7, 0, spec.config)
    # The train message as FedAvg builds it for the ServerApp to send.
    config = ConfigRecord({"server-round": 1})
    msg = Message(RecordDict({"arrays": initial, "config": config}), 7, MessageType.TRAIN)
    msg.metadata.message_id = 1

    reply = client_app(msg, context)

    assert not reply.has_error()
    assert reply.metadata.reply_to_message_id == "1"
    arrays = reply.content.array_records["arrays"]
    assert list(arrays.keys()) == list(initial.keys())
    assert [a.shape for a in arrays.values()] == [a.shape for a in initial.values()]
    metrics = reply.content.metric_records["metrics"]
    assert isinstance(metrics["num-examples"], int) and metrics["num-examples"] > 0
    assert metrics["train-loss"] >= 0
    assert arrays != initial  # it trained

    eval_msg = Message(RecordDict({"arrays": arrays, "config": config}), 7, MessageType.EVALUATE)
    eval_msg.metadata.message_id = 2
    eval_reply = client_app(eval_msg, context)
    eval_metrics = eval_reply.content.metric_records["metrics"]
    assert eval_metrics["num-examples"] > 0 and eval_metrics["eval-loss"] >= 0


@pytest.mark.parametrize(
    ("name", "package"),
    [("my-app", "my_app"), ("MyApp", "myapp"), ("app_2", "app_2"), ("a", "a")],
)
def test_package_name(name: str, package: str) -> None:
    assert package_name(name) == package
    assert package.isidentifier()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1app",
        "-app",
        "_app",
        "my app",
        "my.app",
        "app/sub",
        "../escape",
        "ümlaut",
        "app\n",
        "class",
        "os",
        "json",
        "flpg",
        "numpy",
    ],
)
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(AppError) as excinfo:
        create_app(name, tmp_path)
    assert "\n" not in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_is_refused(tmp_path: Path) -> None:
    app_dir = create_app("my-app", tmp_path)
    marker = app_dir / "pyproject.toml"
    marker.write_text("# mine\n")
    with pytest.raises(AppError, match="already exists"):
        create_app("my-app", tmp_path)
    assert marker.read_text() == "# mine\n"  # left untouched

    (tmp_path / "taken").write_text("a file")
    with pytest.raises(AppError, match="already exists"):
        create_app("taken", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AppError, match="already exists"):
        create_app("empty", tmp_path)


def test_target_dir_is_created_and_must_be_a_directory(tmp_path: Path) -> None:
    app_dir = create_app("nested", tmp_path / "a" / "b")
    assert (app_dir / "pyproject.toml").is_file()
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(AppError, match="cannot create"):
        create_app("my-app", tmp_path / "file")
