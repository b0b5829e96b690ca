"""Time-budgeted runs: the plan fits the budget, scoring included; a budgeted run resumes to its plan; probes by progress."""

import json
import math
import threading
from itertools import pairwise

import pytest
import torch
from safetensors.torch import load_file

from resnet import budget, runs, speeds, train
from resnet.config import ConfigError, make_config, parse_budget, parse_resolution
from resnet.train import Trainer, lr_at, resolution_at, resume_config

# Throughputs measured here and elsewhere: (name, training images/s by size, scored images/s, checkpoint s).
MACHINES = {
    "avx512-bf16 epyc": budget.Rates(train={16: 600.0, 24: 330.0, 32: 200.0}, score=530.0, checkpoint_s=0.03),
    "twice as fast": budget.Rates(train={16: 1000.0, 24: 650.0, 32: 420.0}, score=1100.0, checkpoint_s=0.03),
    "avx2 fp32": budget.Rates(train={16: 126.0, 24: 80.0, 32: 46.0}, score=140.0, checkpoint_s=0.05),
    "h100": budget.Rates(train={16: 60000.0, 24: 45000.0, 32: 30000.0}, score=90000.0, checkpoint_s=0.05),
}
RUN = {"batch_size": 64, "steps_per_epoch": 50_000 // 64, "resolution": "16:0.5,24:0.75", "probes": 20, "probe_size": 500,
       "test_images": 10_000}


