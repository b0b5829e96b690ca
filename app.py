"""cifar-resnet-studio: predict, train, watch and compare CIFAR-10 ResNets. Also the Space's app_file.

The Gradio Blocks page: its tabs, components and words, which handler each event calls, and the options it is
launched with. The handlers are plain methods of resnet.studio.handlers.Studio, tested without a browser; the
Train form's fields are built by resnet.studio.train_form. ``python app.py`` serves the page and the HTTP API on
$GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (resnet.studio.server.main).
"""

import contextlib

import gradio as gr
import pandas as pd

from resnet import config, plots, stress
from resnet.budget import describe_duration
from resnet.config import QUICK_RUN, make_config, parse_budget, to_form
from resnet.experiments import ablation, study, time_to_accuracy
from resnet.studio import catalog, jobs, limits, model_card, robustness_plots, server, showcase, train_form
from resnet.studio.handlers import NO_COMPARISON, NO_LIVE_RUN, Studio
from resnet.studio.ui_inputs import batch_input, form_field, image_input
from resnet.weights import WeightsError

REFERENCE_NOTE = (f"Grey lines are committed reference runs on the default "
                  f"{describe_duration(parse_budget(QUICK_RUN['size']['budget']))} budget, measured on a 2-core CPU "
                  "(results/reference-curves.json): the quick preset and the published recipe. The probe is a fixed set of "
                  "held-out images scored in eval mode, evenly through the run; a budgeted run scores the test set once, at "
                  "its end, a run of epochs at each epoch's end.")


def predict_tab(studio: Studio) -> None:
    upload_key = gr.State(None)
    with gr.Row():
        with gr.Column():
            image = image_input(label="Any image", sources=["upload", "clipboard", "webcam"], height=320)
            paths, captions = showcase.example_gallery()
            if paths:  # thumbnails with their true class; a click puts the image in the box above
                # The title above, not as the gallery's label, which would cover its top row; four columns leave
                # room for a class name under each thumbnail.
                gr.Markdown("**CIFAR-10 test images**, each with its true class: click one to try it")
                examples = gr.Gallery(list(zip(paths, captions, strict=True)), show_label=False, columns=4, height=300,
                                      allow_preview=False, object_fit="contain")

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
                # No corner buttons: they would sit on the titles
                seen = gr.Image(label="What the network saw (32 x 32)", interactive=False, height=256, format="png",
                                buttons=[])
                heat = gr.Image(label="Where it looked (Grad-CAM)", interactive=False, height=256, format="png", buttons=[])
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
    predicted = image.change(studio.predict, model_inputs, label, api_name="predict", concurrency_id="predict",
                             concurrency_limit=4)
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
    caps, defaults = train_form.caps(), make_config(QUICK_RUN["preset"], **QUICK_RUN["size"])
    preset = gr.Radio(list(config.PRESETS), value=QUICK_RUN["preset"], label="Preset", info=train_form.presets_info())
    fields = {}
    for index, names in enumerate(train_form.rows()):
        with gr.Accordion("Advanced", open=False) if index == 2 else contextlib.nullcontext(), gr.Row():
            for name in names:
                fields[name] = train_form.setting_field(name, getattr(defaults, name), caps)
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
        accuracy = gr.Plot(plots.empty_figure(NO_LIVE_RUN), show_label=False, elem_id="live-accuracy")
        loss = gr.Plot(plots.empty_figure(NO_LIVE_RUN), show_label=False)
    gr.Markdown(REFERENCE_NOTE)

    preset.change(studio.preset_values, preset, [fields[n] for n in train_form.recipe_fields()], api_visibility="private")
    gr.on([preset.change] + [c.change for c in form], studio.command, [preset, *form], command, api_visibility="private")
    owner = gr.State(None)
    started = start.click(studio.start_run, [preset, *form, owner], run_id, api_name="start_run")
    stop.click(studio.stop_run, [run_id, owner], status, api_name="stop_run")
    resume.click(studio.resume_run, [run_id, owner], status, api_name="resume_run")
    return run_id, status, started, owner, accuracy, loss, use


