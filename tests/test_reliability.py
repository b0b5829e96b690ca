"""Bad input of every kind, through the real HTTP API, gets a prediction or one clear sentence,
and the next request is served; nothing a client sends reads or writes outside the runs folder.

Handler-level versions of many of these live in test_app.py (odd uploads, settings), test_images.py,
test_weights.py and test_runs.py; here they go through a launched server, as a client sees them.
"""

import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as safetensors_save

from resnet import runs
from resnet.config import ConfigError
from resnet.constants import CLASSES
from resnet.model import build_model
from resnet.studio import jobs, limits, showcase

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")
from gradio_client import handle_file  # noqa: E402
from helpers import ODD_UPLOADS, REPO, UNUSABLE, AppProcess, Payload, example, finished_run, form_values, odd_upload  # noqa: E402

from resnet.studio import train_form  # noqa: E402

AppError = gradio_client.exceptions.AppError


def raw_call(url: str, name: str, body: bytes) -> tuple:
    """POST a hand-written JSON body (NaN, Infinity, paths) to /gradio_api/call/NAME: ('complete'|'error', data)."""
    answer = httpx.post(f"{url}gradio_api/call/{name}", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 200, answer.text
    with httpx.stream("GET", f"{url}gradio_api/call/{name}/{answer.json()['event_id']}", timeout=120) as stream:
        text = stream.read().decode()
    event = re.findall(r"^event: (\w+)$", text, re.M)[-1]
    data = json.loads(re.findall(r"^data: (.*)$", text, re.M)[-1])
    return event, data


def files_outside(folder: Path, skip: Path) -> dict:
    """{path: (size, mtime)} of every file under ``folder`` except those under ``skip``."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and not p.is_relative_to(skip)}


def good_prediction(client) -> None:
    """The next request is served: a normal picture still gets its top classes."""
    result = client.predict(handle_file(example()), api_name="/predict")
    assert result["label"] in CLASSES
    assert {c["label"] for c in result["confidences"]} <= set(CLASSES)


# ---- one launched app for the API tests of this module ----------------------------------------------
@pytest.fixture(scope="module")
def area(server):
    """The folder that holds the server's runs folder, with a sentinel file beside it that nothing may touch."""
    folder = server[1].root.parent
    (folder / "sentinel.txt").write_text("do not touch")
    return folder


def extra_upload(kind: str, folder: Path) -> str:
    path = folder / f"upload-{kind}"
    if kind == "exif-rotated":
        image = Image.new("RGB", (40, 20), (250, 0, 0))
        exif = image.getexif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        image.save(path, "JPEG", exif=exif.tobytes())
    elif kind == "palette-transparent":
        image = Image.new("P", (20, 20), 1)
        image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        image.save(path, "PNG", transparency=1)
    return str(path)


API_TESTED = {"cmyk", "16-bit", "animated-gif", "text", "bomb", "truncated"}  # test_app_api.py sends these
MUST_FAIL = UNUSABLE - {"too-large"}  # too-large is tested on its own below


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("kind", [k for k in ODD_UPLOADS if k not in API_TESTED and k != "too-large"]
                         + ["exif-rotated", "palette-transparent"])
def test_odd_uploads_over_the_api_then_the_next_request(client, tmp_path, kind):
    path = extra_upload(kind, tmp_path) if kind in ("exif-rotated", "palette-transparent") else odd_upload(kind, tmp_path)
    if kind in MUST_FAIL:
        with pytest.raises(AppError, match="^cannot use this image: ") as refused:
            client.predict(handle_file(path), api_name="/predict")
        assert "exception" not in str(refused.value)
    else:
        assert client.predict(handle_file(path), api_name="/predict")["label"] in CLASSES
    good_prediction(client)


@pytest.mark.e2e
@pytest.mark.slow
def test_an_image_over_the_size_limit_is_refused(server, client, tmp_path):
    """Gradio's own cap must let weights files through, so images are held to theirs by resnet.images
    (the server's 413 for what exceeds Gradio's cap is tested in test_server_caps_from_the_environment)."""
    path = odd_upload("too-large", tmp_path)
    limit_mb = limits.current().upload_bytes >> 20
    with pytest.raises(AppError, match=f"cannot use this image: the file is larger than the {limit_mb} MB limit"):
        client.predict(handle_file(path), api_name="/predict")
    good_prediction(client)


@pytest.mark.e2e
@pytest.mark.slow
def test_paths_the_client_did_not_upload_are_refused(server, client):
    url, studio = server
    for target in ("/etc/passwd", example(), str(studio.root)):
        event, data = raw_call(url, "predict", json.dumps({"data": [{"path": target, "meta": {"_type": "gradio.FileData"}},
                                                                   "shipped"]}).encode())
        assert event == "error"
        file_data = {"path": target, "meta": {"_type": "gradio.FileData"}}
        event, data = raw_call(url, "predict_batch", json.dumps({"data": [[file_data], "shipped"]}).encode())
        assert event == "error"
    good_prediction(client)


# ---- training settings sent around the widgets ------------------------------------------------------
FIELDS = ["optimizer", "lr", "dropout", "epochs", "batch_size", "blocks", "limit_train", "momentum", "weight_decay",
          "schedule", "label_smoothing", "seed", "limit_test"]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(("changes", "message"), [
    ({"lr": -0.01}, "lr must be positive, got -0.01"),
    ({"lr": 0}, "lr must be positive, got 0"),
    ({"lr": "0.01"}, "lr must be a number, got '0.01'"),
    ({"lr": "abc"}, "lr must be a number, got 'abc'"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ({"dropout": -0.1}, "dropout must be in [0, 1), got -0.1"),
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"batch_size": -5}, "batch_size must be at least 1, got -5"),
    ({"batch_size": 600, "limit_train": 500}, "batch_size 600 is larger than the 500 training images"),
    ({"epochs": 0}, "epochs must be at least 1, got 0"),
    ({"epochs": 2.5}, "epochs must be a whole number, got 2.5"),
    ({"epochs": 10**12}, "epochs 1000000000000 is above this server's limit of 200"),
    ({"epochs": "many"}, "epochs must be a number, got 'many'"),
    ({"epochs": [3]}, "epochs must be a number, got [3]"),
    ({"momentum": 1.5}, "momentum must be in [0, 1), got 1.5"),
    ({"seed": -1}, "seed must be in [0, 4294967296), got -1"),
    ({"optimizer": "lbfgs"}, "Value: lbfgs is not in the list of choices"),
    ({"schedule": "warp"}, "Value: warp is not in the list of choices"),
    ({"blocks": "9,9,9,9"}, "is not in the list of choices"),
])
def test_start_run_refuses_bad_settings_before_any_work(server, client, changes, message):
    root = server[1].root
    before = sorted(os.listdir(root))
    with pytest.raises(AppError) as refused:
        client.predict("original", *form_values(**changes), api_name="/start_run")
    assert message in str(refused.value)
    assert "exception" not in str(refused.value)
    assert sorted(os.listdir(root)) == before  # no run folder, no request file


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(("field", "literal", "message"), [
    ("lr", "NaN", "lr must be finite, got nan"),
    ("lr", "Infinity", "lr must be finite, got inf"),
    ("epochs", "Infinity", "epochs must be finite, got inf"),
    ("epochs", "NaN", "epochs must be finite, got nan"),
    ("dropout", "-Infinity", "dropout must be finite, got -inf"),
])
def test_non_finite_numbers_from_a_raw_client_are_refused(server, field, literal, message):
    url, studio = server
    before = sorted(os.listdir(studio.root))
    values = form_values(**{field: "__HERE__"})  # gradio_client refuses to send NaN: write the JSON by hand
    body = json.dumps({"data": ["original", *values]}).replace('"__HERE__"', literal)
    event, data = raw_call(url, "start_run", body.encode())
    assert event == "error"
    assert data["error"] == message
    assert sorted(os.listdir(studio.root)) == before


