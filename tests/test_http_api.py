"""The plain HTTP API (resnet.studio.http_api) through a real server: httpx requests, the Gradio UI beside it."""

import collections
import json
import logging
import threading
import time

import httpx
import pytest
import torch
from fastapi import FastAPI

gradio_client = pytest.importorskip("gradio_client")
schemathesis = pytest.importorskip("schemathesis")
from gradio_client import Client, handle_file  # noqa: E402
from helpers import (  # noqa: E402
    ODD_UPLOADS,
    UNUSABLE,
    example_bytes,
    finished_run,
    image_bytes,
    odd_upload,
    phone_photo,
    served_studio,
    tiny_card,
    zip_bytes,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from resnet import runs  # noqa: E402
from resnet.classifier import Classifier  # noqa: E402
from resnet.constants import CLASSES  # noqa: E402
from resnet.images import prepare  # noqa: E402
from resnet.model import build_model  # noqa: E402
from resnet.studio import http_api, limits, showcase  # noqa: E402
from resnet.weights import DEFAULT_WEIGHTS, load_weights, save_weights  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BATCH_IMAGES, BATCH_MP = 4, 0.01  # small caps, set through the app's own limits (resnet.studio.limits)


@pytest.fixture(scope="module")
def run_weights(tmp_path_factory, tiny_data):
    """Weights unlike the shipped ones, so a prediction shows which model made it."""
    torch.manual_seed(1)
    model = build_model().eval()
    return save_weights(model, tmp_path_factory.mktemp("run-weights") / "run.safetensors", tiny_card(model, tiny_data))


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory, tiny_data, run_weights):
    """(url, runs folder): the studio served as app.py serves it, but with the shipped weights (whose predictions
    the tests know), a finished run and one still training."""
    root = tmp_path_factory.mktemp("runs")
    finished_run(root, "run-a", run_weights)
    runs.run_path(root, "run-busy").mkdir()
    with served_studio(DEFAULT_WEIGHTS, tiny_data, root) as (url, _):
        yield url, root


@pytest.fixture(scope="module")
def api(shipped_server):
    with httpx.Client(base_url=shipped_server[0] + "api/v1", timeout=120) as client:
        yield client


