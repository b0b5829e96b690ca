"""Weights -> an ONNX graph that runs without PyTorch (onnxruntime on a server, a phone or a browser).

The graph takes what resnet.images.prepare gives the network: uint8 [N, 3, 32, 32], RGB, 0..255 (the
32 x 32 centre square; resizing stays outside). Scaling to 0..1 and the card's normalization are inside
the graph, so a consumer cannot feed it unnormalized or wrongly normalized input, and sends a quarter
of float32's bytes. Outputs: ``logits`` [N, C] and ``probabilities`` [N, C] = softmax(logits / T), with
T the card's ``temperature`` (1 when the card has none: uncalibrated). The metadata_props say all this,
with the classes, mean and std.

Export uses torch.onnx's torch.export-based exporter (the legacy TorchScript one is deprecated), which
needs the ``onnx`` and ``onnxscript`` packages at export time only; running the graph needs neither.
"""

import argparse
import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from .constants import IMAGE_SIZE
from .errors import UserError
from .weights import DEFAULT_WEIGHTS, load_weights

EXPORTER_PACKAGES = ("onnx", "onnxscript")
INPUT, OUTPUTS = "images", ("logits", "probabilities")
FORMAT = "cifar-resnet-studio/onnx-1"


class ExportError(UserError, ValueError):
    """An export that cannot be done here, with the reason."""


class Exported(nn.Module):
    """uint8 images -> (logits, calibrated probabilities), preprocessing included."""

    def __init__(self, model: nn.Module, card: dict, temperature: float):
        super().__init__()
        self.model, self.temperature = model.eval(), temperature
        self.register_buffer("mean", torch.tensor(card["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(card["std"]).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor):
        # resnet.data.normalize's arithmetic, on buffers of this module: normalize caches its constant tensors, and
        # the first call under torch.export would cache fake ones that later eager calls then compute with.
        logits = self.model((images.float() / 255.0 - self.mean) / self.std)
        return logits, (logits / self.temperature).softmax(1)


def metadata(card: dict, temperature: float | None, source: str) -> dict:
    """The metadata_props: strings, lists as JSON."""
    props = {
        "format": FORMAT,
        "input": f"{INPUT}: uint8 [N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}], RGB 0..255, the centre square resized to "
                 f"{IMAGE_SIZE} x {IMAGE_SIZE}; normalization is inside the graph",
        "normalization": "inside the graph: (images / 255 - mean) / std, per channel",
        "outputs": "logits [N, C]; probabilities [N, C] = softmax(logits / temperature)",
        "mean": json.dumps(card["mean"]),
        "std": json.dumps(card["std"]),
        "classes": json.dumps(card["classes"]),
        "temperature": "uncalibrated" if temperature is None else repr(temperature),
        "blocks": json.dumps(card["blocks"]),
        "source": source,
    }
    if isinstance(card.get("test_acc"), (int, float)):
        props["test_acc"] = repr(card["test_acc"])
    return props


def require_exporter() -> None:
    missing = [name for name in EXPORTER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}, not installed here: pip install {' '.join(missing)} "
                          "(the versions are pinned in requirements-dev.txt)")


def export_onnx(weights_path, out_path, dynamic_batch: bool = False) -> Path:
    """Write ``weights_path`` (our .safetensors with its card, a run's, or a published .pt) as ONNX to ``out_path``."""
    require_exporter()
    classifier = load_weights(weights_path)
    temperature, card = classifier.temperature, classifier.card
    wrapped = Exported(classifier.net, card, temperature or 1.0).eval()
    example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    shapes = {INPUT: {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT], output_names=list(OUTPUTS),
                                dynamic_shapes=shapes, verbose=False)
    program.model.metadata_props.update(metadata(card, temperature, Path(weights_path).name))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    program.save(out_path)
    return out_path


def add_parser(sub) -> None:
    """``python -m resnet export``: for resnet.cli's subparsers."""
    p = sub.add_parser("export", help="write weights as an ONNX graph (onnxruntime, no PyTorch needed to run it)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="a .safetensors (with its .json card) or a published .pt")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the graph to write")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size N (default: N = 1)")


def cmd_export(args) -> int:
    path = export_onnx(args.weights, args.onnx, args.dynamic_batch)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB): input {INPUT} uint8 [{'N' if args.dynamic_batch else 1}, 3, "
          f"{IMAGE_SIZE}, {IMAGE_SIZE}], outputs {', '.join(OUTPUTS)}")
    return 0
