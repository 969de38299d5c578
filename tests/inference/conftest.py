"""Serving tests: a tiny trained checkpoint over the shared catalog and teacher, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.helpers import train_tiny


@pytest.fixture(scope="session")
def tiny_ckpt(srec_setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LLM-SRec checkpoint (tiny LM) over the 40-user, 60-item synthetic catalog of `srec_setup`."""
    return train_tiny(*srec_setup, tmp_path_factory.mktemp("serve") / "run")
