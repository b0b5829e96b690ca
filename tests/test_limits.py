"""Server limits: declared once (resnet.studio.limits), read from the environment once, listed in docs/studio.md as declared."""

import dataclasses
from pathlib import Path

import pytest

from resnet.studio import limits

LIMITS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "studio.md"


def test_every_declared_limit_is_a_field_and_has_a_default():
    assert [f.name for f in dataclasses.fields(limits.ServerLimits)] == list(limits.LIMITS) + list(limits.WORDS)
    defaults = limits.ServerLimits.defaults()
    assert defaults.upload_bytes == 20 * 2**20
    assert defaults.batch_pixels == 500 * 10**6
    assert defaults.api_max_wait_s == 3.0
    assert defaults.request_bytes == max(defaults.upload_bytes, defaults.weights_bytes)
    assert defaults.data_source == "official"


def test_the_environment_sets_them_in_their_units():
    chosen = limits.ServerLimits.from_env({"STUDIO_MAX_EPOCHS": "5", "STUDIO_MAX_UPLOAD_MB": "0.5", "STUDIO_MAX_BATCH_MP": "2.5",
                                           "STUDIO_API_MAX_WAIT_S": "0.25", "STUDIO_MAX_QUEUE": " "})
    assert (chosen.epochs, chosen.upload_bytes, chosen.batch_pixels, chosen.api_max_wait_s) == (5, 2**19, 2_500_000, 0.25)
    assert chosen.queue == limits.ServerLimits.defaults().queue  # blank: the default


@pytest.mark.parametrize(("env", "value", "words"), [
    ("STUDIO_MAX_EPOCHS", "many", "is not a number"), ("STUDIO_MAX_EPOCHS", "2.5", "a positive whole number"),
    ("STUDIO_MAX_PIXELS", "-1", "a positive whole number"), ("STUDIO_MAX_UPLOAD_MB", "nan", "a positive number"),
    ("STUDIO_API_MAX_WAIT_S", "0", "a positive number"),
])
def test_a_bad_value_is_refused_naming_the_variable(env, value, words):
    with pytest.raises(limits.LimitError) as caught:
        limits.ServerLimits.from_env({env: value})
    assert str(caught.value).startswith(f"{env}={value!r}")
    assert words in str(caught.value)


def test_they_are_read_once(monkeypatch):
    monkeypatch.setattr(limits, "_current", None)
    monkeypatch.setenv("STUDIO_MAX_QUEUE", "7")
    assert limits.current().queue == 7
    monkeypatch.setenv("STUDIO_MAX_QUEUE", "9")
    assert limits.current().queue == 7
    assert limits.current() is limits.current()


def test_the_docs_list_every_limit_with_its_default():
    text = LIMITS_PAGE.read_text()
    for limit in limits.LIMITS.values():
        assert f"| `{limit.env}` | {limit.default:g} | {limit.help} |" in text, limit.env
    for word in limits.WORDS.values():
        assert f"| `{word.env}` | `{word.default}` | {word.help} |" in text, word.env
