"""The one interface every inference backend implements, and what they share.

A backend runs the two network graphs and nothing else (STYLE item 7): `Predictor` owns the
preprocessing and postprocessing, so torch, ONNX Runtime and TensorRT differ only in the model call.

Graph contract (the same tensors as `models/export.py` exports):
- detector: images (B, 3, S, S) float32 RGB in [0, 1], prototypes (C, d) float32 ->
  pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cxcywh, pred_masks (B, Q, S/4, S/4) logits;
- prompt encoder: image (1, 3, S, S), boxes (R, 4) normalised xyxy, region_masks (R, S, S) in
  {0, 1} -> embeddings (R, d), unit length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from models.checkpoint import ModelFile

DEFAULT_SCORE_THRESHOLD = 0.5  # used when the model file records no calibrated threshold
DETECTOR_OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks")
GRAPH_DETECTOR = "detector"
GRAPH_PROMPT_ENCODER = "prompt_encoder"
GRAPH_FORMAT = "unispector-graph/1"  # bump when the graph inputs/outputs change
BACKEND_NAMES = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch")  # fastest first


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine; the message says why (shown to operators)."""


class ModelMismatch(ValueError):
    """An exported graph or engine belongs to another model (fingerprint) or build."""


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a model, from its file or from graph metadata."""

    fingerprint: str  # sha256 of config + weights (models/checkpoint.py)
    image_size: int  # S: square network input side
    embed_dim: int  # d: prototype width
    preset: str  # config preset the model started from
    mean: tuple[float, float, float]  # input normalisation inside the graph (informative)
    std: tuple[float, float, float]
    score_threshold: float  # calibrated default detection threshold
    num_queries: int  # Q
    mask_stride: int  # mask logits are (S / mask_stride) per side
    size_prior_sigma: float = 0.0  # exemplar-size prior of the postprocessing; 0: off
    mask_hull_min_fill: float = 1.0  # convex filling of compact masks (mask_hull.py); 1: off
    mask_score_weight: float = 0.0  # mask confidence in the score (mask_score.py); 0: off
    template_match_weight: float = 0.0  # exemplar-crop check (template_match.py); 0: off
    template_proposal_score: float = 0.0  # exemplar-matched proposals (template_proposals.py)
    proposal_gate_iou: float = 1.0  # ...for classes outlined below this (outline_gate.py); 1: all
    border_factor: float = 1.0  # exemplar-border prior (border_prior.py); 1: off
    prompt_views: int = 1  # flips each exemplar is encoded in, averaged (prompt_views.py)
    image_views: int = 1  # mirrorings each inspected image is scored in (view_fusion.py)

    @classmethod
    def from_model_file(cls, mf: ModelFile) -> ModelInfo:
        c = mf.config
        return cls(
            fingerprint=mf.fingerprint,
            image_size=c.image_size,
            embed_dim=c.embed_dim,
            preset=c.preset,
            mean=tuple(c.in_norm_mean),
            std=tuple(c.in_norm_std),
            score_threshold=float(mf.meta.get("score_threshold", DEFAULT_SCORE_THRESHOLD)),
            num_queries=c.num_queries,
            mask_stride=c.mask_stride,
            size_prior_sigma=c.size_prior_sigma,
            mask_hull_min_fill=c.mask_hull_min_fill,
            mask_score_weight=c.mask_score_weight,
            template_match_weight=c.template_match_weight,
            template_proposal_score=c.template_proposal_score,
            proposal_gate_iou=c.proposal_gate_iou,
            border_factor=c.border_factor,
            prompt_views=c.prompt_views,
            image_views=c.image_views,
        )

    def to_metadata(self, graph: str) -> dict[str, str]:
        """String key/values embedded in an exported graph (ONNX `metadata_props`)."""
        return {
            "format": GRAPH_FORMAT,
            "graph": graph,
            "fingerprint": self.fingerprint,
            "image_size": str(self.image_size),
            "embed_dim": str(self.embed_dim),
            "preset": self.preset,
            "normalisation": json.dumps({"mean": list(self.mean), "std": list(self.std)}),
            "score_threshold": repr(self.score_threshold),
            "num_queries": str(self.num_queries),
            "mask_stride": str(self.mask_stride),
            "size_prior_sigma": repr(self.size_prior_sigma),
            "mask_hull_min_fill": repr(self.mask_hull_min_fill),
            "mask_score_weight": repr(self.mask_score_weight),
            "template_match_weight": repr(self.template_match_weight),
            "template_proposal_score": repr(self.template_proposal_score),
            "proposal_gate_iou": repr(self.proposal_gate_iou),
            "border_factor": repr(self.border_factor),
            "prompt_views": str(self.prompt_views),
            "image_views": str(self.image_views),
            "input_range": "RGB float32 in [0, 1]; normalisation is inside the graph",
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "graph") -> ModelInfo:
        """Inverse of `to_metadata`; a graph without our metadata is refused."""
        if meta.get("format") != GRAPH_FORMAT:
            raise ModelMismatch(
                f"{source} carries no {GRAPH_FORMAT} metadata (format={meta.get('format')!r}); "
                "export it with scripts/export_onnx.py"
            )
        norm = json.loads(meta["normalisation"])
        return cls(
            fingerprint=meta["fingerprint"],
            image_size=int(meta["image_size"]),
            embed_dim=int(meta["embed_dim"]),
            preset=meta["preset"],
            mean=tuple(norm["mean"]),
            std=tuple(norm["std"]),
            score_threshold=float(meta["score_threshold"]),
            num_queries=int(meta["num_queries"]),
            mask_stride=int(meta["mask_stride"]),
            size_prior_sigma=float(meta.get("size_prior_sigma", "0.0")),  # older graphs: off
            mask_hull_min_fill=float(meta.get("mask_hull_min_fill", "1.0")),  # older graphs: off
            mask_score_weight=float(meta.get("mask_score_weight", "0.0")),  # older graphs: off
            template_match_weight=float(meta.get("template_match_weight", "0.0")),  # older: off
            template_proposal_score=float(meta.get("template_proposal_score", "0.0")),  # older: off
            proposal_gate_iou=float(meta.get("proposal_gate_iou", "1.0")),  # older: ungated
            border_factor=float(meta.get("border_factor", "1.0")),  # older graphs: off
            prompt_views=int(meta.get("prompt_views", "1")),  # older graphs: one view
            image_views=int(meta.get("image_views", "1")),  # older graphs: as given only
        )


def check_fingerprint(actual: str, expected: str | None, what: str) -> None:
    """Refuse `what` (a graph, an engine) made from another model than the expected one."""
    if expected is not None and actual != expected:
        raise ModelMismatch(
            f"{what} was made from model {actual[:12]}..., but model {expected[:12]}... is "
            "expected (e.g. by the prompt store); embeddings and prototypes of different models "
            "must never mix. Re-export it from the right model file."
        )


def check_graph_metadata(
    meta: dict[str, str], graph: str, expected: str | None, what: str
) -> ModelInfo:
    """ModelInfo of a graph after checking its kind and fingerprint."""
    info = ModelInfo.from_metadata(meta, what)
    if meta.get("graph") != graph:
        raise ModelMismatch(f"{what} is a {meta.get('graph')!r} graph, expected {graph!r}")
    check_fingerprint(info.fingerprint, expected, what)
    return info


@runtime_checkable
class InferenceBackend(Protocol):
    """One way to run the two graphs. Implementations are safe to call from several threads."""

    name: str  # one of BACKEND_NAMES; a metric label
    device: str  # what it runs on, e.g. "cpu" or the GPU name; a metric label
    info: ModelInfo

    def detect_raw(self, batch: np.ndarray, prototypes: np.ndarray) -> dict[str, np.ndarray]:
        """batch (B, 3, S, S) float32 in [0, 1]; prototypes (C, d) float32 ->
        {pred_logits (B, Q, C), pred_boxes (B, Q, 4), pred_masks (B, Q, S/4, S/4)} float32."""
        ...

    def encode_raw(self, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """image (1, 3, S, S) float32; boxes (R, 4) normalised xyxy; masks (R, S, S) float32 in
        {0, 1}; R >= 1 -> (R, d) float32 unit embeddings."""
        ...
