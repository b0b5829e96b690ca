"""The Predict tab's batch mode: several images or .zip archives -> a table and a CSV.

resnet.batch itself (zip members read in memory, junk skipped, zip bombs capped) is tested in
test_batch.py; these tests cover what the app adds: names, the table, the CSV, the per-request cap.
"""

import csv
from pathlib import Path

import pytest
from helpers import encode, example_bytes, image_bytes, zip_bytes
from PIL import Image

from resnet import batch
from resnet.constants import CLASSES
from resnet.studio import batch_results

gr = pytest.importorskip("gradio")

HEADER = ["path", "prediction", "probability", *CLASSES]


def make_zip(path: Path, members: dict) -> str:
    path.write_bytes(zip_bytes(members))
    return str(path)


@pytest.fixture
def uploads(tmp_path):
    """Two pictures and an archive as Gradio hands them over: paths in an upload folder."""
    folder = tmp_path / "gradio-cache" / "0123abcd"
    folder.mkdir(parents=True)
    (folder / "cat-0.png").write_bytes(example_bytes("cat-0.png"))
    (folder / "ship-1.png").write_bytes(example_bytes("ship-1.png"))
    archive = make_zip(folder / "set.zip", {
        "pets/dog-12.png": example_bytes("dog-12.png"),
        "notes.txt": b"not a picture, and not named like one: skipped",
        "broken.png": b"a text file named like a picture",
        "__MACOSX/._dog-12.png": b"resource fork",
    })
    return [str(folder / "cat-0.png"), str(folder / "ship-1.png"), archive]


def test_a_table_and_a_csv_of_every_readable_image(studio, uploads):
    table, csv_path, note = studio.predict_batch(uploads)
    assert list(table.columns) == HEADER
    assert list(table["path"]) == ["cat-0.png", "ship-1.png", "set.zip:pets/dog-12.png"]  # never the server's folders
    for _, row in table.iterrows():
        probabilities = row[list(CLASSES)].astype(float)
        assert probabilities.sum() == pytest.approx(1, abs=1e-4)
        assert row["prediction"] == probabilities.idxmax()
        assert row["probability"] == pytest.approx(probabilities.max())
    # the same numbers as a single upload of the same picture
    single = studio.predict(uploads[0])
    assert table.loc[0, list(CLASSES)].astype(float).to_dict() == pytest.approx(single, abs=1e-5)
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == HEADER == batch.csv_header(CLASSES)
    assert [r[0] for r in rows[1:]] == list(table["path"])
    assert [r[1] for r in rows[1:]] == list(table["prediction"])
    assert not Path(csv_path).resolve().is_relative_to(studio.root.resolve())
    assert note.startswith("3 images predicted; 1 could not be used")
    assert "set.zip:broken.png" in note


def test_the_per_request_cap_counts_zip_members(studio, uploads, server_limits):
    server_limits(batch_images=2)
    with pytest.raises(gr.Error, match="4 images in this request; this server predicts at most 2 at a time"):
        studio.predict_batch(uploads)  # 2 files + 2 image-named members
    assert len(studio.predict_batch(uploads[:2])[0]) == 2


def test_pixel_and_byte_caps_apply_to_each_image(studio, tmp_path, server_limits):
    server_limits(upload_bytes=200_000)  # zip members are checked by their header and while inflating
    huge = encode(Image.new("L", (8000, 6000)))  # 48 MP in a small file: over the 40 MP cap
    noise = encode(Image.effect_noise((512, 512), 60).convert("RGB"))
    archive = make_zip(tmp_path / "caps.zip", {"huge.png": huge, "noise.png": noise, "ok.png": example_bytes()})
    table, _, note = studio.predict_batch([archive])
    assert list(table["path"]) == ["caps.zip:ok.png"]
    assert "caps.zip:noise.png" in note
    assert "MB" in note
    assert "caps.zip:huge.png" in note
    assert "MP" in note


