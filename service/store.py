"""Which prompt store the service uses, said out loud.

- `REDIS_URL` (or the store's own `INSPECT_REDIS_URL`) set: that Redis. Both set and different:
  refused (which one was meant?). Every other INSPECT_REDIS_* setting (password, TLS, timeouts)
  applies either way.
- Neither set: the embedded default store, a local redis-server child process with persistence
  on (AOF, fsync always), data under INSPECT_REDIS_DATA_DIR (default ./data/redis). It lives and
  dies with the service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prompt_store import LocalRedis, RedisPromptStore, StoreSettings
from prompt_store.settings import redact_url
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass
class StoreHandle:
    """The store and, for the embedded default, the redis-server it started."""

    store: RedisPromptStore
    description: str  # where it is, safe to log (no password)
    max_image_bytes: int  # largest source image the store keeps (INSPECT_REDIS_MAX_IMAGE_BYTES)
    embedded: LocalRedis | None = None

    def close(self) -> None:
        self.store.close()
        if self.embedded is not None:
            log.info("stopping the embedded redis-server (pid %s)", self.embedded.pid)
            self.embedded.stop()


def store_settings(settings: ServiceSettings) -> StoreSettings | None:
    """StoreSettings for an external Redis, or None for the embedded default store."""
    base = StoreSettings()  # INSPECT_REDIS_* from the environment
    external = settings.redis_url.get_secret_value() if settings.redis_url else None
    if external is None:
        return base if "url" in base.model_fields_set else None
    if "url" in base.model_fields_set and base.url != external:
        raise ValueError(
            "REDIS_URL and INSPECT_REDIS_URL are both set and differ; keep one "
            f"(REDIS_URL={redact_url(external)}, INSPECT_REDIS_URL={base.redacted_url()})"
        )
    return StoreSettings(url=external)


def open_store(settings: ServiceSettings) -> StoreHandle:
    """Connect to the configured Redis, or start the embedded one; logs which."""
    external = store_settings(settings)
    if external is not None:
        log.warning("prompt store: external Redis at %s", external.redacted_url())
        return StoreHandle(
            RedisPromptStore.from_settings(external),
            external.redacted_url(),
            external.max_image_bytes,
        )
    server = LocalRedis(data_dir=settings.redis_data_dir)
    server.start()
    where = f"embedded redis-server on 127.0.0.1:{server.port}, data in {server.data_dir}"
    log.warning(
        "prompt store: REDIS_URL is not set, using the EMBEDDED default store (%s); set "
        "REDIS_URL to share prompts between replicas",
        where,
    )
    try:
        embedded = StoreSettings(url=server.url)
        store = RedisPromptStore.from_settings(embedded)
    except Exception:
        server.stop()
        raise
    return StoreHandle(store, where, embedded.max_image_bytes, server)