def test_settings_are_converted_or_refused_by_name():
    settings = train_form.settings(*form_values(epochs=3.0, seed=2.0))
    assert settings["epochs"] == 3
    assert isinstance(settings["epochs"], int)
    assert settings["seed"] == 2
    nan_epochs = train_form.settings(*form_values(epochs=float("nan")))["epochs"]
    assert math.isnan(nan_epochs)  # left for validate to name
    with pytest.raises(ConfigError, match="epochs must be finite"):
        jobs.check_settings("original", train_form.settings(*form_values(epochs=float("nan"))))
    with pytest.raises(ConfigError, match="blocks must be four whole numbers"):
        train_form.settings(*form_values(blocks="1,x"))


# ---- weights files through the app's upload handler ------------------------------------------------
def weights_bytes(kind: str, tiny_weights: Path, marker: Path) -> bytes:
    data = tiny_weights.read_bytes()
    if kind == "truncated-safetensors":
        return data[: len(data) // 2]
    if kind == "random-bytes":
        return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if kind == "wrong-architecture":
        other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 10))
        return safetensors_save({k: v.contiguous() for k, v in other.state_dict().items()})
    if kind == "wider-resnet":
        state = build_model(blocks=(2, 1, 1, 1)).state_dict()
        state["linear.weight"] = torch.zeros(10, 999)
        return safetensors_save({k: v.contiguous() for k, v in state.items()})
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1), "evil": Payload(marker)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(("kind", "words"), [
    ("truncated-safetensors", "not a weights file"),
    ("random-bytes", "not a weights file"),
    ("wrong-architecture", "not weights of this ResNet"),
    ("wider-resnet", "shape mismatch"),
    ("pickle-payload", "must be .safetensors"),
])
def test_bad_weight_uploads_are_sentences_and_nothing_runs(studio, tiny_weights, tmp_path, kind, words):
    marker = tmp_path / "payload-ran"
    with pytest.raises(gr.Error, match=words):
        studio.upload_weights(weights_bytes(kind, tiny_weights, marker))
    assert not marker.exists()
    assert set(studio.predict(example())) == set(CLASSES)  # the shipped model still answers


