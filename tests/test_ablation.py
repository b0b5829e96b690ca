"""The remove-one ablation on the tiny data set: one change per variant, stop and resume, skip, results, CLI."""

import contextlib
import dataclasses
import json
import threading

import pytest

from resnet import ablation, runs
from resnet.cli import main
from resnet.config import ConfigError
from resnet.experiments import Budget, Options

# 64 training images: the fast preset's batch of 512 does not fit, so the tiny variants use 32.
BUDGET = Budget(train_size=64, val_size=64, epochs=1, test_size=20)
TINY = {"fast": {"batch_size": 32}, "no-label-smoothing": {"batch_size": 32, "label_smoothing": 0.0},
        "published-recipe": None}
TINY_ABLATION = ablation.Ablation(variants=TINY)


def recorder(log, stop_at=None, stop=None):
    def watch(run_id, trainer, resume):
        log.append((run_id, resume))
        if run_id == stop_at:
            stop.set()  # the trainer checks it before its first step: the variant stops at once, resumable
        return contextlib.nullcontext()

    return watch


def test_every_variant_changes_only_what_it_names():
    experiment = ablation.ABLATION
    variants, waiting = experiment.plan(None, experiment.budget, {})
    assert [v.run_id for v in variants] == list(ablation.VARIANTS) and waiting is None
    fast = dataclasses.asdict(experiment.config_for(variants[0], experiment.budget))
    for variant in variants:
        name, change = variant.run_id, variant.change
        config = dataclasses.asdict(experiment.config_for(variant, experiment.budget))
        changed = {key for key in fast if config[key] != fast[key]}
        if change is None:  # the published recipe differs in many settings, but not in the budget
            assert {"optimizer", "batch_size", "schedule"} <= changed
            assert not changed & {"epochs", "limit_train", "val_size", "seed"}
        else:
            assert changed == set(change), name


@pytest.mark.slow
def test_ablation_stops_resumes_skips_and_continues_from_its_results(tiny_data, tmp_path):
    root, results_path = tmp_path / "ablation-runs", tmp_path / "results" / "ablation.json"
    stop, first = threading.Event(), []
    TINY_ABLATION.run(BUDGET, Options(root, results_path, tiny_data, stop_event=stop, watch=recorder(first, "no-label-smoothing", stop)))
    assert first == [("fast", False), ("no-label-smoothing", False)]
    assert runs.read_status(root / "no-label-smoothing")["status"] == "stopped"
    written = {r["run_id"]: r for r in json.loads(results_path.read_text())["runs"]}
    assert written["fast"]["status"] == "finished" and written["published-recipe"]["status"] == "pending"

    second = []
    results = TINY_ABLATION.run(BUDGET, Options(root, results_path, tiny_data, watch=recorder(second)))
    assert second == [("no-label-smoothing", True), ("published-recipe", False)]
    by_id = {r["run_id"]: r for r in results["runs"]}
    assert all(r["status"] == "finished" and 0 <= r["final_val_acc"] <= 1 and r["train_images_per_s"] > 0
               for r in results["runs"])
    assert by_id["published-recipe"]["config"]["optimizer"] == "adam"
    assert by_id["no-label-smoothing"]["config"]["label_smoothing"] == 0.0

    rows = {row["variant"]: row for row in ablation.table(results)}
    assert rows["fast"]["vs fast"] == ""
    expected = (by_id["no-label-smoothing"]["final_val_acc"] - by_id["fast"]["final_val_acc"]) * 100
    assert rows["no-label-smoothing"]["vs fast"] == f"{expected:+.2f} pts"
    assert rows["no-label-smoothing"]["change"] == "batch_size=32, label_smoothing=0"
    assert rows["published-recipe"]["change"].startswith("the published recipe")
    bars = ablation.figure(results).data[0]
    assert list(bars.y) == list(TINY) and list(bars.x) == [by_id[name]["final_val_acc"] for name in TINY]

    # A fresh checkout: no run folders, the committed results file; nothing is trained again.
    third = []
    again = TINY_ABLATION.run(BUDGET, Options(tmp_path / "fresh-checkout", results_path, tiny_data, watch=recorder(third)))
    assert third == [] and json.loads(json.dumps(again)) == json.loads(json.dumps(results))


def test_unknown_variants_and_other_budgets_are_refused(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown variant"):
        TINY_ABLATION.run(BUDGET, Options(tmp_path / "a", data_dir=tiny_data, only=("no-such-variant",)))
    results_path = tmp_path / "ablation.json"
    content = json.dumps({"budget": {**dataclasses.asdict(BUDGET), "epochs": 3}, "runs": []})
    results_path.write_text(content)
    with pytest.raises(ConfigError, match="epochs 3 -> 1"):
        TINY_ABLATION.run(BUDGET, Options(tmp_path / "a", results_path, tiny_data))
    assert results_path.read_text() == content and not (tmp_path / "a").exists()
    study_results = json.dumps({"experiment": "study", "budget": BUDGET.fields(), "runs": []})
    results_path.write_text(study_results)
    with pytest.raises(ConfigError, match="holds results of the study, not the ablation;"):
        TINY_ABLATION.run(BUDGET, Options(tmp_path / "a", results_path, tiny_data))
    assert results_path.read_text() == study_results and not (tmp_path / "a").exists()


def test_the_figure_and_table_of_an_empty_ablation():
    assert ablation.table({}) == []
    assert not ablation.figure({"runs": []}).data


@pytest.mark.slow
def test_cli_ablation_trains_the_chosen_variants(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablation, "ABLATION", TINY_ABLATION)
    root, results_path = tmp_path / "runs", tmp_path / "ablation.json"
    code = main(["ablation", "--data-dir", str(tiny_data), "--out", str(root), "--results", str(results_path),
                 "--train-size", "64", "--val-size", "64", "--epochs", "1", "--seed", "3", "--only", "fast"])
    assert code == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["fast"]
    results = json.loads(results_path.read_text())
    assert results["budget"]["seed"] == 3 and json.loads((root / "fast" / "config.json").read_text())["seed"] == 3
    statuses = {r["run_id"]: r["status"] for r in results["runs"]}
    assert statuses == {"fast": "finished", "no-label-smoothing": "pending", "published-recipe": "pending"}
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "training fast" and any(line.startswith("fast ") and "%" in line for line in out)


def test_cli_ablation_rejects_bad_flags_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ablation", "--out", str(tmp_path), "--only", "no-such-variant"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ablation", "--out", str(tmp_path), "--epochs", "0"])
    assert "at least 1" in capsys.readouterr().err
    for seed, words in (("-1", "at least 0"), (str(2**32), "below 4294967296")):
        with pytest.raises(SystemExit):
            main(["ablation", "--out", str(tmp_path), "--seed", seed])
        assert words in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before the folder is bound to a budget
