"""Errors of the prompt store.

Every failure a caller can act on has its own class so the service can map it to an HTTP status
(StoreUnavailable -> 503, ModelMismatch -> 409, NotFound -> 404, Conflict -> 409,
InvalidInput -> 422) without parsing messages. All derive from `StoreError`.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class: anything the prompt store refuses or cannot do."""


class StoreUnavailable(StoreError):
    """Redis cannot be reached (or refused us); the message says what to check."""


class ModelMismatch(StoreError):
    """A namespace holds embeddings from another model (or another embedding dimension).

    Mixing embeddings of two models gives meaningless cosine similarities, so we refuse loudly.
    """

    def __init__(
        self,
        namespace: str,
        stored_fingerprint: str,
        given_fingerprint: str,
        stored_dim: int | None = None,
        given_dim: int | None = None,
    ) -> None:
        self.namespace = namespace
        self.stored_fingerprint = stored_fingerprint
        self.given_fingerprint = given_fingerprint
        self.stored_dim = stored_dim
        self.given_dim = given_dim
        if stored_fingerprint != given_fingerprint:
            what = (
                f"namespace {namespace!r} holds embeddings of model {stored_fingerprint}, "
                f"but this request uses model {given_fingerprint}"
            )
        else:
            what = (
                f"namespace {namespace!r} holds {stored_dim}-d embeddings of model "
                f"{stored_fingerprint}, but this request has {given_dim}-d embeddings"
            )
        super().__init__(
            f"{what}. Embeddings of different models cannot be mixed. Re-extract the namespace "
            "for the new model with RedisPromptStore.reextract(namespace, target, encode_fn, "
            "new_fingerprint) (it re-encodes the stored source images), or rebuild it from the "
            "original dataset with scripts/extract_prompts.py into a new namespace."
        )


class NotFound(StoreError):
    """The namespace, class, exemplar or image does not exist."""


class Conflict(StoreError):
    """The change contradicts the current state (name taken, namespace not empty, raced)."""


class InvalidInput(StoreError, ValueError):
    """Bad input (dimension, NaN, names, region, sizes); nothing was changed."""
