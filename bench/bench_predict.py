"""Predict round trip through the API: p50/p99 latency for a 32 x 32 and a 12 MP upload.

    python bench/bench_predict.py [--calls 200] [--while-training]

Starts the app in this process over the shipped weights ($STUDIO_WEIGHTS to override). With
--while-training it also starts a quick run through /start_run first (needs CIFAR-10) and
measures while it trains. Prints one JSON line per image size, with the p50 of the same round trip
to a do-nothing Gradio app with the same components (the framework's floor on this machine).
"""

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

# app.py is the Space's entry file, beside the package rather than in it: loaded from the checkout.
_spec = importlib.util.spec_from_file_location("app", Path(__file__).resolve().parent.parent / "app.py")
app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app)


SIZES = {"32x32": (32, 32), "12MP": (4000, 3000)}


def write_upload(folder: Path, name: str, size) -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = folder / f"{name}.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return str(path)


def percentile(values, q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--while-training", action="store_true")
    args = parser.parse_args()
    studio = app.Studio()
    demo = app.build_demo(studio)
    _, url, _ = demo.launch(prevent_thread_lock=True, ssr_mode=False, quiet=True, **app.launch_options())
    client = Client(url, verbose=False)
    baseline_demo = trivial_demo()
    _, baseline_url, _ = baseline_demo.launch(prevent_thread_lock=True, ssr_mode=False, quiet=True)
    baseline = Client(baseline_url, verbose=False)
    try:
        if args.while_training:
            run_id = client.predict("original", "adam", 0.01, 0.1, 50, 64, "1,1,1,1", 0, 0.9, 0.0, "constant", 0.0, 0, 1000,
                                    api_name="/start_run")
            while studio.queue.active() != run_id:
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as folder:
            for name, size in SIZES.items():
                path = write_upload(Path(folder), name, size)
                client.predict(handle_file(path), api_name="/predict")  # warm-up: model load, first request
                seconds = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    client.predict(handle_file(path), api_name="/predict")
                    seconds.append(time.perf_counter() - start)
                floor = framework_floor(baseline, path, args.calls)
                print(json.dumps({"upload": name, "bytes": Path(path).stat().st_size, "calls": args.calls,
                                  "training": args.while_training, "p50_ms": round(1000 * statistics.median(seconds), 1),
                                  "p99_ms": round(1000 * percentile(seconds, 99), 1),
                                  "gradio_floor_p50_ms": round(1000 * statistics.median(floor), 1)}))
    finally:
        demo.close()
        baseline_demo.close()
        studio.queue.close()


def trivial_demo() -> gr.Blocks:
    """The same components and event with a handler that does nothing: Gradio's own round trip."""
    with gr.Blocks() as demo:
        image, label = gr.Image(type="filepath"), gr.Label()
        image.change(lambda path: {"cat": 1.0}, image, label, api_name="predict")
    return demo


def framework_floor(client: Client, path: str, calls: int) -> list:
    client.predict(handle_file(path), api_name="/predict")
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        client.predict(handle_file(path), api_name="/predict")
        seconds.append(time.perf_counter() - start)
    return seconds


if __name__ == "__main__":
    main()
