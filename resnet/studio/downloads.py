"""Files handed to a visitor (a batch's CSV, copies of a run's weights and card), each in a fresh folder.

Gradio copies what a handler returns into its own cache (pruned by the app's ``delete_cache``); the
folders made here are deleted once an hour old, so a long-lived Space's disk stays flat. The runs
folder itself is never served: its checkpoints and logs stay private.
"""

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from ..runs import CARD, WEIGHTS

SCRATCH = Path(tempfile.gettempdir()) / "cifar-resnet-studio"
SCRATCH_MAX_AGE_S = 3600


def fresh_folder() -> Path:
    """A new folder under SCRATCH, after deleting the folders there older than SCRATCH_MAX_AGE_S."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    for old in SCRATCH.iterdir():
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > SCRATCH_MAX_AGE_S:
                shutil.rmtree(old)
    return Path(tempfile.mkdtemp(dir=SCRATCH))


def fresh_file(name: str) -> Path:
    return fresh_folder() / name


def run_files(run_dir: Path) -> list:
    """Copies of a run's weights and card, named after the run, in a fresh folder (paths as strings)."""
    folder = fresh_folder()
    files = []
    for name, suffix in ((WEIGHTS, ".safetensors"), (CARD, ".json")):
        if (run_dir / name).is_file():
            files.append(str(shutil.copy(run_dir / name, folder / f"{run_dir.name}{suffix}")))
    return files
