"""The trainer: it learns, resumes exactly, stops and diverges cleanly, and writes its files atomically."""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import resnet.data as data_module
import resnet.evaluate as evaluate_module
import resnet.train as train_module
from resnet import budget, runs
from resnet.config import ConfigError, make_config, parse_resolution
from resnet.data import load_split, normalize
from resnet.explain import grad_cam
from resnet.model import build_model
from resnet.train import (
    Trainer,
    build_optimizer,
    default_channels_last,
    describe_device,
    lr_at,
    resize,
    resolution_at,
    resolve_device,
    resume_config,
    train_step,
)
from resnet.weights import load_weights

STEP_KEYS = {"kind", "epoch", "step", "train_loss", "train_acc", "lr", "images_per_s", "elapsed_s"}


def small_config(data_dir, **overrides):
    """A run that takes a second or two on one CPU thread: 3 steps of 8 images per epoch."""
    settings = {"data_dir": str(data_dir), "limit_train": 24, "limit_test": 16, "batch_size": 8, "epochs": 2, "log_every": 1,
                "precision": "fp32", "device": "cpu", "eval_batch_size": 16}
    return make_config("original", **{**settings, **overrides})


def stop_at_step(event: threading.Event, step: int):
    """A callback that asks the run to stop once the step record ``step`` is written (it stops one step later)."""
    def callback(record):
        if record["kind"] == "step" and record["step"] == step:
            event.set()
    return callback


def final_weights(run_dir) -> dict:
    return load_file(run_dir / runs.WEIGHTS)


def last_epoch_rows(run_dir) -> dict:
    return {r["epoch"]: r for r in runs.read_metrics(run_dir) if r["kind"] == "epoch"}


# ---- learning -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_short_run_learns_the_patterns(tiny_data, tmp_path):
    config = make_config("original", data_dir=str(tiny_data), val_size=32, limit_train=96, limit_test=20, batch_size=16,
                         epochs=3, lr=1e-3, dropout=0.0, augment="none", precision="fp32", device="cpu", log_every=2)
    outcome = Trainer(config, tmp_path / "run").run()

    assert outcome["status"] == "finished", outcome
    assert outcome["scored_on"] == "test"
    assert 0 <= outcome["acc"] <= 1
    assert outcome["count"] == 20
    rows = runs.read_metrics(tmp_path / "run")
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["train_acc"] >= 0.9
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["val_acc"] > 0.3  # well above chance (0.1) on images it never trained on

    for row in rows:
        assert STEP_KEYS <= set(row), row
    for row in epochs:
        assert {"test_loss", "test_acc", "val_loss", "val_acc"} <= set(row)
        assert row["step"] == row["epoch"] * 6  # 96 images / 16 a batch
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(2, 19, 2))

    status = runs.read_status(tmp_path / "run")
    assert status["status"] == "finished"
    assert status["message"].startswith("finished: test accuracy")
    card = load_weights(tmp_path / "run" / runs.WEIGHTS).card
    assert card["training"]["lr"] == 1e-3
    assert card["test_images"] == 20
    assert len(card["curve"]) == 3
    assert card["mean"] == list(config.mean)
    assert card["provenance"]["world_size"] == 1
    # The device names the CPU's vector extension, so timings from two machines are told apart.
    assert card["provenance"]["device"] == describe_device(torch.device("cpu")) == runs.trained_on(tmp_path / "run")
    assert torch.backends.cpu.get_cpu_capability() in card["provenance"]["device"]
    assert f"{torch.get_num_threads()} threads" in card["provenance"]["device"]
    assert json.loads((tmp_path / "run" / runs.CONFIG).read_text())["val_size"] == 32


def test_without_val_size_epoch_rows_carry_test_metrics_only(straight_run):
    for row in last_epoch_rows(straight_run).values():
        assert {"test_loss", "test_acc"} <= set(row)
        assert "val_acc" not in row


# ---- resume -----------------------------------------------------------------------------------
RESUME_SETTINGS = {"ema": 0.9, "schedule": "cosine", "warmup": 0.2}  # so optimizer, EMA and schedule state all matter


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    assert Trainer(small_config(tiny_data, **RESUME_SETTINGS), run_dir).run()["status"] == "finished"
    return run_dir


def assert_same_result(run_dir, straight_run):
    straight, resumed = final_weights(straight_run), final_weights(run_dir)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    for epoch, row in last_epoch_rows(straight_run).items():
        again = last_epoch_rows(run_dir)[epoch]
        for key in ("step", "train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert again[key] == row[key], (epoch, key)


@pytest.mark.parametrize(("stop_after", "position"), [
    (3, {"epoch": 2, "step_in_epoch": 0}),  # asked after epoch 1's last step: stops at the boundary, once it is scored
    (4, {"epoch": 2, "step_in_epoch": 2}),  # asked in the middle of epoch 2: stops one step later
    (2, {"epoch": 1, "step_in_epoch": 3}),  # asked before epoch 1's last step: stops at the epoch boundary
])
def test_stop_then_resume_equals_an_uninterrupted_run(tiny_data, tmp_path, straight_run, stop_after, position):
    config = small_config(tiny_data, **RESUME_SETTINGS)
    event = threading.Event()
    outcome = Trainer(config, tmp_path, callbacks=[stop_at_step(event, stop_after)], stop_event=event).run()
    assert outcome["status"] == "stopped"
    checkpoint = torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)
    assert {k: checkpoint["position"][k] for k in position} == position
    assert not (tmp_path / runs.WEIGHTS).exists()

    assert Trainer(resume_config(tmp_path), tmp_path).run(resume=True)["status"] == "finished"
    assert_same_result(tmp_path, straight_run)


