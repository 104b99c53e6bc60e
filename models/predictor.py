"""The predictor: preprocess -> predict -> postprocess, with any inference backend.

It owns letterboxing and is stateless per request: `encode_prompts(image, regions)` gives exemplar
embeddings once, when an engineer registers them; `detect(images, prototypes)` runs per
inspection. Backends (models/runtime: PyTorch, ONNX Runtime, TensorRT) replace only the model call;
preprocessing and postprocessing here are shared by all of them, and each stage is timed.
`TorchPredictor` is the PyTorch reference path, kept for evaluation and training scripts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.border_prior import border_factors
from models.checkpoint import ModelFile, load_model
from models.postprocess import Detections, query_masks, select_queries
from models.preprocess import Letterbox, to_tensor_layout
from models.prompt_views import prompt_views
from models.runtime.base import DEFAULT_SCORE_THRESHOLD, InferenceBackend, ModelInfo
from models.runtime.select import (
    DEFAULT_MODEL_PATH,
    BackendChoice,
    RuntimeSettings,
    select_backend,
)
from models.runtime.torch_backend import TorchBackend
from models.template_match import ExemplarCrop, interior_classes, template_factors
from models.template_proposals import PROPOSAL_MARGIN, box_masks, match_regions
from models.view_fusion import fuse_with_origin, unview, unview_masks, view_images

__all__ = [
    "DEFAULT_MODEL_PATH",
    "DEFAULT_SCORE_THRESHOLD",
    "Predictor",
    "PromptRegion",
    "StageTimes",
    "TorchPredictor",
    "prototypes_from",
]


def _class_thresholds(
    score_threshold: float | np.ndarray, det: Detections, classes: int
) -> np.ndarray:
    """(C,) per-class thresholds from a scalar or per-class `score_threshold`."""
    n_cls = max(classes, int(det.class_index.max(initial=-1)) + 1, 1)
    return np.broadcast_to(np.asarray(score_threshold, dtype=np.float32), (n_cls,))


def _check_entries(name: str, values: Sequence | np.ndarray, classes: int) -> None:
    """A per-class argument must have one entry per class."""
    if len(values) != classes:
        raise ValueError(f"{name} has {len(values)} entries for {classes} classes")


def _ranked(det: Detections, scores: np.ndarray, kept: np.ndarray) -> Detections:
    """`det` rescored to `scores`, only the `kept` (bool per detection), ranked by score."""
    keep = np.nonzero(kept)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return Detections(
        class_index=det.class_index[keep],
        scores=scores[keep].astype(np.float32),
        boxes=det.boxes[keep],
        masks=None if det.masks is None else det.masks[keep],
    )


@dataclass(frozen=True)
class PromptRegion:
    """An annotated exemplar region in original image pixels."""

    box: np.ndarray  # (4,) x0, y0, x1, y1
    mask: np.ndarray | None = None  # (H, W) bool; None means the filled box


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent in each stage of one `detect` call."""

    preprocess: float
    predict: float
    postprocess: float


def prototypes_from(embeddings: np.ndarray) -> np.ndarray:
    """Class prototype: the re-normalised mean of its exemplar embeddings (paper 3.3)."""
    mean = np.asarray(embeddings, dtype=np.float64).mean(axis=0)
    return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)


def region_mask(lb: Letterbox, region: PromptRegion) -> np.ndarray:
    """(S, S) float32 {0, 1} network-input mask of a prompt region (its mask, or its filled box)."""
    if region.mask is not None:
        return (lb.mask(region.mask) > 0).astype(np.float32)
    m = np.zeros((lb.height, lb.width), dtype=bool)
    x0, y0, x1, y1 = np.round(region.box).astype(int)
    m[max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)] = True
    return (lb.mask(m) > 0).astype(np.float32)


