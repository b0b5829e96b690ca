"""Batch prediction over files, folders and zips, and evaluation of an ImageFolder layout."""

import csv
import json
import zipfile

import pytest
import torch
from helpers import encode
from PIL import Image

from resnet import batch, build_model, load_weights, save_weights
from resnet.caps import DecodeCaps
from resnet.cli import main
from resnet.constants import CLASSES
from resnet.data import load_split
from resnet.weights import make_card


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model().eval()
    return save_weights(model, tmp_path_factory.mktemp("weights") / "random.safetensors", make_card(model))


@pytest.fixture(scope="module")
def tiny_test_split(tiny_data):
    """(images, labels): the tiny data set's test split."""
    return load_split(tiny_data, train=False)


def png_bytes(image: torch.Tensor) -> bytes:
    return encode(Image.fromarray(image.permute(1, 2, 0).numpy()))


def probabilities_one_at_a_time(weights_path, image: torch.Tensor) -> torch.Tensor:
    classifier = load_weights(weights_path)
    return classifier.probabilities(classifier.logits(image))


def test_files_folders_and_zips_are_predicted_in_batches(weights, tiny_test_split, tmp_path, capsys):
    images, _ = tiny_test_split
    folder = tmp_path / "photos"
    (folder / "a" / "b").mkdir(parents=True)
    expected = {}
    for index, place in enumerate(["one.png", "a/two.png", "a/b/three.png"]):
        (folder / place).write_bytes(png_bytes(images[index]))
        expected[str(folder / place)] = images[index]
    (folder / ".hidden.png").write_bytes(png_bytes(images[9]))
    (folder / "notes.txt").write_text("not a picture")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("inside/", "")
        zipped.writestr("inside/four.png", png_bytes(images[3]))
        zipped.writestr("../../escape.png", png_bytes(images[4]))
        zipped.writestr("__MACOSX/inside/._four.png", b"resource fork")
    expected[f"{archive}:inside/four.png"] = images[3]
    expected[f"{archive}:../../escape.png"] = images[4]
    single = tmp_path / "single.png"
    single.write_bytes(png_bytes(images[5]))
    expected[str(single)] = images[5]
    out = tmp_path / "predictions.csv"

    code = main(["predict", "--weights", str(weights), str(folder), str(archive), str(single), str(tmp_path / "missing.png"),
                 "--csv", str(out), "--batch-size", "2"])

    assert code == 1  # some inputs were unreadable; the rest were still predicted
    error = capsys.readouterr().err
    assert f"{folder / 'broken.png'}: " in error
    assert "missing.png: no such file or folder" in error
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "prediction", "probability", *CLASSES]
    assert sorted(row[0] for row in rows[1:]) == sorted(expected)
    for name, prediction, probability, *per_class in rows[1:]:
        reference = probabilities_one_at_a_time(weights, expected[name])
        assert torch.allclose(torch.tensor([float(p) for p in per_class]), reference, atol=1e-5)
        assert prediction == CLASSES[int(reference.argmax())]
        assert float(probability) == pytest.approx(float(reference.max()), abs=1e-5)
    assert not list(tmp_path.parent.glob("escape.png"))
    assert not list(tmp_path.glob("**/escape.png"))


def test_zip_caps_are_reasons_not_crashes(tiny_test_split, tmp_path, monkeypatch):
    images, _ = tiny_test_split
    small, large = tmp_path / "small.zip", tmp_path / "large.zip"
    picture = png_bytes(images[0])
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("ok.png", picture)
        zipped.writestr("big.png", picture + bytes(100_000))  # compresses small, inflates past the cap
    with zipfile.ZipFile(large, "w") as zipped:
        for index in range(3):
            zipped.writestr(f"{index}.png", png_bytes(images[index]))
    monkeypatch.setattr(batch, "MAX_ZIP_MEMBERS", 2)
    with batch.Sources([small, large], DecodeCaps(upload_bytes=len(picture))) as sources:
        assert [s.name for s in sources.items] == [f"{small}:ok.png"]
        reasons = dict(sources.problems)
    assert "uncompressed; the limit is" in reasons[f"{small}:big.png"]
    assert reasons[str(large)] == "the archive has 3 members; the limit is 2"


def test_single_image_keeps_its_top_k_output_and_published_weights_work(weights, tiny_test_split, tmp_path, capsys):
    images, _ = tiny_test_split
    picture = tmp_path / "cat.png"
    picture.write_bytes(png_bytes(images[0]))
    published = tmp_path / "project1_model.pt"
    torch.save(load_weights(weights).net.state_dict(), published)  # a plain state_dict, as the published project saved it
    for path in (weights, published):
        assert main(["predict", "--weights", str(path), str(picture), "--top", "2", "--json"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1
        line = json.loads(lines[0])
        assert line["path"] == str(picture)
        assert len(line["top"]) == 2


def write_image_folder(root, images, labels, classes=CLASSES):
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / classes[label]).mkdir(parents=True, exist_ok=True)
        (root / classes[label] / f"{index}.png").write_bytes(png_bytes(image))


def test_evaluate_folder_matches_the_tensor_evaluation(weights, tiny_test_split, tmp_path, capsys):
    images, labels = tiny_test_split
    keep = labels != 3  # no cat images: its accuracy is unknown, not zero
    images, labels = images[keep], labels[keep]
    write_image_folder(tmp_path / "set", images, labels)
    assert main(["evaluate", "--weights", str(weights), "--folder", str(tmp_path / "set"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reference = load_weights(weights).evaluate(images, labels)  # PNG round trip is lossless
    assert result["confusion"] == reference["confusion"]
    assert result["count"] == len(labels)
    assert result["acc"] == pytest.approx(reference["acc"])
    assert result["per_class_acc"][3] is None
    assert result["per_class_count"][3] == 0
    assert result["unreadable"] == 0


def test_evaluate_folder_refuses_unknown_class_folders(weights, tiny_test_split, tmp_path, capsys):
    images, labels = tiny_test_split
    write_image_folder(tmp_path / "set", images[:4], labels[:4])
    (tmp_path / "set" / "kangaroo").mkdir()
    assert main(["evaluate", "--weights", str(weights), "--folder", str(tmp_path / "set")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert "kangaroo" in error
    assert error.count("\n") == 1
