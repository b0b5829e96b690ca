"""An experiment's plan on Optuna's storage: every worker process running the same command against one storage
takes the next planned run that no one holds, on one machine or many.

Each planned run is one trial, known by its run id (``user_attrs["run_id"]``), enqueued by whichever worker
plans it first and claimed by moving it from WAITING to RUNNING, which exactly one caller can do on PostgreSQL
(a row lock) and on the journal file (one ordered log), never on SQLite (no SELECT FOR UPDATE: two workers
were seen to claim one trial), which is refused. The run itself is an ordinary run folder, resumed from its
checkpoint when a worker takes over the run of one that died: a database notices a dead worker by its
missing heartbeat, the journal (one machine) by its process being gone. The results file is written from
the storage's rows and the run folders on this machine, so a worker anywhere writes the same results.

Optuna is a tool of the studies, not of the Space: it is imported here, inside the functions that need it.
"""

import dataclasses
import itertools
import json
import os
import random
import socket
import threading
import time
import warnings
from pathlib import Path

from .. import runs
from ..errors import UserError
from .runner import DONE, Budget, Experiment, Options, load_shared_data, train_run

HEARTBEAT_S = 5  # how often a database worker says it is alive
GRACE_S = 20  # heartbeat silence after which its run is failed and taken over
POLL_S = 2.0  # how often a worker with nothing to claim looks again (a killed worker's run must be taken over)
CLAIM_S = 60  # a trial running this long with no owner recorded lost its worker between claiming and recording
JOURNAL = "optuna.journal"
NEEDS_OPTUNA = "the experiments' workers need Optuna: pip install -r requirements-dev.txt"


class StorageError(UserError):
    """The study's storage cannot be opened, or holds another study."""


def import_optuna():
    try:  # an optional import: tests/test_requirements.py holds these pinned in requirements-dev.txt
        import optuna
    except ImportError:
        raise StorageError(NEEDS_OPTUNA) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The heartbeat and its retry callback are marked experimental; the pinned Optuna is the one this was built on.
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str | None, out):
    """The storage at ``url`` (a SQLAlchemy database URL), else the journal file in ``out``; a URL that cannot
    be used raises StorageError in one sentence, before anything is trained."""
    optuna = import_optuna()
    if url is None:
        # A plain string would be read as a database URL: the journal takes a backend.
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(Path(out) / JOURNAL)))
    sqlalchemy = _sqlalchemy()
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"--storage {url!r} is not a database URL (e.g. postgresql+psycopg://user@host/db)") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        raise StorageError(f"--storage {shown} is SQLite, which cannot hand a run to one worker alone (no SELECT FOR UPDATE); "
                           "use PostgreSQL, or leave --storage out for the journal file on one machine")
    engine = {"connect_args": {"connect_timeout": 10}} if parsed.get_backend_name() == "postgresql" else {}
    for attempt in itertools.count(1):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=_retry(optuna))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as error:
            # Workers starting together race to create the tables; the losers find them made.
            if "already exists" not in str(error) or attempt == 3:
                raise StorageError(f"cannot open the study storage {shown}: {_first_line(error)}") from None
            time.sleep(random.uniform(0.2, 1.0))
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.DatabaseError, ImportError, RuntimeError) as error:
            raise StorageError(f"cannot open the study storage {shown}: {_first_line(error)}") from None


def open_storage_and_folder(url: str | None, make_folder):
    """The storage at ``url``, reached before ``make_folder()`` makes the run folder, so that a database that cannot
    be used leaves no folder behind; else the journal file in the folder ``make_folder()`` makes and returns."""
    if url is None:
        return open_storage(None, make_folder())
    storage = open_storage(url, None)
    make_folder()
    return storage


def _retry(optuna):
    """How a dead worker's trial is queued again, on a database (by Optuna, at a stale heartbeat) and on the journal
    (by the worker that fails it): a copy of the trial, its reports kept, up to three times."""
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)


def _sqlalchemy():
    try:  # installed with Optuna, which runs on it: optional too
        import sqlalchemy
    except ImportError:
        raise StorageError(NEEDS_OPTUNA) from None
    return sqlalchemy


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__


