"""A real redis-server for the test session (persistence on, free loopback port).

tests/conftest.py re-exports these fixtures. Tests that use them need the `redis-server` binary
(Debian: apt-get install redis-server); without it they are skipped with that message.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import redis

from prompt_store import LocalRedis, RedisPromptStore

__all__ = ["redis_server", "redis_url", "redis_store"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One redis-server for the whole session, stopped cleanly at the end."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = LocalRedis(data_dir=tmp_path_factory.mktemp("redis-session"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    """URL of the session server, emptied before the test so tests cannot see each other."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisPromptStore]:
    """A RedisPromptStore on the emptied session server (fast retries so failures are quick)."""
    store = RedisPromptStore.from_url(redis_url, retries=2, retry_backoff_base=0.01)
    yield store
    store.close()
