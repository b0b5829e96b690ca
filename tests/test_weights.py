"""Weights files: the published .pt loads both ways, our safetensors + card round-trip, bad files fail cleanly."""

import json
import pickle

import pytest
import torch
from helpers import Payload, PublishedResNet, randomize_batchnorm
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_save
from torch import nn

from resnet import build_model, count_parameters, load_weights, save_weights
from resnet.constants import PUBLISHED_MEAN, PUBLISHED_STD
from resnet.weights import WeightsError, make_card


@pytest.fixture(scope="module")
def inputs():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---- published compatibility ------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "module."])  # plain, or saved from nn.DataParallel
def test_published_state_dict_pt_loads_with_identical_outputs(tmp_path, inputs, prefix):
    torch.manual_seed(0)
    published = randomize_batchnorm(PublishedResNet()).eval()
    path = tmp_path / "project1_model.pt"
    torch.save({prefix + k: v for k, v in published.state_dict().items()}, path)  # what the published code did

    classifier = load_weights(path)
    assert not classifier.net.training
    assert classifier.mean == PUBLISHED_MEAN
    assert classifier.std == PUBLISHED_STD
    assert classifier.card["blocks"] == [1, 1, 1, 1]
    with torch.no_grad():
        assert torch.equal(classifier.net(inputs), published(inputs))


def test_our_state_dict_loads_strictly_into_the_published_class(inputs):
    torch.manual_seed(0)
    ours = randomize_batchnorm(build_model((2, 2, 2, 2))).eval()
    published = PublishedResNet((2, 2, 2, 2)).eval()
    published.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(published(inputs), ours(inputs))


def test_our_checkpoint_file_loads_as_weights(tmp_path, inputs):
    model = randomize_batchnorm(build_model()).eval()
    torch.save({"model": model.state_dict(), "optimizer": {}, "position": {"epoch": 2}}, tmp_path / "checkpoint.pt")
    loaded = load_weights(tmp_path / "checkpoint.pt").net
    with torch.no_grad():
        assert torch.equal(loaded(inputs), model(inputs))


# ---- our format -------------------------------------------------------------------------------
def test_safetensors_and_card_round_trip(tmp_path, inputs):
    model = randomize_batchnorm(build_model((1, 1, 1, 1), dropout=0.2)).eval()
    card = make_card(model, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), test_acc=0.5)
    path = save_weights(model, tmp_path / "m.safetensors", card)

    assert json.loads((tmp_path / "m.json").read_text())["storage_dtype"] == "float32"
    loaded = load_weights(path)
    loaded, loaded_card = loaded.net, loaded.card
    assert loaded_card["blocks"] == [1, 1, 1, 1]
    assert loaded_card["dropout"] == 0.2
    assert loaded_card["mean"] == [0.1, 0.2, 0.3]
    assert loaded_card["std"] == [0.4, 0.5, 0.6]
    assert loaded_card["test_acc"] == 0.5
    assert len(loaded_card["classes"]) == 10
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(loaded(inputs), model(inputs))


def test_half_precision_storage_loads_as_float32(tmp_path):
    model = build_model().eval()
    path = save_weights(model, tmp_path / "m.safetensors", make_card(model), dtype=torch.float16)
    assert load_file(path)["conv1.weight"].dtype == torch.float16
    loaded = load_weights(path).net
    assert loaded.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.conv1.weight, model.conv1.weight, rtol=1e-3, atol=1e-3)


def test_blocks_are_inferred_from_the_keys_without_a_card(tmp_path):
    save_file(build_model((2, 2, 2, 2)).state_dict(), tmp_path / "bare.safetensors")
    loaded = load_weights(tmp_path / "bare.safetensors")
    model, card = loaded.net, loaded.card
    assert card["blocks"] == [2, 2, 2, 2]
    assert model.blocks == (2, 2, 2, 2)
    assert count_parameters(model) == 11_173_962


def test_bytes_source_loads(tmp_path):
    model = build_model()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_weights((tmp_path / "w.pt").read_bytes()).net
    assert torch.equal(loaded.linear.weight, model.linear.weight)


