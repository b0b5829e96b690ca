"""A first visitor in headless Chromium on a server that started without CIFAR-10: what the Train tab says while the
data set is fetched (from a real HTTP server on this machine), when the fetch fails, and when it is turned off.

Each test saves a screenshot of the Train tab in its state (train-<state>.png in its tmp_path)."""

import contextlib
import re

import pytest
from helpers import CHROMIUM, AppProcess, ArchiveServer, launch_chromium, serving, source_of

from resnet import fetch
from resnet.studio import jobs

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


@contextlib.contextmanager
def fresh_server(monkeypatch, tmp_path, tiny_weights, source, **options):
    """The studio, served as app.py serves it, over an empty data folder; yields (page, studio)."""
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "data"))  # where the trainer child reads what the fetch brings
    import app

    studio = app.Studio(jobs.RunQueue(tmp_path / "runs", data=fetch.DataFetch(tmp_path / "data", source, **options)))
    try:
        with serving(studio) as url, sync_api.sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            yield page, studio
            browser.close()
    finally:
        studio.queue.close()


def test_two_app_servers_started_at_once_share_one_fetch(tmp_path, tiny_weights, archive):
    server = ArchiveServer(archive, ["hold"])
    try:
        with contextlib.ExitStack() as stack:
            # Both start before either is waited for, so they race for the one download.
            apps = [stack.enter_context(AppProcess(tmp_path, wait=False, STUDIO_WEIGHTS=tiny_weights,
                                                   CIFAR10_DIR=tmp_path / "data", RUNS_DIR=tmp_path / name / "runs",
                                                   STUDIO_DATA_SOURCE=f"{server.url}#md5={archive.md5}"))
                    for name in ("first", "second")]
            for process in apps:
                process.wait_ready()
            with sync_api.sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                pages = [browser.new_page() for _ in apps]
                for page, process in zip(pages, apps, strict=True):
                    page.set_default_timeout(60_000)
                    page.goto(process.url)
                    page.get_by_role("tab", name="Train").click()
                # Each page follows the one download: one server from its own transfer, the other from the part file.
                for page in pages:
                    expect(page.locator("#data-note")).to_contain_text(re.compile(r"Fetching the CIFAR-10 training images "
                                                                                  r"\(\d+ MB of \d+ MB, [1-9]\d*%\)"))
                server.release()
                for page in pages:
                    expect(page.locator("#data-note")).to_contain_text("The CIFAR-10 training images are here",
                                                                       timeout=120_000)
                browser.close()
    finally:
        server.close()
    assert server.requests == [None]  # one download, whatever the number of servers


def no_error_badge(page) -> None:
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)


def test_the_train_tab_shows_the_fetch_then_a_run_started_meanwhile_trains(monkeypatch, tmp_path, tiny_weights, archive):
    server = ArchiveServer(archive, ["hold"])
    try:
        with fresh_server(monkeypatch, tmp_path, tiny_weights, source_of(server, archive)) as (page, studio):
            note = page.locator("#data-note")
            expect(note).to_contain_text("Fetching the CIFAR-10 training images")
            expect(note).to_contain_text(re.compile(r"MB of \d+ MB, \d+%"))
            page.screenshot(path=tmp_path / "train-fetching.png")
            page.get_by_label(re.compile(r"^Epochs")).fill("1")
            page.get_by_role("button", name="Advanced").click()
            page.get_by_label(re.compile(r"^Test images scored per epoch")).fill("50")
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_label("Run", exact=True)).to_have_value(re.compile(r"^run-\d{8}-\d{6}-[0-9a-f]{8}$"))
            expect(page.get_by_text(re.compile(r"waiting for the data set \(\d+%\)"))).to_be_attached()
            server.release()
            expect(note).to_contain_text("The CIFAR-10 training images are here", timeout=240_000)  # checked, unpacked
            expect(page.get_by_text(re.compile(r"running ·|finished: test accuracy"))).to_be_attached(timeout=240_000)
            page.get_by_role("button", name="Advanced").click()  # closed again, so the run's line fits the shot
            page.get_by_role("tab", name="Train").scroll_into_view_if_needed()
            page.screenshot(path=tmp_path / "train-ready.png")  # the run that waited, now training under the note
            no_error_badge(page)
            assert str(tmp_path) not in note.inner_text()
            assert "--" not in note.inner_text()
    finally:
        server.close()
    assert server.requests == [None]


def test_a_failed_fetch_is_a_sentence_with_a_button_that_tries_again(monkeypatch, tmp_path, tiny_weights, archive):
    server = ArchiveServer(archive, ["missing"])
    try:
        with fresh_server(monkeypatch, tmp_path, tiny_weights, source_of(server, archive), backoff_s=600) as (page, _):
            note = page.locator("#data-note")
            expect(note).to_contain_text("could not be fetched: the image server refused the request (HTTP 404)")
            retry = page.get_by_role("button", name="Try again")
            expect(retry).to_be_visible()
            no_error_badge(page)
            page.screenshot(path=tmp_path / "train-failed.png")
            retry.click()  # the server answers this time; without the button the next try was ten minutes away
            expect(note).to_contain_text("The CIFAR-10 training images are here")
            expect(retry).to_be_hidden()
    finally:
        server.close()


def test_a_server_set_not_to_fetch_says_so_and_refuses_runs_in_words(monkeypatch, tmp_path, tiny_weights):
    with fresh_server(monkeypatch, tmp_path, tiny_weights, None) as (page, studio):
        expect(page.locator("#data-note")).to_contain_text("Training is off on this server")
        page.screenshot(path=tmp_path / "train-off.png")
        page.get_by_role("button", name="Start training").click()
        expect(page.get_by_text(re.compile("Training is off on this server")).nth(1)).to_be_visible()  # the toast
        assert studio.list_runs().empty