def refused(response, status: int, *words) -> str:
    """The refusal is ``status`` with a JSON sentence naming the reason, never a stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    text = json.dumps(detail)
    assert "Traceback" not in text
    assert "Exception" not in text
    for word in words:
        assert word in text
    return detail


def expected(weights, image_file: bytes) -> dict:
    return load_weights(weights).predict(prepare(image_file))


# ---- good requests ---------------------------------------------------------------------------------
def test_health_names_the_loaded_model(api):
    health = api.get("/health").json()
    card = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert health == {"status": "ok", "ready": True, "model": {"id": "shipped", "test_acc": card["test_acc"]}}


def test_predict_returns_the_apps_probabilities_and_the_model(api):
    index = json.loads((showcase.EXAMPLES / "index.json").read_text())["images"]
    right = 0
    for entry in index:
        body = api.post("/predict", files={"file": (entry["file"], example_bytes(entry["file"]))}).json()
        probabilities = expected(DEFAULT_WEIGHTS, example_bytes(entry["file"]))
        assert body["probabilities"] == pytest.approx(probabilities, abs=1e-6)
        assert list(body["probabilities"]) == sorted(probabilities, key=probabilities.get, reverse=True)
        assert body["label"] == max(probabilities, key=probabilities.get)
        assert body["probability"] == max(probabilities.values())
        assert body["model"]["id"] == "shipped"
        assert "logits" not in body
        right += body["label"] == entry["label"]
    assert right >= 0.8 * len(index)  # the shipped model scores 93.8% on the test set these come from


def test_a_phone_photo_is_predicted(api):
    """A 12 MP camera JPEG, twice the pixel cap at full size, is decoded at 1/8 of it."""
    photo = phone_photo()
    answer = api.post("/predict", files={"file": ("IMG_0001.jpg", photo)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["probabilities"] == pytest.approx(expected(DEFAULT_WEIGHTS, photo), abs=1e-6)


def test_logits_when_asked(api):
    body = api.post("/predict", files={"file": ("cat.png", example_bytes())}, params={"logits": "true"}).json()
    assert list(body["logits"]) == list(CLASSES)
    logits = torch.tensor(list(body["logits"].values()))
    temperature = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text()).get("temperature") or 1.0  # 1: uncalibrated
    assert (logits / temperature).softmax(0).tolist() == pytest.approx([body["probabilities"][c] for c in CLASSES], abs=1e-6)


def test_a_finished_run_by_id(api, run_weights):
    body = api.post("/predict", files={"file": ("cat.png", example_bytes())}, params={"model": "run:run-a"}).json()
    card = json.loads(run_weights.with_suffix(".json").read_text())
    assert body["model"] == {"id": "run:run-a", "test_acc": card["test_acc"]}
    assert body["probabilities"] == pytest.approx(expected(run_weights, example_bytes()), abs=1e-6)
    assert body["probabilities"] != pytest.approx(expected(DEFAULT_WEIGHTS, example_bytes()), abs=1e-3)


@pytest.mark.parametrize("kind", ODD_UPLOADS)
def test_odd_uploads_predict_or_say_why(api, tmp_path, kind):
    with open(odd_upload(kind, tmp_path), "rb") as handle:
        response = api.post("/predict", files={"file": (kind, handle.read())})
    if kind == "too-large":
        refused(response, 413, f"the file is larger than the {limits.current().upload_bytes >> 20} MB limit")
    elif kind in UNUSABLE:
        assert refused(response, 400).startswith("cannot use this image: ")
    else:
        assert response.status_code == 200
        assert response.json()["label"] in CLASSES
    assert api.post("/predict", files={"file": ("cat.png", example_bytes())}).status_code == 200  # the next request is served


# ---- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("choice", "words"), [("nope", "unknown model"), ("/etc/passwd", "unknown model"),
                                           ("run:../../etc", "invalid run id"), ("run:no-such-run", "no finished weights"),
                                           ("run:run-busy", "no finished weights"), ("uploaded", "unknown model")])
def test_unknown_models_are_404(api, choice, words):
    refused(api.post("/predict", files={"file": ("cat.png", example_bytes())}, params={"model": choice}), 404, words)
    refused(api.post("/predict_batch", files={"files": ("cat.png", example_bytes())}, params={"model": choice}), 404, words)


def test_missing_or_malformed_fields_are_422(api):
    for response in (api.post("/predict"), api.post("/predict", files={"image": ("cat.png", example_bytes())}),
                     api.post("/predict_batch", data={"x": "1"})):
        assert response.status_code == 422
        assert response.json()["detail"][0]["type"] == "missing"
    response = api.post("/predict", files={"file": ("cat.png", example_bytes())}, params={"logits": "maybe"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "logits"]


def test_a_batch_without_files_is_refused_as_the_schema_says(api):
    assert api.post("/predict_batch", files={"other": ("a.txt", b"x")}).status_code == 422


def test_query_parameters_not_listed_are_ignored(api):
    assert api.post("/predict", files={"file": ("cat.png", example_bytes())}, params={"colour": "blue"}).json()["label"] == "cat"


@pytest.mark.parametrize(("method", "path", "allow"), [("DELETE", "/predict", "POST"), ("GET", "/predict", "POST"),
                                                 ("PUT", "/predict_batch", "POST"), ("POST", "/health", "GET")])
def test_a_known_path_answers_its_other_methods_405_with_allow(api, method, path, allow):
    response = api.request(method, path)
    refused(response, 405, "Method Not Allowed")
    assert response.headers["allow"] == allow


def test_a_malformed_multipart_body_is_400_and_writes_nothing_to_the_log(api, caplog):
    caplog.set_level(logging.WARNING)
    body = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nBad\rHeader: x\r\n\r\ndata\r\n--xx--\r\n'
    refused(api.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=xx"}), 400)
    assert [record.getMessage() for record in caplog.records if record.name.startswith("python_multipart")] == []


def multipart_stream(size: int):
    yield b'--xx\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    for _ in range(size // 2**16):
        yield b"\0" * 2**16
    yield b"\r\n--xx--\r\n"


def test_bodies_over_the_byte_cap_are_413_before_they_are_read(api):
    big = limits.current().upload_bytes + http_api.MULTIPART_SLACK + 1
    refused(api.post("/predict", files={"file": ("big.png", b"\0" * big)}), 413, "request body is larger")  # by Content-Length
    chunked = api.post("/predict", content=multipart_stream(big), headers={"content-type": "multipart/form-data; boundary=xx"})
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in chunked.request.headers
    refused(chunked, 413, "request body is larger")  # counted as it streams in


# ---- batches ---------------------------------------------------------------------------------------
def test_a_zip_and_a_file_give_one_row_per_image(api):
    archive = zip_bytes({"a.png": example_bytes("cat-0.png"), "sub/b.png": example_bytes("ship-1.png"),
                         "notes.txt": b"skipped: not an image name", "../../evil.png": b"not an image",
                         "__MACOSX/._a.png": b"resource fork"})
    files = [("files", ("photos.zip", archive)), ("files", ("dog.png", example_bytes("dog-12.png")))]
    response = api.post("/predict_batch", files=files, params={"logits": "true"})
    body = response.json()
    assert response.status_code == 200
    assert body["model"]["id"] == "shipped"
    rows = {row["file"]: row for row in body["predictions"]}
    assert list(rows) == ["photos.zip:a.png", "photos.zip:sub/b.png", "dog.png"]
    assert rows["dog.png"]["probabilities"] == pytest.approx(expected(DEFAULT_WEIGHTS, example_bytes("dog-12.png")), abs=1e-6)
    assert all(list(row["logits"]) == list(CLASSES) for row in rows.values())
    assert [p["file"] for p in body["problems"]] == ["photos.zip:../../evil.png"]


def test_a_batch_goes_through_the_network_in_one_pass(api, monkeypatch):
    passes, logits = [], Classifier.logits

    def counted(self, images, *args, **kwargs):
        passes.append(tuple(images.shape))
        return logits(self, images, *args, **kwargs)

    monkeypatch.setattr(Classifier, "logits", counted)
    files = [("files", (name, example_bytes(name))) for name in ("cat-0.png", "ship-1.png", "dog-12.png")]
    body = api.post("/predict_batch", files=files).json()
    assert [row["file"] for row in body["predictions"]] == ["cat-0.png", "ship-1.png", "dog-12.png"]
    assert passes == [(3, 3, 32, 32)]
    for row in body["predictions"]:
        assert row["probabilities"] == pytest.approx(expected(DEFAULT_WEIGHTS, example_bytes(row["file"])), abs=1e-5)


def test_batch_caps_are_the_apps(api, server_limits):
    server_limits(batch_images=BATCH_IMAGES, batch_pixels=int(BATCH_MP * 1e6))  # read at each request, as the app reads them
    images = {f"{i}.png": example_bytes() for i in range(BATCH_IMAGES + 1)}
    refused(api.post("/predict_batch", files={"files": ("many.zip", zip_bytes(images))}), 413,
            f"{BATCH_IMAGES + 1} images in this request", f"at most {BATCH_IMAGES}")
    side = int((BATCH_MP * 1e6 / 2.5) ** 0.5)  # two of these fit in the decoding budget, a third does not
    files = [("files", (f"{i}.png", image_bytes((side, side)))) for i in range(3)]
    body = api.post("/predict_batch", files=files).json()
    assert [row["file"] for row in body["predictions"]] == ["0.png", "1.png"]
    assert body["problems"] == [{"file": "2.png", "reason": "this request has used up its decoding budget; "
                                                            "send the rest in another request"}]
    refused(api.post("/predict_batch", files={"files": ("x.zip", zip_bytes({"a.png": b"no"}))}), 400, "none of the files")


# ---- the Gradio UI on the same port ------------------------------------------------------------------
def test_the_ui_keeps_serving_while_the_api_is_hammered(shipped_server, api):
    url, _ = shipped_server
    statuses, done, lock = [], [], threading.Lock()

    def hammer():
        with httpx.Client(base_url=url + "api/v1", timeout=120) as client:
            for _ in range(20):
                status = client.post("/predict", files={"file": ("cat.png", example_bytes())}).status_code
                with lock:
                    statuses.append(status)
                    done.append(time.monotonic())

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    ui = Client(url, verbose=False)
    began = time.monotonic()
    labels = [ui.predict(handle_file(str(showcase.EXAMPLES / "cat-0.png")), api_name="/predict")["label"] for _ in range(3)]
    ended = time.monotonic()
    for thread in threads:
        thread.join()
    assert labels == ["cat"] * 3
    assert any(began <= t <= ended for t in done), "the API answered nothing while the UI was in use"
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) > 0
    assert api.get("/health").json()["ready"]


def test_openapi_schema_and_docs(shipped_server):
    url, _ = shipped_server
    schema = httpx.get(url + "openapi.json").json()
    assert {"/api/v1/predict", "/api/v1/predict_batch", "/api/v1/health"} <= set(schema["paths"])
    assert "413" in schema["paths"]["/api/v1/predict"]["post"]["responses"]
    body = schema["paths"]["/api/v1/predict_batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["components"]["schemas"][body["$ref"].rpartition("/")[2]]["properties"]["files"]["minItems"] == 1
    assert "Query parameters not listed here are ignored." in schema["info"]["description"]
    assert httpx.get(url + "docs").status_code == 200
    assert httpx.get(url + "gradio_api/info").status_code == 200  # Gradio's own routes still answer


# ---- the contract: schemathesis against the server's own OpenAPI document ----------------------------------
# Besides generated requests, ones with a real PNG where a file is expected and the shipped model, so that 200
# responses are checked too (a generated file is never an image, a generated model name never a model).
REAL_BODIES = {"/api/v1/predict": {"file": example_bytes()}, "/api/v1/predict_batch": {"files": [example_bytes()]}}
CONTRACT_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CONTRACT_EXAMPLES = 50  # per operation, valid and invalid requests together


@pytest.fixture(scope="module")
def contract_statuses():
    """(operation, status) -> how many responses the contract test saw."""
    return collections.Counter()


def test_every_response_keeps_the_contract(shipped_server, contract_statuses):
    """No 5xx, only documented statuses, each response as its schema says. (schemathesis's own pytest loader,
    ``from_fixture``, does not run under pytest 9: hence Hypothesis over each operation's strategy here.)"""
    schema = schemathesis.openapi.from_url(shipped_server[0] + "openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} >= {"POST /api/v1/predict", "POST /api/v1/predict_batch",
                                                              "GET /api/v1/health"}
    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
        if operation.path in REAL_BODIES:
            real = operation.as_strategy(GenerationMode.POSITIVE, query={"model": "shipped"}, body=REAL_BODIES[operation.path])
            cases = st.one_of(cases, real)

        @given(case=cases)
        @settings(max_examples=CONTRACT_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def keeps_the_contract(case):
            response = case.call_and_validate(checks=CONTRACT_CHECKS, timeout=120)
            contract_statuses[(case.operation.label, response.status_code)] += 1

        keeps_the_contract()


def test_the_server_is_healthy_after_the_contract_test(api, contract_statuses):
    print("contract test responses:", dict(sorted(contract_statuses.items())))
    assert contract_statuses[("POST /api/v1/predict", 200)] > 0
    assert contract_statuses[("POST /api/v1/predict_batch", 200)] > 0
    assert api.get("/health").json()["ready"]
    assert api.post("/predict", files={"file": ("cat.png", example_bytes())}).json()["label"] == "cat"


# ---- admission by expected wait --------------------------------------------------------------------
PREDICTION_S = 0.02  # a prediction's time in the burst below, and the gate's estimate of it


@pytest.fixture
def steady_server(tmp_path, monkeypatch):
    """The routes alone, with this server's default limits, each prediction a sleep of PREDICTION_S; the gate's
    estimate is held there (a sleeping thread on a busy test machine can wake far later, and the estimate would
    follow), so the burst means the same on any machine."""

    def steady_prediction(root, upload, limit, choice, with_logits):
        time.sleep(PREDICTION_S)
        return {"label": "cat", "probability": 1.0, "probabilities": {"cat": 1.0}, "model": {"id": choice}}

    monkeypatch.setattr(http_api, "predict_one", steady_prediction)
    allowed = limits.current()
    gate = http_api.Gate(allowed.api_workers, allowed.api_max_wait_s, allowed.api_queue, service_s=PREDICTION_S)
    monkeypatch.setattr(gate, "record", lambda seconds: None)
    served = FastAPI()
    served.include_router(http_api.build_api(tmp_path, gate))
    running = http_api.start(served, "127.0.0.1", 0)
    yield running.url + "api/v1"
    running.close()


def test_a_burst_the_server_finishes_within_the_wait_limit_is_served_in_full(steady_server):
    """100 requests from 50 clients at once: a fixed queue of 32 refused some; at PREDICTION_S each, the last of
    them expects about 1 s of wait, within STUDIO_API_MAX_WAIT_S."""
    go, statuses, lock = threading.Barrier(50), [], threading.Lock()

    def client():
        with httpx.Client(base_url=steady_server, timeout=120) as session:
            go.wait()
            for _ in range(2):
                status = session.post("/predict", files={"file": ("cat.png", example_bytes())}).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 100


SMALL_BYTES = 4096  # room for the example PNG (2.5 kB), not for much more


@pytest.fixture
def small_server(shipped_server, monkeypatch, server_limits):
    """The routes alone with one prediction slot, an estimate of 0.1 s a prediction and 0.25 s of expected wait
    allowed; 4 kB byte caps; the model load blocks until ``release`` is set, so a request can hold the slot as long
    as a test needs."""
    gate = http_api.Gate(workers=1, max_wait_s=0.25, max_queued=10, service_s=0.1)
    release, load = threading.Event(), http_api.load

    def slow_load(choice, root):
        release.wait(60)
        return load(choice, root)

    monkeypatch.setattr(http_api, "load", slow_load)
    small = FastAPI()
    server_limits(upload_bytes=SMALL_BYTES, weights_bytes=SMALL_BYTES)  # before the routes are built: their byte caps
    small.include_router(http_api.build_api(shipped_server[1], gate))
    running = http_api.start(small, "127.0.0.1", 0)
    yield running.url + "api/v1", gate, release
    release.set()
    running.close()


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_over_the_expected_wait_a_request_gets_503_at_once_with_retry_after(small_server):
    url, gate, release = small_server
    answers = {}

    def call(name):
        answers[name] = httpx.post(url + "/predict", files={"file": ("cat.png", example_bytes())}, timeout=60)

    callers = [threading.Thread(target=call, args=(name,)) for name in ("holder", "first", "second")]
    for admitted, caller in enumerate(callers, 1):
        caller.start()
        wait_for(lambda admitted=admitted: gate.admitted == admitted)  # the holder runs; the others expect 0.1 and 0.2 s of wait
    refused_now = httpx.post(url + "/predict", files={"file": ("cat.png", example_bytes())}, timeout=60)  # it would expect 0.3 s
    refused(refused_now, 503, "would wait about 0.3 s", "over this server's 0.25 s")
    assert refused_now.headers["retry-after"] == "1"
    release.set()
    for caller in callers:
        caller.join()
    assert all(answers[name].status_code == 200 and answers[name].json()["label"] == "cat" for name in answers)


def test_the_batch_byte_cap_is_the_servers(small_server):
    url, _, release = small_server
    release.set()
    assert httpx.post(url + "/predict_batch", files={"files": ("cat.png", example_bytes())}).status_code == 200
    big = SMALL_BYTES + http_api.MULTIPART_SLACK
    refused(httpx.post(url + "/predict_batch", files={"files": ("a.png", b"\0" * big)}), 413, "request body is larger")
