"""Cold start of a fresh Space: `python app.py` with no data set, to the first page served and to a training-ready
Train tab, the data set fetched from a local HTTP server (the Space's fast path to a copy).

    python bench/bench_cold_start.py --data ../shared/data/cifar10 [--repeats 3] [--json bench/results/cold_start.json]
        [--note "what else ran on the machine"]

The archive is packed once from the extracted batches in --data (tar.gz, as cifar-10-python.tar.gz is laid out; its
own MD5, since a repacked archive is not byte for byte the published one) and served by http.server on 127.0.0.1.
Each repeat starts `python app.py` over an empty data folder and an empty runs folder, with STUDIO_DATA_SOURCE
pointing at that archive, and times from the moment the process is started:

- ``page_s``: the first GET / answered 200 (the studio's page, served);
- ``ready_s``: every batch file in place, which is what turns the Train tab's note to "here" (its poll reads the same
  files each second) and lets a queued run start.

Beside each wall time, ``*_cpu_s`` is the CPU time the server process had used by then (all its threads): the work
itself, which a machine busy with something else stretches less than the wall time.
"""

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from machine import machine, report  # bench/, beside this file

from resnet.data import BATCHES_FOLDER
from resnet.fetch import present

REPO = Path(__file__).resolve().parent.parent

ARCHIVE = "cifar-10-python.tar.gz"


def pack(data: Path, cache: Path) -> tuple:
    """(archive path, its MD5): the batches in --data packed once into ``cache``."""
    path = cache / ARCHIVE
    if not path.is_file():
        with tarfile.open(path.with_suffix(".tmp"), "w:gz") as archive:
            archive.add(data / BATCHES_FOLDER, arcname=BATCHES_FOLDER)
        path.with_suffix(".tmp").rename(path)
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return path, digest.hexdigest()


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def one_start(url: str, work: Path, timeout: float = 600) -> dict:
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "CIFAR10_DIR": str(work / "data"), "RUNS_DIR": str(work / "runs"), "STUDIO_DATA_SOURCE": url}
    start = time.monotonic()
    with open(work / "app.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    page_s = ready_s = page_cpu = ready_cpu = None
    try:
        while time.monotonic() - start < timeout and (page_s is None or ready_s is None):
            assert process.poll() is None, (work / "app.log").read_text()[-2000:]
            if ready_s is None and present(work / "data"):
                ready_s, ready_cpu = time.monotonic() - start, cpu_seconds(process.pid)
            if page_s is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                        page_s, page_cpu = time.monotonic() - start, cpu_seconds(process.pid)
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
    finally:
        process.terminate()  # the server stops as on a Space restart; a starved one may take minutes
        try:
            process.wait(300)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {"page_s": round(page_s, 1), "page_cpu_s": round(page_cpu, 1), "ready_s": round(ready_s, 1),
            "ready_cpu_s": round(ready_cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder that contains cifar-10-batches-py/")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cifar-archive")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--note", help="what else this machine ran meanwhile, recorded with the figures: it bounds them")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    archive, md5 = pack(args.data, args.cache)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(args.cache)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}#md5={md5}"
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as work:
            runs.append(one_start(url, Path(work)))
            print(runs[-1], flush=True)
    server.shutdown()
    report({"machine": machine(), "archive_bytes": archive.stat().st_size, "runs": runs,
            **{f"median_{key}": statistics.median(r[key] for r in runs) for key in runs[0]},
            "load_average_1m_after": round(os.getloadavg()[0], 2), **({"note": args.note} if args.note else {})}, args.json)


if __name__ == "__main__":
    main()
