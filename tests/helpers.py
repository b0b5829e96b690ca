"""Plain helpers the tests share: data and weights to test with, pictures and archives, waiting, the studio served as
app.py serves it, ``python app.py`` in a process of its own, and the browser. Fixtures live in conftest.py.

Optional packages (gradio, gradio_client, httpx) are imported where used, so a test that needs none of them runs
without them."""

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnet import fetch, runs
from resnet.data import BATCHES_FOLDER, TEST_FILES, TRAIN_FILES, load_split
from resnet.evaluate import evaluate
from resnet.studio import jobs, limits, showcase
from resnet.weights import make_card

REPO = Path(__file__).resolve().parent.parent


# ---- waiting ---------------------------------------------------------------------------------------------------
def wait_for(condition, timeout=120, what="condition"):
    """``condition()``'s first true value, polled every 0.1 s; an AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---- tiny CIFAR-10-format data, and weights evaluated on it ----------------------------------------------------
def pattern_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images whose class shows as a bright square at a class-dependent place, over noise."""
    images = rng.integers(0, 96, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, label % 3, 4 + row * 8 : 4 + row * 8 + 8, 2 + col * 7 : 2 + col * 7 + 8] = 255
    return images


def write_cifar_format(root: Path, train_per_file: int = 64, test_count: int = 100, seed: int = 0) -> Path:
    """Write the five training batches and the test batch in the official pickle layout."""
    rng = np.random.default_rng(seed)
    folder = root / BATCHES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in [(n, train_per_file) for n in TRAIN_FILES] + [(n, test_count) for n in TEST_FILES]:
        labels = rng.integers(0, 10, size=count)
        data = pattern_images(labels, rng).reshape(count, -1)
        with open(folder / name, "wb") as handle:
            filenames = [f"{i}.png" for i in range(count)]
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": data, "filenames": filenames}, handle)
    return root


def tiny_card(model, data_dir) -> dict:
    """A card like a finished run's, with the evaluation fields the pages draw."""
    images, labels = load_split(data_dir, train=False)
    result = evaluate(model, images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    curve = [{"epoch": 1, "train_loss": 2.3, "train_acc": 0.1, "test_loss": result["loss"], "test_acc": result["acc"]}]
    return make_card(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), test_acc=result["acc"], ece=result["ece"],
                     per_class_acc=result["per_class_acc"], confusion=result["confusion"], test_images=result["count"],
                     curve=curve)


# ---- runs ------------------------------------------------------------------------------------------------------
# A run the tiny data set finishes in seconds on one CPU thread.
TINY = {"epochs": 1, "batch_size": 64, "limit_test": 50, "log_every": 1, "dropout": 0.0}
# Long enough to be watched and stopped; each epoch of the tiny data takes seconds.
TINY_RUN = {"epochs": 20, "batch_size": 64, "limit_train": 0, "limit_test": 50, "dropout": 0.0}
BROWSER_KEY = "a-browsers-key"  # the owner key a visitor's browser sends with its runs


def status_of(queue: jobs.RunQueue, run_id: str) -> str:
    return runs.read_status(queue.root / run_id)["status"]


def finished_run(root, run_id, weights):
    """A run folder as a finished training leaves it (copied from the tiny weights)."""
    run_dir = runs.run_path(root, run_id)
    run_dir.mkdir(parents=True)
    (run_dir / runs.CONFIG).write_text(json.dumps({"optimizer": "adam", "lr": 0.01, "epochs": 1, "blocks": [1, 1, 1, 1]}))
    card = json.loads(weights.with_suffix(".json").read_text())
    (run_dir / runs.METRICS).write_text(json.dumps({"kind": "epoch", "epoch": 1, "step": 5, "images": 320, **card["curve"][0],
                                                    "images_per_s": 100.0, "elapsed_s": 3.0}) + "\n")
    (run_dir / runs.WEIGHTS).write_bytes(weights.read_bytes())
    (run_dir / runs.CARD).write_text(json.dumps(card))
    runs.write_status(run_dir, "finished", "finished: test accuracy 10.00% after 1 epochs", pid=0)
    return run_dir


def form_values(**changes) -> list:
    """The Train form's values in order, as it opens with the published recipe, as the handlers and /start_run take
    them."""
    import app  # only the tests that fill the form import gradio

    recipe = app.make_config("original", epochs=2, limit_train=2000, limit_test=1000)
    form = {name: app.to_form(name, getattr(recipe, name)) for name in app.config.FORM_SETTINGS}
    unknown = set(changes) - set(form)
    assert not unknown, f"not form fields: {unknown}"
    return [changes.get(name, form[name]) for name in app.config.FORM_SETTINGS]


