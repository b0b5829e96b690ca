"""A plain HTTP API (/api/v1) beside the Gradio UI, on the same process and port.

Programs pay Gradio's protocol on every ``gradio_client`` call (upload, queue join, event stream);
these routes answer one multipart POST with JSON. ``create_app`` builds a FastAPI app with them and
mounts the Gradio Blocks at ``/`` with ``gr.mount_gradio_app``; ``serve`` runs it with uvicorn.

Why not ``demo.launch()`` plus routes on its app (``launch(app_kwargs=...)`` or ``demo.app``): with
SSR on, which Hugging Face Spaces turns on, launch() puts a Node proxy on the public port that hands
Python only Gradio's own prefixes (``PYTHON_ROUTE_PREFIXES`` in gradio/templates/node/build/
proxy_routes.js: /gradio_api, /config, ...), so /api/v1 would never reach these routes on a Space.
Mounting is Gradio's documented way to share a FastAPI app; it takes the same options as launch()
(max_file_size, allowed_paths, theme, footer_links), and the UI renders client-side (ssr_mode=False).

Refusals are HTTP statuses with FastAPI's ``{"detail": ...}`` JSON: 400 an unusable image (the
app's checks: resnet.images.prepare), 404 an unknown model, 413 too many bytes or images, 422 a
missing or malformed field, 503 busy. Predictions run in worker threads, at most STUDIO_API_WORKERS
at once, so a burst costs the Gradio UI and a training run only those workers' CPU. A request waits
for a turn when the wait it can expect, from the measured time of a prediction, is at most
STUDIO_API_MAX_WAIT_S (and fewer than STUDIO_API_QUEUE wait); any other gets 503 at once, its
Retry-After the expected wait (see Gate).
"""

import collections
import dataclasses
import logging
import math
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import anyio
import gradio as gr
import uvicorn
from fastapi import APIRouter, FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.routing import APIRoute
from gradio.http_server import INITIAL_PORT_VALUE, LOCALHOST_NAME  # $GRADIO_SERVER_PORT and _NAME, read as launch() reads them
from pydantic import BaseModel, Field

from .. import batch
from ..classifier import Classifier
from ..images import FORMATS_IN_WORDS, ImageError, prepare, refusal
from ..runs import RunError
from ..weights import WeightsError
from . import catalog, limits

PREFIX = "/api/v1"
MULTIPART_SLACK = 64 * 1024  # boundary and part headers around a file of the largest allowed size
MODEL_QUERY = Query(catalog.SHIPPED, description="`shipped`, or `run:<id>` for a finished run's weights")
LOGITS_QUERY = Query(False, description="also return the raw logits")


class ModelInfo(BaseModel):
    id: str = Field(description="`shipped` or `run:<id>`")
    test_acc: float | None = Field(None, description="test accuracy from the model's card, 0..1")


class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    probability: float
    probabilities: dict[str, float] = Field(description="every class, best first")
    logits: dict[str, float] | None = Field(None, description="raw logits by class, with ?logits=true")


class PredictResult(Prediction):
    model: ModelInfo


class BatchRow(Prediction):
    file: str = Field(description="the uploaded file's name, or archive.zip:member")


class Problem(BaseModel):
    file: str
    reason: str


class BatchResult(BaseModel):
    model: ModelInfo
    predictions: list[BatchRow]
    problems: list[Problem] = Field(description="files and zip members that could not be used, and why")


class Health(BaseModel):
    status: str = "ok"
    model: ModelInfo = Field(description="the model a request without `model` uses")
    ready: bool = Field(description="whether that model loads")
    reason: str | None = Field(None, description="why it does not")


class Refusal(BaseModel):
    detail: str


REFUSALS = {status: {"model": Refusal, "description": text} for status, text in (
    (400, "the upload is not a usable image"), (404, "unknown model"), (413, "too many bytes or images"),
    (503, "too many requests at once; retry shortly"))}


