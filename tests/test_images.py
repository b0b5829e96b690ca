"""Any image a person might upload becomes uint8 [3, 32, 32], or an ImageError that says why."""

import dataclasses
import io
import struct

import numpy as np
import pytest
import torch
from helpers import encode, gradient, phone_photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from resnet import images
from resnet.caps import DEFAULT_CAPS, DecodeCaps
from resnet.images import ImageError, prepare


def assert_cifar_tensor(tensor):
    assert isinstance(tensor, torch.Tensor)
    assert tensor.shape == (3, 32, 32)
    assert tensor.dtype == torch.uint8
    assert tensor.is_contiguous()


@pytest.mark.parametrize(("mode", "fmt"), [
    ("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("RGB", "JPEG"), ("1", "PNG"), ("P", "PNG"),
    ("RGB", "WEBP"), ("RGBA", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF"), ("CMYK", "TIFF"), ("F", "TIFF"),
])
def test_modes_and_formats(mode, fmt):
    data = encode(gradient(mode), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really has that mode
    assert_cifar_tensor(prepare(data))


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    array = np.tile(np.linspace(1000, 60000, 64, dtype=np.uint16), (64, 1))
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    out = prepare(encode(image, "PNG"))
    assert_cifar_tensor(out)
    assert out[0, :, 0].max() < 20
    assert out[0, :, -1].min() > 235
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[1], out[2])


def test_transparency_is_flattened_onto_white():
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    assert prepare(clear).eq(255).all()
    solid = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    assert prepare(solid)[:, 16, 16].tolist() == [255, 0, 0]
    assert prepare(Image.new("LA", (40, 40), (0, 0))).eq(255).all()


def test_palette_with_a_transparent_index():
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = 1
    data = encode(image, "PNG")
    assert "transparency" in Image.open(io.BytesIO(data)).info
    assert prepare(data).eq(255).all()  # the transparent blue became white background


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = prepare(data)
    assert out[0].float().mean() > 200
    assert out[2].float().mean() < 50


def two_color_landscape() -> Image.Image:
    """64 x 32: red on the left half, blue on the right."""
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    return image


def test_exif_orientation_is_applied():
    plain = prepare(encode(two_color_landscape(), "JPEG", quality=95))
    assert plain[0, :, :8].float().mean() > 200
    assert plain[2, :, -8:].float().mean() > 200

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = prepare(encode(two_color_landscape(), "JPEG", quality=95, exif=exif.tobytes()))
    assert rotated[0, :8, :].float().mean() > 200
    assert rotated[2, -8:, :].float().mean() > 200


def test_a_failure_after_decoding_is_an_image_error(monkeypatch):
    """Pillow reads some damaged files (a broken EXIF block) and fails only when they are converted."""
    def broken_exif(image):
        raise SyntaxError("not a TIFF file (header b'\\x00\\x00' not valid)")

    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken_exif)
    with pytest.raises(ImageError, match="could not be converted to RGB.*not a TIFF file"):
        prepare(encode(gradient("RGB"), "JPEG"))


@pytest.mark.parametrize(("step", "where"), [("open", "unreadable image"), ("load", "damaged or truncated"),
                                         ("exif_transpose", "could not be converted to RGB")])
@pytest.mark.parametrize("kind", [struct.error("unpack requires a buffer of 4 bytes"), IndexError(), KeyError("tile")])
def test_whatever_a_pillow_plug_in_raises_is_an_image_error_naming_the_step(monkeypatch, step, where, kind):
    def plug_in(*args, **kwargs):
        raise kind

    data = encode(gradient("RGB"), "PNG")
    target = {"open": (images.Image, "open"), "load": (ImageFile.ImageFile, "load"),
              "exif_transpose": (images.ImageOps, "exif_transpose")}
    monkeypatch.setattr(*target[step], plug_in)
    with pytest.raises(ImageError, match=where) as caught:
        prepare(data)
    assert (str(kind) or type(kind).__name__) in str(caught.value)


def test_a_non_square_image_keeps_its_centre_undistorted():
    image = Image.new("RGB", (96, 32), (0, 255, 0))
    image.paste((255, 0, 0), (32, 0, 64, 32))  # only the centre square is red
    out = prepare(image)
    assert out[0].min() > 200
    assert out[1].max() < 60


def test_one_pixel_image():
    out = prepare(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert_cifar_tensor(out)
    assert out[:, 5, 5].tolist() == [10, 20, 30]


def test_paths_work(tmp_path):
    (tmp_path / "cat.png").write_bytes(encode(gradient("RGB"), "PNG"))
    assert_cifar_tensor(prepare(tmp_path / "cat.png"))
    assert_cifar_tensor(prepare(str(tmp_path / "cat.png")))


# ---- refusals ---------------------------------------------------------------------------------
def refused(source, *words, **caps) -> str:
    """The sentence ``prepare`` refuses ``source`` with, under the default caps but for ``caps``."""
    with pytest.raises(ImageError) as caught:
        prepare(source, dataclasses.replace(DEFAULT_CAPS, **caps))
    for word in words:
        assert word in str(caught.value), str(caught.value)
    return str(caught.value)


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    refused(tmp_path / "empty.png", "empty")
    refused(b"", "empty")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_file_is_refused(fmt):
    data = encode(gradient("RGB", (200, 200)), fmt)
    refused(data[: len(data) // 2])


def test_text_named_jpg_is_refused(tmp_path):
    (tmp_path / "photo.jpg").write_text("this is not a picture\n" * 20)
    refused(tmp_path / "photo.jpg", "not an image")


def test_pixel_cap_is_checked_before_decoding():
    data = encode(Image.new("RGB", (300, 300)), "PNG")
    refused(data, "the image has more pixels than this server's limit of 0.05 MP", pixels=50_000)
    assert_cifar_tensor(prepare(data, DecodeCaps(pixels=90_000)))


def test_an_image_over_pillows_own_bomb_limit_gets_the_servers_sentence():
    """20000 x 20000 (400 MP, a 48 kB file) is past Pillow's decompression-bomb check, which refuses it first."""
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    over = encode(Image.new("L", (2000, 2000)), "PNG")
    assert refused(bomb, pixels=1_000_000) == refused(over, pixels=1_000_000) \
        == "the image has more pixels than this server's limit of 1 MP (13 MP for a JPEG, which is decoded at reduced size)"


def test_only_the_listed_formats_are_decoded():
    data = encode(gradient("RGB"), "JPEG2000")
    assert Image.open(io.BytesIO(data)).format == "JPEG2000"  # Pillow reads it, this server does not
    refused(data, "not an image file in a format read here (PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF)")


def test_a_large_jpeg_is_decoded_at_reduced_size():
    data = encode(gradient("RGB", (2000, 1600)), "JPEG")
    assert images.open_image(data).size == (250, 200)  # 1/8: still more than 3x the network's 32 pixels a side
    assert_cifar_tensor(prepare(data))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose header announces ``width`` x ``height``: the caps must refuse it before decoding."""
    data = bytearray(encode(gradient("RGB", (64, 64)), "JPEG"))
    frame = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, height, width
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_phone_photo_is_held_to_the_pixel_cap_at_the_size_it_is_decoded():
    """12 MP is past the 6 MP cap on what is decoded, but a JPEG that size is decoded at 1/8: 504 x 378."""
    data = phone_photo()
    assert images.open_image(data).size == (504, 378)
    assert_cifar_tensor(prepare(data))


def test_a_jpeg_that_draft_mode_cannot_reduce_is_held_to_the_pixel_cap():
    """Draft mode keeps both sides at least 96 pixels, so a long thin JPEG decodes at full size."""
    refused(encode(gradient("RGB", (3000, 20)), "JPEG"), "more pixels than this server's limit of 0.05 MP",
            pixels=50_000)
    assert_cifar_tensor(prepare(encode(gradient("RGB", (2000, 1600)), "JPEG"), DecodeCaps(pixels=50_000)))  # decoded: 250 x 200


@pytest.mark.parametrize(("width", "height"), [(4000, 4000), (65000, 65000)])  # past the JPEG cap; past Pillow's bomb check too
def test_a_jpeg_past_its_full_size_cap_gets_the_servers_sentence(width, height):
    with pytest.raises(images.TooManyPixels) as caught:
        images.open_image(jpeg_claiming(width, height))
    assert str(caught.value) == "the image has more pixels than this server's limit of 6 MP (13 MP for a JPEG, which is " \
                                "decoded at reduced size)"
    assert caught.value.pixels is None  # refused on its full size, whatever a batch's decoding budget
    small = encode(gradient("RGB", (400, 300)), "JPEG")
    with pytest.raises(images.TooManyPixels, match=r"limit of 6 MP \(0.1 MP for a JPEG"):
        images.open_image(small, DecodeCaps(jpeg_pixels=100_000))
    assert images.open_image(small, DecodeCaps(jpeg_pixels=120_000)).size == (200, 150)


def with_scans(data: bytes, scans: int) -> bytes:
    """A JPEG with its last scan repeated until it has ``scans``: each repeat is a valid pass over every block."""
    last = data[data.rindex(b"\xff\xda"):-2]  # up to the end-of-image marker
    return data[:-2] + last * (scans - data.count(b"\xff\xda")) + data[-2:]


def test_a_jpeg_with_more_scans_than_the_cap_is_refused_before_decoding():
    """A 100 kB progressive JPEG of 1,000 scans at 13 MP keeps a decoder busy for seconds."""
    progressive = encode(gradient("RGB", (400, 300)), "JPEG", progressive=True)
    assert progressive.count(b"\xff\xda") == 10  # libjpeg's script for a colour image
    assert_cifar_tensor(prepare(with_scans(progressive, 24)))
    refused(with_scans(progressive, 25), "the JPEG has 25 scans; this server decodes at most 24")


def test_a_progressive_jpeg_over_its_byte_cap_is_refused():
    detailed = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8), "RGB")
    progressive, baseline = encode(detailed, "JPEG", progressive=True), encode(detailed, "JPEG")
    assert len(progressive) > 50_000
    assert len(baseline) > 50_000
    refused(progressive, f"the file is a progressive JPEG of {len(progressive) / 2**20:.1f} MB; the limit for one is "
                         f"{50_000 / 2**20:g} MB (a baseline JPEG may have 20 MB)", progressive_bytes=50_000)
    assert_cifar_tensor(prepare(baseline, DecodeCaps(progressive_bytes=50_000)))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "I;16", "F"])
def test_shrinking_early_keeps_what_the_network_sees(mode):
    """A large image shrunk right after decoding gives the tensor that converting it at full size gives, within
    rounding: the early box-averaging stops where the final resize's own reduction starts."""
    image = gradient("RGB", (1500, 1000)).convert(mode)
    early = prepare(image).int()
    late = images.to_tensor(images.center_square(images.to_rgb(image))).int()
    assert (early - late).abs().max() <= (12 if mode in ("P", "1") else 3)


def test_byte_cap(tmp_path):
    data = encode(gradient("RGB"), "PNG")
    refused(data, "MB", upload_bytes=len(data) - 1)
    (tmp_path / "big.png").write_bytes(data)
    refused(tmp_path / "big.png", "limit", upload_bytes=len(data) - 1)


# ---- any input: a tensor or an ImageError -----------------------------------------------------
def pillow_reads(data: bytes) -> bool:
    """Whether Pillow opens and decodes ``data`` whole (it cannot read back some files it writes: a YCbCr TIFF)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, ValueError):
        return False
    return True


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr", "HSV"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 90),
    height=st.integers(1, 90),
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from([None, "PNG", "TIFF", "WEBP", "JPEG", "GIF", "BMP"]),
    seed=st.integers(0, 2**16),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_any_image_becomes_a_tensor_or_an_image_error(width, height, mode, fmt, seed, cut):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)
    source = image
    if fmt is not None:
        try:
            source = encode(image, fmt)
        except (OSError, ValueError, KeyError):
            return  # Pillow cannot write this mode in this format: nothing to upload
        if cut is not None:
            source = source[: int(len(source) * cut)]
    # A whole picture Pillow itself reads back must be accepted, or a prepare that refused everything would pass.
    must_accept = fmt is None or (cut is None and pillow_reads(source))
    # Either outcome may be right for a damaged file, so no pytest.raises: a refusal is checked after the try.
    try:
        out = prepare(source)
    except ImageError as error:
        refusal = str(error)
    else:
        assert_cifar_tensor(out)
        assert torch.isfinite(out.float()).all()
        return
    assert not must_accept, f"a whole {mode} {fmt} image that Pillow reads was refused: {refusal}"
    assert refusal  # a message to show the visitor
