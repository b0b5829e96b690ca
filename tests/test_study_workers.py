"""The experiments' workers on Optuna's storage: real `python -m resnet study --plan smoke` (and ablation) processes
sharing one storage (the journal file in --out, or a throwaway PostgreSQL cluster) train each planned run once, a
killed worker's run is taken over and resumed, and a storage that cannot be used is one error before any training."""

import collections
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from helpers import REPO, wait_for

from resnet import runs
from resnet.cli import main
from resnet.experiments import ablation, storage, study, time_to_accuracy
from resnet.experiments.runner import Options

SMOKE_IDS = [p.run_id for p in study.SMOKE.plan("/nonexistent", study.SMOKE.budget, {})[0]]
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SMOKE_STUDY = ("-m", "resnet", "study", "--plan", "smoke")
# `python -m resnet ablation` with two variants whose batch fits the tiny data (the fast preset's 512 does not).
TINY_VARIANTS = {"recipe": {"batch_size": 32}, "no-label-smoothing": {"batch_size": 32, "label_smoothing": 0.0}}
TINY_ABLATION = ("-c", "import sys; from resnet import cli; from resnet.experiments import ablation; "
                       f"ablation.ABLATION = ablation.Ablation(variants={TINY_VARIANTS!r}); sys.exit(cli.main())", "ablation")
COMMANDS = {"study": ["study", "--plan", "smoke"], "ablation": ["ablation"], "time-to-accuracy": ["time-to-accuracy"],
            "search": ["search", "--plan", "smoke"]}


def worker(tmp_path, data, name, *flags, command=SMOKE_STUDY) -> subprocess.Popen:
    """One worker (``command``'s third word is the experiment) in its own process group, its output in name.log and
    its results in <experiment>.json."""
    command = [sys.executable, *command, "--out", str(tmp_path / "runs"), "--results", str(tmp_path / f"{command[2]}.json"),
               "--data-dir", str(data), "--device", "cpu", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=open(tmp_path / f"{name}.log", "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def finish(*workers, timeout=600) -> None:
    for process in workers:
        assert process.wait(timeout=timeout) == 0, Path(process.args[process.args.index("--results") + 1]).parent


def trials(url, name="study") -> list:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def journal(tmp_path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / storage.JOURNAL)))


def trained(tmp_path, *logs) -> collections.Counter:
    """How often each run was started or resumed, over the workers' logs."""
    lines = [line.split() for log in logs for line in (tmp_path / f"{log}.log").read_text().splitlines()]
    return collections.Counter(words[1] for words in lines if len(words) == 2 and words[0] in ("training", "resuming"))


def assert_each_point_once(tmp_path, done_trials) -> None:
    done = [t for t in done_trials if t.state in DONE]
    assert sorted(t.user_attrs["run_id"] for t in done) == sorted(SMOKE_IDS)  # each point done once, none missing
    results = json.loads((tmp_path / "study.json").read_text())
    assert sorted(r["run_id"] for r in results["runs"]) == sorted(SMOKE_IDS)
    assert all(r["status"] in ("finished", "diverged") for r in results["runs"])
    for t in done:  # the run folder records the trial that finished it
        assert runs.read_config(tmp_path / "runs" / t.user_attrs["run_id"])["trial"]["number"] == t.number


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS)
@pytest.mark.parametrize("url", ["postgresql+psycopg://nobody@/x?host=/nonexistent", "foo://", "sqlite:///study.db", "not a url"])
def test_a_storage_that_cannot_be_used_is_one_error_before_any_training(tmp_path, capsys, command, url):
    code = main([*command, "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results.json"),
                 "--data-dir", str(tmp_path / "no-data"), "--storage", url])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: ")
    assert error.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_a_point_seeded_twice_is_trained_once_and_counted_once(tmp_path):
    # Two workers that seed at once can enqueue one run id twice: the lowest-numbered live trial is the one
    # trained; the other, claimed, is failed as redundant and counted nowhere.
    budget = study.SMOKE.budget
    opened = storage.open_storage(None, tmp_path)
    shared = storage.open_study(opened, "study", budget)
    first, second = (storage.Worker(study.SMOKE, budget, Options(out=tmp_path), opened, shared) for _ in range(2))
    point = study.SMOKE.plan(tmp_path, budget, {})[0][0]
    for _ in range(2):
        shared.enqueue_trial(storage.params(point), user_attrs={"run_id": point.run_id})
    claimed = first.claim()
    assert claimed.number == 0
    assert second.claim() is None  # trial 1 was the only one waiting, and it duplicates trial 0
    assert [(t.state, t.user_attrs.get("redundant")) for t in shared.get_trials()] == [
        (optuna.trial.TrialState.RUNNING, None), (optuna.trial.TrialState.FAIL, True)]
    shared.tell(claimed, 0.5)
    assert [t.number for t in first.canonical().values()] == [0]
    second.seed([point])  # done: not enqueued again
    assert len(shared.get_trials()) == 2