def test_a_stop_between_step_rows_resumes_to_the_same_step_rows(tiny_data, tmp_path):
    # log_every 2 over 3 steps an epoch: the stop after step 3 leaves step 3 unlogged, and step 4's row covers it.
    def step_rows(run_dir):
        return [{k: r[k] for k in ("step", "train_loss", "train_acc")} for r in runs.read_metrics(run_dir) if r["kind"] == "step"]

    config = small_config(tiny_data, log_every=2, **RESUME_SETTINGS)
    assert Trainer(config, tmp_path / "straight").run()["status"] == "finished"
    event = threading.Event()
    stopped = Trainer(config, tmp_path / "resumed", callbacks=[stop_at_step(event, 2)], stop_event=event).run()
    assert stopped["status"] == "stopped"
    assert "step 3" in stopped["message"]
    position = torch.load(tmp_path / "resumed" / runs.CHECKPOINT, weights_only=True)["position"]
    assert position["since_log"][2] == 8
    assert len(position["window"]) == 3
    assert Trainer(resume_config(tmp_path / "resumed"), tmp_path / "resumed").run(resume=True)["status"] == "finished"
    assert step_rows(tmp_path / "resumed") == step_rows(tmp_path / "straight")


def test_the_loop_state_saves_and_restores_itself_and_reads_a_position_without_the_rows_figures():
    state = train_module.LoopState(epoch=2, step_in_epoch=1, elapsed_s=3.5, epoch_sums=train_module.Sums(4.0, 2.0, 8),
                                   epoch_time=1.5, since_log=train_module.Sums(2.0, 1.0, 8), since_log_time=0.5,
                                   window=[2.3, 2.2], met={32: (1.0, 2)})
    position = state.position(7.0, lambda values: values)
    assert set(position) == {"epoch", "step_in_epoch", "elapsed_s", "sums", "train_time", "since_log", "since_log_time",
                             "window"}
    # The pace is this process's own: a resumed run starts it afresh.
    assert train_module.LoopState.from_position(position) == dataclasses.replace(state, elapsed_s=7.0, met={})
    # A position that holds only where the run is and its epoch's sums resumes with empty row sums and window.
    bare = train_module.LoopState.from_position({"epoch": 2, "step_in_epoch": 0, "elapsed_s": 1.0, "sums": [0.0, 0.0, 0]})
    assert bare == train_module.LoopState(epoch=2, elapsed_s=1.0)


def test_a_step_rows_speed_is_its_images_over_its_own_training_seconds(tiny_data, tmp_path, monkeypatch):
    """Every lap of the stopwatch (a log step, an epoch's end, a stop) lasts one second here, so a row's images/s must
    be its images over the laps since the previous row, across epoch ends and a stop and resume between rows."""
    monkeypatch.setattr(train_module.Stopwatch, "lap", lambda self: 1.0)
    # 3 steps an epoch, a row every 2: rows at steps 2, 4, 6, 8; epoch ends at 3, 6, 9 are laps of their own.
    config = small_config(tiny_data, log_every=2, epochs=3, **RESUME_SETTINGS)
    event = threading.Event()
    stopped = Trainer(config, tmp_path, callbacks=[stop_at_step(event, 4)], stop_event=event).run()
    assert stopped["status"] == "stopped"
    assert "step 5" in stopped["message"]
    assert Trainer(resume_config(tmp_path), tmp_path).run(resume=True)["status"] == "finished"
    rows = [r for r in runs.read_metrics(tmp_path) if r["kind"] == "step"]
    laps = {2: 1, 4: 2, 6: 2, 8: 1}  # row 4: the end at 3 and step 4; row 6: the stop at 5 and step 6 (also an end)
    assert [r["step"] for r in rows] == list(laps)
    assert [r["images_per_s"] for r in rows] == [2 * config.batch_size / laps[r["step"]] for r in rows]


def test_resume_after_a_crash_uses_the_epoch_checkpoint(tiny_data, tmp_path, straight_run):
    class Crash(RuntimeError):
        pass

    def crash_in_epoch_two(record):
        if record["kind"] == "step" and record["step"] == 5:
            raise Crash("killed")

    with pytest.raises(Crash):
        Trainer(small_config(tiny_data, **RESUME_SETTINGS), tmp_path, callbacks=[crash_in_epoch_two]).run()
    assert runs.read_status(tmp_path)["status"] == "failed"
    assert torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)["position"]["epoch"] == 2

    Trainer(resume_config(tmp_path), tmp_path).run(resume=True)
    assert_same_result(tmp_path, straight_run)