def predicted_end(plan: budget.Plan) -> float:
    return plan.spent_s + plan.train_s + plan.probe_s + plan.checkpoint_s + plan.final_s


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("text", ["1m", "2m", "5m", "15m"])
def test_the_plan_fits_every_budget_scoring_included(machine, text):
    rates, seconds = MACHINES[machine], parse_budget(text)
    plan = budget.plan(seconds, 9.0, rates, **RUN)
    one_step = RUN["batch_size"] / min(rates.train.values())
    assert plan.steps >= 1
    assert plan.epochs == math.ceil(plan.steps / (50_000 // 64))
    # It ends within the budget less its margin, and leaves no more than a step and a probe of it unused.
    assert predicted_end(plan) <= seconds - plan.margin_s + 1e-6
    assert predicted_end(plan) >= seconds - plan.margin_s - one_step - plan.probe_s / 20 - 0.01 * seconds
    assert plan.final_s >= plan.test_images / rates.score  # the last scoring is inside the budget
    # All 10,000 test images where a fifth of the budget scores them, else as many as it does: never a quarter of it.
    assert plan.test_images == min(10_000, max(500, int(0.2 * seconds * rates.score)))
    assert plan.final_s <= 0.2 * seconds + rates.checkpoint_s or plan.test_images == 500
    assert plan.probe_s <= 0.06 * plan.train_s  # 5% of the training compute: about as much of its time
    assert plan.settings() == {"steps": plan.steps, "epochs": plan.epochs, "score_every": 0, "limit_test": plan.test_images}


def run_on(true: budget.Rates, measured: budget.Rates, budget_s: float, refits=budget.REPLAN_AT) -> float:
    """When a planned run would finish on a machine whose speed is ``true`` where it measured ``measured``: its
    steps one by one at the true pace, re-fitted as the trainer does at ``refits``."""
    plan = budget.plan(budget_s, 9.0, measured, **RUN)
    phases, batch = parse_resolution(RUN["resolution"]), RUN["batch_size"]
    knots, clock, step, met, points = [(0, 0.0), (plan.steps, 1.0)], plan.spent_s, 0, {}, list(refits)
    overhead_s = (plan.probe_s + plan.checkpoint_s) / plan.steps * measured.score / true.score
    while step < knots[-1][0]:
        size = resolution_at(phases, budget.progress_at(step, knots))
        clock += batch / true.train[size] + overhead_s
        seconds, steps = met.get(size, (0.0, 0))
        met[size] = (seconds + batch / true.train[size], steps + 1)
        step += 1
        progress = budget.progress_at(step, knots)
        if points and progress >= points[0]:
            end = budget.refit(budget_s - clock - plan.final_s - plan.margin_s, step, progress, RUN["resolution"],
                               budget.step_seconds(measured.train, batch, met), overhead_s)
            knots = [*knots[:-1], (step, progress), (end, 1.0)]
            points = [p for p in points if p > progress]
    return clock + (plan.final_s - measured.checkpoint_s) * measured.score / true.score + true.checkpoint_s


def scaled(rates: budget.Rates, factor: float, sizes=(16, 24, 32)) -> budget.Rates:
    return budget.Rates(train={size: rate * (factor if size in sizes else 1) for size, rate in rates.train.items()},
                        score=rates.score * factor, checkpoint_s=rates.checkpoint_s)


@pytest.mark.parametrize("text", ["1m", "5m", "15m"])
@pytest.mark.parametrize(("factor", "sizes"), [(0.8, (16, 24, 32)), (1.2, (16, 24, 32)), (0.7, (32,)), (0.85, (24, 32))])
def test_refits_end_a_run_on_its_budget_on_a_machine_not_as_measured(text, factor, sizes):
    measured, seconds = MACHINES["avx512-bf16 epyc"], parse_budget(text)
    true = scaled(measured, factor, sizes)
    fitted, unfitted = run_on(true, measured, seconds), run_on(true, measured, seconds, refits=())
    margin = budget.MARGIN * seconds
    # The score's own pace is not re-fitted (it comes after the last step), so its error is what remains.
    final_error = abs(budget.plan(seconds, 9.0, measured, **RUN).final_s * (1 / factor - 1))
    assert seconds - margin - 0.02 * seconds - final_error <= fitted <= seconds - margin + 0.01 * seconds + final_error
    assert abs(fitted - (seconds - margin)) < abs(unfitted - (seconds - margin))  # the plan alone misses by more
    if sizes == (16, 24, 32):
        assert abs(unfitted / seconds - 1) > 0.1  # what the re-fits mend: 10% and more


def test_progress_bends_at_a_knot_and_stays_continuous():
    knots = [(0, 0.0), (100, 1.0)]
    assert [budget.progress_at(s, knots) for s in (0, 50, 100)] == [0.0, 0.5, 1.0]
    bent = [(0, 0.0), (20, 0.2), (60, 1.0)]  # re-fitted at step 20 to end at 60: the last 80% over 40 steps
    assert budget.progress_at(20, bent) == pytest.approx(0.2)
    assert budget.progress_at(40, bent) == pytest.approx(0.6)
    assert budget.progress_at(19, bent) == pytest.approx(0.19)
    assert budget.progress_at(60, bent) == 1.0
    assert budget.size_shares("16:0.5,24:0.75", 0.6) == pytest.approx({24: 0.15, 32: 0.25})
    assert budget.size_shares("16:0.5,24:0.75", 0.8) == pytest.approx({32: 0.2})
    # A size met for long enough counts at its own pace; one not met yet at its measurement, scaled as the others ran.
    met = {16: (2.0, 10)}  # 0.2 s a step where 0.1 s was measured: twice as slow
    paces = budget.step_seconds({16: 640.0, 32: 320.0}, 64, met)
    assert paces == pytest.approx({16: 0.2, 32: 0.4})
    assert budget.step_seconds({16: 640.0, 32: 320.0}, 64, {16: (0.4, 2)}) == pytest.approx({16: 0.1, 32: 0.2})


def test_a_faster_machine_buys_more_steps_and_a_longer_budget_more():
    slow = budget.plan(300, 9.0, MACHINES["avx2 fp32"], **RUN)
    fast = budget.plan(300, 9.0, MACHINES["twice as fast"], **RUN)
    longer = budget.plan(900, 9.0, MACHINES["twice as fast"], **RUN)
    assert slow.steps < fast.steps < longer.steps


def test_a_budget_too_short_to_train_is_one_clear_error():
    with pytest.raises(ConfigError, match="leaves no time to train"):
        budget.plan(20, 16.0, MACHINES["avx2 fp32"], **RUN)  # 500 images at 140/s take 3.6 s, 16 s are gone


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("1.5h", 5400), (" 2m ", 120), ("", 0)])
def test_budgets_are_read_in_seconds_minutes_or_hours(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["5", "5 min", "-5m", "10s", "25h", "nan", "1e3s"])
def test_odd_budgets_are_refused_by_name(text):
    with pytest.raises(ConfigError, match="budget"):
        make_config("quick", budget=text)


