"""Typed model configuration and the two presets.

Only `models/build.py` reads a config; modules receive built parts. The config is saved inside every
checkpoint so evaluation, export and the service rebuild the network from the file alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from models.prompt_views import VIEW_COUNTS
from models.view_fusion import VIEW_COUNTS as IMAGE_VIEW_COUNTS

# Values of fields added after model files were first written, for files that lack them: such a
# file keeps behaving as it did when it was trained and calibrated.
LEGACY_DEFAULTS: dict = {
    "relevance_score_weight": 0.0,
    "background_weight": 0.0,
    "size_prior_sigma": 0.0,
    "mask_hull_min_fill": 1.0,
    "mask_score_weight": 0.0,
    "template_match_weight": 0.0,
    "template_proposal_score": 0.0,
    "proposal_gate_iou": 1.0,
    "border_factor": 1.0,
    "prompt_views": 1,
    "image_views": 1,
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the UniSpector network (paper sections 3 and C.1)."""

    preset: str = "small"  # name of the preset this config started from
    backbone: str = "efficientnet_lite0"  # "efficientnet_lite0" (CPU default) or "swin_t" (paper)
    pretrained: bool = True  # start the backbone from ImageNet weights where a package ships them
    image_size: int = 320  # square network input (letterboxed); a multiple of 32
    in_norm_mean: tuple[float, float, float] = (
        0.5,
        0.5,
        0.5,
    )  # input normalisation (Lite: [-1, 1])
    in_norm_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    embed_dim: int = 128  # d: width of vision tokens, queries, prompt embeddings and prototypes
    num_heads: int = 4  # attention heads in encoder, decoder and prompt encoder
    ffn_dim: int = 512  # hidden width of every transformer feed-forward block
    num_encoder_layers: int = 1  # transformer layers over the vision tokens F
    token_strides: tuple[int, ...] = (16, 32)  # feature levels whose cells become vision tokens
    mask_stride: int = 4  # resolution of the per-pixel mask embedding (and of mask logits)
    num_decoder_layers: int = 3  # paper: 9
    num_queries: int = 50  # object queries chosen by PQS (paper: 300)
    dropout: float = 0.0  # dropout inside attention / FFN blocks
    gumbel_tau: float = 1.0  # PQS Gumbel-softmax temperature (paper C.4: 1.0)
    relevance_score_weight: float = 1.0  # inference score: decoder prob^(1-w) * token prob^w
    relevance_scale: float = 10.0  # token prob = sigmoid((cos - 0.5) * scale); = token_scale
    background_weight: float = 1.0  # inference score *= (1 - token's prob of matching its image)^b
    size_prior_sigma: float = 0.7  # exemplar-size prior width in log size (size_prior.py); 0: off
    mask_hull_min_fill: float = 0.3  # a mask filling this share of its hull gets it (mask_hull.py)
    mask_score_weight: float = 1.0  # inference score *= mask confidence^w (mask_score.py); 0: off
    template_match_weight: float = 2.0  # score *= 0.25 + 0.75 NCC^w (template_match.py); 0: off
    template_proposal_score: float = 0.2  # exemplar-matched regions score this x NCC; 0: off
    proposal_gate_iou: float = 0.4  # ...for classes outlined below this (outline_gate.py); 1: all
    border_factor: float = 0.5  # score *= this at the border for interior classes; 1: off
    prompt_views: int = 4  # each exemplar encoded in 1, 2, 4 or 8 flips, averaged (prompt_views.py)
    image_views: int = 4  # inspected image scored in 1, 2 or 4 mirrorings, agreed (view_fusion.py)
    spectrum_bins: int = 256  # J radial frequency bins (paper C.4: 256)
    spectrum_crop: int = 64  # side of the square resampled region before the FFT
    prompt_token_stride: int = 8  # feature level the spatial prompt path attends over
    freeze_backbone_blocks: int = 0  # EfficientNet blocks (0-16) kept frozen, stem included if > 0
    swin_embed_dim: int = 96  # Swin-T: channel width of the first stage
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)  # Swin-T: blocks per stage
    swin_heads: tuple[int, ...] = (3, 6, 12, 24)  # Swin-T: heads per stage
    swin_window: int = 7  # Swin-T: attention window side

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are refused so a stale file fails loudly."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; is the file newer?")
        data = {**LEGACY_DEFAULTS, **data}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")
        if not 0.0 <= self.relevance_score_weight <= 1.0:
            raise ValueError("relevance_score_weight must lie in [0, 1]")
        if not 0.0 <= self.background_weight <= 1.0:
            raise ValueError("background_weight must lie in [0, 1]")
        if not 0.0 <= self.size_prior_sigma <= 10.0:
            raise ValueError("size_prior_sigma must lie in [0, 10] (0 turns the prior off)")
        if not 0.0 <= self.mask_hull_min_fill <= 1.0:
            raise ValueError("mask_hull_min_fill must lie in [0, 1] (1 turns the hull off)")
        if not 0.0 <= self.mask_score_weight <= 4.0:
            raise ValueError("mask_score_weight must lie in [0, 4] (0 turns it off)")
        if not 0.0 <= self.template_match_weight <= 4.0:
            raise ValueError("template_match_weight must lie in [0, 4] (0 turns it off)")
        if not 0.0 <= self.template_proposal_score <= 1.0:
            raise ValueError("template_proposal_score must lie in [0, 1] (0 turns it off)")
        if not 0.0 <= self.proposal_gate_iou <= 1.0:
            raise ValueError("proposal_gate_iou must lie in [0, 1] (1: proposals for every class)")
        if not 0.0 < self.border_factor <= 1.0:
            raise ValueError("border_factor must lie in (0, 1] (1 turns the prior off)")
        if self.prompt_views not in VIEW_COUNTS:
            raise ValueError(f"prompt_views must be one of {VIEW_COUNTS} (1 turns the views off)")
        if self.image_views not in IMAGE_VIEW_COUNTS:
            raise ValueError(f"image_views must be one of {IMAGE_VIEW_COUNTS} (1 turns them off)")
        if self.backbone not in ("efficientnet_lite0", "swin_t"):
            raise ValueError(f"unknown backbone {self.backbone!r}")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training objective (paper C.2, Eq. 7) and the matcher's costs."""

    cls: float = 4.0
    l1: float = 5.0
    giou: float = 2.0
    bce: float = 5.0
    dice: float = 5.0
    cpe: float = 1.0
    token: float = 2.0  # token relevance loss (ours, see losses.token_targets); 0 disables
    token_scale: float = 10.0  # cosine -> logit scale of the token relevance loss
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cpe_scale: float = 30.0  # s in Eq. 6
    cpe_margin: float = 0.5  # m in Eq. 6
    aux: bool = True  # deep supervision on every decoder layer


PRESETS: dict[str, ModelConfig] = {
    # The whole ImageNet backbone frozen: 1.6 instead of 2.5 s per step on 2 CPU cores, and better
    # on held-out classes (magnetic tiles, splits 42/82) than freezing the first 3 blocks only.
    "small": ModelConfig(freeze_backbone_blocks=16),
    "paper": ModelConfig(
        preset="paper",
        backbone="swin_t",
        pretrained=False,
        image_size=736,  # 720 in the paper, rounded up to a multiple of 32
        in_norm_mean=(0.485, 0.456, 0.406),
        in_norm_std=(0.229, 0.224, 0.225),
        embed_dim=256,
        num_heads=8,
        ffn_dim=2048,
        num_encoder_layers=6,
        token_strides=(8, 16, 32),
        mask_stride=4,
        num_decoder_layers=9,
        num_queries=300,
        prompt_token_stride=8,
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A preset with optional field overrides, e.g. `get_preset("small", num_queries=30)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name].to_dict(), **overrides})
