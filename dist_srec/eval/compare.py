"""Several models evaluated side by side: same split, same users, same candidates.

User vectors are computed once per evaluation and reused by both protocols; the sampled protocol's
negatives depend only on (seed, user), so all models rank the same 1 + 99 candidates.

History-shuffle diagnostic (the paper's Tables 5 and 12): each user's most recent `window` history
items (with their timestamps) are permuted by a seeded RNG (seed, user); the LLM's window is the
items its prompt shows, the teacher's its `max_len`. The report gives the metrics on shuffled
histories and the mean cosine similarity between each user's original and shuffled vectors: a model
that ignores order scores ~1.0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dist_srec.eval.protocols import EvalProtocol, UserItems
from dist_srec.eval.tables import Batch, UserVecFn, evaluate_tables, user_table


def shuffle_history(batch: Batch, window: int, seed: int) -> dict[str, Tensor]:
    """A copy of `batch` whose last `window` real history items (and their timestamps) are permuted per
    user by `np.random.default_rng([seed, user])`; padding stays in place."""
    hist, ts = batch["history"].clone(), batch["history_ts"].clone()
    for row, u in enumerate(batch["user"].tolist()):
        real = np.flatnonzero(hist[row].numpy() != 0)[-window:]
        perm = real[np.random.default_rng([seed, u]).permutation(len(real))]
        hist[row, real], ts[row, real] = hist[row, perm], ts[row, perm]
    return {**batch, "history": hist, "history_ts": ts}


def mean_cosine(a: Tensor, b: Tensor, selected: np.ndarray) -> float:
    """Mean over selected rows of cos(a_u, b_u)."""
    rows = torch.from_numpy(np.flatnonzero(selected))
    return float(F.cosine_similarity(a[rows], b[rows], dim=-1).mean())


def compare_models(
    models: Mapping[str, tuple[UserVecFn, Tensor, int]],
    make_batches: Callable[[], Iterable[Batch]],
    protocols: list[EvalProtocol],
    *,
    user_items: UserItems,
    num_users: int,
    selected: np.ndarray,
    shuffle: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model {name: (user_vec_fn, item_table, shuffle_window)} under every protocol.

    Returns {name: {"<protocol>": metrics, "shuffled/<protocol>": metrics, "shuffle_cosine": c}}.
    """
    report: dict[str, Any] = {}
    for name, (vec_fn, items, window) in models.items():
        users = user_table(
            vec_fn, make_batches(), num_users, selected, desc=f"{name} users", progress=progress
        )
        out: dict[str, Any] = {}
        for p in protocols:
            out[p.protocol] = evaluate_tables(
                users, items, make_batches(), p, user_items=user_items, num_users=num_users
            )
        if shuffle:
            seed = protocols[0].seed
            shuf = user_table(
                vec_fn, make_batches(), num_users, selected, desc=f"{name} users (shuffled)", progress=progress,
                transform=lambda b, w=window, s=seed: shuffle_history(b, w, s),
            )  # fmt: skip
            for p in protocols:
                out[f"shuffled/{p.protocol}"] = evaluate_tables(
                    shuf, items, make_batches(), p, user_items=user_items, num_users=num_users
                )
            out["shuffle_cosine"] = mean_cosine(users, shuf, selected)
        report[name] = out
    return report


def format_report(report: dict[str, Any]) -> str:
    """A markdown table: one row per model (and shuffled variant), sampled and full metrics."""
    cols = ["model", "sampled NDCG@10", "sampled HR@10", "sampled NDCG@20", "full NDCG@10", "full HR@10",
            "full NDCG@20", "users"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, res in report.items():
        for prefix, label in (("", name), ("shuffled/", f"{name}, shuffled history")):
            s, f = res.get(f"{prefix}sampled"), res.get(f"{prefix}full")
            if s is None:
                continue
            vals = [s["ndcg@10"], s["hr@10"], s["ndcg@20"], f["ndcg@10"], f["hr@10"], f["ndcg@20"]]
            lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {int(s['count'])} |")
    cos = {n: r["shuffle_cosine"] for n, r in report.items() if "shuffle_cosine" in r}
    if cos:
        lines.append("")
        lines.append("mean cos(user vector, user vector with shuffled history): "
                     + ", ".join(f"{n} {c:.4f}" for n, c in cos.items()))  # fmt: skip
    return "\n".join(lines)
