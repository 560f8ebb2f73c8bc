"""Shared by every test: caches go to a temporary folder, never the user's ~/.cache."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    before = os.environ.get("VISNET_CACHE")
    os.environ["VISNET_CACHE"] = str(tmp_path_factory.mktemp("visnet-cache"))
    yield
    if before is None:
        os.environ.pop("VISNET_CACHE", None)
    else:
        os.environ["VISNET_CACHE"] = before
