"""The data set's fetch, against a real HTTP server on this machine serving an archive the test builds.

Nothing of the network layer is replaced: urllib talks to ``ArchiveServer`` (http.server in a thread), which can
corrupt, truncate, drop or hold its answer, honour or ignore Range requests, and records what it was asked.
"""

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY, ArchiveServer, source_of, status_of, wait_for

from resnet import fetch, runs
from resnet.data import BATCHES_FOLDER, DataMissingError, load_split
from resnet.studio import jobs, limits


@pytest.fixture
def serve(archive):
    servers = []

    def start(plan=(), ranges=True) -> ArchiveServer:
        servers.append(ArchiveServer(archive, plan, ranges))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def same_data(data_dir, archive) -> bool:
    return all(torch.equal(a, b) for train in (True, False)
               for a, b in zip(load_split(data_dir, train=train), load_split(archive.source_dir, train=train), strict=True))


def leftovers(data_dir) -> list:
    """What a fetch may leave beside the data set: nothing but its lock file."""
    return sorted(p.name for p in Path(data_dir).iterdir() if p.name not in (BATCHES_FOLDER, fetch.LOCK))


def for_visitors(text: str, *paths) -> bool:
    return not any(str(p) in text for p in paths) and "--" not in text and "$" not in text


# ---- the setting ------------------------------------------------------------------------------------
def test_the_setting_names_the_official_archive_a_mirror_another_archive_or_off():
    assert fetch.source("official") == fetch.OFFICIAL
    assert fetch.source("off") is None
    from torchvision.datasets import CIFAR10

    assert (fetch.OFFICIAL.url, fetch.OFFICIAL.md5) == (CIFAR10.url, CIFAR10.tgz_md5)
    assert fetch.OFFICIAL.files["data_batch_1"] == "c99cafc152244af753f735de768cd75f"
    assert len(fetch.OFFICIAL.files) == 7
    mirror = fetch.source("https://mirror.example/cifar-10-python.tar.gz")
    assert (mirror.md5, mirror.files) == (fetch.OFFICIAL.md5, fetch.OFFICIAL.files)  # a copy: held to the published sums
    other = fetch.source("http://127.0.0.1:8000/x.tar.gz#md5=" + "AB" * 16)
    assert (other.url, other.md5, other.files) == ("http://127.0.0.1:8000/x.tar.gz", "ab" * 16, None)


@pytest.mark.parametrize("value", ["ftp://host/x.tar.gz", "https://host/x.tar.gz#md5=abc", "of", "/srv/cifar.tar.gz"])
def test_a_malformed_source_stops_the_server_naming_the_variable(value):
    with pytest.raises(limits.LimitError, match=f"^STUDIO_DATA_SOURCE={re.escape(repr(value))}"):
        limits.ServerLimits.from_env({"STUDIO_DATA_SOURCE": value})


# ---- fetching -----------------------------------------------------------------------------------------
def test_progress_reaches_the_status_and_the_data_set_appears_whole(archive, serve, tmp_path):
    server = serve(["hold"])
    data = fetch.DataFetch(tmp_path / "data", source_of(server, archive)).start()
    try:
        status = wait_for(lambda: (s := data.status()).done and s, 60, "the first half to arrive")
        assert status.state == "fetching"
        assert status.total == len(archive.body)
        assert 0 < status.percent < 100
        text = fetch.sentence(status)
        assert f"{status.percent}%" in text
        assert "MB" in text
        assert for_visitors(text, tmp_path)
        assert not (tmp_path / "data" / BATCHES_FOLDER).exists()  # nothing a trainer could read half of
        server.release()
        wait_for(data.ready, 60, "the data set")
    finally:
        data.close()
    assert data.status().state == "ready"
    assert "are here" in fetch.sentence(data.status())
    assert same_data(tmp_path / "data", archive)
    assert leftovers(tmp_path / "data") == []
    assert server.requests == [None]