def capped_route(limit: int) -> type[APIRoute]:
    """An APIRoute that refuses a body over ``limit`` bytes with 413 before parsing it: by Content-Length when
    sent, else as it streams in (a chunked upload). FastAPI's own max_body_size answers in plain text, not JSON."""

    def too_large() -> HTTPException:
        return HTTPException(413, f"the request body is larger than this server's {limit / 2**20:.1f} MB limit")

    class CappedRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def capped(request: Request) -> Response:
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise too_large()
                received = 0

                async def receive():
                    nonlocal received
                    message = await request.receive()
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise too_large()
                    return message

                return await handler(Request(request.scope, receive))

            return capped

    return CappedRoute


class Gate:
    """Admission by expected wait. At most ``workers`` predictions run at once, each in a worker thread of the
    gate's own pool (never behind the threads other routes share). A request arriving while ``admitted`` are
    running or waiting can expect to wait for (admitted - workers + 1) predictions over ``workers`` threads, each
    taking ``service_s``: the median of the last RECENT predictions' measured durations (a median, so that one
    slow prediction on a busy machine does not turn a burst away). It waits for its turn while
    that is at most ``max_wait_s`` and fewer than ``max_queued`` wait (the queue's bound where the estimate runs
    low); any other request gets 503 at once, with the expected wait as its Retry-After. An admitted request whose
    turn has not come within ``max_wait_s`` (the machine slowed under the load, and the estimate lags behind) gets
    the same 503 then, rather than an answer later still. So a burst the server would finish within ``max_wait_s``
    is served, a sustained overload is refused as fast as it comes, and no request waits longer than the limit."""

    RECENT = 16  # durations the estimate is the median of: it follows a lasting change within eight predictions

    def __init__(self, workers: int, max_wait_s: float, max_queued: int, service_s: float = 0.05):
        # service_s: the estimate until the first prediction is measured, a few times the shipped model's own 11 ms
        self.workers, self.max_wait_s, self.max_queued, self.first_guess_s = workers, max_wait_s, max_queued, service_s
        self.turns, self.threads = anyio.Semaphore(workers), anyio.CapacityLimiter(workers)
        self.admitted = 0  # running or waiting for a turn
        self.durations = collections.deque(maxlen=self.RECENT)

    @property
    def service_s(self) -> float:
        return statistics.median(self.durations) if self.durations else self.first_guess_s

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - self.workers)

    def expected_wait(self) -> float:
        """Seconds a request arriving now can expect to wait for a turn."""
        return max(0, self.admitted - self.workers + 1) * self.service_s / self.workers

    def record(self, seconds: float) -> None:
        self.durations.append(seconds)

    def busy(self, wait: float, waited: bool = False) -> HTTPException:
        retry = max(1, math.ceil(wait))
        if waited:
            reason = f"its turn did not come within this server's {self.max_wait_s:g} s"
        elif self.waiting >= self.max_queued:
            reason = f"{self.waiting} requests are already waiting"
        else:
            reason = f"a prediction would wait about {wait:.1f} s for its turn, over this server's {self.max_wait_s:g} s"
        return HTTPException(503, f"the server is busy: {reason}; retry in {retry} s", headers={"Retry-After": str(retry)})

    async def run(self, function, *args):
        wait = self.expected_wait()
        if wait > self.max_wait_s or self.waiting >= self.max_queued:
            raise self.busy(wait)
        self.admitted += 1
        try:
            turn = False
            with anyio.move_on_after(self.max_wait_s):
                await self.turns.acquire()
                turn = True
            if not turn:
                raise self.busy(self.expected_wait(), waited=True)
            try:
                began = time.perf_counter()
                try:
                    return await anyio.to_thread.run_sync(function, *args, limiter=self.threads)
                finally:
                    self.record(time.perf_counter() - began)
            finally:
                self.turns.release()
        finally:
            self.admitted -= 1


