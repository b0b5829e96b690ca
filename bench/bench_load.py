"""Load on the studio: concurrent API clients calling /predict against `python app.py`.

A measurement, not a test. It starts the app as a subprocess (its own process group, loopback
only, a temporary runs folder), warms it up, then lets --clients threads, each with its own
gradio_client.Client, call /predict with a real upload for --seconds. It reports requests served,
errors, p50/p99 latency, the server's resident memory (VmRSS) after warm-up and after the load, and
with --while-training the images/s of a run the app trains meanwhile, alone vs under the load
(read from the run's metrics.jsonl rows). With --http the same clients then call the plain HTTP API
(POST /api/v1/predict, resnet.studio.http_api) for as long, and both loads are reported side by side. With
--burst, after a warm-up of the HTTP API, --requests requests are sent at once through --parallel
clients, each on a connection of its own (as `xargs -P 50 curl` sends them): the status counts, the
Retry-After values and the latencies, the slowest included. With --overload, after that warm-up (whose
rate is taken as the capacity), requests are sent on a schedule at --factor times that rate for --seconds,
each when it is due whatever the answers to the earlier ones (an open loop, as independent clients send):
the share refused (503 with Retry-After), the time to a refusal, the most requests admitted at once (served
ones whose requests overlapped), the longest wait for an answer, and a health check and a prediction after.

    python bench/bench_load.py                        # 16 clients, 60 s, idle server
    python bench/bench_load.py --while-training       # the same while a run trains
    python bench/bench_load.py --seconds 5 --clients 4 --json bench/out/load.json
    python bench/bench_load.py --http --json bench/results/http_load.json   # gradio_client, then the HTTP API
    python bench/bench_load.py --burst --warmup 5 --json bench/results/load_burst.json   # 200 at once, 50 clients
    python bench/bench_load.py --overload --seconds 30 --warmup 10 --json bench/results/load_overload.json   # 10x
"""

import argparse
import collections
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gradio_client import Client, handle_file
from machine import machine  # bench/, beside this file

from resnet import runs

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list:
    """Every thread's children: the run queue starts the training process from its own thread."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return sorted(found)


def memory(server_pid: int) -> dict:
    """VmRSS of the server, and of its children (the training process, when one runs), in MiB."""
    kids = {pid: rss_kib(pid) for pid in children(server_pid)}
    server = rss_kib(server_pid)
    return {"server_mib": round(server / 1024, 1) if server else None,
            "children_mib": round(sum(v for v in kids.values() if v) / 1024, 1)}


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Server:
    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        environment = {**os.environ, **env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
                       "GRADIO_ANALYTICS_ENABLED": "False"}
        with open(log, "wb") as handle:
            self.process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=environment, stdout=handle,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"app.py exited; see {log}")
            try:
                if httpx.get(self.url + "gradio_api/info", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"app.py did not start in 240 s; see {log}")

    def stop(self) -> None:
        """SIGTERM to the group (a training child checkpoints and stops), SIGKILL if it lingers."""
        for signum, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def gradio_caller(url: str, image: str):
    """One client's call: gradio_client's /predict round trip."""
    client = Client(url, verbose=False)

    def call():
        result = client.predict(handle_file(image), api_name="/predict")
        assert result.get("label"), result

    return call


def http_caller(url: str, image: str):
    """One client's call: a multipart POST to the HTTP API, on a keep-alive connection."""
    client, data = httpx.Client(base_url=url, timeout=120), Path(image).read_bytes()

    def call():
        response = client.post("api/v1/predict", files={"file": (Path(image).name, data)})
        assert response.status_code == 200, f"{response.status_code} {response.text[:200]}"

    return call