def test_a_resume_that_cannot_load_keeps_the_finished_model(tiny_data, tmp_path):
    assert Trainer(small_config(tiny_data, epochs=1), tmp_path).run()["status"] == "finished"
    published = (tmp_path / runs.WEIGHTS).read_bytes(), (tmp_path / runs.CARD).read_bytes()
    checkpoint = tmp_path / runs.CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # torn: its zip directory is gone
    with pytest.raises(RuntimeError, match="failed reading zip archive"):
        Trainer(resume_config(tmp_path, epochs=2), tmp_path).run(resume=True)
    assert runs.read_status(tmp_path)["status"] == "failed"
    assert ((tmp_path / runs.WEIGHTS).read_bytes(), (tmp_path / runs.CARD).read_bytes()) == published


@pytest.mark.parametrize(("val_size", "words"), [
    (1, "val_size must be 0 or at least 2"), (50_000, r"val_size must be in \[0, 50000\)"),
])
def test_a_validation_split_that_cannot_work_is_refused_before_any_work(val_size, words):
    with pytest.raises(ConfigError, match=words):
        make_config("fast", val_size=val_size)


def test_a_validation_split_as_large_as_the_data_is_refused_in_words(tiny_data):
    available = len(load_split(tiny_data, train=True)[1])
    with pytest.raises(ConfigError, match=f"val_size {available} leaves no training images: the data set has {available}"):
        train_module.load_data(small_config(tiny_data, val_size=available), torch.device("cpu"))


@pytest.mark.parametrize(("name", "words"), [("gpu", "unknown device 'gpu'"), ("meta", "unknown device 'meta'"),
                                         ("cuda:7", "cuda"), ("mps", "mps")])
def test_a_device_this_machine_cannot_give_is_refused_in_words(name, words):
    if name.startswith(("cuda", "mps")) and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        pytest.skip("this machine has the GPU that the refusal is about")
    with pytest.raises(ConfigError, match=words):
        resolve_device(name)


def test_resume_may_raise_epochs_only(tiny_data, tmp_path):
    event = threading.Event()
    Trainer(small_config(tiny_data, epochs=1), tmp_path, callbacks=[stop_at_step(event, 1)], stop_event=event).run()
    assert resume_config(tmp_path, epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="only be raised"):
        resume_config(tmp_path, epochs=0)
    (tmp_path / runs.CHECKPOINT).unlink()
    with pytest.raises(runs.RunError, match="no checkpoint.pt"):
        resume_config(tmp_path)


# ---- stop and divergence ----------------------------------------------------------------------
def test_channels_last_is_on_for_cpus_and_autocast_and_a_config_may_turn_it_off(tiny_data, tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_channels_last(cpu, None)
    assert default_channels_last(cpu, torch.bfloat16)
    assert default_channels_last(cuda, torch.float16)
    assert not default_channels_last(cuda, None)
    assert Trainer(small_config(tiny_data), tmp_path / "default").channels_last
    assert not Trainer(small_config(tiny_data, channels_last=False), tmp_path / "nchw").channels_last


def test_a_training_step_in_channels_last_computes_what_nchw_does(tiny_data):
    config = small_config(tiny_data, optimizer="sgd", lr=0.1, dropout=0.0)
    images, labels = load_split(tiny_data, train=True)
    images, labels = images[:16], labels[:16]
    torch.manual_seed(0)
    start = build_model(config.blocks, config.dropout)
    stepped = {}
    for channels_last in (False, True):
        model = copy.deepcopy(start)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss, correct = train_step(model, build_optimizer(config, model), images, labels, config, None, channels_last)
        stepped[channels_last] = (loss, correct, model.state_dict())
    (loss, correct, nchw), (loss_cl, correct_cl, channels_last) = stepped[False], stepped[True]
    torch.testing.assert_close(loss_cl, loss, rtol=1e-5, atol=1e-5)
    assert correct_cl == correct
    # The layouts sum in other orders, so the updates agree to float error: a few percent of the update at most.
    for name, before in start.state_dict().items():
        if before.is_floating_point():
            update = nchw[name] - before
            assert (channels_last[name] - nchw[name]).abs().max() <= 0.05 * update.abs().max(), name


def test_a_stop_request_writes_a_loadable_checkpoint(tiny_data, tmp_path):
    event = threading.Event()
    event.set()  # asked before the first step: the run still does one step, then stops
    outcome = Trainer(small_config(tiny_data), tmp_path, stop_event=event).run()
    assert outcome["status"] == "stopped"
    assert "resume" in outcome["message"]
    status = runs.read_status(tmp_path)
    assert status["status"] == "stopped"
    assert status["pid"] == os.getpid()
    checkpoint = torch.load(tmp_path / runs.CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "position"}
    assert checkpoint["position"]["epoch"] == 1
    assert checkpoint["position"]["step_in_epoch"] == 1
    model = load_weights(tmp_path / runs.CHECKPOINT).net  # a checkpoint also serves as weights
    assert torch.equal(model.conv1.weight, checkpoint["model"]["conv1.weight"])


def test_a_huge_learning_rate_diverges_with_a_message(tiny_data, tmp_path):
    config = small_config(tiny_data, optimizer="sgd", lr=1e30, epochs=1)
    outcome = Trainer(config, tmp_path).run()
    assert outcome["status"] == "diverged"
    assert "diverged at epoch 1, step 2" in outcome["message"]
    assert "smaller learning rate" in outcome["message"]
    status = runs.read_status(tmp_path)
    assert status["status"] == "diverged"
    assert status["message"] == outcome["message"]
    rows = runs.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1]
    assert math.isfinite(rows[0]["train_loss"])
    assert not (tmp_path / runs.WEIGHTS).exists()


