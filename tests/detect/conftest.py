"""Fixtures the detector tests share: one torch thread, a tiny synthetic set, its categories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visnet.data.street2shop import read_set
from visnet.data.synthetic import make_synthetic_set


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on a busy two-core machine run several times slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_set(root)
    return root


@pytest.fixture(scope="module")
def categories(data_dir) -> tuple[str, ...]:
    return tuple(read_set(data_dir).categories)
