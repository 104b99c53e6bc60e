"""The one place that reads a `ModelConfig` and assembles the network and its criterion."""

from __future__ import annotations

from models.backbone import EfficientNetLite0, SwinTransformer, load_pretrained_lite0
from models.config import PRESETS, LossConfig, ModelConfig
from models.decoder import PromptDecoder
from models.detector import UniSpector
from models.losses import SetCriterion
from models.matcher import HungarianMatcher
from models.pixel_encoder import PixelEncoder
from models.pqs import PromptQuerySelector
from models.sspe import SSPE


def build_backbone(cfg: ModelConfig, pretrained: bool):
    if cfg.backbone == "efficientnet_lite0":
        net = EfficientNetLite0()
        if pretrained:
            load_pretrained_lite0(net)
        net.freeze(cfg.freeze_backbone_blocks)
        return net
    return SwinTransformer(cfg.swin_embed_dim, cfg.swin_depths, cfg.swin_heads, cfg.swin_window)


def build_model(cfg: ModelConfig | str = "small", pretrained: bool | None = None) -> UniSpector:
    """Build UniSpector from a config or preset name.

    `pretrained` defaults to `cfg.pretrained`; pass False when a checkpoint brings the weights.
    """
    cfg = PRESETS[cfg] if isinstance(cfg, str) else cfg
    backbone = build_backbone(cfg, cfg.pretrained if pretrained is None else pretrained)
    levels = {s: c for s, c in backbone.out_channels.items()}
    d = cfg.embed_dim
    pixel = PixelEncoder(
        levels,
        d,
        cfg.num_heads,
        cfg.ffn_dim,
        cfg.num_encoder_layers,
        cfg.token_strides,
        cfg.prompt_token_stride,
        cfg.mask_stride,
        cfg.image_size,
        cfg.dropout,
    )
    sspe = SSPE(d, cfg.num_heads, cfg.ffn_dim, cfg.spectrum_bins, cfg.spectrum_crop, cfg.dropout)
    pqs = PromptQuerySelector(cfg.num_queries, cfg.gumbel_tau)
    decoder = PromptDecoder(d, cfg.num_heads, cfg.ffn_dim, cfg.num_decoder_layers, cfg.dropout)
    return UniSpector(
        backbone,
        pixel,
        sspe,
        pqs,
        decoder,
        cfg.in_norm_mean,
        cfg.in_norm_std,
        cfg.relevance_score_weight,
        cfg.relevance_scale,
        cfg.background_weight,
    )


def build_criterion(loss: LossConfig | None = None, cfg: ModelConfig | None = None) -> SetCriterion:
    loss, cfg = loss or LossConfig(), cfg or PRESETS["small"]
    matcher = HungarianMatcher(
        loss.cls, loss.l1, loss.giou, loss.bce, loss.dice, loss.focal_alpha, loss.focal_gamma
    )
    return SetCriterion(matcher, loss, cfg.token_strides, cfg.mask_stride)