def hammer(url: str, image: str, clients: int, seconds: float, caller=gradio_caller) -> dict:
    """``clients`` threads calling /predict until ``seconds`` have passed; latencies of the successes."""
    stop_at = time.monotonic() + seconds
    latencies, errors, lock = [], [], threading.Lock()
    ready = threading.Barrier(clients + 1)

    def worker():
        try:
            call = caller(url, image)
        except Exception as error:
            with lock:
                errors.append(f"connect: {error}")
            ready.wait()
            return
        ready.wait()
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                call()
            except Exception as error:
                with lock:
                    errors.append(f"{type(error).__name__}: {str(error)[:200]}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    began = time.monotonic()
    stop_at = began + seconds
    for thread in threads:
        thread.join(timeout=seconds + 120)
    wall = time.monotonic() - began
    return {"served": len(latencies), "errors": len(errors), "error_examples": sorted(set(errors))[:5],
            "requests_per_s": round(len(latencies) / wall, 2), "wall_s": round(wall, 1),
            "p50_ms": round(1000 * percentile(latencies, 50), 1) if latencies else None,
            "p99_ms": round(1000 * percentile(latencies, 99), 1) if latencies else None}


def burst(url: str, image: str, requests: int, parallel: int) -> dict:
    """``requests`` POSTs to the HTTP API at once through ``parallel`` clients, each on a fresh connection."""
    data, statuses, retry_after, latencies, lock = Path(image).read_bytes(), collections.Counter(), collections.Counter(), [], \
        threading.Lock()

    def one(_):
        start = time.perf_counter()
        response = httpx.post(url + "api/v1/predict", files={"file": (Path(image).name, data)}, timeout=120)
        with lock:
            latencies.append(time.perf_counter() - start)
            statuses[response.status_code] += 1
            if "retry-after" in response.headers:
                retry_after[response.headers["retry-after"]] += 1

    began = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(requests)))
    return {"requests": requests, "parallel": parallel, "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "retry_after_s": dict(sorted(retry_after.items())), "wall_s": round(time.monotonic() - began, 2),
            "p50_ms": round(1000 * percentile(latencies, 50), 1), "p99_ms": round(1000 * percentile(latencies, 99), 1),
            "max_ms": round(1000 * max(latencies), 1)}


def overload(url: str, image: str, rate: float, seconds: float, senders: int) -> dict:
    """POSTs to the HTTP API at ``rate`` per second for ``seconds``, request i sent at i / rate by whichever of
    ``senders`` threads (each on its own keep-alive connection) is free, none after ``seconds`` (senders that
    fall behind send fewer: ``sent_per_s`` is the load achieved); how each was answered, and how fast."""
    data, lock = Path(image).read_bytes(), threading.Lock()
    due, answers, late = iter(range(int(rate * seconds))), [], []
    began = time.monotonic()

    def sender():
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    index = next(due, None)
                if index is None or time.monotonic() > began + seconds:  # the rest were due when the load is over
                    return
                delay = began + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    late.append(-delay)
                start = time.monotonic()
                try:
                    response = client.post("api/v1/predict", files={"file": (Path(image).name, data)})
                    answer = (response.status_code, response.headers.get("retry-after"), response.text[:200])
                except httpx.HTTPError as error:
                    answer = (None, None, f"{type(error).__name__}: {error}"[:200])
                with lock:
                    answers.append((start, time.monotonic(), *answer))

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    statuses = collections.Counter(status for _, _, status, _, _ in answers)
    refusals = [(end - start, retry) for start, end, status, retry, _ in answers if status == 503]
    served = [(start, end) for start, end, status, _, _ in answers if status == 200]
    overlap, most = 0, 0  # served requests in flight at once: those running or waiting for a worker, at most
    for _, step in sorted([(start, 1) for start, _ in served] + [(end, -1) for _, end in served]):  # an end first on a tie
        overlap += step
        most = max(most, overlap)
    served_s = [end - start for start, end in served]
    refused_s = [seconds for seconds, _ in refusals]
    return {"target_per_s": round(rate, 1), "sent": len(answers), "sent_per_s": round(len(answers) / wall, 1),
            "senders": senders, "wall_s": round(wall, 1),
            "sent_late_p99_ms": round(1000 * percentile(late, 99), 1) if late else 0,
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "refused_share": round(len(refusals) / len(answers), 3) if answers else None,
            "refused_with_retry_after": sum(1 for _, retry in refusals if retry),
            "retry_after_s": dict(sorted(collections.Counter(retry for _, retry in refusals).items(), key=str)),
            "refusal_p50_ms": round(1000 * percentile(refused_s, 50), 1) if refused_s else None,
            "refusal_p99_ms": round(1000 * percentile(refused_s, 99), 1) if refused_s else None,
            "served_per_s": round(len(served) / wall, 1),
            "served_p99_ms": round(1000 * percentile(served_s, 99), 1) if served_s else None,
            "served_max_ms": round(1000 * max(served_s), 1) if served_s else None,
            "most_admitted_at_once": most,
            "other_examples": sorted({text for _, _, status, _, text in answers if status not in (200, 503)})[:5]}


