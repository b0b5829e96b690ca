"""FLOPs counting and the time-to-accuracy experiment: counts against the convolution arithmetic, the
resolution schedule's images, each target's first epoch, the table, a tiny run and its CLI."""

import contextlib
import json

import pytest
import torch
from torch import nn

from resnet import flops, runs
from resnet.cli import main
from resnet.config import ConfigError, make_config
from resnet.experiments import runner, storage, time_to_accuracy
from resnet.experiments.runner import Budget, Options
from resnet.model import build_model

BUDGET = Budget(train_size=64, val_size=64, epochs=None, test_size=20)
TINY = {"fast": {"batch_size": 32, "epochs": 2}, "lowres": {"batch_size": 32, "epochs": 2, "resolution": "16:0.5"}}
TINY_EXPERIMENT = time_to_accuracy.TimeToAccuracy(recipes=TINY)


def by_hand(blocks, size: int) -> int:
    """2 FLOPs per multiply-add of every convolution and of the linear layer, from their output shapes:
    the forward pass once, the backward twice (the input's gradient and the weight's), except the input
    gradient of the first convolution, whose input is the image."""
    model, costs = build_model(blocks, dropout=0.0).eval(), []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            costs.append(2 * kernel * output[0].numel())
        else:
            costs.append(2 * module.in_features * module.out_features)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return 3 * sum(costs) - costs[0]


@pytest.mark.parametrize("size", [16, 24, 32])
def test_an_images_flops_are_the_convolutions_and_the_linear_layer_forward_and_backward(size):
    assert flops.image_flops((1, 1, 1, 1), size) == by_hand((1, 1, 1, 1), size)
    assert flops.image_flops((2, 2, 2, 2), size) == by_hand((2, 2, 2, 2), size)


def test_a_resolution_schedule_spends_its_steps_at_its_sizes():
    config = make_config("fast", limit_train=10_240, epochs=4, resolution="16:0.5,24:0.75")  # 20 steps of 512
    assert flops.steps_per_epoch(config) == 20
    assert flops.images_at_each_size(config) == {16: 40 * 512, 24: 20 * 512, 32: 20 * 512}
    assert flops.images_at_each_size(config, steps=30) == {16: 30 * 512}
    assert flops.images_at_each_size(config, steps=1_000) == flops.images_at_each_size(config)
    cost = {size: flops.image_flops(config.blocks, size) for size in (16, 24, 32)}
    assert flops.training_flops(config) == 512 * (40 * cost[16] + 20 * cost[24] + 20 * cost[32])
    plain = make_config("fast", limit_train=10_240, epochs=4)
    assert flops.training_flops(plain) == 80 * 512 * cost[32]


def test_every_candidate_recipe_costs_at_most_half_of_the_fast_presets_flops():
    experiment = time_to_accuracy.TIME_TO_ACCURACY
    recipes, _ = experiment.plan(None, experiment.budget, {})
    assert recipes[0].run_id == time_to_accuracy.BASELINE
    assert recipes[0].change == {}
    baseline = flops.training_flops(experiment.config_for(recipes[0], experiment.budget))
    for recipe in recipes[1:]:
        config = experiment.config_for(recipe, experiment.budget)
        assert flops.training_flops(config) <= baseline / 2, recipe.run_id
        assert not config.score_test
        assert config.val_size == experiment.budget.val_size


def test_a_target_is_reached_at_the_first_epoch_that_scores_it():
    curve = [{"epoch": e, "elapsed_s": 10.0 * e, "images": 100 * e, "flops": 7 * e, "val_acc": acc}
             for e, acc in ((1, 0.5), (2, 0.91), (3, 0.89), (4, 0.95))]
    assert time_to_accuracy.reached(curve, 0.90) == {"epoch": 2, "elapsed_s": 20.0, "images": 200, "flops": 14}
    assert time_to_accuracy.reached(curve, 0.95)["epoch"] == 4
    assert time_to_accuracy.reached(curve, 0.96) is None
    assert time_to_accuracy.reached([{"epoch": 1, "val_acc": None}], 0.0) is None


def test_the_table_of_a_partial_experiment():
    hit = {"epoch": 3, "elapsed_s": 5400.0, "images": 135_000, "flops": 2.5e14}
    results = {"runs": [
        {"run_id": "fast", "change": {}, "status": "finished", "final_val_acc": 0.9412, "flops": 2e15,
         "reached": {"90%": hit, "94%": None}, "timed_on": "cpu: a CPU"},
        {"run_id": "lowres", "change": {"epochs": 29}, "status": "pending", "final_val_acc": None, "flops": 1e15,
         "reached": {"90%": None, "94%": None}, "timed_on": None}]}
    assert time_to_accuracy.table(results) == [
        {"recipe": "fast", "change": "none: the fast preset", "PFLOPs": "2.00 (1.00x)", "final val": "94.12%",
         "to 90%": "1 h 30 min, 0.14M images, 0.25 PFLOPs (epoch 3)", "to 94%": "not reached", "machine": "cpu: a CPU"},
        {"recipe": "lowres", "change": "epochs=29", "PFLOPs": "1.00 (0.50x)", "final val": "pending",
         "to 90%": "pending", "to 94%": "pending", "machine": ""}]
    lines = time_to_accuracy.markdown(results).splitlines()
    assert lines[0].startswith("| recipe | change | PFLOPs |")
    assert len(lines) == 4
    assert time_to_accuracy.markdown({}) == ""
    assert not time_to_accuracy.figure({"runs": []}).data


