"""The remove-one ablation on the tiny data set: one change per variant, stop and resume, skip, results, CLI."""

import contextlib
import dataclasses
import json
import threading

import pytest
import torch

from resnet import runs
from resnet.cli import main
from resnet.config import ConfigError
from resnet.experiments import ablation, storage
from resnet.experiments.runner import Budget, Options, load_shared_data

# 64 training images: the fast preset's batch of 512 does not fit, so the tiny variants use 32.
BUDGET = Budget(train_size=64, val_size=64, epochs=1, test_size=20, seeds=2, resolution="16:0.5")
TINY = {"recipe": {"batch_size": 32}, "no-label-smoothing": {"batch_size": 32, "label_smoothing": 0.0}}
TINY_ABLATION = ablation.Ablation(variants=TINY)
ORDER = ["recipe-seed0", "no-label-smoothing-seed0", "recipe-seed1", "no-label-smoothing-seed1"]


def recorder(log, stop_at=None, stop=None):
    def watch(run_id, trainer, resume):
        log.append((run_id, resume))
        if run_id == stop_at:
            stop.set()
            # The worker passes the stop on to its run from a watcher thread; once it has, the trainer acts on it
            # after its first step: the variant stops at once, resumable.
            assert trainer.stop_event.wait(30)
        return contextlib.nullcontext()

    return watch


def run(budget, options) -> dict:
    """One worker of the tiny ablation, on the journal in its run folders."""
    return storage.run_study(TINY_ABLATION, budget, options, None, None)


def test_every_variant_changes_only_what_it_names_at_every_seed():
    experiment = ablation.ABLATION
    variants, waiting = experiment.plan(None, experiment.budget, {})
    seeds = list(experiment.budget.run_seeds())
    assert len(seeds) >= 2
    assert waiting is None
    assert [v.run_id for v in variants] == [ablation.run_id(name, seed) for seed in seeds for name in ablation.VARIANTS]
    recipe = {seed: dataclasses.asdict(experiment.config_for(variants[i * len(ablation.VARIANTS)], experiment.budget))
              for i, seed in enumerate(seeds)}
    for seed, config in recipe.items():
        assert config["whiten_stem"]
        assert config["seed"] == seed
        assert not config["score_test"]
        assert config["split_seed"] == experiment.budget.seed  # a run resumed on its own holds out the same images
        assert config["resolution"] == experiment.budget.resolution
        assert config["limit_train"] == experiment.budget.train_size
    for variant in variants:
        config = dataclasses.asdict(experiment.config_for(variant, experiment.budget))
        changed = {key for key in config if config[key] != recipe[variant.seed][key]}
        assert changed == set(variant.change), variant.run_id


def test_every_run_shares_the_budgets_validation_split_whatever_its_seed(tiny_data):
    first = ablation.Ablation(variants=TINY)
    planned, _ = first.plan(None, BUDGET, {})
    later = next(p for p in planned if p.seed == 1)
    split = load_shared_data(first.config_for(later, BUDGET, tiny_data), BUDGET)
    reference = load_shared_data(first.config_for(planned[0], BUDGET, tiny_data), BUDGET)
    assert torch.equal(split.val_x, reference.val_x)
    assert torch.equal(split.train_x, reference.train_x)


@pytest.mark.slow
def test_ablation_stops_resumes_skips_and_continues_from_its_results(tiny_data, tmp_path):
    root, results_path = tmp_path / "ablation-runs", tmp_path / "results" / "ablation.json"
    stop, first = threading.Event(), []
    run(BUDGET, Options(root, results_path, tiny_data, stop_event=stop, watch=recorder(first, "no-label-smoothing-seed0", stop)))
    assert first == [("recipe-seed0", False), ("no-label-smoothing-seed0", False)]
    assert runs.read_status(root / "no-label-smoothing-seed0")["status"] == "stopped"
    written = {r["run_id"]: r for r in json.loads(results_path.read_text())["runs"]}
    assert written["recipe-seed0"]["status"] == "finished"
    assert written["recipe-seed1"]["status"] == "pending"

    second = []
    results = run(BUDGET, Options(root, results_path, tiny_data, watch=recorder(second)))
    # The stopped run comes first again: workers claim in plan order, a run queued again after a stop included.
    assert second == [("no-label-smoothing-seed0", True), ("recipe-seed1", False), ("no-label-smoothing-seed1", False)]
    by_id = {r["run_id"]: r for r in results["runs"]}
    assert list(by_id) == ORDER
    assert all(r["status"] == "finished" and 0 <= r["final_val_acc"] <= 1 and r["train_images_per_s"] > 0
               for r in results["runs"])
    assert by_id["no-label-smoothing-seed1"]["config"]["label_smoothing"] == 0.0
    assert [by_id[i]["config"]["seed"] for i in ORDER] == [0, 0, 1, 1]
    assert results["budget"]["seeds"] == 2
    assert results["budget"]["recipe"] == "the fast preset with whiten_stem=True"

    rows = {row["variant"]: row for row in ablation.table(results)}
    scores = {name: [by_id[f"{name}-seed{seed}"]["final_val_acc"] for seed in (0, 1)] for name in TINY}
    assert rows["recipe"]["vs recipe"] == ""
    assert rows["recipe"]["seeds"] == " / ".join(f"{s:.2%}" for s in scores["recipe"])
    expected = (sum(scores["no-label-smoothing"]) - sum(scores["recipe"])) / 2 * 100
    assert rows["no-label-smoothing"]["vs recipe"] == f"{expected:+.2f} pts"
    spread = (max(scores["recipe"]) - min(scores["recipe"])) * 50
    assert rows["recipe"]["± (half range)"] == f"{spread:.2f} pts"
    assert rows["no-label-smoothing"]["change"] == "batch_size=32, label_smoothing=0"
    bars, dots = ablation.figure(results).data
    assert list(bars.y) == list(TINY)
    assert list(bars.x) == pytest.approx([sum(scores[n]) / 2 for n in TINY])
    assert sorted(dots.x) == sorted(s for n in TINY for s in scores[n])

    # A fresh checkout: no run folders, the committed results file; nothing is trained again.
    third = []
    again = run(BUDGET, Options(tmp_path / "fresh-checkout", results_path, tiny_data, watch=recorder(third)))
    assert third == []
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))