# ---- pictures --------------------------------------------------------------------------------------------------
def example(name="cat-0.png") -> str:
    """The path of one of the committed example pictures."""
    return str(showcase.EXAMPLES / name)


def example_bytes(name="cat-0.png") -> bytes:
    return (showcase.EXAMPLES / name).read_bytes()


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    """``image`` as the bytes of a ``fmt`` file."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 13 drops some mode/format pairs
        image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def image_bytes(size=(5, 5), color=(200, 30, 30), fmt="PNG") -> bytes:
    """A plain picture of one colour, as the bytes of a ``fmt`` file."""
    return encode(Image.new("RGB", size, color), fmt)


def gradient(mode: str, size=(48, 40)) -> Image.Image:
    array = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3).astype(np.uint8)
    image = Image.fromarray(array, "RGB").convert(mode)
    if "A" in image.getbands():  # a real alpha channel: encoders drop one that is opaque everywhere
        image.putalpha(Image.fromarray(array[..., 0]))
    return image


def phone_photo(size=(4032, 3024)) -> bytes:
    """A 12 MP camera JPEG's worth of detail: noise over a gradient, at quality 90 (about 9 MB)."""
    rng = np.random.default_rng(0)
    array = np.asarray(gradient("RGB", size), dtype=np.int16) + rng.integers(-40, 40, (size[1], size[0], 3))
    return encode(Image.fromarray(array.clip(0, 255).astype(np.uint8), "RGB"), "JPEG", quality=90)


def zip_bytes(members: dict) -> bytes:
    """A zip archive of ``{name: bytes}``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _red() -> Image.Image:
    return Image.new("RGB", (40, 30), (200, 30, 30))


def _animated_gif(path: Path) -> None:
    frames = [Image.new("P", (20, 20), i) for i in range(3)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:])


# Each file a visitor might upload, by kind: what writes it at a path.
_ODD_WRITERS = {
    "grayscale": lambda path: _red().convert("L").save(path, "PNG"),
    "alpha": lambda path: Image.new("RGBA", (40, 30), (0, 0, 255, 100)).save(path, "PNG"),
    "palette": lambda path: _red().convert("P").save(path, "GIF"),
    "cmyk": lambda path: _red().convert("CMYK").save(path, "JPEG"),
    "16-bit": lambda path: Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50).save(path, "PNG"),
    "animated-gif": _animated_gif,
    "webp": lambda path: _red().save(path, "WEBP"),
    "1x1": lambda path: Image.new("RGB", (1, 1), (9, 9, 9)).save(path, "PNG"),
    "40mp": lambda path: Image.new("L", (8000, 6000)).save(path, "PNG"),  # 48 MP of zeros: a small file, too many pixels
    "bomb": lambda path: path.write_bytes(encode(Image.new("1", (30000, 30000)), "PNG")),  # 900 MP claimed by a tiny file
    "truncated": lambda path: path.write_bytes(encode(Image.new("RGB", (200, 200), (10, 200, 10)), "JPEG")[:300]),
    "empty": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("this is not a picture, only named like one"),
    # over the upload cap in force when written
    "too-large": lambda path: path.write_bytes(b"\xff\xd8" + b"\0" * (limits.current().upload_bytes + 10)),
}
ODD_UPLOADS = list(_ODD_WRITERS)


def odd_upload(kind: str, folder) -> str:
    """A file a visitor might upload (one of ODD_UPLOADS); returns its path."""
    path = folder / f"upload-{kind}"
    _ODD_WRITERS[kind](path)
    return str(path)


UNUSABLE = {"40mp", "bomb", "truncated", "empty", "text", "too-large"}


# ---- weights ---------------------------------------------------------------------------------------------------
class PublishedBlock(nn.Module):
    """An independent copy of the published model's block (the names its state_dict uses)."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.drop(out + self.shortcut(x))
        return F.relu(out)