def test_a_planned_runs_settings_are_its_trials_parameters_each_one_json_scalar(tmp_path):
    # A variant's or a recipe's change of settings is spread among them; a tuple is joined.
    variant = ablation.Variant("no-onecycle-seed1", "no-onecycle", {"schedule": "constant", "warmup": 0.0}, 1)
    recipe = time_to_accuracy.Recipe("mid-light-seed1", time_to_accuracy.RECIPES["mid-light-seed1"])
    expected = [
        {"run_id": "no-onecycle-seed1", "name": "no-onecycle", "seed": 1, "schedule": "constant", "warmup": 0.0},
        {"run_id": "mid-light-seed1", "whiten_stem": True, "resolution": "24:0.6", "epochs": 20, "augment": "light", "seed": 1},
        {"optimizer": "adam", "lr": 0.01, "dropout": 0.1, "blocks": "1-1-1-1"}]
    planned = [variant, recipe, study.SMOKE.plan(tmp_path, study.SMOKE.budget, {})[0][0]]
    assert [storage.params(p) for p in planned] == expected
    shared = storage.open_study(storage.open_storage(None, tmp_path), "plans", study.SMOKE.budget)
    for p in planned:
        shared.enqueue_trial(storage.params(p))
    read_back = storage.open_study(storage.open_storage(None, tmp_path), "plans", study.SMOKE.budget)
    assert [t.system_attrs["fixed_params"] for t in read_back.get_trials()] == expected


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS)
def test_a_device_this_machine_lacks_is_refused_before_a_run_is_claimed(tmp_path, capsys, command):
    code = main([*command, "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results.json"), "--device", "cuda:99"])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_two_workers_on_the_journal_train_each_point_once(tmp_path, tiny_data):
    first, second = worker(tmp_path, tiny_data, "first"), worker(tmp_path, tiny_data, "second")
    finish(first, second)
    assert_each_point_once(tmp_path, trials(journal(tmp_path)))
    assert trained(tmp_path, "first", "second") == collections.Counter(SMOKE_IDS)  # no point trained twice
    for row in json.loads((tmp_path / "study.json").read_text())["runs"]:  # a diverged run ends inside its epoch
        epochs = [r["epoch"] for r in runs.read_metrics(tmp_path / "runs" / row["run_id"]) if r["kind"] == "epoch"]
        assert epochs == ([1] if row["status"] == "finished" else [])