def test_probes_come_evenly_by_progress_and_cost_at_most_five_percent():
    for steps, probes in ((10, 10), (1000, 10), (7, 10), (12_345, 20)):
        every = budget.probe_interval(steps, probes)
        assert steps // every >= min(steps, probes)
        for resolution in ("", "16:0.5,24:0.75", "16:0.9"):
            images = budget.probe_images(500, every * 64, resolution)
            scale = sum(share * (size / 32) ** 2 for size, share in budget.size_shares(resolution).items())
            # A probe scores images at full size (one forward each); a training image costs three forwards at its size.
            assert images == 1 or images <= 0.05 * 3 * every * 64 * scale
    assert budget.size_shares("16:0.5,24:0.75") == {16: 0.5, 24: 0.25, 32: 0.25}
    assert budget.probe_interval(100, 0) == 0
    assert budget.probe_images(0, 1000, "") == 0


def test_a_run_on_tiny_data_gets_at_least_ten_probe_points(tiny_data, tmp_path):
    config = make_config("quick", data_dir=str(tiny_data), limit_train=96, limit_test=20, batch_size=8, epochs=1, probe_size=20,
                         probes=10, precision="fp32", device="cpu", eval_batch_size=20, log_every=4)
    assert Trainer(config, tmp_path).run()["status"] == "finished"
    probes = [r for r in runs.read_metrics(tmp_path) if r["kind"] == "probe"]
    assert len(probes) >= 10
    assert [r["step"] for r in probes] == list(range(1, 13))


FIXED_RATES = budget.Rates(train={16: 16.0, 32: 8.0}, score=1000.0, checkpoint_s=0.0)  # one 8-image step a 0.5-1 s


def budgeted(tiny_data, **changes):
    return make_config("quick", **{"data_dir": str(tiny_data), "limit_train": 48, "limit_test": 20, "batch_size": 8,
                                   "budget": "30s", "resolution": "16:0.5", "precision": "fp32", "device": "cpu",
                                   "eval_batch_size": 20, "log_every": 2, "probe_size": 10, "probes": 10, **changes})


def test_a_budgeted_run_records_its_plan_and_trains_exactly_its_steps(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "measure", lambda self, parts: FIXED_RATES)
    monkeypatch.setattr(budget, "REPLAN_AT", ())  # the plan as made: this run trains far faster than FIXED_RATES
    outcome = Trainer(budgeted(tiny_data), tmp_path).run()
    assert outcome["status"] == "finished"
    stored = runs.read_config(tmp_path)
    plan = stored["plan"]
    # 30 s less the margin and the scoring, at 0.5 s a step for half of them and 1 s for the other half: about 37 steps.
    assert 30 <= plan["steps"] <= 38
    assert stored["steps"] == plan["steps"]
    assert stored["score_every"] == 0
    assert stored["epochs"] == math.ceil(plan["steps"] / 6)  # 48 images, 8 a step
    rows = runs.read_metrics(tmp_path)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert epochs[-1]["step"] == plan["steps"]
    assert epochs[-1]["images"] == plan["steps"] * 8
    assert [r for r in epochs if "test_acc" in r] == epochs[-1:]  # held-out sets scored once, at the end
    assert len([r for r in rows if r["kind"] == "probe"]) >= 10
    card = json.loads((tmp_path / runs.CARD).read_text())
    scoring = card["provenance"]["plan"].pop("final_scoring")  # what the final scoring took, known only at the end
    assert card["provenance"]["plan"] == plan
    assert scoring["images"] == plan["test_images"] == 20
    assert scoring["seconds"] > 0
    assert card["test_acc"] == epochs[-1]["test_acc"]
    assert "fp32, eval mode" in card["measured"]
    assert "tta_test_acc" not in card
    assert f"after {plan['steps']} steps" in runs.read_status(tmp_path)["message"]


