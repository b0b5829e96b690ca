"""The Train tab's form: one field per training setting, built from its declaration in resnet.config, and the
form's values read back as a run's settings.

resnet.config declares each setting once (type, bounds, choices, form label, whether it is advanced); what only the
form adds is here: the words on its choices, the notes beside its labels, the server's caps, the presets' one-line
descriptions and which fields share a row.
"""

import gradio as gr

from .. import config
from ..config import QUICK_RUN, from_form, make_config, to_form
from ..constants import TEST_IMAGES, TRAIN_IMAGES
from ..model import BLOCK_CHOICES
from . import jobs, limits
from .ui_inputs import form_field

CHOICE_LABELS = {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop", "adagrad": "Adagrad"}
BUDGET_CHOICES = [("1 minute", "1m"), ("2 minutes", "2m"), ("5 minutes", "5m"), ("15 minutes", "15m"),
                  ("none: train for the epochs set here", "")]
RESOLUTION_CHOICES = [("32 px throughout", ""), ("16 px, 24 px, then 32 px (quarters: 2, 1, 1)", "16:0.5,24:0.75"),
                      ("24 px for the first half, then 32 px", "24:0.5"), ("16 px for three quarters, then 32 px", "16:0.75")]
FIELD_NOTES = {"limit_train": f"0 = all {TRAIN_IMAGES:,}", "limit_test": f"0 = all {TEST_IMAGES:,}",
               "epochs": "without a time budget"}
PRESET_NOTES = {"quick": "a run that learns in minutes on a CPU", "original": "the published recipe",
                "fast": "the shipped weights' recipe (hours on a CPU)"}
RUN_SHAPE = (*config.SIZE_SETTINGS, "resolution")  # the form's second row: how long the run is and at what size


def presets_info() -> str:
    return "; ".join(f"{name}: {PRESET_NOTES[name]}" for name in config.PRESETS)


def rows() -> tuple:
    """The form's settings by row: how the run learns, how long and at what size it runs, and (in an accordion)
    the advanced ones."""
    main = [n for n in config.FORM_SETTINGS if not config.SETTINGS[n].metadata["advanced"]]
    return ([n for n in main if n not in RUN_SHAPE], [n for n in main if n in RUN_SHAPE],
            [n for n in config.FORM_SETTINGS if config.SETTINGS[n].metadata["advanced"]])


def caps() -> dict:
    """The settings this server caps (resnet.studio.limits), with their caps, as the form's labels state them."""
    return {name: getattr(limits.current(), name) for name in jobs.TRAINING_CAPS}


def setting_field(name: str, value, caps: dict):
    """The form field of one training setting, built from its declaration in resnet.config; ``caps``: the server's
    caps by setting (``caps()``)."""
    meta = config.SETTINGS[name].metadata
    # The server's cap and the field's note share one parenthesis: two in a row read as a typo.
    notes = ([f"at most {caps[name]}"] if name in caps else []) + ([FIELD_NOTES[name]] if name in FIELD_NOTES else [])
    label = meta["form"] + (f" ({'; '.join(notes)})" if notes else "")
    kind = config.kind(name)
    if name == "blocks":
        return gr.Dropdown([(str(list(b)), to_form(name, b)) for b in BLOCK_CHOICES], value=to_form(name, value),
                           label=label)
    if meta["choices"]:
        return gr.Dropdown([(CHOICE_LABELS.get(c, c), c) for c in meta["choices"]], value=value, label=label)
    if name == "budget":
        return gr.Dropdown(BUDGET_CHOICES, value=value, label=label, allow_custom_value=True,
                           info="from Start to finished, scoring included; or your own, such as 90s or 10m")
    if name == "resolution":
        # Twice a field's width: its choices' names are long, and a narrower field hid their end and its arrow.
        return gr.Dropdown(RESOLUTION_CHOICES, value=value, label=label, allow_custom_value=True, scale=2,
                           info="or your own: 16:0.5,24:0.75 is 16 px for the first half of the steps, 24 px to three quarters")
    if kind is float and meta["minimum"] is not None and meta["below"] is not None:
        return form_field(gr.Slider(meta["minimum"], meta["below"] - 0.05, value, step=0.05, label=label))
    # Only bounds resnet.config enforces, inclusive ones: a whole number below n is at most n - 1 (the seed).
    high = meta["below"] - 1 if kind is int and meta["below"] is not None else meta["maximum"]
    return form_field(gr.Number(value, label=label, precision=0 if kind is int else None, minimum=meta["minimum"],
                                maximum=high))


def recipe_fields() -> list:
    """The form fields a preset fills in: all but the run's size."""
    return [name for name in config.FORM_SETTINGS if name not in config.SIZE_SETTINGS]


def settings(*form) -> dict:
    """The form's values (in resnet.config.FORM_SETTINGS order) as TrainConfig overrides, plus what every run
    started here gets: frequent step rows and a probe, so its curves move within seconds."""
    return {**{name: from_form(name, value) for name, value in zip(config.FORM_SETTINGS, form, strict=True)},
            **QUICK_RUN["watch"]}


def preset_values(preset: str) -> list:
    """The recipe fields' values as ``preset`` has them (ConfigError for an unknown one); the run's size stays as
    the form has it."""
    recipe = make_config(preset)
    return [to_form(name, getattr(recipe, name)) for name in recipe_fields()]
