"""Recipe searches on Optuna's storage: the pruner stops a trial that falls behind, real `python -m resnet search`
workers share one journal without training a trial twice, and a stopped trial is resumed with its own settings."""

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys

import optuna
import pytest
from helpers import REPO, wait_for
from test_budget import FIXED_RATES, budgeted

from resnet import runs
from resnet.cli import main
from resnet.experiments import search, storage
from resnet.experiments.runner import Budget, Options
from resnet.train import Trainer

SMOKE = search.SEARCHES["smoke"]
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def opened(tmp_path, prune=True):
    shared = storage.open_storage(None, tmp_path)
    return shared, search.open_search(shared, "s", SMOKE, prune)


def finished_before(study, accuracies) -> None:
    """Finished trials whose every probe scored as ``accuracies`` says, for the pruner to compare with."""
    for accuracy in accuracies:
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.05}, distributions={"lr": optuna.distributions.FloatDistribution(0.01, 0.5, log=True)},
            value=accuracy, intermediate_values=dict.fromkeys(range(1, SMOKE.probes + 1), accuracy)))


def probes(reporter, accuracies, images=64) -> None:
    for accuracy in accuracies:
        reporter({"kind": "step", "step": 1})  # only probes are reported
        reporter({"kind": "probe", "probe_acc": accuracy, "probe_images": images})


# The finished trials' median is 0.5 at every probe; two standard errors of a 64-image probe there are 0.125.
@pytest.mark.parametrize(("prune", "accuracies", "pruned"), [
    (True, [0.1, 0.1, 0.1, 0.1], search.WARMUP_PROBES),  # far behind: pruned once past the warm-up probes
    (True, [0.1, 0.1, 0.1, 0.4], 0),  # behind by less than a probe's noise
    (True, [0.1, 0.45, 0.1, 0.1], 0),  # by its best probe so far
    (True, [0.6, 0.6, 0.6, 0.6], 0),  # ahead
    (False, [0.1, 0.1, 0.1, 0.1], 0),  # --no-prune: every trial runs to its end
])
def test_a_trial_behind_the_finished_trials_is_stopped_after_the_warm_up(tmp_path, prune, accuracies, pruned):
    shared, study = opened(tmp_path, prune)
    finished_before(study, [0.4, 0.5, 0.5, 0.6])
    more = dataclasses.replace(SMOKE, trials=SMOKE.trials + 1)
    worker = search.SearchWorker(more, Options(out=tmp_path), shared, study)
    trial = worker.next_trial()
    assert trial.user_attrs["run_id"] == f"trial-{trial.number:04d}" == "trial-0004"
    stop = search.PruneStop()
    probes(worker._reporter(trial, tmp_path / "trial-0004", stop), accuracies)
    assert (stop.pruned, stop.is_set()) == (pruned, bool(pruned))
    assert list(study.trials[4].intermediate_values) == list(range(1, (pruned or SMOKE.probes) + 1))


@pytest.mark.parametrize("plan", list(search.SEARCHES))
def test_every_plans_trials_are_scored_on_the_validation_split_alone(plan):
    chosen = search.SEARCHES[plan]
    config = chosen.config_for({name: (r.low + r.high) / 2 for name, r in chosen.space.items()})
    assert (config.val_size, config.score_test, config.limit_test) == (chosen.val_size, False, Budget.test_size)
    assert {name: getattr(config, name) for name in chosen.size if name != "limit_test"} == {
        name: value for name, value in chosen.size.items() if name != "limit_test"}


def test_the_sampler_is_seeded_by_the_search_and_the_trial_so_a_search_repeats(tmp_path):
    proposed = []
    for folder, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / folder).mkdir()
        shared, study = opened(tmp_path / folder)
        worker = search.SearchWorker(dataclasses.replace(SMOKE, seed=seed), Options(out=tmp_path / folder), shared, study)
        proposed.append([worker.next_trial().params["lr"] for _ in range(3)])
    assert proposed[0] == proposed[1]
    assert len(set(proposed[0])) == 3  # and workers asking at once propose different settings
    assert not set(proposed[2]) & set(proposed[0])  # another seed: none of the first's, shifted by a trial or not


def test_a_search_trains_its_trials_and_writes_the_best_from_the_storage(tmp_path, tiny_data, capsys):
    out, results_path = tmp_path / "runs", tmp_path / "search.json"
    flags = ["search", "--plan", "smoke", "--out", str(out), "--results", str(results_path), "--data-dir", str(tiny_data)]
    assert main(flags) == 0
    results = json.loads(results_path.read_text())
    assert [r["run_id"] for r in results["runs"]] == [f"trial-000{n}" for n in range(SMOKE.trials)]
    finished = [r for r in results["runs"] if r["status"] == "finished"]
    assert results["best"]["final_val_acc"] == max(r["final_val_acc"] for r in finished)
    for row in results["runs"]:
        config = runs.read_config(out / row["run_id"])
        assert (config["lr"], config["trial"]["number"], config["score_test"]) == (row["lr"], row["trial"], False)
        if row["status"] == "finished":  # 192 images at batch 32 for two epochs; no budget, so no plan
            assert (row["steps"], "planned_steps" in row) == (12, False)
        assert len(row["probes"]) >= 2
        assert row["ended_s"] >= row["started_s"] >= 0
    assert f"best: {results['best']['run_id']}" in capsys.readouterr().out
    # Another search in the same study is refused before anything trains, naming what differs.
    assert main([*flags, "--no-prune"]) == 2
    assert "another search (prune True -> False)" in capsys.readouterr().err


