"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright):
a federation runs a job while the pages are open, and they follow it without a reload.

The run (tests/ui/apps/stepped) trains round K only once the test creates the file
`round-K`, so the test knows exactly how many rounds exist at each step: the chart must
show one point per round, the log each round's line, the runs list the run's end.
Screenshots go to $FLPG_TEST_ARTIFACTS (or the test's tmp_path); the path is printed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.e2e.harness import Federation
from tests.ui.conftest import start_ui

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
APP = Path(__file__).resolve().parent / "apps" / "stepped"
ROUNDS = 3
WAIT_MS = 60_000
"""How long a condition may take to appear (generous: a loaded CI machine)."""


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def test_a_run_appears_and_its_chart_and_log_follow_live(
    federation: Federation, browser: Browser, artifacts: Path, tmp_path: Path
) -> None:
    federation.federation(2)
    base = start_ui(federation)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    runs_page = context.new_page()
    runs_page.goto(base)
    runs_page.wait_for_selector("#live.on", timeout=WAIT_MS)
    runs_page.evaluate("window.flpgMarker = 'no reload'")

    gate = tmp_path / "gate"
    gate.mkdir()
    run_id = federation.submit(APP, "--run-config", f'gate="{gate}"')
    row = f'#runs tr[data-run="{run_id}"]'
    runs_page.wait_for_selector(row, timeout=WAIT_MS)  # the run appears: no reload
    runs_page.wait_for_selector(f'{row}[data-status="running"]', timeout=WAIT_MS)

    page = context.new_page()
    page.goto(f"{base}runs/{run_id}")
    page.wait_for_selector("#live.on", timeout=WAIT_MS)
    page.evaluate("window.flpgMarker = 'no reload'")
    # The ServerApp logged its start; no training round can have ended (gate closed).
    page.wait_for_function(
        "document.querySelector('#log').textContent.includes('ServerApp attempt 1 started')",
        timeout=WAIT_MS,
    )
    assert page.locator('[data-phase="train"]').count() == 0

    for k in range(1, ROUNDS + 1):
        (gate / f"round-{k}").touch()
        page.wait_for_selector(f'[data-phase="train"][data-points="{k}"]', timeout=WAIT_MS)
        page.wait_for_function(
            f"document.querySelector('#log').textContent.includes('round {k}/{ROUNDS} train')",
            timeout=WAIT_MS,
        )
        if k == 2:
            page.screenshot(path=str(artifacts / "run-mid.png"), full_page=True)
            nodes_page = context.new_page()
            nodes_page.goto(f"{base}nodes")
            nodes_page.wait_for_selector(
                f'#nodes tr[data-status="online"] a[href="/runs/{run_id}"]', timeout=WAIT_MS
            )
            assert nodes_page.locator('#nodes tr[data-status="online"]').count() == 2
            nodes_page.screenshot(path=str(artifacts / "nodes.png"), full_page=True)
            nodes_page.close()

    page.wait_for_selector('body[data-status="finished"]', timeout=WAIT_MS)
    page.wait_for_function(
        "document.querySelector('#log').textContent.includes('DONE')", timeout=WAIT_MS
    )
    # One point per round in every client-side chart; the server evaluates round 0 too.
    for phase, points in (("train", ROUNDS), ("evaluate", ROUNDS), ("server_evaluate", 4)):
        chart = page.locator(f'[data-phase="{phase}"]')
        assert chart.get_attribute("data-points") == str(points), phase
    assert page.locator('[data-phase="train"]').get_attribute("data-metrics") == "accuracy,loss"
    assert page.locator('[data-phase="train"] canvas').count() == 1
    selected = page.locator("#selection tbody tr td:first-child").all_inner_texts()
    assert sorted(text.split(": ")[1] for text in selected) == ["node0", "node1"]
    assert "round 3" in page.locator("#summary").inner_text()  # the checkpoint
    page.wait_for_timeout(300)  # let uPlot paint before the screenshot
    page.screenshot(path=str(artifacts / "run.png"), full_page=True)

    runs_page.wait_for_selector(f'{row}[data-status="finished"]', timeout=WAIT_MS)
    assert f"{ROUNDS}/{ROUNDS}" in runs_page.locator(row).inner_text()
    runs_page.screenshot(path=str(artifacts / "runs.png"), full_page=True)
    for opened in (page, runs_page):
        assert opened.evaluate("window.flpgMarker") == "no reload"

    # The filter box narrows the list in place.
    runs_page.fill('#filters input[name="q"]', "no-such-app")
    runs_page.wait_for_selector("#empty:not([hidden])", timeout=WAIT_MS)
    assert runs_page.locator("#runs tbody tr").count() == 0
    assert "q=no-such-app" in runs_page.url
    context.close()
