"""Predict latency of the plain HTTP API against Gradio's, for a 32 x 32 PNG, side by side in one run.

    python bench/bench_http.py [--calls 200] [--rounds 4] [--json bench/results/http.json]

Serves the studio as app.py does (the UI and resnet.studio.http_api on one port, shipped weights unless
$STUDIO_WEIGHTS) in this process and times, one call at a time from one client: POST /api/v1/predict
(httpx, keep-alive), the `gradio_client` /predict round trip to the same server, and the same round
trip to a do-nothing Gradio app (bench_predict.trivial_demo: the framework's floor), and, to tell
the HTTP layer's share from the network's, the same decode and forward pass called directly
(`model_only`). The calls are split into --rounds, the paths taking turns, so a change in the
machine's load hits all of them.
"""

import argparse
import statistics
import sys
import time

import httpx
from bench_predict import app, framework_floor, percentile, trivial_demo  # the studio's app.py, loaded there
from gradio_client import Client
from machine import machine, report

from resnet.studio import catalog, http_api, showcase

IMAGE = showcase.EXAMPLES / "cat-0.png"  # a CIFAR-10 test image: a 32 x 32 PNG
GOAL = {"p50_ms": 30, "p99_ms": 80}  # the HTTP path's target on an idle machine


def http_round_trips(client: httpx.Client, data: bytes, calls: int) -> list:
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        response = client.post("api/v1/predict", files={"file": (IMAGE.name, data)})
        seconds.append(time.perf_counter() - start)
        response.raise_for_status()
    return seconds


def direct_calls(data: bytes, calls: int) -> list:
    """What the API's worker thread does for one request, without HTTP: load (cached), decode, predict."""
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        classifier = http_api.load(catalog.SHIPPED, None)
        http_api.prediction(classifier, http_api.decode(data), with_logits=False)
        seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: list) -> dict:
    return {"calls": len(seconds), "p50_ms": round(1000 * statistics.median(seconds), 1),
            "p99_ms": round(1000 * percentile(seconds, 99), 1), "mean_ms": round(1000 * statistics.fmean(seconds), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per path (default 200)")
    parser.add_argument("--rounds", type=int, default=4, help="turns the calls are split into (default 4)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    studio = app.Studio()
    running = http_api.start(http_api.create_app(app.build_demo(studio), studio.root, **app.launch_options()),
                             "127.0.0.1", 0)
    floor_demo = trivial_demo()
    _, floor_url, _ = floor_demo.launch(prevent_thread_lock=True, ssr_mode=False, quiet=True)
    times = {"http": [], "model_only": [], "gradio": [], "gradio_floor": []}
    try:
        data = IMAGE.read_bytes()
        with httpx.Client(base_url=running.url, timeout=120) as http:
            clients = {"gradio": Client(running.url, verbose=False), "gradio_floor": Client(floor_url, verbose=False)}
            http_round_trips(http, data, 5)  # warm-up: model load, first requests
            per_round = max(1, args.calls // args.rounds)
            for _ in range(args.rounds):
                times["http"] += http_round_trips(http, data, per_round)
                times["model_only"] += direct_calls(data, per_round)
                for name, client in clients.items():
                    times[name] += framework_floor(client, str(IMAGE), per_round)  # one warm-up call, then timed ones
    finally:
        running.close()
        floor_demo.close()
        studio.queue.close()
    result = {"machine": machine(), "upload": f"{IMAGE.name} ({len(data)} bytes, 32x32 PNG)", "goal_idle": GOAL,
              **{name: summary(seconds) for name, seconds in times.items()}}
    result["gradio_over_http_p50"] = round(result["gradio"]["p50_ms"] / result["http"]["p50_ms"], 1)
    result["goal_met"] = all(result["http"][key] <= limit for key, limit in GOAL.items())
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
