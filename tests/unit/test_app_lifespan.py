"""`@app.lifespan()` on ServerApp and ClientApp, Flower's handler names (`action=
"default"`, `mods=`), and the legacy arguments refused in one line."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from flpg.app.context import Context
from flpg.app.message import Message
from flpg.app.records import ConfigRecord, RecordDict
from flpg.clientapp import ClientApp
from flpg.serverapp import ServerApp


def context(node_id: int | None = 1) -> Context:
    return Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})


def instruction(message_type: str = "train", dst: int = 1) -> Message:
    msg = Message(RecordDict(), dst, message_type)
    msg.metadata.message_id = 9
    return msg


def echo(msg: Message, ctx: Context) -> Message:
    return Message(RecordDict({"c": ConfigRecord({"node": ctx.node_id or 0})}), reply_to=msg)


# --- ServerApp ----------------------------------------------------------------


def test_serverapp_lifespan_wraps_main_and_tears_down_after_an_error() -> None:
    events: list[str] = []
    app = ServerApp()

    @app.lifespan()
    def lifespan(ctx: Context) -> Iterator[None]:
        events.append(f"setup {ctx.run_id}")
        yield
        events.append("teardown")

    @app.main()
    def main(grid: Any, ctx: Context) -> None:
        events.append("main")
        raise ValueError("boom")

    assert lifespan.__name__ == "lifespan"  # returned unchanged
    with pytest.raises(ValueError, match="boom"):
        app(None, context(None))  # type: ignore[arg-type]
    assert events == ["setup 1", "main", "teardown"]


@pytest.mark.parametrize("yields", [0, 2])
def test_a_lifespan_must_yield_exactly_once(yields: int) -> None:
    app = ServerApp()

    @app.lifespan()
    def lifespan(ctx: Context) -> Iterator[None]:
        for _ in range(yields):
            yield

    app.main()(lambda grid, ctx: None)
    with pytest.raises(RuntimeError, match="yield"):
        app(None, context(None))  # type: ignore[arg-type]


def test_a_lifespan_that_is_not_a_generator_is_refused() -> None:
    app = ServerApp()
    app.lifespan()(lambda ctx: None)  # type: ignore[arg-type,return-value]
    app.main()(lambda grid, ctx: None)
    with pytest.raises(RuntimeError, match="not a generator"):
        app(None, context(None))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["server", "config", "strategy", "client_manager", "server_fn"])
def test_serverapp_legacy_arguments_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(TypeError, match=f"ServerApp\\({name}=...\\) is Flower's legacy API"):
        ServerApp(**{name: object()})


# --- ClientApp ----------------------------------------------------------------


def test_clientapp_lifespan_runs_once_per_context_and_tears_down_at_close() -> None:
    events: list[str] = []
    app = ClientApp()

    @app.lifespan()
    def lifespan(ctx: Context) -> Iterator[None]:
        events.append(f"setup {ctx.node_id}")
        yield
        events.append(f"teardown {ctx.node_id}")

    app.train()(echo)
    one, two = context(1), context(2)
    for _ in range(3):
        app(instruction(dst=1), one)
    app(instruction(dst=2), two)
    assert events == ["setup 1", "setup 2"]
    app.close()
    assert events == ["setup 1", "setup 2", "teardown 2", "teardown 1"]
    app.close()  # once only
    assert len(events) == 4


def test_clientapp_lifespan_setup_runs_once_under_concurrent_messages() -> None:
    setups: list[int] = []
    app = ClientApp()

    @app.lifespan()
    def lifespan(ctx: Context) -> Iterator[None]:
        setups.append(1)
        yield

    app.train()(echo)
    ctx = context(1)
    threads = [threading.Thread(target=app, args=(instruction(), ctx)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert setups == [1]


def test_clientapp_lifespan_setup_that_raises_is_tried_again() -> None:
    tries: list[int] = []
    app = ClientApp()

    @app.lifespan()
    def lifespan(ctx: Context) -> Iterator[None]:
        tries.append(1)
        if len(tries) == 1:
            raise OSError("no GPU yet")
        yield

    app.train()(echo)
    ctx = context(1)
    with pytest.raises(OSError, match="no GPU"):
        app(instruction(), ctx)
    assert app(instruction(), ctx).has_content()
    assert len(tries) == 2


def test_clientapp_default_action_and_named_actions_route_as_flower() -> None:
    app = ClientApp()
    app.train("default")(echo)
    app.evaluate()(echo)
    app.query("stats")(echo)
    assert app.message_types == ["evaluate", "query.stats", "train"]
    assert app(instruction("train.default"), context()).has_content()
    with pytest.raises(ValueError, match="identifier"):
        app.train("not an identifier")
    with pytest.raises(LookupError, match=r"query\.other"):
        app(instruction("query.other"), context())


def test_clientapp_mods_wrap_handlers_app_mods_outermost() -> None:
    calls: list[str] = []

    def tag(name: str) -> Any:
        def mod(msg: Message, ctx: Context, call_next: Any) -> Message:
            calls.append(f"{name} in")
            reply = call_next(msg, ctx)
            calls.append(f"{name} out")
            return reply  # type: ignore[no-any-return]

        return mod

    app = ClientApp(mods=[tag("app1"), tag("app2")])
    app.train(mods=[tag("fn")])(echo)
    app(instruction(), context())
    assert calls == ["app1 in", "app2 in", "fn in", "fn out", "app2 out", "app1 out"]


def test_clientapp_legacy_client_fn_is_refused_in_one_line() -> None:
    with pytest.raises(TypeError, match="legacy Client API"):
        ClientApp(client_fn=lambda ctx: None)
