"""Speeds kept between runs: a budgeted run of a kind already run here plans from the pace that run met and
measures nothing; another kind, or a cache that cannot be read, measures as before."""

import json
import threading

import pytest
from test_budget import FIXED_RATES, budgeted

from resnet import budget, runs, speeds
from resnet.train import Trainer

MEASURED = budget.Rates(train={**FIXED_RATES.train, 24: 12.0}, score=FIXED_RATES.score, checkpoint_s=0.0)


def measuring(monkeypatch) -> list:
    """Every measurement the trainer makes, answered with MEASURED."""
    made = []
    monkeypatch.setattr(Trainer, "measure", lambda self, parts: made.append(1) or MEASURED)
    return made


def test_a_second_run_of_a_kind_plans_from_the_pace_the_first_met_and_measures_nothing(tiny_data, tmp_path, monkeypatch):
    short = {"budget": "20s"}  # the shortest budget: two runs that re-fit to their own pace, each as long as it
    made = measuring(monkeypatch)
    assert Trainer(budgeted(tiny_data, **short), tmp_path / "first").run()["status"] == "finished"
    first = runs.read_config(tmp_path / "first")["plan"]
    assert made == [1]
    assert first["rates_from"] == "measured at the start"
    assert first["refits"]  # this run trains far faster than FIXED_RATES: it re-fitted to its own pace
    met = first["refits"][-1]["step_s"]
    assert Trainer(budgeted(tiny_data, **short), tmp_path / "second").run()["status"] == "finished"
    second = runs.read_config(tmp_path / "second")["plan"]
    assert made == [1]
    assert second["rates_from"] == "an earlier run of this kind on this machine"
    # The pace the first run met at its last re-fit, not what it measured: the second plans many more steps.
    assert second["rates"]["train"] == {size: 8 / seconds for size, seconds in met.items()}
    # And the pace its final scoring met, which its card records.
    scoring = json.loads((tmp_path / "first" / runs.CARD).read_text())["provenance"]["plan"]["final_scoring"]
    assert scoring["images"] == first["test_images"] == 20
    assert second["rates"]["score"] == pytest.approx(scoring["images"] / scoring["seconds"])
    assert second["steps"] > first["steps"]
    assert second["spent_s"] >= second["data_s"] > 0
    assert "speeds from an earlier run" in budget.summary(second)
    assert "start and measure this machine" in budget.summary(first)


@pytest.mark.parametrize("change", [{"whiten_stem": False}, {"resolution": "24:0.5"}, {"optimizer": "adam"}])
def test_a_run_of_another_kind_measures_for_itself(tiny_data, tmp_path, monkeypatch, change):
    made = measuring(monkeypatch)
    monkeypatch.setattr(budget, "REPLAN_AT", ())
    speeds.remember(speeds.kind(budgeted(tiny_data), Trainer(budgeted(tiny_data), tmp_path / "a").device_name), FIXED_RATES)
    assert Trainer(budgeted(tiny_data, **change), tmp_path / "b").run()["status"] == "finished"
    assert made == [1]  # another stem, optimizer, or a size (24 px) the kept speeds lack


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"x": 1}', None])
def test_a_cache_that_cannot_be_read_or_written_costs_a_measurement_and_nothing_else(tiny_data, tmp_path, monkeypatch,
                                                                                      content):
    made = measuring(monkeypatch)
    monkeypatch.setattr(budget, "REPLAN_AT", ())
    cache = speeds.cache_file()
    if content is None:  # a file where the cache's folder should be: nothing can be written
        cache.parent.parent.mkdir(parents=True, exist_ok=True)
        cache.parent.write_text("in the way")
    else:
        cache.parent.mkdir(parents=True)
        cache.write_text(content)
    for name in ("first", "second"):
        assert Trainer(budgeted(tiny_data), tmp_path / name).run()["status"] == "finished"
    assert made == ([1, 1] if content is None else [1])  # a broken file is replaced by one that holds the speeds


def test_only_a_finished_run_keeps_its_pace(tiny_data, tmp_path, monkeypatch):
    made = measuring(monkeypatch)
    monkeypatch.setattr(budget, "REPLAN_AT", ())
    stop = threading.Event()
    stop.set()  # asked before the first step: the run stops after it, having measured
    assert Trainer(budgeted(tiny_data), tmp_path / "stopped", stop_event=stop).run()["status"] == "stopped"
    assert not speeds.cache_file().exists()
    assert Trainer(budgeted(tiny_data), tmp_path / "next").run()["status"] == "finished"
    assert made == [1, 1]  # the stopped run's measurement was not kept; the finished one's is
    assert speeds.cache_file().exists()


def test_the_final_scorings_pace_counts_the_validation_split_scored_with_the_test_set(tiny_data, tmp_path, monkeypatch):
    measuring(monkeypatch)
    monkeypatch.setattr(budget, "REPLAN_AT", ())
    assert Trainer(budgeted(tiny_data, val_size=8), tmp_path).run()["status"] == "finished"
    scoring = json.loads((tmp_path / runs.CARD).read_text())["provenance"]["plan"]["final_scoring"]
    assert scoring["images"] == 20 + 8  # the test images and the split, each scored once at the end
    kept = json.loads(speeds.cache_file().read_text())
    assert [entry["score"] for entry in kept.values()] == [pytest.approx(scoring["images"] / scoring["seconds"])]
