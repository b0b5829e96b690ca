"""scripts/ship_weights.py on tiny finished runs: the card's test figures are the shipped weights', and a run
with a validation split is calibrated on that split and judged on the test set."""

import json
from pathlib import Path

import pytest
import ship_weights  # scripts/, on pytest's pythonpath
import torch

from resnet import runs
from resnet.calibration import calibration_fields
from resnet.config import make_config
from resnet.data import load_split
from resnet.studio.model_card import LOW_CONFIDENCE, shipped_summary
from resnet.train import Trainer, load_data
from resnet.weights import load_weights


def finished(tiny_data, run_dir, **settings) -> Path:
    config = make_config("quick", data_dir=str(tiny_data), limit_train=96, limit_test=40, batch_size=32, epochs=1,
                         device="cpu", precision="fp32", **settings)
    assert Trainer(config, run_dir).run()["status"] == "finished"
    return run_dir


@pytest.mark.slow
def test_a_run_with_a_validation_split_ships_calibrated_on_it(tiny_data, tmp_path):
    run_dir = finished(tiny_data, tmp_path / "run", val_size=60, seed=3, score_test=False)  # as a chosen recipe's run
    out = tmp_path / "shipped" / "model.safetensors"
    assert ship_weights.main([str(run_dir), "--out", str(out), "--data-dir", str(tiny_data)]) == 0
    shipped = load_weights(out)
    card = shipped.card
    images, labels = load_split(tiny_data, train=False)  # every test image, whatever the run scored per epoch
    logits = shipped.logits(images)
    assert card["test_images"] == len(labels)
    assert card["test_acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    split = load_data(make_config("quick", data_dir=str(tiny_data), val_size=60, seed=3), torch.device("cpu"))
    expected = calibration_fields(shipped.logits(split.val_x), split.val_y, logits, labels, "", "")
    assert card["temperature"] == pytest.approx(expected["temperature"], rel=1e-5)
    assert card["calibration"]["fit_images"] == 60
    assert card["calibration"]["eval_images"] == len(labels)
    assert card["calibration"]["fitted_on"].startswith("the 60 validation images held out of training (split seed 3)")
    assert card["calibration"]["after"] == pytest.approx(expected["calibration"]["after"], rel=1e-4, abs=1e-6)
    assert card["low_confidence"]["threshold"] == pytest.approx(expected["low_confidence"]["threshold"], abs=1e-6)
    assert card["low_confidence"]["measured_on"] == f"the {len(labels)} test images"
    assert card["low_confidence"]["calibrated"]
    assert card["source_run"] == "run"
    assert "--val-size 60" in card["reproduce"]
    # The run scored only its split; what ships was scored on the test set, and the card says that alone.
    assert card["scored_on"] == "test"
    assert card["measured"].startswith("on the test set")
    assert "never scored" not in shipped_summary(card)
    printed = json.loads((tmp_path / "shipped" / "model.json").read_text())
    assert printed == card


@pytest.mark.slow
def test_a_run_without_one_ships_uncalibrated(tiny_data, tmp_path):
    run_dir = finished(tiny_data, tmp_path / "run")
    out = tmp_path / "model.safetensors"
    assert ship_weights.main([str(run_dir), "--out", str(out), "--data-dir", str(tiny_data)]) == 0
    card = load_weights(out).card
    assert "temperature" not in card
    assert "calibration" not in card
    assert card["low_confidence"]["threshold"] == LOW_CONFIDENCE
    assert "calibrated" not in card["low_confidence"]


def test_only_a_finished_run_ships(tmp_path, capsys):
    runs.run_path(tmp_path, "run").mkdir()
    with pytest.raises(SystemExit):
        ship_weights.main([str(tmp_path / "run"), "--out", str(tmp_path / "model.safetensors")])
    assert "is not a finished run" in capsys.readouterr().err
    assert not (tmp_path / "model.safetensors").exists()
