"""The LLM-SRec special tokens and how they are added to a tokenizer and its embedding table.

`[HistoryEmb]` marks where a projected teacher item vector replaces a token embedding; `[UserOut]` and
`[ItemOut]` mark where the user and item vectors are read. They are defined here once; the prompt
builder (`dist_srec.models.prompts`) and the frozen LM (`dist_srec.models.frozen_lm`) import them.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_srec.models.zero3 import gathered, rows

HISTORY_EMB = "[HistoryEmb]"


USER_OUT = "[UserOut]"


ITEM_OUT = "[ItemOut]"


PAD = "[PAD]"


SPECIAL_TOKENS = (HISTORY_EMB, USER_OUT, ITEM_OUT)


def add_special_tokens(model: nn.Module, tokenizer) -> None:
    """Add `[HistoryEmb]`, `[UserOut]`, `[ItemOut]` (+ `[PAD]` if missing) and resize the embeddings.

    New rows are set to the mean of the existing rows (deterministic; they are never read, see module
    docstring). A tied output projection follows the input table.
    """
    new: dict = {"extra_special_tokens": [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]}
    if tokenizer.pad_token is None:
        new["pad_token"] = PAD
    added = tokenizer.add_special_tokens(new, replace_extra_special_tokens=False) if any(new.values()) else 0
    if len(tokenizer) > rows(model.get_input_embeddings().weight) or added:
        old = rows(model.get_input_embeddings().weight)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        table = model.get_input_embeddings().weight
        with gathered([table], modifier_rank=0), torch.no_grad():
            table[old:] = table[:old].float().mean(0).to(table.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
