"""scripts/reference_curves.py: the shipped model's curve counts the images its run trained on, and refreshing
only that curve leaves the trained references as they were."""

import json

import reference_curves  # scripts/, on pytest's pythonpath
from helpers import REPO

from resnet.config import config_from_dict
from resnet.constants import TRAIN_IMAGES
from resnet.weights import DEFAULT_WEIGHTS, card_path

COMMITTED = REPO / "results" / "reference-curves.json"


def test_the_shipped_curve_counts_whole_batches_and_the_committed_file_has_it():
    card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
    batch = config_from_dict(card["training"]).batch_size
    shipped = reference_curves.shipped_reference()
    per_epoch = TRAIN_IMAGES // batch * batch  # the last partial batch of each epoch is dropped
    assert [row["images"] for row in shipped["rows"]] == [row["epoch"] * per_epoch for row in card["curve"]]
    assert json.loads(COMMITTED.read_text())["references"]["shipped model"] == shipped


def test_shipped_only_replaces_that_curve_and_keeps_the_rest(tmp_path, capsys):
    out = tmp_path / "references.json"
    stale = json.loads(COMMITTED.read_text())
    stale["references"]["shipped model"]["rows"] = []
    out.write_text(json.dumps(stale))
    assert reference_curves.main(["--shipped-only", "--out", str(out)]) == 0
    refreshed = json.loads(out.read_text())
    assert refreshed["references"]["shipped model"] == reference_curves.shipped_reference()
    assert {k: v for k, v in refreshed.items() if k != "references"} == {k: v for k, v in stale.items() if k != "references"}
    assert all(refreshed["references"][name] == stale["references"][name] for name, _ in reference_curves.TRAINED)
    assert reference_curves.main(["--shipped-only", "--out", str(tmp_path / "missing.json")]) == 2
    assert "run without --shipped-only" in capsys.readouterr().err