def test_a_run_resumed_on_another_machine_is_timed_on_both(tmp_path):
    """Its clock runs over both machines, so its row names both rather than the one it finished on."""
    run_dir = tmp_path / "lowres"
    run_dir.mkdir()
    (run_dir / runs.CONFIG).write_text("{}")
    for epoch, device in ((1, "cpu: A"), (2, "cpu: A"), (3, "cuda: B")):
        runs.append_metrics(run_dir, {"kind": "epoch", "epoch": epoch, "step": epoch, "val_acc": 0.5, "device": device,
                                      "images_per_s": 10.0, "elapsed_s": float(epoch)})
    runs.write_status(run_dir, "finished")
    assert runner.measured(tmp_path, "lowres")["timed_on"] == "mixed: cpu: A; cuda: B"
    (run_dir / runs.METRICS).write_text("")
    runs.append_metrics(run_dir, {"kind": "epoch", "epoch": 1, "step": 1, "val_acc": 0.5, "device": "cpu: A"})
    assert runner.measured(tmp_path, "lowres")["timed_on"] is None  # one machine: its card's name (none here)


@pytest.mark.slow
def test_a_tiny_experiment_records_when_each_recipe_reached_each_target(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(time_to_accuracy, "TARGETS", (0.0, 1.01))  # reached at the first epoch; never
    results_path = tmp_path / "results" / "time-to-accuracy.json"
    results = storage.run_study(TINY_EXPERIMENT, BUDGET, Options(tmp_path / "runs", results_path, tiny_data), None, None)
    rows = {row["run_id"]: row for row in results["runs"]}
    assert list(rows) == list(TINY)
    assert all(row["status"] == "finished" for row in rows.values())
    assert results["budget"] == {**BUDGET.fields(), **TINY_EXPERIMENT.notes}
    assert "epochs" not in results["budget"]
    cost = {size: flops.image_flops((1, 1, 1, 1), size) for size in (16, 32)}
    assert rows["fast"]["flops"] == 2 * 64 * cost[32]
    assert rows["lowres"]["flops"] == 64 * (cost[16] + cost[32])
    for _name, row in rows.items():
        assert [p["epoch"] for p in row["curve"]] == [1, 2]
        assert [p["images"] for p in row["curve"]] == [64, 128]
        assert row["curve"][-1]["flops"] == row["flops"]
        assert row["curve"][0]["elapsed_s"] < row["curve"][1]["elapsed_s"]
        assert row["config"]["epochs"] == 2
        assert not row["config"]["score_test"]
        first = row["reached"]["0%"]
        assert first == {key: row["curve"][0][key] for key in ("epoch", "elapsed_s", "images", "flops")}
        assert row["reached"]["101%"] is None
    assert rows["lowres"]["reached"]["0%"]["flops"] == 64 * cost[16]  # its first epoch is all at 16 px
    table = {row["recipe"]: row for row in time_to_accuracy.table(results)}
    assert table["fast"]["to 101%"] == "not reached"
    assert "(epoch 1)" in table["lowres"]["to 0%"]
    assert table["lowres"]["PFLOPs"].endswith(f"({rows['lowres']['flops'] / rows['fast']['flops']:.2f}x)")
    assert (results_path.parent / "time-to-accuracy-curves.html").is_file()
    assert json.loads(results_path.read_text()) == json.loads(json.dumps(results))
    trained = []
    noted = Options(tmp_path / "runs", results_path, tiny_data,
                    watch=lambda *run: trained.append(run) or contextlib.nullcontext())
    again = storage.run_study(TINY_EXPERIMENT, BUDGET, noted, None, None)
    assert trained == []
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))

    edited = time_to_accuracy.TimeToAccuracy(recipes={**TINY, "fast": {"batch_size": 32, "epochs": 3}})
    for out in (tmp_path / "runs", tmp_path / "fresh-checkout"):  # its folder, else the results file's row, says so
        with pytest.raises(ConfigError, match=r"^fast was trained with other settings than its recipe has now \(epochs 2 -> 3\)"):
            storage.run_study(edited, BUDGET, Options(out, results_path, tiny_data), None, None)
    assert json.loads(results_path.read_text()) == json.loads(json.dumps(results))


@pytest.mark.slow
def test_cli_time_to_accuracy_trains_the_chosen_recipes(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(time_to_accuracy, "TIME_TO_ACCURACY", TINY_EXPERIMENT)
    root, results_path = tmp_path / "runs", tmp_path / "tta.json"
    code = main(["time-to-accuracy", "--data-dir", str(tiny_data), "--out", str(root), "--results", str(results_path),
                 "--train-size", "64", "--val-size", "64", "--only", "lowres"])
    assert code == 0
    statuses = {r["run_id"]: r["status"] for r in json.loads(results_path.read_text())["runs"]}
    assert statuses == {"fast": "pending", "lowres": "finished"}
    out = capsys.readouterr().out
    assert out.startswith("training lowres")
    assert "| lowres | batch_size=32, epochs=2, resolution=16:0.5 |" in out


def test_cli_time_to_accuracy_takes_no_epochs_and_only_known_recipes(tmp_path, capsys):
    for flags in (["--epochs", "3"], ["--only", "no-such-recipe"]):
        with pytest.raises(SystemExit) as exit_:
            main(["time-to-accuracy", "--out", str(tmp_path), *flags])
        assert exit_.value.code == 2
    assert not any(tmp_path.iterdir())


def test_every_recipe_of_the_curves_figure_has_a_look_of_its_own():
    curve = [{"epoch": 1, "val_acc": 0.5, "flops": 1e15}, {"epoch": 2, "val_acc": 0.9, "flops": 2e15}]
    results = {"runs": [{"run_id": name, "curve": curve} for name in time_to_accuracy.RECIPES]}
    traces = [t for t in time_to_accuracy.figure(results).data if t.name in time_to_accuracy.RECIPES]
    assert len(traces) == len(time_to_accuracy.RECIPES) > 10
    assert len({(t.line.color, t.marker.symbol) for t in traces}) == len(traces)
