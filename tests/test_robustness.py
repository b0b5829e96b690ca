"""scripts/robustness.py end to end on tiny data, its corruptions, its committed results, and their figures."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import robustness  # scripts/robustness.py, on pytest's pythonpath
import torch
from helpers import REPO

from resnet.data import load_split
from resnet.model import build_model
from resnet.studio.robustness_plots import robustness_figure, robustness_text
from resnet.weights import make_card, save_weights

SCRIPT = REPO / "scripts" / "robustness.py"
COMMITTED = REPO / "results" / "robustness.json"
needs_package = pytest.mark.skipif(
    importlib.util.find_spec("imagecorruptions") is None,
    reason="imagecorruptions is not installed (pip install -r scripts/requirements-robustness.txt)")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model().eval()
    return save_weights(model, tmp_path_factory.mktemp("robust") / "tiny.safetensors", make_card(model, (0.5,) * 3, (0.25,) * 3))


def check_results(results: dict, images: int) -> None:
    table = results["accuracy"]
    assert len(table) == 15
    assert all(len(row) == 5 for row in table.values())
    assert all(0 <= value <= 1 for row in table.values() for value in row)
    assert results["images"] == images
    assert 0 <= results["clean_acc"] <= 1
    assert results["mean_acc"] == pytest.approx(np.mean(list(table.values())))
    assert results["per_severity_mean"] == pytest.approx(np.mean(list(table.values()), axis=0).tolist())
    worst = results["worst_corruption"]
    assert worst["mean_acc"] == pytest.approx(min(np.mean(row) for row in table.values()))
    assert np.mean(table[worst["name"]]) == pytest.approx(worst["mean_acc"])
    assert results["packages"]["imagecorruptions-imaug"]
    assert results["command"].startswith("python scripts/robustness.py")
    assert results["machine"]
    assert results["reference"]["mean_acc"] == 0.7465


@pytest.mark.e2e
@needs_package
@pytest.mark.slow
def test_the_script_runs_end_to_end_on_tiny_data(tiny_data, tiny_model, tmp_path):
    out = tmp_path / "robustness.json"
    command = [sys.executable, str(SCRIPT), "--weights", str(tiny_model), "--data-dir", str(tiny_data), "--limit", "4",
               "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    check_results(results, images=4)
    assert results["parameters"] == "cifar-10-c"
    assert "first 4" in results["image_selection"]
    assert json.loads(done.stdout.strip().splitlines()[-1])["mean_acc"] == results["mean_acc"]


@pytest.mark.e2e
def test_the_script_refuses_a_negative_limit_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--limit", "-1", "--out", str(tmp_path / "r.json")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--limit must be 0" in done.stderr
    assert not (tmp_path / "r.json").exists()


@needs_package
@pytest.mark.parametrize("parameters", ["cifar-10-c", "imagenet-c"])
def test_every_corruption_keeps_the_shape_changes_the_images_and_repeats_with_its_seed(tiny_data, parameters):
    images = load_split(tiny_data, train=False)[0][:2]
    frost = robustness._frost_pictures()
    from imagecorruptions import get_corruption_names

    for name in get_corruption_names("common"):
        low, high = (robustness.corrupted_batch(images, name, severity, 7, parameters, frost) for severity in (1, 5))
        assert low.shape == images.shape
        assert low.dtype == torch.uint8
        assert (high.float() - images.float()).abs().mean() > 0.5, name
        if parameters == "cifar-10-c":  # the package's own glass blur seeds itself from the clock
            assert torch.equal(robustness.corrupted_batch(images, name, 5, 7, parameters, frost), high), name


def test_the_cifar10c_table_and_the_stress_module_cover_the_benchmark_once():
    from resnet.stress import CORRUPTIONS

    assert set(robustness.SHARED) <= set(CORRUPTIONS)
    assert not set(robustness.SHARED) & set(robustness.CIFAR10C)
    assert len(robustness.SHARED) + len(robustness.CIFAR10C) == 15
    assert all(len(levels) == 5 for levels in robustness.CIFAR10C.values())


@pytest.mark.skipif(not COMMITTED.is_file(), reason="results/robustness.json is not committed yet")
def test_the_committed_results_are_complete_and_consistent():
    results = json.loads(COMMITTED.read_text())
    check_results(results, images=results["images"])
    assert results["parameters"] == "cifar-10-c"
    assert results["images"] >= 2000
    assert results["clean_acc"] > results["mean_acc"]


def test_the_heatmap_draws_results_and_says_when_there_are_none():
    table = {f"corruption_{i}": [0.9 - 0.1 * s - 0.01 * i for s in range(5)] for i in range(15)}
    results = {"accuracy": table, "severities": [1, 2, 3, 4, 5], "images": 4, "clean_acc": 0.95, "mean_acc": 0.6,
               "per_severity_mean": [0.8, 0.7, 0.6, 0.5, 0.4], "worst_corruption": {"name": "corruption_14", "mean_acc": 0.56},
               "parameters": "cifar-10-c", "image_selection": "the first 4", "parameters_note": "close to CIFAR-10-C",
               "reference": {"model": "ResNet-18", "data": "CIFAR-10-C", "source": "somewhere", "mean_acc": 0.7465,
                             "per_severity_mean": [0.876, 0.8234, 0.762, 0.6917, 0.5793],
                             "worst_corruption": {"name": "gaussian_noise", "mean_acc": 0.4706}}}
    figure = robustness_figure(results)
    heatmap = figure.data[0]
    assert np.array(heatmap.z).shape == (15, 5)
    assert heatmap.y[0] == "corruption 0"
    assert heatmap.text[0][0] == "90%"
    assert "mean 60.0%" in figure.layout.title.text
    text = robustness_text(results)
    assert "**60.0%**" in text
    assert "worst corruption 14 (56.0%)" in text
    assert "74.65%" in text
    assert "57.93%" in text
    assert "not been measured" in robustness_text(None)
    assert robustness_figure(None).layout.annotations
