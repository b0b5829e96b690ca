"""Run folders: what a training run leaves on disk, readable by any other process.

A run folder holds ``config.json``, ``metrics.jsonl`` (one JSON object a line), ``status.json``,
``checkpoint.pt`` and, when finished, ``model.safetensors`` + ``model.json``.
"""

import json
import os
import re
import time
from pathlib import Path

from .atomic import atomic_write_json
from .errors import UserError

STATUSES = ("queued", "running", "finished", "stopped", "diverged", "failed", "interrupted")
RESUMABLE = ("stopped", "interrupted", "failed")  # a checkpoint, if there is one, continues these
RUN_ID_LENGTH = 64
RUN_ID = re.compile(rf"^[a-z0-9-]{{1,{RUN_ID_LENGTH}}}$")  # a folder name on any file system, never a path
CONFIG, METRICS, STATUS, CHECKPOINT = "config.json", "metrics.jsonl", "status.json", "checkpoint.pt"
WEIGHTS, CARD = "model.safetensors", "model.json"
PERSISTENT = Path("/data")
ROW_KINDS = ("step", "probe", "epoch")  # metrics.jsonl: training every few steps, a held-out probe, each epoch's end


class RunError(UserError, ValueError):
    pass


def persistent_storage() -> Path | None:
    """Where a Space mounts its persistent storage (/data), when it is there and writable: what should outlive a restart
    (the runs, the fetched data set) goes under it."""
    return PERSISTENT if PERSISTENT.is_dir() and os.access(PERSISTENT, os.W_OK) else None


def runs_dir() -> Path:
    """$RUNS_DIR, else /data/runs where a Space's persistent storage is mounted, else ./runs."""
    if os.environ.get("RUNS_DIR"):
        return Path(os.environ["RUNS_DIR"])
    storage = persistent_storage()
    return storage / "runs" if storage else Path("runs")


def run_path(root, run_id: str) -> Path:
    """The folder of ``run_id`` under ``root``; ids that could escape it are refused."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise RunError(f"invalid run id {str(run_id)[:80]!r}: use 1-{RUN_ID_LENGTH} of a-z, 0-9 and '-'")
    return Path(root) / run_id


def process_identity(pid: int) -> str | None:
    """What tells this process apart from a later one given the same pid: boot id and start time.

    After a host restart pids are handed out from the bottom again, so a bare pid left in a status
    file can name an unrelated live process. None where /proc is not available.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{boot}:{stat.rpartition(')')[2].split()[19]}"  # field 22, counted after the parenthesised name


def pid_alive(pid, identity: str | None = None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return identity is None or process_identity(pid) in (identity, None)


def write_status(run_dir, status: str, message: str = "", pid: int | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    pid = os.getpid() if pid is None else pid
    record = {"status": status, "pid": pid, "process": process_identity(pid) if pid > 0 else None,
              "updated_at": time.time(), "message": message}
    atomic_write_json(Path(run_dir) / STATUS, record)


def read_status(run_dir) -> dict:
    """The run's status record; a ``running`` run whose process is gone reads as ``interrupted``."""
    path = Path(run_dir) / STATUS
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or record.get("status") not in STATUSES:
            raise ValueError("unknown status")
    except FileNotFoundError:
        return {"status": "damaged", "message": "no status.json"}
    except (ValueError, UnicodeDecodeError):
        return {"status": "damaged", "message": "status.json is unreadable or names an unknown status"}
    if record["status"] == "running" and not pid_alive(record.get("pid"), record.get("process")):
        record = {**record, "status": "interrupted", "message": "the training process is gone"}
    return record


def append_metrics(run_dir, record: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def read_metrics(run_dir) -> list:
    """All complete metric rows; a torn or garbled line (a write cut by a kill) is skipped."""
    rows = []
    try:
        text = (Path(run_dir) / METRICS).read_text(errors="replace")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("kind") in ROW_KINDS and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def stamp(run_dir) -> list:
    """[name, mtime, size] of the metrics and status files: it changes whenever the run writes a row or a
    status, so a poller redraws only then."""
    stamps = []
    for name in (METRICS, STATUS):
        try:
            stat = (Path(run_dir) / name).stat()
        except OSError:
            continue
        stamps.append([name, stat.st_mtime_ns, stat.st_size])
    return stamps


def total_images(rows: list) -> int | None:
    """Training images the whole run will see, from its latest step row (None before the first)."""
    step = next((r for r in reversed(rows) if r.get("kind") == "step" and r.get("total_steps") and r.get("step")), None)
    return step["total_steps"] * step["images"] // step["step"] if step else None


def read_config(run_dir) -> dict:
    try:
        config = json.loads((Path(run_dir) / CONFIG).read_text())
    except FileNotFoundError:
        raise RunError(f"{Path(run_dir).name}: no config.json") from None
    except (ValueError, UnicodeDecodeError):
        raise RunError(f"{Path(run_dir).name}: config.json is not valid JSON") from None
    if not isinstance(config, dict):
        raise RunError(f"{Path(run_dir).name}: config.json is not an object")
    return config


def trained_on(run_dir) -> str | None:
    """The device a finished run's card names (``provenance.device``), or None where there is no card."""
    try:
        card = json.loads((Path(run_dir) / CARD).read_text())
        return card["provenance"]["device"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize(run_dir) -> dict:
    """One row for a table of runs: id, status, config essentials, accuracies, wall time."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    row = {"run_id": run_dir.name, "status": status["status"], "message": status.get("message", "")}
    try:
        config = read_config(run_dir)
    except RunError as error:
        return {**row, "status": "damaged", "message": str(error)}
    epochs = [r for r in read_metrics(run_dir) if r["kind"] == "epoch"]
    accs = [r["test_acc"] for r in epochs if isinstance(r.get("test_acc"), (int, float))]
    return {
        **row,
        "optimizer": config.get("optimizer"),
        "lr": config.get("lr"),
        "dropout": config.get("dropout"),
        "batch_size": config.get("batch_size"),
        "budget": config.get("budget") or "",
        "blocks": "x".join(str(b) for b in config.get("blocks", [])),
        "epochs": f"{len(epochs)}/{config.get('epochs')}",
        "final_test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
        "elapsed_s": epochs[-1].get("elapsed_s") if epochs else None,
        "has_weights": (run_dir / WEIGHTS).is_file(),
    }


def list_runs(root=None) -> list:
    """Summaries of every run folder under ``root``, newest first; damaged ones are flagged."""
    root = Path(root or runs_dir())
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and RUN_ID.match(p.name) and not p.is_symlink()]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [summarize(p) for p in folders]