def runs_tab(studio: Studio):
    # Headers on one line (resnet.studio.jobs.RUN_TABLE gives each column room for its header), the message last.
    table = gr.Dataframe(studio.list_runs(), label="All runs (click one to add it to the comparison)", interactive=False,
                         wrap=False, max_height=320, column_widths=jobs.RUN_TABLE_WIDTHS)
    with gr.Row():
        chosen = gr.Dropdown(choices=studio.run_ids(), multiselect=True, label="Compare runs", allow_custom_value=True, scale=3)
        x_axis = gr.Radio([("training images seen", "images"), ("wall-clock time", "time")], value="images",
                          label="Curves against")
    with gr.Row():
        accuracy = gr.Plot(plots.empty_figure(NO_COMPARISON), show_label=False, elem_id="accuracy-plot")
        loss = gr.Plot(plots.empty_figure(NO_COMPARISON), show_label=False)
    with gr.Row():
        detail = gr.Dropdown(choices=studio.run_ids(), label="Details of a finished run", allow_custom_value=True)
        files = gr.File(label="Weights and model card", file_count="multiple", interactive=False)
    with gr.Row():
        confusion = gr.Plot(label="Confusion matrix")
        per_class = gr.Plot(label="Per-class accuracy")
    metrics_of = gr.Textbox(visible=False)  # the /run_metrics endpoint's input and output
    metrics = gr.Dataframe(visible=False)

    table.select(studio.compare_clicked, chosen, chosen, api_visibility="private")
    gr.on([chosen.change, x_axis.change], studio.compare, [chosen, x_axis], [accuracy, loss], api_visibility="private")
    details = [confusion, per_class, files]
    detail.change(studio.run_details, detail, details, api_visibility="private")
    list_button = gr.Button("Refresh", size="sm")
    list_button.click(studio.list_runs, None, table, api_name="list_runs")
    metrics_button = gr.Button(visible=False)
    metrics_button.click(studio.run_metrics, metrics_of, metrics, api_name="run_metrics")
    return table, chosen, x_axis, detail, details, accuracy, loss


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
    results_section("Optimizer study", showcase.STUDY, study,
                    "The optimizer study has not run yet (results/study.json is absent).")
    results_section("What each part of the training recipe buys", showcase.ABLATION, ablation,
                    "The remove-one ablation has not run yet (results/ablation.json is absent): `python -m resnet ablation`.")
    results_section("Time to accuracy", showcase.TIME_TO_ACCURACY, time_to_accuracy,
                    "The time-to-accuracy experiment has not run yet (results/time-to-accuracy.json is absent): "
                    "`python -m resnet time-to-accuracy`.")
    mistakes = showcase.mistakes_gallery()
    if mistakes:
        gr.Gallery(mistakes, label="Its most confident mistakes on the test set", columns=6, height="auto")


def results_section(title: str, path, experiment, absent: str) -> None:
    """A committed experiment's results (its module's ``note``, ``table`` and ``figures``, two to a row), or ``absent``."""
    gr.Markdown(f"### {title}")
    results = showcase.read_json(path)
    if not isinstance(results, dict) or not results.get("runs"):
        gr.Markdown(absent)
        return
    gr.Markdown(experiment.note(results))
    gr.Dataframe(pd.DataFrame(experiment.table(results)), interactive=False, wrap=True)
    figures = experiment.figures(results)
    for first in range(0, len(figures), 2):
        with gr.Row():
            for figure in figures[first:first + 2]:
                gr.Plot(figure)


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
                table, chosen, x_axis, detail, details, accuracy, loss = runs_tab(studio)
            with gr.Tab("Model card", id="card"):
                card_tab()

        seen, live_seen = gr.State(""), gr.State("")
        timer = gr.Timer(2.0)
        timer.tick(studio.progress, run_id, status, show_progress="hidden", concurrency_limit=None, api_visibility="private")
        timer.tick(studio.live, [run_id, live_seen], [live_accuracy, live_loss, live_seen], show_progress="hidden",
                   concurrency_limit=None, api_visibility="private")
        timer.tick(studio.watch, [chosen, x_axis, seen], [accuracy, loss, seen], show_progress="hidden",
                   concurrency_limit=None, api_visibility="private")
        use.click(studio.use_model, [run_id, upload_key], [tabs, picker], api_visibility="private")
        # A value set by an event does not fire the dropdown's change, so the details follow explicitly.
        runs_page.select(studio.refresh_lists, [chosen, detail], [table, chosen, detail], api_visibility="private").then(
            studio.run_details, detail, details, api_visibility="private")
        # A run started here is compared at once.
        started.success(studio.compare_also, [chosen, run_id], chosen, api_visibility="private")
        predict_page.select(studio.refresh_models, [picker, upload_key], picker, api_visibility="private")
        demo.load(studio.model_info, [picker, upload_key], about_model, api_visibility="private")
        # The browser's own key to the runs it starts, kept in its storage: it survives a reload (and, with the
        # runs folder's secret, a server restart) and is never part of the API.
        stored = gr.BrowserState(None, storage_key="cifar-resnet-studio-owner", secret=jobs.browser_secret(studio.root))
        demo.load(studio.owner_key, stored, [stored, owner], api_visibility="private")
    return demo


def launch_options() -> dict:
    """Everything launch() needs besides server name and port (Gradio reads GRADIO_SERVER_NAME/PORT).

    Only the folders whose files the app itself hands out may be served; run files go out as copies.
    """
    return {"max_file_size": limits.current().request_bytes, "allowed_paths": [str(p) for p in showcase.SERVED],
            "theme": gr.themes.Soft(), "footer_links": ["api", "gradio"]}


if __name__ == "__main__":
    server.main(build_demo, launch_options)