@pytest.mark.slow
def test_adam_at_lr_half_diverges(tiny_data, tmp_path):
    # Its loss explodes far above chance within a few steps: that alone ends it, without a 50-step window.
    config = small_config(tiny_data, lr=0.5, batch_size=4, limit_train=60, epochs=5)
    outcome = Trainer(config, tmp_path).run()
    assert outcome["status"] == "diverged", outcome
    assert runs.read_status(tmp_path)["status"] == "diverged"
    rows = runs.read_metrics(tmp_path)
    assert rows
    assert all(math.isfinite(r["train_loss"]) for r in rows)


# ---- files ------------------------------------------------------------------------------------
def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tiny_data, tmp_path, monkeypatch):
    event = threading.Event()
    Trainer(small_config(tiny_data), tmp_path, callbacks=[stop_at_step(event, 1)], stop_event=event).run()
    before = (tmp_path / runs.CHECKPOINT).read_bytes()

    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(dst) == runs.CHECKPOINT:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        Trainer(resume_config(tmp_path), tmp_path).run(resume=True)

    assert (tmp_path / runs.CHECKPOINT).read_bytes() == before
    assert torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)["position"]["step_in_epoch"] == 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    status = runs.read_status(tmp_path)
    assert status["status"] == "failed"
    assert "disk full" in status["message"]


def test_a_new_runs_clock_counts_from_its_start_and_a_resumed_one_from_its_checkpoint(tiny_data, tmp_path):
    """The rows' elapsed_s is wall-clock time since Start (loading and measuring included, as a budget counts), so the
    Runs tab's time axis starts where the visitor pressed Start; a resume adds its own time to the checkpoint's."""
    event = threading.Event()
    started = time.perf_counter() - 100  # as if the process had spent 100 s before the loop
    Trainer(small_config(tiny_data), tmp_path, callbacks=[stop_at_step(event, 1)], stop_event=event,
            clock_start=started).run()
    first = runs.read_metrics(tmp_path)
    assert min(r["elapsed_s"] for r in first) >= 100
    Trainer(resume_config(tmp_path), tmp_path).run(resume=True)
    resumed = runs.read_metrics(tmp_path)[len(first):]
    assert resumed
    assert min(r["elapsed_s"] for r in resumed) >= max(r["elapsed_s"] for r in first)


def test_a_new_run_replaces_old_metrics(tiny_data, tmp_path):
    runs.append_metrics(tmp_path, {"kind": "step", "epoch": 9, "step": 999})
    Trainer(small_config(tiny_data, epochs=1), tmp_path).run()
    assert max(r["step"] for r in runs.read_metrics(tmp_path)) == 3


# ---- config and schedule ----------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "words"), [
    ({"lr": 0}, "lr must be positive"),
    ({"lr": float("nan")}, "lr must be finite"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"optimizer": "lamb"}, "unknown optimizer 'lamb'"),
    ({"blocks": (1, 1, 1)}, "blocks must be four"),
    ({"epochs": 2.5}, "epochs must be a whole number"),
    ({"nonsense": 1}, "unknown setting(s): nonsense"),
])
def test_invalid_settings_are_refused_with_one_sentence(overrides, words):
    with pytest.raises(ConfigError) as caught:
        make_config("original", **overrides)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_batch_larger_than_the_data_is_refused(tiny_data):
    with pytest.raises(ConfigError, match="larger than the 24 training images"):
        Trainer(small_config(tiny_data, batch_size=32), "unused")


def test_learning_rate_schedules():
    constant = make_config("original", lr=0.1)
    assert {lr_at(constant, s / 100) for s in range(100)} == {0.1}
    warmed = make_config("original", lr=0.1, warmup=0.2)  # a warmup ramps every schedule, the constant one too
    assert lr_at(warmed, 0.1) == pytest.approx(0.05)
    assert {lr_at(warmed, s / 100) for s in range(20, 100)} == {0.1}
    onecycle = make_config("fast", lr=0.4, warmup=0.25)
    assert lr_at(onecycle, 0.0) == 0
    assert lr_at(onecycle, 0.25) == pytest.approx(0.4)
    assert lr_at(onecycle, 0.5) < lr_at(onecycle, 0.25)
    assert lr_at(onecycle, 1.0) == pytest.approx(0)
    cosine = make_config("original", schedule="cosine", lr=1.0)
    assert lr_at(cosine, 0.5) == pytest.approx(0.5)
    assert lr_at(cosine, 1.0) == pytest.approx(0)


