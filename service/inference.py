"""The model seen by the service: one builder, the batch function and prompt encoding.

`build_predictor(settings)` is the only place that constructs a predictor (today the PyTorch
reference path; the runtime interface of models/runtime will take its place with the same
methods). Everything here runs on the model thread (see batching.py), never on the event loop.

A batch is a group of jobs that share one prototype matrix. The model runs once with the lowest
threshold and the largest detection budget any job asked for, then each job keeps its own: a
detection passes a job's threshold for its class, and non-maximum suppression only ever lets a
higher-scoring box remove a lower one, so filtering afterwards equals running each job alone.

Jobs of a namespace with reference images also carry its anomaly memory (service/anomaly.py):
after the detector, one feature pass scores those images, and anomalous regions that no kept
detection's box explains are added as `unknown` detections. A namespace with references but no
prompted class skips the detector.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.rle import encode_rle, encode_rles
from service.anomaly import UNKNOWN_CLASS, AnomalyOutcome, AnomalyScorer, NamespaceMemory
from service.images import encode_polygons, heatmap, heatmap_png_base64
from service.schemas import MaskFormat
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the service needs of a backend (models.predictor.TorchPredictor satisfies it)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def score_threshold(self) -> float: ...

    def encode_prompts(self, image: np.ndarray, regions: list[Any]) -> np.ndarray: ...

    def detect(
        self,
        images: list[np.ndarray],
        prototypes: np.ndarray,
        score_threshold: float | np.ndarray | None = None,
        max_detections: int = 100,
        with_masks: bool = True,
        class_sides: Sequence[np.ndarray] | None = None,
        class_crops: Sequence[Sequence[Any]] | None = None,
        proposal_classes: Sequence[bool] | None = None,
        detection_weights: Sequence[float] | None = None,
    ) -> list[Any]: ...


@dataclass(frozen=True)
class BackendInfo:
    """Shown in /readyz and the `inspect_backend_info` metric."""

    backend: str
    device: str
    image_size: int | None


def build_predictor(settings: ServiceSettings) -> tuple[Predictor, BackendInfo]:
    """Load the model named by the settings (None: the embedded default) on the fastest backend
    the machine has (models.runtime.select), or the one `INSPECT_BACKEND` names."""
    from models.predictor import Predictor as RuntimePredictor  # heavy imports kept lazy
    from models.runtime.select import RuntimeSettings

    runtime = RuntimeSettings(backend=settings.backend, threads=settings.threads)
    predictor = RuntimePredictor.load(settings.model_path, runtime)
    choice = predictor.choice
    name = choice.name if choice is not None else "torch"
    device = choice.backend.device if choice is not None else "cpu"
    log.info("inference backend", extra={"fields": {"backend": name, "device": device}})
    return predictor, BackendInfo(name, device, predictor.size)


@dataclass(frozen=True)
class InspectJob:
    """One image to inspect against one prototype matrix (shared by the jobs of a batch)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    prototypes: np.ndarray  # (C, d) float32, rows aligned with class_names
    class_names: tuple[str, ...]
    thresholds: np.ndarray  # (C,) float32, per class
    max_detections: int
    mask_format: MaskFormat
    heatmap: bool
    anomaly: NamespaceMemory | None = None  # the namespace's memory, when it has references
    anomaly_map: bool = False  # return the anomaly map
    class_sides: tuple[np.ndarray, ...] | None = None  # exemplar log sizes per class (size prior)
    class_crops: tuple[tuple[Any, ...], ...] | None = None  # exemplar crops (template check)
    # classes that get exemplar-matched proposals (service/outline_gate.py); None: every class
    proposal_classes: tuple[bool, ...] | None = None
    # their network detections' factor (models/outline_gate.py); None: as scored
    detection_weights: tuple[float, ...] | None = None

    @property
    def needs_masks(self) -> bool:
        return self.mask_format is not MaskFormat.none or self.heatmap


@dataclass(frozen=True)
class InspectOutcome:
    """A job's detections, ready for the response (masks already encoded)."""

    detections: list[dict[str, Any]]
    top_score: float
    heatmap_png: str | None
    timings_s: dict[str, float]
    anomaly: AnomalyOutcome | None = None
    rejects: bool = False  # some detection counts toward `reject`


