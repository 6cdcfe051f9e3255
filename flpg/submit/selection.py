"""Per-run node selection: `--nodes 1,3` (ids or names) and `--node-selector "k=v ..."`.

A selector matches a node when every key equals the node's label of that name,
or else its node_config entry. Both options together select the intersection;
neither selects every registered node. A token of `--nodes` made of digits is an
id (node names may not be all digits, so it is never ambiguous).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flpg.errors import ConfigError, NodeNotFound
from flpg.store.nodes import Node
from flpg.submit.config import parse_kv
from flpg.submit.limits import INT64_MAX, check_text


def _same(a: Any, b: Any) -> bool:
    return bool(a == b or str(a) == str(b))


def _matches(node: Node, selector: dict[str, Any]) -> bool:
    for key, wanted in selector.items():
        if key in node.labels:
            if not _same(node.labels[key], wanted):
                return False
        elif key not in node.node_config or not _same(node.node_config[key], wanted):
            return False
    return True


def _listed(nodes: Sequence[Node]) -> str:
    shown = ", ".join(f"{n.id}:{n.name}" for n in nodes[:10])
    return shown + (f" and {len(nodes) - 10} more" if len(nodes) > 10 else "")


def parse_node_list(text: str) -> list[str]:
    """The tokens of `--nodes`; ConfigError (or BadValue) if the list is malformed."""
    check_text(text, "--nodes")
    tokens = [t.strip() for t in text.split(",")]
    if not all(tokens):
        raise ConfigError(f"--nodes {text!r}: use comma-separated ids or names, e.g. 1,3")
    for token in tokens:
        if token.isdigit() and int(token) > INT64_MAX:
            raise ConfigError(f"--nodes: {token} is not a node id (ids are at most {INT64_MAX})")
    return tokens


def _pick(nodes: Sequence[Node], text: str) -> list[Node]:
    by_id = {str(n.id): n for n in nodes}
    by_name = {n.name: n for n in nodes}
    picked: dict[int, Node] = {}
    for token in parse_node_list(text):
        node = by_id.get(token.lstrip("0") or "0") if token.isdigit() else by_name.get(token)
        if node is None:
            kind = "id" if token.isdigit() else "name"
            raise NodeNotFound(
                f"--nodes: no node with {kind} {token!r} is registered (known: {_listed(nodes)})"
            )
        if node.id in picked:
            raise ConfigError(f"--nodes: node {node.id}:{node.name} is listed twice")
        picked[node.id] = node
    return list(picked.values())


def select_nodes(
    nodes: Sequence[Node], ids_or_names: str | None, selector: str | None
) -> list[int]:
    """The ids of the selected nodes, ascending.

    Raises ConfigError (or BadValue) for a malformed option, NodeNotFound for an
    unknown node or a selection that matches no node.
    """
    wanted = None
    if selector is not None:
        wanted = parse_kv(selector, "--node-selector")
        if not wanted:
            raise ConfigError("--node-selector is empty; write key=value, e.g. region=eu")
    if ids_or_names is not None:
        parse_node_list(ids_or_names)  # a malformed list is bad input even with no nodes
    if not nodes:
        raise NodeNotFound("no nodes are registered; start one with `flpg node --name NAME`")
    chosen = list(nodes) if ids_or_names is None else _pick(nodes, ids_or_names)
    if wanted is not None:
        matching = [n for n in nodes if _matches(n, wanted)]
        if not matching:
            raise NodeNotFound(f"--node-selector {selector!r} matches no registered node")
        chosen = [n for n in chosen if _matches(n, wanted)]
        if not chosen:
            raise NodeNotFound(
                f"--node-selector {selector!r} matches node(s) {_listed(matching)}, "
                f"but none of --nodes {ids_or_names}; the selection would be empty"
            )
    return sorted(n.id for n in chosen)
