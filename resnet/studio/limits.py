"""What this server allows a visitor: every limit, declared once, read from the environment once.

A public host lowers them for a busy Space (``STUDIO_MAX_EPOCHS=20 python app.py``). Everything that
enforces one (the upload checks, batch prediction, the run queue, the HTTP API) asks ``current()``,
which reads the environment on first use and keeps that one object; a test swaps the object, not
the places that read it. The list of variables in docs/studio.md is checked against ``LIMITS``.
"""

import dataclasses
import math
import os
import re
from dataclasses import dataclass

from ..caps import DEFAULT_CAPS, DecodeCaps
from ..errors import UserError


class LimitError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Limit:
    env: str  # the variable that sets it
    default: float  # in the variable's unit
    help: str
    unit: int = 1  # stored value = variable's value x unit (megabytes -> bytes, megapixels -> pixels)
    whole: bool = True


LIMITS = {
    "epochs": Limit("STUDIO_MAX_EPOCHS", 200, "epochs of a run started from the studio"),
    "batch_size": Limit("STUDIO_MAX_BATCH", 1024, "batch size of such a run"),
    "budget_s": Limit("STUDIO_MAX_BUDGET_MIN", 60, "minutes of a time-budgeted run started from the studio", unit=60),
    "queue": Limit("STUDIO_MAX_QUEUE", 4, "runs waiting for the trainer"),
    # The five caps on one image start from the library's (resnet.caps), which a script or notebook gets.
    "upload_bytes": Limit("STUDIO_MAX_UPLOAD_MB", DEFAULT_CAPS.upload_bytes / 2**20,
                          "megabytes of one image (an upload, a zip member)", unit=2**20),
    "pixels": Limit("STUDIO_MAX_PIXELS", DEFAULT_CAPS.pixels, "pixels of one image as decoded, checked before it is decoded"),
    "jpeg_pixels": Limit("STUDIO_MAX_JPEG_PIXELS", DEFAULT_CAPS.jpeg_pixels, "pixels of one JPEG at full size (a 12 MP phone "
                         "photo), checked before it is decoded at 1/2 to 1/8 of that size"),
    "jpeg_scans": Limit("STUDIO_MAX_JPEG_SCANS", DEFAULT_CAPS.jpeg_scans, "scans of one JPEG, each a pass over every block of "
                        "the full-size image whatever the scale (a camera writes 1, libjpeg's progressive JPEGs have up to 18)"),
    "progressive_bytes": Limit("STUDIO_MAX_PROGRESSIVE_MB", DEFAULT_CAPS.progressive_bytes / 2**20, "megabytes of one "
                               "progressive JPEG, whose decoding time grows with its bytes whatever the scale", unit=2**20),
    "batch_images": Limit("STUDIO_MAX_BATCH_IMAGES", 500, "images in one batch request, zip members counted"),
    "batch_pixels": Limit("STUDIO_MAX_BATCH_MP", 500, "megapixels decoded over one batch request", unit=10**6),
    "weights_bytes": Limit("STUDIO_MAX_WEIGHTS_MB", 128, "megabytes of uploaded weights", unit=2**20),
    "api_workers": Limit("STUDIO_API_WORKERS", 1, "HTTP API predictions computed at once"),
    "api_max_wait_s": Limit("STUDIO_API_MAX_WAIT_S", 3.0, "seconds an HTTP API prediction may expect to wait for a worker "
                            "(requests ahead x measured prediction time / workers); past it, 503", whole=False),
    "api_queue": Limit("STUDIO_API_QUEUE", 128, "HTTP API predictions that may wait for a worker, whatever their expected wait"),
}


@dataclass(frozen=True)
class Word:
    """A setting that is a word or an address rather than a number."""

    env: str
    default: str
    help: str
    pattern: str  # what a value must match in full


WORDS = {
    "data_source": Word("STUDIO_DATA_SOURCE", "official",
                        "where a server without CIFAR-10 fetches it: `official` (torchvision's URL, checked against its "
                        "published MD5s), `off`, the URL of a copy of that archive, or `URL#md5=HEX` for another archive "
                        "in its format", r"official|off|https?://[^\s#]+(#md5=[0-9a-fA-F]{32})?"),
}


@dataclass(frozen=True)
class ServerLimits:
    epochs: int
    batch_size: int
    budget_s: int
    queue: int
    upload_bytes: int
    pixels: int
    jpeg_pixels: int
    jpeg_scans: int
    progressive_bytes: int
    batch_images: int
    batch_pixels: int
    weights_bytes: int
    api_workers: int
    api_max_wait_s: float
    api_queue: int
    data_source: str

    @property
    def request_bytes(self) -> int:
        """The largest body one upload request may send: an image's cap or a weights file's, whichever is
        larger (Gradio has one cap for every upload; each kind is then held to its own)."""
        return max(self.upload_bytes, self.weights_bytes)

    def decode_caps(self) -> DecodeCaps:
        """The caps library code checks one image against (resnet.images, resnet.batch)."""
        return DecodeCaps(**{field.name: getattr(self, field.name) for field in dataclasses.fields(DecodeCaps)})

    def batch_caps(self) -> dict:
        """The caps of one batch request, as resnet.batch.predict_request takes them: each image's, how many images,
        how many pixels decoded over all of them."""
        return {"caps": self.decode_caps(), "max_images": self.batch_images, "max_pixels": self.batch_pixels}

    @classmethod
    def defaults(cls) -> "ServerLimits":
        return cls(**{name: _stored(limit, limit.default) for name, limit in LIMITS.items()},
                   **{name: word.default for name, word in WORDS.items()})

    @classmethod
    def from_env(cls, environ=os.environ) -> "ServerLimits":
        """The limits a host set (the defaults elsewhere); a value that is not a positive number is refused by name."""
        values = {}
        for name, limit in LIMITS.items():
            text = environ.get(limit.env)
            if text is None or not text.strip():
                values[name] = _stored(limit, limit.default)
                continue
            try:
                value = float(text)
            except ValueError:
                raise LimitError(f"{limit.env}={text!r} is not a number ({limit.help})") from None
            if not math.isfinite(value) or value <= 0 or (limit.whole and limit.unit == 1 and not value.is_integer()):
                kind = "a positive whole number" if limit.whole and limit.unit == 1 else "a positive number"
                raise LimitError(f"{limit.env}={text!r} must be {kind} ({limit.help})")
            values[name] = _stored(limit, value)
        for name, word in WORDS.items():
            text = (environ.get(word.env) or "").strip() or word.default
            if not re.fullmatch(word.pattern, text):
                raise LimitError(f"{word.env}={text!r} is not one of the accepted forms ({word.help})")
            values[name] = text
        return cls(**values)


def _stored(limit: Limit, value: float):
    stored = value * limit.unit
    return int(stored) if limit.whole else float(stored)


_current: ServerLimits | None = None


def current() -> ServerLimits:
    """This process's limits, read from the environment the first time they are asked for."""
    global _current
    if _current is None:
        _current = ServerLimits.from_env()
    return _current
