"""The studio's handler functions, called directly: no server, no browser."""

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BROWSER_KEY, ODD_UPLOADS, UNUSABLE, example, finished_run, form_values, odd_upload, tiny_card, wait_for
from PIL import Image

from resnet import fetch, runs
from resnet.cli import main
from resnet.constants import CLASSES, PUBLISHED_MEAN
from resnet.evaluate import predict_logits
from resnet.images import prepare
from resnet.model import build_model
from resnet.studio import downloads, jobs, limits, model_card, showcase, train_form
from resnet.weights import embedded_card, save_weights

gr = pytest.importorskip("gradio")
import app  # noqa: E402


# ---- Predict -------------------------------------------------------------------------------------
def test_predict_gives_every_class_best_first(studio):
    probabilities = studio.predict(example())
    assert list(probabilities) == sorted(probabilities, key=probabilities.get, reverse=True)
    assert set(probabilities) == set(CLASSES)
    assert sum(probabilities.values()) == pytest.approx(1, abs=1e-5)


def test_explain_shows_the_input_and_the_map_enlarged(studio):
    seen, heat = studio.explain(example())
    assert seen.shape == heat.shape == (256, 256, 3)
    assert seen.dtype == heat.dtype == np.uint8
    original = np.asarray(Image.open(example()).convert("RGB"))
    assert (seen[::8, ::8] == original).all()  # what the network saw is the 32 x 32 image itself


def test_confidence_note_warns_when_unsure_and_says_the_tiny_model_is_uncalibrated(studio):
    unsure = {name: 0.3 if name == "cat" else 0.7 / 9 for name in CLASSES}
    assert "none of the 10 classes" in studio.confidence_note(unsure)
    top_five = dict(sorted(unsure.items(), key=lambda item: -item[1])[:5])  # what the page's Label passes
    assert "none of the 10 classes" in studio.confidence_note(top_five)
    sure = studio.confidence_note({"cat": 0.9, "dog": 0.05})
    assert sure.startswith("Best guess: cat (90%")
    assert "uncalibrated" in sure
    # What it lacks is a temperature; its card may still report the raw softmax's ECE, so no "not checked" here
    assert "no temperature was fitted" in sure
    assert studio.confidence_note(None) == ""


@pytest.mark.parametrize("kind", ODD_UPLOADS)
def test_odd_uploads_predict_or_say_why(studio, tmp_path, kind):
    path = odd_upload(kind, tmp_path)
    if kind in UNUSABLE:
        with pytest.raises(gr.Error) as error:
            studio.predict(path)
        assert error.value.message.startswith("cannot use this image: ")
        assert len(error.value.message) > 30
    else:
        assert sum(studio.predict(path).values()) == pytest.approx(1, abs=1e-5)


def test_files_handed_out_are_cleaned_up_after_an_hour(monkeypatch, tmp_path):
    monkeypatch.setattr(downloads, "SCRATCH", tmp_path / "scratch")
    first = downloads.fresh_file("predictions.csv")
    first.write_text("path,prediction\n")
    hour_ago = first.parent.stat().st_mtime - downloads.SCRATCH_MAX_AGE_S - 1
    os.utime(first.parent, (hour_ago, hour_ago))
    recent = downloads.fresh_file("predictions.csv")
    recent.write_text("path,prediction\n")
    second = downloads.fresh_file("predictions.csv")
    assert not first.parent.exists()
    assert recent.is_file()
    assert second.parent.is_dir()
    assert second.parent.parent == recent.parent.parent == tmp_path / "scratch"


def test_no_image_and_missing_weights_are_messages(studio, monkeypatch, tmp_path):
    assert isinstance(studio.predict(None), type(gr.skip()))  # a cleared image: no error toast
    assert all(isinstance(part, type(gr.skip())) for part in studio.explain(None))
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tmp_path / "absent.safetensors"))
    with pytest.raises(gr.Error, match="not here yet"):
        studio.predict(example())
    assert "not here yet" in studio.model_info("shipped", None)


