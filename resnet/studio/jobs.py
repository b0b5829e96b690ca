"""Training runs owned by the server: one child process at a time, the rest wait in a queue.

Each run is ``python -m resnet train --out RUNS_DIR/<id> <flags>`` in its own process, so a crash
or an out-of-memory kill never takes the web server down, and the CLI's own SIGTERM handling
gives a clean stop with a checkpoint. Everything a page shows is read back from the run folder.
"""

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import budget, fetch, runs
from ..atomic import atomic_write_json
from ..config import ConfigError, TrainConfig, cli_args, make_config, parse_budget
from ..data import DataMissingError
from ..train import check_batch, resume_config, training_images
from . import limits

TRAINING_CAPS = ("epochs", "batch_size")  # the training settings a server caps (resnet.studio.limits), shown on the form
BROWSER_SECRET = ".browser-secret"  # in the runs folder, beside the runs
OPERATOR_HEADER = "x-studio-operator"  # carries $STUDIO_OPERATOR_SECRET; a header, so it never lands in a URL or a log line
REQUEST = "request.json"  # what a queued run will be started with; the CLI ignores the file
LOG = "train.log"  # the child's stdout and stderr
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.5
EXIT_GRACE_S = 10  # how long a resume waits for a stopped run's process to exit


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(4)


def check_settings(preset: str, overrides: dict) -> TrainConfig:
    """The validated config (ConfigError with one clear sentence otherwise), server caps included."""
    config = make_config(preset, **overrides)
    for name in TRAINING_CAPS:
        cap = getattr(limits.current(), name)
        if getattr(config, name) > cap:
            raise ConfigError(f"{name} {getattr(config, name)} is above this server's limit of {cap}")
    cap = limits.current().budget_s
    if parse_budget(config.budget) > cap:
        raise ConfigError(f"budget {config.budget.strip()} is above this server's limit of {budget.describe_duration(cap)}")
    # Checked here, not only in the trainer, so a request that can never train leaves no run folder behind.
    check_batch(config, training_images(config))
    return config


class OwnerError(runs.RunError):
    """Someone other than a run's owner (or the operator) asked to stop or resume it."""


class QueueFullError(runs.RunError):
    """The server already holds as many waiting runs as it allows: nothing is wrong with the request itself."""


@dataclass(frozen=True)
class Actor:
    """Who asks to act on a run: the secret key of a browser or API client (None when it has none), and
    whether it presented the operator's secret."""

    key: str | None = None
    operator: bool = False


def actor(owner: str | None, session: str | None, headers) -> Actor:
    """Who is asking: a browser by the key it keeps in its storage (it survives a page reload), an API client by
    its session (one per gradio_client.Client); the operator by a header (``headers``: the request's), never a URL."""
    key = owner if isinstance(owner, str) and owner else session
    return Actor(key=key, operator=is_operator((headers or {}).get(OPERATOR_HEADER)))


def browser_key(stored) -> str:
    """A browser's key to the runs it starts: the one its storage holds, or a new one on its first visit."""
    return stored if isinstance(stored, str) and len(stored) == 32 else secrets.token_hex(16)


def owner_digest(key: str) -> str:
    """What a run folder records of its owner's key: a digest, so reading the folder gives no key away."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_operator(presented: str | None, secret: str | None = None) -> bool:
    """Whether ``presented`` is the operator's secret ($STUDIO_OPERATOR_SECRET; unset: nobody is)."""
    secret = os.environ.get("STUDIO_OPERATOR_SECRET") if secret is None else secret
    return bool(secret) and isinstance(presented, str) and hmac.compare_digest(presented.encode(), secret.encode())