def load(choice: str, root) -> Classifier:
    """The Classifier of a picker value, with the app's rules (resnet.studio.catalog); 404 when there is none."""
    try:
        return catalog.load_choice(choice, root)
    except (WeightsError, RunError) as error:
        raise HTTPException(404, str(error)) from None


def decode(data: bytes):
    """uint8 [3, 32, 32] from an upload, with the app's byte and pixel caps; 400 with the reason otherwise."""
    try:
        return prepare(data, limits.current().decode_caps())
    except ImageError as error:  # any decoder failure (resnet.images.ImageError)
        raise HTTPException(400, refusal(error)) from None


def prediction(classifier: Classifier, logits, with_logits: bool) -> dict:
    """One image's row from its raw logits: the calibrated probabilities the classifier makes of them, ranked."""
    probabilities = classifier.ranked(classifier.probabilities(logits))
    label = next(iter(probabilities))
    row = {"label": label, "probability": probabilities[label], "probabilities": probabilities}
    if with_logits:
        row["logits"] = dict(zip(classifier.classes, logits.tolist(), strict=True))
    return row


def model_info(choice: str, card: dict) -> dict:
    accuracy = card.get("test_acc")
    return {"id": choice, "test_acc": accuracy if isinstance(accuracy, (int, float)) else None}


def predict_one(root, upload, limit: int, choice: str, with_logits: bool) -> dict:
    """One image's prediction from its upload (a file object), read here, in the worker, so that a request waiting
    for its turn holds no more than the parser's spooled file (1 MB in memory, the rest on disk)."""
    data = read_capped(upload, limit)
    classifier = load(choice, root)
    return {**prediction(classifier, classifier.logits(decode(data)), with_logits), "model": model_info(choice, classifier.card)}


def predict_many(root, uploads: list, choice: str, with_logits: bool) -> dict:
    """Rows for several images and/or zip archives, with the app's caps (resnet.batch.predict_request); each upload
    is written to a temporary file named by its position (the client's name is only shown, never used as a path)."""
    classifier = load(choice, root)
    with tempfile.TemporaryDirectory(prefix="studio-api-") as folder:
        paths = []
        for index, (name, handle) in enumerate(uploads):
            path = Path(folder) / (f"{index}.zip" if name.lower().endswith(".zip") else str(index))
            handle.seek(0)
            with open(path, "wb") as out:
                shutil.copyfileobj(handle, out)
            paths.append((path, name))
        try:
            scored, problems = batch.predict_request(classifier, paths, **limits.current().batch_caps())
        except batch.BatchError as error:
            raise HTTPException(error.status, str(error)) from None
    return {"model": model_info(choice, classifier.card),
            "predictions": [{"file": name, **prediction(classifier, logits, with_logits)} for name, logits in scored],
            "problems": [{"file": name, "reason": reason} for name, reason in problems]}


def read_capped(upload, limit: int) -> bytes:
    upload.seek(0)
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the file is larger than the {limit / 2**20:.0f} MB limit")
    return data


