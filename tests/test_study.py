"""The optimizer study end to end on the tiny data set: phases, divergence, skip and resume, figures."""

import contextlib
import dataclasses
import json
import threading

import pytest

from resnet import runs
from resnet.cli import main
from resnet.config import ConfigError
from resnet.experiments import runner, storage, study
from resnet.experiments.runner import Budget, Options

# 64 training images, batch 32: two steps an epoch. Adam at lr 1e37 turns the loss non-finite on
# its second step, which stands in for the published grid's diverging learning rates.
BUDGET = Budget(train_size=64, val_size=64, epochs=1, batch_size=32, test_size=20)
DESIGN = study.Design(optimizers=("adam", "sgd"), lrs=(1e37, 0.01), fallbacks=((1e37, 0.001),),
                      dropouts=(0.0, 0.1), sizes=((1, 1, 1, 1), (1, 1, 1, 2)))
TINY_STUDY = study.Study(design=DESIGN)


def recorder(log, stop_before=None, stop=None):
    """A watch hook that notes (run_id, resume) of every run and can ask one run to stop at once."""

    def watch(run_id, trainer, resume):
        log.append((run_id, resume))
        if run_id == stop_before:
            stop.set()
            assert trainer.stop_event.wait(30)  # passed on by the worker's watcher thread: the run stops at its first step
        return contextlib.nullcontext()

    return watch


def run(options) -> dict:
    """One worker of the tiny study, on the journal in its run folders."""
    return storage.run_study(TINY_STUDY, BUDGET, options, None, None)


@pytest.mark.slow
def test_study_runs_in_phases_resumes_and_skips(tiny_data, tmp_path):
    root, results_path = tmp_path / "study-runs", tmp_path / "results" / "study.json"
    stop, first = threading.Event(), []
    interrupted = "sgd-lr0p01-drop0p1-b1111"
    run(Options(root, results_path, tiny_data, stop_event=stop, watch=recorder(first, interrupted, stop)))
    # Adam diverged at 1e37, so its fallback lr comes next, before SGD's runs: workers claim in plan order.
    assert [run_id for run_id, _ in first] == ["adam-lr1e37-drop0p1-b1111", "adam-lr0p01-drop0p1-b1111",
                                               "adam-lr0p001-drop0p1-b1111", "sgd-lr1e37-drop0p1-b1111", interrupted]
    assert runs.read_status(root / interrupted)["status"] == "stopped"
    written = json.loads(results_path.read_text())
    statuses = {r["run_id"]: r["status"] for r in written["runs"]}
    assert statuses["adam-lr1e37-drop0p1-b1111"] == statuses["sgd-lr1e37-drop0p1-b1111"] == "diverged"
    assert statuses["sgd-lr0p001-drop0p1-b1111"] == "pending"
    assert written["waiting"].startswith("the optimizers phase is not done yet")
    assert written["experiment"] == "study"

    second = []
    results = run(Options(root, results_path, tiny_data, watch=recorder(second)))
    # The stopped run comes first, before the fallback planned after it, and resumes from its checkpoint.
    assert second[0] == (interrupted, True)
    assert not {run_id for run_id, _ in first[:-1]} & {run_id for run_id, _ in second}
    by_id = {r["run_id"]: r for r in results["runs"]}
    # Both optimizers diverged at 1e37, so each got the fallback lr; the winner's settings recur in later phases.
    assert {"adam-lr0p001-drop0p1-b1111", "sgd-lr0p001-drop0p1-b1111"} <= set(by_id)
    assert all(r["status"] in runner.DONE for r in results["runs"])
    assert results["waiting"] is None
    winner = by_id[results["choices"]["optimizers"]]
    assert winner["final_val_acc"] == max(r["final_val_acc"] for r in results["runs"] if "optimizers" in r["phases"]
                                          and r["final_val_acc"] is not None)
    assert "dropout" in winner["phases"]
    size_runs = [r for r in results["runs"] if "size" in r["phases"]]
    assert sorted(r["blocks"] for r in size_runs) == [[1, 1, 1, 1], [1, 1, 1, 2]]
    assert all(r["dropout"] == by_id[results["choices"]["dropout"]]["dropout"] for r in size_runs)
    finished = [r for r in results["runs"] if r["status"] == "finished"]
    assert all(len(r["curve"]) == 1 and r["curve"][0]["val_acc"] is not None for r in finished)
    assert by_id[interrupted]["final_val_acc"] is not None
    assert json.loads(results_path.read_text()) == json.loads(json.dumps(results))

    third = []
    run(Options(root, results_path, tiny_data, watch=recorder(third)))
    assert third == []

    # A fresh checkout has the committed results file but no run folders: nothing is trained again,
    # except a run the file does not record as done.
    written = json.loads(results_path.read_text())
    redo = next(r for r in written["runs"] if r["run_id"] == interrupted)
    redo["status"] = "stopped"
    results_path.write_text(json.dumps(written))
    fourth = []
    again = run(Options(tmp_path / "fresh-checkout", results_path, tiny_data, watch=recorder(fourth)))
    assert fourth == [(interrupted, False)]
    unchanged = [r for r in json.loads(json.dumps(results["runs"])) if r["run_id"] != interrupted]
    assert [r for r in json.loads(json.dumps(again["runs"])) if r["run_id"] != interrupted] == unchanged
    assert again["choices"] == results["choices"]

    heatmap = study.heatmap_figure(results).data[0]
    assert list(heatmap.x) == ["1e+37", "0.01", "0.001"]
    assert list(heatmap.y) == ["adam", "sgd"]
    assert heatmap.text[0][0] == "diverged"
    assert heatmap.z[0][0] is None
    assert {trace.name.split()[0] for trace in study.curves_figure(results).data} == {"adam", "sgd"}
    assert list(study.dropout_figure(results).data[0].x) == [0.0, 0.1]
    assert len(study.size_figure(results).data[0].x) == 2
    assert (results_path.parent / "study-heatmap.html").is_file()