def test_a_seed_too_large_for_the_generators_is_refused_before_training(tiny_data):
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 4294967296\)"):
        small_config(tiny_data, seed=2**40)


# ---- broken models are never called finished ----------------------------------------------------
def test_one_exploding_step_diverges_at_once(tiny_data, tmp_path, monkeypatch):
    real_step = train_module.train_step

    def huge_loss(*args, **kwargs):
        loss, correct = real_step(*args, **kwargs)
        return loss * 0 + 10 * math.log(10) + 1, correct  # finite, but ten times chance and more

    monkeypatch.setattr(train_module, "train_step", huge_loss)
    outcome = Trainer(small_config(tiny_data, epochs=1, log_every=50), tmp_path).run()
    assert outcome["status"] == "diverged"
    assert "exceeded 23.0" in outcome["message"]
    assert not (tmp_path / runs.WEIGHTS).exists()
    assert not (tmp_path / runs.CHECKPOINT).exists()


def test_a_non_finite_evaluation_ends_the_run_diverged_without_weights(tiny_data, tmp_path, monkeypatch):
    real_evaluate = Trainer._evaluate

    def nan_loss(self, *args, **kwargs):
        return {**real_evaluate(self, *args, **kwargs), "loss": float("nan")}

    monkeypatch.setattr(Trainer, "_evaluate", nan_loss)
    outcome = Trainer(small_config(tiny_data, epochs=1), tmp_path).run()
    assert outcome["status"] == "diverged"
    assert "test loss is nan" in outcome["message"]
    assert runs.read_status(tmp_path)["status"] == "diverged"
    assert not (tmp_path / runs.WEIGHTS).exists()
    assert not (tmp_path / runs.CARD).exists()
    assert not [r for r in runs.read_metrics(tmp_path) if r["kind"] == "epoch"]  # the broken epoch is not drawn


def test_non_finite_weights_end_the_run_diverged(tiny_data, tmp_path, monkeypatch):
    real_step = train_module.train_step

    def poison(model, *args, **kwargs):
        result = real_step(model, *args, **kwargs)
        with torch.no_grad():
            model.bn1.running_var.fill_(float("inf"))  # a buffer: the training loss stays finite
        return result

    monkeypatch.setattr(train_module, "train_step", poison)
    outcome = Trainer(small_config(tiny_data, epochs=1), tmp_path).run()
    assert outcome["status"] == "diverged"
    assert "non-finite" in outcome["message"] or "nan" in outcome["message"]
    assert not (tmp_path / runs.WEIGHTS).exists()


# ---- resolution schedule, probe, init -----------------------------------------------------------
def test_the_resolution_schedule_is_a_pure_function_of_the_step():
    phases = parse_resolution("16:0.5,24:0.75")
    assert [resolution_at(phases, step / 8) for step in range(8)] == [16, 16, 16, 16, 24, 24, 32, 32]
    assert resolution_at(parse_resolution(""), 0.0) == 32
    x = torch.randn(2, 3, 32, 32)
    assert resize(x, 16).shape == (2, 3, 16, 16)
    assert resize(x, 32) is x
    assert torch.allclose(resize(torch.ones(1, 3, 32, 32), 24), torch.ones(1, 3, 24, 24))


@pytest.mark.parametrize(("text", "words"), [
    ("12:0.5", "12 px is not one of 8, 16, 24"), ("16:1.5", "fraction of the steps in (0, 1)"),
    ("16", "is not SIZE:UNTIL"), ("16:0.6,24:0.5", "increasing order"), ("a:b", "is not SIZE:UNTIL"),
    ("32:0.5", "32 px is not one of"),
])
def test_bad_resolution_schedules_are_refused_by_name(text, words):
    with pytest.raises(ConfigError, match="resolution") as caught:
        make_config("original", resolution=text)
    assert words in str(caught.value)


def test_low_resolution_steps_train_the_same_weights_that_load_at_32_px(tiny_data, tmp_path):
    config = small_config(tiny_data, resolution="16:0.5", epochs=2)
    assert Trainer(config, tmp_path).run()["status"] == "finished"
    sizes = [r["resolution"] for r in runs.read_metrics(tmp_path) if r["kind"] == "step"]
    assert sizes == [16, 16, 16, 32, 32, 32]
    loaded = load_weights(tmp_path / runs.WEIGHTS)
    model, card = loaded.net, loaded.card
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert card["training"]["resolution"] == "16:0.5"


@pytest.fixture(scope="module")
def scheduled_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("scheduled")
    config = small_config(tiny_data, resolution="16:0.34,24:0.67", **RESUME_SETTINGS)
    assert Trainer(config, run_dir).run()["status"] == "finished"
    return run_dir


