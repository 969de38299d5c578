"""The SASRec teacher on one split under one protocol (`evaluate_model`): training's validation rounds
and the evaluation of a teacher checkpoint (`dist_srec.inference.evaluate`) both call it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dist_srec.data.loader import rank_loader
from dist_srec.eval.metrics import finalize
from dist_srec.eval.protocols import EvalProtocol, UserItems, all_reduce_sums, evaluate_full, evaluate_sampled
from dist_srec.models.sasrec import SASRec
from dist_srec.parallel.context import TrainContext


def max_history(user_items: UserItems) -> int:
    """The longest user row: an eval loader at this width sees every history whole."""
    return int(np.diff(user_items[0]).max(initial=1))


def evaluate_model(
    model: SASRec,
    data_dir: str | Path,
    protocol: EvalProtocol,
    *,
    user_items: UserItems,
    num_users: int,
    batch_size: int = 256,
    ctx: TrainContext | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Metrics (means, reduced over ranks) of a teacher on one split under one protocol."""
    ctx = ctx or TrainContext()
    model.eval()
    width = max_history(user_items) if protocol.protocol == "full" else model.cfg.max_len
    batches = rank_loader(data_dir, protocol.split, batch_size, width, ctx, shuffle=False, remainder="pad")
    show = progress and ctx.is_main
    if protocol.protocol == "sampled":
        sums = evaluate_sampled(
            lambda b, cands: model.score(b["history"].to(ctx.device), cands.to(ctx.device)),
            batches,
            user_items=user_items,
            num_items=model.cfg.num_items,
            num_users=num_users,
            protocol=protocol,
            progress=show,
        )
    else:
        sums = evaluate_full(
            lambda b: model.user_vector(b["history"].to(ctx.device)),
            model.item_embeddings().detach(),
            batches,
            num_users=num_users,
            protocol=protocol,
            progress=show,
        )
    return finalize(all_reduce_sums(sums))
