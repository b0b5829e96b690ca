"""The machine a benchmark ran on, for its results: CPU model, bf16 support, cores, and how busy it was."""

import json
import os
import platform
import subprocess
from pathlib import Path

import torch


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"cpu": fields.get("Model name", platform.processor()).strip(), "avx512_bf16": "avx512_bf16" in flags,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_1m": round(os.getloadavg()[0], 2)}


def report(result: dict, path=None) -> None:
    """Print a benchmark's result, and write it to ``path`` as JSON when given."""
    print(json.dumps(result, indent=2))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