@pytest.mark.slow
@pytest.mark.e2e
def test_two_ablation_workers_on_the_journal_train_each_run_once(tmp_path, tiny_data):
    flags = ("--train-size", "64", "--val-size", "64", "--epochs", "1", "--seeds", "2")
    first, second = (worker(tmp_path, tiny_data, name, *flags, command=TINY_ABLATION) for name in ("first", "second"))
    finish(first, second)
    ids = [ablation.run_id(name, seed) for seed in (0, 1) for name in TINY_VARIANTS]
    done = [t for t in trials(journal(tmp_path), "ablation") if t.state in DONE]
    assert sorted(t.user_attrs["run_id"] for t in done) == sorted(ids)  # each run done once, none missing
    assert trained(tmp_path, "first", "second") == collections.Counter(ids)  # no run trained twice
    enqueued = {t.user_attrs["run_id"]: t.system_attrs["fixed_params"] for t in done}  # as the journal holds them
    assert enqueued["no-label-smoothing-seed1"] == {"run_id": "no-label-smoothing-seed1", "name": "no-label-smoothing",
                                                    "seed": 1, "batch_size": 32, "label_smoothing": 0.0}
    results = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["run_id"] for r in results["runs"]] == ids
    assert all(r["status"] == "finished" for r in results["runs"])
    for t in done:  # the run folder records the trial that finished it
        assert runs.read_config(tmp_path / "runs" / t.user_attrs["run_id"])["trial"]["number"] == t.number


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_killed_workers_run_is_resumed_by_another_and_counted_once(tmp_path, tiny_data, request, kind):
    # Two workers, one point (three epochs): one trains it, the other waits; the trainer is killed after its first
    # checkpoint, and the one left finds it dead (its process gone; on PostgreSQL its heartbeat silent), fails its
    # trial and resumes the run.
    url = request.getfixturevalue("postgres_url") if kind == "postgresql" else None
    run_id = "adam-lr0p01-drop0p1-b1111"
    # The cluster serves the module's tests: each its own study (another budget would be refused, rightly).
    flags = ["--epochs", "3", "--only", "adam-", *(["--storage", url, "--name", tmp_path.name] if url else [])]
    workers = [worker(tmp_path, tiny_data, name, *flags) for name in ("first", "second")]
    run_dir = tmp_path / "runs" / run_id
    wait_for(lambda: (run_dir / runs.CHECKPOINT).is_file() and runs.read_status(run_dir)["status"] == "running", 300,
             "the first checkpoint")
    killed = next(w for w in workers if w.pid == runs.read_status(run_dir)["pid"])
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    survivor = next(w for w in workers if w is not killed)
    finish(survivor)
    stored = trials(url, tmp_path.name) if url else trials(journal(tmp_path))
    by_run = [t for t in stored if t.user_attrs.get("run_id") == run_id]
    assert [t.state for t in by_run] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert by_run[1].system_attrs["failed_trial"] == by_run[0].number
    survivor_log = "first" if survivor is workers[0] else "second"
    assert f"resuming {run_id}" in (tmp_path / f"{survivor_log}.log").read_text()
    assert runs.read_config(run_dir)["trial"]["number"] == by_run[1].number
    assert sorted({r["epoch"] for r in runs.read_metrics(run_dir) if r["kind"] == "epoch"}) == [1, 2, 3]
    rows = [r for r in json.loads((tmp_path / "study.json").read_text())["runs"] if r["run_id"] == run_id]
    assert [(r["status"], r["epochs_done"]) for r in rows] == [("finished", 3)]


@pytest.mark.slow
@pytest.mark.e2e
def test_ctrl_c_stops_the_workers_run_resumable_and_gives_its_point_back(tmp_path, tiny_data):
    run_id = "adam-lr0p01-drop0p1-b1111"
    run_dir = tmp_path / "runs" / run_id
    process = worker(tmp_path, tiny_data, "first", "--epochs", "3", "--only", "adam-")
    wait_for(lambda: runs.read_status(run_dir)["status"] == "running" if (run_dir / runs.STATUS).is_file() else False, 300,
             "the run to start")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=300) == 130
    assert runs.read_status(run_dir)["status"] == "stopped"
    [stopped] = [t for t in trials(journal(tmp_path)) if t.user_attrs.get("run_id") == run_id]
    assert (stopped.state, stopped.user_attrs["status"]) == (optuna.trial.TrialState.FAIL, "stopped")


def _initdb() -> str | None:
    """initdb on PATH, else Debian's newest (its PostgreSQL binaries are not on PATH)."""
    if shutil.which("initdb"):
        return shutil.which("initdb")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on a socket in a short folder under /tmp (a socket path has at most 107
    bytes, and pytest's tmp_path is unreadable by the postgres user), stopped and removed after the tests."""
    initdb = _initdb()
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin)")
    as_root = os.geteuid() == 0
    if as_root and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        pytest.skip("running as root and there is no postgres user to run the cluster as")
    bin_dir, folder = Path(initdb).parent, tempfile.mkdtemp(prefix="pg", dir="/tmp")
    as_postgres = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(folder, "postgres")
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", f"{folder}/data"]
    subprocess.run([*as_postgres, initdb, "-D", f"{folder}/data", "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*pg_ctl, "-l", f"{folder}/log", "-w", "-o", f"-k {folder} -c listen_addresses='' -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={folder}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.e2e
def test_two_workers_on_postgresql_train_each_point_once(tmp_path, tiny_data, postgres_url):
    first, second = (worker(tmp_path, tiny_data, name, "--storage", postgres_url, "--name", tmp_path.name)
                     for name in ("first", "second"))
    finish(first, second)
    assert_each_point_once(tmp_path, trials(postgres_url, tmp_path.name))
    assert trained(tmp_path, "first", "second") == collections.Counter(SMOKE_IDS)
    assert not (tmp_path / "runs" / storage.JOURNAL).exists()