def open_study(storage, name: str, budget: Budget):
    """The study ``name`` in ``storage``, created if need be and bound to ``budget``: workers of two budgets
    sharing one study would compare runs that are not comparable."""
    optuna = import_optuna()
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    stored = study.user_attrs.get("budget")
    if stored is None:
        study.set_user_attr("budget", budget.fields())
    elif budget.changes(stored):
        raise StorageError(f"the study {name!r} in this storage has another budget ({budget.changes(stored)}); "
                           "use the same options or another --name")
    return study


class TrialWorker:
    """What every worker process on a shared study does with trials: claim a waiting one, fail and queue again
    the trials of dead workers, train a trial's run folder while beating its heartbeat, and tell how it ended."""

    command: str  # the command's name, which each run's config.json records

    def __init__(self, options: Options, storage, study):
        self.optuna = import_optuna()
        self.options = options
        self.study, self.storage = study, storage
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.heartbeat = isinstance(self.storage, self.optuna.storages.RDBStorage)
        # Recorded in each trial's run notes: the journal file, else the database's backend name.
        self.storage_kind = storage.engine.url.get_backend_name() if self.heartbeat else "journal"
        self.host = socket.gethostname()

    def claim(self, order=None):
        """A waiting trial moved to RUNNING by this worker alone, or None; never ask(), which samples a trial of
        its own when none is waiting. ``order`` (trial -> a sort key) says which waiting trial comes first, else
        the lowest-numbered. Of two trials for one run id (two workers seeded it together) the lowest-numbered
        live one is trained and the other failed as redundant."""
        states = self.optuna.trial.TrialState
        for waiting in sorted(self.study.get_trials(deepcopy=False, states=(states.WAITING,)), key=order or (lambda t: t.number)):
            trial_id = self.trial_id(waiting.number)
            try:
                if not self.storage.set_trial_state_values(trial_id, states.RUNNING):
                    continue
            except self.optuna.exceptions.UpdateFinishedTrialError:
                continue
            self.own(trial_id)
            if self._duplicate(waiting):
                self.storage.set_trial_user_attr(trial_id, "redundant", True)
                self.storage.set_trial_state_values(trial_id, states.FAIL)
                continue
            return self.optuna.Trial(self.study, trial_id)
        return None

    def own(self, trial_id: int) -> None:
        """Mark a running trial as this worker's: its heartbeat on a database, its process for the journal."""
        if self.heartbeat:
            self.storage.record_heartbeat(trial_id)
        self.storage.set_trial_user_attr(trial_id, "owner", {"host": self.host, "pid": os.getpid(),
                                                             "process": runs.process_identity(os.getpid())})

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _duplicate(self, claimed) -> bool:
        states = self.optuna.trial.TrialState
        run_id = claimed.user_attrs.get("run_id")
        for other in self.study.get_trials(deepcopy=False):
            if other.number == claimed.number or other.user_attrs.get("run_id") != run_id or other.user_attrs.get("redundant"):
                continue
            if other.state in (states.COMPLETE, states.PRUNED):
                return True
            if other.state in (states.WAITING, states.RUNNING) and other.number < claimed.number:
                return True
        return False

    def fail_dead(self) -> None:
        """Fail the running trials of dead workers and queue each again: by heartbeat on a database; on the
        journal, which has none, by a process of this host that is gone (only one worker's fail succeeds)."""
        if self.heartbeat:
            self.optuna.storages.fail_stale_trials(self.study)
        states = self.optuna.trial.TrialState
        for trial in self.study.get_trials(deepcopy=False, states=(states.RUNNING,)):
            owner = trial.user_attrs.get("owner")
            if owner is None:
                dead = trial.datetime_start is not None and time.time() - trial.datetime_start.timestamp() > CLAIM_S
            else:
                dead = not self.heartbeat and owner["host"] == self.host and not runs.pid_alive(owner["pid"], owner["process"])
            if dead:
                self._fail_and_retry(trial.number)

    def _fail_and_retry(self, number: int) -> None:
        """Fail a dead worker's trial and queue it again, as Optuna does a stale heartbeat's: only one caller's
        fail succeeds, so it is queued once."""
        trial_id = self.trial_id(number)
        try:
            if not self.storage.set_trial_state_values(trial_id, self.optuna.trial.TrialState.FAIL):
                return
        except self.optuna.exceptions.UpdateFinishedTrialError:
            return
        _retry(self.optuna)(self.study, self.storage.get_trial(trial_id))

    def train_trial(self, trial, run_id: str, config, data, root, stop: threading.Event | None = None,
                    callbacks=()) -> str:
        """Train the trial's run folder (resumed if it has a checkpoint) and return the status it ended with;
        ``stop`` set (by Ctrl-C, by another worker taking the run over, or by a callback) stops it resumable."""
        stop = threading.Event() if stop is None else stop
        beating = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(self.trial_id(trial.number), stop, beating), daemon=True)
        watcher.start()
        notes = {"trial": {"study": self.study.study_name, "number": trial.number, "storage": self.storage_kind}}
        command = f"python -m resnet {self.command} --out {root} (trial {trial.number} of {self.study.study_name})"
        try:
            train_run(root, run_id, config, data, stop, self.options.watch, command, notes, callbacks)
        except BaseException:
            self._tell_if_held(trial, self.optuna.trial.TrialState.FAIL, "failed")
            raise
        finally:
            beating.set()
            watcher.join()
        return runs.read_status(Path(root) / run_id)["status"]

    def _tell_if_held(self, trial, state, status: str, value=None) -> None:
        """Tell how the run ended, unless the trial was taken from this worker (failed as stale) meanwhile."""
        if self.storage.get_trial(self.trial_id(trial.number)).state != self.optuna.trial.TrialState.RUNNING:
            return
        trial.set_user_attr("status", status)
        if state is None:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=state)

    def _watch(self, trial_id: int, stop: threading.Event, done: threading.Event) -> None:
        """While the run trains: pass a Ctrl-C on to it, beat the heartbeat, and stop the run if its trial was
        failed by another worker (this one was taken for dead), so two workers never train one run."""
        asked, last = self.options.stop_event, 0.0
        while not done.wait(0.5):
            if asked is not None and asked.is_set():
                stop.set()
                return
            if time.monotonic() - last >= HEARTBEAT_S:
                last = time.monotonic()
                if self.heartbeat:
                    self.storage.record_heartbeat(trial_id)
                if self.storage.get_trial(trial_id).state != self.optuna.trial.TrialState.RUNNING:
                    stop.set()
                    return


