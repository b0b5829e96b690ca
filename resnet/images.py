"""Any image a person might have -> the 32 x 32 RGB tensor the network expects.

The choice: apply EXIF orientation, flatten alpha onto white, convert every mode to RGB, take
the largest centred square and resize it to 32 x 32 with antialiasing (the way CIFAR-10's own
pictures were made: whole objects, roughly centred, no distortion).

The network sees 32 x 32 pixels, so a large image is made small as early as its format allows: a JPEG
is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's draft mode), and any image's centre square is
box-averaged by a whole factor right after decoding, before the conversions that copy it. What an
upload costs is then its decoder's buffers and the decoded image, bounded by the pixel caps checked
before decoding and by reading only the formats in FORMATS, whose decoders were measured at those caps
(tests/test_upload_memory.py): JPEG 2000's decoder, for one, takes well over a second on a 6 MP image.
The cap on what is decoded applies to a JPEG at the size draft mode decodes, so a 12 MP phone photo
(decoded at 1/8) is read. What a JPEG costs at any scale is held by caps of its own, checked before decoding:
its full size (a progressive or multi-scan JPEG's decoder holds every DCT coefficient of the full-size image,
2 bytes a pixel and channel), its scans (each one a pass over all those coefficients, and a scan can take
under 30 bytes) and, for a progressive one, its bytes (its entropy decoding is several times slower per byte
than a baseline JPEG's).
"""

import io

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .caps import DEFAULT_CAPS, DecodeCaps
from .constants import IMAGE_SIZE
from .errors import UserError


class ImageError(UserError, ValueError):
    """An upload that cannot become an image, with the reason in words.

    Pillow's decoders and plug-ins raise many kinds of error on damaged or hostile files (OSError,
    ValueError, SyntaxError, EOFError, struct.error, IndexError, ...). Each step here that reads a file's
    bytes turns any of them into this one error, saying which step failed, so a caller catches just this.
    """


class TooManyPixels(ImageError):
    """The header announces more pixels than a cap allows; nothing was decoded. One sentence for every such
    image, whichever check caught it; ``pixels`` is what would have been decoded, None where the full size alone
    refused it (past the JPEG cap, or Pillow's own bomb check, which comes first)."""

    def __init__(self, max_pixels: int, pixels: int | None, max_jpeg_pixels: int):
        super().__init__(f"the image has more pixels than this server's limit of {max_pixels / 1e6:g} MP "
                         f"({max_jpeg_pixels / 1e6:g} MP for a JPEG, which is decoded at reduced size)")
        self.pixels = pixels


# Pillow's name of each format read -> the name a visitor knows it by (a phone's multi-picture JPEG opens as JPEG)
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP", "TIFF": "TIFF", "AVIF": "AVIF"}
_NAMES = list(dict.fromkeys(FORMATS.values()))
FORMATS_IN_WORDS = f"{', '.join(_NAMES[:-1])} or {_NAMES[-1]}"
REDUCING_GAP = 3  # the final resize box-reduces to at least 3x the network's size, then resamples with Lanczos
SHRUNK_SIDE = IMAGE_SIZE * REDUCING_GAP  # so the early reduction stops there too, and changes nothing the resize would keep


def refusal(reason) -> str:
    """A visitor's unusable image in words, the same in the studio and over HTTP."""
    return f"cannot use this image: {reason}"


def open_image(source, caps: DecodeCaps = DEFAULT_CAPS, max_pixels: int | None = None) -> Image.Image:
    """Open a path, bytes or PIL image safely: ``caps`` are checked before decoding, ``max_pixels`` (when a
    request has less left) in place of their ``pixels``, which hold the size a JPEG is decoded at."""
    max_pixels = caps.pixels if max_pixels is None else max_pixels
    image = source if isinstance(source, Image.Image) else _open_file(source, caps, max_pixels)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("the image has no pixels")
    if image.format == "JPEG" and width * height > caps.jpeg_pixels:
        raise TooManyPixels(max_pixels, None, caps.jpeg_pixels)
    try:
        image.draft(image.mode, (SHRUNK_SIDE, SHRUNK_SIDE))  # a JPEG decodes at the smallest scale that keeps this size
    except Exception as error:  # see ImageError
        raise ImageError(f"unreadable image: {_reason(error)}") from None
    width, height = image.size  # a JPEG's size as it will be decoded (a long thin one is not reduced)
    if width * height > max_pixels:
        raise TooManyPixels(max_pixels, width * height, caps.jpeg_pixels)
    try:
        image.load()
    except Exception as error:  # see ImageError
        raise ImageError(f"the image is damaged or truncated ({_reason(error)})") from None
    return image