def test_a_corrupted_or_truncated_archive_is_refused_and_fetched_again(archive, serve, tmp_path, caplog):
    server = serve(["corrupt", "truncated"])
    with caplog.at_level("WARNING", logger="resnet.fetch"):
        data = fetch.DataFetch(tmp_path / "data", source_of(server, archive), backoff_s=0.05).start()
        try:
            wait_for(data.ready, 60, "the data set")
        finally:
            data.close()
    refusals = [r.getMessage() for r in caplog.records if fetch.CHECKSUM in r.getMessage()]
    assert len(refusals) == 2
    assert "attempt 1" in refusals[0]
    assert "attempt 2" in refusals[1]
    assert server.requests == [None, None, None]  # a refused archive is never resumed: each try starts from byte 0
    assert same_data(tmp_path / "data", archive)
    assert leftovers(tmp_path / "data") == []


def test_a_failure_reads_as_failed_with_its_reason_until_the_retry(archive, serve, tmp_path):
    server = serve(["missing"])
    data = fetch.DataFetch(tmp_path / "data", source_of(server, archive), backoff_s=600).start()
    try:
        status = wait_for(lambda: (s := data.status()).state == "failed" and s, 60, "the failure")
        text = fetch.sentence(status)
        assert "could not be fetched" in text
        assert "HTTP 404" in text
        assert "Try again" in text
        assert for_visitors(text, tmp_path, server.url)
        data.retry()  # the visitor's button: no ten-minute wait
        wait_for(data.ready, 60, "the data set")
    finally:
        data.close()
    assert same_data(tmp_path / "data", archive)


def test_a_dropped_connection_resumes_where_it_stopped(archive, serve, tmp_path):
    server = serve(["drop"])
    data = fetch.DataFetch(tmp_path / "data", source_of(server, archive), backoff_s=0.05).start()
    try:
        wait_for(data.ready, 60, "the data set")
    finally:
        data.close()
    first, second = server.requests
    assert first is None
    assert second == f"bytes={len(archive.body) // 2}-"
    assert same_data(tmp_path / "data", archive)
    assert leftovers(tmp_path / "data") == []


