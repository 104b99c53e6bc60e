"""Grey crops of each namespace's exemplars, the input of the template check
(`models/template_match.py`).

The store keeps every prompt image (for re-extraction) and each exemplar's box; a snapshot names
them (`PrototypeSnapshot.exemplar_images`, `exemplar_boxes`). Crops are cut once per snapshot
version, on the first inspection that needs them, and crops of exemplars that did not change are
carried over to the next version, so registering one exemplar reads one image. Only the largest
exemplars of each class are cut (`template_match.MAX_CROPS_PER_CLASS`), which bounds memory per
class whatever the number of exemplars.

An image that cannot be read (store outage, image gone, undecodable) leaves its exemplar out and is
retried with the next version; a class left without any crop is inspected without the check
(factor 1), so an outage degrades the ranking, never the availability.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models import decode
from models.template_match import MAX_CROPS_PER_CLASS, ExemplarCrop, exemplar_crops, gray
from prompt_store.base import PromptStore
from prompt_store.records import PrototypeSnapshot

log = logging.getLogger(__name__)

Key = tuple[str, tuple[float, float, float, float]]  # (image sha256, box)


def read_prompt_image(
    store: PromptStore, ns: str, image_hash: str, max_bytes: int, max_pixels: int, purpose: str
) -> np.ndarray | None:
    """A stored prompt image as RGB, decoded as an inspection would decode it; None (logged) when
    it cannot be read (outage, image gone, undecodable), so `purpose` goes on without it."""
    try:
        data = store.get_source_image(ns, image_hash)
        return decode.decode_image(data, max_bytes, max_pixels).rgb
    except Exception as exc:
        log.warning(
            f"prompt image unavailable for {purpose}",
            extra={"fields": {"namespace": ns, "image": image_hash, "error": str(exc)}},
        )
        return None


def _camera_area(box: Sequence[float]) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


@dataclass
class _Entry:
    """One namespace's crops as of a snapshot version."""

    version: int
    cut: dict[Key, ExemplarCrop | None]  # every exemplar cut so far (None: could not be read)
    rows: dict[int, tuple[ExemplarCrop, ...]] = field(default_factory=dict)  # class row -> crops


class ExemplarCropCache:
    """Namespace -> its crops as of one snapshot version, thread-safe. An inspection of an
    unchanged namespace only looks its classes up."""

    def __init__(self, store: PromptStore, max_image_bytes: int, max_image_pixels: int) -> None:
        self._store = store
        self._max_bytes = max_image_bytes
        self._max_pixels = max_image_pixels
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def crops(
        self, snap: PrototypeSnapshot, rows: Sequence[int]
    ) -> tuple[tuple[ExemplarCrop, ...], ...] | None:
        """Per requested class row, its exemplar crops; None when the snapshot names no images."""
        if snap.exemplar_images is None or snap.exemplar_boxes is None:
            return None
        with self._lock:
            entry = self._entries.get(snap.namespace)
        if entry is not None and entry.version == snap.version and set(rows) <= entry.rows.keys():
            return tuple(entry.rows[i] for i in rows)  # the usual case: nothing changed
        wanted = {i: self._chosen(snap, i)[: 2 * MAX_CROPS_PER_CLASS] for i in rows}
        known = self._known(snap, entry)
        missing = {k for keys in wanted.values() for k in keys if k not in known}
        if missing:
            known = {**known, **self._cut(snap.namespace, missing)}
        found = {
            i: tuple([c for k in keys if (c := known.get(k)) is not None][:MAX_CROPS_PER_CLASS])
            for i, keys in wanted.items()
        }
        with self._lock:
            current = self._entries.get(snap.namespace)
            if current is None or current.version < snap.version:
                self._entries[snap.namespace] = _Entry(snap.version, known, found)
            elif current.version == snap.version:
                current.cut.update(known)
                current.rows.update(found)
        return tuple(found[i] for i in rows)

    def forget(self, ns: str) -> None:
        with self._lock:
            self._entries.pop(ns, None)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _chosen(snap: PrototypeSnapshot, row: int) -> list[Key]:
        """The class's exemplars, largest first (the check uses the largest usable ones; twice
        as many as it needs are cut, so a tiny or flat one does not leave the class short)."""
        assert snap.exemplar_boxes is not None and snap.exemplar_images is not None
        boxes, images = snap.exemplar_boxes[row], snap.exemplar_images[row]
        keys = [
            (img, (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
            for img, b in zip(images, boxes, strict=True)
            if img
        ]
        keys.sort(key=lambda k: -_camera_area(k[1]))
        return keys

    @staticmethod
    def _known(snap: PrototypeSnapshot, entry: _Entry | None) -> dict[Key, ExemplarCrop | None]:
        """What is already cut; a failed read (None) is retried once the namespace moved on."""
        if entry is None:
            return {}
        if entry.version == snap.version:
            return dict(entry.cut)
        return {k: c for k, c in entry.cut.items() if c is not None}

    def _cut(self, ns: str, keys: set[Key]) -> dict[Key, ExemplarCrop | None]:
        out: dict[Key, ExemplarCrop | None] = {}
        by_image: dict[str, list[Key]] = {}
        for key in keys:
            by_image.setdefault(key[0], []).append(key)
        for img, group in by_image.items():
            rgb = read_prompt_image(
                self._store, ns, img, self._max_bytes, self._max_pixels, "the template check"
            )
            if rgb is None:  # check without it
                out.update({k: None for k in group})
                continue
            grey = gray(rgb)
            for key in group:
                found = exemplar_crops(grey, np.asarray([key[1]], dtype=np.float32))
                out[key] = found[0] if found else None
        return out