class Worker(TrialWorker):
    """One worker process of an experiment's fixed plan on a shared study: seed, claim, train, tell, until the
    plan is done."""

    def __init__(self, experiment: Experiment, budget: Budget, options: Options, storage, study):
        super().__init__(options, storage, study)
        self.experiment, self.budget = experiment, budget
        self.command = experiment.name

    # ---- what the storage holds ----------------------------------------------------------------

    def canonical(self) -> dict:
        """Each run id's trial: the highest-numbered one that is not a redundant duplicate."""
        chosen = {}
        for trial in self.study.get_trials(deepcopy=False):
            run_id = trial.user_attrs.get("run_id")
            if run_id is not None and not trial.user_attrs.get("redundant"):
                if run_id not in chosen or trial.number > chosen[run_id].number:
                    chosen[run_id] = trial
        return chosen

    def rows(self, canonical: dict) -> dict:
        """The done runs' results rows the storage holds, by run id (the ones trained on other machines too)."""
        done = (self.optuna.trial.TrialState.COMPLETE, self.optuna.trial.TrialState.PRUNED)
        return {run_id: trial.user_attrs["row"] for run_id, trial in canonical.items()
                if trial.state in done and "row" in trial.user_attrs}

    def seed(self, todo: list) -> None:
        """Enqueue each run not done that no trial holds: waiting, running or done ones stand for it."""
        states = self.optuna.trial.TrialState
        held = (states.WAITING, states.RUNNING, states.COMPLETE, states.PRUNED)
        live = {t.user_attrs.get("run_id") for t in self.study.get_trials(deepcopy=False, states=held)
                if not t.user_attrs.get("redundant")}
        for planned in todo:
            if planned.run_id not in live:
                self.study.enqueue_trial(params(planned), user_attrs={"run_id": planned.run_id})

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train claimed runs until every planned run (of those ``options.only`` chooses) is done or a stop is
        asked for; return the results, written after every run."""
        experiment, budget, options = self.experiment, self.budget, self.options
        chosen = experiment.chosen(options.only)
        from_file = experiment.recorded_runs(options.results, budget)
        root = Path(options.out)
        data = None
        while not (options.stop_event is not None and options.stop_event.is_set()):
            self.fail_dead()
            canonical = self.canonical()
            recorded = {**from_file, **self.rows(canonical)}
            planned, _ = experiment.plan(root, budget, recorded)
            experiment.check_unchanged(root, planned, budget, recorded)
            todo = [p for p in planned if chosen(p.run_id) and p.run_id not in recorded
                    and experiment.status(root, p.run_id, recorded) not in DONE]
            if not todo:
                break
            self.seed(todo)
            trial = self.claim(plan_order(todo))
            if trial is None:
                time.sleep(POLL_S)
                continue
            point = {p.run_id: p for p in planned}.get(trial.user_attrs["run_id"])
            if point is None:  # planned by a worker whose plan has since moved on: nothing of it to train
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                continue
            config = experiment.config_for(point, budget, options.data_dir)
            if options.device:
                config = dataclasses.replace(config, device=options.device)
            try:
                data = load_shared_data(config, budget) if data is None else data
            except BaseException:
                self._tell_if_held(trial, self.optuna.trial.TrialState.FAIL, "failed")
                raise
            self.train(trial, point, config, data, root)
            experiment.write_results(self.results(root, from_file), options.results)
        final = self.results(root, from_file)
        experiment.write_results(final, options.results)
        return final

    def results(self, root, from_file: dict) -> dict:
        return self.experiment.collect(root, self.budget, {**from_file, **self.rows(self.canonical())})

    def train(self, trial, point, config, data, root) -> None:
        """Train the trial's planned run and tell the storage how it ended."""
        states = self.optuna.trial.TrialState
        status = self.train_trial(trial, point.run_id, config, data, root)
        if status not in DONE:  # stopped: by Ctrl-C, or because another worker took the run over
            self._tell_if_held(trial, states.FAIL, status)
            return
        # The row travels with the trial, so that workers on other machines plan and write results from it.
        trial.set_user_attr("row", json.loads(json.dumps(self.experiment.result(root, point, self.budget, {}))))
        if status == "finished":
            self._tell_if_held(trial, None, status, value=trial.user_attrs["row"]["final_val_acc"])
        else:
            self._tell_if_held(trial, states.PRUNED, status)


