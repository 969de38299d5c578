"""Loading a trained LLM-SRec checkpoint for inference, and its catalog's item vectors.

`load_srec(ckpt)` rebuilds the model from the LM, teacher and catalog its config.json names (refusing
a checkpoint whose LM, teacher or catalog differ); `catalog_vectors` returns the [N+1, d] item table,
read from the run's item-vector store when one with the same identity exists, else encoded and stored.
Evaluation, `recommend` and the batch jobs all load through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dist_srec.data.catalog import Catalog
from dist_srec.data.item_vectors import TABLE_LAYOUT, open_complete, store_dir, vectors_identity, write_table
from dist_srec.errors import CheckpointError
from dist_srec.eval.tables import item_table
from dist_srec.models.llmsrec import LLMSRec, LLMSRecConfig
from dist_srec.models.lm_config import LLMConfig
from dist_srec.models.losses import LossConfig
from dist_srec.models.prompts import PromptConfig
from dist_srec.storage import run_dir_of
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.srec_build import build_model
from dist_srec.train.srec_task import check_identity, identity


def load_srec(
    ckpt: str | Path, device: torch.device | str = "cpu", data: str | Path | None = None
) -> tuple[LLMSRec, dict, Catalog]:
    """Rebuild LLM-SRec from a checkpoint directory (the LM and teacher named in its config.json)."""
    ck = ckpt_io.load_checkpoint(ckpt, with_train_state=False)
    conf = ck.config
    if conf.get("format") != "dist-srec/llm-srec":
        raise CheckpointError(f"{ckpt} is not an LLM-SRec checkpoint (format {conf.get('format')!r})")
    cat = Catalog.load(data or conf["catalog"]["data"])
    llm = {k: v for k, v in conf["llm"].items() if k != "content_hash"}
    model_cfg = model_config(conf["model"])
    model, parts = build_model(
        LLMConfig(**llm), conf["teacher"]["path"], cat, model_cfg, torch.device(device)
    )
    check_identity(conf, identity(**parts, train={}), Path(ckpt))
    model.load_trainable_state_dict(ck.model_state)
    model.eval()
    return model, conf, cat


def model_config(d: dict[str, Any]) -> LLMSRecConfig:

    d = dict(d)
    return LLMSRecConfig(**{**d, "loss": LossConfig(**d["loss"]), "prompts": PromptConfig(**d["prompts"])})


def catalog_vectors(
    model: LLMSRec,
    conf: dict[str, Any],
    ckpt: str | Path,
    cat: Catalog,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[Tensor, Path]:
    """The [N+1, d] fp32 item table of a loaded checkpoint and the store it lives in:
    `<cache_dir or the run dir's cache/>/vectors-<heads key>-float32` (`dist_srec.data.item_vectors`).
    Read when a complete store of the same identity is there (a validation round of the run that made
    the checkpoint writes it), else encoded and written."""
    ident = vectors_identity(
        conf, model.trainable_state_dict(), catalog_sha256=cat.content_sha256, num_items=cat.num_items
    )
    run_dir = run_dir_of(ckpt)
    root = store_dir(run_dir, ident, TABLE_LAYOUT.dtype)
    if cache_dir is not None:
        root = Path(cache_dir) / root.name
    store = open_complete(root, ident)
    if store is not None:
        return store.table(), root
    table = item_table(model, cat.num_items, progress=progress)
    write_table(root, ident, table, TABLE_LAYOUT)
    return table, root
