"""Checkpoints as safetensors + JSON, written atomically; nothing is pickled.

A checkpoint is a directory:
    model.safetensors        the model's state dict (unwrapped from DDP)
    config.json              enough to rebuild the model (and what it was trained on)
    train_state.safetensors  optional: optimizer tensors and RNG states
    train_state.json         optional: optimizer param groups, epoch, step, best metric, data cursor

The whole directory is replaced atomically (`dist_srec.io.atomic_path`): a crash leaves the previous
checkpoint or none, never a mix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from dist_srec.errors import CheckpointError
from dist_srec.io import atomic_path, read_json, sha256_file
from dist_srec.storage import local_checkpoint

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_TENSORS_FILE = "train_state.safetensors"
STATE_JSON_FILE = "train_state.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint. `optimizer` and `train_state` are None for model-only checkpoints."""

    path: Path
    model_state: dict[str, Tensor]
    config: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    train_state: dict[str, Any] | None = None
    rng: dict[str, Tensor] | None = None


def optimizer_to_flat(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a torch optimizer state dict into tensors ("state.<param>.<key>") and JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"state.{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = val
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | Path,
    *,
    model_state: dict[str, Tensor],
    config: dict[str, Any],
    optimizer: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    rng: dict[str, Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see module docstring); returns its path. Weights that
    are not finite are refused (`CheckpointError` naming the tensor): no NaN is ever saved."""
    path = Path(path)
    _require_finite(model_state, f"weights to be saved in {path}")
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if optimizer is not None or train_state is not None:
            tensors, meta = optimizer_to_flat(optimizer) if optimizer is not None else ({}, None)
            tensors.update({f"rng.{k}": v.cpu().contiguous() for k, v in (rng or {}).items()})
            save_file(tensors, tmp / STATE_TENSORS_FILE)
            doc = {"optimizer": meta, "train_state": train_state or {}}
            (tmp / STATE_JSON_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def load_checkpoint(path: str | Path, *, with_train_state: bool = True) -> Checkpoint:
    """Read a checkpoint directory (a local path, or a URI staged by `dist_srec.storage`); a missing
    or unreadable file raises `CheckpointError` naming it."""
    path = local_checkpoint(path)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(
                f"checkpoint file {path / name} is missing (is {path} a checkpoint directory?)"
            )
    try:
        model_state = load_file(path / MODEL_FILE)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint file {path / MODEL_FILE} is unreadable: {e}") from e
    try:
        config = read_json(path / CONFIG_FILE)
    except ValueError as e:
        raise CheckpointError(f"checkpoint file {path / CONFIG_FILE} is not valid JSON: {e}") from e
    _require_finite(model_state, str(path / MODEL_FILE))
    ckpt = Checkpoint(path=path, model_state=model_state, config=config)
    if with_train_state and (path / STATE_JSON_FILE).is_file():
        try:
            tensors = load_file(path / STATE_TENSORS_FILE)
            doc = read_json(path / STATE_JSON_FILE)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint train state in {path} is unreadable: {e}") from e
        if doc.get("optimizer") is not None:
            ckpt.optimizer = optimizer_from_flat(tensors, doc["optimizer"])
        ckpt.train_state = doc.get("train_state", {})
        ckpt.rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return ckpt


def model_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint's model weights: the checkpoint's identity in result files and caches."""
    return sha256_file(local_checkpoint(path) / MODEL_FILE)


def rng_state() -> dict[str, Tensor]:
    """The torch CPU RNG state (dropout) as a tensor, for exact resume."""
    return {"torch_cpu": torch.get_rng_state()}


def set_rng_state(rng: dict[str, Tensor] | None) -> None:
    if rng and "torch_cpu" in rng:
        torch.set_rng_state(rng["torch_cpu"].to(torch.uint8))


def _require_finite(state: dict[str, Tensor], where: str) -> None:
    """`CheckpointError` naming the first floating tensor of `state` with a NaN or inf."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{where}: tensor '{name}' has {bad} non-finite values (NaN or inf)")
