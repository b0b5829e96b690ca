"""Temperature scaling, ECE, the low-confidence threshold, and calibrated predictions."""

import json
import math
import shutil

import calibrate_shipped  # scripts/, on pytest's pythonpath
import pytest
import torch

from resnet import calibration, evaluate
from resnet.calibration import (
    calibrated_probabilities,
    calibration_fields,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    halves,
    nll,
    reliability,
)
from resnet.classifier import Classifier
from resnet.constants import CLASSES
from resnet.data import load_split
from resnet.evaluate import fit_run_temperature
from resnet.model import build_model
from resnet.studio import model_card
from resnet.weights import DEFAULT_WEIGHTS, WeightsError, card_path, load_weights, make_card, save_weights


def sampled(count: int, temperature: float, seed: int = 0):
    """Logits and labels drawn from softmax(logits / temperature): that temperature is the right answer."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, 10, generator=generator) * 4
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=generator)[:, 0]
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with(true_temperature):
    logits, labels = sampled(20_000, true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    assert nll(logits, labels, fitted) < min(nll(logits, labels, fitted * 1.05), nll(logits, labels, fitted / 1.05))


def test_the_fit_is_deterministic_and_stays_in_its_bounds():
    logits, labels = sampled(2_000, 1.0)
    assert fit_temperature(logits, labels) == fit_temperature(logits.clone(), labels.clone())
    right = logits.argmax(1)
    always_right = fit_temperature(logits, right)
    assert always_right == pytest.approx(calibration.TEMPERATURE_BOUNDS[0], rel=1e-6)  # as sharp as the bounds allow
    with pytest.raises(ValueError, match="no logits"):
        fit_temperature(logits[:0], labels[:0])


def test_the_temperature_depends_only_on_the_split_it_is_fitted_on():
    logits, labels = sampled(4_000, 0.7, seed=1)
    fit, held = halves(len(labels))
    other_logits, other_labels = sampled(2_000, 3.0, seed=2)  # a disjoint split that would want another T
    one = calibration_fields(logits[fit], labels[fit], logits[held], labels[held], "fit", "held")
    two = calibration_fields(logits[fit], labels[fit], other_logits, other_labels, "fit", "other")
    assert one["temperature"] == two["temperature"] == fit_temperature(logits[fit], labels[fit])
    assert one["low_confidence"]["threshold"] == two["low_confidence"]["threshold"]
    assert one["calibration"]["after"] != two["calibration"]["after"]  # what is reported does come from the other split
    assert fit_temperature(other_logits, other_labels) == pytest.approx(3.0, rel=0.15)  # and that split alone says otherwise
    assert set(fit.tolist()).isdisjoint(held.tolist())
    assert len(fit) + len(held) == len(labels)


def test_calibrated_probabilities_sum_to_one_and_keep_the_arg_max():
    logits, _ = sampled(500, 1.0)
    for temperature in (0.05, 0.58, 1.0, 7.0):
        probs = calibrated_probabilities(logits * 30, temperature)  # large logits: no overflow at small T
        assert torch.isfinite(probs).all()
        assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-5)
        assert torch.equal(probs.argmax(1), logits.argmax(1))
    with pytest.raises(ValueError, match="positive"):
        calibrated_probabilities(logits, 0.0)


def test_ece_has_one_home_and_known_values():
    assert evaluate.expected_calibration_error is calibration.expected_calibration_error
    sure = torch.tensor([[0.9] + [0.1 / 9] * 9] * 10)  # every image: class 0 at 90%
    labels = torch.zeros(10, dtype=torch.long)
    assert expected_calibration_error(sure, labels) == pytest.approx(0.1)  # 90% sure, always right
    labels[0] = 1
    assert expected_calibration_error(sure, labels) == pytest.approx(0.0, abs=1e-7)  # 90% sure, right 9 times in 10
    labels[:5] = 1
    assert expected_calibration_error(sure, labels) == pytest.approx(0.4)  # 90% sure, right half the time
    table = reliability(sure, labels)
    assert sum(table["count"]) == 10
    assert len(table["lower"]) == len(table["upper"]) == calibration.ECE_BINS
    assert table["accuracy"][13] == pytest.approx(0.5)
    assert table["confidence"][0] is None


def test_ece_of_well_drawn_probabilities_is_small_and_of_sharpened_ones_large():
    logits, labels = sampled(20_000, 1.0)
    assert expected_calibration_error(logits.softmax(1), labels) < 0.015
    assert expected_calibration_error((logits * 3).softmax(1), labels) > 0.1


def test_the_threshold_pools_the_least_confident_guesses():
    confidence = [0.30, 0.35, 0.40, 0.45, 0.60, 0.70, 0.80, 0.90, 0.95, 0.99]
    probs = torch.tensor([[c] + [(1 - c) / 9] * 9 for c in confidence])  # class 0 is every image's top guess
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])  # the three least confident are wrong, the rest right
    assert choose_threshold(probs, labels, level=0.5) == pytest.approx(0.80)  # 6 least confident: 3 right; 7: 4 right
    assert choose_threshold(probs, labels, level=0.2) == pytest.approx(0.45)  # only the three wrong ones
    assert choose_threshold(probs, torch.zeros(10, dtype=torch.long), level=0.5) == 0.0  # always right: nothing flagged
    assert choose_threshold(probs, torch.ones(10, dtype=torch.long), level=0.5) == 1.0  # always wrong: everything flagged
    split = calibration.confidence_split(probs, labels, 0.80)
    assert split["share_below"] == pytest.approx(0.6)
    assert split["accuracy_below"] == pytest.approx(0.5)
    assert split["accuracy_above"] == 1.0


def uncalibrated_card(model, **fields):
    return make_card(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), **fields)


def test_probabilities_are_calibrated_only_when_the_card_has_a_temperature():
    torch.manual_seed(0)
    model = build_model().eval()
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    plain = Classifier(model, uncalibrated_card(model))
    logits = plain.logits(image)
    raw = plain.predict(image)
    assert plain.temperature is None
    assert list(raw) == [CLASSES[i] for i in logits.argsort(descending=True)]
    assert [raw[c] for c in CLASSES] == pytest.approx(logits.softmax(0).tolist(), abs=1e-6)
    sharp = Classifier(model, {**plain.card, "temperature": 0.25}).predict(image)
    assert sum(sharp.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(sharp)[0] == list(raw)[0]
    assert [sharp[c] for c in CLASSES] == pytest.approx((logits / 0.25).softmax(0).tolist(), abs=1e-6)
    assert max(sharp.values()) > max(raw.values())


@pytest.mark.parametrize("temperature", [-1, 0, "hot", float("nan"), True])
def test_weights_whose_card_has_a_bad_temperature_are_refused_when_loaded(tmp_path, temperature):
    torch.manual_seed(0)
    model = build_model().eval()
    path = save_weights(model, tmp_path / "w.safetensors", uncalibrated_card(model))
    card = json.loads(card_path(path).read_text())
    card_path(path).write_text(json.dumps({**card, "temperature": temperature}))
    with pytest.raises(WeightsError, match="card field 'temperature' must be a positive number"):
        load_weights(path)


def test_the_note_uses_the_card_threshold_and_says_whether_it_is_calibrated():
    probabilities = {"cat": 0.7, "dog": 0.3}
    assert model_card.confidence_note(probabilities).startswith("Best guess: cat (70%")  # the default 0.5 threshold
    strict = {"low_confidence": {"threshold": 0.8}}
    assert model_card.confidence_note(probabilities, strict).startswith("Low confidence")
    assert "uncalibrated" in model_card.confidence_note(probabilities, strict)
    calibrated = {**strict, "temperature": 0.6}
    assert "uncalibrated" not in model_card.confidence_note(probabilities, calibrated)
    assert "calibrated on images its card does not name" in model_card.confidence_note(probabilities, calibrated)
    from_split = {**calibrated, "calibration": {"fitted_on": "the 5,000 validation images held out of training"}}
    assert "calibrated on the 5,000 validation images held out of training, where guesses this sure were right" in \
        model_card.confidence_note(probabilities, from_split)
    assert model_card.low_confidence_threshold({"low_confidence": {"threshold": "high"}}) == model_card.LOW_CONFIDENCE


def test_cards_without_a_temperature_are_described_as_uncalibrated(tmp_path):
    torch.manual_seed(0)
    model = build_model().eval()
    torch.save(model.state_dict(), tmp_path / "project1_model.pt")  # a published-style .pt: no card at all
    card = load_weights(tmp_path / "project1_model.pt").card
    assert "uncalibrated (no temperature in its card)" in model_card.describe_card(card)
    text = model_card.describe_card(uncalibrated_card(model, ece=0.17))
    assert "uncalibrated (no temperature in its card); calibration error (ECE) 0.170" in text


ODD_VALUES = (5, True, None, [], ["x"], {"a": 1}, "text", float("nan"))


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_shown_card_fields_of_any_kind_leave_out_what_they_cannot_say(tmp_path, value):
    """An uploaded file's card is checked only where a Classifier reads it: the fields only shown in words may hold
    anything, and the words leave out a field of the wrong kind instead of failing."""
    torch.manual_seed(0)
    model = build_model().eval()
    shown = ("source", "test_acc", "ece", "calibration", "low_confidence", "training", "provenance", "tta_test_acc")
    odd = {**uncalibrated_card(model), **dict.fromkeys(shown, value)}
    path = save_weights(model, tmp_path / "w.safetensors", odd)
    card = load_weights(path).card
    for described in (card, {**card, "temperature": 0.5}):
        text = model_card.describe_card(described) + model_card.shipped_summary(described)
        assert text.startswith("blocks [1, 1, 1, 1]") or text.startswith("### Shipped model")
        assert ("text" in text) == (value == "text")  # only a string source is quoted
        assert model_card.confidence_note({"cat": 0.4, "dog": 0.1}, described).startswith("Low confidence")
    assert model_card.low_confidence_threshold(card) == model_card.LOW_CONFIDENCE


def test_a_calibrated_card_is_described_with_its_temperature_and_ece():
    card = {"blocks": [1, 1, 1, 1], "ece": 0.169, "temperature": 0.578,
            "calibration": {"before": {"ece": 0.177}, "after": {"ece": 0.011}, "evaluated_on": "the 5,000 odd-index test images"}}
    described = model_card.describe_card(card)
    assert "calibrated (T=0.578; ECE 0.177 before, 0.011 after, on the 5,000 odd-index test images)" in described


def test_a_run_is_calibrated_on_its_validation_split(tiny_data):
    torch.manual_seed(0)
    model = build_model().eval()
    images, labels = load_split(tiny_data, train=False)
    fields = fit_run_temperature(model, images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), batch_size=50)
    assert set(fields) == {"temperature", "calibration", "low_confidence"}
    block = fields["calibration"]
    assert block["fit_images"] == block["eval_images"] == 50
    assert "even-position validation" in block["fitted_on"]
    assert "odd-position validation" in block["evaluated_on"]
    assert block["before"]["acc"] == block["after"]["acc"]
    assert block["after"]["nll"] <= block["before"]["nll"] + 0.5  # fitted on the other half: no worse by much
    json.dumps(fields)  # the card is JSON
    card = {**uncalibrated_card(model), **fields}
    assert "calibrated (T=" in model_card.describe_card(card)
    with pytest.raises(ValueError, match="at least 2"):
        fit_run_temperature(model, images[:1], labels[:1], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_the_reliability_figure_draws_a_card_or_says_it_is_uncalibrated():
    from resnet.studio.robustness_plots import calibration_text, reliability_figure

    logits, labels = sampled(1_000, 0.6)
    fit, held = halves(1_000)
    card = calibration_fields(logits[fit], labels[fit], logits[held], labels[held], "half A", "half B")
    figure = reliability_figure(card)
    assert [trace.name for trace in figure.data] == ["perfect calibration", "softmax", f"T = {card['temperature']:.3f}"]
    assert "ECE" in figure.layout.title.text
    assert "half B" in figure.layout.title.text
    assert "calibrated" in calibration_text(card)
    assert "half A" in calibration_text(card)
    assert "uncalibrated" in reliability_figure({}).layout.annotations[0].text
    assert "uncalibrated" in calibration_text({})


SHIPPED = json.loads(card_path(DEFAULT_WEIGHTS).read_text()) if card_path(DEFAULT_WEIGHTS).is_file() else {}


@pytest.mark.skipif("temperature" not in SHIPPED, reason="the shipped card has no temperature yet")
def test_the_shipped_card_is_calibrated_on_held_out_test_images():
    block, low = SHIPPED["calibration"], SHIPPED["low_confidence"]
    assert 0 < SHIPPED["temperature"] < 1  # label smoothing made it under-confident: T sharpens
    assert block["fit_images"] == block["eval_images"] == 5_000
    assert block["fitted_on"] != block["evaluated_on"]
    assert block["after"]["ece"] <= 0.02 < block["before"]["ece"]
    assert block["after"]["nll"] < block["before"]["nll"]
    assert block["after"]["acc"] == block["before"]["acc"]
    assert low["calibrated"]
    assert low["measured_on"] == block["evaluated_on"]
    assert 0 < low["threshold"] < 1
    assert sum(block["reliability"]["after"]["count"]) == 5_000
    assert "calibrated (T=" in model_card.describe_card(SHIPPED)


@pytest.mark.slow
@pytest.mark.skipif("temperature" not in SHIPPED, reason="the shipped card has no temperature yet")
def test_the_shipped_calibration_is_reproduced_by_its_script(real_data, tmp_path):
    """scripts/calibrate_shipped.py on a copy of the shipped files writes the committed card's calibration again."""
    for suffix in (".safetensors", ".json"):
        shutil.copy(DEFAULT_WEIGHTS.with_suffix(suffix), tmp_path / f"shipped{suffix}")
    assert calibrate_shipped.main(["--weights", str(tmp_path / "shipped.safetensors"), "--data-dir", str(real_data)]) == 0
    again = json.loads((tmp_path / "shipped.json").read_text())
    assert again["temperature"] == pytest.approx(SHIPPED["temperature"], rel=1e-4)
    assert again["calibration"]["after"]["ece"] == pytest.approx(SHIPPED["calibration"]["after"]["ece"], abs=1e-4)
    assert again["low_confidence"]["threshold"] == pytest.approx(SHIPPED["low_confidence"]["threshold"], abs=1e-3)
    assert {k: v for k, v in again.items() if k not in ("temperature", "calibration", "low_confidence")} == \
        {k: v for k, v in SHIPPED.items() if k not in ("temperature", "calibration", "low_confidence")}
    assert math.isclose(again["test_acc"], SHIPPED["test_acc"])