def test_picker_offers_finished_runs_and_predicts_with_them(studio, tiny_data, tmp_path):
    torch.manual_seed(1)  # weights unlike the shipped (tiny) ones: the run's own must be the ones used
    model = build_model().eval()
    run_weights = save_weights(model, tmp_path / "run.safetensors", tiny_card(model, tiny_data))
    finished_run(studio.root, "run-done", run_weights)
    (studio.root / "run-queued").mkdir()
    values = [value for _, value in studio.model_choices()]
    assert values == ["shipped", "run:run-done"]
    from_run = studio.predict(example(), "run:run-done")
    assert from_run != studio.predict(example(), "shipped")
    expected = predict_logits(model, prepare(example())[None], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).softmax(1)[0]
    assert from_run == pytest.approx(dict(zip(CLASSES, expected.tolist(), strict=True)), abs=1e-5)
    assert "test accuracy" in studio.model_info("run:run-done", None)
    for bad in ("run:../../etc", "/etc/passwd", "run:run-queued"):
        with pytest.raises(gr.Error):
            studio.predict(example(), bad)


def test_uploaded_weights_ours_and_published_once_converted(studio, tiny_weights, tmp_path):
    key, picker, about = studio.upload_weights(tiny_weights.read_bytes())
    assert picker.value == "uploaded"
    assert "blocks" in about
    assert set(studio.predict(example(), "uploaded", key)) == set(CLASSES)
    torch.save(build_model().state_dict(), tmp_path / "project1_model.pt")  # how project1_model.pt was written
    with pytest.raises(gr.Error, match=r"uploads must be .safetensors \(a .pt file is a pickle\); "
                                       r"for a published .pt, run `python -m resnet convert"):
        studio.upload_weights((tmp_path / "project1_model.pt").read_bytes())  # a pickle: not opened for a visitor
    assert main(["convert", str(tmp_path / "project1_model.pt"), str(tmp_path / "project1_model.safetensors")]) == 0
    converted = (tmp_path / "project1_model.safetensors").read_bytes()
    assert embedded_card(converted)["mean"] == list(PUBLISHED_MEAN)  # uploaded alone, it keeps the published normalization
    key, _, about = studio.upload_weights(converted)
    assert "blocks [1, 1, 1, 1]" in about
    assert set(studio.predict(example(), "uploaded", key)) == set(CLASSES)


class Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("data", [b"not weights at all", pickle.dumps({"conv1.weight": Boom()})])
def test_bad_weights_uploads_are_refused_in_words(studio, data, capsys):
    with pytest.raises(gr.Error):
        studio.upload_weights(data)
    assert "unpickled!" not in capsys.readouterr().out
    with pytest.raises(gr.Error, match="no longer loaded"):
        studio.predict(example(), "uploaded", "upload:unknown")


# ---- Train ---------------------------------------------------------------------------------------
def test_command_is_the_cli_line(studio):
    line = studio.command("original", *form_values(blocks="2,2,2,2", epochs=3.0))
    # Only what differs from the preset, whole numbers as such, and the watching every run from the page gets.
    assert line == ("python -m resnet train --out runs/my-run --preset original --blocks 2,2,2,2 --epochs 3 --limit-train 2000 "
                    "--limit-test 1000 --log-every 5 --probe-size 500 --probes 20")


def test_preset_values_fill_the_recipe_and_keep_the_size():
    original = dict(zip(train_form.recipe_fields(), app.Studio.preset_values("original"), strict=True))
    assert {k: original[k] for k in ("optimizer", "lr", "dropout", "batch_size")} == {"optimizer": "adam", "lr": 0.01,
                                                                                      "dropout": 0.1, "batch_size": 64}
    assert dict(zip(train_form.recipe_fields(), app.Studio.preset_values("fast"), strict=True))["optimizer"] == "sgd"
    assert not set(train_form.recipe_fields()) & {"epochs", "limit_train", "limit_test", "seed"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"lr": -1.0}, "lr must be positive"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"epochs": 10_000}, "above this server's limit"),
    ({"batch_size": 100_000}, "above this server's limit"),
])
def test_start_run_refuses_bad_settings_in_words(studio, changes, message):
    with pytest.raises(gr.Error, match=message):
        studio.start_run(None, "original", *form_values(**changes), BROWSER_KEY)
    assert studio.list_runs().empty


@pytest.fixture
def no_data_studio(studio_env, tmp_path):
    """``no_data_studio(source)``: a studio on a server without CIFAR-10 that fetches it from ``source`` (None: never)."""
    made = []

    def make(source, **options):
        made.append(app.Studio(jobs.RunQueue(studio_env, data=fetch.DataFetch(tmp_path / "no-data", source, **options))))
        return made[-1]

    yield make
    for studio in made:
        studio.queue.close()


