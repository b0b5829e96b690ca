"""Weights on disk: ``<name>.safetensors`` with its JSON card, or a published-style ``.pt``.

Nothing here unpickles arbitrary objects: safetensors holds raw tensors only, and ``.pt`` files
go through ``torch.load(weights_only=True)``, which refuses anything but tensors and containers.
A visitor's upload never gets that far as a ``.pt``: resnet.studio.catalog takes uploads as safetensors only.
"""

import io
import json
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from .atomic import atomic_write_bytes, atomic_write_json
from .classifier import Classifier
from .constants import CLASSES, IMAGE_SIZE, MEAN, PUBLISHED_MEAN, PUBLISHED_STD, STD
from .errors import UserError
from .model import FEATURES, MAX_BLOCKS, ResNet, build_model, state_bytes

# The largest network a training config allows, in fp32, and room for the header: a larger file is no weights of ours.
MAX_WEIGHTS_BYTES = state_bytes((MAX_BLOCKS,) * 4) + 2**20
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "cifar10-resnet.safetensors"
EMBEDDED_CARD_KEYS = ("blocks", "dropout", "num_classes", "classes", "mean", "std", "input_size", "temperature")
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


class WeightsError(UserError, ValueError):
    """A weights file or card that cannot be used, with the reason."""


def card_path(weights_path) -> Path:
    return Path(weights_path).with_suffix(".json")


def make_card(model: ResNet, mean=MEAN, std=STD, **fields) -> dict:
    """The architecture and preprocessing fields every card has; callers add the rest."""
    return {
        "format": "cifar-resnet-studio/1",
        "blocks": list(model.blocks),
        "dropout": model.dropout,
        "num_classes": model.num_classes,
        "classes": list(CLASSES[: model.num_classes]),
        "mean": list(mean),
        "std": list(std),
        "input_size": IMAGE_SIZE,
        **fields,
    }


def non_finite_key(state: dict) -> str | None:
    """The first floating-point tensor of ``state`` holding NaN or an infinity, by key; None where there is none."""
    return next((key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()), None)


