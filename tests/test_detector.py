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


def _outputs(
    weight: float, images: torch.Tensor, protos: torch.Tensor, background: float = 0.0
) -> dict:
    from dataclasses import replace

    torch.manual_seed(0)
    cfg = replace(TINY, relevance_score_weight=weight, background_weight=background)
    net = build_model(cfg).eval()
    with torch.no_grad():
        feats = net.encode_image(images)
        sel = net.query_selector(feats.tokens, protos[None].expand(len(images), -1, -1))
        chosen = feats.tokens.gather(1, sel.index[..., None].expand(-1, -1, feats.tokens.shape[-1]))
        return {
            **net(images, protos),
            "index": sel.index,
            "chosen": chosen,
            "background": net.image_background(images, feats),
        }


def test_inference_score_blends_decoder_and_token_relevance():
    """Weight 0 scores by the decoder's class head alone, weight 1 by the prompt relevance of each
    query's source token; in between, the geometric mean of the two probabilities."""
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    protos = F.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(2)), dim=-1)
    dec, tok, half = (_outputs(w, images, protos) for w in (0.0, 1.0, 0.5))
    cos = tok["token_class_cos"].gather(1, tok["index"][..., None].expand(-1, -1, 3))
    p_tok = torch.sigmoid((cos - 0.5) * TINY.relevance_scale)
    p_dec = dec["pred_logits"].sigmoid()
    assert torch.allclose(tok["pred_logits"].sigmoid(), p_tok, atol=1e-5)
    assert torch.allclose(half["pred_logits"].sigmoid(), (p_dec * p_tok).sqrt(), atol=1e-5)
    assert torch.equal(dec["pred_boxes"], tok["pred_boxes"])  # scores change, detections do not


def test_background_suppression_discounts_tokens_that_look_like_their_own_image():
    """With background weight 1 each score is multiplied by 1 - p_bg, p_bg being the probability
    that the query's source token matches its own image's background embedding; the boxes and
    masks stay as they were."""
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(6))
    protos = F.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(7)), dim=-1)
    off, on = (_outputs(1.0, images, protos, background=b) for b in (0.0, 1.0))
    bg_cos = F.cosine_similarity(off["chosen"], off["background"][:, None], dim=-1)  # (B, K)
    p_bg = torch.sigmoid((bg_cos - 0.5) * TINY.relevance_scale)[..., None]
    expected = off["pred_logits"].sigmoid() * (1 - p_bg)
    assert torch.allclose(on["pred_logits"].sigmoid(), expected, atol=1e-5)
    assert (on["pred_logits"] <= off["pred_logits"]).all()  # never raises a score
    assert torch.equal(on["pred_boxes"], off["pred_boxes"])
    assert torch.equal(on["pred_masks"], off["pred_masks"])


def test_the_background_embedding_is_the_whole_image_as_a_prompt_region():
    """The in-graph background (DFT spectrum) equals encoding the whole input image as an
    exemplar through the prompt encoder (torch.fft spectrum), up to float32 rounding."""
    torch.manual_seed(0)
    net = build_model(TINY).eval()
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        feats = net.encode_image(images)
        bg = net.image_background(images, feats)
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
        ref = net.encode_prompts(images, boxes, torch.ones(2, 128, 128), torch.arange(2), feats)
    assert torch.allclose(bg, ref, atol=1e-4)


def test_training_mode_keeps_the_decoder_logits_for_the_loss():
    """The blend is an inference score: the loss trains the decoder's class head whatever the
    weight (same weights, same Gumbel noise -> same training logits)."""
    from dataclasses import replace

    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    protos = F.normalize(torch.randn(2, 64, generator=torch.Generator().manual_seed(4)), dim=-1)
    logits = []
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        net = build_model(replace(TINY, relevance_score_weight=weight)).train()
        torch.manual_seed(5)
        logits.append(net(images, protos)["pred_logits"])
    assert torch.equal(logits[0], logits[1])


def test_a_model_file_older_than_the_blend_loads_unchanged(tmp_path):
    """Files written before `relevance_score_weight` existed keep their fingerprint and keep
    scoring by the decoder alone, the way they were calibrated."""
    from models.checkpoint import fingerprint

    torch.manual_seed(0)
    net = build_model(TINY).eval()
    new_fields = ("relevance_score_weight", "background_weight")
    cfg = {k: v for k, v in TINY.to_dict().items() if k not in new_fields}
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    fp = fingerprint(cfg, state)  # as the file was written then: over the config without the field
    path = tmp_path / "old.pt"
    torch.save(
        {
            "format": "unispector-model/1",
            "config": cfg,
            "state_dict": state,
            "fingerprint": fp,
            "meta": {},
        },
        path,
    )
    loaded = load_model(path)
    assert loaded.fingerprint == fp
    assert loaded.config.relevance_score_weight == 0.0 and loaded.model.relevance_weight == 0.0
    assert loaded.config.background_weight == 0.0 and loaded.model.background_weight == 0.0


def test_switching_a_files_scoring_drops_its_stale_threshold(tmp_path):
    from dataclasses import replace

    from models.checkpoint import set_scoring

    torch.manual_seed(0)
    cfg = replace(TINY, relevance_score_weight=0.0, background_weight=0.0)
    path = tmp_path / "m.pt"
    old_fp = save_model(build_model(cfg).eval(), cfg, path, {"score_threshold": 0.4, "note": "x"})
    new_fp = set_scoring(path, relevance_score_weight=1.0, background_weight=1.0)
    loaded = load_model(path)  # the fingerprint check passes
    assert loaded.fingerprint == new_fp != old_fp
    assert loaded.model.relevance_weight == 1.0 and loaded.model.background_weight == 1.0
    assert "score_threshold" not in loaded.meta and loaded.meta["note"] == "x"


def test_only_scoring_fields_can_be_switched_in_place(tmp_path):
    """Changing anything else would silently mismatch the stored weights: refused, file intact."""
    from models.checkpoint import set_scoring

    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_model(build_model(TINY).eval(), TINY, path, {"score_threshold": 0.4})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not scoring fields"):
        set_scoring(path, embed_dim=32)
    assert path.read_bytes() == before
