"""The command line: bad input fails with one clear line before any work; evaluate --json is machine-readable."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, image_bytes

from resnet import build_model, runs
from resnet.cli import main
from resnet.constants import CLASSES
from resnet.weights import load_weights, make_card, save_weights

FAST = ["--data-dir", "{data}", "--limit-train", "24", "--limit-test", "16", "--batch-size", "8", "--epochs", "1",
        "--precision", "fp32", "--device", "cpu", "--log-every", "1"]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """``train`` installs SIGINT/SIGTERM handlers (so Ctrl-C stops cleanly); give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of ``python -m resnet ARGV``, run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def fast(data):
    return [a.replace("{data}", str(data)) for a in FAST]


# ---- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("command", "flag"), [("train", "--resume"), ("evaluate", "--json"), ("predict", "--top")])
def test_help_for_each_subcommand(capsys, command, flag):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert flag in out
    assert out.startswith(f"usage: python -m resnet {command}")


@pytest.mark.e2e
def test_help_as_a_module_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "resnet", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert all(c in done.stdout for c in ("train", "evaluate", "predict"))


# ---- train: refused before any work -------------------------------------------------------------
@pytest.mark.parametrize(("flags", "words"), [
    (["--lr", "0"], "lr must be positive"),
    (["--lr", "-0.1"], "lr must be positive"),
    (["--dropout", "1"], "dropout must be in [0, 1)"),
    (["--dropout", "-0.5"], "dropout must be in [0, 1)"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--batch-size", "-8"], "batch_size must be at least 1"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--blocks", "0,1,1,1"], "blocks must be four whole numbers"),
    (["--blocks", "1,1,1"], "blocks must be four whole numbers from 1 to 8, like 1,1,1,1; got [1, 1, 1]"),
    (["--batch-size", "64"], "batch_size 64 is larger than the 24 training images"),
    (["--val-size", "1"], "val_size must be 0 or at least 2"),
    (["--val-size", "50000"], "val_size must be in [0, 50000)"),
    (["--val-size", "320"], "val_size 320 leaves no training images: the data set has 320"),
    (["--budget", "5 minutes"], "budget must be a number of seconds, minutes or hours such as 90s, 5m or 1h"),
    (["--budget", "5s"], "budget must be between 20s and 24h"),
    (["--budget", "1m", "--steps", "10"], "--budget plans the run's steps itself: give --budget or --steps, not both"),
    (["--steps", "-1"], "steps must be at least 0"),
])
def test_invalid_train_settings_fail_with_one_line(capsys, tiny_data, tmp_path, flags, words):
    code, out, err = run_cli(capsys, "train", "--out", tmp_path / "run", *fast(tiny_data), *flags)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("error: ")
    assert words in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "words"), [
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["--lr", "inf"], "argument --lr: 'inf' is not a finite number"),
    (["--lr", "fast"], "argument --lr: 'fast' is not a number"),
    (["--dropout", "nan"], "argument --dropout: 'nan' is not a finite number"),
    (["--batch-size", "1.5"], "argument --batch-size: invalid int value"),
    (["--optimizer", "lamb"], "argument --optimizer: invalid choice: 'lamb'"),
    (["--blocks", "1,x,1,1"], "argument --blocks: blocks must be four whole numbers from 1 to 8, like 1,1,1,1; got '1,x,1,1'"),
])
def test_malformed_train_flags_fail_in_the_parser(capsys, tiny_data, tmp_path, flags, words):
    code, out, err = run_cli(capsys, "train", "--out", tmp_path / "run", *fast(tiny_data), *flags)
    assert code == 2
    last = err.strip().splitlines()[-1]  # argparse prints its usage above the one error line
    assert "error:" in last, err
    assert words in last, err
    assert not (tmp_path / "run").exists()


def test_missing_data_names_the_folder_and_download(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "run", "--data-dir", tmp_path / "nothing", "--precision", "fp32")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "CIFAR-10 not found" in err
    assert str(tmp_path / "nothing") in err
    assert "--download" in err
    assert not (tmp_path / "run").exists()


def test_out_is_required(capsys):
    code, _, err = run_cli(capsys, "train")
    assert code == 2
    assert err == "error: --out RUN_DIR is required (or --resume RUN_DIR)\n"