def test_a_run_resumed_in_the_middle_of_its_resolution_schedule_continues_exactly(tiny_data, tmp_path, scheduled_run):
    config = small_config(tiny_data, resolution="16:0.34,24:0.67", **RESUME_SETTINGS)
    event = threading.Event()
    Trainer(config, tmp_path, callbacks=[stop_at_step(event, 2)], stop_event=event).run()  # stops after step 3, 16 -> 24 px
    assert Trainer(resume_config(tmp_path), tmp_path).run(resume=True)["status"] == "finished"
    assert_same_result(tmp_path, scheduled_run)
    assert [r["resolution"] for r in runs.read_metrics(tmp_path) if r["kind"] == "step"] == [16, 16, 16, 24, 24, 32]


@pytest.mark.parametrize(("probes", "probed_steps"), [(3, [2, 4, 6]), (6, [1, 2, 3, 4, 5, 6]), (0, [])])
def test_probes_score_a_fixed_held_out_subset_evenly_by_progress(tiny_data, tmp_path, probes, probed_steps):
    config = small_config(tiny_data, probe_size=10, probes=probes, val_size=40, log_every=3)
    Trainer(config, tmp_path).run()
    rows = runs.read_metrics(tmp_path)
    probed = [r for r in rows if r["kind"] == "probe"]
    assert [r["step"] for r in probed] == probed_steps  # by steps, not at log steps only and not by the clock
    # Each scores what 5% of the training between two probes affords (a probe is a forward pass, a step three).
    every = probed_steps[1] - probed_steps[0] if len(probed_steps) > 1 else 1
    assert all(r["probe_images"] == budget.probe_images(10, every * 8, "") < 10 for r in probed)
    assert all(r["probe_split"] == "val" and 0 <= r["probe_acc"] <= 1 and r["images"] == r["step"] * 8 for r in probed)
    assert all(math.isfinite(r["probe_loss"]) and r["elapsed_s"] >= 0 for r in probed)


def test_the_probe_uses_the_test_set_without_a_validation_split(tiny_data, tmp_path):
    Trainer(small_config(tiny_data, probe_size=5, epochs=1), tmp_path).run()
    probe = next(r for r in runs.read_metrics(tmp_path) if r["kind"] == "probe")
    assert probe["probe_split"] == "test"
    assert 1 <= probe["probe_images"] <= 5


def test_whitening_changes_the_first_convolution_and_nothing_else(tiny_data):
    images, _ = load_split(tiny_data, train=True)
    config = small_config(tiny_data, whiten_stem=True)
    torch.manual_seed(0)
    plain = build_model()
    model = copy.deepcopy(plain)
    train_module.initialize(model, config, images)
    x = normalize(images[:200], config.mean, config.std)
    patches = torch.nn.functional.unfold(x, 3).transpose(1, 2).reshape(-1, 27)
    responses = patches @ model.conv1.weight[:27].reshape(27, 27).T
    covariance = torch.cov(responses.T)
    assert torch.allclose(covariance.diag(), torch.ones(27), atol=0.35)  # whitened: unit variance along each filter
    assert torch.equal(model.conv1.weight[54:], plain.conv1.weight[54:])  # the 10 filters left keep their random init
    assert torch.equal(model.conv1.weight[27:54], -model.conv1.weight[:27])
    others = {k: v for k, v in model.state_dict().items() if k != "conv1.weight"}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in others.items())


def test_the_weight_average_follows_every_step_and_is_what_gets_scored_and_saved(tiny_data, tmp_path):
    """ema = d * ema + (1 - d) * weights after each step (the first step's weights to start), over the
    parameters and the BatchNorm statistics alike; the averaged network is the one evaluated and saved."""
    decay = 0.8
    trainer = Trainer(small_config(tiny_data, ema=decay, epochs=1), tmp_path)
    parts, _ = trainer.build()
    order, flips = trainer.epoch_order(1)
    expected = None
    for step in range(trainer.steps_per_epoch):
        trainer.train_one(parts, order, flips, 1, step)
        now = {k: v.detach().clone() for k, v in parts.model.state_dict().items() if v.is_floating_point()}
        expected = now if expected is None else {k: decay * expected[k] + (1 - decay) * now[k] for k in now}
    averaged = parts.ema.module.state_dict()
    assert all(torch.allclose(averaged[k], expected[k], atol=1e-6) for k in expected)
    assert not torch.equal(averaged["conv1.weight"], parts.model.conv1.weight)
    assert trainer._scored_model(parts.model, parts.ema) is parts.ema.module
    Trainer(small_config(tiny_data, ema=decay, epochs=1), tmp_path / "run").run()
    saved = load_weights(tmp_path / "run" / runs.WEIGHTS).net.state_dict()
    checkpoint = torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=True)
    ema_weights = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(saved[k], ema_weights[k].to(saved[k].dtype)) for k in saved)
    assert not all(torch.equal(saved[k], checkpoint["model"][k].to(saved[k].dtype)) for k in saved)


