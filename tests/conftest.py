"""Shared fixtures: tiny CIFAR-10-format data sets, so no test needs the real 178 MB download."""

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import REPO, Archive, served_studio, tiny_card, write_cifar_format

from resnet.data import BATCHES_FOLDER
from resnet.model import build_model
from resnet.studio import limits
from resnet.weights import save_weights

REAL_DATA = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A folder containing cifar-10-batches-py/ with 320 training and 100 test pattern images."""
    return write_cifar_format(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    """A tiny data set packed as the official cifar-10-python.tar.gz is, for a fetch to download."""
    return Archive(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / BATCHES_FOLDER / "test_batch").is_file():
        pytest.skip("the real CIFAR-10 test batch is not at ../shared/data/cifar10")
    return REAL_DATA


@pytest.fixture(autouse=True)
def own_speeds_cache(monkeypatch, tmp_path_factory):
    """Every test's budgeted runs measure this machine unless the test kept speeds itself: another test's runs, or
    this user's, are not this test's (resnet.speeds reads $XDG_CACHE_HOME, as the processes a test starts do)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def default_limits(monkeypatch):
    """Every test starts from the default server limits, whatever this shell's STUDIO_* variables say."""
    monkeypatch.setattr(limits, "_current", limits.ServerLimits.defaults())


@pytest.fixture
def server_limits(monkeypatch):
    """``server_limits(batch_images=2)``: this process's limits for one test, the rest at their defaults."""

    def set_limits(**changes) -> limits.ServerLimits:
        chosen = dataclasses.replace(limits.ServerLimits.defaults(), **changes)
        monkeypatch.setattr(limits, "_current", chosen)
        return chosen

    return set_limits


# ---- the studio over tiny weights, tiny data and an empty runs folder ---------------------------------------
@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_data):
    """A randomly initialised model saved the way the shipped weights are: .safetensors + .json card."""
    torch.manual_seed(0)
    model = build_model().eval()
    return save_weights(model, tmp_path_factory.mktemp("weights") / "tiny.safetensors", tiny_card(model, tiny_data))


@pytest.fixture
def studio_env(monkeypatch, tmp_path, tiny_data, tiny_weights):
    """The app's environment: tiny weights as the shipped model, tiny data, an empty runs folder."""
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("CIFAR10_DIR", str(tiny_data))
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def studio(studio_env):
    import app  # the studio itself: only the tests that use it import gradio

    studio = app.Studio()
    yield studio
    studio.queue.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_data, tiny_weights):
    """(url, studio): the app served as app.py serves it, on a free port, over tiny weights, tiny data and an empty
    runs folder (``runs`` in a folder of its own, so a test can watch what is next to it)."""
    with served_studio(tiny_weights, tiny_data, tmp_path_factory.mktemp("area") / "runs") as (url, studio):
        yield url, studio


@pytest.fixture(scope="module")
def client(server):
    """A gradio_client of the module's server, as a program calls the studio."""
    from gradio_client import Client

    return Client(server[0], verbose=False)