def browser_secret(root) -> str:
    """The key that encrypts what browsers store for this server, kept in the runs folder so that a
    restarted server still reads it (a new one at each start would strand every browser's runs)."""
    path = Path(root) / BROWSER_SECRET
    if not path.exists():
        # Written owner-only to a file of its own, then linked into place: link() refuses an existing name, so of two
        # servers starting at once one key wins, and nobody ever reads a half-written or world-readable one.
        handle, temporary = tempfile.mkstemp(dir=root, prefix=BROWSER_SECRET)  # mode 0600
        try:
            with os.fdopen(handle, "w") as file:
                file.write(secrets.token_hex(16))
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    secret = path.read_text().strip()
    if not secret:
        raise OSError(f"{path} is empty: delete it and restart (browsers then get new keys, and only the operator "
                      "can stop the runs they started before)")
    return secret


def check_owner(run_dir: Path, actor: Actor) -> None:
    """Only the run's owner, or the operator, may stop or resume it; everyone may watch."""
    if actor.operator:
        return
    owner = _request(run_dir).get("owner")
    if not owner or not actor.key or not hmac.compare_digest(owner, owner_digest(actor.key)):
        raise OwnerError(f"{run_dir.name} belongs to whoever started it: only that browser or API client (or this "
                         "server's operator) may stop or resume it; you can watch it")


def cli_command(preset: str, overrides: dict, out: str = "runs/my-run") -> str:
    return shlex.join(["python", "-m", "resnet", "train", "--out", out, *cli_args(preset, overrides)])