def test_a_late_weight_average_starts_from_the_weights_of_its_start_and_resumes_exactly(tiny_data, tmp_path):
    """With ema_start 0.5 of 6 steps the average starts at step 4 from that step's weights; until then the trained
    network is scored; a run stopped before the start and resumed saves the uninterrupted run's weights."""
    decay = 0.8
    config = small_config(tiny_data, ema=decay, ema_start=0.5)
    trainer = Trainer(config, tmp_path / "steps")
    parts, _ = trainer.build()
    expected = None
    for epoch in (1, 2):
        order, flips = trainer.epoch_order(epoch)
        for step in range(trainer.steps_per_epoch):
            trainer.train_one(parts, order, flips, epoch, step)
            started = (epoch - 1) * trainer.steps_per_epoch + step >= 3
            assert (trainer._scored_model(parts.model, parts.ema) is parts.ema.module) == started
            if started:
                now = {k: v.detach().clone() for k, v in parts.model.state_dict().items() if v.is_floating_point()}
                expected = now if expected is None else {k: decay * expected[k] + (1 - decay) * now[k] for k in now}
    assert int(parts.ema.n_averaged) == 3
    averaged = parts.ema.module.state_dict()
    assert all(torch.allclose(averaged[k], expected[k], atol=1e-6) for k in expected)

    Trainer(config, tmp_path / "whole").run()
    event = threading.Event()
    Trainer(config, tmp_path / "resumed", callbacks=[stop_at_step(event, 2)], stop_event=event).run()
    assert Trainer(resume_config(tmp_path / "resumed"), tmp_path / "resumed").run(resume=True)["status"] == "finished"
    whole, resumed = (load_weights(tmp_path / name / runs.WEIGHTS).net.state_dict() for name in ("whole", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_bias_parameters_get_their_own_learning_rate(tiny_data, tmp_path, monkeypatch):
    config = small_config(tiny_data, optimizer="sgd", lr=0.1, bias_lr_scale=4.0, epochs=1)
    seen = []
    real_step = train_module.train_step

    def record(model, optimizer, *args, **kwargs):
        seen.append([group["lr"] for group in optimizer.param_groups])
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", record)
    Trainer(config, tmp_path).run()
    assert seen
    assert all(bias == pytest.approx(4 * weights) for weights, bias in seen)


def test_frozen_bn_scales_stay_at_one_while_the_shifts_train_and_a_resume_keeps_them(tiny_data, tmp_path):
    event = threading.Event()
    config = small_config(tiny_data, optimizer="sgd", lr=0.1, freeze_bn_scales=True)
    Trainer(config, tmp_path, callbacks=[stop_at_step(event, 1)], stop_event=event).run()
    assert Trainer(resume_config(tmp_path), tmp_path).run(resume=True)["status"] == "finished"
    saved = load_weights(tmp_path / runs.WEIGHTS).net
    norms = [m for m in saved.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert all(not torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)
    trained = Trainer(small_config(tiny_data, optimizer="sgd", lr=0.1), tmp_path / "trained").run()
    assert trained["status"] == "finished"
    scales = [m.weight for m in load_weights(tmp_path / "trained" / runs.WEIGHTS).net.modules()
              if isinstance(m, torch.nn.BatchNorm2d)]
    assert not all(torch.equal(w, torch.ones_like(w)) for w in scales), "unfrozen, the same run trains them"


# ---- what a GPU needs, checked on the CPU --------------------------------------------------------
def test_normalization_constants_are_built_once_per_device():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    normalize(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    before = data_module._constants.cache_info()
    normalize(images, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])  # lists hash as the tuples they are turned into
    assert data_module._constants.cache_info().hits == before.hits + 1


def test_resume_loads_the_checkpoint_on_the_cpu(tiny_data, tmp_path, monkeypatch):
    event = threading.Event()
    Trainer(small_config(tiny_data, optimizer="adam"), tmp_path, callbacks=[stop_at_step(event, 1)], stop_event=event).run()
    places = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: places.append(k.get("map_location")) or real_load(*a, **k))
    Trainer(resume_config(tmp_path), tmp_path).run(resume=True)
    assert places == ["cpu"]  # Adam's step counters stay on the host; load_state_dict moves the moments


def test_the_grad_scaler_is_on_for_fp16_only_and_resumes(tiny_data, tmp_path):
    event = threading.Event()
    config = small_config(tiny_data, precision="fp16", channels_last=False, lr=1e-3)
    Trainer(config, tmp_path, callbacks=[stop_at_step(event, 1)], stop_event=event).run()
    checkpoint = torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)
    assert "scaler" in checkpoint
    assert checkpoint["scaler"]["scale"] > 0
    resumed = Trainer(resume_config(tmp_path), tmp_path)
    parts, _ = resumed.build(resume=True)
    # Its scale and its count of steps since the last overflow: the resumed run scales as the stopped one would.
    assert parts.scaler.state_dict() == checkpoint["scaler"]
    assert checkpoint["scaler"]["_growth_tracker"] > 0
    assert resumed.run(resume=True)["status"] == "finished"
    event.clear()
    Trainer(small_config(tiny_data), tmp_path / "fp32", callbacks=[stop_at_step(event, 1)], stop_event=event).run()
    assert "scaler" not in torch.load(tmp_path / "fp32" / runs.CHECKPOINT, weights_only=True)


def test_step_seeds_differ_for_every_rank_beyond_64():
    config = make_config("original")
    seeds = {train_module._step_seed(config, 1, 0, rank) for rank in range(1024)}
    seeds |= {train_module._step_seed(config, 1, 1, rank) for rank in range(1024)}
    assert len(seeds) == 2048
    assert all(0 <= s < 2**63 for s in seeds)


def test_ranks_agree_only_at_log_steps_and_epoch_ends(tiny_data, tmp_path, monkeypatch):
    reduced = []
    real_reduce = Trainer._reduce
    monkeypatch.setattr(Trainer, "_reduce", lambda self, values: reduced.append(len(values)) or real_reduce(self, values))
    Trainer(small_config(tiny_data, log_every=2, epochs=1), tmp_path).run()
    # 3 steps with log_every 2: one check at step 2 and one at the epoch's end (step 3), then the epoch sums, the
    # broken-model and stop flags, and the running sums the checkpoint keeps: never one a step.
    assert reduced == [5, 5, 3, 2, 6]


def test_grad_cam_sends_the_image_to_the_models_device_and_returns_the_map_on_the_cpu(monkeypatch):
    """A model on another device (here a stand-in that records where its input lives) gets the image there."""
    model = build_model().eval()
    seen = []
    real_features = model.features
    monkeypatch.setattr(model, "features", lambda x: seen.append(x.device) or real_features(x))
    moved = []
    real_to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    cam, _ = grad_cam(model, torch.zeros(3, 32, 32, dtype=torch.uint8), (0.5,) * 3, (0.25,) * 3)
    assert moved
    assert moved[0] == next(model.parameters()).device
    assert cam.device.type == "cpu"
    assert cam.shape == (32, 32)


def test_wrapper_prefixes_are_stripped_in_any_order(tmp_path):
    state = build_model().state_dict()
    for prefix in ("module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."):
        path = tmp_path / "wrapped.pt"
        torch.save({prefix + k: v for k, v in state.items()}, path)
        model = load_weights(path).net
        assert torch.equal(model.conv1.weight, state["conv1.weight"]), prefix


@pytest.mark.e2e
def test_the_gpu_check_refuses_a_machine_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: bench/gpu_check.py is for running, not refusing")
    done = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr


def test_a_recipe_selection_run_never_scores_the_test_set(tiny_data, tmp_path, monkeypatch):
    scored = []
    real = evaluate_module.predict_logits  # every path to a score goes through it: the epochs, the TTA, the calibration
    monkeypatch.setattr(evaluate_module, "predict_logits", lambda model, images, *a, **k: scored.append(len(images)) or
                        real(model, images, *a, **k))
    config = small_config(tiny_data, score_test=False, val_size=40, limit_test=16, epochs=1, tta=True)
    assert Trainer(config, tmp_path).run()["status"] == "finished"
    assert len(scored) >= 3
    assert set(scored) == {40}
    epoch = next(r for r in runs.read_metrics(tmp_path) if r["kind"] == "epoch")
    assert "val_acc" in epoch
    assert "test_acc" not in epoch
    card = load_weights(tmp_path / runs.WEIGHTS).card
    assert card["scored_on"] == "val"
    assert "val_acc" in card
    assert "test_acc" not in card
    assert card["val_images"] == 40
    assert "tta_val_acc" in card
    assert "tta_test_acc" not in card
    assert "the test set was never scored" in card["measured"]
    with pytest.raises(ConfigError, match="score_test off needs a validation split"):
        small_config(tiny_data, score_test=False)


def test_scoring_the_test_set_changes_no_weight(tiny_data, tmp_path):
    # Why config.differences lets a run recorded with score_test on stand for one with it off.
    weights = []
    for score_test in (True, False):
        run_dir = tmp_path / str(score_test)
        config = small_config(tiny_data, score_test=score_test, val_size=8, dropout=0.1)
        assert Trainer(config, run_dir).run()["status"] == "finished"
        weights.append(load_file(run_dir / runs.WEIGHTS))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_split_seed_holds_out_the_same_images_whatever_the_runs_seed(tiny_data):
    def val_labels(**settings):
        config = make_config("original", data_dir=str(tiny_data), val_size=32, **settings)
        return train_module.load_data(config, torch.device("cpu")).val_y

    assert torch.equal(val_labels(seed=1, split_seed=0), val_labels(seed=0))
    assert torch.equal(val_labels(seed=1), val_labels(seed=1, split_seed=1))
    assert not torch.equal(val_labels(seed=1), val_labels(seed=0))


def test_shared_data_is_held_to_each_runs_batch(tiny_data, tmp_path):
    """A runner loads the data once for several runs: a run whose batch exceeds it is refused, not trained for no steps."""
    data = train_module.load_data(small_config(tiny_data), torch.device("cpu"))
    with pytest.raises(ConfigError, match="batch_size 32 is larger than the 24 training images"):
        Trainer(small_config(tiny_data, batch_size=32, limit_train=0), tmp_path, data=data)
    assert not any(tmp_path.iterdir())
