"""cifar-resnet-studio: predict, train, watch and compare CIFAR-10 ResNets. Also the Space's app_file.

A thin Gradio Blocks UI: layout and wiring, each handler one call into the resnet package (catalog,
classifier, batch, jobs, plots, model_card, showcase, downloads), which is tested on its own.
``python app.py`` serves it on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT.
"""

import contextlib
import json
import logging
import secrets
import signal
from pathlib import Path

import gradio as gr
import pandas as pd

from resnet import batch, config, fetch, plots, runs, stress
from resnet.budget import describe_duration
from resnet.classifier import Classifier
from resnet.config import QUICK_RUN, from_form, make_config, parse_budget, to_form
from resnet.constants import TEST_IMAGES, TRAIN_IMAGES
from resnet.errors import UserError
from resnet.experiments import ablation, study, time_to_accuracy
from resnet.explain import enlarge, overlay
from resnet.images import ImageError, prepare, refusal
from resnet.model import BLOCK_CHOICES
from resnet.runs import CARD, RunError, read_metrics, read_status, run_path
from resnet.studio import catalog, downloads, http_api, jobs, limits, model_card, robustness_plots, showcase
from resnet.studio.ui_inputs import batch_input, form_field, image_input
from resnet.weights import WeightsError

OPERATOR_HEADER = "x-studio-operator"  # carries $STUDIO_OPERATOR_SECRET; a header, so it never lands in a URL or a log line
CHOICE_LABELS = {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop", "adagrad": "Adagrad"}
BUDGET_CHOICES = [("1 minute", "1m"), ("2 minutes", "2m"), ("5 minutes", "5m"), ("15 minutes", "15m"),
                  ("none: train for the epochs set here", "")]
RUN_TABLE_WIDTHS = ["215px", "90px", "95px", "115px", "80px", "65px", "75px", "75px", "125px", "105px", "80px", "260px"]
X_AXIS_CHOICES = [("training images seen", "images"), ("wall-clock time", "time")]
RESOLUTION_CHOICES = [("32 px throughout", ""), ("16 px, 24 px, then 32 px (quarters: 2, 1, 1)", "16:0.5,24:0.75"),
                      ("24 px for the first half, then 32 px", "24:0.5"), ("16 px for three quarters, then 32 px", "16:0.75")]
FIELD_NOTES = {"limit_train": f"0 = all {TRAIN_IMAGES:,}", "limit_test": f"0 = all {TEST_IMAGES:,}",
               "epochs": "without a time budget"}
PRESET_NOTES = {"quick": "a run that learns in minutes on a CPU", "original": "the published recipe",
                "fast": "the shipped weights' recipe (hours on a CPU)"}
RUN_SHAPE = (*config.SIZE_SETTINGS, "resolution")  # the form's second row: how long the run is and at what size
REFERENCE_NOTE = (f"Grey lines are committed reference runs on the default {describe_duration(parse_budget(QUICK_RUN['size']['budget']))} "
                  "budget, measured on a 2-core CPU (results/reference-curves.json): the quick preset and the published "
                  "recipe. The probe is a fixed set of "
                  "held-out images scored in eval mode, evenly through the run; a budgeted run scores the test set once, at "
                  "its end, a run of epochs at each epoch's end.")
BATCH_NOTE_PROBLEMS = 20  # unreadable files named in the batch note; the rest are counted


@contextlib.contextmanager
def user_errors():
    """Expected failures reach the visitor as a sentence (gr.Error), never as a stack trace."""
    try:
        yield
    except UserError as error:
        raise gr.Error(str(error), print_exception=False) from None


def read_image(source):
    """uint8 [3, 32, 32] from an upload; any decoder failure becomes a clear message."""
    if source is None:
        raise gr.Error("upload an image first", print_exception=False)
    try:
        return prepare(source, limits.current().decode_caps())
    except ImageError as error:  # any decoder failure (resnet.images.ImageError)
        raise gr.Error(refusal(error), print_exception=False) from None


class Studio:
    """The handlers, over one runs folder and the server's run queue (shared by every visitor)."""

    def __init__(self, queue: jobs.RunQueue | None = None):
        self.queue = queue or jobs.RunQueue()
        self.root = self.queue.root

    # ---- Predict --------------------------------------------------------------------------------
    def model(self, choice: str, upload_key: str | None) -> Classifier:
        with user_errors():
            if choice == catalog.UPLOADED:
                return catalog.uploaded(upload_key)
            return catalog.load_choice(choice, self.root)

    def predict(self, image, choice: str = catalog.SHIPPED, upload_key: str | None = None) -> dict:
        if image is None:  # the image was cleared (a change event too): nothing to say
            return gr.skip()
        return self.model(choice, upload_key).predict(read_image(image))

    def predict_batch(self, files, choice: str = catalog.SHIPPED, upload_key: str | None = None):
        """(table, CSV file, note) for several images and/or .zip archives, with resnet.batch.

        One row per readable image: name, top class, its probability, one column per class. The
        same byte and pixel caps as single uploads apply to each image and zip member, and a request
        holds at most the server's batch_images limit.
        """
        paths = [Path(path) for path in files or []]
        if not paths:
            raise gr.Error("upload images or a .zip archive first", print_exception=False)
        classifier = self.model(choice, upload_key)
        with user_errors():  # the visitor's file names, not Gradio's cache folder
            allowed = limits.current()
            uploads = [(path, path.name) for path in paths]
            scored, problems = batch.predict_request(classifier, uploads, allowed.decode_caps(), allowed.batch_images,
                                                     allowed.batch_pixels)
        with open(downloads.fresh_file("predictions.csv"), "w", newline="") as handle:
            rows = batch.write_csv(handle, classifier.classes, ((name, classifier.probabilities(logits)) for name, logits in scored))
        note = f"{len(rows)} image{'s' if len(rows) != 1 else ''} predicted"
        if problems:
            listed = "\n".join(f"- {_markdown_safe(name)}: {_markdown_safe(reason)}"
                               for name, reason in problems[:BATCH_NOTE_PROBLEMS])
            more = f"\n- ... and {len(problems) - BATCH_NOTE_PROBLEMS} more" if len(problems) > BATCH_NOTE_PROBLEMS else ""
            note += f"; {len(problems)} could not be used:\n{listed}{more}"
        return pd.DataFrame(rows, columns=batch.csv_header(classifier.classes)), handle.name, note

    def explain(self, image, choice: str = catalog.SHIPPED, upload_key: str | None = None):
        """(the 32 x 32 input enlarged, the Grad-CAM overlay for the top class)."""
        if image is None:
            return gr.skip(), gr.skip()
        tensor = read_image(image)
        cam, _ = self.model(choice, upload_key).explain(tensor)
        return enlarge(tensor), overlay(tensor, cam)

    def confidence_note(self, label, choice: str = catalog.SHIPPED, upload_key: str | None = None) -> str:
        """The warning in words, at the threshold the model's card chose from its calibrated curve."""
        if not isinstance(label, dict):
            return ""
        try:
            card = self.model(choice, upload_key).card
        except gr.Error:
            card = None
        return model_card.confidence_note(label, card)

    def stress(self, image, corruption: str, severity, choice: str = catalog.SHIPPED, upload_key: str | None = None):
        """(the corrupted 32 x 32 image enlarged, top classes of the clean image, top classes of the corrupted one)."""
        classifier = self.model(choice, upload_key)
        with user_errors():
            stressed, clean, hit = stress.stress_predict(classifier, read_image(image), corruption, severity)
        return enlarge(stressed), clean, hit

    def model_choices(self, upload_key: str | None = None) -> list:
        return catalog.model_choices(self.root) + ([("Uploaded weights", catalog.UPLOADED)] if upload_key else [])

    def refresh_models(self, choice: str, upload_key: str | None):
        choices = self.model_choices(upload_key)
        keep = choice if choice in [value for _, value in choices] else catalog.SHIPPED
        return gr.Dropdown(choices=choices, value=keep)

    def model_info(self, choice: str, upload_key: str | None) -> str:
        try:
            card = self.model(choice, upload_key).card
        except gr.Error as error:
            return f"⚠️ {error.message}"
        return model_card.describe_card(card)

    def upload_weights(self, data: bytes | None):
        """Load uploaded .safetensors weights; returns (key, picker, description)."""
        if not data:
            raise gr.Error("choose a weights file first", print_exception=False)
        with user_errors():
            key, classifier = catalog.load_upload(data)
        return key, gr.Dropdown(choices=self.model_choices(key), value=catalog.UPLOADED), model_card.describe_card(classifier.card)

    # ---- Train ----------------------------------------------------------------------------------
    @staticmethod
    def settings(*form) -> dict:
        """The form's values (in resnet.config.FORM_SETTINGS order) as TrainConfig overrides, plus what every run
        started here gets: frequent step rows and a probe, so its curves move within seconds."""
        return {**{name: from_form(name, value) for name, value in zip(config.FORM_SETTINGS, form)}, **QUICK_RUN["watch"]}

    def command(self, preset, *form) -> str:
        with user_errors():
            return jobs.cli_command(preset, self.settings(*form))

    @staticmethod
    def preset_values(preset: str) -> list:
        """The form's recipe settings as the preset has them; the run's size stays as the form has it."""
        with user_errors():
            settings = make_config(preset)
        return [to_form(name, getattr(settings, name)) for name in recipe_fields()]

    def data_status(self):
        """The Train tab's sentence about the data set, its Try again button, and whether to keep polling (while the
        data set is on its way)."""
        status = self.queue.data.status()
        return (fetch.sentence(status), gr.Button(visible=status.state == "failed"),
                gr.Timer(active=status.state in ("fetching", "failed")))

    def retry_data(self):
        """Try again now, without waiting for the next attempt the fetch has planned."""
        self.queue.data.retry()
        return self.data_status()

    def start_run(self, request: gr.Request | None, preset, *form_and_owner) -> str:
        """Queue a run owned by this browser (its stored key) or, for an API client, by its session."""
        *form, owner = form_and_owner
        with user_errors():  # without the data set a run waits for it; only a server set not to fetch it refuses
            return self.queue.start(preset, owner=_actor(owner, request).key, **self.settings(*form))

    def stop_run(self, request: gr.Request | None, run_id: str, owner: str | None = None) -> str:
        with user_errors():
            return self.queue.stop(run_id, _actor(owner, request))

    def resume_run(self, request: gr.Request | None, run_id: str, owner: str | None = None) -> str:
        with user_errors():
            return self.queue.resume(run_id, _actor(owner, request))

    def progress(self, run_id: str) -> str:
        if not run_id:
            return "No run started from this page yet."
        try:
            run_dir = run_path(self.root, run_id)
        except RunError as error:  # polled every two seconds: a sentence here, not an error toast each time
            return str(error)
        if not run_dir.is_dir():
            return f"No run {run_id}."
        position = self.queue.position(run_id)
        waiting = f" · position {position} in the queue" if position else ""
        return f"`{run_id}`: {jobs.progress(run_dir)['text']}{waiting}"

    def live(self, run_id: str, seen: str = ""):
        """The Train tab's figures of the run started there: redrawn only when its files changed."""
        try:
            run_dir = run_path(self.root, run_id) if run_id else None
        except RunError:
            run_dir = None
        if run_dir is None or not run_dir.is_dir():
            empty = plots.empty_figure("start a run: its curves appear here within seconds")
            return (empty, empty, "") if seen else (gr.skip(), gr.skip(), seen)
        stamp = json.dumps(runs.stamp(run_dir))
        if stamp == seen:
            return gr.skip(), gr.skip(), seen
        rows, state = read_metrics(run_dir), read_status(run_dir)["status"]
        total = runs.total_images(rows)
        status = "" if state in ("running", "finished") else state
        references = showcase.reference_curves()
        return (plots.live_figure(rows, "acc", total, references, status), plots.live_figure(rows, "loss", total, references, status),
                stamp)

    def use_model(self, run_id: str, upload_key: str | None):
        """Make a finished run's weights the Predict tab's model, and show that tab."""
        with user_errors():
            run_dir = run_path(self.root, run_id)
            if not (run_dir / runs.WEIGHTS).is_file():
                raise RunError(f"{run_id} has no model yet: it is {read_status(run_dir)['status']}; a run's model is "
                               "ready when it reads finished")
        choice = f"run:{run_id}"
        return gr.Tabs(selected="predict"), gr.Dropdown(choices=self.model_choices(upload_key), value=choice)

    # ---- Runs -----------------------------------------------------------------------------------
    def list_runs(self) -> pd.DataFrame:
        return pd.DataFrame(jobs.runs_table(self.root), columns=list(jobs.RUN_TABLE.values()))

    def run_metrics(self, run_id: str) -> pd.DataFrame:
        with user_errors():
            return pd.DataFrame(read_metrics(run_path(self.root, run_id)))

    def run_ids(self) -> list:
        return [row["run_id"] for row in jobs.run_rows(self.root)]

    def compare(self, run_ids: list | None, x: str = "images"):
        """Accuracy and loss figures of the chosen runs, overlaid, against training images seen or wall-clock time."""
        with user_errors():
            series = {run_id: read_metrics(run_path(self.root, run_id)) for run_id in run_ids or []}
        if not series:
            return plots.empty_figure("choose runs to compare"), plots.empty_figure("choose runs to compare")
        x = x if x in plots.X_AXES else "images"
        return plots.compare_figure(series, "acc", x), plots.compare_figure(series, "loss", x)

    def watch(self, run_ids: list | None, x: str, seen: str):
        """The timer's poll: redraw the figures only when a chosen run's files changed. A typed id that names no
        run is left out: choosing it said why once (compare), and a poll would say so every two seconds."""
        valid = []
        for run_id in run_ids or []:
            with contextlib.suppress(RunError):
                valid.append((run_id, run_path(self.root, run_id)))
        stamp = json.dumps([x, *(runs.stamp(run_dir) for _, run_dir in valid)])
        if stamp == seen:
            return gr.skip(), gr.skip(), seen
        return *self.compare([run_id for run_id, _ in valid], x), stamp

    def run_details(self, run_id: str | None):
        """Confusion matrix, per-class accuracy and downloadable files of a finished run."""
        if not run_id:
            return plots.empty_figure("choose a finished run"), plots.empty_figure("choose a finished run"), None
        with user_errors():
            run_dir = run_path(self.root, run_id)
        card = showcase.read_json(run_dir / CARD)
        if not card or "confusion" not in card:
            status = read_status(run_dir)
            message = f"{run_id} is {status['status']}: no model card yet"
            return plots.empty_figure(message), plots.empty_figure(message), None
        return plots.confusion_figure(card["confusion"], card["classes"]), plots.per_class_figure(card["per_class_acc"], card["classes"]), downloads.run_files(run_dir)


def _markdown_safe(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in str(text))[:200]


def _owner_key(stored: str | None):
    """This browser's key (made on its first visit), kept in its storage and in the page's state."""
    key = stored if isinstance(stored, str) and len(stored) == 32 else secrets.token_hex(16)
    return key, key


def _actor(owner: str | None, request: gr.Request | None) -> jobs.Actor:
    """Who is asking: a browser by the key it keeps in its storage (it survives a page reload), an API
    client by its session (one per gradio_client.Client); the operator by a header, never a URL."""
    key = owner if isinstance(owner, str) and owner else getattr(request, "session_hash", None)
    headers = getattr(request, "headers", None) or {}
    return jobs.Actor(key=key, operator=jobs.is_operator(headers.get(OPERATOR_HEADER)))


def recipe_fields() -> list:
    """The form fields a preset fills in: all but the run's size."""
    return [name for name in config.FORM_SETTINGS if name not in config.SIZE_SETTINGS]


# ---- layout ---------------------------------------------------------------------------------------
def predict_tab(studio: Studio) -> None:
    upload_key = gr.State(None)
    with gr.Row():
        with gr.Column():
            image = image_input(label="Any image", sources=["upload", "clipboard", "webcam"], height=320)
            paths, captions = showcase.example_gallery()
            if paths:  # thumbnails with their true class; a click puts the image in the box above
                examples = gr.Gallery(list(zip(paths, captions, strict=True)), label="CIFAR-10 test images (true class): "
                                      "click one to try it", columns=8, height=220, allow_preview=False, object_fit="contain")

                def pick(event: gr.SelectData):
                    return paths[event.index]

                examples.select(pick, None, image, api_visibility="private")
            with gr.Accordion("Model", open=False):
                picker = gr.Dropdown(choices=studio.model_choices(), value=catalog.SHIPPED, label="Predict with",
                                     allow_custom_value=True)  # values are checked by resnet.studio.catalog.weights_path
                weights_file = gr.File(label="Or upload weights (.safetensors; python -m resnet convert makes one of a "
                                             "published project1_model.pt)", file_types=[".safetensors"], type="binary")
            about_model = gr.Markdown()
        with gr.Column():
            label = gr.Label(num_top_classes=5, label="Top classes")
            note = gr.Markdown()
            with gr.Row():
                seen = gr.Image(label="What the network saw (32 x 32)", interactive=False, height=256, format="png")
                heat = gr.Image(label="Where it looked (Grad-CAM, top class)", interactive=False, height=256, format="png")
    with gr.Accordion(f"Many images at once (up to {limits.current().batch_images} per request)", open=False):
        with gr.Row():
            batch_files = batch_input(label="Images or .zip archives", file_types=["image", ".zip"])
            with gr.Column():
                batch_button = gr.Button("Predict all", variant="primary")
                batch_csv = gr.File(label="Predictions (CSV)", interactive=False)
        batch_note = gr.Markdown()
        batch_table = gr.Dataframe(label="Predictions", interactive=False, max_height=400)
    with gr.Accordion("Stress this image: how the top classes move under a corruption", open=False):
        with gr.Row():
            corruption = gr.Dropdown(stress.choices(), value=stress.choices()[0][1], label="Corruption",
                                     allow_custom_value=True)  # an unknown name reaches resnet.stress's own refusal
            severity = form_field(gr.Slider(stress.SEVERITIES[0], stress.SEVERITIES[-1], value=3, step=1, label="Severity"))
            stress_button = gr.Button("Stress it")
        with gr.Row():
            stressed = gr.Image(label="Stressed (32 x 32)", interactive=False, height=256, format="png")
            clean_top, stressed_top = gr.Label(num_top_classes=3, label="Clean"), gr.Label(num_top_classes=3, label="Stressed")

    model_inputs = [image, picker, upload_key]
    predicted = image.change(studio.predict, model_inputs, label, api_name="predict", concurrency_id="predict", concurrency_limit=4)
    predicted.success(studio.explain, model_inputs, [seen, heat], api_name="explain", concurrency_id="predict")
    predicted.success(studio.confidence_note, [label, picker, upload_key], note, api_visibility="private")
    picker.change(studio.model_info, [picker, upload_key], about_model, api_visibility="private")
    stress_button.click(studio.stress, [image, corruption, severity, picker, upload_key], [stressed, clean_top, stressed_top],
                        api_name="stress", concurrency_id="predict")
    batch_button.click(studio.predict_batch, [batch_files, picker, upload_key], [batch_table, batch_csv, batch_note],
                       api_name="predict_batch", concurrency_id="predict_batch", concurrency_limit=1)
    weights_file.upload(studio.upload_weights, weights_file, [upload_key, picker, about_model], api_visibility="private")
    gr.on([image.clear], lambda: (None, None, None, ""), None, [label, seen, heat, note], api_visibility="private")
    return picker, upload_key, about_model


def setting_field(name: str, value, caps: dict):
    """The form field of one training setting, built from its declaration in resnet.config."""
    meta = config.SETTINGS[name].metadata
    # The server's cap and the field's note share one parenthesis: two in a row read as a typo.
    notes = ([f"at most {caps[name]}"] if name in caps else []) + ([FIELD_NOTES[name]] if name in FIELD_NOTES else [])
    label = meta["form"] + (f" ({'; '.join(notes)})" if notes else "")
    kind = config.kind(name)
    if name == "blocks":
        return gr.Dropdown([(str(list(b)), to_form(name, b)) for b in BLOCK_CHOICES], value=to_form(name, value),
                           label=label)
    if meta["choices"]:
        return gr.Dropdown([(CHOICE_LABELS.get(c, c), c) for c in meta["choices"]], value=value, label=label)
    if name == "budget":
        return gr.Dropdown(BUDGET_CHOICES, value=value, label=label, allow_custom_value=True,
                           info="from Start to finished, scoring included; or your own, such as 90s or 10m")
    if name == "resolution":
        # Twice a field's width: its choices' names are long, and a narrower field hid their end and its arrow.
        return gr.Dropdown(RESOLUTION_CHOICES, value=value, label=label, allow_custom_value=True, scale=2,
                           info="or your own: 16:0.5,24:0.75 is 16 px for the first half of the steps, 24 px to three quarters")
    if kind is float and meta["minimum"] is not None and meta["below"] is not None:
        return form_field(gr.Slider(meta["minimum"], meta["below"] - 0.05, value, step=0.05, label=label))
    # Only bounds resnet.config enforces, inclusive ones: a whole number below n is at most n - 1 (the seed).
    high = meta["below"] - 1 if kind is int and meta["below"] is not None else meta["maximum"]
    return form_field(gr.Number(value, label=label, precision=0 if kind is int else None, minimum=meta["minimum"],
                                maximum=high))


def train_tab(studio: Studio):
    # Filled by the poll's first tick after a page loads (never a stale sentence), which then follows a fetch until
    # the data set is here.
    with gr.Row(equal_height=True):
        data_note = gr.Markdown(elem_id="data-note")
        retry = gr.Button("Try again", visible=False, size="sm", scale=0, min_width=120)
    data_poll = gr.Timer(1.0)
    data_poll.tick(studio.data_status, None, [data_note, retry, data_poll], show_progress="hidden", concurrency_limit=None,
                   api_visibility="private")
    retry.click(studio.retry_data, None, [data_note, retry, data_poll], show_progress="hidden", api_visibility="private")
    caps = {name: getattr(limits.current(), name) for name in jobs.TRAINING_CAPS}
    defaults = make_config(QUICK_RUN["preset"], **QUICK_RUN["size"])
    preset = gr.Radio(list(config.PRESETS), value=QUICK_RUN["preset"], label="Preset",
                      info="; ".join(f"{name}: {PRESET_NOTES[name]}" for name in config.PRESETS))
    fields = {}
    main = [n for n in config.FORM_SETTINGS if not config.SETTINGS[n].metadata["advanced"]]
    rows = ([n for n in main if n not in RUN_SHAPE], [n for n in main if n in RUN_SHAPE],
            [n for n in config.FORM_SETTINGS if config.SETTINGS[n].metadata["advanced"]])
    for index, names in enumerate(rows):
        with gr.Accordion("Advanced", open=False) if index == 2 else contextlib.nullcontext(), gr.Row():
            for name in names:
                fields[name] = setting_field(name, getattr(defaults, name), caps)
    form = [fields[name] for name in config.FORM_SETTINGS]
    command = gr.Textbox(studio.command(QUICK_RUN["preset"], *[to_form(n, getattr(defaults, n)) for n in config.FORM_SETTINGS]),
                         label="The same run from a terminal", buttons=["copy"], interactive=False)
    with gr.Row():
        start = gr.Button("Start training", variant="primary")
        run_id = gr.Textbox(label="Run", placeholder="run id", scale=2)
        stop = gr.Button("Stop")
        resume = gr.Button("Resume")
        use = gr.Button("Use this model", elem_id="use-model")
    status = gr.Markdown("No run started from this page yet.", elem_id="run-status")
    with gr.Row():  # the figures carry their own titles
        accuracy = gr.Plot(plots.empty_figure("start a run: its curves appear here within seconds"), show_label=False,
                           elem_id="live-accuracy")
        loss = gr.Plot(plots.empty_figure("start a run: its curves appear here within seconds"), show_label=False)
    gr.Markdown(REFERENCE_NOTE)

    preset.change(studio.preset_values, preset, [fields[n] for n in recipe_fields()], api_visibility="private")
    gr.on([preset.change] + [c.change for c in form], studio.command, [preset, *form], command, api_visibility="private")
    owner = gr.State(None)
    started = start.click(studio.start_run, [preset, *form, owner], run_id, api_name="start_run")
    stop.click(studio.stop_run, [run_id, owner], status, api_name="stop_run")
    resume.click(studio.resume_run, [run_id, owner], status, api_name="resume_run")
    return run_id, status, started, owner, accuracy, loss, use


def runs_tab(studio: Studio):
    # Headers on one line and the message last: narrow columns otherwise wrap their headers letter by letter.
    table = gr.Dataframe(studio.list_runs(), label="All runs (click one to add it to the comparison)", interactive=False,
                         wrap=False, max_height=320, column_widths=RUN_TABLE_WIDTHS)
    with gr.Row():
        chosen = gr.Dropdown(choices=studio.run_ids(), multiselect=True, label="Compare runs", allow_custom_value=True, scale=3)
        x_axis = gr.Radio(X_AXIS_CHOICES, value="images", label="Curves against")
    with gr.Row():
        accuracy = gr.Plot(plots.empty_figure("choose runs to compare"), show_label=False, elem_id="accuracy-plot")
        loss = gr.Plot(plots.empty_figure("choose runs to compare"), show_label=False)
    with gr.Row():
        detail = gr.Dropdown(choices=studio.run_ids(), label="Details of a finished run", allow_custom_value=True)
        files = gr.File(label="Weights and model card", file_count="multiple", interactive=False)
    with gr.Row():
        confusion = gr.Plot(label="Confusion matrix")
        per_class = gr.Plot(label="Per-class accuracy")
    metrics_of = gr.Textbox(visible=False)  # the /run_metrics endpoint's input and output
    metrics = gr.Dataframe(visible=False)

    def add_clicked(current, event: gr.SelectData):
        run_id = event.row_value[0]
        return gr.Dropdown(value=sorted(set(current or []) | {run_id}))

    table.select(add_clicked, chosen, chosen, api_visibility="private")
    gr.on([chosen.change, x_axis.change], studio.compare, [chosen, x_axis], [accuracy, loss], api_visibility="private")
    detail.change(studio.run_details, detail, [confusion, per_class, files], api_visibility="private")
    list_button = gr.Button("Refresh", size="sm")
    list_button.click(studio.list_runs, None, table, api_name="list_runs")
    metrics_button = gr.Button(visible=False)
    metrics_button.click(studio.run_metrics, metrics_of, metrics, api_name="run_metrics")
    return table, chosen, x_axis, detail, accuracy, loss


def card_tab() -> None:
    """The shipped model from committed files only: nothing is recomputed when the page loads."""
    if not catalog.shipped_weights().is_file():
        gr.Markdown("The shipped weights are not here yet: a training run is making them.")
        return
    try:
        card = catalog.load_choice(catalog.SHIPPED).card
    except WeightsError as error:
        gr.Markdown(f"The shipped weights cannot be described: {error}")
        return
    gr.Markdown(model_card.shipped_summary(card))
    if "confusion" not in card:
        gr.Markdown("This card has no evaluation (confusion matrix, per-class accuracy).")
        return
    with gr.Row():
        gr.Plot(plots.per_class_figure(card["per_class_acc"], card["classes"]))
        gr.Plot(plots.confusion_figure(card["confusion"], card["classes"]))
    with gr.Row():
        gr.Plot(plots.curves_figure({"shipped": card.get("curve", [])}, "acc"))
        gr.Plot(plots.curves_figure({"shipped": card.get("curve", [])}, "loss"))
    gr.Markdown("### Calibration")
    gr.Markdown(robustness_plots.calibration_text(card))
    gr.Plot(robustness_plots.reliability_figure(card))
    results = showcase.read_json(showcase.ROBUSTNESS)
    gr.Markdown("### Robustness to corruptions")
    gr.Markdown(robustness_plots.robustness_text(results))
    gr.Plot(robustness_plots.robustness_figure(results))
    results = showcase.read_json(showcase.STUDY)
    gr.Markdown("### Optimizer study")
    if results:
        figures = [make_figure(results) for make_figure in study.FIGURES.values()]
        for pair in (figures[:2], figures[2:]):
            with gr.Row():
                for figure in pair:
                    gr.Plot(figure)
    else:
        gr.Markdown("The optimizer study has not run yet (results/study.json is absent).")
    results_section("What each part of the training recipe buys", showcase.ABLATION, ablation,
                    "The remove-one ablation has not run yet (results/ablation.json is absent): `python -m resnet ablation`.")
    results_section("Time to accuracy", showcase.TIME_TO_ACCURACY, time_to_accuracy,
                    "The time-to-accuracy experiment has not run yet (results/time-to-accuracy.json is absent): "
                    "`python -m resnet time-to-accuracy`.")
    mistakes = showcase.mistakes_gallery()
    if mistakes:
        gr.Gallery(mistakes, label="Its most confident mistakes on the test set", columns=6, height="auto")


def results_section(title: str, path, experiment, absent: str) -> None:
    """A committed experiment's results (its module's ``note``, ``table`` and ``figure``), or ``absent``."""
    gr.Markdown(f"### {title}")
    results = showcase.read_json(path)
    if not isinstance(results, dict) or not results.get("runs"):
        gr.Markdown(absent)
        return
    gr.Markdown(experiment.note(results))
    gr.Dataframe(pd.DataFrame(experiment.table(results)), interactive=False, wrap=True)
    gr.Plot(experiment.figure(results))


def build_demo(studio: Studio | None = None) -> gr.Blocks:
    studio = studio or Studio()
    # Uploads and served copies in Gradio's cache are deleted after a day, checked hourly.
    with gr.Blocks(title="CIFAR-10 ResNet studio", delete_cache=(3600, 86400)) as demo:
        gr.Markdown("# CIFAR-10 ResNet studio\nClassify any picture into the 10 CIFAR-10 classes, see where the network "
                    "looked, train your own run and compare its curves.")
        with gr.Tabs() as tabs:
            with gr.Tab("Predict", id="predict") as predict_page:
                picker, upload_key, about_model = predict_tab(studio)
            with gr.Tab("Train", id="train"):
                run_id, status, started, owner, live_accuracy, live_loss, use = train_tab(studio)
            with gr.Tab("Runs", id="runs") as runs_page:
                table, chosen, x_axis, detail, accuracy, loss = runs_tab(studio)
            with gr.Tab("Model card", id="card"):
                card_tab()

        def refresh_lists(chosen_now, detail_now):
            ids = studio.run_ids()
            return (studio.list_runs(), gr.Dropdown(choices=ids, value=[i for i in chosen_now or [] if i in ids]),
                    gr.Dropdown(choices=ids, value=detail_now if detail_now in ids else None))

        seen, live_seen = gr.State(""), gr.State("")
        timer = gr.Timer(2.0)
        timer.tick(studio.progress, run_id, status, show_progress="hidden", concurrency_limit=None, api_visibility="private")
        timer.tick(studio.live, [run_id, live_seen], [live_accuracy, live_loss, live_seen], show_progress="hidden",
                   concurrency_limit=None, api_visibility="private")
        timer.tick(studio.watch, [chosen, x_axis, seen], [accuracy, loss, seen], show_progress="hidden",
                   concurrency_limit=None, api_visibility="private")
        use.click(studio.use_model, [run_id, upload_key], [tabs, picker], api_visibility="private")
        runs_page.select(refresh_lists, [chosen, detail], [table, chosen, detail], api_visibility="private")
        started.success(lambda new, current: sorted(set(current or []) | {new}), [run_id, chosen], chosen,
                        api_visibility="private")  # a run started here is compared at once
        predict_page.select(studio.refresh_models, [picker, upload_key], picker, api_visibility="private")
        demo.load(studio.model_info, [picker, upload_key], about_model, api_visibility="private")
        # The browser's own key to the runs it starts, kept in its storage: it survives a reload (and, with the
        # runs folder's secret, a server restart) and is never part of the API.
        stored = gr.BrowserState(None, storage_key="cifar-resnet-studio-owner", secret=jobs.browser_secret(studio.root))
        demo.load(_owner_key, stored, [stored, owner], api_visibility="private")
    return demo


def launch_options() -> dict:
    """Everything launch() needs besides server name and port (Gradio reads GRADIO_SERVER_NAME/PORT).

    Only the folders whose files the app itself hands out may be served; run files go out as copies.
    """
    return {"max_file_size": limits.current().request_bytes, "allowed_paths": [str(p) for p in showcase.SERVED], "theme": gr.themes.Soft(),
            "footer_links": ["api", "gradio"]}


def stop_on_sigterm(studio: Studio) -> None:
    """A host stopping the server (a Space restart sends SIGTERM) stops the training child first:
    it checkpoints, its run reads `stopped`, and a resume continues it after the restart."""

    def shut_down(signum, frame):
        studio.queue.close(stop_child=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shut_down)


if __name__ == "__main__":
    try:
        limits.current()  # a host's STUDIO_* variables, checked before anything starts
    except limits.LimitError as error:
        raise SystemExit(f"error: {error}") from None
    # The package's own log (the data set's fetch: where from, where to, why an attempt failed) goes to stderr; visitors
    # see sentences instead.
    logging.getLogger("resnet").setLevel(logging.INFO)
    logging.getLogger("resnet").addHandler(logging.StreamHandler())
    studio = Studio()  # a server without CIFAR-10 starts fetching it here, in the background
    stop_on_sigterm(studio)
    # The UI and the HTTP API (/api/v1, /docs) on one port: resnet.studio.http_api says why it mounts Gradio rather than launch().
    http_api.serve(build_demo(studio), studio.root, **launch_options())