def test_plan_waits_for_the_optimizer_phase(tmp_path):
    planned, waiting = study.STUDY.plan(tmp_path, study.STUDY.budget, {})
    assert len(planned) == 12
    assert {p.phases for p in planned} == {("optimizers",)}
    assert {p.lr for p in planned} == {0.5, 0.1, 0.01}
    assert "not done yet" in waiting


def test_a_study_folder_keeps_its_budget(tiny_data, tmp_path, capsys):
    root = tmp_path / "study-runs"
    root.mkdir()
    (root / runner.BUDGET_FILE).write_text(json.dumps({**dataclasses.asdict(BUDGET), "epochs": 3}))
    with pytest.raises(ConfigError, match="epochs 3 -> 1"):
        TINY_STUDY.check_folder(root, BUDGET)
    code = main(["study", "--data-dir", str(tiny_data), "--out", str(root), "--train-size", "64", "--val-size", "64",
                 "--epochs", "1", "--batch-size", "32", "--dry-run"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: ")
    assert error.count("\n") == 1


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "s"), "--results", str(tmp_path / "study.json"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "adam-lr0p01-drop0p1-b1111" in out
    assert "12 runs planned" in out
    assert not (tmp_path / "s").exists()


def test_the_committed_results_continue_the_study(tmp_path, capsys):
    # The shipped results/study.json, read as a fresh checkout reads it: its finished phases are not
    # planned for training again, and what it does not record is.
    committed = json.loads(open("results/study.json").read())
    assert main(["study", "--out", str(tmp_path / "s"), "--results", "results/study.json", "--dry-run"]) == 0
    lines = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    for row in committed["runs"]:
        assert lines[row["run_id"]] == (row["status"] if row["status"] in runner.DONE else "pending")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not a results file"),
    ('{"budget": [], "runs": []}', "not a results file"),
    (json.dumps({"budget": {**dataclasses.asdict(BUDGET), "epochs": 3}, "runs": []}), "another budget .*epochs 3 -> 1"),
    (json.dumps({"experiment": "ablation", "budget": BUDGET.fields(), "runs": []}), "results of the ablation, not the study;"),
])
def test_a_results_file_of_another_kind_is_refused_and_kept(tiny_data, tmp_path, content, message):
    results_path = tmp_path / "study.json"
    results_path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        run(Options(tmp_path / "runs", results_path, tiny_data))
    assert results_path.read_text() == content