def test_the_train_tab_says_the_data_set_is_here(studio):
    note, retry, poll = studio.data_status()
    assert note.startswith("✅")
    assert "training is available" in note
    assert not retry.visible
    assert not poll.active


def test_the_fetch_replaces_the_download_button_the_train_tab_keeps_only_try_again(studio):
    with gr.Blocks() as demo:
        app.train_tab(studio)
    buttons = [block.value for block in demo.blocks.values() if isinstance(block, gr.Button)]
    assert "Try again" in buttons
    assert not any("Download" in label or "CIFAR" in label for label in buttons)


def test_without_the_data_set_and_its_fetch_start_run_is_refused_in_words(no_data_studio, tmp_path):
    studio = no_data_studio(None)
    note, retry, poll = studio.data_status()
    assert note.startswith("ℹ️ Training is off on this server")
    assert not retry.visible
    assert not poll.active
    with pytest.raises(gr.Error, match="Training is off on this server: it has no copy") as refused:
        studio.start_run(None, "original", *form_values(), BROWSER_KEY)
    for text in (note, refused.value.message):
        assert str(tmp_path) not in text
        assert "--" not in text
        assert "CIFAR10_DIR" not in text
    assert studio.list_runs().empty


def test_a_failed_fetch_is_a_sentence_with_a_retry_button_and_runs_still_queue(no_data_studio, tmp_path):
    studio = no_data_studio(fetch.Source("http://127.0.0.1:9/cifar-10-python.tar.gz", "0" * 32), backoff_s=600)
    note, retry, poll = wait_for(lambda: (shown := studio.data_status())[1].visible and shown, 60, "the failure")
    assert note.startswith("⚠️")
    assert "could not be reached" in note
    assert poll.active
    assert str(tmp_path) not in note
    assert "127.0.0.1" not in note
    run_id = studio.start_run(None, "original", *form_values(), BROWSER_KEY)
    assert studio.list_runs().loc[0, "Status"] == "queued"
    assert "waiting for the data set (the image server could not be reached" in studio.progress(run_id)


def test_start_queues_and_stop_dequeues(studio, monkeypatch):
    monkeypatch.setattr(studio.queue, "_launch", lambda run_id: None)  # keep it waiting: this test trains nothing
    studio.queue._closed.set()
    run_id = studio.start_run(None, "original", *form_values(), BROWSER_KEY)
    assert runs.RUN_ID.match(run_id)
    assert run_id.startswith("run-")
    assert "position 1 in the queue" in studio.progress(run_id)
    assert studio.list_runs().loc[0, "Status"] == "queued"
    with pytest.raises(gr.Error, match="belongs to whoever started it"):
        studio.stop_run(None, run_id, "another-browsers-key")
    assert "taken off the queue" in studio.stop_run(None, run_id, BROWSER_KEY)
    assert studio.list_runs().loc[0, "Status"] == "stopped"


@pytest.mark.parametrize("run_id", ["../etc", "RUN", "a/b", "", "x" * 65])
def test_run_ids_are_checked(studio, run_id):
    handlers = (lambda r: studio.stop_run(None, r, BROWSER_KEY), lambda r: studio.resume_run(None, r, BROWSER_KEY),
                studio.run_metrics)
    for handler in handlers:
        with pytest.raises(gr.Error):
            handler(run_id)


# ---- Runs ----------------------------------------------------------------------------------------
def test_runs_table_metrics_curves_and_details(studio, tiny_weights):
    finished_run(studio.root, "run-a", tiny_weights)
    table = studio.list_runs()
    assert list(table.columns) == jobs.RUN_TABLE_HEADERS
    assert table.loc[0, "Run"] == "run-a"
    assert not any("_" in header for header in table.columns)  # words, not the summary's keys
    assert len(jobs.RUN_TABLE_WIDTHS) == len(table.columns)  # a width for every column, none left to wrap
    assert all(value == "" or value.endswith("%") for value in table["Test acc"])
    assert sum(int(width.removesuffix("px")) for width in jobs.RUN_TABLE_WIDTHS) <= 1200  # wider is squeezed, headers cut
    assert studio.run_metrics("run-a").loc[0, "epoch"] == 1
    accuracy, loss = studio.compare(["run-a"])
    assert [trace.name for trace in accuracy.data] == ["run-a test"]  # its only rows are an epoch's
    by_time, _ = studio.compare(["run-a"], "time")
    assert "wall-clock" in by_time.layout.xaxis.title.text
    assert "images" in accuracy.layout.xaxis.title.text
    confusion, per_class, files = studio.run_details("run-a")
    assert len(confusion.data[0].z) == 10
    assert len(per_class.data[0].y) == 10
    assert sorted(f.rsplit("/", 1)[1] for f in files) == ["run-a.json", "run-a.safetensors"]
    assert "finished" in studio.progress("run-a")


