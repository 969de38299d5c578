"""Prompt-token counting: LLM-SRec counts the real tokens of the prompts it runs through the LM (the
attention-mask sum of the user prompts plus the deduplicated item prompts), the task logs them, and the
loop reports tokens and tokens/s beside samples/s."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_srec.train.srec_task import SRecTask
from dist_srec.train.srec_train import train_srec
from tests.models.test_llmsrec import NEG, lm, make_batch, make_model  # noqa: F401 (lm is a fixture)
from tests.train.helpers import tiny_srec_config


def test_count_equals_the_attention_mask_sum(lm) -> None:  # noqa: F811
    model = make_model(lm, max_tokens_per_forward=64)  # several buckets per pass
    batch = make_batch()
    cand = torch.cat([batch["target"][:, None], NEG], 1)
    user_rows = model.prompts.user_rows(batch["history"], batch["history_ts"])
    item_rows = model.prompts.item_rows(torch.unique(cand))  # each distinct candidate runs once
    expected = int(user_rows.pack().attention_mask.sum() + item_rows.pack().attention_mask.sum())
    task = SRecTask(model, {"catalog": {"num_items": model.teacher_items.shape[0] - 1}})
    model.take_prompt_tokens()
    model.loss(batch, NEG)
    assert model.take_prompt_tokens() == expected and model.prompt_tokens == 0
    model.cfg.loss.num_negatives = NEG.shape[1]
    _, logs = task.loss(batch, torch.Generator().manual_seed(0))
    assert logs["tokens"] > 0 and logs["tokens"] == float(int(logs["tokens"]))


def test_loop_reports_tokens_and_rates(srec_setup: tuple[Path, Path], tmp_path: Path) -> None:
    reports: list[dict[str, float]] = []
    cfg = tiny_srec_config(*srec_setup, tmp_path / "run", max_steps=3, log_every_steps=1)
    st = train_srec(cfg, reporter=lambda m, c: reports.append(m) if "train_loss" in m else None)
    assert [r["step"] for r in reports] == [1, 2, 3]
    tokens = [r["tokens"] for r in reports]
    assert 0 < tokens[0] < tokens[1] < tokens[2] == st.tokens
    for r in reports:  # one rank: the global rate is this rank's
        assert (
            r["tokens_per_s"] > 0 and r["tokens_per_s"] == r["tokens_per_s_rank"] and r["samples_per_s"] > 0
        )
        assert "train_tokens" not in r
