"""The assembled network: any number of classes with the same weights, documented shapes, and
model files that rebuild exactly."""

import pytest
import torch
import torch.nn.functional as F

from models.build import build_model
from models.checkpoint import load_model, save_model
from models.config import PRESETS, ModelConfig, get_preset
from tests.tiny import TINY_RANDOM

TINY = TINY_RANDOM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY).eval()


def region_inputs(boxes: torch.Tensor, size: int) -> torch.Tensor:
    masks = torch.zeros(len(boxes), size, size)
    for i, (x0, y0, x1, y1) in enumerate((boxes * size).long().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    return masks


@pytest.mark.parametrize("num_classes", [1, 3, 17])
def test_detector_runs_for_any_number_of_classes(model, num_classes):
    images = torch.rand(2, 3, 128, 128)
    protos = F.normalize(torch.randn(num_classes, 64), dim=-1)
    with torch.no_grad():
        out = model(images, protos)
    q = TINY.num_queries
    assert out["pred_logits"].shape == (2, q, num_classes)
    assert out["pred_boxes"].shape == (2, q, 4)
    assert out["pred_masks"].shape == (2, q, 32, 32)
    assert all(out[k].dtype == torch.float32 for k in ("pred_logits", "pred_boxes", "pred_masks"))
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert len(out["aux"]) == TINY.num_decoder_layers - 1


def test_class_order_does_not_change_scores(model):
    """Prototypes are an unordered set: permuting them permutes the logits and nothing else."""
    images = torch.rand(1, 3, 128, 128)
    protos = F.normalize(torch.randn(5, 64), dim=-1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        a = model(images, protos)["pred_logits"]
        b = model(images, protos[perm])["pred_logits"]
    assert torch.allclose(a[..., perm], b, atol=1e-5)


def test_prompt_embeddings_are_unit_vectors_per_region(model):
    images = torch.rand(2, 3, 128, 128)
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 0.05, 0.05]])
    with torch.no_grad():
        emb = model.encode_prompts(
            images, boxes, region_inputs(boxes, 128), torch.tensor([0, 1, 1])
        )
    assert emb.shape == (3, 64)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_model_file_round_trip_and_fingerprint(model, tmp_path):
    path = tmp_path / "m.pt"
    fp = save_model(model, TINY, path, {"note": "test"})
    loaded = load_model(path)
    assert loaded.fingerprint == fp and loaded.config == TINY and loaded.meta["note"] == "test"
    images, protos = torch.rand(1, 3, 128, 128), F.normalize(torch.randn(2, 64), dim=-1)
    with torch.no_grad():
        assert torch.equal(
            model(images, protos)["pred_logits"], loaded.model(images, protos)["pred_logits"]
        )


def test_corrupt_model_file_is_refused_with_a_clear_error(model, tmp_path):
    path = tmp_path / "m.pt"
    save_model(model, TINY, path)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError, match="corrupt"):
        load_model(path)


def test_config_round_trip_and_validation():
    for cfg in PRESETS.values():
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="multiple of 32"):
        get_preset("small", image_size=300)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"bogus": 1})


def test_paper_preset_matches_the_paper():
    cfg = PRESETS["paper"]
    assert (cfg.backbone, cfg.num_decoder_layers, cfg.num_heads, cfg.num_queries) == (
        "swin_t",
        9,
        8,
        300,
    )
    assert cfg.spectrum_bins == 256 and cfg.gumbel_tau == 1.0


@pytest.mark.slow
def test_paper_preset_builds_and_runs_a_forward_pass():
    torch.manual_seed(0)
    cfg = get_preset("paper", image_size=224, num_encoder_layers=1, num_decoder_layers=2)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 224), F.normalize(torch.randn(4, 256), dim=-1))
    assert out["pred_logits"].shape == (1, 300, 4)
