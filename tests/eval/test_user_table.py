"""`user_table`: vectors of the selected users only, and under `lockstep` one `vec_fn` call per batch
(ranks under ZeRO-3 must run the same LM forwards, even for batches without a selected user)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_srec.eval.tables import user_table


def _batches() -> list[dict[str, torch.Tensor]]:
    # users 1..6 in batches of 2; only users 2 and 5 are selected, so the batch (3, 4) has none
    return [
        {"user": torch.tensor([a, a + 1]), "mask": torch.ones(2), "history": torch.full((2, 3), a)}
        for a in (1, 3, 5)
    ]


@pytest.mark.parametrize(("lockstep", "calls"), [(False, 2), (True, 3)])
def test_selected_rows_and_calls(lockstep: bool, calls: int) -> None:
    selected = np.zeros(8, bool)
    selected[[2, 5]] = True
    seen: list[list[int]] = []

    def vec_fn(b: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(b["user"].tolist())
        return b["user"].float()[:, None].repeat(1, 4)

    table = user_table(vec_fn, _batches(), 7, selected, progress=False, lockstep=lockstep)
    assert len(seen) == calls
    assert table[2].tolist() == [2.0] * 4 and table[5].tolist() == [5.0] * 4
    assert table[[1, 3, 4, 6]].abs().sum() == 0  # the idle call's output is dropped


def test_lockstep_rank_without_selected_users_gets_zeros() -> None:
    selected = np.zeros(8, bool)
    table = user_table(lambda b: torch.ones(len(b["user"]), 4), _batches(), 7, selected,
                       progress=False, lockstep=True)  # fmt: skip
    assert table.shape == (8, 4) and table.abs().sum() == 0
    with pytest.raises(ValueError, match="no users"):
        user_table(lambda b: torch.ones(len(b["user"]), 4), _batches(), 7, selected, progress=False)
