"""Faults: processes really killed (kill -9, SIGTERM), runs that diverge, two clients at once.

Each test starts real processes (`python app.py`, `python -m resnet train`) over the tiny data set;
every wait is bounded. What is not repeated here: test_jobs.py stops a queued child with SIGTERM
and resumes it; test_train.py fails a checkpoint write inside the process (os.replace raising).
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from helpers import REPO, AppProcess, form_values, wait_for

from resnet import runs
from resnet.studio import jobs

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def status(run_dir) -> str:
    return runs.read_status(run_dir)["status"]


def epoch_rows(run_dir) -> list:
    return [row for row in runs.read_metrics(run_dir) if row["kind"] == "epoch"]


def table_row(client, run_id) -> dict:
    table = client.predict(api_name="/list_runs")
    return next(dict(zip(table["headers"], row, strict=True)) for row in table["data"] if row[0] == run_id)


def cli_train(out: Path, data, *flags, resume=False) -> subprocess.Popen:
    """`python -m resnet train` in its own process group; output goes to out.log beside the run."""
    args = ["--resume", str(out)] if resume else ["--out", str(out), "--preset", "original", "--data-dir", str(data), *flags]
    log = open(out.parent / f"{out.name}.log", "ab")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "resnet", "train", *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def kill9(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


# ---- kill -9 of the server and its training child ----------------------------------------------------
def test_a_killed_server_leaves_an_interrupted_run_that_resumes_to_the_end(tmp_path, tiny_data, tiny_weights):
    root = tmp_path / "runs"
    env = {"RUNS_DIR": root, "CIFAR10_DIR": tiny_data, "STUDIO_WEIGHTS": tiny_weights}
    settings = form_values(epochs=6, batch_size=64, limit_train=0, limit_test=50, dropout=0.0)
    with AppProcess(tmp_path, **env) as server:
        run_id = server.client().predict("original", *settings, api_name="/start_run")
        run_dir = root / run_id
        wait_for(lambda: epoch_rows(run_dir) and (run_dir / runs.CHECKPOINT).is_file(), 240, "an epoch and its checkpoint")
        trainer_pid = runs.read_status(run_dir)["pid"]
        assert trainer_pid != server.process.pid
        assert runs.pid_alive(trainer_pid)
        server.kill_group()  # the server and its training child, at once, with no chance to clean up
        wait_for(lambda: not runs.pid_alive(trainer_pid), 60, "the trainer to be gone")
    before = runs.read_metrics(run_dir)
    assert json.loads((run_dir / runs.STATUS).read_text())["status"] == "running"  # what the file says...
    assert status(run_dir) == "interrupted"  # ...and what everyone reads: never running forever
    assert len(epoch_rows(run_dir)) < 6
    assert not (run_dir / runs.WEIGHTS).exists()

    with AppProcess(tmp_path, **env, STUDIO_OPERATOR_SECRET="the-operators-secret") as server:
        client = server.client()  # a new client: it did not start the run, so it may watch but not resume it
        assert table_row(client, run_id)["Status"] == "interrupted"
        metrics = client.predict(run_id, api_name="/run_metrics")
        served = [dict(zip(metrics["headers"], row, strict=True)) for row in metrics["data"]]
        key = lambda row: (row["kind"], row["step"], row["probe_acc" if row["kind"] == "probe" else "train_loss"])  # noqa: E731
        assert [key(r) for r in served] == [key(r) for r in before]
        with pytest.raises(AppError, match="belongs to whoever started it"):
            client.predict(run_id, api_name="/resume_run")
        operator = Client(server.url, verbose=False, headers={"x-studio-operator": "the-operators-secret"})
        assert "queued to resume" in operator.predict(run_id, api_name="/resume_run")
        wait_for(lambda: table_row(client, run_id)["Status"] == "finished", 300, "the resumed run to finish")
        assert table_row(client, run_id)["Epochs"] == "6/6"
    after = runs.read_metrics(run_dir)
    epochs_before = len([r for r in before if r["kind"] == "epoch"])
    checkpoint_step = max(r["step"] for r in epoch_rows(run_dir) if r["epoch"] <= epochs_before)
    kept = [r for r in before if r["step"] <= checkpoint_step]
    assert after[: len(kept)] == kept  # the curve before the kill is intact
    assert [r["epoch"] for r in epoch_rows(run_dir)] == [1, 2, 3, 4, 5, 6]  # each epoch once
    steps = [r["step"] for r in after if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # no step twice
    assert (run_dir / runs.WEIGHTS).is_file()


# ---- SIGTERM to the server (a host restart): the training child checkpoints and stops first ------------
def test_sigterm_to_the_server_stops_its_run_with_a_checkpoint(tmp_path, tiny_data, tiny_weights):
    root = tmp_path / "runs"
    settings = form_values(epochs=200, batch_size=16, limit_train=64, limit_test=16, dropout=0.0)
    with AppProcess(tmp_path, RUNS_DIR=root, CIFAR10_DIR=tiny_data, STUDIO_WEIGHTS=tiny_weights) as server:
        run_id = server.client().predict("original", *settings, api_name="/start_run")
        run_dir = root / run_id
        wait_for(lambda: status(run_dir) == "running" and epoch_rows(run_dir), 180, "the run to train an epoch")
        trainer_pid = runs.read_status(run_dir)["pid"]
        server.process.send_signal(signal.SIGTERM)  # the server alone, as a host would
        server.process.wait(timeout=90)
        assert not runs.pid_alive(trainer_pid)  # no orphaned trainer left behind
    assert status(run_dir) == "stopped"
    checkpoint = torch.load(run_dir / runs.CHECKPOINT, map_location="cpu", weights_only=True)
    assert checkpoint["position"]["epoch"] >= 1


# ---- kill -9 of the CLI, at random moments, while it writes checkpoints ------------------------------
def test_kill_9_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path, tiny_data):
    out = tmp_path / "run-kill"
    # one step an epoch, a checkpoint after every epoch: the trainer is writing one most of the time
    flags = ["--limit-train", "8", "--batch-size", "8", "--limit-test", "8", "--epochs", "100000", "--log-every", "1",
             "--precision", "fp32", "--device", "cpu"]
    rng = random.Random(6)
    positions = []
    for round_ in range(3):
        process = cli_train(out, tiny_data, *flags, resume=round_ > 0)
        try:
            first = positions[-1] if positions else None
            wait_for(lambda first=first: (out / runs.CHECKPOINT).is_file() and _position(out) != first, 180, "a new checkpoint")
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            kill9(process)
        checkpoint = torch.load(out / runs.CHECKPOINT, map_location="cpu", weights_only=True)
        assert set(checkpoint) == {"model", "optimizer", "position"}
        positions.append(checkpoint["position"]["epoch"])
        assert status(out) == "interrupted"
    assert positions == sorted(positions)
    assert positions[-1] > positions[0]


def _position(run_dir):
    try:
        return torch.load(run_dir / runs.CHECKPOINT, map_location="cpu", weights_only=True)["position"]["epoch"]
    except Exception:  # being replaced right now: try again
        return None


# ---- SIGTERM to the CLI -------------------------------------------------------------------------------
def test_sigterm_stops_the_cli_cleanly_with_a_checkpoint(tmp_path, tiny_data):
    out = tmp_path / "run-term"
    process = cli_train(out, tiny_data, "--limit-train", "64", "--batch-size", "8", "--limit-test", "8", "--epochs", "500",
                        "--log-every", "1", "--precision", "fp32", "--device", "cpu")
    try:
        wait_for(lambda: runs.read_metrics(out), 180, "the first step")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM  # 143: the shell's status for a SIGTERM
    finally:
        kill9(process)
    record = runs.read_status(out)
    assert record["status"] == "stopped"
    assert "resume to continue" in record["message"]
    checkpoint = torch.load(out / runs.CHECKPOINT, map_location="cpu", weights_only=True)
    last_step = max(r["step"] for r in runs.read_metrics(out))
    position = checkpoint["position"]
    assert (position["epoch"] - 1) * 8 + position["step_in_epoch"] >= last_step
    assert "Traceback" not in (tmp_path / "run-term.log").read_text()


# ---- divergence in the queue ----------------------------------------------------------------------------
def test_a_diverging_run_ends_diverged_and_the_queue_moves_on(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(tiny_data))
    queue = jobs.RunQueue(tmp_path / "runs", max_queue=4)
    try:
        fixed = {"precision": "fp32", "device": "cpu", "limit_test": 16, "log_every": 1, "dropout": 0.0}
        wild = queue.start("original", optimizer="adam", lr=0.5, batch_size=4, limit_train=60, epochs=5, **fixed)
        calm = queue.start("original", epochs=1, batch_size=32, limit_train=64, **fixed)
        wait_for(lambda: status(queue.root / calm) == "finished", 400, "the next queued run to finish")
    finally:
        queue.close()
    record = runs.read_status(queue.root / wild)
    assert record["status"] == "diverged"
    assert "try a smaller learning rate" in record["message"]
    curve = runs.read_metrics(queue.root / wild)  # the curve up to the blow-up is kept, and every point of it is finite
    assert curve
    assert all(math.isfinite(r["train_loss"]) for r in curve)
    assert not (queue.root / wild / runs.WEIGHTS).exists()
    assert "diverged" in jobs.progress(queue.root / wild)["text"]
    assert (queue.root / calm / runs.WEIGHTS).is_file()


# ---- two clients press Start at once -----------------------------------------------------------------
def test_two_clients_starting_at_once_never_train_together(tmp_path, tiny_data, tiny_weights):
    root = tmp_path / "runs"
    settings = form_values(epochs=1, batch_size=32, limit_train=96, limit_test=16, dropout=0.0)
    with AppProcess(tmp_path, RUNS_DIR=root, CIFAR10_DIR=tiny_data, STUDIO_WEIGHTS=tiny_weights) as server:
        clients = [server.client(), server.client()]
        barrier, answers = threading.Barrier(2), [None, None]

        def press(index):
            barrier.wait(timeout=60)
            try:
                answers[index] = clients[index].predict("original", *settings, api_name="/start_run")
            except Exception as error:
                answers[index] = error

        threads = [threading.Thread(target=press, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        run_ids = [a for a in answers if isinstance(a, str)]
        assert run_ids, answers
        assert all(isinstance(a, str) or "queue is full" in str(a) for a in answers), answers
        assert sorted(set(os.listdir(root)) - {jobs.BROWSER_SECRET}) == sorted(run_ids)

        trainers, most_at_once = {}, 0  # run id -> pids seen running it
        deadline = time.monotonic() + 400
        while not all(status(root / r) == "finished" for r in run_ids):
            assert time.monotonic() < deadline, {r: status(root / r) for r in run_ids}
            records = {r: runs.read_status(root / r) for r in run_ids}
            running = [r for r, record in records.items() if record["status"] == "running"]
            most_at_once = max(most_at_once, len(running))
            assert len(running) <= 1, records
            for r in running:
                trainers.setdefault(r, set()).add(records[r]["pid"])
            assert all(records[r]["status"] in ("queued", "running", "finished") for r in run_ids), records
            time.sleep(0.1)
    assert most_at_once == 1
    pids = [pid for r in run_ids for pid in trainers.get(r, ())]
    assert len(pids) == len(set(pids))  # one process per run, never shared
