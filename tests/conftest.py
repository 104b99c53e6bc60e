"""Shared pytest fixtures; each group lives in its own module and is re-exported here."""

import pytest

from tests.redis_fixture import *  # noqa: F403
from tests.service_fixtures import *  # noqa: F403


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny model trained for a few hundred steps on the tiny synthetic task (once)."""
    from tests.tiny import train_tiny

    return train_tiny(tmp_path_factory.mktemp("tiny"))
