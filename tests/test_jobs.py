"""The run queue: child processes of `python -m resnet train`, one at a time, read back from disk."""

import json
import os
import threading
import time

import pytest
from helpers import TINY, status_of, wait_for

from resnet import config, runs
from resnet.cli import build_parser
from resnet.config import ConfigError, make_config
from resnet.studio import jobs

OWNER = jobs.Actor(key="the-owners-key")
OPERATOR = jobs.Actor(operator=True)


@pytest.fixture
def data_env(monkeypatch, tiny_data):
    monkeypatch.setenv("CIFAR10_DIR", str(tiny_data))


@pytest.fixture
def queue(tmp_path, data_env):
    queue = jobs.RunQueue(tmp_path / "runs", max_queue=2)
    yield queue
    queue.close()


def test_cli_args_parse_back_to_the_same_config():
    overrides = {"optimizer": "rmsprop", "lr": 0.003, "blocks": (2, 2, 2, 2), "epochs": 3, "limit_train": 2000,
                 "label_smoothing": 0.1, "nesterov": False, "seed": None}
    args = build_parser().parse_args(["train", "--out", "x", *config.cli_args("fast", overrides)])
    parsed = make_config(args.preset, **{name: getattr(args, name) for name in config.CLI_SETTINGS})
    assert parsed == make_config("fast", **overrides)
    assert jobs.cli_command("fast", {"lr": 0.1}) == "python -m resnet train --out runs/my-run --preset fast --lr 0.1"


def test_server_caps_apply_to_the_training_settings(server_limits):
    server_limits(epochs=5, batch_size=128)
    jobs.check_settings("original", {"epochs": 5, "batch_size": 128})
    with pytest.raises(ConfigError, match="epochs 6 is above this server's limit of 5"):
        jobs.check_settings("original", {"epochs": 6})
    with pytest.raises(ConfigError, match="batch_size 256 is above"):
        jobs.check_settings("original", {"epochs": 1, "batch_size": 256})