def test_a_budgeted_trials_row_holds_the_steps_it_planned_and_trained(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(Trainer, "measure", lambda self, parts: FIXED_RATES)
    assert Trainer(budgeted(tiny_data), tmp_path / "trial-0000").run()["status"] == "finished"
    config = runs.read_config(tmp_path / "trial-0000")
    row = search.row(0, tmp_path / "trial-0000", {}, "finished")
    assert (row["steps"], row["planned_steps"]) == (config["steps"], config["plan"]["steps"])
    assert row["steps"] > row["planned_steps"]  # it trains far faster than FIXED_RATES, and re-fitted its length


def worker(tmp_path, data, name, *flags) -> subprocess.Popen:
    command = [sys.executable, "-m", "resnet", "search", "--plan", "smoke", "--out", str(tmp_path / "runs"),
               "--results", str(tmp_path / "search.json"), "--data-dir", str(data), "--device", "cpu", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=open(tmp_path / f"{name}.log", "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def trials(tmp_path) -> list:
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / storage.JOURNAL)))
    return optuna.load_study(study_name="search-smoke", storage=journal).get_trials(deepcopy=False)


def started(tmp_path, *logs) -> collections.Counter:
    lines = [line.split() for log in logs for line in (tmp_path / f"{log}.log").read_text().splitlines()]
    return collections.Counter(words[1] for words in lines if len(words) == 2 and words[0] == "training")


@pytest.mark.slow
@pytest.mark.e2e
def test_two_workers_on_one_journal_train_each_trial_once(tmp_path, tiny_data):
    workers = [worker(tmp_path, tiny_data, name) for name in ("first", "second")]
    for process in workers:
        assert process.wait(timeout=600) == 0
    done = [t for t in trials(tmp_path) if t.state in DONE]
    # Two workers asking at once may each start the last trial: at most one more than asked for.
    assert SMOKE.trials <= len(done) <= SMOKE.trials + 1
    assert started(tmp_path, "first", "second") == collections.Counter(t.user_attrs["run_id"] for t in done)
    assert all(count == 1 for count in started(tmp_path, "first", "second").values())
    rows = json.loads((tmp_path / "search.json").read_text())["runs"]
    assert sorted(r["run_id"] for r in rows) == sorted(t.user_attrs["run_id"] for t in done)


def training_first_trial(tmp_path, data):
    """A worker of a one-trial search, once its trial has a checkpoint to resume from; and that trial's run folder."""
    run_dir = tmp_path / "runs" / "trial-0000"
    first = worker(tmp_path, data, "first", "--trials", "1")
    wait_for(lambda: (run_dir / runs.CHECKPOINT).is_file(), 300, "the first checkpoint")
    return first, run_dir


@pytest.mark.slow
@pytest.mark.e2e
def test_a_stopped_trial_is_queued_again_and_resumed_with_its_own_settings(tmp_path, tiny_data):
    first, run_dir = training_first_trial(tmp_path, tiny_data)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=300) == 130
    assert runs.read_status(run_dir)["status"] == "stopped"
    stopped, queued = trials(tmp_path)
    assert (stopped.state, queued.state) == (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING)
    assert (queued.params, queued.user_attrs["run_id"]) == (stopped.params, "trial-0000")
    second = worker(tmp_path, tiny_data, "second", "--trials", "1")
    assert second.wait(timeout=300) == 0
    assert "resuming trial-0000" in (tmp_path / "second.log").read_text()
    assert [t.state for t in trials(tmp_path)] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert runs.read_config(run_dir)["lr"] == stopped.params["lr"]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_workers_trial_is_resumed_by_another_and_counted_once(tmp_path, tiny_data):
    first, _ = training_first_trial(tmp_path, tiny_data)
    second = worker(tmp_path, tiny_data, "second", "--trials", "1")  # nothing to start: it waits on the running trial
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert second.wait(timeout=300) == 0
    assert "resuming trial-0000" in (tmp_path / "second.log").read_text()
    killed, resumed = trials(tmp_path)
    assert (killed.state, resumed.state) == (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE)
    assert (resumed.params, resumed.system_attrs["failed_trial"]) == (killed.params, killed.number)
    rows = json.loads((tmp_path / "search.json").read_text())["runs"]
    assert [(r["run_id"], r["trial"]) for r in rows] == [("trial-0000", resumed.number)]  # counted once
