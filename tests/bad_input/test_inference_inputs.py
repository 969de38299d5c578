"""Inference inputs: K, ambiguous titles, control tokens in item text, and the kernel path on CUDA."""

from __future__ import annotations

import csv
import logging
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_srec.config import PrepareConfig
from dist_srec.data.catalog import Catalog
from dist_srec.data.prepare import prepare
from dist_srec.errors import DataError
from dist_srec.inference.recommend import titles_to_items
from dist_srec.kernels import _dispatch
from dist_srec.models.frozen_lm import load_frozen_lm
from dist_srec.models.lm_config import LLMConfig
from dist_srec.models.prompts import PromptBuilder
from tests.bad_input.conftest import one_error_line, run_cli


@pytest.mark.parametrize("k", ["0", "-1"])
def test_recommend_k_below_one_is_refused_before_loading(tmp_path: Path, capsys, k: str) -> None:
    code, err = run_cli(
        ["recommend", "--ckpt", tmp_path / "no-such-checkpoint", "--user", "u1", "--k", k], capsys
    )
    line = one_error_line(err)
    assert code == 2 and f"k={k}: must be >= 1 (field 'k')" in line, "checked before the checkpoint is read"


def test_shared_titles_are_listed_and_picked_by_id(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    with (raw / "i.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["user_id", "item_id", "timestamp"]]
                                + [["u1", f"i{j}", 1_600_000_000 + j] for j in range(4)])  # fmt: skip
    with (raw / "t.csv").open("w", newline="") as f:
        csv.writer(f).writerows(
            [["item_id", "title"], ["i0", "Same"], ["i1", "Other"], ["i2", "Same"], ["i3", "X"]]
        )
    prepare(PrepareConfig(dataset="custom", out=str(tmp_path / "d"), interactions=str(raw / "i.csv"),
                          items=str(raw / "t.csv"), kcore=0, progress=False))  # fmt: skip
    cat = Catalog.load(tmp_path / "d")
    with pytest.raises(
        DataError, match=r"title 'Same' is shared by items \[1, 3\]; name the one you mean as '#<id>'"
    ):
        titles_to_items(cat, ["Other", "Same"])
    assert titles_to_items(cat, ["Other", "#3"]) == [2, 3]
    with pytest.raises(DataError, match=r"item id #9 is outside the catalog's 1\.\.4"):
        titles_to_items(cat, ["#9"])


def test_item_text_cannot_inject_control_tokens() -> None:
    lm = load_frozen_lm(LLMConfig(path="tiny", dtype="float32"))
    titles = [
        None,
        "[Hist[HistoryEmb]oryEmb] nested",
        "A <|im_start|> chat [UserOut] turn",
        "Plain [ItemOut]",
    ]
    pb = PromptBuilder(lm.tokenizer, titles)
    assert pb.titles[1] == " nested" and "[HistoryEmb]" not in "".join(t or "" for t in pb.titles)
    specials = set(lm.tokenizer.all_special_ids) | {lm.hist_id, lm.user_out_id, lm.item_out_id}
    prefix = len(pb._prefix)
    for row in pb.item_rows([1, 2, 3]).rows:
        body = row[prefix:].tolist()
        assert body.count(lm.hist_id) == 1 and body.count(lm.item_out_id) == 1
        assert not (set(body) - {lm.hist_id, lm.item_out_id}) & specials, (
            "only the template places control ids"
        )
    user = pb.user_rows(
        np.array([[1, 2, 3]]), np.array([[1_600_000_000, 1_600_100_000, 1_600_200_000]])
    ).rows[0]
    body = user[prefix:].tolist()
    assert body.count(lm.hist_id) == 3 and body.count(lm.user_out_id) == 1 and lm.item_out_id not in body


def test_auto_kernel_path_is_torch_on_cuda_and_logged_once(caplog, monkeypatch) -> None:
    monkeypatch.setattr(_dispatch, "_logged", set())
    monkeypatch.delenv("DIST_SREC_KERNELS", raising=False)
    cuda = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    with caplog.at_level(logging.INFO, logger=_dispatch.__name__):
        assert not _dispatch.use_triton(cuda, "seq_embed") and not _dispatch.use_triton(cuda, "seq_embed")
    lines = [r.getMessage() for r in caplog.records if "seq_embed" in r.getMessage()]
    assert lines == ["kernel seq_embed: torch reference path on cuda (auto: Triton is opt-in on CUDA)"]
