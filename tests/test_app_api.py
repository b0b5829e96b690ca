"""The studio through its HTTP API, as `gradio_client` sees it: a launched server, real requests."""

import time

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from helpers import TINY_RUN, UNUSABLE, form_values, odd_upload  # noqa: E402

from resnet.data import load_split  # noqa: E402
from resnet.studio import jobs, showcase  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_predict_returns_the_label_only(client, real_data, tmp_path):
    images, labels = load_split(real_data, train=False)
    for index in range(3):
        path = tmp_path / f"test-{index}.png"
        Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(path)
        result = client.predict(handle_file(str(path)), api_name="/predict")
        assert set(result) == {"label", "confidences"}
        assert result["label"] == result["confidences"][0]["label"]
        assert sum(c["confidence"] for c in result["confidences"]) <= 1 + 1e-6


def test_explain_returns_two_pictures(client):
    seen, heat = client.predict(handle_file(str(showcase.EXAMPLES / "ship-1.png")), api_name="/explain")
    assert Image.open(seen).size == Image.open(heat).size == (256, 256)


@pytest.mark.parametrize("kind", ["cmyk", "16-bit", "animated-gif", "text", "bomb", "truncated"])
def test_odd_uploads_get_a_label_or_a_sentence(client, tmp_path, kind):
    upload = handle_file(odd_upload(kind, tmp_path))
    if kind in UNUSABLE:
        with pytest.raises(gradio_client.exceptions.AppError) as error:
            client.predict(upload, api_name="/predict")
        assert str(error.value).startswith("cannot use this image: ")
        assert "exception" not in str(error.value)
    else:
        assert client.predict(upload, api_name="/predict")["label"]


def test_a_started_run_shows_step_rows_then_a_probe_over_the_api(server, client):
    started = time.monotonic()
    run_id = client.predict("original", *form_values(**{**TINY_RUN, "epochs": 40}), api_name="/start_run")
    kinds = set()
    while "probe" not in kinds:
        assert time.monotonic() - started < 120, f"no probe row yet, only {kinds}"
        metrics = client.predict(run_id, api_name="/run_metrics")
        kinds = {row[metrics["headers"].index("kind")] for row in metrics["data"]}
        time.sleep(0.5)
    assert "step" in kinds
    assert "probe_acc" in metrics["headers"]
    assert "is stopping" in client.predict(run_id, api_name="/stop_run")
    _wait_until_settled(client, run_id)


def test_only_the_client_that_started_a_run_or_the_operator_may_stop_or_resume_it(server, client, monkeypatch):
    run_id = client.predict("original", *form_values(**{**TINY_RUN, "epochs": 40}), api_name="/start_run")
    stranger = Client(server[0], verbose=False)
    with pytest.raises(gradio_client.exceptions.AppError, match="belongs to whoever started it"):
        stranger.predict(run_id, api_name="/stop_run")
    assert _row(stranger, run_id)["Status"] in ("queued", "running")  # watching is for everyone
    monkeypatch.setenv("STUDIO_OPERATOR_SECRET", "the-operators-secret")  # read by the server at each request
    with pytest.raises(gradio_client.exceptions.AppError, match="belongs to whoever started it"):
        Client(server[0], verbose=False, headers={"x-studio-operator": "a-guess"}).predict(run_id, api_name="/stop_run")
    _wait_for_steps(client, run_id)
    operator = Client(server[0], verbose=False, headers={"x-studio-operator": "the-operators-secret"})
    assert "is stopping" in operator.predict(run_id, api_name="/stop_run")
    _wait_until_settled(client, run_id)
    with pytest.raises(gradio_client.exceptions.AppError, match="belongs to whoever started it"):
        stranger.predict(run_id, api_name="/resume_run")  # stopped, so resumable: but not by a stranger
    assert "queued to resume" in client.predict(run_id, api_name="/resume_run")  # its owner may
    _wait_for_steps(client, run_id, more_than=len(client.predict(run_id, api_name="/run_metrics")["data"]))
    assert "is stopping" in client.predict(run_id, api_name="/stop_run")
    _wait_until_settled(client, run_id)
    log = (server[1].root / run_id / jobs.LOG).read_bytes()
    assert log
    assert b"\r" not in log
    assert b"step " in log


def _wait_for_steps(client, run_id, more_than: int = 0, timeout: float = 180) -> None:
    """Until the run trains (status running, more metric rows than ``more_than``)."""
    deadline = time.monotonic() + timeout
    while (_row(client, run_id)["Status"] != "running"
           or len(client.predict(run_id, api_name="/run_metrics")["data"]) <= more_than):
        assert time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.5)


def _wait_until_settled(client, run_id, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (row := _row(client, run_id))["Status"] not in ("stopped", "finished"):
        assert time.monotonic() < deadline, f"the run did not stop: {row}"
        time.sleep(0.5)


def test_train_watch_stop_over_the_api(client):
    with pytest.raises(gradio_client.exceptions.AppError, match="invalid run id"):
        client.predict("../../etc", api_name="/stop_run")
    with pytest.raises(gradio_client.exceptions.AppError, match="lr must be positive"):
        client.predict("original", *form_values(lr=0.0), api_name="/start_run")
    run_id = client.predict("original", *form_values(**TINY_RUN), api_name="/start_run")
    deadline = time.monotonic() + 180
    while not (metrics := client.predict(run_id, api_name="/run_metrics"))["data"]:
        assert time.monotonic() < deadline, "no metrics arrived"
        time.sleep(0.5)
    assert "train_loss" in metrics["headers"]
    assert "is stopping" in client.predict(run_id, api_name="/stop_run")
    while (row := _row(client, run_id))["Status"] not in ("stopped", "finished"):
        assert time.monotonic() < deadline, f"the run did not stop: {row}"
        time.sleep(0.5)


def _row(client, run_id) -> dict:
    table = client.predict(api_name="/list_runs")
    rows = [dict(zip(table["headers"], values, strict=True)) for values in table["data"]]
    return next(row for row in rows if row["Run"] == run_id)