# ---- files that must be refused with a reason -------------------------------------------------
def good_safetensors(tmp_path, blocks=(1, 1, 1, 1)):
    model = build_model(blocks)
    return save_weights(model, tmp_path / "good.safetensors", make_card(model)), model


def assert_refused(source, *words, **kwargs):
    with pytest.raises(WeightsError) as caught:
        load_weights(source, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert "Traceback" not in message
    for word in words:
        assert word in message, message
    return message


def test_truncated_safetensors_is_refused(tmp_path):
    path, _ = good_safetensors(tmp_path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert_refused(tmp_path / "cut.safetensors", "cut.safetensors", "not a weights file")


@pytest.mark.parametrize("data", [b"\x00\x01garbage" * 100, bytes(range(256)) * 10, b"\x80\x02garbage", b"PK\x03\x04junk"])
def test_random_bytes_are_refused(tmp_path, data):
    (tmp_path / "noise.pt").write_bytes(data)
    assert_refused(tmp_path / "noise.pt", "noise.pt")


def test_empty_and_missing_files_are_refused(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert_refused(tmp_path / "empty.safetensors", "empty")
    assert_refused(tmp_path / "absent.safetensors", "no such weights file")


def test_state_with_a_missing_key_is_refused(tmp_path):
    state = build_model((2, 2, 2, 2)).state_dict()
    del state["layer3.1.conv2.weight"]
    torch.save(state, tmp_path / "w.pt")
    assert_refused(tmp_path / "w.pt", "keys do not match", "layer3.1.conv2.weight")


def test_state_with_an_extra_key_is_refused(tmp_path):
    state = build_model().state_dict()
    state["head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    assert_refused(tmp_path / "w.pt", "unexpected: head.weight")


def test_state_with_a_wrong_shape_is_refused(tmp_path):
    state = build_model((2, 2, 2, 2)).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(state, tmp_path / "w.pt")
    assert_refused(tmp_path / "w.pt", "shape mismatch", "layer2.0.conv1.weight")


def test_keys_of_another_network_are_refused(tmp_path):
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "w.pt")
    assert_refused(tmp_path / "w.pt", "not weights of this ResNet")


def test_a_card_that_disagrees_with_its_weights_is_refused(tmp_path):
    path, _ = good_safetensors(tmp_path, (2, 2, 2, 2))
    card = json.loads((tmp_path / "good.json").read_text())
    (tmp_path / "good.json").write_text(json.dumps({**card, "blocks": [1, 1, 1, 1]}))
    assert_refused(path, "the card says blocks [1, 1, 1, 1]", "[2, 2, 2, 2]")


@pytest.mark.parametrize(("change", "words"), [
    ({"mean": [0.5, 0.5]}, "'mean'"),
    ({"mean": [0.5, float("nan"), 0.5]}, "'mean' must be a list of 3 finite numbers"),  # json writes and reads NaN
    ({"std": [0.2, float("inf"), 0.2]}, "'std' must be a list of 3 finite numbers"),
    ({"std": [0.2, 0.0, 0.2]}, "'std' must be positive"),
])
def test_a_card_with_bad_preprocessing_is_refused(tmp_path, change, words):
    path, _ = good_safetensors(tmp_path)
    card = json.loads((tmp_path / "good.json").read_text())
    (tmp_path / "good.json").write_text(json.dumps({**card, **change}))
    assert_refused(path, words)


def test_a_card_that_is_not_json_is_refused(tmp_path):
    path, _ = good_safetensors(tmp_path)
    (tmp_path / "good.json").write_text("{not json")
    assert_refused(path, "good.json", "not valid JSON")


def test_the_payload_is_real(tmp_path):
    # Guards the test below: an unrestricted unpickler does run it.
    pickle.loads(pickle.dumps(Payload(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"conv1.weight": torch.zeros(1), "evil": Payload(marker)}
    path = tmp_path / "model.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert_refused(path, "model.pt", "not a plain PyTorch state_dict")
    assert_refused(path.read_bytes(), "uploaded file")
    assert not marker.exists()


def test_a_lone_safetensors_upload_keeps_its_normalization(tmp_path):
    """Uploaded without its .json card, our file still carries the mean/std it was trained with."""
    from resnet.weights import embedded_card

    model = build_model().eval()
    card = make_card(model, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), test_acc=0.5)
    path = save_weights(model, tmp_path / "ours.safetensors", card)
    loaded = load_weights(path.read_bytes(), name="ours.safetensors")
    loaded, loaded_card = loaded.net, loaded.card
    assert loaded_card["mean"] == [0.1, 0.2, 0.3]
    assert loaded_card["std"] == [0.4, 0.5, 0.6]
    assert "test_acc" not in embedded_card(path.read_bytes())  # only preprocessing and architecture travel inside
    assert embedded_card(b"PK\x03\x04 not safetensors") is None


@pytest.mark.parametrize(("change", "message"), [
    ({"blocks": 5}, "'blocks' must be a list of 4"),
    ({"dropout": "x"}, "'dropout' must be a number"),
    ({"classes": ["a"]}, "names 1 classes but the weights have 10"),
])
def test_a_card_with_wrong_fields_is_refused_clearly(tmp_path, change, message):
    model = build_model().eval()
    path = save_weights(model, tmp_path / "w.safetensors", make_card(model))
    card = {**json.loads(path.with_suffix(".json").read_text()), **change}
    with pytest.raises(WeightsError, match=message):
        load_weights(path, card=card)


def test_a_safetensors_header_whose_length_starts_like_a_pickle_still_loads(tmp_path):
    """The header length is little-endian: one ending in the byte 0x80 makes the file start as a pickle stream does."""
    torch.manual_seed(0)
    model = build_model().eval()
    path = tmp_path / "w.safetensors"
    for pad in range(256):  # the class names travel in the header: each character lengthens it by one byte
        classes = ["a" * (pad + 1), *(f"class{i}" for i in range(1, 10))]
        save_weights(model, path, make_card(model, classes=classes))
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_weights(path.read_bytes()).classes == classes  # the header alone, without the .json card beside it


# ---- files whose keys or shapes alone would size a huge network: refused before anything is built ----------
def state_with(**changes) -> dict:
    state = {key: value.contiguous() for key, value in build_model().state_dict().items()}
    return {**state, **changes}


@pytest.mark.parametrize(("state", "words"), [
    (state_with(**{"layer1.100000.conv1.weight": torch.zeros(0)}), ["100001 blocks in a stage", "at most 8"]),
    (state_with(**{"linear.weight": torch.zeros(10**8, 0)}), ["shape mismatch for linear.weight", "(100000000, 0)"]),
    (state_with(**{"linear.weight": torch.zeros(())}), ["shape mismatch for linear.weight"]),
    (state_with(**{"linear.weight": torch.zeros(10, 999)}), ["shape mismatch for linear.weight"]),
], ids=["block-index", "class-count", "scalar", "width"])
def test_keys_and_shapes_that_would_size_a_huge_network_are_refused_first(monkeypatch, state, words):
    import resnet.weights as weights_module

    monkeypatch.setattr(weights_module, "build_model", lambda *a, **k: pytest.fail("built a network for refused weights"))
    assert_refused(safetensors_save(state), *words)


def test_weights_holding_nan_or_inf_are_refused_by_name():
    assert_refused(safetensors_save(state_with(**{"layer2.0.bn1.running_var": torch.full((128,), float("inf"))})),
                   "layer2.0.bn1.running_var", "NaN or infinite")


def test_weights_that_overflow_their_storage_dtype_are_not_written(tmp_path):
    model = build_model().eval()
    model.layer3[0].bn2.running_var.fill_(1e6)  # past float16's 65504
    with pytest.raises(WeightsError, match="layer3.0.bn2.running_var holds values that are not finite in float16"):
        save_weights(model, tmp_path / "w.safetensors", make_card(model), dtype=torch.float16)
    assert not (tmp_path / "w.safetensors").exists()
    assert load_weights(save_weights(model, tmp_path / "w.safetensors", make_card(model), dtype=torch.bfloat16)).net
