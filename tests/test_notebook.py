"""notebooks/quickstart.ipynb runs top to bottom on the tiny data set with a tiny random model."""

from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from resnet import build_model, save_weights
from resnet.weights import make_card

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.e2e
@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tiny_data, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model()
    weights = save_weights(model, tmp_path / "tiny.safetensors", make_card(model))
    # The kernel inherits this environment: tiny data, the random model, small sizes, one thread.
    for name, value in {"CIFAR10_DIR": tiny_data, "QUICKSTART_WEIGHTS": weights, "QUICKSTART_EVAL_IMAGES": 50,
                        "QUICKSTART_TRAIN_IMAGES": 128, "QUICKSTART_EPOCHS": 1, "OMP_NUM_THREADS": 1}.items():
        monkeypatch.setenv(name, str(value))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
    assert "tiny.safetensors: blocks [1, 1, 1, 1]" in printed
    assert "on the first 50 test images" in printed
    assert "finished: test accuracy" in printed
    figures = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
               if "application/vnd.plotly.v1+json" in output.get("data", {})]
    assert len(figures) == 3
