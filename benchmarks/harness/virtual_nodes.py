"""One flpg node worker process serving many (virtual) node ids.

flpg's `NodeWorker` serves any number of node ids (DESIGN.md: "one worker process
may serve many (virtual) node ids for simulation"). flpg now has
`flpg node --name NAME --virtual N`, which the harness uses when the installed flpg
offers it; with an flpg whose `flpg node` registers one name only, it starts this
script instead::

    python benchmarks/harness/virtual_nodes.py --db URL --count 1000 --prefix v

It registers nodes `v0`..`v999` with `partition-id` 0..999 and serves them until
SIGTERM or SIGINT, exactly like `flpg node` does for its one name.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from flpg.lifecycle import setup_logging, stop_on_signals
from flpg.node.worker import NodeSpec, NodeWorker


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="Database URL.")
    parser.add_argument("--count", type=int, required=True, help="Node ids to serve.")
    parser.add_argument("--prefix", default="v", help="Node name prefix.")
    parser.add_argument("--concurrency", type=int, default=8, help="Messages handled at once.")
    args = parser.parse_args(argv)
    specs = [
        NodeSpec(
            name=f"{args.prefix}{i}",
            node_config={"partition-id": i, "num-partitions": args.count},
        )
        for i in range(args.count)
    ]
    setup_logging(False)
    NodeWorker(args.db, specs, concurrency=args.concurrency).run(stop_on_signals())


if __name__ == "__main__":
    main()