def test_the_runs_tab_opens_on_the_newest_finished_runs_details(studio, tiny_weights):
    finished_run(studio.root, "run-old", tiny_weights)
    time.sleep(0.05)  # runs are listed newest first, by their folder's time
    finished_run(studio.root, "run-new", tiny_weights)
    runs.run_path(studio.root, "run-busy").mkdir()  # newest of all, but not finished
    _, chosen, detail = studio.refresh_lists(None, None)
    assert detail.value == "run-new"
    assert chosen.value == []
    assert studio.refresh_lists(None, "run-old")[2].value == "run-old"  # a visitor's choice stays


def test_watch_redraws_only_on_change(studio, tiny_weights):
    run_dir = finished_run(studio.root, "run-b", tiny_weights)
    *figures, seen = studio.watch(["run-b"], "images", "")
    assert seen
    assert figures[0].data
    assert studio.watch(["run-b"], "images", seen)[2] == seen
    assert isinstance(studio.watch(["run-b"], "images", seen)[0], type(gr.skip()))
    assert studio.watch(["run-b"], "time", seen)[2] != seen  # another x axis is another figure
    runs.append_metrics(run_dir, {"kind": "epoch", "epoch": 2, "step": 10, "train_acc": 0.2, "test_acc": 0.2})
    assert studio.watch(["run-b"], "images", seen)[2] != seen


def test_a_typed_id_that_names_no_run_is_refused_once_not_at_every_poll(studio, tiny_weights):
    finished_run(studio.root, "run-b", tiny_weights)
    with pytest.raises(gr.Error, match="invalid run id 'My Run'"):
        studio.compare(["run-b", "My Run"])  # the choice itself says why
    *figures, seen = studio.watch(["run-b", "My Run"], "images", "")  # the poll draws the runs it can
    assert [trace.name for trace in figures[0].data if trace.name]
    assert seen == studio.watch(["run-b"], "images", "")[2]
    assert studio.watch(["My Run"], "images", "")[2] == '["images"]'  # nothing to draw, and no error


def test_use_this_model_makes_a_finished_run_the_predict_tabs_model(studio, tiny_weights):
    finished_run(studio.root, "run-done", tiny_weights)
    tabs, picker = studio.use_model("run-done", None)
    assert tabs.selected == "predict"
    assert picker.value == "run:run-done"
    assert "run:run-done" in [value for _, value in picker.choices]
    run_dir = studio.root / "run-busy"
    run_dir.mkdir(parents=True)
    runs.write_status(run_dir, "running", "started", pid=0)
    with pytest.raises(gr.Error, match="run-busy has no model yet"):
        studio.use_model("run-busy", None)
    with pytest.raises(gr.Error, match="invalid run id"):
        studio.use_model("../etc", None)


def test_details_of_an_unfinished_run_say_so(studio):
    run_dir = studio.root / "run-c"
    run_dir.mkdir(parents=True)
    runs.write_status(run_dir, "stopped", "stopped at epoch 1", pid=0)
    confusion, _, files = studio.run_details("run-c")
    assert files is None
    assert "no model card" in confusion.layout.annotations[0].text


# ---- Pages ---------------------------------------------------------------------------------------
def test_examples_are_three_per_class_with_true_labels():
    paths, captions = showcase.example_gallery()
    assert len(paths) == 3 * len(CLASSES)
    for name in CLASSES:
        assert captions.count(name) == 3
    assert all(Image.open(path).size == (32, 32) for path in paths)


def test_demo_exposes_exactly_the_documented_api(studio):
    demo = app.build_demo(studio)
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == {"predict", "predict_batch", "explain", "stress", "start_run", "stop_run", "resume_run", "list_runs",
                      "run_metrics"}