@pytest.mark.slow
def test_cli_study_trains_only_the_chosen_runs(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "STUDY", TINY_STUDY)
    root, results_path = tmp_path / "runs", tmp_path / "study.json"
    code = main(["study", "--data-dir", str(tiny_data), "--out", str(root), "--results", str(results_path), "--train-size", "64",
                 "--val-size", "64", "--epochs", "1", "--batch-size", "32", "--only", "sgd-lr0p01"])
    assert code == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["sgd-lr0p01-drop0p1-b1111"]
    statuses = {r["run_id"]: r["status"] for r in json.loads(results_path.read_text())["runs"]}
    assert statuses["sgd-lr0p01-drop0p1-b1111"] == "finished"
    assert statuses["adam-lr0p01-drop0p1-b1111"] == "pending"
    assert "sgd-lr0p01-drop0p1-b1111" in capsys.readouterr().out


@pytest.mark.parametrize("only", ["adma-", "sgd-lr0p7"])
def test_a_study_prefix_that_names_no_run_is_refused(tmp_path, capsys, only):
    # adma- can name no run at all; sgd-lr0p7 none of the committed study's complete plan.
    results = tmp_path / "study.json"
    results.write_text(open("results/study.json").read())
    code = main(["study", "--out", str(tmp_path / "s"), "--results", str(results), "--only", only])
    error = capsys.readouterr().err
    assert code == 2
    assert f"--only {only!r} names no run of the study" in error
    assert error.count("\n") == 1
    assert not any(path.is_dir() for path in (tmp_path / "s").glob("*"))  # no run folder: nothing trained


@pytest.mark.parametrize(("machines", "drawn"), [
    (["cpu: A", "cpu: A"], True), (["cpu: A", "cpu: B"], False), ([None, "cpu: A"], False),
])
def test_the_size_figure_draws_seconds_only_from_one_machine(machines, drawn):
    rows = [{"run_id": f"b{b}", "phases": ["size"], "status": "finished", "final_val_acc": 0.5, "blocks": [b] * 4,
             "params": b * 1_000_000, "train_s_per_epoch": 40.0 * b, "timed_on": machine}
            for b, machine in zip((1, 2), machines, strict=True)]
    figure = study.size_figure({"runs": rows})
    assert len(figure.data) == (2 if drawn else 1)
    assert ("no time line" in figure.layout.title.subtitle.text) != drawn


def test_the_results_in_words_a_row_per_phase_and_four_figures():
    def run(run_id, phases, optimizer, lr, dropout, status, accuracy):
        return {"run_id": run_id, "phases": phases, "optimizer": optimizer, "lr": lr, "dropout": dropout,
                "blocks": [1, 1, 1, 1], "status": status, "final_val_acc": accuracy,
                "curve": [{"epoch": 1, "val_acc": accuracy}] if accuracy else [], "params": 4_903_242,
                "train_s_per_epoch": 30.0 if accuracy else None, "timed_on": "cpu: A"}

    results = {"budget": {"train_size": 10_000, "val_size": 5000, "epochs": 5, "batch_size": 128},
               "choices": {"optimizers": "sgd-0.1", "dropout": None, "size": None},
               "waiting": "the dropout phase is not done yet: the size phase builds on its best dropout",
               "runs": [run("adam-0.5", ["optimizers"], "adam", 0.5, 0.1, "diverged", None),
                        run("sgd-0.5", ["optimizers"], "sgd", 0.5, 0.1, "finished", 0.4),
                        run("sgd-0.1", ["optimizers", "dropout"], "sgd", 0.1, 0.1, "finished", 0.6),
                        run("sgd-0.1-drop0", ["dropout"], "sgd", 0.1, 0.0, "stopped", None)]}
    note = study.note(results)
    assert "on the same 10,000 images for 5 epochs, batch 128" in note
    assert "validation accuracy at the final epoch on 5,000 images" in note
    assert note.endswith("Not done yet: the dropout phase is not done yet: the size phase builds on its best dropout.")
    assert study.table(results) == [
        {"phase": "optimizers", "compares": "optimizer adam, sgd; lr 0.1, 0.5", "runs": "2 finished, 1 diverged",
         "chosen": "optimizer sgd, lr 0.1", "val accuracy": "60.0%"},
        {"phase": "dropout", "compares": "dropout 0, 0.1", "runs": "1 finished, 1 stopped", "chosen": "", "val accuracy": ""}]
    assert len(study.figures(results)) == len(study.FIGURES)
    assert study.table({}) == []
    assert "? images for ? epochs" in study.note({})
