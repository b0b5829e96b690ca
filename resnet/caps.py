"""What one image may cost to read, checked before any pixel is decoded.

Library code (resnet.images, resnet.batch) takes these caps as an argument; the defaults serve a script or a
notebook. A server sets its own from its environment (resnet.studio.limits, where each is explained), starting
from these.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeCaps:
    upload_bytes: int = 20 * 2**20  # one file: an upload or a zip member
    pixels: int = 6_000_000  # as decoded: a JPEG at the reduced size it is decoded at
    jpeg_pixels: int = 13_000_000  # a JPEG at full size
    jpeg_scans: int = 24
    progressive_bytes: int = 6 * 2**20


DEFAULT_CAPS = DecodeCaps()
