"""UniSpector: the assembled network (paper Fig. 3 and 9).

Two entry points, as deployed (Appendix C.3):
- `encode_prompts(images, boxes, region_masks, batch_index)` -> exemplar embeddings e (R, d), run
  once per exemplar when a QA engineer registers it;
- `forward(images, prototypes)` -> detections for prototypes (C, d) or per-image (B, C, d).

Images enter as float RGB in [0, 1], (B, 3, S, S) with S = config.image_size (letterboxed by the
caller); the normalisation constants are buffers, so exported graphs take the same input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.decoder import PromptDecoder
from models.pixel_encoder import PixelEncoder, PixelFeatures
from models.pqs import PromptQuerySelector
from models.sspe import SSPE


class UniSpector(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        pixel_encoder: PixelEncoder,
        prompt_encoder: SSPE,
        query_selector: PromptQuerySelector,
        decoder: PromptDecoder,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        relevance_weight: float = 0.0,
        relevance_scale: float = 10.0,
    ) -> None:
        super().__init__()
        self.relevance_weight, self.relevance_scale = relevance_weight, relevance_scale
        self.backbone = backbone
        self.pixel_encoder = pixel_encoder
        self.prompt_encoder = prompt_encoder
        self.query_selector = query_selector
        self.decoder = decoder
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def encode_image(self, images: Tensor) -> PixelFeatures:
        """(B, 3, S, S) in [0, 1] -> pixel features (tokens F, prompt map, mask map)."""
        return self.pixel_encoder(self.backbone.forward_features(self.normalise(images)))

    def encode_prompts(
        self,
        images: Tensor,
        boxes: Tensor,
        region_masks: Tensor,
        batch_index: Tensor,
        feats: PixelFeatures | None = None,
    ) -> Tensor:
        """Exemplar embeddings (R, d), unit length.

        images (B, 3, S, S); boxes (R, 4) normalised xyxy; region_masks (R, S, S) in {0, 1} (the
        filled box when the engineer drew only a box); batch_index (R,) image of each region.
        """
        feats = feats if feats is not None else self.encode_image(images)
        return self.prompt_encoder(
            self.normalise(images), feats.prompt_map, boxes, region_masks, batch_index
        )

    def detect(self, feats: PixelFeatures, prototypes: Tensor) -> dict:
        """Decode detections from already-encoded image features; prototypes (C, d) or (B, C, d)."""
        b = feats.tokens.shape[0]
        if prototypes.dim() == 2:
            prototypes = prototypes[None].expand(b, -1, -1)
        sel = self.query_selector(feats.tokens, prototypes)
        anchors = feats.token_anchors[sel.index]  # (B, K, 4)
        out = self.decoder(
            sel.queries, anchors, prototypes, feats.tokens, feats.token_pos, feats.mask_map
        )
        out["relevance"] = sel.relevance
        out["token_class_cos"] = sel.token_class_cos
        if not self.training and self.relevance_weight > 0:
            out["pred_logits"] = self.fused_logits(
                out["pred_logits"], sel.token_class_cos, sel.index
            )
        return out

    def fused_logits(self, logits: Tensor, token_cos: Tensor, index: Tensor) -> Tensor:
        """Inference scores: the decoder's class probability blended (geometric mean, weight w) with
        the probability that the query's source token lies on the prompted class, read from the
        token relevance the token loss trains: sigmoid((cos - 0.5) * scale).

        Why: on classes held out of training the token relevance ranks detections far better than
        the decoder's class head (magnetic tiles, split 42 / 82: unseen AP50 box 6.6 -> 10.9 and
        1.3 -> 10.1; a seen class 31.5 -> 44.1), because it is a direct prompt-to-feature cosine
        while the class head needs many more steps than a CPU budget gives. Returned as logits so
        every backend and the postprocessing stay unchanged.
        """
        c = token_cos.shape[-1]
        cos = token_cos.gather(1, index[..., None].expand(-1, -1, c))  # (B, K, C)
        log_tok = F.logsigmoid((cos - 0.5) * self.relevance_scale)
        log_dec = F.logsigmoid(logits)
        w = self.relevance_weight
        log_p = (1 - w) * log_dec + w * log_tok
        p = torch.exp(log_p).clamp(max=1 - 1e-6)  # p < 1 keeps log(1 - p) finite
        return log_p - torch.log(1 - p)  # logit(p); ops every exporter supports

    def forward(self, images: Tensor, prototypes: Tensor) -> dict:
        """images (B, 3, S, S) in [0, 1]; prototypes (C, d) shared or (B, C, d) per image.

        Returns pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cxcywh of the S x S input,
        pred_masks (B, Q, S/4, S/4) logits, aux (earlier decoder layers), relevance (B, N) and
        token_class_cos (B, N, C).
        """
        return self.detect(self.encode_image(images), prototypes)