def test_a_run_whose_card_disagrees_with_its_weights_is_refused(studio, tiny_weights):
    run_dir = finished_run(studio.root, "run-liar", tiny_weights)
    card = json.loads((run_dir / runs.CARD).read_text())
    (run_dir / runs.CARD).write_text(json.dumps({**card, "blocks": [2, 2, 2, 2]}))
    with pytest.raises(gr.Error, match=r"the card says blocks \[2, 2, 2, 2\] but the weights have \[1, 1, 1, 1\]"):
        studio.predict(example(), "run:run-liar")
    assert "⚠️" in studio.model_info("run:run-liar", None)
    with pytest.raises(gr.Error, match="the card says blocks"):
        studio.predict_batch([example()], "run:run-liar")


# ---- run folders and run ids from the API -----------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
def test_damaged_run_folders_are_listed_and_read_safely(server, client, tiny_weights):
    root = server[1].root
    torn = finished_run(root, "run-torn", tiny_weights)
    with open(torn / runs.METRICS, "a") as handle:
        handle.write('{"kind": "step", "epoch": 2, "ste')  # a write cut by a kill
    no_config = finished_run(root, "run-noconfig", tiny_weights)
    (no_config / runs.CONFIG).unlink()
    odd_status = finished_run(root, "run-oddstatus", tiny_weights)
    (odd_status / runs.STATUS).write_text(json.dumps({"status": "exploded", "pid": 1}))
    garbage = finished_run(root, "run-garbage", tiny_weights)
    (garbage / runs.STATUS).write_bytes(b"\xff\xfe\x00garbage")
    table = client.predict(api_name="/list_runs")
    rows = {row[0]: dict(zip(table["headers"], row, strict=True)) for row in table["data"]}
    assert rows["run-torn"]["Status"] == "finished"
    assert rows["run-noconfig"]["Status"] == "damaged"
    assert "no config.json" in rows["run-noconfig"]["Message"]
    assert rows["run-oddstatus"]["Status"] == "damaged"
    assert "unknown status" in rows["run-oddstatus"]["Message"]
    assert rows["run-garbage"]["Status"] == "damaged"
    metrics = client.predict("run-torn", api_name="/run_metrics")
    assert len(metrics["data"]) == 1
    assert metrics["data"][0][metrics["headers"].index("epoch")] == 1
    for run_id in ("run-oddstatus", "run-garbage", "run-noconfig"):
        with pytest.raises(AppError, match="only stopped, interrupted or failed|no config.json"):
            client.predict(run_id, api_name="/resume_run")
    good_prediction(client)


BAD_IDS = ["../", "..", "../../etc/passwd", "/etc/passwd", "/tmp", "run-a/../../x", "run-a/..", "RUN-A", "run a",
           "%2e%2e%2fsentinel.txt", "..\\sentinel.txt", "", "x" * 65, "run-a\x00", "~root", "sentinel.txt", "../sentinel.txt"]


@pytest.mark.e2e
@pytest.mark.slow
def test_run_ids_that_name_paths_are_refused_and_nothing_outside_is_touched(server, client, area):
    url, studio = server
    sentinel = area / "sentinel.txt"
    before = files_outside(area, studio.root)
    for run_id in BAD_IDS:
        for endpoint in ("/run_metrics", "/stop_run", "/resume_run"):
            with pytest.raises(AppError, match="invalid run id") as refused:
                client.predict(run_id, api_name=endpoint)
            assert "root:" not in str(refused.value)  # nothing of /etc/passwd comes back
    assert sentinel.read_text() == "do not touch"
    assert files_outside(area, studio.root) == before
    assert not any(Path(p).name.startswith("run-") for p in os.listdir(area) if p != "runs")
    good_prediction(client)


