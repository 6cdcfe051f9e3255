"""Per-run node selection: `--nodes 1,3` (ids or names) and `--node-selector "k=v ..."`.

A selector matches a node when every key equals the node's label of that name,
or else its node_config entry. Both options together select the intersection;
neither selects every registered node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flpg.config import parse_kv
from flpg.errors import ConfigError, SelectionError
from flpg.store.nodes import Node


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


def select_nodes(
    nodes: Sequence[Node], ids_or_names: str | None, selector: str | None
) -> list[int]:
    """The ids of the selected nodes, ascending.

    Raises ConfigError for a malformed option, SelectionError for an unknown node
    or a selection that matches no node.
    """
    if not nodes:
        raise SelectionError("no nodes are registered; start one with `flpg node --name NAME`")
    chosen = list(nodes)
    if ids_or_names is not None:
        tokens = [t.strip() for t in ids_or_names.split(",")]
        if not all(tokens):
            raise ConfigError(
                f"--nodes {ids_or_names!r}: use comma-separated ids or names, e.g. 1,3"
            )
        by_id = {str(n.id): n for n in nodes}
        by_name = {n.name: n for n in nodes}
        picked: dict[int, Node] = {}
        for token in tokens:
            node = by_id.get(token) or by_name.get(token)
            if node is None:
                known = ", ".join(f"{n.id}:{n.name}" for n in nodes)
                raise SelectionError(f"--nodes: no node {token!r} is registered (known: {known})")
            picked[node.id] = node
        chosen = list(picked.values())
    if selector is not None:
        wanted = parse_kv(selector, "--node-selector")
        if not wanted:
            raise ConfigError("--node-selector is empty; write key=value, e.g. region=eu")
        chosen = [n for n in chosen if _matches(n, wanted)]
        if not chosen:
            raise SelectionError(f"--node-selector {selector!r} matches no registered node")
    return sorted(n.id for n in chosen)