def test_run_ids_are_valid_and_distinct():
    ids = {jobs.new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(runs.RUN_ID.match(run_id) for run_id in ids)


def write_run(run_dir, status="running", message="", epochs=4, rows=()):
    run_dir.mkdir(parents=True)
    (run_dir / runs.CONFIG).write_text(json.dumps({"epochs": epochs, "optimizer": "adam"}))
    for row in rows:
        runs.append_metrics(run_dir, row)
    runs.write_status(run_dir, status, message)


def test_progress_in_numbers_and_words(tmp_path):
    rows = [{"kind": "step", "epoch": 1, "step": 50, "total_steps": 312, "train_loss": 2.0, "train_acc": 0.2,
             "images_per_s": 900.0, "elapsed_s": 4.0},
            {"kind": "probe", "epoch": 1, "step": 50, "probe_acc": 0.33, "probe_images": 500, "probe_split": "test"},
            {"kind": "epoch", "epoch": 1, "step": 78, "train_loss": 1.9, "train_acc": 0.3, "test_acc": 0.41,
             "images_per_s": 1000.0, "elapsed_s": 60.0}]
    write_run(tmp_path / "run-p", rows=rows)
    progress = jobs.progress(tmp_path / "run-p")
    assert progress["seconds_left"] == pytest.approx(180)
    assert progress["test_acc"] == 0.41
    assert "epoch 1/4, step 78" in progress["text"]
    assert "1,000 images/s" in progress["text"]
    assert "about 3 min left" in progress["text"]
    assert "test accuracy 41.0% (epoch 1)" in progress["text"]
    assert "step 78/312" in progress["text"]
    assert "1 min elapsed" in progress["text"]
    assert "probe accuracy 33.0% (500 test images)" in progress["text"]
    assert progress["probe_acc"] == 0.33


def test_a_finished_run_states_its_test_accuracy_once(tmp_path):
    rows = [{"kind": "epoch", "epoch": 1, "step": 78, "train_loss": 1.9, "train_acc": 0.3, "test_acc": 0.4858,
             "images_per_s": 1000.0, "elapsed_s": 60.0}]
    write_run(tmp_path / "run-f", "finished", "finished: test accuracy 48.58% after 78 steps", rows=rows)
    text = jobs.progress(tmp_path / "run-f")["text"]
    assert text.count("test accuracy") == 1
    assert "finished: test accuracy 48.58% after 78 steps" in text


def test_a_diverged_run_says_so(tmp_path):
    write_run(tmp_path / "run-d", "diverged", "diverged at epoch 1, step 50: ... try a smaller learning rate")
    text = jobs.progress(tmp_path / "run-d")["text"]
    assert "**diverged**" in text
    assert "try a smaller learning rate" in text


def test_the_queue_waits_for_a_run_started_elsewhere(queue):
    write_run(queue.root / "run-cli")  # status running with this (live) pid, as the CLI leaves it
    run_id = queue.start("original", owner=OWNER.key, **TINY)
    time.sleep(3 * jobs.POLL_S)
    assert queue.active() is None
    assert queue.position(run_id) == 1
    assert status_of(queue, run_id) == "queued"
    assert "taken off the queue" in queue.stop(run_id, OWNER)
    assert status_of(queue, run_id) == "stopped"
    assert queue.waiting() == []
    with pytest.raises(jobs.OwnerError, match="belongs to whoever started it"):
        queue.stop("run-cli", OWNER)  # a run started outside the queue has no owner a visitor could be
    with pytest.raises(runs.RunError, match="not running or queued on this server"):
        queue.stop("run-cli", OPERATOR)  # never signals a process it did not start


def test_a_full_queue_refuses(queue):
    write_run(queue.root / "run-cli")  # holds the queue
    queue.start("original", **TINY)
    queue.start("original", **TINY)
    with pytest.raises(jobs.QueueFullError, match="the queue is full"):
        queue.start("original", **TINY)


@pytest.mark.e2e
@pytest.mark.slow
def test_runs_train_one_at_a_time_to_the_end(queue):
    first, second = queue.start("original", **TINY), queue.start("original", **TINY)
    wait_for(lambda: queue.active() == first, what="the first run to start")
    assert queue.position(second) == 1
    assert status_of(queue, second) == "queued"
    wait_for(lambda: status_of(queue, second) == "finished", timeout=300, what="both runs to finish")
    for run_id in (first, second):
        assert (queue.root / run_id / runs.WEIGHTS).is_file()
        assert status_of(queue, run_id) == "finished"
    rows = {row["run_id"]: row for row in jobs.run_rows(queue.root)}
    assert rows[first]["final_test_acc"] is not None
    assert rows[first]["epochs"] == "1/1"


@pytest.mark.e2e
@pytest.mark.slow
def test_stop_checkpoints_and_resume_finishes(queue, monkeypatch):
    run_id = queue.start("original", owner=OWNER.key, **{**TINY, "epochs": 6})
    wait_for(lambda: runs.read_metrics(queue.root / run_id), what="the first step")
    monkeypatch.setattr(jobs, "POLL_S", 3.0)  # a wide window between the child's exit and the watcher noticing it
    with pytest.raises(jobs.OwnerError):
        queue.stop(run_id, jobs.Actor(key="someone-else"))
    assert "is stopping" in queue.stop(run_id, OWNER)
    wait_for(lambda: status_of(queue, run_id) == "stopped" and queue.active() is None, what="the stop")
    assert (queue.root / run_id / runs.CHECKPOINT).is_file()
    with pytest.raises(jobs.OwnerError):
        queue.resume(run_id, jobs.Actor())
    assert "queued to resume" in queue.resume(run_id, OWNER)  # inside that window
    with pytest.raises(runs.RunError, match="is queued; only stopped"):
        queue.resume(run_id, OWNER)
    seen = []
    wait_for(lambda: seen.append(status_of(queue, run_id)) or seen[-1] == "finished", timeout=300,
             what="the resumed run to finish")
    assert "failed" not in seen  # the exited child's settling never overwrote the queued resume
    assert max(r["epoch"] for r in runs.read_metrics(queue.root / run_id)) == 6


@pytest.mark.e2e
@pytest.mark.slow
def test_a_child_that_fails_before_training_reports_why(queue, monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "no-data"))  # the child inherits it
    run_id = queue.start("original", **TINY)
    wait_for(lambda: status_of(queue, run_id) == "failed", what="the failure")
    assert "CIFAR-10 not found" in runs.read_status(queue.root / run_id)["message"]


@pytest.mark.e2e
@pytest.mark.slow
def test_queued_runs_survive_a_server_restart(tmp_path, data_env):
    root = tmp_path / "runs"
    before = jobs.RunQueue(root)
    before.close()  # the server goes down: nothing it queued has started
    older = before.start("original", **TINY)
    newer = before.start("original", **TINY)
    after = jobs.RunQueue(root)
    try:
        assert after.waiting() in ([older, newer], [newer])  # the oldest may already have started
        wait_for(lambda: status_of(after, newer) == "finished", timeout=300, what="both recovered runs to finish")
        assert status_of(after, older) == "finished"
    finally:
        after.close()