class RunQueue:
    """Starts queued runs one after another in child processes; safe to call from any thread.

    Runs also wait for the data set: on a server that started without it (``data`` fetches it), they are accepted,
    say how far the fetch has come, and start once it is here.
    """

    def __init__(self, root=None, max_queue: int | None = None, data: fetch.DataFetch | None = None):
        self.data = (data or fetch.DataFetch(None, fetch.source(limits.current().data_source))).start()
        self._data_note = None  # what the waiting runs were last told about the data set
        self.root = Path(root or runs.runs_dir()).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_queue = limits.current().queue if max_queue is None else max_queue
        self._lock = threading.Lock()
        self._waiting = []  # run ids, oldest first
        self._child = None  # (run_id, Popen)
        self._closed = threading.Event()
        self._recover()
        self._monitor = threading.Thread(target=self._watch, name="run-queue", daemon=True)
        self._monitor.start()

    # ---- requests -----------------------------------------------------------------------------
    def start(self, preset: str = "fast", owner: str | None = None, **overrides) -> str:
        """Validate and enqueue a new run for ``owner`` (a secret key; None: only the operator may act on it)."""
        check_settings(preset, overrides)
        self._check_data()
        run_id = new_run_id()
        run_dir = runs.run_path(self.root, run_id)
        with self._lock:
            self._check_room()
            run_dir.mkdir(parents=True)
            atomic_write_json(run_dir / REQUEST, {"args": cli_args(preset, overrides), "created_at": time.time(),
                                                  "owner": owner_digest(owner) if owner else None})
            runs.write_status(run_dir, "queued", self._queued_note("waiting for the trainer"), pid=0)
            self._waiting.append(run_id)
        return run_id

    def resume(self, run_id: str, actor: Actor, epochs: int | None = None) -> str:
        """Enqueue a stopped or interrupted run to continue from its checkpoint."""
        run_dir = runs.run_path(self.root, run_id)
        if not run_dir.is_dir():
            raise runs.RunError(f"no run {run_id!r}")
        status = runs.read_status(run_dir)["status"]
        if status not in runs.RESUMABLE:
            resumable = f"{', '.join(runs.RESUMABLE[:-1])} or {runs.RESUMABLE[-1]}"
            raise runs.RunError(f"{run_id} is {status}; only {resumable} runs can be resumed")
        check_owner(run_dir, actor)
        self._check_data()
        config = resume_config(run_dir, epochs)  # RunError/ConfigError if there is nothing to resume
        if config.epochs > limits.current().epochs:
            raise ConfigError(f"epochs {config.epochs} is above this server's limit of {limits.current().epochs}")
        args = ["--resume", str(run_dir)] + (["--epochs", str(epochs)] if epochs is not None else [])
        with self._lock:
            exiting = self._child[1] if self.active() == run_id else None
        if exiting is not None:  # it has written its final status and is exiting: a moment, not a refusal, and
            with contextlib.suppress(subprocess.TimeoutExpired):  # waited for outside the lock the pages poll through
                exiting.wait(EXIT_GRACE_S)
        with self._lock:
            self._reap()  # a child that has just exited settles first, or its settling would overwrite "queued"
            if self.active() == run_id or run_id in self._waiting:
                raise runs.RunError(f"{run_id} is already training or queued")
            self._check_room()
            atomic_write_json(run_dir / REQUEST, {**_request(run_dir), "args": args, "created_at": time.time()})
            runs.write_status(run_dir, "queued", self._queued_note("waiting to resume"), pid=0)
            self._waiting.append(run_id)
        return f"{run_id} is queued to resume (position {self.position(run_id)})"

    def stop(self, run_id: str, actor: Actor) -> str:
        """SIGTERM the run if it trains (it checkpoints and stops), or take it off the queue."""
        run_dir = runs.run_path(self.root, run_id)  # refuses odd ids
        if not run_dir.is_dir():
            raise runs.RunError(f"no run {run_id!r}")
        check_owner(run_dir, actor)
        with self._lock:
            if run_id in self._waiting:
                self._waiting.remove(run_id)
                runs.write_status(self.root / run_id, "stopped", "taken off the queue before it started", pid=0)
                return f"{run_id} was taken off the queue"
            if self._child and self._child[0] == run_id and self._child[1].poll() is None:
                self._child[1].send_signal(signal.SIGTERM)
                return f"{run_id} is stopping: it saves a checkpoint first, then it can be resumed"
        raise runs.RunError(f"{run_id} is not running or queued on this server")

    # ---- state --------------------------------------------------------------------------------
    def active(self) -> str | None:
        child = self._child
        return child[0] if child and child[1].poll() is None else None

    def waiting(self) -> list:
        with self._lock:
            return list(self._waiting)

    def position(self, run_id: str) -> int | None:
        """1 for the next run to start, 2 after it...; None when not waiting."""
        waiting = self.waiting()
        return waiting.index(run_id) + 1 if run_id in waiting else None

    def close(self, stop_child: bool = True, timeout: float = 30) -> None:
        """Stop watching; by default stop the training child too (it checkpoints first)."""
        self._closed.set()
        self._monitor.join(timeout=5)
        self.data.close()
        with self._lock:  # a monitor still waiting for it (a resume held it) then finds the queue closed
            child = self._child
            if stop_child and child and child[1].poll() is None:
                child[1].send_signal(signal.SIGTERM)
                try:
                    child[1].wait(timeout)
                except subprocess.TimeoutExpired:
                    child[1].kill()
                    child[1].wait()
                self._settle(*child)

    # ---- the worker ---------------------------------------------------------------------------
    def _check_data(self) -> None:
        """Refuse at once only where the data set can never come (not here, fetch off); otherwise a run waits for it."""
        status = self.data.status()
        if status.state == "off":
            raise DataMissingError(fetch.OFF)

    def _queued_note(self, otherwise: str) -> str:
        return otherwise if self.data.ready() else fetch.waiting_note(self.data.status())

    def _note_data_wait(self) -> None:
        """Tell the waiting runs how far the data set has come (the caller holds the lock)."""
        note = fetch.waiting_note(self.data.status())
        if note != self._data_note:
            for run_id in self._waiting:
                runs.write_status(self.root / run_id, "queued", note, pid=0)
            self._data_note = note

    def _check_room(self) -> None:
        if len(self._waiting) >= self.max_queue:
            raise QueueFullError(f"the queue is full ({self.max_queue} runs waiting); try again when one has started")

    def _recover(self) -> None:
        """Queued runs left by an earlier server start again, oldest request first."""
        found = []
        for run_dir in self.root.iterdir():
            if run_dir.is_dir() and runs.RUN_ID.match(run_dir.name) and (run_dir / REQUEST).is_file():
                if runs.read_status(run_dir)["status"] == "queued":
                    found.append((_request(run_dir).get("created_at", 0), run_dir.name))
        self._waiting = [run_id for _, run_id in sorted(found)]

    def _foreign_run_alive(self) -> bool:
        """A run started outside this queue (say, the CLI) still trains here: wait for it."""
        return any(runs.read_status(p)["status"] == "running" for p in self.root.iterdir()
                   if p.is_dir() and runs.RUN_ID.match(p.name))

    def _reap(self) -> None:
        """Settle a child that has exited (the caller holds the lock)."""
        if self._child and self._child[1].poll() is not None:
            self._settle(*self._child)
            self._child = None

    def _watch(self) -> None:
        while not self._closed.wait(POLL_S):
            with self._lock:
                if self._closed.is_set():  # closed while this waited for the lock: start nothing more
                    return
                try:
                    self._reap()
                    if self._child is None and self._waiting and not self._foreign_run_alive():
                        if self.data.ready():
                            self._launch(self._waiting.pop(0))
                        else:
                            self._note_data_wait()
                except Exception as error:  # a full disk, a vanished folder: the queue must live on
                    print(f"run queue: {type(error).__name__}: {error}", file=sys.stderr, flush=True)

    def _launch(self, run_id: str) -> None:
        run_dir = self.root / run_id
        args = _request(run_dir).get("args")
        if not isinstance(args, list):
            runs.write_status(run_dir, "failed", f"{REQUEST} is missing or unreadable", pid=0)
            return
        if args[:1] != ["--resume"]:
            args = ["--out", str(run_dir), *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
               "TQDM_MININTERVAL": "10"}  # the log needs no ten updates a second
        try:
            with open(run_dir / LOG, "ab") as log:
                process = subprocess.Popen([sys.executable, "-m", "resnet", "train", *args], stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        except OSError as error:  # it has left the queue: say so, or it would read "queued" for ever
            runs.write_status(run_dir, "failed", f"the trainer could not be started: {error}", pid=0)
            return
        self._child = (run_id, process)

    def _settle(self, run_id: str, process) -> None:
        """A child that died before its trainer wrote a final status: say why, from its log."""
        run_dir = self.root / run_id
        if runs.read_status(run_dir)["status"] != "queued":
            return  # the trainer wrote its own final status
        if process.returncode == -signal.SIGTERM:  # stopped before the trainer could install its handler
            runs.write_status(run_dir, "stopped", "stopped before training began", pid=0)
        else:
            reason = _last_error(run_dir / LOG) or f"the trainer exited with code {process.returncode}"
            runs.write_status(run_dir, "failed", reason, pid=0)


def _request(run_dir: Path) -> dict:
    try:
        request = json.loads((run_dir / REQUEST).read_text())
    except (OSError, ValueError):
        return {}
    return request if isinstance(request, dict) else {}


def _last_error(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (errors or lines or [""])[-1][:300]


def run_rows(root) -> list:
    """resnet.runs.list_runs, where runs that never started (no config.json yet) show their own status."""
    rows = runs.list_runs(root)
    for row in rows:
        run_dir = Path(root) / row["run_id"]
        if row["status"] == "damaged" and (run_dir / REQUEST).is_file():
            status = runs.read_status(run_dir)
            row.update(status=status["status"], message=status.get("message", ""))
    return rows


# The Runs tab's table: a run summary's key (runs.summarize makes the rows) -> the column header a person reads and
# the column's width, room for its header and a typical value on one line (a narrow column wraps its header letter by
# letter). They add up to 1,200 px, the page's width on a 1,400 px screen: a wider table is squeezed to fit, which
# cuts its headers.
RUN_TABLE = {"run_id": ("Run", "255px"), "status": ("Status", "85px"), "optimizer": ("Optimizer", "95px"),
             "lr": ("LR", "60px"), "dropout": ("Dropout", "75px"), "batch_size": ("Batch", "60px"),
             "budget": ("Budget", "70px"), "epochs": ("Epochs", "70px"), "final_test_acc": ("Test acc", "90px"),
             "best_test_acc": ("Best epoch", "115px"), "elapsed_s": ("Time", "100px"), "message": ("Message", "125px")}
RUN_TABLE_HEADERS = [header for header, _ in RUN_TABLE.values()]
RUN_TABLE_WIDTHS = [width for _, width in RUN_TABLE.values()]


def runs_table(rows: list) -> list:
    """Runs (``run_rows``) as the Runs tab shows them: readable headers, accuracies in percent, times in minutes and
    seconds."""
    table = []
    for row in rows:
        shown = {header: row.get(key) for key, (header, _) in RUN_TABLE.items()}
        for key in ("final_test_acc", "best_test_acc"):
            value = row.get(key)
            shown[RUN_TABLE[key][0]] = f"{value:.2%}" if isinstance(value, (int, float)) else ""
        elapsed = row.get("elapsed_s")
        shown[RUN_TABLE["elapsed_s"][0]] = budget.describe_duration(elapsed) if isinstance(elapsed, (int, float)) else ""
        table.append(shown)
    return table


def progress(run_dir) -> dict:
    """Where a run stands, in numbers and one sentence: progress, speed, time spent and left, last scores."""
    run_dir = Path(run_dir)
    status = runs.read_status(run_dir)
    rows = runs.read_metrics(run_dir)
    try:
        stored = runs.read_config(run_dir)
    except runs.RunError:
        stored = {}
    total_epochs, plan = stored.get("epochs"), stored.get("plan")
    steps = [r for r in rows if r["kind"] in ("step", "epoch")]
    last = steps[-1] if steps else {}
    latest = lambda kind, key: next((r[key] for r in reversed(rows) if r["kind"] == kind and key in r), None)  # noqa: E731
    step_rows = [r for r in rows if r["kind"] == "step"]
    total_steps = step_rows[-1].get("total_steps") if step_rows else None
    elapsed = max((r.get("elapsed_s", 0) for r in steps), default=None)
    seconds_left = None
    if status["status"] == "running" and isinstance(plan, dict) and elapsed is not None:
        with contextlib.suppress(KeyError, TypeError):  # a budget knows its end: what it has not yet spent
            seconds_left = max(0.0, plan["budget_s"] - plan["spent_s"] - elapsed)
    elif status["status"] == "running" and total_steps and last.get("step") and elapsed:
        seconds_left = elapsed / last["step"] * (total_steps - last["step"])  # evaluations included, at the pace so far
    probe_acc, test_acc = latest("probe", "probe_acc"), latest("epoch", "test_acc")
    parts = [f"**{status['status']}**"]
    if last:
        steps = f"step {last['step']}" + (f"/{total_steps}" if total_steps else "")
        parts.append(f"epoch {last['epoch']}/{total_epochs or '?'}, {steps}")
        parts.append(f"{last.get('images_per_s', 0):,.0f} images/s")
    if elapsed is not None:
        parts.append(f"{budget.describe_duration(elapsed)} elapsed")
    if seconds_left is not None:
        parts.append(f"about {budget.describe_duration(seconds_left)} left")
    if probe_acc is not None:
        probed = f"{latest('probe', 'probe_images')} {latest('probe', 'probe_split')} images"
        parts.append(f"probe accuracy {probe_acc:.1%} ({probed})")
    # A finished run's message states its final test figure: the last epoch's would say it twice.
    if test_acc is not None and not (status["status"] == "finished" and status.get("message")):
        parts.append(f"test accuracy {test_acc:.1%} (epoch {latest('epoch', 'epoch')})")
    if status.get("message"):
        parts.append(status["message"])
    text = " · ".join(parts)
    if isinstance(plan, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):  # a plan is shown only when whole
            text += f"\n\nPlan: {budget.summary(plan)}."
    return {"status": status["status"], "epoch": last.get("epoch"), "step": last.get("step"), "total_epochs": total_epochs,
            "total_steps": total_steps, "images_per_s": last.get("images_per_s"), "elapsed_s": elapsed,
            "seconds_left": seconds_left, "probe_acc": probe_acc, "test_acc": test_acc, "plan": plan, "text": text}