class Predictor:
    """Shared pre/post-processing around one `InferenceBackend`; safe to share across threads."""

    def __init__(self, backend: InferenceBackend, choice: BackendChoice | None = None) -> None:
        self.backend = backend
        self.choice = choice  # how the backend was chosen, when `load` chose it

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        settings: RuntimeSettings | None = None,
        expected_fingerprint: str | None = None,
    ) -> Predictor:
        """The predictor on the backend `select_backend` picks for this machine and settings."""
        choice = select_backend(path, settings, expected_fingerprint)
        return cls(choice.backend, choice)

    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    @property
    def proposal_score(self) -> float:
        """The top score of exemplar-matched proposals (`models/template_proposals.py`): the
        file's `template_proposal_score`, kept below its calibrated threshold, so proposals never
        show at the default threshold (a model calibrated low gets proportionally lower ones)."""
        return min(self.info.template_proposal_score, PROPOSAL_MARGIN * self.info.score_threshold)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def embed_dim(self) -> int:
        return self.info.embed_dim

    @property
    def size(self) -> int:
        return self.info.image_size

    @property
    def score_threshold(self) -> float:
        return self.info.score_threshold

    def preprocess(self, images: list[np.ndarray]) -> tuple[list[Letterbox], np.ndarray]:
        """uint8 RGB images (H, W, 3) -> their letterboxes and the (B, 3, S, S) float32 batch."""
        boxes = [Letterbox.fit(im.shape[1], im.shape[0], self.size) for im in images]
        batch = np.stack(
            [to_tensor_layout(lb.image(im)) for lb, im in zip(boxes, images, strict=True)]
        )
        return boxes, batch

    def encode_prompts(self, image: np.ndarray, regions: list[PromptRegion]) -> np.ndarray:
        """(R, d) unit embeddings of regions of one uint8 RGB image (H, W, 3), each the
        re-normalised mean over the model's prompt views (`models/prompt_views.py`)."""
        if not regions:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        boxes = np.stack([np.asarray(r.box, dtype=np.float32) for r in regions])
        masks = [r.mask for r in regions]
        total = np.zeros((len(regions), self.embed_dim), dtype=np.float64)
        for view, view_boxes, view_masks in prompt_views(
            image, boxes, masks, self.info.prompt_views
        ):
            view_regions = [PromptRegion(b, m) for b, m in zip(view_boxes, view_masks, strict=True)]
            total += self._encode_view(view, view_regions)
        norms = np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)
        return (total / norms).astype(np.float32)

    def _encode_view(self, image: np.ndarray, regions: list[PromptRegion]) -> np.ndarray:
        """(R, d) unit embeddings of regions of one image as given (one encoder pass)."""
        (lb,), x = self.preprocess([image])
        boxes = lb.boxes_to_network(np.stack([r.box for r in regions]))
        masks = np.stack([region_mask(lb, r) for r in regions])
        return self.backend.encode_raw(x, boxes, masks)

    def release_unused_memory(self) -> None:
        """Let the backend hand back memory kept from batches bigger than those to come (ONNX
        Runtime's CPU arena keeps its peak); a no-op for backends without such a cache."""
        release = getattr(self.backend, "release_unused_memory", None)
        if release is not None:
            release()

    def raw(self, batch: np.ndarray, prototypes: np.ndarray) -> dict[str, np.ndarray]:
        """The model call alone: (B, 3, S, S) float32, (C, d) -> numpy outputs."""
        return self.backend.detect_raw(batch, np.asarray(prototypes, dtype=np.float32))

    def detect(
        self,
        images: list[np.ndarray],
        prototypes: np.ndarray,
        score_threshold: float | np.ndarray | None = None,
        max_detections: int = 100,
        with_masks: bool = True,
        class_sides: Sequence[np.ndarray] | None = None,
        class_crops: Sequence[Sequence[ExemplarCrop]] | None = None,
        proposal_classes: Sequence[bool] | np.ndarray | None = None,
        detection_weights: Sequence[float] | np.ndarray | None = None,
    ) -> list[Detections]:
        """Detections for each uint8 RGB image, class indices into the rows of `prototypes`.

        Each image is scored in the model file's `image_views` views in one batch and their
        detections agreed (`models/view_fusion.py`) before any exemplar-based rescoring.

        `class_sides` (per class, the log sizes of its exemplar boxes: `size_prior.log_sides`)
        turns on the model's exemplar-size prior (`models/size_prior.py`); None scores without it.
        `class_crops` (per class, its exemplars' grey crops: `template_match.exemplar_crops`)
        turns on the exemplar-appearance check (`models/template_match.py`), the exemplar-border
        prior (`models/border_prior.py`) and the exemplar-matched proposals
        (`models/template_proposals.py`); None skips them. `proposal_classes` (C,) bool limits
        the proposals to those classes (`models/outline_gate.py`); None lets every class have them.
        `detection_weights` (C,) scales the network's detections of each class
        (`outline_gate.detection_weights`: down for a class it does not outline), before any
        proposal joins them; None leaves them as scored.
        """
        return self.detect_timed(
            images,
            prototypes,
            score_threshold,
            max_detections,
            with_masks,
            class_sides,
            class_crops,
            proposal_classes,
            detection_weights,
        )[0]

    def detect_timed(
        self,
        images: list[np.ndarray],
        prototypes: np.ndarray,
        score_threshold: float | np.ndarray | None = None,
        max_detections: int = 100,
        with_masks: bool = True,
        class_sides: Sequence[np.ndarray] | None = None,
        class_crops: Sequence[Sequence[ExemplarCrop]] | None = None,
        proposal_classes: Sequence[bool] | np.ndarray | None = None,
        detection_weights: Sequence[float] | np.ndarray | None = None,
    ) -> tuple[list[Detections], StageTimes]:
        """`detect` plus the seconds spent in preprocess, predict (the model call), postprocess."""
        thr = self.score_threshold if score_threshold is None else score_threshold
        views = self.info.image_views
        t0 = time.perf_counter()
        boxes, batch = self.preprocess([v for im in images for v in view_images(im, views)])
        t1 = time.perf_counter()
        out = self.raw(batch, prototypes)
        t2 = time.perf_counter()
        dets = self._fused(out, boxes, images, thr, max_detections, with_masks, class_sides)
        checks = self.info.template_match_weight > 0 or self.info.border_factor < 1
        if class_crops is not None and checks:
            dets = [
                self.check_templates(im, d, class_crops, thr)
                for im, d in zip(images, dets, strict=True)
            ]
        if detection_weights is not None:
            _check_entries("detection_weights", detection_weights, len(prototypes))
            dets = [self.weigh(d, detection_weights, thr) for d in dets]
        if class_crops is not None and self.proposal_score > 0:
            dets = [
                self.add_proposals(
                    im, d, class_crops, thr, max_detections, with_masks, proposal_classes
                )
                for im, d in zip(images, dets, strict=True)
            ]
        t3 = time.perf_counter()
        return dets, StageTimes(t1 - t0, t2 - t1, t3 - t2)

    def _fused(
        self,
        out: dict[str, np.ndarray],
        letterboxes: list[Letterbox],
        images: list[np.ndarray],
        score_threshold: float | np.ndarray,
        max_detections: int,
        with_masks: bool,
        class_sides: Sequence[np.ndarray] | None,
    ) -> list[Detections]:
        """Each image's detections agreed over its `image_views` views (`models/view_fusion.py`).

        A view's detections are kept down to threshold / views, so a find that one view scores
        under the threshold still adds its share to its group's mean (the views' mean score); one
        view is thresholded as it is. Masks are brought to full size only for the detections the
        agreement keeps: most of a view's low-scored finds are dropped there."""
        views = self.info.image_views
        floor = np.asarray(score_threshold, dtype=np.float32) / views
        chosen = self._select(out, letterboxes, floor, max_detections, class_sides)
        fused = []
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            found = [unview(chosen[i * views + v][0], v, w, h) for v in range(views)]
            det, origin = fuse_with_origin(found, score_threshold, max_detections)
            if with_masks:
                det.masks = self._origin_masks(out, letterboxes, chosen, i * views, origin)
            fused.append(det)
        return fused

    def _origin_masks(
        self,
        out: dict[str, np.ndarray],
        letterboxes: list[Letterbox],
        chosen: list[tuple[Detections, np.ndarray]],
        first: int,
        origin: np.ndarray,
    ) -> np.ndarray:
        """Full-size masks, in the image's own pixels, of the fused detections whose members
        `origin` names (view, index in that view's choice); the image's views start at batch
        row `first`."""
        lb = letterboxes[first]
        masks = np.zeros((len(origin), lb.height, lb.width), dtype=bool)
        for v in np.unique(origin[:, 0]):
            rows = np.nonzero(origin[:, 0] == v)[0]
            queries = chosen[first + v][1][origin[rows, 1]]
            found = query_masks(
                out["pred_masks"][first + v],
                queries,
                letterboxes[first + v],
                self.info.mask_hull_min_fill,
            )
            masks[rows] = unview_masks(found, int(v))
        return masks

    def _select(
        self,
        out: dict[str, np.ndarray],
        letterboxes: list[Letterbox],
        score_threshold: float | np.ndarray,
        max_detections: int,
        class_sides: Sequence[np.ndarray] | None,
    ) -> list[tuple[Detections, np.ndarray]]:
        """Each batch row's detections without masks, with the query each came from
        (`postprocess.select_queries` under the model file's scoring)."""
        return [
            select_queries(
                out["pred_logits"][k],
                out["pred_boxes"][k],
                out["pred_masks"][k],
                lb,
                score_threshold,
                max_detections,
                class_sides=class_sides,
                size_sigma=self.info.size_prior_sigma,
                mask_score_weight=self.info.mask_score_weight,
            )
            for k, lb in enumerate(letterboxes)
        ]

    def postprocess(
        self,
        out: dict[str, np.ndarray],
        letterboxes: list[Letterbox],
        score_threshold: float | np.ndarray,
        max_detections: int = 100,
        with_masks: bool = True,
        class_sides: Sequence[np.ndarray] | None = None,
    ) -> list[Detections]:
        """Raw batch outputs (`raw`) -> detections in each image's original pixels, every batch
        row on its own (no view agreement: backends are compared through this)."""
        dets = []
        for k, (det, queries) in enumerate(
            self._select(out, letterboxes, score_threshold, max_detections, class_sides)
        ):
            if with_masks:
                fill = self.info.mask_hull_min_fill
                det.masks = query_masks(out["pred_masks"][k], queries, letterboxes[k], fill)
            dets.append(det)
        return dets

    def check_templates(
        self,
        image: np.ndarray,
        det: Detections,
        class_crops: Sequence[Sequence[ExemplarCrop]],
        score_threshold: float | np.ndarray,
    ) -> Detections:
        """`det` rescored by the exemplar-appearance check and the exemplar-border prior,
        re-thresholded and re-ranked.

        The factors are at most 1, so checking only what already passed the threshold loses
        nothing, and keeps the cost to the detections a caller will see.
        """
        weight = self.info.template_match_weight
        factors = template_factors(image, det.boxes, det.class_index, class_crops, weight)
        height, width = image.shape[:2]
        factors = factors * border_factors(
            det.boxes,
            det.class_index,
            interior_classes(class_crops),
            height,
            width,
            self.info.border_factor,
        )
        scores = det.scores * factors
        thr = _class_thresholds(score_threshold, det, len(class_crops))
        return _ranked(det, scores, scores >= thr[det.class_index])

    def weigh(
        self,
        det: Detections,
        weights: Sequence[float] | np.ndarray,
        score_threshold: float | np.ndarray,
    ) -> Detections:
        """`det` with each class's scores multiplied by its entry of `weights` (C,) in [0, 1]
        (`models/outline_gate.py`: a network that does not outline a class mostly misplaces it),
        re-thresholded and re-ranked; all ones leaves `det` as it is."""
        factors = np.asarray(weights, dtype=np.float32)
        thr = _class_thresholds(score_threshold, det, len(factors))
        if len(factors) < len(thr):  # a detection of a class without a weight
            raise ValueError(f"detection_weights has {len(factors)} entries for {len(thr)} classes")
        if np.all(factors == 1.0):
            return det
        scores = det.scores * factors[det.class_index]
        return _ranked(det, scores, (scores > 0) & (scores >= thr[det.class_index]))

    def add_proposals(
        self,
        image: np.ndarray,
        det: Detections,
        class_crops: Sequence[Sequence[ExemplarCrop]],
        score_threshold: float | np.ndarray,
        max_detections: int = 100,
        with_masks: bool = True,
        proposal_classes: Sequence[bool] | np.ndarray | None = None,
    ) -> Detections:
        """`det` plus the best exemplar-matched proposals that reach the threshold, in the places
        `det` leaves free under `max_detections`, re-ranked; classes whose threshold is above the
        proposal score, or left out of `proposal_classes`, cost nothing."""
        top = self.proposal_score
        thr = _class_thresholds(score_threshold, det, len(class_crops))
        allowed = np.ones(len(class_crops), bool) if proposal_classes is None else proposal_classes
        _check_entries("proposal_classes", allowed, len(class_crops))
        chosen = [
            c for c, crops in enumerate(class_crops) if crops and thr[c] <= top and bool(allowed[c])
        ]
        if not chosen:
            return det
        found = [(det.boxes, det.scores, det.class_index)]
        for c in chosen:
            boxes, ncc = match_regions(image, class_crops[c])
            keep = top * ncc >= thr[c]
            found.append((boxes[keep], top * ncc[keep], np.full(int(keep.sum()), c)))
        boxes = np.concatenate([f[0] for f in found]).astype(np.float32)
        scores = np.concatenate([f[1] for f in found]).astype(np.float32)
        classes = np.concatenate([f[2] for f in found]).astype(det.class_index.dtype)
        # proposals fill the free places only: they never push out a network detection
        room = max(max_detections - len(det), 0)
        added = len(det) + np.argsort(-scores[len(det) :], kind="stable")[:room]
        chosen = np.concatenate([np.arange(len(det)), added])
        order = chosen[np.argsort(-scores[chosen], kind="stable")]
        masks = None
        if with_masks and det.masks is not None:
            height, width = image.shape[:2]
            masks = box_masks(boxes[order], height, width)
            from_net = order < len(det)
            masks[from_net] = det.masks[order[from_net]]
        return Detections(classes[order], scores[order], boxes[order], masks)


class TorchPredictor(Predictor):
    """The PyTorch reference predictor (evaluation, training checks)."""

    def __init__(self, model_file: ModelFile, threads: int = 0) -> None:
        super().__init__(TorchBackend(model_file, threads))
        self.file = model_file
        self.model = model_file.model

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int = 0) -> TorchPredictor:
        return cls(load_model(path or DEFAULT_MODEL_PATH), threads)
