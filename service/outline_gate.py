"""Per namespace, which classes get exemplar-matched proposals (`models/outline_gate.py`).

A model file that makes exemplar-matched proposals behind a gate (`template_proposal_score` P > 0,
`proposal_gate_iou` G < 1) gives them only to the classes whose own exemplars the network outlines
at a mean best IoU below G. The proposals score at most P, below the calibrated threshold, so an
inspection at the default threshold never needs them; the outlines are computed on the first
inspection whose threshold for some class is at or below P (a search for what the network does not
outline), once per snapshot version, on the model thread: every class's prompt images (up to
`MAX_IMAGES_PER_CLASS`) inspected with all classes prompted, as the self-check does.

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

from models import decode
from models.outline_gate import exemplar_ious, gated_classes, outline
from models.size_prior import log_sides
from prompt_store.base import PromptStore
from prompt_store.records import PrototypeSnapshot

log = logging.getLogger(__name__)

MAX_IMAGES_PER_CLASS = 16  # as the self-check: bounds the one-off cost per class


@dataclass(frozen=True)
class _Entry:
    version: int
    outlines: np.ndarray  # (C,) per snapshot row


@dataclass(frozen=True)
class _Prompts:
    """A snapshot's prompt images, read from the store before the model thread is taken."""

    pairs: list[list[tuple[np.ndarray, np.ndarray]]]  # per row: (image, its boxes of the class)
    complete: bool  # every image could be read


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

    def read_prompts(self, snap: PrototypeSnapshot) -> _Prompts:
        """Each class's prompt images (I/O only; run it off the model thread)."""
        if snap.exemplar_boxes is None or snap.exemplar_images is None:
            return _Prompts([[] for _ in snap.class_names], complete=False)
        images: dict[str, np.ndarray | None] = {}
        pairs: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for boxes, hashes in zip(snap.exemplar_boxes, snap.exemplar_images, strict=True):
            by_image: dict[str, list[np.ndarray]] = {}
            for box, h in zip(boxes, hashes, strict=True):
                if h:
                    by_image.setdefault(h, []).append(np.asarray(box, np.float32))
            row = []
            for h in list(by_image)[:MAX_IMAGES_PER_CLASS]:
                if h not in images:
                    images[h] = self._read(snap.namespace, h)
                if images[h] is not None:
                    row.append((images[h], np.stack(by_image[h])))
            pairs.append(row)
        return _Prompts(pairs, complete=all(v is not None for v in images.values()))

    def compute(
        self, predictor, snap: PrototypeSnapshot, prompts: _Prompts, crops: Sequence | None
    ) -> np.ndarray:
        """Per snapshot row, its outline (model thread); kept when every image was read."""
        boxes = snap.exemplar_boxes
        sides = [log_sides(b) for b in boxes] if boxes is not None else None
        outlines = outline(exemplar_ious(predictor, prompts.pairs, snap.matrix, sides, crops))
        if prompts.complete:
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

    def classes(self, outlines: np.ndarray, rows: Sequence[int]) -> tuple[bool, ...]:
        """Which of the requested rows get proposals."""
        return tuple(bool(v) for v in gated_classes(outlines[list(rows)], self.gate))

    def forget(self, ns: str) -> None:
        with self._lock:
            self._entries.pop(ns, None)

    def _read(self, ns: str, image_hash: str) -> np.ndarray | None:
        try:
            data = self._store.get_source_image(ns, image_hash)
            return decode.decode_image(data, self._max_bytes, self._max_pixels).rgb
        except Exception as exc:  # outage, missing or undecodable: decide without it
            log.warning(
                "prompt image unavailable for the outline gate",
                extra={"fields": {"namespace": ns, "image": image_hash, "error": str(exc)}},
            )
            return None