def test_launch_options_cap_uploads_and_serve_only_our_folders(studio):
    options = app.launch_options()
    # weights may exceed an image
    assert options["max_file_size"] == max(limits.current().upload_bytes, limits.current().weights_bytes)
    assert sorted(options["allowed_paths"]) == sorted(str(p) for p in (showcase.EXAMPLES, showcase.MISTAKES))
    assert not any(studio.root.resolve().is_relative_to(Path(p).resolve()) for p in options["allowed_paths"])


def test_run_downloads_are_copies_outside_the_runs_folder(studio, tiny_weights):
    run_dir = finished_run(studio.root, "run-d", tiny_weights)
    *_, files = studio.run_details("run-d")
    assert [Path(f).name for f in files] == ["run-d.safetensors", "run-d.json"]
    assert all(not Path(f).resolve().is_relative_to(studio.root.resolve()) for f in files)
    assert Path(files[0]).read_bytes() == (run_dir / runs.WEIGHTS).read_bytes()


def test_model_description_grounds_the_low_confidence_warning():
    card = {"blocks": [1, 1, 1, 1], "test_acc": 0.93, "ece": 0.02,
            "low_confidence": {"threshold": 0.5, "share_below": 0.031, "accuracy_below": 0.42, "accuracy_above": 0.95}}
    text = model_card.describe_card(card)
    assert "test accuracy 93.00%" in text
    assert "below 50% confidence (3.1% of test images) it is right 42% of the time, above it 95%" in text


# ---- Model card ----------------------------------------------------------------------------------
def test_model_card_tab_reads_the_committed_card(monkeypatch, tmp_path, tiny_weights):
    weights = tmp_path / "shipped.safetensors"
    weights.write_bytes(tiny_weights.read_bytes())
    card = json.loads(tiny_weights.with_suffix(".json").read_text())
    card.update(tta_test_acc=0.1234, storage_choice="float16: fp16 storage predicts all test images exactly as fp32",
                reproduce="python -m resnet train --out runs/weights-fast --preset fast",
                training={"optimizer": "sgd", "lr": 0.4, "batch_size": 512, "epochs": 30},
                provenance={"elapsed_s": 7200, "device": "cpu: x86_64"})
    weights.with_suffix(".json").write_text(json.dumps(card))
    monkeypatch.setenv("STUDIO_WEIGHTS", str(weights))
    ablated = {"budget": {"train_size": 20000, "val_size": 5000, "epochs": 5, "seeds": 2, "resolution": "16:0.875",
                          "recipe": "the fast preset with whiten_stem=True"}, "runs": [
        {"run_id": "recipe-seed0", "variant": "recipe", "seed": 0, "change": {}, "status": "finished", "final_val_acc": 0.8},
        {"run_id": "no-label-smoothing-seed0", "variant": "no-label-smoothing", "seed": 0,
         "change": {"label_smoothing": 0.0}, "status": "finished", "final_val_acc": 0.79},
        {"run_id": "recipe-seed1", "variant": "recipe", "seed": 1, "change": {}, "status": "finished", "final_val_acc": 0.81},
        {"run_id": "no-label-smoothing-seed1", "variant": "no-label-smoothing", "seed": 1,
         "change": {"label_smoothing": 0.0}, "status": "pending", "final_val_acc": None}]}
    monkeypatch.setattr(showcase, "ABLATION", tmp_path / "ablation.json")
    showcase.ABLATION.write_text(json.dumps(ablated))
    monkeypatch.setattr(showcase, "TIME_TO_ACCURACY", tmp_path / "absent.json")
    with gr.Blocks() as demo:
        app.card_tab()
    text = "\n".join(block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown))
    assert f"test accuracy {card['test_acc']:.2%}" in text
    assert "flip test-time augmentation: 12.34%" in text
    assert "sgd lr 0.4, batch 512, 30 epochs, 2 h on cpu: x86_64" in text
    assert "Stored as float16" in text
    assert "`python -m resnet train --out runs/weights-fast --preset fast`" in text
    assert "same 20,000 images for 5 epochs at resolution schedule 16:0.875, with 2 seed(s)" in text
    assert "(the fast preset with whiten_stem=True)" in text
    assert "smaller than the seeds' spread is noise" in text
    plots = [block for block in demo.blocks.values() if isinstance(block, gr.Plot)]
    # per class, confusion, two curves; the study's four; the ablation's bars; reliability diagram, robustness heatmap
    assert len(plots) == 4 + 4 * showcase.STUDY.is_file() + 1 + 2
    tables = [block.value for block in demo.blocks.values() if isinstance(block, gr.Dataframe)]
    assert next(table for table in tables if table["headers"][0] == "variant")["data"] == [
        ["recipe", "none: the recipe", "80.00% / 81.00%", "80.50%", "", "0.50 pts"],
        ["no-label-smoothing", "label_smoothing=0", "79.00% / pending", "79.00%", "-1.50 pts", ""]]