@pytest.mark.parametrize(("flags", "named"), [(["--lr", "0.1"], "--lr"), (["--batch-size", "8"], "--batch-size"),
                                          (["--out", "x"], "--out"), (["--preset", "fast"], "--preset"),
                                          (["--lr", "0.1", "--data-dir", "d", "--seed", "3"], "--lr, --seed")])
def test_resume_refuses_flags_that_change_the_run_naming_exactly_those(capsys, tmp_path, flags, named):
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path, *flags)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "it takes only --epochs, --device, --data-dir" in err
    assert err.strip().endswith(f"(got {named})")


def test_resume_of_a_folder_without_a_run(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "none")
    assert code == 2
    assert "no config.json" in err
    assert "Traceback" not in err


# ---- train: runs ----------------------------------------------------------------------------
@pytest.mark.slow
def test_train_then_resume_with_more_epochs(capsys, tiny_data, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--preset", "original", "--out", run, *fast(tiny_data))
    assert code == 0, err
    assert "finished: test accuracy" in out
    assert runs.read_status(run)["status"] == "finished"
    assert json.loads((run / runs.CONFIG).read_text())["batch_size"] == 8

    code, _, err = run_cli(capsys, "train", "--out", run, *fast(tiny_data))
    assert code == 2
    assert "already holds a run" in err

    code, out, err = run_cli(capsys, "train", "--resume", run, "--epochs", "2")
    assert code == 0, err
    assert [r["epoch"] for r in runs.read_metrics(run) if r["kind"] == "epoch"] == [1, 2]

    code, _, err = run_cli(capsys, "train", "--resume", run, "--epochs", "1")
    assert code == 2
    assert "may only be raised" in err


def test_a_two_step_run_that_blows_up_ends_diverged_and_publishes_nothing(capsys, tiny_data, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--out", run, *fast(tiny_data), "--limit-train", "16", "--optimizer", "sgd",
                             "--lr", "1e4")
    assert code == 3, err
    assert runs.read_status(run)["status"] == "diverged"
    assert "diverged" in out
    assert "finished" not in out
    assert not (run / runs.WEIGHTS).exists()
    assert not (run / runs.CARD).exists()
    assert not (run / runs.CHECKPOINT).exists()
    assert not runs.list_runs(tmp_path)[0]["has_weights"]


@pytest.mark.slow
def test_resume_takes_a_moved_data_folder_and_a_device(capsys, tiny_data, tmp_path):
    run, moved = tmp_path / "run", tmp_path / "moved"
    code, _, err = run_cli(capsys, "train", "--preset", "original", "--out", run, *fast(tiny_data))
    assert code == 0, err
    shutil.copytree(tiny_data, moved)
    code, out, err = run_cli(capsys, "train", "--resume", run, "--epochs", "2", "--data-dir", moved, "--device", "cpu")
    assert code == 0, err
    assert json.loads((run / runs.CONFIG).read_text())["data_dir"] == str(moved)
    assert [r["epoch"] for r in runs.read_metrics(run) if r["kind"] == "epoch"] == [1, 2]


def test_divergence_exits_3_with_a_message_and_no_traceback(capsys, tiny_data, tmp_path):
    code, out, err = run_cli(capsys, "train", "--out", tmp_path / "run", *fast(tiny_data), "--optimizer", "sgd", "--lr", "1e30")
    assert code == 3
    assert "diverged at epoch 1, step " in out
    assert "smaller learning rate" in out
    assert "Traceback" not in err + out
    assert runs.read_status(tmp_path / "run")["status"] == "diverged"


# ---- evaluate and predict ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = build_model()
    return save_weights(model, tmp_path_factory.mktemp("w") / "m.safetensors", make_card(model))


def test_evaluate_json_last_line(capsys, tiny_data, weights):
    code, out, _ = run_cli(capsys, "evaluate", "--weights", weights, "--data-dir", tiny_data, "--limit-test", "20", "--json")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert isinstance(result, dict)
    assert 0 <= result["acc"] <= 1
    assert result["loss"] > 0
    assert len(result["per_class_acc"]) == 10
    assert len(result["confusion"]) == 10
    assert all(len(row) == 10 for row in result["confusion"])
    assert sum(map(sum, result["confusion"])) == result["count"] == 20


def test_evaluate_text_lists_every_class(capsys, tiny_data, weights):
    code, out, _ = run_cli(capsys, "evaluate", "--weights", weights, "--data-dir", tiny_data, "--limit-test", "20", "--tta")
    assert code == 0
    assert "test accuracy" in out
    assert "flip TTA" in out
    assert all(name in out for name in ("airplane", "truck"))


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: p.write_bytes(b"\x80\x02junk"), "not a plain PyTorch state_dict"),
    (lambda p: None, "no such weights file"),
])
def test_evaluate_with_bad_weights_fails_with_one_line(capsys, tiny_data, tmp_path, make, words):
    make(tmp_path / "w.pt")
    code, _, err = run_cli(capsys, "evaluate", "--weights", tmp_path / "w.pt", "--data-dir", tiny_data)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert words in err


