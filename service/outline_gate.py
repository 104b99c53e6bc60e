"""Per namespace, which classes get exemplar-matched proposals (`models/outline_gate.py`).

A model file that makes exemplar-matched proposals behind a gate (`template_proposal_score` P > 0,
`proposal_gate_iou` G < 1) gives them only to the classes whose own exemplars the network outlines
at a mean best IoU below G. The proposals score at most P, below the calibrated threshold, so an
inspection at the default threshold never needs them; the outlines are computed on the first
inspection whose threshold for some class is at or below P (a search for what the network does not
outline), once per snapshot version, on the model thread: every class's prompt images (up to
`MAX_IMAGES_PER_CLASS`, read from the store one class at a time) inspected with all classes
prompted, as the self-check does.

An image that cannot be read is left out; a class left without any image counts as outlined (no
proposals), and an outline computed with images missing is not kept, so the next inspection tries
again. A failure never fails the inspection: it inspects without proposals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.outline_gate import exemplar_ious, gated_classes, outline
from models.size_prior import log_sides
from prompt_store.base import PromptStore
from prompt_store.records import PrototypeSnapshot
from service.exemplar_crops import read_prompt_image

log = logging.getLogger(__name__)

MAX_IMAGES_PER_CLASS = 16  # as the self-check: bounds the one-off cost per class


@dataclass(frozen=True)
class _Entry:
    version: int
    outlines: np.ndarray  # (C,) per snapshot row


class OutlineGate:
    """Namespace -> per-class outlines as of one snapshot version, thread-safe."""

    def __init__(
        self,
        store: PromptStore,
        proposal_score: float,
        gate: float,
        max_image_bytes: int,
        max_image_pixels: int,
    ) -> None:
        self._store = store
        self.proposal_score = proposal_score
        self.gate = gate
        self._max_bytes = max_image_bytes
        self._max_pixels = max_image_pixels
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def needed(self, thresholds: np.ndarray) -> bool:
        """Whether some class's threshold lets proposals through (else none is computed)."""
        return bool(len(thresholds)) and float(np.min(thresholds)) <= self.proposal_score

    def cached(self, snap: PrototypeSnapshot) -> np.ndarray | None:
        with self._lock:
            entry = self._entries.get(snap.namespace)
        return entry.outlines if entry is not None and entry.version == snap.version else None

    def compute(self, predictor, snap: PrototypeSnapshot, crops: Sequence | None) -> np.ndarray:
        """Per snapshot row, its outline (model thread); kept when every image was read. One
        class's images are held at a time, so memory stays bounded whatever the namespace."""
        boxes, hashes = snap.exemplar_boxes, snap.exemplar_images
        if boxes is None or hashes is None:  # an older snapshot: nothing to decide on
            return np.ones(len(snap.class_names), np.float32)
        sides = [log_sides(b) for b in boxes]
        outlines = np.ones(len(snap.class_names), np.float32)
        complete = True
        for row in range(len(snap.class_names)):
            pairs, missing = self._class_prompts(snap.namespace, boxes[row], hashes[row])
            complete = complete and not missing
            prompts = [pairs if r == row else [] for r in range(len(snap.class_names))]
            ious = exemplar_ious(predictor, prompts, snap.matrix, sides, crops)
            outlines[row] = outline(ious)[row]
        if complete:
            with self._lock:
                self._entries[snap.namespace] = _Entry(snap.version, outlines)
        log.info(
            "class outlines computed",
            extra={
                "fields": {
                    "namespace": snap.namespace,
                    "version": snap.version,
                    "outlines": {
                        n: round(float(v), 3)
                        for n, v in zip(snap.class_names, outlines, strict=True)
                    },
                }
            },
        )
        return outlines

    def _class_prompts(
        self, ns: str, boxes: np.ndarray, hashes: Sequence[str]
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
        """(image, its exemplar boxes) of one class's first prompt images, and whether any
        image could not be read."""
        by_image: dict[str, list[np.ndarray]] = {}
        for box, h in zip(boxes, hashes, strict=True):
            if h:
                by_image.setdefault(h, []).append(np.asarray(box, np.float32))
        pairs, missing = [], False
        for h in list(by_image)[:MAX_IMAGES_PER_CLASS]:
            image = read_prompt_image(
                self._store, ns, h, self._max_bytes, self._max_pixels, "the outline gate"
            )
            missing = missing or image is None
            if image is not None:
                pairs.append((image, np.stack(by_image[h])))
        return pairs, missing

    def classes(self, outlines: np.ndarray, rows: Sequence[int]) -> tuple[bool, ...]:
        """Which of the requested rows get proposals."""
        return tuple(bool(v) for v in gated_classes(outlines[list(rows)], self.gate))

    def forget(self, ns: str) -> None:
        with self._lock:
            self._entries.pop(ns, None)
