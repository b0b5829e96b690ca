"""The studio's handlers: what each button, upload and timer of the page (app.py) calls, as plain methods of
``Studio`` that a test calls without a server or a browser.

Each answers in the values Gradio's components take (a gr.Error sentence for a refusal, gr.skip() for nothing
new) and leaves the work to the package: resnet.studio.catalog picks and loads models, the Classifier predicts and
explains, resnet.batch reads batches, resnet.studio.jobs queues runs and says where they stand, resnet.plots draws.
"""

import contextlib
import json
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import batch, fetch, plots, runs, stress
from ..classifier import Classifier
from ..errors import UserError
from ..explain import enlarge, overlay
from ..images import ImageError, prepare, refusal
from ..runs import CARD, RunError, read_metrics, read_status, run_path
from . import batch_results, catalog, downloads, jobs, limits, model_card, showcase, train_form

NO_LIVE_RUN = "start a run: its curves appear here within seconds"
NO_COMPARISON = "choose runs to compare"


@contextlib.contextmanager
def user_errors():
    """Expected failures reach the visitor as a sentence (gr.Error), never as a stack trace."""
    try:
        yield
    except UserError as error:
        raise gr.Error(str(error), print_exception=False) from None


def read_image(source):
    """uint8 [3, 32, 32] from an upload, within this server's caps; any decoder failure becomes a clear message."""
    if source is None:
        raise gr.Error("upload an image first", print_exception=False)
    try:
        return prepare(source, limits.current().decode_caps())
    except ImageError as error:  # any decoder failure (resnet.images.ImageError)
        raise gr.Error(refusal(error), print_exception=False) from None


def redrawn(seen: str, *shown) -> str | None:
    """The stamp of what a figure would show now (``shown``: JSON-able, such as resnet.runs.stamp of its runs), or
    None when it is ``seen``, the stamp of what it shows already: a poll redraws only what changed."""
    stamp = json.dumps(shown)
    return None if stamp == seen else stamp


def asking(owner: str | None, request: gr.Request | None) -> jobs.Actor:
    """The actor (resnet.studio.jobs.actor) behind a request: ``owner`` is a browser's stored key, the request
    carries an API client's session and the operator's header."""
    return jobs.actor(owner, getattr(request, "session_hash", None), getattr(request, "headers", None))


def runs_frame(rows: list) -> pd.DataFrame:
    """The Runs tab's table of ``rows`` (jobs.run_rows), read once by the caller."""
    return pd.DataFrame(jobs.runs_table(rows), columns=jobs.RUN_TABLE_HEADERS)


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

        The same byte and pixel caps as single uploads apply to each image and zip member, and a request holds at
        most the server's batch_images images of batch_pixels pixels in all.
        """
        paths = [Path(path) for path in files or []]
        if not paths:
            raise gr.Error("upload images or a .zip archive first", print_exception=False)
        classifier = self.model(choice, upload_key)
        uploads = [(path, path.name) for path in paths]  # the visitor's file names, not Gradio's cache folder
        with user_errors():
            scored, problems = batch.predict_request(classifier, uploads, **limits.current().batch_caps())
        table, csv_path = batch_results.table_and_csv(classifier, scored)
        return table, csv_path, batch_results.note(len(table), problems)

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
        picker = gr.Dropdown(choices=self.model_choices(key), value=catalog.UPLOADED)
        return key, picker, model_card.describe_card(classifier.card)

    # ---- Train ----------------------------------------------------------------------------------
    def command(self, preset, *form) -> str:
        with user_errors():
            return jobs.cli_command(preset, train_form.settings(*form))

    @staticmethod
    def preset_values(preset: str) -> list:
        """The form's recipe fields (resnet.studio.train_form.recipe_fields) as the preset has them."""
        with user_errors():
            return train_form.preset_values(preset)

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
            return self.queue.start(preset, owner=asking(owner, request).key, **train_form.settings(*form))

    def stop_run(self, request: gr.Request | None, run_id: str, owner: str | None = None) -> str:
        with user_errors():
            return self.queue.stop(run_id, asking(owner, request))

    def resume_run(self, request: gr.Request | None, run_id: str, owner: str | None = None) -> str:
        with user_errors():
            return self.queue.resume(run_id, asking(owner, request))

    @staticmethod
    def owner_key(stored: str | None):
        """This browser's key (resnet.studio.jobs.browser_key), for its storage and for the page's state."""
        key = jobs.browser_key(stored)
        return key, key

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
            empty = plots.empty_figure(NO_LIVE_RUN)
            return (empty, empty, "") if seen else (gr.skip(), gr.skip(), seen)
        stamp = redrawn(seen, runs.stamp(run_dir))
        if stamp is None:
            return gr.skip(), gr.skip(), seen
        rows, state = read_metrics(run_dir), read_status(run_dir)["status"]
        total = runs.total_images(rows)
        status = "" if state in ("running", "finished") else state
        references = showcase.reference_curves()
        return (plots.live_figure(rows, "acc", total, references, status),
                plots.live_figure(rows, "loss", total, references, status), stamp)

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
        return runs_frame(jobs.run_rows(self.root))

    def run_metrics(self, run_id: str) -> pd.DataFrame:
        with user_errors():
            return pd.DataFrame(read_metrics(run_path(self.root, run_id)))

    def run_ids(self) -> list:
        return [row["run_id"] for row in jobs.run_rows(self.root)]

    def refresh_lists(self, chosen: list | None, detail: str | None):
        """The Runs tab as it opens: the table, and both run pickers offering every run, keeping the choices that
        still name one; with none chosen, the details show the newest finished run (the one a visitor just trained)."""
        rows = jobs.run_rows(self.root)
        ids = [row["run_id"] for row in rows]
        if detail not in ids:
            detail = next((row["run_id"] for row in rows if row["status"] == "finished"), None)
        return (runs_frame(rows), gr.Dropdown(choices=ids, value=[i for i in chosen or [] if i in ids]),
                gr.Dropdown(choices=ids, value=detail))

    @staticmethod
    def compare_also(chosen: list | None, run_id: str) -> list:
        """The runs to compare, ``run_id`` (started from the page, or clicked in the table) among them."""
        return sorted(set(chosen or []) | {run_id})

    def compare_clicked(self, chosen: list | None, event: gr.SelectData) -> list:
        return self.compare_also(chosen, event.row_value[0])

    def compare(self, run_ids: list | None, x: str = "images"):
        """Accuracy and loss figures of the chosen runs, overlaid, against training images seen or wall-clock time."""
        with user_errors():
            series = {run_id: read_metrics(run_path(self.root, run_id)) for run_id in run_ids or []}
        if not series:
            return plots.empty_figure(NO_COMPARISON), plots.empty_figure(NO_COMPARISON)
        x = x if x in plots.X_AXES else "images"
        return plots.compare_figure(series, "acc", x), plots.compare_figure(series, "loss", x)

    def watch(self, run_ids: list | None, x: str, seen: str):
        """The timer's poll: redraw the figures only when a chosen run's files changed. A typed id that names no
        run is left out: choosing it said why once (compare), and a poll would say so every two seconds."""
        valid = []
        for run_id in run_ids or []:
            with contextlib.suppress(RunError):
                valid.append((run_id, run_path(self.root, run_id)))
        stamp = redrawn(seen, x, *(runs.stamp(run_dir) for _, run_dir in valid))
        if stamp is None:
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
        return (plots.confusion_figure(card["confusion"], card["classes"]),
                plots.per_class_figure(card["per_class_acc"], card["classes"]), downloads.run_files(run_dir))