def build_api(root, gate: Gate | None = None) -> APIRouter:
    """The /api/v1 routes over a runs folder (for `run:<id>` models), within this server's limits (resnet.studio.limits:
    the byte caps and the gate are set when the routes are built, the batch caps read at each request)."""
    allowed = limits.current()
    gate = gate or Gate(allowed.api_workers, allowed.api_max_wait_s, allowed.api_queue)
    router = APIRouter(prefix=PREFIX, tags=["predict"])

    async def predict(file: Annotated[UploadFile, File(description=f"one image: {FORMATS_IN_WORDS}")],
                      model: str = MODEL_QUERY, logits: bool = LOGITS_QUERY) -> PredictResult:
        """Classify one image: the top class, every class's probability, and the model's id and test accuracy."""
        return await gate.run(predict_one, root, file.file, allowed.upload_bytes, model, logits)

    async def predict_batch(files: Annotated[list[UploadFile], File(description="images and/or .zip archives of images",
                                                                     min_length=1)],
                            model: str = MODEL_QUERY, logits: bool = LOGITS_QUERY) -> BatchResult:
        """Classify several images or the images of zip archives, one row each, with the app's caps."""
        uploads = [(file.filename or f"file-{index}", file.file) for index, file in enumerate(files)]
        return await gate.run(predict_many, root, uploads, model, logits)

    async def health() -> Health:
        """Liveness, and whether the default model loads."""
        try:
            classifier = await anyio.to_thread.run_sync(load, catalog.SHIPPED, root)
        except HTTPException as error:
            return Health(model=ModelInfo(id=catalog.SHIPPED), ready=False, reason=error.detail)
        return Health(model=ModelInfo(**model_info(catalog.SHIPPED, classifier.card)), ready=True)

    common = {"response_model_exclude_none": True, "responses": REFUSALS}
    router.add_api_route("/predict", predict, methods=["POST"],
                         route_class_override=capped_route(allowed.upload_bytes + MULTIPART_SLACK), **common)
    router.add_api_route("/predict_batch", predict_batch, methods=["POST"],
                         route_class_override=capped_route(allowed.request_bytes + MULTIPART_SLACK), **common)
    router.add_api_route("/health", health, methods=["GET"], response_model_exclude_none=True)
    refuse_other_methods(router)
    return router


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def refuse_other_methods(router: APIRouter) -> None:
    """405 with an Allow header for a known path's other methods, as a plain HTTP service answers. Starlette would
    answer so itself, but only where no later route matches the path, and the Gradio app mounted at / matches
    every path: without these routes it answers them 404."""
    taken: dict[str, set] = {}
    for route in router.routes:
        taken.setdefault(route.path.removeprefix(PREFIX), set()).update(route.methods)
    for path, methods in taken.items():
        router.add_api_route(path, method_refusal(", ".join(sorted(methods))), methods=[m for m in METHODS if m not in methods],
                             include_in_schema=False)


def method_refusal(allow: str):
    async def refuse() -> None:
        raise HTTPException(405, "Method Not Allowed", headers={"Allow": allow})

    return refuse


def create_app(demo: gr.Blocks, root, gate: Gate | None = None, **launch_options) -> FastAPI:
    """The API routes, then the Gradio UI mounted at / with the app's launch() options (see the module's docstring)."""
    app = FastAPI(title="CIFAR-10 ResNet studio API", version="1",
                  description="Predict with the studio's models over plain HTTP; the Gradio UI is served at /. "
                              "Query parameters not listed here are ignored.")
    app.include_router(build_api(root, gate))
    served = gr.mount_gradio_app(app, demo, path="/", ssr_mode=False, **launch_options)
    # Gradio refuses a file path a client did not upload only in Blocks marked launched, which launch() does and
    # mount_gradio_app does not: unmarked, any path a request names (/etc/passwd, a run's files) reaches a handler.
    demo.has_launched = True
    return served


@dataclasses.dataclass
class Running:
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start(app: FastAPI, host: str, port: int) -> Running:
    """Serve ``app`` from a daemon thread, as launch() serves Gradio: the main thread keeps its signal
    handlers (resnet.studio.server's SIGTERM handler stops a training child first). Port 0 takes a free one."""
    # A malformed multipart body is the client's error, answered 400 with the reason; python-multipart also logs
    # it as a warning, which with no logging set up reaches stderr as a bare line, one per such request.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="http-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise OSError(f"cannot serve on {host}:{port}: is the port in use?")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return Running(server, thread, f"http://{host}:{port}/")


def serve(demo: gr.Blocks, root, **launch_options) -> None:
    """``python app.py``: the UI and the API on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT until the process is stopped."""
    app = create_app(demo, root, server_name=LOCALHOST_NAME, server_port=INITIAL_PORT_VALUE, **launch_options)
    running = start(app, LOCALHOST_NAME, INITIAL_PORT_VALUE)
    print(f"* Running on local URL:  {running.url} (HTTP API: {running.url}docs)", flush=True)
    try:
        running.thread.join()
    except KeyboardInterrupt:
        running.close()
