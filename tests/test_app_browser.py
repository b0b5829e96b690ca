"""One real visitor in headless Chromium: predict an uploaded picture, start a run, watch its curve grow."""

import re

import pytest
from helpers import CHROMIUM, launch_chromium

from resnet.studio import showcase

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(server[0])
        yield page
        browser.close()


def test_upload_shows_the_predicted_label(page, server):
    expected = server[1].predict(str(showcase.EXAMPLES / "frog-4.png"))
    top = next(iter(expected))
    page.locator("input[type=file]").first.set_input_files(str(showcase.EXAMPLES / "frog-4.png"))
    sync_api.expect(page.locator("[data-testid=label-output-value]").first).to_contain_text(top)


def test_a_started_run_gains_points_on_the_train_tab_while_it_runs(page):
    page.get_by_role("tab", name="Train").click()
    page.get_by_label(re.compile(r"^Time budget")).click()
    page.get_by_role("option", name=re.compile(r"^none")).click()  # a run of epochs, long enough to be stopped
    page.get_by_label(re.compile(r"^Epochs")).fill("20")
    page.get_by_role("button", name="Advanced").click()
    page.get_by_label(re.compile(r"^Test images scored per epoch")).fill("50")
    page.get_by_role("button", name="Start training").click()
    sync_api.expect(page.get_by_label("Run", exact=True)).to_have_value(re.compile(r"^run-\d{8}-\d{6}-[0-9a-f]{8}$"))
    points = page.locator("#live-accuracy .scatterlayer .point")
    sync_api.expect(points.first).to_be_attached(timeout=180_000)
    first = points.count()
    page.wait_for_function(f"document.querySelectorAll('#live-accuracy .scatterlayer .point').length > {first}", timeout=180_000)
    sync_api.expect(page.get_by_text(re.compile(r"\*\*running\*\*|running ·"))).to_be_attached()  # still training
    page.get_by_role("button", name="Stop").click()
    sync_api.expect(page.get_by_text(re.compile("is stopping|taken off the queue"))).to_be_attached()


def test_the_runs_tab_still_compares_runs(page):
    page.get_by_role("tab", name="Runs").click()
    points = page.locator("#accuracy-plot .scatterlayer .point")
    sync_api.expect(points.first).to_be_attached(timeout=180_000)


def test_a_budget_run_from_the_train_tab_becomes_the_predict_tabs_model(page, server):
    page.get_by_role("tab", name="Train").click()
    budget = page.get_by_label(re.compile(r"^Time budget"))
    budget.fill("45s")  # far more than a loaded machine takes to start a trainer and measure it
    budget.press("Enter")
    run_box = page.get_by_label("Run", exact=True)
    before = run_box.input_value()
    page.get_by_role("button", name="Start training").click()
    sync_api.expect(run_box).not_to_have_value(before, timeout=60_000)
    sync_api.expect(run_box).to_have_value(re.compile(r"^run-\d{8}-\d{6}-[0-9a-f]{8}$"))
    run_id = run_box.input_value()
    # The probe's held-out points arrive while it trains, then the run ends on its own, on time.
    sync_api.expect(page.locator("#live-accuracy .legendtext", has_text="probe").first).to_be_attached(timeout=120_000)
    sync_api.expect(page.locator("#run-status")).to_contain_text("Plan: 45 s budget", timeout=120_000)
    sync_api.expect(page.locator("#run-status")).to_contain_text("finished", timeout=180_000)
    page.get_by_role("button", name="Use this model").click()
    sync_api.expect(page.get_by_role("tab", name="Predict")).to_have_attribute("aria-selected", "true")
    expected = server[1].predict(str(showcase.EXAMPLES / "frog-4.png"), f"run:{run_id}")
    page.locator("input[type=file]").first.set_input_files(str(showcase.EXAMPLES / "frog-4.png"))
    label = page.locator("[data-testid=label-output-value]").first
    sync_api.expect(label).to_contain_text(next(iter(expected)))
    assert sorted(expected.values()) != sorted(server[1].predict(str(showcase.EXAMPLES / "frog-4.png")).values())
