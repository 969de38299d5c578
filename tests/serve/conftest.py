"""Serving tests: a prepared catalog, a teacher and a tiny trained checkpoint, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.helpers import train_tiny
from tests.train.test_srec_pipeline import _data, _teacher


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LLM-SRec checkpoint (tiny LM) over a 40-user, 60-item synthetic catalog."""
    root = tmp_path_factory.mktemp("serve")
    data = _data(root)
    return train_tiny(data, _teacher(data, root / "teacher"), root / "run")
