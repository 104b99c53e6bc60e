"""Per namespace, which classes get exemplar-matched proposals (`models/outline_gate.py`).

A model file that makes exemplar-matched proposals behind a gate (`template_proposal_score` P > 0,
`proposal_gate_iou` G < 1) gives them only to the classes whose own exemplars the network outlines
at a mean best IoU below G, and scores such a class's own network detections by outline / (G / 2),
at most 1, at every threshold (`models/outline_gate.py`). The outlines are computed once per
snapshot version, on the model thread one class at a time (the line's inspections run in between):
every class's prompt images (up to `MAX_IMAGES_PER_CLASS`, read from the store one class at a time)
inspected with all classes prompted, as the self-check does. One computation runs per version
however many inspections ask. An inspection whose thresholds are all above P (a line inspection: no
proposal could show) does not wait for it: it starts it and inspects unweighted, and the inspections
after it find the outlines kept. One with a threshold at or below P (a search for what the network
does not outline) waits for them.

An image that cannot be read is left out; a class left without any image counts as outlined (no
proposals, no weighting), and an outline computed with images missing is kept only for
`RETRY_S`, so a store that recovers is read again without a computation per inspection meanwhile.
A failure never fails an inspection: it inspects without proposals or weighting, and every class
counts as outlined for `RETRY_S`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.outline_gate import detection_weights, exemplar_ious, gated_classes, outline
from models.size_prior import log_sides
from prompt_store.base import PromptStore
from prompt_store.records import PrototypeSnapshot
from service.exemplar_crops import read_prompt_image

log = logging.getLogger(__name__)

MAX_IMAGES_PER_CLASS = 16  # as the self-check: bounds the one-off cost per class
RETRY_S = 60.0  # how long outlines computed with prompt images missing are used


@dataclass(frozen=True)
class _Entry:
    version: int
    outlines: np.ndarray  # (C,) per snapshot row
    expires: float | None  # time.monotonic() after which it is computed again; None: never


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
        self._flights: dict[tuple[str, int], asyncio.Task[np.ndarray]] = {}  # event loop only

    def needed(self, thresholds: np.ndarray) -> bool:
        """Whether some class's threshold lets proposals through (else none is computed)."""
        return bool(len(thresholds)) and float(np.min(thresholds)) <= self.proposal_score

    def cached(self, snap: PrototypeSnapshot) -> np.ndarray | None:
        with self._lock:
            entry = self._entries.get(snap.namespace)
        if entry is None or entry.version != snap.version:
            return None
        if entry.expires is not None and time.monotonic() > entry.expires:
            return None
        return entry.outlines

    def flight(
        self, snap: PrototypeSnapshot, start: Callable[[], Coroutine[Any, Any, np.ndarray]]
    ) -> asyncio.Task[np.ndarray]:
        """The computation of `snap`'s outlines in progress, begun with `start()` when none is
        (event loop only): concurrent inspections share one."""
        key = (snap.namespace, snap.version)
        task = self._flights.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(start(), name="class-outlines")
            self._flights[key] = task
            task.add_done_callback(lambda done: self._landed(snap, done))
        return task

    async def close(self) -> None:
        """Cancel the computations still running (shutdown, before the model thread drains:
        what one of them already handed the model thread finishes, unused)."""
        flights = list(self._flights.values())
        for task in flights:
            task.cancel()
        await asyncio.gather(*flights, return_exceptions=True)

    def _landed(self, snap: PrototypeSnapshot, task: asyncio.Task[np.ndarray]) -> None:
        """A failed computation is not retried for `RETRY_S`: meanwhile every class counts as
        outlined, so a store that is down costs no computation per inspection."""
        self._flights.pop((snap.namespace, snap.version), None)
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "class outlines not computed; inspecting without proposals or weighting",
            exc_info=task.exception(),
        )
        ones = np.ones(len(snap.class_names), np.float32)
        with self._lock:
            self._entries[snap.namespace] = _Entry(snap.version, ones, time.monotonic() + RETRY_S)

    async def compute(
        self,
        run: Callable[..., Awaitable[Any]],
        predictor,
        snap: PrototypeSnapshot,
        crops: Sequence | None,
    ) -> np.ndarray:
        """Per snapshot row, its outline, kept as `keep` keeps it. `run` (the batcher's
        `run_exclusive`) puts one class at a time on the model thread, so the line's inspections
        queued meanwhile run between classes."""
        start = time.perf_counter()
        found = [
            await run(self.class_outline, predictor, snap, crops, row)
            for row in range(len(snap.class_names))
        ]
        return self.keep(snap, found, time.perf_counter() - start)

    def class_outline(
        self, predictor, snap: PrototypeSnapshot, crops: Sequence | None, row: int
    ) -> tuple[float, bool]:
        """One class's outline, and whether every one of its prompt images was read (model
        thread). One class at a time holds only that class's images, and lets the line's
        inspections run between classes."""
        boxes, hashes = snap.exemplar_boxes, snap.exemplar_images
        if boxes is None or hashes is None:  # an older snapshot: nothing to decide on
            return 1.0, True
        pairs, missing = self._class_prompts(snap.namespace, boxes[row], hashes[row])
        prompts = [pairs if r == row else [] for r in range(len(snap.class_names))]
        sides = [log_sides(b) for b in boxes]
        ious = exemplar_ious(predictor, prompts, snap.matrix, sides, crops)
        return float(outline(ious)[row]), not missing

    def keep(
        self, snap: PrototypeSnapshot, found: Sequence[tuple[float, bool]], seconds: float
    ) -> np.ndarray:
        """The outlines of every row (`class_outline`, in row order), kept for the version, or
        for `RETRY_S` when an image could not be read."""
        outlines = np.array([value for value, _ in found], np.float32).reshape(-1)
        complete = all(read for _, read in found)
        expires = None if complete else time.monotonic() + RETRY_S
        with self._lock:
            self._entries[snap.namespace] = _Entry(snap.version, outlines, expires)
        log.info(
            "class outlines computed",
            extra={
                "fields": {
                    "namespace": snap.namespace,
                    "version": snap.version,
                    "seconds": round(seconds, 3),
                    "complete": complete,
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

    def weights(self, outlines: np.ndarray, rows: Sequence[int]) -> tuple[float, ...]:
        """The factor on the network's own detections of each requested row."""
        return tuple(float(v) for v in detection_weights(outlines[list(rows)], self.gate))

    def forget(self, ns: str) -> None:
        with self._lock:
            self._entries.pop(ns, None)