def save_weights(model: ResNet, path, card: dict, dtype=torch.float32) -> Path:
    """Write ``path`` (.safetensors) and its card (.json) atomically; returns the weights path."""
    path = Path(path)
    tensors = {
        key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    overflow = non_finite_key(tensors)
    if overflow:  # fp16 tops out at 65504: a large BatchNorm variance becomes inf, and every prediction NaN
        raise WeightsError(f"{overflow} holds values that are not finite in {str(dtype).removeprefix('torch.')}; "
                           "save in float32 or bfloat16")
    # The preprocessing facts also travel inside the file, so a lone upload is still read right.
    essentials = {key: card[key] for key in EMBEDDED_CARD_KEYS if key in card}
    atomic_write_bytes(path, safetensors_save(tensors, metadata={"format": "pt", "card": json.dumps(essentials)}))
    atomic_write_json(card_path(path), {**card, "storage_dtype": str(dtype).removeprefix("torch.")})
    return path


def is_safetensors(data: bytes) -> bool:
    """8 bytes of little-endian header length, then the JSON header: checked before the pickle test, since a
    header whose length ends in the byte 0x80 starts as a pickle stream does."""
    return len(data) > 8 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") <= len(data) - 8


def _read_state_dict(data: bytes, name: str) -> dict:
    if not is_safetensors(data) and (data[:2] == b"PK" or data[:1] == b"\x80"):  # zip (torch.save) or a legacy pickle
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refusals and corrupt archives alike
            raise WeightsError(f"{name}: not a plain PyTorch state_dict ({_first_line(error)})") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # one of our training checkpoints
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{name}: the file holds no state_dict of tensors")
        return {_unwrapped_key(k): v for k, v in state.items()}
    try:
        return safetensors_load(data)
    except (SafetensorError, ValueError, OSError, RuntimeError) as error:
        raise WeightsError(
            f"{name}: not a weights file (neither safetensors nor a PyTorch state_dict: {_first_line(error)})"
        ) from None


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel's and torch.compile's, nested in either order


def _unwrapped_key(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.removeprefix("module.").removeprefix("_orig_mod.")
    return key


def embedded_card(data: bytes) -> dict | None:
    """The card essentials that ``save_weights`` puts in a safetensors header, if any.

    The header is 8 bytes of little-endian length, then JSON; its ``__metadata__`` holds strings.
    """
    if len(data) < 8:
        return None
    length = int.from_bytes(data[:8], "little")
    if length > min(len(data) - 8, 100 * 1024 * 1024):
        return None
    try:
        metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
        card = json.loads(metadata.get("card", "null"))
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return card if isinstance(card, dict) else None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def infer_blocks(state: dict) -> tuple:
    counts = [0, 0, 0, 0]
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            counts[stage] = max(counts[stage], index + 1)
    if min(counts) == 0:
        raise WeightsError("the keys name no layer1..layer4 blocks: not weights of this ResNet")
    if max(counts) > MAX_BLOCKS:  # refused before the network is built: the key indices alone would size it
        raise WeightsError(f"the keys name {max(counts)} blocks in a stage; this ResNet has at most {MAX_BLOCKS}")
    return tuple(counts)


def _validate_card(card: dict, name: str) -> dict:
    if not isinstance(card, dict):
        raise WeightsError(f"{name}: the card is not a JSON object")
    for key, length in (("mean", 3), ("std", 3)):
        values = card.get(key)
        if not (isinstance(values, list) and len(values) == length
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise WeightsError(f"{name}: card field {key!r} must be a list of 3 finite numbers")
    if any(v <= 0 for v in card["std"]):
        raise WeightsError(f"{name}: card field 'std' must be positive")
    blocks = card.get("blocks", [1, 1, 1, 1])
    if not (isinstance(blocks, list) and len(blocks) == 4 and all(isinstance(b, int) and 1 <= b <= MAX_BLOCKS for b in blocks)):
        raise WeightsError(f"{name}: card field 'blocks' must be a list of 4 whole numbers from 1 to {MAX_BLOCKS}")
    dropout = card.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise WeightsError(f"{name}: card field 'dropout' must be a number in [0, 1)")
    classes = card.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise WeightsError(f"{name}: card field 'classes' must be a list of names")
    temperature = card.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not math.isfinite(temperature) or temperature <= 0):
        raise WeightsError(f"{name}: card field 'temperature' must be a positive number, not {str(temperature)[:40]!r}")
    return dict(card)


def _outputs(state: dict, card: dict, name: str) -> int:
    """The class count of the linear layer, checked before the network is built (its shape alone would size it)."""
    weight = state.get("linear.weight")
    if weight is None:
        return len(CLASSES)  # the key check names it as missing
    names = max(len(CLASSES), len(card.get("classes") or ()))  # the card's own class count is checked once built
    if weight.dim() != 2 or weight.shape[1] != FEATURES or not 1 <= weight.shape[0] <= names:
        raise WeightsError(f"{name}: shape mismatch for linear.weight: file {tuple(weight.shape)}, model (classes, {FEATURES}) "
                           f"with 1 to {names} classes")
    return weight.shape[0]


def load_weights(source, name: str | None = None, card: dict | None = None) -> Classifier:
    """The Classifier (network in eval mode on the CPU, and its card) of a path or raw bytes.

    The card comes from the argument, else from ``<path>.json`` beside a path, else from the
    essentials embedded in our safetensors header; without any, ``blocks`` is inferred from the
    keys and the published normalization is assumed (a published ``.pt``).
    """
    data, name, card = _read_source(source, name, card)
    if not data:
        raise WeightsError(f"{name}: the file is empty")
    state = _read_state_dict(data, name)
    blocks = infer_blocks(state)
    broken = non_finite_key(state)
    if broken:
        raise WeightsError(f"{name}: {broken} holds NaN or infinite values; every prediction would be NaN")
    if card is None:
        card = embedded_card(data)
    if card is None:
        card = {"mean": list(PUBLISHED_MEAN), "std": list(PUBLISHED_STD), "source": "published-style state_dict"}
    card = _validate_card(card, name)
    if "blocks" in card and tuple(card["blocks"]) != blocks:
        raise WeightsError(f"{name}: the card says blocks {card['blocks']} but the weights have {list(blocks)}")
    num_classes = _outputs(state, card, name)
    model = build_model(blocks=blocks, dropout=float(card.get("dropout", 0.0)), num_classes=num_classes)
    reference = model.state_dict()
    _check_tensors(state, reference, name)
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    card.setdefault("blocks", list(blocks))
    card.setdefault("num_classes", num_classes)
    card.setdefault("classes", list(CLASSES[:num_classes]))
    if len(card["classes"]) != num_classes:
        raise WeightsError(f"{name}: the card names {len(card['classes'])} classes but the weights have {num_classes} outputs")
    return Classifier(model.eval(), card)


def _read_source(source, name: str | None, card: dict | None) -> tuple:
    """(bytes, the name errors use, the card given or beside the file) of a path or raw bytes; the file's size is
    checked before it is read."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "uploaded file", card
    path = Path(source)
    name = name or path.name
    if not path.is_file():
        raise WeightsError(f"{name}: no such weights file")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{name}: larger than {MAX_WEIGHTS_BYTES >> 20} MB, not weights of this model")
    data = path.read_bytes()
    if card is None and card_path(path).is_file():
        try:
            card = json.loads(card_path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise WeightsError(f"{card_path(path).name}: the card is not valid JSON ({error})") from None
    return data, name, card


def _check_tensors(state: dict, reference: dict, name: str) -> None:
    """The file's tensors are the network's: the same keys, each of the same shape."""
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise WeightsError(
            f"{name}: keys do not match this ResNet (missing: {', '.join(missing[:5]) or 'none'}"
            f"{' ...' if len(missing) > 5 else ''}; unexpected: {', '.join(unexpected[:5]) or 'none'}"
            f"{' ...' if len(unexpected) > 5 else ''})"
        )
    for key, value in reference.items():
        if state[key].shape != value.shape:
            raise WeightsError(f"{name}: shape mismatch for {key}: file {tuple(state[key].shape)}, model {tuple(value.shape)}")