@pytest.mark.parametrize("classes", [list(CLASSES[:5]), [*CLASSES[1:], CLASSES[0]]], ids=["five", "reordered"])
def test_evaluate_refuses_weights_whose_classes_are_not_cifar10s(capsys, tiny_data, tmp_path, classes):
    model = build_model(num_classes=len(classes))
    path = save_weights(model, tmp_path / "w.safetensors", make_card(model, classes=classes))
    code, _, err = run_cli(capsys, "evaluate", "--weights", path, "--data-dir", tiny_data)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"classifies {len(classes)} classes ({', '.join(classes)}), not CIFAR-10's 10 in their order" in err


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_device_that_is_not_there_fails_with_one_line(capsys, tiny_data, weights, command):
    code, _, err = run_cli(capsys, command, "--weights", weights, "--device", "gpu",
                           *(["--data-dir", tiny_data] if command == "evaluate" else ["missing.png"]))
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert "unknown device 'gpu'" in err


def test_convert_writes_safetensors_that_predict_as_the_pt_did(capsys, tmp_path):
    torch.manual_seed(0)
    torch.save(build_model().eval().state_dict(), tmp_path / "project1_model.pt")
    code, out, _ = run_cli(capsys, "convert", tmp_path / "project1_model.pt", tmp_path / "out" / "model.safetensors")
    assert code == 0
    assert "model.json" in out
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    before, after = (load_weights(path).logits(images)
                     for path in (tmp_path / "project1_model.pt", tmp_path / "out" / "model.safetensors"))
    assert torch.equal(before, after)
    code, _, err = run_cli(capsys, "convert", tmp_path / "project1_model.pt", tmp_path / "model.pt")
    assert code == 2
    assert "must end in .safetensors" in err
    assert not (tmp_path / "model.pt").exists()


def test_evaluate_with_missing_data(capsys, tmp_path, weights):
    code, _, err = run_cli(capsys, "evaluate", "--weights", weights, "--data-dir", tmp_path)
    assert code == 2
    assert "CIFAR-10 not found" in err


def test_predict_json_and_a_bad_file(capsys, tmp_path, weights):
    (tmp_path / "red.png").write_bytes(image_bytes((50, 40)))
    (tmp_path / "notes.jpg").write_text("hello")
    code, out, err = run_cli(capsys, "predict", "--weights", weights, "--json", "--top", "2",
                             tmp_path / "red.png", tmp_path / "notes.jpg")
    assert code == 1  # one of the two failed
    row = json.loads(out.strip())
    assert row["path"].endswith("red.png")
    assert len(row["top"]) == 2
    assert abs(sum(row["top"].values())) <= 1.0 + 1e-6
    assert "notes.jpg" in err
    assert "not an image" in err
    assert "Traceback" not in err


def test_every_error_a_person_can_cause_is_a_user_error(capsys):
    """One base for them all: the command line and the studio each catch it once and show its sentence."""
    from resnet.batch import BatchError, FolderError
    from resnet.config import ConfigError
    from resnet.data import DataMissingError
    from resnet.errors import UserError
    from resnet.export import ExportError
    from resnet.images import ImageError
    from resnet.runs import RunError
    from resnet.stress import StressError
    from resnet.studio.jobs import OwnerError, QueueFullError
    from resnet.studio.limits import LimitError
    from resnet.weights import WeightsError
    for error in (BatchError, FolderError, ConfigError, DataMissingError, ExportError, ImageError, OwnerError,
                  QueueFullError, LimitError, RunError, StressError, WeightsError):
        assert issubclass(error, UserError), error
    assert main(["train", "--budget", "5 min", "--out", "unused"]) == 2
    assert "budget" in capsys.readouterr().err
    assert not Path("unused").exists()
