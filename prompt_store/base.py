"""The prompt store seen by its users (service, offline job): a small Protocol.

The service and scripts type against `PromptStore`, not against Redis, so a test or a future
backend can stand in. `RedisPromptStore` is the implementation; it also has admin extras
(export/import, re-extraction, event subscription, dumps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from prompt_store.records import (
    AddResult,
    ClassInfo,
    ClassSummary,
    NamespaceInfo,
    NewExemplar,
    PrototypeSnapshot,
    Region,
)


@runtime_checkable
class PromptStore(Protocol):
    """Exemplars and class prototypes per namespace, bound to one model fingerprint."""

    def create_namespace(self, ns: str, fingerprint: str, embed_dim: int) -> NamespaceInfo:
        """Create an empty namespace for a model (no-op if it exists with the same model)."""
        ...

    def namespaces(self) -> list[str]:
        """All namespace names."""
        ...

    def namespace_info(self, ns: str) -> NamespaceInfo:
        """Model, dimension, version and sizes."""
        ...

    def add_exemplar(
        self,
        ns: str,
        class_name: str,
        embedding: np.ndarray,
        image_bytes: bytes,
        region: Region,
        author: str,
        note: str | None = None,
        *,
        fingerprint: str,
    ) -> AddResult:
        """Register one exemplar (idempotent)."""
        ...

    def add_exemplars(
        self, ns: str, items: Sequence[NewExemplar], *, fingerprint: str
    ) -> list[AddResult]:
        """Register many exemplars atomically (idempotent per exemplar)."""
        ...

    def remove_exemplar(self, ns: str, exemplar_id: str) -> int:
        """Remove an exemplar; returns the new version."""
        ...

    def remove_class(self, ns: str, name: str) -> int:
        """Remove a class with its exemplars; returns the new version."""
        ...

    def rename_class(self, ns: str, old: str, new: str) -> dict[str, str]:
        """Rename a class; returns old id -> new id."""
        ...

    def list_classes(self, ns: str) -> list[ClassSummary]:
        """Classes with exemplar counts."""
        ...

    def get_class(self, ns: str, name: str, with_embeddings: bool = False) -> ClassInfo:
        """A class's exemplars and prototype."""
        ...

    def exemplar_ids(self, ns: str) -> set[str]:
        """All exemplar ids of a namespace."""
        ...

    def get_source_image(self, ns: str, img_hash: str) -> bytes:
        """A stored source image."""
        ...

    def fetch_prototypes(self, ns: str, fingerprint: str) -> PrototypeSnapshot:
        """The prototype matrix and its version, for the detector."""
        ...

    def delete_namespace(self, ns: str) -> int:
        """Delete a namespace; returns the new version."""
        ...
