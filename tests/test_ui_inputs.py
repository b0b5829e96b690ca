"""resnet.studio.ui_inputs against the pinned Gradio: the payload shapes its preprocess replacements read, the caps they
keep, and the Train form's fields, whose advertised bounds must be ones resnet.config enforces."""

import base64
import math

import pytest

from resnet import config
from resnet.config import make_config
from resnet.images import ImageError, prepare

gr = pytest.importorskip("gradio")
from gradio.data_classes import FileData, ImageData, ListFiles  # noqa: E402
from helpers import BROWSER_KEY, example, form_values, image_bytes  # noqa: E402

import app  # noqa: E402
from resnet.studio import ui_inputs  # noqa: E402

FILE_META = {"_type": "gradio.FileData"}  # what marks a payload as a file for Gradio to check and move to its cache
NUMERIC = [n for n in config.FORM_SETTINGS if config.kind(n) in (int, float) and not config.SETTINGS[n].metadata["choices"]]


def as_received(component, payload):
    """``payload`` (JSON) as Gradio hands it to the component's preprocess: validated into its data model."""
    return component.data_model.model_validate(payload, context={"validate_meta": True})


def pasted(data: bytes, component=None) -> ImageData:
    """An inline pasted image: a data: URL, no file meta, so no path."""
    return as_received(component or ui_inputs.image_input(), {"url": "data:image/png;base64," + base64.b64encode(data).decode()})


@pytest.fixture
def demo(studio):
    return app.build_demo(studio)


def inputs_of(demo, api_name: str) -> list:
    return next(fn for fn in demo.fns.values() if fn.api_name == api_name).inputs


def form_fields(demo) -> dict:
    """The Train form's components as wired to start_run (preset, *form, owner), by setting name."""
    return dict(zip(config.FORM_SETTINGS, inputs_of(demo, "start_run")[1:-1], strict=True))


def step(name: str):
    """The smallest change that crosses one of a setting's bounds."""
    return 1 if config.kind(name) is int else 1e-6


# ---- the payloads Gradio hands over ------------------------------------------------------------------------
def test_an_uploaded_image_reaches_the_handler_as_its_path():
    image = ui_inputs.image_input()
    assert image.data_model is ImageData
    assert image.preprocess is ui_inputs.undecoded_upload
    upload = as_received(image, {"path": "/tmp/gradio/ab/x.png", "url": "/gradio_api/file=/tmp/gradio/ab/x.png",
                                 "meta": FILE_META})
    assert image.preprocess(upload) == "/tmp/gradio/ab/x.png"
    assert image.preprocess(None) is None


def test_a_pasted_image_reaches_the_handler_as_its_bytes():
    payload = pasted(image_bytes())
    assert payload.path is None
    assert payload.url.startswith("data:")
    data = ui_inputs.undecoded_upload(payload)
    assert data == image_bytes()
    assert prepare(data).shape == (3, 32, 32)


@pytest.mark.parametrize("cap", [999, 1000, 1001])
def test_a_paste_is_decoded_only_to_just_past_the_cap(server_limits, cap):
    allowed = server_limits(upload_bytes=cap)
    assert ui_inputs.undecoded_upload(pasted(bytes(cap))) == bytes(cap)  # at the cap: whole
    data = bytes(range(256)) * 40
    decoded = ui_inputs.undecoded_upload(pasted(data))
    assert cap < len(decoded) <= cap + 3
    assert data.startswith(decoded)
    with pytest.raises(ImageError, match="the limit is"):
        prepare(decoded, allowed.decode_caps())  # refused by its size, never by a cut-off padding


def test_a_garbled_paste_is_a_message():
    with pytest.raises(gr.Error, match="cannot use this image: the pasted data is not valid base64"):
        ui_inputs.undecoded_upload(as_received(ui_inputs.image_input(), {"url": "data:image/png;base64,abc"}))


def test_many_files_reach_the_handler_as_their_paths():
    files = ui_inputs.batch_input()
    assert files.data_model is ListFiles
    assert files.preprocess is ui_inputs.uploaded_paths
    payload = as_received(files, [{"path": "/tmp/gradio/a/x.png", "meta": FILE_META},
                                  {"path": "/tmp/gradio/b/y.zip", "meta": FILE_META}])
    assert files.preprocess(payload) == ["/tmp/gradio/a/x.png", "/tmp/gradio/b/y.zip"]
    assert files.preprocess(FileData(path="/tmp/gradio/c/z.png")) == ["/tmp/gradio/c/z.png"]  # Gradio's lone-file shape
    assert files.preprocess(None) == []


def test_the_studio_wires_its_inputs_to_the_replacements(demo):
    for api_name in ("predict", "explain", "stress"):
        assert inputs_of(demo, api_name)[0].preprocess is ui_inputs.undecoded_upload, api_name
    assert inputs_of(demo, "predict_batch")[0].preprocess is ui_inputs.uploaded_paths
    assert inputs_of(demo, "stress")[2].preprocess is ui_inputs.raw_value  # the severity: resnet.stress.check refuses it


def test_a_raw_severity_is_refused_in_words(studio):
    for raw in ("3", math.nan, 2.5, None):
        with pytest.raises(gr.Error, match="severity must be a whole number from 1 to 5"):
            studio.stress(example(), "gaussian_noise", raw)


# ---- the Train form --------------------------------------------------------------------------------------------
def test_every_numeric_form_field_hands_over_the_raw_value(demo):
    fields = form_fields(demo)
    assert [n for n, f in fields.items() if isinstance(f, (gr.Number, gr.Slider))] == NUMERIC
    for name in NUMERIC:
        assert fields[name].preprocess is ui_inputs.raw_value, name
        for raw in ("12abc", math.nan, math.inf, -10**9):
            assert fields[name].preprocess(raw) is raw, name


def test_the_form_advertises_only_bounds_config_enforces(demo):
    for name, field in form_fields(demo).items():
        if name not in NUMERIC:
            continue
        assert field.minimum == config.SETTINGS[name].metadata["minimum"], name
        if isinstance(field, gr.Number):
            assert field.precision == (0 if config.kind(name) is int else None), name
        for bound in (field.minimum, field.maximum):
            if bound is not None:
                make_config("original", **{name: bound})  # the advertised range is accepted to its ends


def test_a_value_past_an_advertised_bound_is_refused_by_name(demo, studio):
    """Through the field's preprocess and the start_run handler, as a raw API call would go."""
    refused = 0
    for name, field in form_fields(demo).items():
        if name not in NUMERIC:
            continue
        beyond = [] if field.minimum is None else [field.minimum - step(name)]
        if isinstance(field, gr.Number) and field.maximum is not None:  # a slider's end may sit inside the range
            beyond.append(field.maximum + step(name))
        for value in beyond:
            with pytest.raises(gr.Error) as refusal:
                studio.start_run(None, "original", *form_values(**{name: field.preprocess(value)}), BROWSER_KEY)
            assert refusal.value.message.startswith(f"{name} must"), (name, refusal.value.message)
            refused += 1
    assert refused >= len([n for n in NUMERIC if config.SETTINGS[n].metadata["minimum"] is not None])  # none skipped
    assert studio.list_runs().empty
