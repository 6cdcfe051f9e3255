"""Every ```sql block of docs/auditing.md runs against the database of real runs.

The database is the shared `finished_run` one: run 1 of the deterministic app and a
run of the faulty app whose partition-1 ClientApp raised, done by real processes.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from tests.e2e.harness import FinishedRun

pytestmark = pytest.mark.e2e

DOC = Path(__file__).resolve().parents[2] / "docs" / "auditing.md"
VIEWS = ("run_history", "round_history", "message_latency", "node_participation")


def sql_blocks() -> list[tuple[str, str, bool]]:
    """(section heading, query, may be empty) for every ```sql block, in order. A
    query may return no rows when its section says it is "empty when" something."""
    blocks = []
    for section in re.split(r"^(?=#{1,3} )", DOC.read_text(), flags=re.MULTILINE):
        heading = section.splitlines()[0].lstrip("# ").strip() if section.strip() else ""
        may_be_empty = re.search(r"empty\s+when", section) is not None
        for query in re.findall(r"^```sql\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL):
            blocks.append((heading, query, may_be_empty))
    return blocks


BLOCKS = sql_blocks()


def test_the_guide_has_six_to_ten_queries_and_names_every_view() -> None:
    assert 6 <= len(BLOCKS) <= 10, [h for h, _, _ in BLOCKS]
    text = DOC.read_text()
    for view in VIEWS:
        assert f"`{view}`" in text, view
    used = " ".join(q for _, q, _ in BLOCKS)
    for view in VIEWS:
        assert view in used, f"no example query uses {view}"


@pytest.mark.parametrize(
    ("heading", "query", "may_be_empty"), BLOCKS, ids=[h for h, _, _ in BLOCKS]
)
def test_example_query_runs(
    finished_run: FinishedRun, heading: str, query: str, may_be_empty: bool
) -> None:
    assert finished_run.run_id == 1, "the guide's examples use run id 1"
    with psycopg.connect(finished_run.url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")  # the guide only reads
        cur = conn.execute(query)
        assert cur.description is not None, f"{heading}: not a query"
        rows = cur.fetchall()
    if not may_be_empty:
        assert rows, f"{heading}: no rows"


def test_error_query_finds_the_clientapp_exception(finished_run: FinishedRun) -> None:
    [query] = [q for h, q, _ in BLOCKS if h == "Replies with errors"]
    with psycopg.connect(finished_run.url, autocommit=True) as conn:
        cur = conn.execute(query)
        columns = [c.name for c in cur.description or []]
        rows = [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
    assert len(rows) == 1
    assert rows[0]["run_id"] == finished_run.faulty_run_id
    assert rows[0]["node"] == "node1"
    assert rows[0]["error_code"] == 1
    assert rows[0]["error_reason"] == "ValueError: boom"


def test_round_query_shows_the_runs_rounds(finished_run: FinishedRun) -> None:
    [query] = [q for h, q, _ in BLOCKS if h == "Per-round metrics of a run"]
    with psycopg.connect(finished_run.url, autocommit=True) as conn:
        rows = conn.execute(query).fetchall()
    assert [r[:4] for r in rows] == [(n, "train", 2, 0) for n in (1, 2, 3)]
