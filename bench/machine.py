"""The machine a benchmark ran on, for its results: CPU model, bf16 support, cores, and how busy it was."""

import json
import os
from pathlib import Path

import torch

from resnet.train import cpu_model


def machine() -> dict:
    return {"cpu": cpu_model(), "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_1m": round(os.getloadavg()[0], 2)}


def report(result: dict, path=None) -> None:
    """Print a benchmark's result, and write it to ``path`` as JSON when given."""
    print(json.dumps(result, indent=2))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
