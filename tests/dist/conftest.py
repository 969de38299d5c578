"""Shared set-up of the distributed tests: a small prepared catalog and a trained teacher (module-cheap)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.test_srec_pipeline import _data, _teacher


@pytest.fixture(scope="session")
def srec_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(prepared data dir, teacher checkpoint) shared by every test of this folder."""
    root = tmp_path_factory.mktemp("dist-srec")
    data = _data(root)
    return data, _teacher(data, root / "teacher")
