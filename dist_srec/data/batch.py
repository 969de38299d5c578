"""The sample and batch contract between the shards, the loader and every consumer.

A shard sample (one per user and split) is a JSON object:
    user        int        1-based user id
    history     list[int]  1-based item ids, oldest first (never contains 0)
    history_ts  list[int]  unix seconds, same length as `history`
    target      int        the next item after `history`
    target_ts   int        its unix time

Split semantics (leave-last-out, SASRec `data_partition`): for a user with items s_1..s_n (n >= 3),
train: history = s_1..s_{n-3}, target = s_{n-2}; valid: history = s_1..s_{n-2}, target = s_{n-1};
test: history = s_1..s_{n-1}, target = s_n.

A batch (`collate`) is a dict of tensors, histories left-padded with 0 so the most recent item is
always at position L-1:
    user        [B]     int64
    history     [B, L]  int64, 0 = padding
    history_ts  [B, L]  int64, 0 = padding
    target      [B]     int64
    target_ts   [B]     int64
    mask        [B]     bool, False for padding samples added to even out ranks (eval only)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

SAMPLE_KEYS = ("user", "history", "history_ts", "target", "target_ts")


def collate(samples: Sequence[dict[str, Any]], max_len: int, pad_mask: Sequence[bool] | None = None) -> dict:
    """Stack samples into a batch, keeping the last `max_len` history items of each.

    Args:
        samples: decoded shard samples (see module docstring).
        max_len: L, the history length of the batch.
        pad_mask: per sample, False for padding samples (default: all True).
    """
    b = len(samples)
    hist = np.zeros((b, max_len), dtype=np.int64)
    hist_ts = np.zeros((b, max_len), dtype=np.int64)
    for i, s in enumerate(samples):
        h = s["history"][-max_len:]
        if h:
            hist[i, max_len - len(h) :] = h
            hist_ts[i, max_len - len(h) :] = s["history_ts"][-max_len:]
    return {
        "user": torch.tensor([s["user"] for s in samples], dtype=torch.int64),
        "history": torch.from_numpy(hist),
        "history_ts": torch.from_numpy(hist_ts),
        "target": torch.tensor([s["target"] for s in samples], dtype=torch.int64),
        "target_ts": torch.tensor([s["target_ts"] for s in samples], dtype=torch.int64),
        "mask": torch.tensor(list(pad_mask) if pad_mask is not None else [True] * b, dtype=torch.bool),
    }