def test_a_stopped_budget_run_resumes_to_the_same_plan(tiny_data, tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(Trainer, "measure", lambda self, parts: measured.append(1) or FIXED_RATES)
    monkeypatch.setattr(budget, "REPLAN_AT", ())
    event = threading.Event()

    def stop_at_ten(record):
        if record["kind"] == "step" and record["step"] == 10:
            event.set()

    assert Trainer(budgeted(tiny_data), tmp_path, callbacks=[stop_at_ten], stop_event=event).run()["status"] == "stopped"
    before = runs.read_config(tmp_path)
    config = resume_config(tmp_path)
    assert config.budget == "30s"
    assert config.steps == before["plan"]["steps"]
    assert Trainer(config, tmp_path).run(resume=True)["status"] == "finished"
    assert measured == [1]  # the resumed run measured nothing and planned nothing: it follows the recorded plan
    assert not speeds.cache_file().exists()  # nor kept its pace: its clock broke at the stop
    assert runs.read_config(tmp_path) == before
    steps = [r["step"] for r in runs.read_metrics(tmp_path) if r["kind"] == "step"]
    assert steps == list(range(2, before["steps"] + 1, 2))  # every step once, to the planned end
    with pytest.raises(ConfigError, match="--epochs does not apply"):
        resume_config(tmp_path, epochs=50)


def test_a_budget_run_measures_this_machine_for_real(tiny_data, tmp_path):
    config = budgeted(tiny_data)
    trainer = Trainer(config, tmp_path)
    parts, _ = trainer.build()
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    rates = trainer.measure(parts)
    assert set(rates.train) == {16, 32}
    assert all(rate > 0 for rate in rates.train.values())
    assert rates.score == budget.first_score_rate(rates.train[32])  # scoring is not timed before the first step
    assert rates.checkpoint_s >= 0
    # Measured on a copy: the run's own network and optimizer are untouched.
    assert all((parts.model.state_dict()[k] == v).all() for k, v in before.items())
    assert not parts.optimizer.state


def test_a_measurement_plans_from_the_faster_of_two_steps_a_size(tiny_data, tmp_path, monkeypatch):
    laps = iter([0.9, 0.5, 0.25, 0.8])  # 16 px: a slow first step (its kernels built), then 32 px: an interrupted second

    class Scripted(train.Stopwatch):
        def lap(self):
            return next(laps)

    monkeypatch.setattr(train, "Stopwatch", Scripted)
    trainer = Trainer(budgeted(tiny_data), tmp_path)
    rates = trainer.measure(trainer.build()[0])
    assert rates.train == {16: 8 / 0.5, 32: 8 / 0.25}  # batch 8
    assert next(laps, None) is None  # two steps a size, no more


def test_a_partial_last_epoch_ends_where_the_steps_do(tiny_data, tmp_path):
    config = make_config("original", data_dir=str(tiny_data), limit_train=24, limit_test=16, batch_size=8, steps=5,
                         log_every=1, precision="fp32", device="cpu", eval_batch_size=16, score_every=0)
    assert Trainer(config, tmp_path).run()["status"] == "finished"
    epochs = [r for r in runs.read_metrics(tmp_path) if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"], r["images"]) for r in epochs] == [(1, 3, 24), (2, 5, 40)]
    assert "test_acc" not in epochs[0]
    assert "test_acc" in epochs[1]


def fixed_refit(seconds_left, step, progress, resolution, step_s, overhead_s):
    """A re-fit that reads no clock, so that two runs re-fit alike: the progress left over 25 steps, plus 10."""
    return step + round((1 - progress) * 25) + 10


def test_a_refitted_run_bends_its_schedules_continuously(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "measure", lambda self, parts: FIXED_RATES)
    monkeypatch.setattr(budget, "refit", fixed_refit)
    assert Trainer(budgeted(tiny_data), tmp_path).run()["status"] == "finished"
    stored = runs.read_config(tmp_path)
    refits = stored["plan"]["refits"]
    assert [round(r["progress"], 1) for r in refits] == [0.2, 0.4, 0.6, 0.8]
    assert stored["steps"] == refits[-1]["steps"] != stored["plan"]["steps"]
    rows = [r for r in runs.read_metrics(tmp_path) if r["kind"] == "step"]
    last = [r for r in runs.read_metrics(tmp_path) if r["kind"] == "epoch"][-1]
    assert last["step"] == stored["steps"]
    assert rows[-1]["total_steps"] == stored["steps"]
    lrs = [r["lr"] for r in rows]  # one-cycle: up to the peak, then down to 0, with no jump at a re-fit
    peak = lrs.index(max(lrs))
    assert all(b >= a for a, b in pairwise(lrs[: peak + 1]))
    assert all(b <= a for a, b in pairwise(lrs[peak:]))
    knots = [(0, 0.0), *((r["step"], r["progress"]) for r in refits), (stored["steps"], 1.0)]
    config = resume_config(tmp_path)  # each step's lr is the schedule's at its progress along the bent line
    assert lrs == [pytest.approx(lr_at(config, budget.progress_at(r["step"] - 1, knots))) for r in rows]
    assert [r["resolution"] for r in rows] == sorted(r["resolution"] for r in rows)
    assert "re-fitted to this run's own pace" in budget.summary(stored["plan"])


def test_a_run_stopped_after_a_refit_resumes_to_the_same_weights(tiny_data, tmp_path, monkeypatch):
    """A resume follows the re-fits recorded before its stop and makes none of its own: it ends as a run that
    re-fitted at those points only."""
    monkeypatch.setattr(Trainer, "measure", lambda self, parts: FIXED_RATES)
    monkeypatch.setattr(speeds, "recall", lambda key, sizes: None)  # both runs plan from FIXED_RATES, not the pace met
    monkeypatch.setattr(budget, "refit", fixed_refit)
    monkeypatch.setattr(budget, "REPLAN_AT", (0.2, 0.4))
    plan = budget.plan  # planned as if no time had gone before: the first run in a process starts slower (imports)
    monkeypatch.setattr(budget, "plan", lambda budget_s, spent_s, *args, **kwargs: plan(budget_s, 0.0, *args, **kwargs))
    straight = tmp_path / "straight"
    assert Trainer(budgeted(tiny_data, ema=0.9), straight).run()["status"] == "finished"
    second_refit = runs.read_config(straight)["plan"]["refits"][1]["step"]

    monkeypatch.setattr(budget, "REPLAN_AT", (0.2, 0.4, 0.6, 0.8))
    stopped, event = tmp_path / "stopped", threading.Event()
    stop = lambda record: record["kind"] == "step" and record["step"] >= second_refit and event.set()  # noqa: E731
    assert Trainer(budgeted(tiny_data, ema=0.9), stopped, callbacks=[stop], stop_event=event).run()["status"] == "stopped"
    assert len(runs.read_config(stopped)["plan"]["refits"]) == 2
    monkeypatch.setattr(budget, "refit", lambda *args: pytest.fail("a resumed run re-fitted"))
    assert Trainer(resume_config(stopped), stopped).run(resume=True)["status"] == "finished"
    settings = lambda run: {k: v for k, v in runs.read_config(run).items() if k != "plan"}  # noqa: E731
    refitted = lambda run: [(r["step"], r["progress"], r["steps"]) for r in runs.read_config(run)["plan"]["refits"]]  # noqa: E731
    assert settings(stopped) == settings(straight)
    assert refitted(stopped) == refitted(straight)
    straight_weights, resumed_weights = load_file(straight / runs.WEIGHTS), load_file(stopped / runs.WEIGHTS)
    assert all(torch.equal(straight_weights[key], resumed_weights[key]) for key in straight_weights)
    rows = lambda run: [(r["step"], r["lr"], r["resolution"]) for r in runs.read_metrics(run) if r["kind"] == "step"]  # noqa: E731
    assert rows(stopped) == rows(straight)