def test_model_card_tab_shows_the_study_as_every_experiment(monkeypatch, tmp_path, tiny_weights):
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tiny_weights))
    committed = showcase.STUDY
    for name in ("STUDY", "ABLATION", "TIME_TO_ACCURACY"):
        monkeypatch.setattr(showcase, name, tmp_path / f"{name}.json")

    def tab():
        with gr.Blocks() as demo:
            app.card_tab()
        blocks = demo.blocks.values()
        return ("\n".join(block.value for block in blocks if isinstance(block, gr.Markdown)),
                [block.value for block in blocks if isinstance(block, gr.Dataframe)],
                [block for block in blocks if isinstance(block, gr.Plot)])

    text, tables, plots = tab()
    assert "The optimizer study has not run yet (results/study.json is absent)." in text
    assert not tables
    showcase.STUDY.write_text(committed.read_text())
    text, tables, plots = tab()
    assert "Three phases, each on the choice of the one before" in text
    assert [row[0] for row in tables[0]["data"]] == ["optimizers", "dropout", "size"]
    assert len(plots) == 4 + 2 + 4  # the card's own four, reliability and robustness, the study's four


@pytest.mark.parametrize("content", [None, "{broken", '{"runs": []}', "[1, 2]"])
def test_model_card_tab_without_ablation_results_says_so(monkeypatch, tmp_path, tiny_weights, content):
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tiny_weights))
    monkeypatch.setattr(showcase, "ABLATION", tmp_path / "ablation.json")
    if content is not None:
        showcase.ABLATION.write_text(content)
    with gr.Blocks() as demo:
        app.card_tab()
    text = "\n".join(block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown))
    assert "The remove-one ablation has not run yet" in text


def test_model_card_tab_shows_the_time_to_accuracy_table_once_it_has_run(monkeypatch, tmp_path, tiny_weights):
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tiny_weights))
    monkeypatch.setattr(showcase, "STUDY", tmp_path / "absent.json")
    monkeypatch.setattr(showcase, "ABLATION", tmp_path / "absent.json")
    monkeypatch.setattr(showcase, "TIME_TO_ACCURACY", tmp_path / "time-to-accuracy.json")

    def tab():
        with gr.Blocks() as demo:
            app.card_tab()
        text = "\n".join(block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown))
        return text, [block.value for block in demo.blocks.values() if isinstance(block, gr.Dataframe)]

    text, tables = tab()
    assert "The time-to-accuracy experiment has not run yet" in text
    assert not tables
    hit = {"epoch": 2, "elapsed_s": 120.0, "images": 90_000, "flops": 1.5e14}
    curve = [{"epoch": 1, "val_acc": 0.85, "flops": 7.5e13}, {"epoch": 2, "val_acc": 0.91, "flops": 1.5e14}]
    showcase.TIME_TO_ACCURACY.write_text(json.dumps({"budget": {"train_size": 45000, "val_size": 5000}, "runs": [
        {"run_id": "fast", "change": {}, "status": "finished", "final_val_acc": 0.91, "flops": 1.5e14, "curve": curve,
         "reached": {"90%": hit, "94%": None}, "timed_on": "cuda: a GPU"}]}))
    text, tables = tab()
    assert "on 45,000 training images and is scored at every epoch on 5,000 validation images" in text
    assert tables[0]["data"] == [["fast", "none: the fast preset", "0.15 (1.00x)", "91.00%",
                                  "2 min, 0.09M images, 0.15 PFLOPs (epoch 2)", "not reached", "cuda: a GPU"]]


def test_model_card_tab_without_shipped_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tmp_path / "absent.safetensors"))
    with gr.Blocks() as demo:
        app.card_tab()
    text = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert text == ["The shipped weights are not here yet: a training run is making them."]
