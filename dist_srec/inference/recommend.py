"""`dist-srec recommend`: top-K items for a user of the data, or for an ad-hoc history of titles.

    dist-srec recommend --ckpt runs/srec/best --user 196 --k 10
    dist-srec recommend --ckpt runs/srec/best --history "Toy Story (1995); Heat (1995)" --k 10

The user vector comes from the user prompt over the history (a known user: every interaction in the
data, oldest first; an ad-hoc history: the titles in the order given, dated today, since no times are
known). Items are scored by dot product against the whole catalog, in chunks (one top-K
implementation: `dist_srec.eval.ranking.chunked_topk`), with the history's items excluded.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import torch

from dist_srec.data.catalog import Catalog
from dist_srec.errors import DataError
from dist_srec.eval.ranking import Exclusion, chunked_topk
from dist_srec.inference.load import catalog_vectors, load_srec


@dataclass
class Recommendation:
    rank: int
    item_id: int
    title: str
    score: float


def unknown_key_error(
    name: str, choices: list[str], what: str, *, path: object = None, line: int | None = None
) -> DataError:
    """DataError for an unknown key, with up to 5 close matches (and the file and line it came from)."""
    near = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    hint = f"; close matches: {near}" if near else ""
    at = f"line {line}: " if line is not None else ""
    return DataError(f"{at}unknown {what} {name!r}{hint}", path=path, field=what)


def user_history(cat: Catalog, user_key: str) -> tuple[list[int], list[int]]:
    """(item ids, unix times) of every interaction of the user with original key `user_key`."""
    keys = cat.user_keys
    try:
        uid = keys.index(str(user_key), 1)
    except ValueError:
        raise unknown_key_error(str(user_key), keys[1:], "user") from None
    t = cat.interactions(["user_id", "item_id", "timestamp"]).filter(pc.field("user_id") == uid)
    return t["item_id"].to_pylist(), t["timestamp"].to_pylist()


def titles_to_items(cat: Catalog, titles: list[str]) -> list[int]:
    """Item ids of history entries: a title (exact, then case-insensitive) or `#<item id>`.

    An unknown title lists close matches; a title that several items share is an error listing their
    ids, so the user picks one with `#<id>` instead of silently getting one of them.
    """
    exact: dict[str, list[int]] = {}
    folded: dict[str, list[int]] = {}
    for i, t in enumerate(cat.titles):
        if i:
            exact.setdefault(t, []).append(i)
            folded.setdefault(t.casefold(), []).append(i)
    out = []
    for t in titles:
        t = t.strip()
        if not t:
            continue
        if t.startswith("#") and t[1:].isdigit():
            i = int(t[1:])
            if not 1 <= i <= cat.num_items:
                raise DataError(f"item id {t} is outside the catalog's 1..{cat.num_items}", field="history")
            out.append(i)
            continue
        ids = exact.get(t) or folded.get(t.casefold())
        if ids is None:
            raise unknown_key_error(t, list(exact), "title")
        if len(ids) > 1:
            raise DataError(f"title {t!r} is shared by items {ids}; name the one you mean as '#<id>' "
                            f"(e.g. '#{ids[0]}')", field="history")  # fmt: skip
        out.append(ids[0])
    if not out:
        raise DataError("the history names no titles", field="history")
    return out


@torch.no_grad()
def recommend(
    ckpt: str | Path,
    *,
    user: str | None = None,
    history: list[str] | None = None,
    k: int = 10,
    data: str | Path | None = None,
    progress: bool = False,
    loaded: tuple | None = None,
) -> list[Recommendation]:
    """Top-k over the full catalog for a known user or an ad-hoc title history (exactly one of them).

    `loaded` may pass the `(model, config, catalog)` of `load_srec(ckpt)` to reuse across calls.
    """

    if (user is None) == (history is None):
        raise DataError("give exactly one of --user and --history")
    if k < 1:
        raise DataError(f"k={k}: must be >= 1", field="k")
    model, conf, cat = loaded or load_srec(ckpt, data=data)
    if k > cat.num_items:
        raise DataError(f"k={k} is larger than the catalog ({cat.num_items} items)", field="k")
    if user is not None:
        items, times = user_history(cat, user)
    else:
        items = titles_to_items(cat, history or [])
        times = [int(time.time())] * len(items)
    table, _ = catalog_vectors(model, conf, ckpt, cat, progress=progress)
    batch = {"history": torch.tensor([items]), "history_ts": torch.tensor([times])}
    u = model.encode_users(batch).float()
    scores, ids = chunked_topk(u, table, k, exclude=Exclusion.from_history(batch["history"]))
    return [
        Recommendation(r + 1, int(i), cat.titles[int(i)], float(s))
        for r, (s, i) in enumerate(zip(scores[0].tolist(), ids[0].tolist()))
        if i > 0
    ]
