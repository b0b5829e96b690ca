"""ONNX export (resnet.export): the graph in onnxruntime agrees with PyTorch, says what it expects, and runs alone."""

import argparse
import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO, PublishedResNet, example, randomize_batchnorm

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from resnet import export  # noqa: E402
from resnet.constants import CLASSES, PUBLISHED_MEAN, PUBLISHED_STD  # noqa: E402
from resnet.data import load_split  # noqa: E402
from resnet.evaluate import predict_logits  # noqa: E402
from resnet.images import prepare  # noqa: E402
from resnet.model import build_model  # noqa: E402
from resnet.weights import DEFAULT_WEIGHTS, WeightsError, load_weights, make_card, save_weights  # noqa: E402


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped weights exported with a dynamic batch axis: (onnxruntime session, path)."""
    path = export.export_onnx(DEFAULT_WEIGHTS, tmp_path_factory.mktemp("onnx") / "shipped.onnx", dynamic_batch=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), path


def run(session, images: torch.Tensor):
    logits, probabilities = session.run(list(export.OUTPUTS), {export.INPUT: images.numpy()})
    return torch.from_numpy(logits), torch.from_numpy(probabilities)


def test_shipped_graph_matches_pytorch_on_real_test_images(shipped, real_data):
    images, _ = load_split(real_data, train=False)
    images = images[:1000]
    loaded = load_weights(DEFAULT_WEIGHTS)
    model, card = loaded.net, loaded.card
    expected = predict_logits(model, images, card["mean"], card["std"])  # eval mode, fp32
    logits, probabilities = run(shipped[0], images)
    assert (logits.argmax(1) == expected.argmax(1)).float().mean().item() >= 0.999
    assert (probabilities - (expected / (card.get("temperature") or 1.0)).softmax(1)).abs().max().item() <= 1e-4
    assert (logits - expected).abs().max().item() <= 1e-3


def test_metadata_says_what_the_graph_expects(shipped):
    session, _ = shipped
    props = session.get_modelmeta().custom_metadata_map
    card = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert json.loads(props["classes"]) == card["classes"] == list(CLASSES)
    assert json.loads(props["mean"]) == card["mean"]
    assert json.loads(props["std"]) == card["std"]
    assert props["temperature"] == (repr(float(card["temperature"])) if "temperature" in card else "uncalibrated")
    assert float(props["test_acc"]) == card["test_acc"]
    assert "inside the graph" in props["normalization"]
    assert props["format"] == export.FORMAT
    (graph_input,) = session.get_inputs()
    assert (graph_input.name, graph_input.type, graph_input.shape[1:]) == (export.INPUT, "tensor(uint8)", [3, 32, 32])


def test_dynamic_batch_takes_1_and_7_and_a_fixed_graph_only_1(shipped, tmp_path):
    images = torch.randint(0, 256, (7, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    single, _ = run(shipped[0], images[:1])
    seven, probabilities = run(shipped[0], images)
    assert single.shape == (1, 10)
    assert seven.shape == probabilities.shape == (7, 10)
    assert torch.allclose(single[0], seven[0], atol=1e-4)
    fixed = ort.InferenceSession(str(export.export_onnx(DEFAULT_WEIGHTS, tmp_path / "fixed.onnx")),
                                 providers=["CPUExecutionProvider"])
    assert fixed.get_inputs()[0].shape == [1, 3, 32, 32]
    assert torch.allclose(run(fixed, images[:1])[0], single, atol=1e-5)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(fixed, images)


def test_a_published_state_dict_exports_with_the_published_normalization(tmp_path):
    torch.manual_seed(0)
    published = randomize_batchnorm(PublishedResNet()).eval()
    torch.save(published.state_dict(), tmp_path / "project1_model.pt")  # what the published code did
    session = ort.InferenceSession(str(export.export_onnx(tmp_path / "project1_model.pt", tmp_path / "p.onnx", True)),
                                   providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["std"]) == list(PUBLISHED_STD)
    assert json.loads(props["mean"]) == list(PUBLISHED_MEAN)
    assert props["temperature"] == "uncalibrated"
    assert "test_acc" not in props
    images = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        expected = published((images.float() / 255 - torch.tensor(PUBLISHED_MEAN).view(1, 3, 1, 1))
                             / torch.tensor(PUBLISHED_STD).view(1, 3, 1, 1))
    logits, _ = run(session, images)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_a_calibrated_card_puts_its_temperature_in_the_graph(tmp_path):
    torch.manual_seed(0)
    model = build_model().eval()
    path = save_weights(model, tmp_path / "calibrated.safetensors", make_card(model, temperature=1.7))
    session = ort.InferenceSession(str(export.export_onnx(path, tmp_path / "c.onnx")), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["temperature"] == "1.7"
    logits, probabilities = run(session, prepare(example())[None])
    assert torch.allclose(probabilities, (logits / 1.7).softmax(1), atol=1e-6)
    assert not torch.allclose(probabilities, logits.softmax(1), atol=1e-3)
    card = json.loads(path.with_suffix(".json").read_text())
    (tmp_path / "calibrated.json").write_text(json.dumps({**card, "temperature": -1}))
    with pytest.raises(WeightsError, match="'temperature' must be a positive number"):
        export.export_onnx(path, tmp_path / "bad.onnx")


def test_the_cli_functions_export_and_name_missing_packages(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    export.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--onnx", str(tmp_path / "out.onnx"), "--dynamic-batch"])
    assert args.weights == str(DEFAULT_WEIGHTS)
    assert export.cmd_export(args) == 0
    assert "input images uint8 [N, 3, 32, 32]" in capsys.readouterr().out
    assert ort.InferenceSession(str(tmp_path / "out.onnx")).get_inputs()[0].shape[0] == "batch"
    monkeypatch.setattr(export, "EXPORTER_PACKAGES", ("onnx", "no_such_exporter_package"))
    with pytest.raises(export.ExportError, match="pip install no_such_exporter_package"):
        export.cmd_export(args)


@pytest.mark.e2e
def test_the_onnxruntime_example_runs(shipped):
    """scripts/onnx_predict.py, the example in docs/http-api.md: onnxruntime, numpy and Pillow only."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "onnx_predict.py"), str(shipped[1]), example()],
                            capture_output=True, text=True, timeout=120, check=True)
    loaded = load_weights(DEFAULT_WEIGHTS)
    model, card = loaded.net, loaded.card
    logits = predict_logits(model, prepare(example())[None], card["mean"], card["std"])
    probabilities = (logits / (card.get("temperature") or 1.0)).softmax(1)[0]
    assert result.stdout.strip() == f"{card['classes'][int(probabilities.argmax())]} {float(probabilities.max()):.1%}"
    assert "torch" not in (REPO / "scripts" / "onnx_predict.py").read_text()
