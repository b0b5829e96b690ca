"""The published architecture: shapes, parameter counts and where the dropout sits."""

import pytest
import torch
import torch.nn.functional as F

from resnet.model import BasicBlock, ResNet, build_model, count_parameters


@pytest.mark.parametrize(
    ("blocks", "parameters"),
    [((1, 1, 1, 1), 4_903_242), ((2, 2, 2, 2), 11_173_962), ((3, 3, 3, 3), 17_444_682)],
)
def test_parameter_count_and_output_shape(blocks, parameters):
    model = build_model(blocks).eval()
    assert count_parameters(model) == parameters
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == list(blocks)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_features_are_the_last_stage_map_and_classify_completes_forward():
    model = build_model().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.features(x)
        assert features.shape == (3, 512, 4, 4)
        assert torch.equal(model.classify(features), model(x))


def test_stages_downsample_by_two_with_projection_shortcuts():
    model = build_model((2, 2, 2, 2))
    assert len(model.layer1[0].shortcut) == 0  # 64 -> 64, stride 1: identity
    for stage in (model.layer2, model.layer3, model.layer4):
        assert stage[0].conv1.stride == (2, 2)
        assert len(stage[0].shortcut) == 2  # 1x1 conv + BatchNorm
        assert len(stage[1].shortcut) == 0


def test_dropout_sits_after_the_residual_add_and_before_the_final_relu():
    torch.manual_seed(0)
    block = BasicBlock(64, 128, stride=2, dropout=0.5).train()
    calls, seen = [], {}

    def record(name):
        def hook(module, inputs, output):
            calls.append(name)
            seen[name] = (inputs[0], output)
        return hook

    for name in ("conv1", "bn1", "conv2", "bn2", "shortcut", "dropout"):
        getattr(block, name).register_forward_hook(record(name))
    out = block(torch.randn(4, 64, 8, 8))

    assert calls.index("dropout") > max(calls.index("bn2"), calls.index("shortcut"))
    dropout_in, dropout_out = seen["dropout"]
    # Its input is the residual sum (still signed: before the ReLU) ...
    torch.testing.assert_close(dropout_in, seen["bn2"][1] + seen["shortcut"][1], rtol=0, atol=0)
    assert (dropout_in < 0).any()
    # ... it is active in training (zeros where the sum was not zero) ...
    assert ((dropout_out == 0) & (dropout_in != 0)).any()
    # ... and the block's output is the ReLU of what it returns.
    assert torch.equal(out, F.relu(dropout_out))


def test_dropout_is_inert_in_eval_mode():
    model = build_model(dropout=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"blocks": (1, 1, 1)}, "blocks must be four positive integers"),
    ({"blocks": (1, 0, 1, 1)}, "blocks must be four positive integers"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
])
def test_invalid_architecture_is_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ResNet(**kwargs)


def test_dropout_near_zero_and_one_falls_back_to_torch():
    from resnet.model import Dropout

    x = torch.ones(4, 8, 6, 6)
    assert (Dropout(1e-6).train()(x) != 0).float().mean() > 0.99  # never the all-zero mask of a wrapped int16 compare
    out = Dropout(1 - 1e-7).train()(x)  # keep probability rounds to 0 steps: torch's mask, no division by zero
    assert torch.isfinite(out).all()
    kept = (Dropout(0.3).train()(torch.ones(64, 64, 16, 16)) != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.01