def rows_speed(rows) -> float | None:
    speeds = [r["images_per_s"] for r in rows if r.get("images_per_s")]  # step and epoch rows alike
    return round(statistics.median(speeds), 1) if speeds else None


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="length of the measured load (default 60)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent API clients (default 16)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of load before memory is first read (default 10)")
    parser.add_argument("--while-training", action="store_true", help="start a run first and measure it under the load")
    parser.add_argument("--alone", type=float, default=60, help="with --while-training: seconds the run trains alone first")
    parser.add_argument("--image", default=str(REPO / "assets" / "examples" / "cat-0.png"))
    parser.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR", str(REPO.parent / "shared" / "data" / "cifar10")))
    parser.add_argument("--weights", default=os.environ.get("STUDIO_WEIGHTS", ""), help="default: the shipped weights")
    parser.add_argument("--http", action="store_true", help="then load the HTTP API (POST /api/v1/predict) the same way")
    parser.add_argument("--burst", action="store_true", help="only the HTTP API: a warm-up, then --requests at once")
    parser.add_argument("--requests", type=int, default=200, help="with --burst: requests sent at once (default 200)")
    parser.add_argument("--parallel", type=int, default=50, help="with --burst: clients sending them (default 50)")
    parser.add_argument("--overload", action="store_true", help="only the HTTP API: a warm-up, then --factor times its "
                        "rate for --seconds")
    parser.add_argument("--factor", type=float, default=10, help="with --overload: times the warm-up's rate (default 10)")
    parser.add_argument("--senders", type=int, default=64, help="with --overload: threads sending (default 64)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    return parser.parse_args(argv)


def burst_mode(server: Server, args, result: dict) -> int:
    """--burst: a warm-up of the HTTP API, then --requests at once; 0 when every one was answered 200."""
    warm = hammer(server.url, args.image, args.clients, args.warmup, http_caller)
    result["http_warmup"] = {k: warm[k] for k in ("served", "errors", "requests_per_s")}
    result["burst"] = burst(server.url, args.image, args.requests, args.parallel)
    result["memory_after"] = memory(server.process.pid)
    return 1 if set(result["burst"]["statuses"]) != {"200"} else 0


def overload_mode(server: Server, args, result: dict) -> int:
    """--overload: a warm-up of the HTTP API, then --factor times its rate; 0 when every answer was a 200 or a 503
    and the server is healthy and predicting afterwards."""
    warm = hammer(server.url, args.image, args.clients, args.warmup, http_caller)
    result["http_warmup"] = {k: warm[k] for k in ("served", "errors", "requests_per_s")}
    result["overload"] = overload(server.url, args.image, args.factor * warm["requests_per_s"], args.seconds,
                                  args.senders)
    result["overload"]["sent_over_capacity"] = round(result["overload"]["sent_per_s"] / warm["requests_per_s"], 1)
    result["health_after"] = httpx.get(server.url + "api/v1/health", timeout=30).status_code
    upload = {"file": (Path(args.image).name, Path(args.image).read_bytes())}
    result["predict_after"] = httpx.post(server.url + "api/v1/predict", timeout=30, files=upload).status_code
    result["memory_after"] = memory(server.process.pid)
    healthy = result["health_after"] == result["predict_after"] == 200
    return 0 if healthy and set(result["overload"]["statuses"]) <= {"200", "503"} else 1


def start_training(server: Server, workdir: Path, alone_s: float) -> tuple[str, Path]:
    """Start a run through the Gradio API, wait until it trains, then let it train alone for ``alone_s``."""
    client = Client(server.url, verbose=False)
    # The Train form's order: optimizer, lr, dropout, epochs, batch, blocks, limit_train, momentum,
    # weight decay, schedule, label smoothing, seed, limit_test. All 50,000 images: many step rows.
    run_id = client.predict("original", "adam", 0.01, 0.1, 3, 64, "1,1,1,1", 0, 0.9, 0.0, "constant", 0.0, 0, 500,
                            api_name="/start_run")
    run_dir = workdir / "runs" / run_id
    deadline = time.monotonic() + 300
    while runs.read_status(run_dir)["status"] != "running" or not runs.read_metrics(run_dir):
        if time.monotonic() > deadline or runs.read_status(run_dir)["status"] in ("failed", "diverged"):
            raise SystemExit(f"the run did not start training: {runs.read_status(run_dir)}")
        time.sleep(1)
    time.sleep(alone_s)
    return run_id, run_dir


def training_speeds(run_dir: Path, alone_rows: list, rows_before: int) -> dict:
    """The run's speed alone and under the load (the metric rows written from ``rows_before`` on)."""
    during = runs.read_metrics(run_dir)[rows_before:]
    training = {
        "status": runs.read_status(run_dir)["status"],
        "images_per_s_alone": rows_speed(alone_rows), "rows_alone": len(alone_rows),
        "images_per_s_under_load": rows_speed(during), "rows_under_load": len(during),
    }
    if training["images_per_s_alone"] and training["images_per_s_under_load"]:
        training["ratio"] = round(training["images_per_s_under_load"] / training["images_per_s_alone"], 3)
    return training


def http_after_gradio(server: Server, args, result: dict) -> None:
    """--http: the same load on POST /api/v1/predict, after the Gradio one."""
    if httpx.get(server.url + "api/v1/health", timeout=30).status_code != 200:
        raise SystemExit("app.py serves no /api/v1: wire resnet.studio.http_api into its __main__ first")
    warm = hammer(server.url, args.image, args.clients, args.warmup, http_caller)
    result["http_warmup"] = {k: warm[k] for k in ("served", "errors")}
    result["http_load"] = hammer(server.url, args.image, args.clients, args.seconds, http_caller)
    result["http_memory_after"] = memory(server.process.pid)
    if result["load"]["requests_per_s"]:
        ratio = result["http_load"]["requests_per_s"] / result["load"]["requests_per_s"]
        result["http_over_gradio_rps"] = round(ratio, 2)


def load_mode(server: Server, args, result: dict, workdir: Path) -> int:
    """The default: --clients calling the Gradio /predict (with a run training, --while-training; then the HTTP API,
    --http); 0 when no call failed."""
    run_dir = None
    if args.while_training:
        result["run_id"], run_dir = start_training(server, workdir, args.alone)
    alone_rows = runs.read_metrics(run_dir) if run_dir else []
    warm = hammer(server.url, args.image, args.clients, args.warmup)
    result["warmup"] = {k: warm[k] for k in ("served", "errors")}
    result["memory_before"] = memory(server.process.pid)
    rows_before = len(runs.read_metrics(run_dir)) if run_dir else 0
    result["load"] = hammer(server.url, args.image, args.clients, args.seconds)
    result["memory_after"] = memory(server.process.pid)
    before, after = result["memory_before"]["server_mib"], result["memory_after"]["server_mib"]
    result["server_rss_growth_pct"] = round(100 * (after - before) / before, 2) if before and after else None
    if run_dir:
        result["training"] = training_speeds(run_dir, alone_rows, rows_before)
    if args.http:
        http_after_gradio(server, args, result)
    return 1 if result["load"]["errors"] or result.get("http_load", {}).get("errors") else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    weights = Path(args.weights) if args.weights else REPO / "weights" / "cifar10-resnet.safetensors"
    if not weights.is_file():
        raise SystemExit(f"no weights at {weights}: pass --weights (a .safetensors with its .json card)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    env = {"RUNS_DIR": str(workdir / "runs"), "CIFAR10_DIR": args.data_dir,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.weights:
        env["STUDIO_WEIGHTS"] = args.weights
    server = Server(env, workdir / "app.log")
    result = {"clients": args.clients, "seconds": args.seconds, "while_training": args.while_training,
              "machine": machine(), "server_omp_threads": env["OMP_NUM_THREADS"], "workdir": str(workdir)}
    try:
        if args.burst:
            status = burst_mode(server, args, result)
        elif args.overload:
            status = overload_mode(server, args, result)
        else:
            status = load_mode(server, args, result, workdir)
    finally:
        server.stop()
    return finish(result, args.json, status)


def finish(result: dict, out, status: int) -> int:
    print(json.dumps(result, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
