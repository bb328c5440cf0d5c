"""Shared fixtures; the builders they use live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import make_mvtec_tree


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread, as a second one only adds contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    return make_mvtec_tree(tmp_path / "mvtec")