def fetch_process(data_dir, url, md5_sum) -> subprocess.Popen:
    """A separate process fetching into ``data_dir``, printing its status whenever it changes, until the data is there."""
    script = ("import sys, time\nfrom resnet.fetch import DataFetch, source\n"
              "data = DataFetch(sys.argv[1], source(sys.argv[2]), backoff_s=0.05).start()\nlast = None\n"
              "while True:\n    s = data.status()\n    line = f'{s.state} {s.done}'\n"
              "    if line != last:\n        print(line, flush=True)\n        last = line\n"
              "    if s.state == 'ready':\n        break\n    time.sleep(0.05)\n")
    return subprocess.Popen([sys.executable, "-c", script, str(data_dir), f"{url}#md5={md5_sum}"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)


@pytest.mark.e2e
@pytest.mark.slow
def test_two_servers_at_once_share_one_fetch(archive, serve, tmp_path):
    server = serve(["hold"])
    processes = [fetch_process(tmp_path / "data", server.url, archive.md5) for _ in range(2)]
    lines = [[], []]
    readers = [threading.Thread(target=lambda p=p, out=out: out.extend(p.stdout), daemon=True)
               for p, out in zip(processes, lines, strict=True)]
    for reader in readers:
        reader.start()
    try:
        # Both report progress of the one download under way: one from its own transfer, the other from the part file.
        wait_for(lambda: all(any(re.fullmatch(r"fetching [1-9]\d*\n", line) for line in out) for out in lines), 120,
                 "both processes to see the fetch under way")
        server.release()
        for process in processes:
            assert process.wait(120) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for reader in readers:
        reader.join(10)
    assert all(out[-1] == "ready 0\n" for out in lines), lines
    assert server.requests == [None]  # one download, whatever the number of servers
    assert same_data(tmp_path / "data", archive)
    assert leftovers(tmp_path / "data") == []


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_a_server_killed_during_the_fetch_is_continued_by_the_next_start(archive, serve, tmp_path, ranges):
    server = serve(["hold"], ranges=ranges)
    part = tmp_path / "data" / fetch.PART
    process = fetch_process(tmp_path / "data", server.url, archive.md5)
    try:
        wait_for(lambda: part.is_file() and part.stat().st_size >= len(archive.body) // 2, 120, "half the archive")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up
        process.wait()
    kept = part.stat().st_size
    data = fetch.DataFetch(tmp_path / "data", source_of(server, archive), backoff_s=0.05).start()  # the restarted server
    try:
        wait_for(data.ready, 60, "the data set")
    finally:
        data.close()
    # A server that honours Range sends the rest; one that ignores it sends everything, which replaces the part.
    assert server.requests == [None, f"bytes={kept}-"]
    assert same_data(tmp_path / "data", archive)
    assert leftovers(tmp_path / "data") == []


def test_an_incomplete_copy_and_a_crashed_unpacking_are_replaced_whole(archive, serve, tmp_path):
    folder = tmp_path / "data" / BATCHES_FOLDER
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"someone copied one file")
    (tmp_path / "data" / f"{fetch.STAGING}crashed").mkdir()
    server = serve()
    fetch.fetch_now(tmp_path / "data", source_of(server, archive))  # what `--download` does
    assert same_data(tmp_path / "data", archive)
    assert leftovers(tmp_path / "data") == []


def test_each_batch_is_held_to_its_published_checksum(archive, serve, tmp_path):
    server = serve()
    wrong = {**archive.files, "data_batch_3": "0" * 32}
    with pytest.raises(DataMissingError, match="data_batch_3: MD5"):
        fetch.fetch_now(tmp_path / "data", fetch.Source(server.url, archive.md5, wrong))
    assert leftovers(tmp_path / "data") == []
    assert not (tmp_path / "data" / BATCHES_FOLDER).exists()
    fetch.fetch_now(tmp_path / "data", fetch.Source(server.url, archive.md5, archive.files))
    assert same_data(tmp_path / "data", archive)


# ---- the server's settings and its queue --------------------------------------------------------------
def test_the_fetch_turned_off_fetches_nothing_and_refuses_runs_in_words(monkeypatch, tmp_path):
    monkeypatch.setattr(limits, "_current", limits.ServerLimits.from_env({"STUDIO_DATA_SOURCE": "off"}))
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "data"))
    queue = jobs.RunQueue(tmp_path / "runs")
    try:
        assert queue.data.status().state == "off"
        assert not (tmp_path / "data").exists()
        assert for_visitors(fetch.sentence(queue.data.status()), tmp_path)
        with pytest.raises(DataMissingError, match="^Training is off on this server"):
            queue.start("original", **TINY)
    finally:
        queue.close()
    assert list((tmp_path / "runs").iterdir()) == []


def test_the_data_set_follows_the_runs_to_persistent_storage(monkeypatch, tmp_path):
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.delenv("RUNS_DIR", raising=False)
    monkeypatch.setattr(runs, "PERSISTENT", tmp_path / "mounted")
    assert fetch.DataFetch().data_dir == Path("data").resolve()
    assert runs.runs_dir() == Path("runs")
    (tmp_path / "mounted").mkdir()
    assert fetch.DataFetch().data_dir == tmp_path / "mounted" / "cifar10"
    assert runs.runs_dir() == tmp_path / "mounted" / "runs"


@pytest.mark.e2e
@pytest.mark.slow
def test_a_run_started_during_the_fetch_waits_for_it_then_trains(archive, serve, tmp_path, monkeypatch):
    server = serve(["hold"])
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "data"))  # where the trainer child reads it
    queue = jobs.RunQueue(tmp_path / "runs", data=fetch.DataFetch(tmp_path / "data", source_of(server, archive)))
    try:
        wait_for(lambda: queue.data.status().done, 60, "the fetch to be under way")
        run_id = queue.start("original", **TINY)
        message = wait_for(lambda: re.fullmatch(r"waiting for the data set \((\d+)%\)",
                                                runs.read_status(queue.root / run_id)["message"]), 30, "the waiting note")
        assert 0 < int(message.group(1)) < 100
        assert status_of(queue, run_id) == "queued"
        server.release()
        wait_for(lambda: status_of(queue, run_id) == "finished", 300, "the run to train")
    finally:
        queue.close()
