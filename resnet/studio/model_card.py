"""A model card in words: the picker's paragraph, the confidence note under a prediction, the Model card tab's summary.

Cards reach these functions validated (resnet.weights checks every field a Classifier reads), so a
temperature here is a positive number or absent. The fields only shown here are not checked there: an
uploaded file's card may hold anything in them, so each is read through ``_number``, ``_text`` or
``_mapping``, and a field of the wrong kind is left out of the words rather than failing the page.
"""

from ..budget import describe_duration

LOW_CONFIDENCE = 0.5  # the threshold for a card that chose none: below it the picture may show none of the classes
SHOWN_TEXT = 200  # characters of a card's free-text field shown in a sentence


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value) -> str:
    return value[:SHOWN_TEXT] if isinstance(value, str) else ""


def low_confidence_threshold(card: dict | None) -> float:
    """The card's chosen threshold (its ``low_confidence.threshold``), else the LOW_CONFIDENCE default."""
    threshold = _number(_mapping(_mapping(card).get("low_confidence")).get("threshold"))
    return float(threshold) if threshold is not None and 0 <= threshold <= 1 else LOW_CONFIDENCE


def confidence_note(probabilities: dict, card: dict | None = None) -> str:
    """A warning in words when the best class is a weak guess, at the card's threshold.

    With ``card`` the note also says whether the percentage is calibrated: only a calibrated one can be
    read as how often such a guess is right.
    """
    if not probabilities:
        return ""
    name, top = max(probabilities.items(), key=lambda item: item[1])
    if card is None:
        kind = ""
    elif card.get("temperature") is not None:
        fitted_on = _text(_mapping(card.get("calibration")).get("fitted_on"))
        where = f"on {fitted_on}" if fitted_on else "on images its card does not name"
        kind = f"; calibrated {where}, where guesses this sure were right roughly that often"
    else:
        # A card may still report the raw softmax's ECE; what it lacks is a fitted temperature, so the percentage
        # is not a frequency.
        kind = "; uncalibrated: no temperature was fitted, so this is the raw softmax, not how often such a guess is right"
    # The page passes only the top classes it shows; the card names all the model knows
    known = len((card or {}).get("classes") or probabilities)
    if top < low_confidence_threshold(card):
        return (f"Low confidence: the best guess, {name}, has only {top:.0%}{kind}. "
                f"This may be none of the {known} classes it knows.")
    return f"Best guess: {name} ({top:.0%}{kind})."


def describe_calibration(card: dict) -> str:
    """Calibrated (T, ECE before and after on held-out images) or uncalibrated, in one phrase."""
    temperature = card.get("temperature")
    if temperature is None:
        ece = _number(card.get("ece"))
        raw = "" if ece is None else f"; calibration error (ECE) {ece:.3f}: its stated confidence is off by {ece:.1%} on average"
        return f"uncalibrated (no temperature in its card){raw}"
    block = _mapping(card.get("calibration"))
    before, after = (_number(_mapping(block.get(key)).get("ece")) for key in ("before", "after"))
    text = f"calibrated (T={temperature:.3f}"
    if before is not None and after is not None:
        text += f"; ECE {before:.3f} before, {after:.3f} after"
        if _text(block.get("evaluated_on")):
            text += f", on {_text(block['evaluated_on'])}"
    return text + ")"


def describe_card(card: dict) -> str:
    """One paragraph about a model for the picker: accuracy, calibration, architecture."""
    parts = [f"blocks {card.get('blocks')}"]
    if _number(card.get("test_acc")) is not None:
        parts.append(f"test accuracy {card['test_acc']:.2%}")
    parts.append(describe_calibration(card))
    low = _mapping(card.get("low_confidence"))
    numbers = ("threshold", "share_below", "accuracy_below", "accuracy_above")
    if all(_number(low.get(key)) is not None for key in numbers):
        images = _text(low.get("measured_on")) or "test images"
        parts.append(f"below {low['threshold']:.0%} confidence ({low['share_below']:.1%} of {images}) it is right "
                     f"{low['accuracy_below']:.0%} of the time, above it {low['accuracy_above']:.0%}")
    if _text(card.get("source")):
        parts.append(_text(card["source"]))
    return "; ".join(parts)


def shipped_summary(card: dict) -> str:
    """The Model card tab's opening paragraphs (Markdown): what the shipped model scores, how it was trained."""
    training, provenance = _mapping(card.get("training")), _mapping(card.get("provenance"))
    lines = [f"### Shipped model\n{describe_card(card)}; measured on {card.get('test_images', '?')} test images "
             f"({card.get('measured', 'no details')})."]
    if _number(card.get("tta_test_acc")) is not None:
        lines.append(f"With flip test-time augmentation: {card['tta_test_acc']:.2%}.")
    if training:
        took = describe_duration(_number(provenance.get("elapsed_s")) or 0)
        lines.append(f"Trained with {training.get('optimizer')} lr {training.get('lr')}, batch {training.get('batch_size')}, "
                     f"{training.get('epochs')} epochs, {took} on {provenance.get('device', 'an unrecorded device')}.")
    if card.get("storage_choice"):
        lines.append(f"Stored as {card['storage_choice']}.")
    if card.get("reproduce"):
        lines.append(f"Reproduce: `{card['reproduce']}`")
    return "\n\n".join(lines)