def _open_file(source, caps: DecodeCaps, max_pixels: int) -> Image.Image:
    """A path's or bytes' image, its header read but nothing decoded."""
    data = source if isinstance(source, (bytes, bytearray)) else _read_capped(source, caps.upload_bytes)
    if len(data) == 0:
        raise ImageError("the file is empty")
    if len(data) > caps.upload_bytes:
        raise ImageError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {caps.upload_bytes / 2**20:.0f} MB")
    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError:  # Pillow's own check (about 179 MP) comes before this server's
        raise TooManyPixels(max_pixels, None, caps.jpeg_pixels) from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image file in a format read here ({FORMATS_IN_WORDS})") from None
    except Exception as error:  # see ImageError
        raise ImageError(f"unreadable image: {_reason(error)}") from None
    if image.format == "JPEG" and image.width * image.height <= caps.jpeg_pixels:
        _check_jpeg_work(data, image.info.get("progressive", False), caps)
    return image


def _check_jpeg_work(data: bytes, progressive: bool, caps: DecodeCaps) -> None:
    """Refuse a JPEG whose scans or bytes would take its decoder too long at any scale. Every start-of-scan
    marker in the file is counted (entropy-coded data cannot hold one), an embedded thumbnail's too: a few
    more than the image's own, never fewer."""
    scans = data.count(b"\xff\xda")
    if scans > caps.jpeg_scans:
        raise ImageError(f"the JPEG has {scans} scans; this server decodes at most {caps.jpeg_scans}")
    if progressive and len(data) > caps.progressive_bytes:
        raise ImageError(f"the file is a progressive JPEG of {len(data) / 2**20:.1f} MB; the limit for one is "
                         f"{caps.progressive_bytes / 2**20:g} MB (a baseline JPEG may have "
                         f"{caps.upload_bytes / 2**20:g} MB)")


def _reason(error: Exception) -> str:
    return (str(error) or type(error).__name__)[:200]


def _read_capped(path, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:  # a vanished upload, a folder, no permission
        raise ImageError(f"the file could not be read ({error.strerror or error})") from None
    if len(data) > max_bytes:
        raise ImageError(f"the file is larger than the {max_bytes / 2**20:.0f} MB limit")
    return data


def first_frame_upright(image: Image.Image) -> Image.Image:
    """The first frame of an animation, turned as its EXIF orientation says."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (16-bit, CMYK, palette) to RGB, alpha flattened onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def shrink(image: Image.Image) -> Image.Image:
    """The centre square, box-averaged by the largest whole factor that keeps its side at least SHRUNK_SIDE (the
    image itself when that factor is 1): the conversions that follow copy only this. Box-averaging a palette or a
    bilevel image would pick pixels, not average them, so those become RGBA and L first."""
    width, height = image.size
    side = min(width, height)
    factor = side // SHRUNK_SIDE
    if factor < 2:
        return image
    if image.mode in ("1", "P"):
        image = image.convert("L" if image.mode == "1" else "RGBA")
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((side // factor, side // factor), Image.Resampling.BOX, box=(left, top, left + side, top + side))


def center_square(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side),
                        reducing_gap=REDUCING_GAP)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def prepare(source, caps: DecodeCaps = DEFAULT_CAPS) -> torch.Tensor:
    """Anything image-like -> uint8 [3, 32, 32], within ``caps``; ImageError with the reason otherwise."""
    image = open_image(source, caps)
    try:
        return to_tensor(center_square(to_rgb(shrink(first_frame_upright(image)))))
    except Exception as error:  # see ImageError; a damaged EXIF block or frame fails only here
        raise ImageError(f"the image could not be converted to RGB ({_reason(error)})") from None
