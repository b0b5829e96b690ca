"""Single-image latency: the exported ONNX graph in onnxruntime against eager PyTorch, side by side in one run.

    python bench/bench_onnx.py [--weights FILE] [--calls 500] [--rounds 5] [--json bench/results/onnx.json]

Both sides classify the same CIFAR-10-sized uint8 image [1, 3, 32, 32] on the CPU: PyTorch as the
studio does (resnet.evaluate.predict_logits, eval mode, fp32, normalization included), onnxruntime
with the graph resnet.export writes (normalization inside it), each with its default thread count.
The calls are split into --rounds taken in turns, so a change in the machine's load hits both.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from machine import machine, report  # bench/, beside this file

from resnet.export import INPUT, export_onnx
from resnet.weights import DEFAULT_WEIGHTS, load_weights


def timed(function, calls: int) -> list:
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: list) -> dict:
    ordered = sorted(seconds)
    return {"calls": len(seconds), "p50_ms": round(1000 * statistics.median(seconds), 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
            "mean_ms": round(1000 * statistics.fmean(seconds), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--calls", type=int, default=500, help="timed calls per side (default 500)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    classifier = load_weights(args.weights)
    image = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = export_onnx(args.weights, Path(folder) / "model.onnx")
        export_s = time.perf_counter() - start
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = image.numpy()
    sides = {"pytorch_eager": lambda: classifier.logits(image),
             "onnxruntime": lambda: session.run(None, {INPUT: pixels})}
    times = {name: [] for name in sides}
    for function in sides.values():
        timed(function, 20)  # warm-up: oneDNN primitives, ORT's arena
    per_round = max(1, args.calls // args.rounds)
    for _ in range(args.rounds):
        for name, function in sides.items():
            times[name] += timed(function, per_round)
    result = {"machine": machine(), "weights": Path(args.weights).name, "input": "uint8 [1, 3, 32, 32]",
              "onnxruntime_version": ort.__version__, "export_s": round(export_s, 1),
              **{name: summary(seconds) for name, seconds in times.items()}}
    result["pytorch_over_onnxruntime_p50"] = round(result["pytorch_eager"]["p50_ms"] / result["onnxruntime"]["p50_ms"], 2)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
