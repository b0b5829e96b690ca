"""The shipped weights agree with their card, and score what the card says by independent code."""

import json

import pytest
import torch
from safetensors.torch import load_file

from resnet import CLASSES, build_model, count_parameters, load_weights
from resnet.weights import DEFAULT_WEIGHTS, card_path

if not DEFAULT_WEIGHTS.is_file():  # a checkout without the shipped weights (they are large files)
    pytest.skip(f"{DEFAULT_WEIGHTS.name} is not committed yet", allow_module_level=True)
CARD = json.loads(card_path(DEFAULT_WEIGHTS).read_text())


def test_card_matches_weights():
    state = load_file(DEFAULT_WEIGHTS)
    reference = build_model(CARD["blocks"], CARD["dropout"], CARD["num_classes"]).state_dict()
    assert set(state) == set(reference)
    assert all(state[k].shape == reference[k].shape for k in reference)
    assert CARD["blocks"] == [1, 1, 1, 1]
    assert CARD["classes"] == list(CLASSES)
    assert CARD["parameters"] == count_parameters(build_model(CARD["blocks"])) == 4_903_242
    assert len(CARD["per_class_acc"]) == 10
    assert len(CARD["confusion"]) == 10
    assert sum(map(sum, CARD["confusion"])) == CARD["test_images"] == 10_000
    assert len(CARD["curve"]) == CARD["training"]["epochs"]


def test_shipped_examples_are_mostly_right():
    from resnet.images import prepare

    folder = DEFAULT_WEIGHTS.parent.parent / "assets" / "examples"
    index = json.loads((folder / "index.json").read_text())["images"]
    images = torch.stack([prepare(folder / item["file"]) for item in index])
    predicted = load_weights(DEFAULT_WEIGHTS).logits(images).argmax(1).tolist()
    right = sum(CLASSES[p] == item["label"] for p, item in zip(predicted, index, strict=True))
    assert len(index) == 30
    assert right >= 27


@pytest.mark.slow
def test_card_accuracy_reproduced_by_torchvision_pipeline(real_data):
    """torchvision's reader, transforms and DataLoader, not our data path, with the card's mean/std."""
    from torchvision import datasets, transforms

    dataset = datasets.CIFAR10(
        str(real_data), train=False, download=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(CARD["mean"], CARD["std"])]),
    )
    model = load_weights(DEFAULT_WEIGHTS).net  # the network alone: the card's mean/std come in through torchvision
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=500):
            correct += (model(x).argmax(1) == y).sum().item()
    assert correct / len(dataset) == pytest.approx(CARD["test_acc"], abs=2e-4)
    assert CARD["test_acc"] >= 0.93