class Inspector:
    """Runs batches of InspectJob through the predictor; encodes prompt regions."""

    def __init__(self, predictor: Predictor, scorer: AnomalyScorer | None = None) -> None:
        self.predictor = predictor
        self.scorer = scorer

    def run_batch(self, jobs: Sequence[InspectJob]) -> list[InspectOutcome]:
        """One model call for jobs sharing a prototype matrix; per-job filtering after."""
        first = jobs[0]
        if first.prototypes.shape[0] == 0:  # references only: no prompted class to detect
            raw: list[Any] = [_no_detections() for _ in jobs]
            shared: dict[str, float] = {}
        else:
            raw, shared = self._detect(jobs)
        grids: list[Any] = [None] * len(jobs)
        scored = [i for i, j in enumerate(jobs) if j.anomaly is not None and j.anomaly.active]
        anomaly_s = 0.0
        if scored and self.scorer is not None:
            t0 = time.perf_counter()
            found = self.scorer.features([jobs[i].image for i in scored])
            for i, grid in zip(scored, found, strict=True):
                grids[i] = grid
            anomaly_s = time.perf_counter() - t0
        out = []
        for job, det, grid in zip(jobs, raw, grids, strict=True):
            t0 = time.perf_counter()
            keep = self._kept(job, det)
            outcome = None
            if grid is not None and self.scorer is not None and job.anomaly is not None:
                outcome = self.scorer.outcome(
                    job.anomaly, grid, np.asarray(det.boxes)[keep], job.anomaly_map
                )
            t1 = time.perf_counter()
            detections, top, heat, rejects = self._finish(job, det, keep, outcome)
            timings = dict(shared)
            timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - t1
            if grid is not None:
                timings["anomaly"] = anomaly_s / len(scored) + (t1 - t0)
            out.append(InspectOutcome(detections, top, heat, timings, outcome, rejects))
        return out

    def _detect(self, jobs: Sequence[InspectJob]) -> tuple[list[Any], dict[str, float]]:
        first = jobs[0]
        floor = np.min(np.stack([j.thresholds for j in jobs]), axis=0)  # (C,)
        args = (
            [j.image for j in jobs],
            first.prototypes,
            floor,
            max(j.max_detections for j in jobs),
            any(j.needs_masks for j in jobs),
            first.class_sides,  # jobs of a batch share one prototype snapshot
            first.class_crops,
            # one snapshot version decides them for every job; a job that left them None has
            # thresholds above every proposal's score
            *next(
                (
                    (j.proposal_classes, j.detection_weights)
                    for j in jobs
                    if j.proposal_classes is not None
                ),
                (None, None),
            ),
        )
        timed = getattr(self.predictor, "detect_timed", None)
        start = time.perf_counter()
        if timed is not None:  # a predictor that times its own stages
            raw, stages = timed(*args)
            shared = {
                "preprocess": stages.preprocess,
                "inference": stages.predict,
                "postprocess": stages.postprocess,
            }
        else:
            raw = self.predictor.detect(*args)
            shared = {"inference": time.perf_counter() - start}
        return list(raw), shared

    @staticmethod
    def _kept(job: InspectJob, det: Any) -> np.ndarray:
        """Indices of the detections that pass the job's per-class thresholds."""
        cls = np.asarray(det.class_index, dtype=np.int64)
        scores = np.asarray(det.scores, dtype=np.float32)
        if len(scores) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.nonzero(scores >= job.thresholds[cls])[0][: job.max_detections]

    @staticmethod
    def _finish(
        job: InspectJob, det: Any, keep: np.ndarray, anomaly: AnomalyOutcome | None
    ) -> tuple[list[dict[str, Any]], float, str | None, bool]:
        """Response detections (prompted, then unknown), top score, heatmap, rejects."""
        cls = np.asarray(det.class_index, dtype=np.int64)
        scores = np.asarray(det.scores, dtype=np.float32)
        masks = det.masks[keep] if det.masks is not None else None
        h, w = job.image.shape[:2]
        encoded: list[Any] = [None] * len(keep)
        if masks is not None and job.mask_format is MaskFormat.rle:
            encoded = list(encode_rles(masks))
        elif masks is not None and job.mask_format is MaskFormat.polygon:
            encoded = [encode_polygons(m) for m in masks]
        detections = [
            {
                "class_name": job.class_names[int(cls[i])],
                "score": float(scores[i]),
                "box": [float(v) for v in np.asarray(det.boxes[i], dtype=np.float64)],
                "mask": mask,
            }
            for i, mask in zip(keep, encoded, strict=True)
        ]
        rejects = bool(detections)
        unknown = anomaly.unknown[: max(0, job.max_detections - len(detections))] if anomaly else []
        for region in unknown:
            mask_out: Any = None
            if job.mask_format is MaskFormat.rle:
                mask_out = encode_rle(region.mask)
            elif job.mask_format is MaskFormat.polygon:
                mask_out = encode_polygons(region.mask)
            detections.append(
                {
                    "class_name": UNKNOWN_CLASS,
                    "score": region.score,
                    "box": [float(v) for v in region.box],
                    "mask": mask_out,
                }
            )
        if unknown and anomaly is not None and anomaly.unknown_rejects:
            rejects = True
        top = max((d["score"] for d in detections), default=0.0)
        heat = None
        if job.heatmap:  # IAP-AS: Score = sum_i s_i m_i over prompted and unknown detections
            if masks is None:
                masks = np.zeros((0, h, w), dtype=bool)
            all_scores = np.concatenate([scores[keep], [r.score for r in unknown]]).astype(
                np.float32
            )
            all_masks = np.concatenate([masks.astype(bool)] + [r.mask[None] for r in unknown])
            heat = heatmap_png_base64(heatmap(all_scores, all_masks, h, w))
        return detections, top, heat, rejects

    def encode(
        self, image: np.ndarray, regions: Sequence[tuple[np.ndarray, np.ndarray | None]]
    ) -> np.ndarray:
        """(R, d) embeddings of prompt regions of one image: (box xyxy, mask (H, W) or None)."""
        from models.predictor import PromptRegion

        prompts = [PromptRegion(box=np.asarray(box, np.float32), mask=m) for box, m in regions]
        return np.asarray(self.predictor.encode_prompts(image, prompts), dtype=np.float32)

    def best_batch_size(
        self, limit: int, seconds: float = 0.25, rounds: int = 2
    ) -> tuple[int, dict[int, float]]:
        """The batch size (a power of two up to `limit`, and `limit`) with the best images/s.

        Sizes are timed in interleaved rounds of about `seconds` each on a model-sized random
        image, keeping each size's best round (background noise only ever slows a round down);
        a bigger batch must beat the best smaller one by 5% to be chosen. The memory the bigger
        sizes took is handed back afterwards.
        """
        size = self._input_size()
        rng = np.random.default_rng(1)
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        proto = rng.standard_normal((2, self.predictor.embed_dim)).astype(np.float32)
        proto /= np.linalg.norm(proto, axis=1, keepdims=True)
        sizes = sorted({min(limit, 2**k) for k in range(limit.bit_length() + 1)})

        def call(n: int) -> None:
            self.predictor.detect([image] * n, proto, score_threshold=0.5, max_detections=10)

        for n in sizes:  # first calls of a new batch shape pay for kernel set-up
            call(n)
            call(n)
        rates = dict.fromkeys(sizes, 0.0)
        for _ in range(rounds):
            for n in sizes:
                done, start = 0, time.perf_counter()
                while done == 0 or time.perf_counter() - start < seconds:
                    call(n)
                    done += n
                rates[n] = max(rates[n], done / (time.perf_counter() - start))
        best = 1
        for n in sizes:
            if rates[n] > 1.05 * rates[best]:
                best = n
        self.predictor.release_unused_memory()  # the bigger sizes' memory is not needed again
        call(best)
        return best, rates

    def reference_patches(self, images: list[np.ndarray], per_reference: int) -> list[np.ndarray]:
        """What the store keeps of reference images: each one's k-center patch prefix (rows, D)."""
        if self.scorer is None:
            raise RuntimeError("the anomaly mode is off (INSPECT_ANOMALY_ENABLED=false)")
        return self.scorer.extractor.reference_patches(images, per_reference)

    def _input_size(self) -> int:
        size = getattr(self.predictor, "size", None)
        return int(size) if isinstance(size, int) and size > 0 else 320

    def warmup(self) -> float:
        """One small detection and one prompt encoding; returns the seconds it took."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        proto = rng.standard_normal((1, self.predictor.embed_dim)).astype(np.float32)
        proto /= np.linalg.norm(proto)
        self.predictor.detect([image], proto, score_threshold=0.99, max_detections=1)
        self.encode(image, [(np.array([8, 8, 40, 40], dtype=np.float32), None)])
        if self.scorer is not None:
            self.scorer.features([image])
        return time.perf_counter() - start


def _no_detections() -> Any:
    """Empty detections of an image (a namespace with references but no prompted class)."""
    from models.postprocess import Detections

    return Detections(
        np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 4), np.float32), None
    )