def test_a_request_decodes_at_most_its_pixel_budget(studio, tmp_path, server_limits):
    server_limits(batch_pixels=2_500_000)  # room for two 1 MP images, not three
    members = {name: image_bytes((1000, 1000)) for name in ("a.png", "b.png", "c.png")}  # small files, 1 MP decoded
    members["tiny.png"] = example_bytes()  # 32 x 32 still fits in what is left
    table, _, note = studio.predict_batch([make_zip(tmp_path / "many.zip", members)])
    assert list(table["path"]) == ["many.zip:a.png", "many.zip:b.png", "many.zip:tiny.png"]
    assert "many.zip:c.png" in note
    assert "decoding budget" in note


@pytest.mark.parametrize(("files", "words"), [
    (None, "upload images or a .zip archive first"),
    ([], "upload images or a .zip archive first"),
])
def test_nothing_uploaded_is_a_message(studio, files, words):
    with pytest.raises(gr.Error, match=words):
        studio.predict_batch(files)


def test_nothing_readable_is_one_message(studio, tmp_path):
    (tmp_path / "a.jpg").write_text("text named like a picture")
    (tmp_path / "b.zip").write_bytes(b"PK not really a zip")
    empty = make_zip(tmp_path / "empty.zip", {"readme.txt": b"no pictures here"})
    words = r"none of the files could be used \(b.zip: not a readable zip archive .*; a.jpg: not an image file"
    with pytest.raises(gr.Error, match=words):
        studio.predict_batch([str(tmp_path / "a.jpg"), str(tmp_path / "b.zip"), empty])
    with pytest.raises(gr.Error, match="none of the files could be used \\(no images in the upload\\)"):
        studio.predict_batch([empty])


def test_names_from_the_archive_cannot_inject_markdown_or_paths(studio, tmp_path):
    archive = make_zip(tmp_path / "odd.zip", {"../../etc/<b>x</b>`y`.png": b"not an image", "ok.png": example_bytes()})
    table, _, note = studio.predict_batch([archive])
    assert list(table["path"]) == ["odd.zip:ok.png"]
    assert "<b>" not in note
    assert "\\<b\\>" in note
    assert "`y`" not in note
    assert not (tmp_path.parent.parent / "etc").exists()



def test_the_note_counts_and_names_at_most_twenty_problems():
    assert batch_results.note(1, []) == "1 image predicted"
    problems = [(f"bad-{index}.png", "not an image") for index in range(batch_results.NOTE_PROBLEMS + 3)]
    note = batch_results.note(2, problems)
    assert note.startswith(f"2 images predicted; {len(problems)} could not be used:\n- bad-0.png: not an image")
    assert f"bad-{batch_results.NOTE_PROBLEMS - 1}.png" in note
    assert f"bad-{batch_results.NOTE_PROBLEMS}.png" not in note
    assert note.endswith("\n- ... and 3 more")
    assert batch_results.markdown_safe("[a](b) *c* #d|e") == "\\[a\\](b) \\*c\\* \\#d\\|e"
    assert len(batch_results.markdown_safe("x" * 1000)) == batch_results.NAME_CHARS


@pytest.mark.e2e
@pytest.mark.slow
def test_predict_batch_over_the_api(client, uploads):
    gradio_client = pytest.importorskip("gradio_client")
    files = [gradio_client.handle_file(path) for path in uploads]
    table, csv_path, note = client.predict(files, "shipped", api_name="/predict_batch")
    assert table["headers"] == HEADER
    assert [row[0] for row in table["data"]] == ["cat-0.png", "ship-1.png",
                                                                                  "set.zip:pets/dog-12.png"]
    assert Path(csv_path).read_text().splitlines()[0] == ",".join(HEADER)
    assert note.startswith("3 images predicted")
    with pytest.raises(gradio_client.exceptions.AppError, match="invalid run id"):
        client.predict(files, "run:../../etc", api_name="/predict_batch")
    assert client.predict(gradio_client.handle_file(uploads[0]), api_name="/predict")["label"] in CLASSES