def test_owner_keys_are_kept_as_digests_and_the_operator_needs_the_secret(queue, monkeypatch):
    run_id = queue.start("original", owner=OWNER.key, **TINY)
    request = json.loads((queue.root / run_id / jobs.REQUEST).read_text())
    assert request["owner"] == jobs.owner_digest(OWNER.key)
    assert OWNER.key not in json.dumps(request)
    monkeypatch.delenv("STUDIO_OPERATOR_SECRET", raising=False)
    assert not jobs.is_operator("")
    assert not jobs.is_operator(None)
    assert not jobs.is_operator("anything")
    monkeypatch.setenv("STUDIO_OPERATOR_SECRET", "s3cret")
    assert jobs.is_operator("s3cret")
    assert not jobs.is_operator("s3cre")
    assert not jobs.is_operator(None)
    for stranger in (jobs.Actor(), jobs.Actor(key="guess"), jobs.Actor(key=jobs.owner_digest(OWNER.key))):
        with pytest.raises(jobs.OwnerError, match="you can watch it"):
            queue.stop(run_id, stranger)
    assert "taken off the queue" in queue.stop(run_id, OPERATOR)



def test_who_asks_a_browser_by_its_key_a_client_by_its_session_the_operator_by_a_header(monkeypatch):
    monkeypatch.setenv("STUDIO_OPERATOR_SECRET", "s3cret")
    assert jobs.actor("browser-key", "session", {}) == jobs.Actor(key="browser-key")
    assert jobs.actor(None, "session", None) == jobs.Actor(key="session")
    assert jobs.actor("", None, {jobs.OPERATOR_HEADER: "s3cret"}) == jobs.Actor(key=None, operator=True)
    assert not jobs.actor("key", None, {jobs.OPERATOR_HEADER: "guess"}).operator
    kept = jobs.browser_key(None)
    assert len(kept) == 32
    assert jobs.browser_key(kept) == kept
    assert jobs.browser_key("short") != "short"
    assert jobs.browser_key(None) != kept


def test_resume_refuses_what_cannot_resume(queue):
    write_run(queue.root / "run-f", "finished")
    with pytest.raises(runs.RunError, match="only stopped, interrupted or failed"):
        queue.resume("run-f", OPERATOR)
    write_run(queue.root / "run-s", "stopped")
    with pytest.raises(runs.RunError, match="no checkpoint"):
        queue.resume("run-s", OPERATOR)
    with pytest.raises(runs.RunError, match="no run"):
        queue.resume("run-none", OPERATOR)
    with pytest.raises(runs.RunError, match="invalid run id"):
        queue.resume("../x", OPERATOR)
    assert sorted(os.listdir(queue.root)) == ["run-f", "run-s"]


def test_a_queue_closed_while_its_monitor_waits_for_the_lock_starts_nothing(queue, monkeypatch):
    launched = []
    monkeypatch.setattr(queue, "_launch", launched.append)
    with queue._lock:  # as a resume waiting for its child's exit holds it
        time.sleep(3 * jobs.POLL_S)  # the monitor is now waiting for the lock
        queue._waiting.append("run-waiting")
        closer = threading.Thread(target=queue.close)
        closer.start()
        wait_for(queue._closed.is_set, timeout=10, what="close() to begin")
    closer.join(30)
    assert not closer.is_alive()
    assert not launched
    assert not queue._monitor.is_alive()


def test_the_browser_secret_is_owner_only_one_key_for_racing_servers_and_refused_when_empty(tmp_path):
    keys, start = [], threading.Barrier(8)

    def server():
        start.wait()
        keys.append(jobs.browser_secret(tmp_path))

    threads = [threading.Thread(target=server) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1
    assert len(keys[0]) == 32
    assert jobs.browser_secret(tmp_path) == keys[0]
    assert os.stat(tmp_path / jobs.BROWSER_SECRET).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == [jobs.BROWSER_SECRET]  # no temporary file left behind
    (tmp_path / jobs.BROWSER_SECRET).write_text("")
    with pytest.raises(OSError, match="is empty: delete it and restart"):
        jobs.browser_secret(tmp_path)
