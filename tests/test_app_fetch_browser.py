"""A first visitor in headless Chromium on a server that started without CIFAR-10: what the Train tab says while the
data set is fetched (from a real HTTP server on this machine), when the fetch fails, and when it is turned off.

Each test saves a screenshot of the Train tab in its state (train-<state>.png in its tmp_path)."""

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from resnet import fetch, jobs
from test_app_browser import ARGS, CHROMIUM, pytestmark, sync_api  # noqa: F401  (the same browser, skips and marks)
from test_fetch import Archive, ArchiveServer, source_of

expect = sync_api.expect


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    return Archive(tmp_path_factory.mktemp("source"))


@contextlib.contextmanager
def fresh_server(monkeypatch, tmp_path, tiny_weights, source, **options):
    """The studio, as `python app.py` starts it, over an empty data folder; yields (page, studio)."""
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "data"))  # where the trainer child reads what the fetch brings
    import app

    studio = app.Studio(jobs.RunQueue(tmp_path / "runs", data=fetch.DataFetch(tmp_path / "data", source, **options)))
    demo = app.build_demo(studio)
    _, url, _ = demo.launch(prevent_thread_lock=True, ssr_mode=False, quiet=True, **app.launch_options())
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            yield page, studio
            browser.close()
    finally:
        demo.close()
        studio.queue.close()


REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_process(tmp_path, name, tiny_weights, data_source) -> tuple:
    """(process, url): `python app.py` as a host starts it, over the shared data folder and runs of its own."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "STUDIO_WEIGHTS": str(tiny_weights), "CIFAR10_DIR": str(tmp_path / "data"),
           "RUNS_DIR": str(tmp_path / name / "runs"), "STUDIO_DATA_SOURCE": data_source, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / f"{name}.log", "wb")
    with log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}/"


def wait_until_served(process, url, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} not served within {timeout} s: {log.read_text()[-2000:]}")


def test_two_app_servers_started_at_once_share_one_fetch(tmp_path, tiny_weights, archive):
    server = ArchiveServer(archive, ["hold"])
    apps = [app_process(tmp_path, name, tiny_weights, f"{server.url}#md5={archive.md5}") for name in ("first", "second")]
    try:
        for (process, url), name in zip(apps, ("first", "second")):
            wait_until_served(process, url, tmp_path / f"{name}.log")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            pages = [browser.new_page() for _ in apps]
            for page, (_, url) in zip(pages, apps):
                page.set_default_timeout(60_000)
                page.goto(url)
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
        for process, _ in apps:
            process.terminate()
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
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
            assert str(tmp_path) not in note.inner_text() and "--" not in note.inner_text()
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
