"""Run folders as other processes see them: status, metrics, config, listing."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

from resnet import runs


@pytest.fixture
def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not runs.pid_alive(child.pid)
    return child.pid


def test_status_round_trip_with_this_process_alive(tmp_path):
    runs.write_status(tmp_path, "running", "started")
    status = runs.read_status(tmp_path)
    assert status["status"] == "running"
    assert status["pid"] == os.getpid()
    assert status["message"] == "started"


def test_running_with_a_dead_pid_reads_interrupted(tmp_path, dead_pid):
    runs.write_status(tmp_path, "running", "started", pid=dead_pid)
    status = runs.read_status(tmp_path)
    assert status["status"] == "interrupted"
    assert "gone" in status["message"]
    assert json.loads((tmp_path / runs.STATUS).read_text())["status"] == "running"  # reading changes nothing


@pytest.mark.skipif(runs.process_identity(os.getpid()) is None, reason="needs /proc")
def test_a_reused_pid_does_not_keep_a_run_alive(tmp_path):
    """After a host restart the recorded pid may belong to some other live process: here, this one."""
    runs.write_status(tmp_path, "running", "started")
    record = json.loads((tmp_path / runs.STATUS).read_text())
    assert record["process"] == runs.process_identity(os.getpid())
    record["process"] = "another-boot:12345"
    (tmp_path / runs.STATUS).write_text(json.dumps(record))
    assert runs.read_status(tmp_path)["status"] == "interrupted"


@pytest.mark.parametrize("status", ["finished", "stopped", "diverged", "failed"])
def test_final_statuses_do_not_depend_on_the_pid(tmp_path, dead_pid, status):
    runs.write_status(tmp_path, status, pid=dead_pid)
    assert runs.read_status(tmp_path)["status"] == status


def test_unknown_status_is_refused_on_write(tmp_path):
    with pytest.raises(ValueError, match="unknown status"):
        runs.write_status(tmp_path, "exploded")


@pytest.mark.parametrize("text", ["{torn", '{"status": "exploded"}', "[1, 2]", "\xff\xfe"])
def test_damaged_status_files_read_as_damaged(tmp_path, text):
    (tmp_path / runs.STATUS).write_bytes(text.encode("latin1"))
    assert runs.read_status(tmp_path)["status"] == "damaged"


def test_missing_status_reads_as_damaged(tmp_path):
    assert runs.read_status(tmp_path) == {"status": "damaged", "message": "no status.json"}


def test_torn_last_metrics_line_is_skipped(tmp_path):
    runs.append_metrics(tmp_path, {"kind": "step", "epoch": 1, "step": 50, "train_loss": 2.0})
    runs.append_metrics(tmp_path, {"kind": "epoch", "epoch": 1, "step": 97, "test_acc": 0.3})
    with open(tmp_path / runs.METRICS, "a") as handle:
        handle.write('{"kind": "step", "epoch": 2, "st')  # the process died mid-write
    rows = runs.read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in rows] == [("step", 50), ("epoch", 97)]


def test_garbled_and_foreign_metric_lines_are_skipped(tmp_path):
    (tmp_path / runs.METRICS).write_bytes(b'\xff\xfe\n[1]\n{"kind": "other"}\n{"kind": "step", "step": 1}\n')
    assert runs.read_metrics(tmp_path) == [{"kind": "step", "step": 1}]
    assert runs.read_metrics(tmp_path / "absent") == []


@pytest.mark.parametrize(("text", "words"), [(None, "no config.json"), ("{", "not valid JSON"), ("[]", "not an object")])
def test_bad_config_files_raise_run_error(tmp_path, text, words):
    if text is not None:
        (tmp_path / runs.CONFIG).write_text(text)
    with pytest.raises(runs.RunError, match=words):
        runs.read_config(tmp_path)


@pytest.mark.parametrize("run_id", ["../etc", "a/b", "", "UPPER", "x" * 65, None, "with space"])
def test_run_ids_that_could_escape_are_refused(tmp_path, run_id):
    with pytest.raises(runs.RunError, match="invalid run id"):
        runs.run_path(tmp_path, run_id)


def test_run_path_accepts_plain_ids(tmp_path):
    assert runs.run_path(tmp_path, "lr-0-01") == tmp_path / "lr-0-01"


def test_list_runs_summarizes_and_flags_damage(tmp_path, dead_pid):
    good = tmp_path / "good"
    good.mkdir()
    (good / runs.CONFIG).write_text(json.dumps({"optimizer": "adam", "lr": 0.01, "dropout": 0.1, "batch_size": 64,
                                                "blocks": [1, 1, 1, 1], "epochs": 3}))
    runs.write_status(good, "running", pid=dead_pid)
    for epoch, acc in [(1, 0.4), (2, 0.6)]:
        runs.append_metrics(good, {"kind": "epoch", "epoch": epoch, "step": epoch * 10, "test_acc": acc,
                                   "elapsed_s": epoch * 5.0})
    (tmp_path / "broken").mkdir()
    (tmp_path / "Not-A-Run").mkdir()

    rows = {row["run_id"]: row for row in runs.list_runs(tmp_path)}
    assert set(rows) == {"good", "broken"}
    assert rows["good"]["status"] == "interrupted"
    assert rows["good"]["epochs"] == "2/3"
    assert rows["good"]["final_test_acc"] == 0.6
    assert rows["good"]["best_test_acc"] == 0.6
    assert rows["good"]["blocks"] == "1x1x1x1"
    assert rows["good"]["elapsed_s"] == 10.0
    assert not rows["good"]["has_weights"]
    assert rows["broken"]["status"] == "damaged"
    assert runs.list_runs(tmp_path / "absent") == []


def test_runs_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNS_DIR", str(tmp_path))
    assert runs.runs_dir() == tmp_path


@pytest.mark.parametrize("card", [None, "{broken", "[]", '{"provenance": {}}', '{"provenance": "cpu"}'])
def test_trained_on_is_none_without_a_readable_device(tmp_path, card):
    if card is not None:
        (tmp_path / runs.CARD).write_text(card)
    assert runs.trained_on(tmp_path) is None


def test_reading_runs_and_limits_imports_no_torch():
    """The studio polls run folders and reads its limits often; neither should cost importing torch."""
    code = ("import sys, resnet.runs, resnet.studio.limits, resnet.errors, resnet.atomic; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