def plan_order(todo: list):
    """A claim's order (trial -> key): the plan's, a run queued again after a stop included, so that a partial
    results file holds the plan's first runs, as one process training them in turn would have left it."""
    rank = {planned.run_id: index for index, planned in enumerate(todo)}
    return lambda trial: (rank.get(trial.user_attrs.get("run_id"), len(rank)), trial.number)


def params(planned) -> dict:
    """The planned run's settings as the trial's parameters (JSON numbers, strings and booleans): a ``change`` of
    settings (an ablation variant's, a time-to-accuracy recipe's) is spread among them, winning as it does in
    the run's config, since a parameter holds one value, not a dict."""
    fields = {key: value for key, value in vars(planned).items() if key not in ("phases", "change")}
    return {key: "-".join(map(str, value)) if isinstance(value, tuple) else value
            for key, value in {**fields, **getattr(planned, "change", {})}.items()}


def run_study(experiment: Experiment, budget: Budget, options: Options, url: str | None, name: str | None) -> dict:
    """One worker of ``experiment`` on the storage at ``url`` (else the journal in ``options.out``), in the study
    ``name`` (else the experiment's): the storage is opened before any image is loaded."""
    experiment.chosen(options.only)  # a run --only cannot name is refused first, as is a results file of another budget
    experiment.recorded_runs(options.results, budget)
    storage = open_storage_and_folder(url, lambda: experiment.open_folder(options.out, budget))
    study = open_study(storage, name or experiment.name, budget)
    return Worker(experiment, budget, options, storage, study).run()
