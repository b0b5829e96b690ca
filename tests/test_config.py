"""Training settings are declared once (resnet.config); the CLI, the form, the child command and validation follow."""

import dataclasses

import pytest

from resnet import config
from resnet.cli import build_parser
from resnet.config import ConfigError, TrainConfig, make_config, setting

gr = pytest.importorskip("gradio")
from resnet.studio import jobs, train_form  # noqa: E402


def train_help() -> str:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices["train"].format_help()


def test_every_cli_setting_is_a_flag_with_its_declared_help_and_choices():
    text = " ".join(train_help().split())
    for name in config.CLI_SETTINGS:
        assert "--" + name.replace("_", "-") in text, name
        assert " ".join(config.SETTINGS[name].metadata["help"].split()) in text, name
    assert "{adam,sgd,rmsprop,adagrad}" in text
    assert "--mean" not in text


def test_every_form_setting_builds_a_field_with_the_preset_value():
    quick = make_config("quick")
    for name in config.FORM_SETTINGS:
        field = train_form.setting_field(name, config.to_form(name, getattr(quick, name)), {})
        assert field.label.startswith(config.SETTINGS[name].metadata["form"]), name


def test_a_fields_cap_and_note_read_as_one_parenthesis():
    assert train_form.setting_field("epochs", 1, {"epochs": 200}).label == "Epochs (at most 200; without a time budget)"
    assert train_form.setting_field("epochs", 1, {}).label == "Epochs (without a time budget)"
    assert train_form.setting_field("batch_size", 64, {"batch_size": 1024}).label == "Batch size (at most 1024)"
    assert train_form.setting_field("limit_train", 0, {}).label == "Training images (0 = all 50,000)"


def test_cli_args_and_the_parser_agree_on_every_setting():
    overrides = {"optimizer": "rmsprop", "lr": 0.003, "blocks": (2, 2, 2, 2), "nesterov": False, "resolution": "16:0.5",
                 "probe_size": 10, "whiten_stem": True, "channels_last": False, "data_dir": "somewhere"}
    args = build_parser().parse_args(["train", "--out", "x", *config.cli_args("fast", overrides)])
    parsed = config.make_config(args.preset, **{n: getattr(args, n) for n in config.CLI_SETTINGS})
    assert parsed == make_config("fast", **overrides)


def test_only_declared_settings_may_change_on_resume():
    assert config.RESUME_SETTINGS == ("epochs", "device", "data_dir")


def test_a_new_setting_is_one_declaration(monkeypatch):
    """Declaring a setting (here a hypothetical mixup alpha) puts it in the CLI, the form, the child command and
    validation, with nothing else to edit."""

    @dataclasses.dataclass
    class Extended(TrainConfig):
        mixup: float = setting(0.0, "mixup alpha (0 = off)", minimum=0, form="Mixup alpha", advanced=True)

    settings = {f.name: f for f in dataclasses.fields(Extended)}
    monkeypatch.setattr(config, "TrainConfig", Extended)
    monkeypatch.setattr(config, "SETTINGS", settings)
    monkeypatch.setattr(config, "CLI_SETTINGS", (*config.CLI_SETTINGS, "mixup"))
    monkeypatch.setattr(config, "FORM_SETTINGS", (*config.FORM_SETTINGS, "mixup"))

    assert "--mixup MIXUP" in train_help()
    assert "mixup alpha (0 = off)" in train_help()
    field = train_form.setting_field("mixup", 0.0, {})
    assert isinstance(field, gr.Number)
    assert field.label == "Mixup alpha"
    values = [config.to_form(n, getattr(make_config("original"), n)) for n in config.FORM_SETTINGS[:-1]] + [0.2]
    overrides = train_form.settings(*values)  # the form's values, as a start from the Train tab sends them
    assert overrides["mixup"] == 0.2
    assert "--mixup 0.2" in jobs.cli_command("original", overrides)  # the child process's command line
    assert make_config("original", mixup=0.2).mixup == 0.2
    with pytest.raises(ConfigError, match="mixup must be at least 0"):
        make_config("original", mixup=-1.0)


def test_differences_name_what_a_recorded_run_trained_otherwise():
    now = make_config("fast", seed=0, split_seed=0, val_size=5_000)
    recorded = dataclasses.asdict(make_config("fast", seed=0, val_size=5_000, data_dir="/elsewhere", device="cuda",
                                              score_test=False))
    # Where it ran, whether it also scored the test set, and split_seed unset meaning its seed, are no difference.
    assert config.differences(recorded, now) == ""
    recorded.pop("whiten_stem")  # written before the setting existed: it had the default
    assert config.differences(recorded, now) == ""
    assert config.differences({**recorded, "lr": 0.1, "split_seed": 3}, now) == "lr 0.1 -> 0.4, split_seed 3 -> 0"
    with pytest.raises(ConfigError):
        config.differences({**recorded, "lr": -1}, now)


def test_blocks_from_a_form_or_a_flag_parse_once_and_say_the_rule():
    assert config.from_form("blocks", " 2,2,2,2") == (2, 2, 2, 2)
    with pytest.raises(ConfigError, match=r"blocks must be four whole numbers from 1 to 8, like 1,1,1,1; got '1,x'"):
        config.from_form("blocks", "1,x")
    for wrong in ((1, 1, 1), (0, 1, 1, 1), (1, 1, 1, 9), (True, 1, 1, 1)):
        with pytest.raises(ConfigError, match=r"blocks must be four whole numbers from 1 to 8"):
            make_config("quick", blocks=wrong)
    assert config.flag("label_smoothing") == "--label-smoothing"
