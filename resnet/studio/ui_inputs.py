"""The studio's input components whose ``preprocess`` is replaced, and what each replacement guarantees.

Gradio hands a handler the value its component's ``preprocess`` makes of the request's payload. For three
kinds of input that value is the wrong one for this app, so these components get their own:

``image_input`` (gr.Image)
    The handler gets the uploaded file's path, or the bytes of an inline pasted image, undecoded.
    resnet.images.prepare then reads it under its byte and pixel caps; Gradio's own preprocess decodes
    with PIL first, with no cap, and its failures reach the visitor as a stack trace. A pasted image is
    decoded from base64 no further than one quantum past ``resnet.studio.limits.current().upload_bytes``: enough
    for prepare to refuse it by size without holding all of it.
``batch_input`` (gr.File, many files)
    The handler gets a plain list of the uploaded paths. Gradio's preprocess leaves an empty temporary
    file in its cache for each one, and refuses the whole request over one file of another type, where
    the batch handler names each unusable file. Gradio has already checked that every path is in its
    upload cache.
``form_field`` (a training setting's gr.Number or gr.Slider, and the stress severity's slider)
    The handler gets the value exactly as sent. Gradio's bounds check and rounding would turn a string,
    NaN or infinity from the raw API into an anonymous exception; resnet.config's validation (for the
    severity, resnet.stress.check) refuses it in a sentence that names the field. The component's
    ``minimum``, ``maximum`` and ``precision`` therefore no longer check anything on the server: they
    only describe the field, to the browser's widget (its range) and to the API page (a slider's range,
    a number's integer type for precision 0). A field must declare no more than resnet.config enforces
    for its setting: a gr.Number's bounds are the setting's inclusive ones (precision 0 for a whole number), and a gr.Slider
    may show a range narrower than the setting's (its exclusive upper bound cannot be a slider's end).

The replacement is set on each instance. Subclassing the components would do the same, but Gradio's
component metaclass writes a ``.pyi`` stub beside the module of every gr.Component subclass it sees.

What the replacements read of Gradio's payloads (gradio.data_classes, as pinned in requirements.txt;
tests/test_ui_inputs.py checks it against the installed version). Gradio validates each payload into
the component's ``data_model`` before it calls preprocess:

* gr.Image: ``ImageData``, with ``.path`` (the upload's file in Gradio's cache, or None) and ``.url``.
  A payload that carries FileData's ``meta`` is moved to the cache and has its ``.url`` rewritten to a
  ``/file=`` route; one without it (an inline paste) keeps its ``data:`` URL in ``.url``.
* gr.File(file_count="multiple"): ``ListFiles``, whose ``.root`` is a list of ``FileData`` with ``.path``
  (Gradio's own preprocess also takes a lone ``FileData`` here; so does ``uploaded_paths``).
* gr.Number, gr.Slider: no data model; the JSON value itself.
"""

import base64
import binascii

import gradio as gr
from gradio.data_classes import ListFiles

from ..images import refusal
from . import limits


def undecoded_upload(payload) -> bytes | str | None:
    """gr.Image's preprocess, minus its decoding: the pasted image's bytes (cut past the upload cap) or
    the uploaded file's path."""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        # Every 4 base64 characters are 3 bytes: decode whole quanta up to the first one past the cap.
        encoded = payload.url.partition(",")[2][: (limits.current().upload_bytes // 3 + 1) * 4]
        try:
            return base64.b64decode(encoded)
        except binascii.Error:
            raise gr.Error(refusal("the pasted data is not valid base64"), print_exception=False) from None
    return payload.path


def image_input(**kwargs) -> gr.Image:
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = undecoded_upload
    return image


def uploaded_paths(payload) -> list:
    """gr.File's preprocess for many files, minus its temporary file per upload: the uploaded paths."""
    if payload is None:
        return []
    return [item.path for item in (payload.root if isinstance(payload, ListFiles) else [payload])]


def batch_input(**kwargs) -> gr.File:
    files = gr.File(file_count="multiple", type="filepath", **kwargs)
    files.preprocess = uploaded_paths
    return files


def raw_value(payload):
    """A numeric field's preprocess: the value as sent, for the handler's own validation to refuse by name."""
    return payload


def form_field(component):
    """``component`` (a gr.Number or gr.Slider whose handler validates it) with ``raw_value`` as its preprocess."""
    component.preprocess = raw_value
    return component
