"""The audit queries of docs/security.md ("Verifying with SQL") run as an enrolled
auditor against the database of real runs (the shared `finished_run`), and say what
the section promises: who submitted the run, which launch sent each instruction and
which ClientApp run role, bound to the answering node, wrote each reply."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flpg.store import principals as store_principals
from flpg.store.db import connect
from flpg.store.runroles import RunLogin
from tests.e2e.harness import FinishedRun

pytestmark = pytest.mark.e2e

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def _queries() -> list[str]:
    text = DOC.read_text()
    section = text.split("## Verifying with SQL", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sql\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    return [q.strip() for block in blocks for q in block.split(";") if q.strip()]


@pytest.fixture
def auditor(finished_run: FinishedRun) -> Iterator[str]:
    name = f"audit-{uuid.uuid4().hex[:8]}"
    with connect(finished_run.url) as admin:
        enrolled = store_principals.enrol(admin, "auditor", name)
    try:
        yield RunLogin(enrolled.role, enrolled.password).url(finished_run.url)
    finally:
        with connect(finished_run.url) as admin:
            store_principals.revoke(admin, "auditor", name)


def _rows(url: str, query: str, run_id: int) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query.replace("= 7", f"= {run_id}"))
        assert cur.description is not None
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_the_section_has_its_two_queries() -> None:
    assert len(_queries()) == 2


def test_the_auditor_sees_who_submitted_the_run(finished_run: FinishedRun, auditor: str) -> None:
    (row,) = _rows(auditor, _queries()[0], finished_run.run_id)
    assert row["status"] == "finished" and row["submitted_by"] == "flpg"  # admin's `flpg run`
    assert row["submitted_at"] <= row["started_at"] <= row["finished_at"]


def test_the_auditor_sees_who_sent_and_who_answered_each_instruction(
    finished_run: FinishedRun, auditor: str
) -> None:
    rows = _rows(auditor, _queries()[1], finished_run.run_id)
    assert len(rows) == 6  # 3 rounds x 2 nodes
    with psycopg.connect(finished_run.url, autocommit=True) as admin:
        roles = admin.execute("SELECT role_name, kind, node_ids FROM run_roles").fetchall()
    kinds: dict[str, str] = {name: kind for name, kind, _ in roles}
    nodes_of: dict[str, list[int]] = {name: nodes for name, _, nodes in roles}
    assert {kinds[r["sent_by"]] for r in rows} == {"serverapp"}
    assert {r["launched_by"] for r in rows} == {"flpg"}  # the tests' exec runs as admin
    for r in rows:
        assert kinds[r["answered_by"]] == "clientapp" and r["error_code"] is None, r
        assert r["node"] in nodes_of[r["answered_by"]], r
        assert r["sent_at"] < r["answered_at"]
    assert len({r["answered_by"] for r in rows}) == 2  # one role per node worker
