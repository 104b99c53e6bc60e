"""prompt_store: what the QA engineers have taught the line, kept in Redis.

Namespaces (one per product or line) hold defect classes; a class is a set of exemplars (prompt
embeddings with their source image and region) and its prototype, the normalised mean embedding
the detector consumes. Importing this package does no I/O; build a store with
`RedisPromptStore.from_settings(get_settings())`.
"""

from prompt_store.base import PromptStore
from prompt_store.errors import (
    Conflict,
    InvalidInput,
    ModelMismatch,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from prompt_store.local_redis import LocalRedis
from prompt_store.records import (
    AddResult,
    ClassInfo,
    ClassSummary,
    ExemplarRecord,
    NamespaceDump,
    NamespaceInfo,
    NewExemplar,
    PrototypeSnapshot,
    Region,
    StoreEvent,
    exemplar_id,
    image_hash,
    prototype_of,
)
from prompt_store.redis_store import EventSubscription, RedisPromptStore, events_channel
from prompt_store.settings import StoreSettings, get_settings

__all__ = [
    "AddResult",
    "ClassInfo",
    "ClassSummary",
    "Conflict",
    "EventSubscription",
    "ExemplarRecord",
    "InvalidInput",
    "LocalRedis",
    "ModelMismatch",
    "NamespaceDump",
    "NamespaceInfo",
    "NewExemplar",
    "NotFound",
    "PromptStore",
    "PrototypeSnapshot",
    "RedisPromptStore",
    "Region",
    "StoreError",
    "StoreEvent",
    "StoreSettings",
    "StoreUnavailable",
    "events_channel",
    "exemplar_id",
    "get_settings",
    "image_hash",
    "prototype_of",
]