class PublishedResNet(nn.Module):
    """An independent copy of the published model, to check that its files load into ours and back."""

    def __init__(self, num_blocks=(1, 1, 1, 1), num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(PublishedBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def randomize_batchnorm(model, seed=0):
    """Non-trivial running statistics, so a loader that dropped the buffers would show."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.num_batches_tracked.fill_(123)
    return model


class Payload:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- the data set's archive, served over HTTP on this machine --------------------------------------------------
def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Archive:
    """A tiny data set in the official layout, packed as cifar-10-python.tar.gz is, with its checksums."""

    def __init__(self, root: Path):
        self.source_dir = write_cifar_format(root, train_per_file=100, test_count=100, seed=3)
        path = root / "cifar-10-python.tar.gz"
        with tarfile.open(path, "w:gz") as archive:
            archive.add(root / BATCHES_FOLDER, arcname=BATCHES_FOLDER)
        self.body = path.read_bytes()
        self.md5 = md5(self.body)
        self.files = {name: md5((root / BATCHES_FOLDER / name).read_bytes()) for name in TRAIN_FILES + TEST_FILES}


class _ArchiveHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append(self.headers.get("Range"))
            behaviour = server.plan.pop(0) if server.plan else "ok"
        body = server.archive.body
        if behaviour == "missing":
            self.send_error(404)
            return
        if behaviour == "corrupt":  # one byte flipped in the middle
            body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
        if behaviour == "truncated":  # half the file, served as if it were all of it
            body = body[: len(body) // 2]
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and server.ranges:
            start = int(wanted.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        rest, half = body[start:], (len(body) - start) // 2
        try:
            self.wfile.write(rest[:half])
            self.wfile.flush()
            if behaviour == "drop":  # the connection closes with half of what was announced sent
                self.close_connection = True
                return
            while behaviour == "hold" and not server.release.wait(1) and half < len(rest) - 1:
                # The rest only when the test says so; meanwhile a byte a second, so the connection never falls
                # silent for as long as the fetcher's timeout however long the test takes.
                self.wfile.write(rest[half:half + 1])
                self.wfile.flush()
                half += 1
            self.wfile.write(rest[half:])
        except OSError:  # the client went away (a killed process)
            pass


class ArchiveServer:
    """http.server in a thread, serving ``archive`` at ``url``; ``plan`` lists how to answer the next requests."""

    def __init__(self, archive: Archive, plan=(), ranges=True):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ArchiveHandler)
        self.httpd.daemon_threads = True
        self.httpd.archive, self.httpd.plan, self.httpd.ranges = archive, list(plan), ranges
        self.httpd.requests, self.httpd.lock, self.httpd.release = [], threading.Lock(), threading.Event()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list:
        return list(self.httpd.requests)

    def release(self):
        self.httpd.release.set()

    def close(self):
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


def source_of(server: ArchiveServer, archive: Archive) -> fetch.Source:
    return fetch.source(f"{server.url}#md5={archive.md5}")


# ---- the studio on a port, as production serves it -------------------------------------------------------------
@contextlib.contextmanager
def serving(studio):
    """The studio's UI and HTTP API on a free port of 127.0.0.1, built and started as app.py's main does (through
    resnet.studio.http_api, not Gradio's launch()); yields the URL and stops the server after."""
    import app
    from resnet.studio import http_api

    running = http_api.start(http_api.create_app(app.build_demo(studio), studio.root, **app.launch_options()), "127.0.0.1", 0)
    try:
        yield running.url
    finally:
        running.close()


@contextlib.contextmanager
def served_studio(weights, data, runs_dir):
    """(url, studio): a Studio built as app.py builds it, with ``weights`` as the shipped model, the data set in
    ``data`` and runs in ``runs_dir`` (STUDIO_WEIGHTS, CIFAR10_DIR and RUNS_DIR, restored after), served by
    ``serving``; its run queue is closed after."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STUDIO_WEIGHTS", str(weights))
        env.setenv("CIFAR10_DIR", str(data))
        env.setenv("RUNS_DIR", str(runs_dir))
        import app

        studio = app.Studio()
        try:
            with serving(studio) as url:
                yield url, studio
        finally:
            studio.queue.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppProcess:
    """``python app.py`` in its own process group (so a kill reaches its training child too); ``env`` adds to this
    process's environment. It is ready when built, unless ``wait=False``: then call ``wait_ready``."""

    def __init__(self, tmp_path: Path, wait: bool = True, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = tmp_path / f"app-{self.port}.log"
        environment = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
                       "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=environment, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            try:
                self.wait_ready()
            except BaseException:  # no one holds a server that never came up: stop it here, or it outlives the test
                self.kill_group()
                raise

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"app.py exited: {self.log_path.read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "gradio_api/info", timeout=5).status_code == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f"app.py did not start in {timeout}s: {self.log_path.read_text()[-2000:]}")

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def kill_group(self, signum=signal.SIGKILL) -> None:
        """Signal the server and every process it started (its group), and reap the server."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)
        self.process.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill_group()


# ---- the browser -----------------------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def launch_chromium(playwright):
    """Headless Chromium from this machine (not a browser playwright downloads)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
