"""Checks a training run makes before its first step, so that bad input fails in seconds, not after an
epoch: every shard of the splits it will read (present, sha256, exact sample count), and that the
catalog has enough items for the configured negatives.

Rank 0 checks; the outcome is agreed over ranks, so every rank stops together (the others would
otherwise wait in their next collective).
"""

from __future__ import annotations

from dist_srec.data.catalog import Catalog
from dist_srec.data.loader import ShardLoader
from dist_srec.errors import ConfigError, DataError, DistSrecError
from dist_srec.eval.protocols import UserItems, check_negatives
from dist_srec.parallel.context import TrainContext


def check_run_inputs(
    cat: Catalog,
    user_items: UserItems,
    ctx: TrainContext,
    *,
    splits: tuple[str, ...],
    eval_negatives: int | None,
    train_negatives: int | None = None,
    train_field: str = "num_negatives",
) -> None:
    """Raise on every rank if the run's inputs are bad (see the module docstring)."""
    error: DistSrecError | None = None
    if ctx.is_main:
        try:
            if train_negatives is not None and train_negatives >= cat.num_items:
                raise ConfigError(
                    f"config field '{train_field}': {train_negatives} training negatives per sample, but the "
                    f"catalog has only {cat.num_items} items ({cat.root})"
                )
            if eval_negatives is not None:  # None: validation ranks the full catalog
                check_negatives(user_items, cat.num_items, eval_negatives)
            for split in splits:
                ShardLoader.for_checks(cat.root, split).verify()
        except DistSrecError as e:
            error = e
    if ctx.agree(error is not None):
        raise error or DataError("rank 0 found bad input before the first step (see its error)")