# ---- what the file route serves ---------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
def test_the_file_route_serves_neither_run_files_nor_anything_outside(server, tiny_weights, area):
    url, studio = server
    run_dir = finished_run(studio.root, "run-private", tiny_weights)
    (run_dir / runs.CHECKPOINT).write_bytes(b"checkpoint bytes")
    private = [run_dir / runs.CHECKPOINT, run_dir / runs.WEIGHTS, run_dir / runs.STATUS, area / "sentinel.txt",
               Path("/etc/passwd"), REPO / "app.py", REPO / "resnet" / "weights.py"]
    for path in private:
        for form in (f"gradio_api/file={path}", f"gradio_api/file={path.as_posix().lstrip('/')}",
                     f"gradio_api/file=../../../../..{path}"):
            answer = httpx.get(url + form, timeout=30)
            assert answer.status_code in (403, 404), (form, answer.status_code)
            assert b"checkpoint bytes" not in answer.content
            assert b"root:" not in answer.content
    allowed = httpx.get(url + f"gradio_api/file={showcase.EXAMPLES / 'cat-0.png'}", timeout=30)
    assert allowed.status_code == 200
    assert allowed.content == Path(example()).read_bytes()


def test_weights_are_only_read_as_tensors():
    """Every torch.load in the code refuses pickled objects; nothing else unpickles user files."""
    sources = [REPO / "app.py", *sorted((REPO / "resnet").rglob("*.py"))]  # resnet/studio and resnet/experiments too
    loads = 0
    for path in sources:
        text = path.read_text()
        for line in text.splitlines():
            if "torch.load(" in line:  # every call here fits on one line
                loads += 1
                assert "weights_only=True" in line, f"{path.name}: {line.strip()}"
        if path.name != "data.py":  # data.py unpickles the CIFAR-10 batches from the server's own data folder
            assert "pickle.load" not in text, path.name
            assert "pickle.Unpickler" not in text, path.name
    assert loads >= 2


# ---- server-wide caps from the environment, in a fresh app.py ---------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
def test_server_caps_from_the_environment(tmp_path, tiny_data, tiny_weights):
    root = tmp_path / "runs"
    holder = root / "run-holder"  # a run that trains elsewhere (this test's pid is alive): nothing starts
    holder.mkdir(parents=True)
    (holder / runs.CONFIG).write_text(json.dumps({"epochs": 1}))
    runs.write_status(holder, "running", "started by the CLI")
    caps = {"STUDIO_MAX_EPOCHS": 3, "STUDIO_MAX_BATCH": 32, "STUDIO_MAX_QUEUE": 1, "STUDIO_MAX_UPLOAD_MB": 0.05,
            "STUDIO_MAX_WEIGHTS_MB": 0.05, "STUDIO_MAX_PIXELS": 10_000, "STUDIO_MAX_BATCH_IMAGES": 2}
    with AppProcess(tmp_path, RUNS_DIR=root, CIFAR10_DIR=tiny_data, STUDIO_WEIGHTS=tiny_weights, **caps) as server:
        client = server.client()
        tiny = {"batch_size": 16, "limit_train": 64, "limit_test": 16}
        with pytest.raises(AppError, match="epochs 4 is above this server's limit of 3"):
            client.predict("original", *form_values(**{**tiny, "epochs": 4}), api_name="/start_run")
        with pytest.raises(AppError, match="batch_size 64 is above this server's limit of 32"):
            client.predict("original", *form_values(**{**tiny, "epochs": 1, "batch_size": 64}), api_name="/start_run")
        queued = client.predict("original", *form_values(**{**tiny, "epochs": 1}), api_name="/start_run")
        with pytest.raises(AppError, match=r"the queue is full \(1 runs waiting\)"):
            client.predict("original", *form_values(**{**tiny, "epochs": 1}), api_name="/start_run")
        assert sorted(set(os.listdir(root)) - {jobs.BROWSER_SECRET}) == sorted(["run-holder", queued])
        assert "taken off the queue" in client.predict(queued, api_name="/stop_run")

        noise = tmp_path / "noise.png"  # about 190 KB: over the 0.05 MB upload cap
        Image.effect_noise((256, 256), 80).convert("RGB").save(noise)
        with pytest.raises(ValueError, match="exceeds the maximum file size of 52428 bytes"):
            client.predict(handle_file(str(noise)), api_name="/predict")
        with open(noise, "rb") as handle:
            assert httpx.post(server.url + "gradio_api/upload", files={"files": ("n.png", handle)}, timeout=60).status_code == 413
        wide = tmp_path / "wide.png"  # 20,000 pixels in a small file: over the 10,000 pixel cap
        Image.new("RGB", (200, 100), (10, 20, 30)).save(wide)
        with pytest.raises(AppError,
                           match="cannot use this image: the image has more pixels than this server's limit of 0.01 MP"):
            client.predict(handle_file(str(wide)), api_name="/predict")
        small = [handle_file(example(name)) for name in ("cat-0.png", "ship-1.png", "frog-4.png")]
        with pytest.raises(AppError, match="3 images in this request; this server predicts at most 2 at a time"):
            client.predict(small, api_name="/predict_batch")
        assert len(client.predict(small[:2], api_name="/predict_batch")[0]["data"]) == 2
        good_prediction(client)