def test_unknown_variants_and_other_budgets_are_refused(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown variant"):
        run(BUDGET, Options(tmp_path / "a", data_dir=tiny_data, only=("no-such-variant",)))
    assert not (tmp_path / "a").exists()  # refused before its folder or storage was made
    results_path = tmp_path / "ablation.json"
    content = json.dumps({"budget": {**dataclasses.asdict(BUDGET), "epochs": 3}, "runs": []})
    results_path.write_text(content)
    with pytest.raises(ConfigError, match="epochs 3 -> 1"):
        run(BUDGET, Options(tmp_path / "a", results_path, tiny_data))
    assert BUDGET.changes({**BUDGET.fields(), "seeds": 1}) == ""  # more seeds add runs to the same budget
    assert results_path.read_text() == content
    assert not (tmp_path / "a").exists()
    study_results = json.dumps({"experiment": "study", "budget": BUDGET.fields(), "runs": []})
    results_path.write_text(study_results)
    with pytest.raises(ConfigError, match="holds results of the study, not the ablation;"):
        run(BUDGET, Options(tmp_path / "a", results_path, tiny_data))
    assert results_path.read_text() == study_results
    assert not (tmp_path / "a").exists()


def test_the_figure_and_table_of_an_empty_ablation():
    assert ablation.table({}) == []
    assert not ablation.figure({"runs": []}).data
    partial = {"runs": [{"run_id": "recipe-seed0", "variant": "recipe", "seed": 0, "change": {}, "status": "finished",
                         "final_val_acc": 0.5},
                        {"run_id": "recipe-seed1", "variant": "recipe", "seed": 1, "change": {}, "status": "diverged",
                         "final_val_acc": None},
                        {"run_id": "no-ema-seed0", "variant": "no-ema", "seed": 0, "change": {"ema": 0.0}, "status": "pending",
                         "final_val_acc": None}]}
    assert ablation.table(partial) == [
        {"variant": "recipe", "change": "none: the recipe", "seeds": "50.00% / diverged", "mean": "50.00%", "vs recipe": "",
         "± (half range)": ""},
        {"variant": "no-ema", "change": "ema=0", "seeds": "pending", "mean": "", "vs recipe": "", "± (half range)": ""}]


@pytest.mark.slow
def test_cli_ablation_trains_the_chosen_variants(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablation, "ABLATION", TINY_ABLATION)
    root, results_path = tmp_path / "runs", tmp_path / "ablation.json"
    code = main(["ablation", "--data-dir", str(tiny_data), "--out", str(root), "--results", str(results_path),
                 "--train-size", "64", "--val-size", "64", "--epochs", "1", "--seed", "3", "--seeds", "1", "--only", "recipe"])
    assert code == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["recipe-seed3"]
    results = json.loads(results_path.read_text())
    assert results["budget"]["seed"] == 3
    assert json.loads((root / "recipe-seed3" / "config.json").read_text())["seed"] == 3
    statuses = {r["run_id"]: r["status"] for r in results["runs"]}
    assert statuses == {"recipe-seed3": "finished", "no-label-smoothing-seed3": "pending"}
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "training recipe-seed3"
    assert any(line.startswith("recipe ") and "%" in line for line in out)


def test_cli_ablation_rejects_bad_flags_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ablation", "--out", str(tmp_path), "--only", "no-such-variant"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ablation", "--out", str(tmp_path), "--epochs", "0"])
    assert "at least 1" in capsys.readouterr().err
    for seed, words in (("-1", "at least 0"), (str(2**32), "below 4294967296")):
        with pytest.raises(SystemExit):
            main(["ablation", "--out", str(tmp_path), "--seed", seed])
        assert words in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before the folder is bound to a budget


def test_the_figure_spans_the_scores_not_the_bars_base():
    # Scores a point apart are legible only on an axis that starts near them; an open end would reach back to 0 %.
    runs = [{"run_id": f"{name}-seed{seed}", "variant": name, "seed": seed, "change": {}, "status": "finished",
             "final_val_acc": score}
            for name, pair in {"recipe": (0.72, 0.74), "no-whiten-stem": (0.69, 0.70)}.items() for seed, score in enumerate(pair)]
    low, high = ablation.figure({"runs": runs}).layout.xaxis.range
    assert 0.6 < low < 0.69
    assert 0.74 < high <= 1.0
