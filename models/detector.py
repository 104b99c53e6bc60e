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
        background_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.relevance_weight, self.relevance_scale = relevance_weight, relevance_scale
        self.background_weight = background_weight
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

    def image_background(self, images: Tensor, feats: PixelFeatures) -> Tensor:
        """(B, d): each whole input image encoded as one prompt region, i.e. what the ordinary
        surface of that image looks like in prompt space (a defect covers a small part of it)."""
        return self.prompt_encoder.whole_image(self.normalise(images), feats.prompt_map)

    def detect(
        self, feats: PixelFeatures, prototypes: Tensor, background: Tensor | None = None
    ) -> dict:
        """Decode detections from already-encoded image features; prototypes (C, d) or (B, C, d);
        `background` (B, d) from `image_background`, used by the inference score only."""
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
        if not self.training:
            out["pred_logits"] = self.inference_logits(
                out["pred_logits"], sel.token_class_cos, sel.index, feats.tokens, background
            )
        return out

    def inference_logits(
        self,
        logits: Tensor,
        token_cos: Tensor,
        index: Tensor,
        tokens: Tensor,
        background: Tensor | None,
    ) -> Tensor:
        """Inference scores as logits (so every backend and the postprocessing stay unchanged):

            p = p_dec^(1 - w) * p_tok^w * (1 - p_bg)^b

        - p_dec: the decoder's class probability.
        - p_tok = sigmoid((cos(token, prototype) - 0.5) * scale): the probability, trained by the
          token loss, that the query's source token lies on the prompted class. On classes held
          out of training it ranks detections far better than the class head (magnetic tiles,
          splits 42 / 82: unseen AP50 box 6.6 -> 10.9 and 1.3 -> 10.1), because it is a direct
          prompt-to-feature cosine while the class head needs more steps than a CPU budget gives.
        - p_bg: the same probability against the image's own background embedding. A token that
          matches the prompt only as well as it matches the rest of its image is ordinary
          surface, not a defect; this is what silences texture on defect-free tiles.
        With w = b = 0 (files written before these fields) the decoder logits pass unchanged.
        """
        w, bw = self.relevance_weight, self.background_weight
        use_bg = background is not None and bw > 0
        if w == 0 and not use_bg:
            return logits
        log_p = F.logsigmoid(logits)
        if w > 0:
            c = token_cos.shape[-1]
            cos = token_cos.gather(1, index[..., None].expand(-1, -1, c))  # (B, K, C)
            log_tok = F.logsigmoid((cos - 0.5) * self.relevance_scale)
            log_p = (1 - w) * log_p + w * log_tok
        if use_bg:
            chosen = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
            bg_cos = F.normalize(chosen, dim=-1) @ F.normalize(background, dim=-1)[..., None]
            log_p = log_p + bw * F.logsigmoid(-(bg_cos - 0.5) * self.relevance_scale)
        p = torch.exp(log_p).clamp(max=1 - 1e-6)  # p < 1 keeps log(1 - p) finite
        return log_p - torch.log(1 - p)  # logit(p); ops every exporter supports

    def forward(self, images: Tensor, prototypes: Tensor) -> dict:
        """images (B, 3, S, S) in [0, 1]; prototypes (C, d) shared or (B, C, d) per image.

        Returns pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cxcywh of the S x S input,
        pred_masks (B, Q, S/4, S/4) logits, aux (earlier decoder layers), relevance (B, N) and
        token_class_cos (B, N, C).
        """
        feats = self.encode_image(images)
        background = None
        if not self.training and self.background_weight > 0:
            background = self.image_background(images, feats)
        return self.detect(feats, prototypes, background)
