"""The Classifier every loader returns: the network and its card's facts, used the same way by every front end."""

import pytest
import torch

from resnet import Classifier, build_model, load_weights, save_weights
from resnet.evaluate import evaluate, predict_logits
from resnet.explain import grad_cam
from resnet.weights import make_card

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model().eval()
    card = make_card(model, MEAN, STD, temperature=0.5)
    return model, save_weights(model, tmp_path_factory.mktemp("w") / "w.safetensors", card)


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_a_loaded_classifier_carries_its_cards_normalization_classes_and_temperature(saved):
    _, path = saved
    classifier = load_weights(path)
    assert isinstance(classifier, Classifier)
    assert not classifier.net.training
    assert classifier.mean == MEAN
    assert classifier.std == STD
    assert classifier.temperature == 0.5
    assert len(classifier.classes) == 10
    assert classifier.to("cpu").card is classifier.card


def test_logits_normalize_with_the_card_one_image_or_many(saved, images):
    model, path = saved
    classifier = load_weights(path)
    batch = classifier.logits(images)
    assert torch.allclose(batch, predict_logits(model, images, MEAN, STD), atol=1e-5)
    assert torch.allclose(classifier.logits(images[2]), batch[2], atol=1e-5)
    assert not torch.allclose(batch, predict_logits(model, images, (0.5,) * 3, (0.25,) * 3), atol=1e-3)
    assert torch.allclose(classifier.logits(images, tta=True), predict_logits(model, images, MEAN, STD, tta=True), atol=1e-5)


def test_probabilities_divide_by_the_temperature_and_predict_ranks_every_class(saved, images):
    _, path = saved
    classifier = load_weights(path)
    logits = classifier.logits(images[0])
    assert torch.allclose(classifier.probabilities(logits), (logits / 0.5).softmax(0))
    ranked = classifier.predict(images[0])
    assert list(ranked.values()) == sorted(ranked.values(), reverse=True)
    assert set(ranked) == set(classifier.classes)
    assert max(ranked, key=ranked.get) == classifier.classes[int(logits.argmax())]
    with pytest.raises(ValueError, match="one image"):
        classifier.predict(images)
    uncalibrated = Classifier(classifier.net, {**classifier.card, "temperature": None})
    assert uncalibrated.temperature is None
    assert torch.allclose(uncalibrated.probabilities(logits), logits.softmax(0))


def test_evaluate_and_explain_are_the_module_functions_with_the_cards_facts(saved, images):
    model, path = saved
    classifier = load_weights(path)
    labels = torch.arange(6) % 10
    assert classifier.evaluate(images, labels) == evaluate(model, images, labels, MEAN, STD)
    cam, target = classifier.explain(images[0], target=3)
    expected, _ = grad_cam(model, images[0], MEAN, STD, target=3)
    assert target == 3
    assert torch.allclose(cam, expected)
