"""The paper's prompts, built from cached token-id pieces.

User prompt (the last `max_history_items` items, oldest first, dates in UTC):
    This user has made a series of purchases in the following order: Item No.1, Time: 2021-03-02,
    "<title>"[HistoryEmb], Item No.2, ... . Based on this sequence of purchases, generate user
    representation token:[UserOut]
Item prompt:
    The item title and item embedding are as follows: "<title>"[HistoryEmb], then generate item
    representation token:[ItemOut]

Nothing is tokenised per step from scratch. A prompt is cut into pieces at pre-tokenizer boundaries
(right before a space, or at a special token): the title chunk of each item (` "<title>"`, with the
space and quotes around it) is tokenised once per catalog, and the text between two title chunks
(template words, item number, date, separator, special tokens) is tokenised once per distinct string
and memoised. A batch is a concatenation of cached id arrays. For byte-level BPE tokenizers with
GPT-2 / Llama-3 style pre-tokenisation (SmolLM2, Llama-3) this equals tokenising the whole string;
`PromptBuilder.check_tokenization` verifies it and the builder warns on a mismatch (the ids are still
a valid tokenisation, just not the canonical one).

Padding is on the right: real tokens keep positions 0..len-1, and under causal attention no real
token sees a pad, so the hidden state of the out token (read at `out_pos`, not at T-1) does not
depend on padding or on the attention mask.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch
from torch import Tensor

from dist_srec.errors import ConfigError, DataError
from dist_srec.models.special_tokens import HISTORY_EMB, ITEM_OUT, SPECIAL_TOKENS, USER_OUT

log = logging.getLogger(__name__)

_MARKERS = SPECIAL_TOKENS
# Sentinels standing in for placeholders while a template is cut into pieces.
_IDX, _DATE, _TITLE, _HIST = "\x01", "\x02", "\x03", "\x04"
_CHUNK_END = re.compile(r"\s|\[HistoryEmb\]|\[UserOut\]|\[ItemOut\]|[\x01\x02]")
_MEMO_LIMIT = 1 << 18


@dataclass(kw_only=True)
class PromptConfig:
    """The prompt templates (paper defaults) and budgets."""

    user_template: str = (
        "This user has made a series of purchases in the following order: {history}. "
        "Based on this sequence of purchases, generate user representation token:[UserOut]"
    )
    """Must hold `{history}` and `[UserOut]` once each."""
    history_item_template: str = 'Item No.{index}, Time: {date}, "{title}"[HistoryEmb]'
    """One history entry: `{title}` and `[HistoryEmb]` once each; `{index}` (1-based) and `{date}` optional."""
    history_separator: str = ", "
    item_template: str = (
        'The item title and item embedding are as follows: "{title}"[HistoryEmb], '
        "then generate item representation token:[ItemOut]"
    )
    """Must hold `{title}`, `[HistoryEmb]` and `[ItemOut]` once each."""
    max_history_items: int = 10
    """The user prompt lists the last this-many history items."""
    title_max_tokens: int = 32
    """Titles are cut to this many tokens (of the title alone)."""

    def __post_init__(self) -> None:
        _check_template("user_template", self.user_template, {"history"}, {"history"}, {USER_OUT: 1})
        _check_template(
            "history_item_template",
            self.history_item_template,
            {"title"},
            {"title", "index", "date"},
            {HISTORY_EMB: 1},
        )
        _check_template(
            "item_template", self.item_template, {"title"}, {"title"}, {HISTORY_EMB: 1, ITEM_OUT: 1}
        )
        for m in _MARKERS:
            if m in self.history_separator:
                raise ConfigError(f"config field 'history_separator': must not contain {m}")
        if self.max_history_items < 1:
            raise ConfigError(f"config field 'max_history_items': must be >= 1, got {self.max_history_items}")
        if self.title_max_tokens < 1:
            raise ConfigError(f"config field 'title_max_tokens': must be >= 1, got {self.title_max_tokens}")


def _check_template(
    name: str, tpl: str, required: set[str], allowed: set[str], markers: dict[str, int]
) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None]
    except ValueError as e:
        raise ConfigError(f"config field '{name}': not a valid template ({e}): {tpl!r}") from e
    for f in required:
        if fields.count(f) != 1:
            raise ConfigError(f"config field '{name}': needs the placeholder {{{f}}} exactly once: {tpl!r}")
    extra = set(fields) - allowed
    if extra:
        raise ConfigError(
            f"config field '{name}': unknown placeholder(s) {sorted(extra)}; allowed: {sorted(allowed)}"
        )
    for m in _MARKERS:
        want = markers.get(m, 0)
        if tpl.count(m) != want:
            raise ConfigError(
                f"config field '{name}': needs {m} {want} time(s), found {tpl.count(m)}: {tpl!r}"
            )
    if any(fields.count(f) > 1 for f in allowed):
        raise ConfigError(f"config field '{name}': each placeholder may appear once: {tpl!r}")


def _split_title_chunk(rendered: str) -> tuple[str, str, tuple[str, str]]:
    """Cut a sentinel-rendered template around its title chunk: (before, after, (chunk_left, chunk_right)).

    The chunk reaches left to the last whitespace (inclusive) and right to the next whitespace,
    special marker or placeholder, so both cuts sit on pre-tokenizer boundaries.
    """
    pre, post = rendered.split(_TITLE)
    cut = max(max((pre.rfind(c) for c in " \t\n"), default=-1), pre.rfind(_IDX) + 1, pre.rfind(_DATE) + 1, 0)
    m = _CHUNK_END.search(post)
    end = m.start() if m else len(post)
    return pre[:cut], post[end:], (pre[cut:], post[:end])


def unix_to_date(ts: np.ndarray) -> list[str]:
    """Unix seconds -> 'YYYY-MM-DD' (UTC), formatting each distinct day once."""
    days = np.asarray(ts, dtype=np.int64) // 86400
    uniq, inv = np.unique(days, return_inverse=True)
    text = [datetime.fromtimestamp(int(d) * 86400, tz=timezone.utc).strftime("%Y-%m-%d") for d in uniq]
    return [text[i] for i in inv.reshape(-1)]


@dataclass
class PromptBatch:
    """A padded batch of prompts (right padding).

    input_ids       [B, T] int64, pad id after each row's end
    attention_mask  [B, T] int64, 1 on real tokens
    lengths         [B]    int64
    out_pos         [B]    int64, position of the row's [UserOut] / [ItemOut]
    slot_items      [M]    int64, the item id each [HistoryEmb] stands for, in row-major order
    """

    input_ids: Tensor
    attention_mask: Tensor
    lengths: Tensor
    out_pos: Tensor
    slot_items: Tensor

    @property
    def padding_fraction(self) -> float:
        return 1.0 - float(self.lengths.sum()) / max(1, self.input_ids.numel())

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            *(
                t.to(device)
                for t in (self.input_ids, self.attention_mask, self.lengths, self.out_pos, self.slot_items)
            )
        )


@dataclass
class PromptRows:
    """Unpadded prompts: per row an id array and the items of its [HistoryEmb] slots."""

    rows: list[np.ndarray]
    slot_items: list[np.ndarray]
    out_id: int
    hist_id: int
    pad_id: int

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(r) for r in self.rows), dtype=np.int64, count=len(self.rows))

    def pack(self, index: Sequence[int] | np.ndarray | None = None) -> PromptBatch:
        """Pad the rows `index` (all by default, in that order) into a `PromptBatch`."""
        idx = np.arange(len(self.rows)) if index is None else np.asarray(index, dtype=np.int64)
        rows = [self.rows[i] for i in idx]
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        t = int(lengths.max()) if len(rows) else 0
        mask = np.arange(t)[None, :] < lengths[:, None]
        ids = np.full((len(rows), t), self.pad_id, dtype=np.int64)
        ids[mask] = np.concatenate(rows) if rows else np.zeros(0, np.int64)  # row-major fill
        slot_items = np.concatenate([self.slot_items[i] for i in idx]) if len(idx) else np.zeros(0, np.int64)
        input_ids = torch.from_numpy(ids)
        out = (input_ids == self.out_id).nonzero()
        if out.shape[0] != len(rows) or (len(rows) and not torch.equal(out[:, 0], torch.arange(len(rows)))):
            raise DataError("every prompt must hold its out token exactly once (a title contains it?)")
        if int((input_ids == self.hist_id).sum()) != len(slot_items):
            raise DataError("[HistoryEmb] count does not match the number of history slots")
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            lengths=torch.from_numpy(lengths),
            out_pos=out[:, 1].contiguous(),
            slot_items=torch.from_numpy(slot_items.astype(np.int64)),
        )


def length_buckets(
    lengths: np.ndarray | Tensor, max_tokens: int, max_padding: float = 1.0, min_tokens: int = 0
) -> list[np.ndarray]:
    """Sort rows by length (longest first) and cut them into buckets, one LM forward each.

    A bucket of rows with lengths l_0 >= l_1 >= ... pads every row to l_0. The next row closes the
    bucket when it would take it past `max_tokens` padded tokens ((rows + 1) * l_0), or when its own
    padding (l_0 - l_i) / l_0 exceeds `max_padding` while the bucket already holds `min_tokens`
    padded tokens (so buckets stay big enough for efficient GEMMs). `max_padding=1` cuts by size only.
    Every row lands in exactly one bucket; a row longer than `max_tokens` gets a bucket of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    buckets, start = [], 0
    for i in range(1, len(order) + 1):
        if i < len(order):
            head, n = lengths[order[start]], i - start
            too_big = (n + 1) * head > max_tokens
            too_ragged = n * head >= min_tokens and head - lengths[order[i]] > max_padding * head
            if not (too_big or too_ragged):
                continue
        buckets.append(order[start:i])
        start = i
    return buckets


class PromptBuilder:
    """Builds user and item prompts for one catalog from cached token pieces.

    Args:
        tokenizer: a Hugging Face tokenizer holding the special tokens (see `dist_srec.models.special_tokens`).
        titles: `titles[i]` is item i's title (index 0 is padding); None where an item has no title.
        config: the templates.
    """

    def __init__(self, tokenizer, titles: Sequence[str | None], config: PromptConfig | None = None) -> None:
        self.cfg = config or PromptConfig()
        self.tok = tokenizer
        ids = tokenizer.convert_tokens_to_ids(list(_MARKERS))
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ConfigError(
                f"tokenizer lacks the special tokens {_MARKERS}; load the LM with dist_srec.models.frozen_lm"
            )
        self.hist_id, self.user_out_id, self.item_out_id = (int(i) for i in ids)
        self.pad_id = int(tokenizer.pad_token_id)
        with_sp = tokenizer("a")["input_ids"]
        without = tokenizer("a", add_special_tokens=False)["input_ids"]
        # Keep the tokenizer's own prefix (BOS); drop any suffix, which would come after the out token.
        start = next(i for i in range(len(with_sp) + 1) if with_sp[i : i + len(without)] == without)
        self._prefix = np.asarray(with_sp[:start], dtype=np.int64)
        self.titles = self._truncate_titles(titles)
        self._memo: dict[str, np.ndarray] = {}
        self._chunks: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        c = self.cfg
        self._u_pre, self._u_post = c.user_template.format(history=_HIST).split(_HIST)
        entry = c.history_item_template.format(index=_IDX, date=_DATE, title=_TITLE)
        self._e_pre, self._e_post, self._e_chunk = _split_title_chunk(entry)
        self._i_pre, self._i_post, self._i_chunk = _split_title_chunk(c.item_template.format(title=_TITLE))
        sample = [i for i, t in enumerate(self.titles) if t is not None][:8]
        if sample and not self.check_tokenization(sample):
            log.warning("piecewise tokenisation differs from whole-string tokenisation for this tokenizer")

    # --- caches -------------------------------------------------------------------------------
    def _truncate_titles(self, titles: Sequence[str | None]) -> list[str | None]:
        clean = [None if t is None else _strip_markers(str(t)) for t in titles]
        present = [i for i, t in enumerate(clean) if t is not None]
        enc = self._tokenize_titles([clean[i] for i in present]) if present else []
        budget = self.cfg.title_max_tokens
        for i, ids in zip(present, enc):
            if len(ids) > budget:
                clean[i] = self.tok.decode(ids[:budget]).rstrip("\ufffd").rstrip()
        return clean

    def _tokenize_titles(self, texts: list[str]) -> list[list[int]]:
        """Token ids of item text. Special tokens written in it (ours or the LM's, e.g. `<|im_start|>`)
        are tokenised as plain text: item text can never inject a control token; only the builder
        places the marker ids, from the templates."""
        return self.tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, memoised by string; misses are encoded in one batch call."""
        miss = list({t for t in texts if t not in self._memo})
        if miss:
            if len(self._memo) + len(miss) > _MEMO_LIMIT:
                self._memo.clear()
            for t, ids in zip(miss, self.tok(miss, add_special_tokens=False)["input_ids"]):
                self._memo[t] = np.asarray(ids, dtype=np.int64)
        return [self._memo[t] for t in texts]

    def _title_chunks(self, key: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """(flat ids, offsets [N+2]) of every item's title chunk for one chunk shape, built once."""
        if key not in self._chunks:
            left, right = key
            texts = [left + (t or "") + right for t in self.titles]
            enc = self._tokenize_titles(texts)
            offsets = np.zeros(len(enc) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(e) for e in enc])
            flat = np.fromiter((i for e in enc for i in e), dtype=np.int64, count=int(offsets[-1]))
            self._chunks[key] = (flat, offsets)
        return self._chunks[key]

    def _check_titles(self, items: np.ndarray) -> None:
        bad = sorted(
            {int(i) for i in items if i <= 0 or i >= len(self.titles) or self.titles[int(i)] is None}
        )
        if bad:
            raise DataError(f"items without a title (or outside the catalog): {bad[:20]}", field="title")

    # --- prompts ------------------------------------------------------------------------------
    def user_rows(self, history: Tensor | np.ndarray, history_ts: Tensor | np.ndarray) -> PromptRows:
        """User prompts from left-padded histories [B, L] (0 = padding) and their unix times [B, L]."""
        n = self.cfg.max_history_items
        hist = np.asarray(history)[:, -n:]
        ts = np.asarray(history_ts)[:, -n:]
        keep = hist > 0
        self._check_titles(hist[keep])
        dates = unix_to_date(ts[keep])
        flat, offsets = self._title_chunks(self._e_chunk)
        rows, slots, d = [], [], 0
        for b in range(hist.shape[0]):
            items = hist[b][keep[b]]
            texts = self._between_texts(dates[d : d + len(items)])
            d += len(items)
            between = self._encode(texts)
            pieces = [self._prefix, between[0]]
            for k, it in enumerate(items):
                pieces += [flat[offsets[it] : offsets[it + 1]], between[k + 1]]
            rows.append(np.concatenate(pieces))
            slots.append(items.astype(np.int64))
        return PromptRows(rows, slots, self.user_out_id, self.hist_id, self.pad_id)

    def _between_texts(self, dates: list[str]) -> list[str]:
        """The texts around and between the title chunks of one user prompt (len(dates) + 1 of them)."""

        def pre(k: int) -> str:
            return self._e_pre.replace(_IDX, str(k + 1)).replace(_DATE, dates[k])

        def post(k: int) -> str:
            return self._e_post.replace(_IDX, str(k + 1)).replace(_DATE, dates[k])

        n = len(dates)
        if n == 0:
            return [self._u_pre + self._u_post]
        sep = self.cfg.history_separator
        return (
            [self._u_pre + pre(0)]
            + [post(k) + sep + pre(k + 1) for k in range(n - 1)]
            + [post(n - 1) + self._u_post]
        )

    def item_rows(self, item_ids: Tensor | np.ndarray | Sequence[int]) -> PromptRows:
        """Item prompts for item ids [N]."""
        items = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        self._check_titles(items)
        flat, offsets = self._title_chunks(self._i_chunk)
        pre, post = self._encode([self._i_pre, self._i_post])
        head = np.concatenate([self._prefix, pre])
        rows = [np.concatenate([head, flat[offsets[i] : offsets[i + 1]], post]) for i in items]
        return PromptRows(
            rows, [items[k : k + 1] for k in range(len(items))], self.item_out_id, self.hist_id, self.pad_id
        )

    def shared_prefix(self, kind: str) -> np.ndarray:
        """The leading token ids every `kind` ("user" or "item") prompt starts with: the template's
        constant head, cut before any special token (a spliced input is never constant).

        Item prompts start with the tokenised text before the title, by construction. A user prompt's
        first piece also holds the first date, so its constant part is the common prefix of that piece
        over two dates that differ from the first digit on (callers still check each batch)."""
        if kind == "item":
            head = np.concatenate([self._prefix, self._encode([self._i_pre])[0]])
        elif kind == "user":
            a, b = (self._encode([self._between_texts([d])[0]])[0] for d in ("1970-01-01", "2999-12-31"))
            n = min(len(a), len(b))
            k = int(np.argmin(a[:n] == b[:n])) if not np.array_equal(a[:n], b[:n]) else n
            head = np.concatenate([self._prefix, a[:k]])
        else:
            raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
        special = np.isin(head, [self.hist_id, self.user_out_id, self.item_out_id, self.pad_id])
        return head[: int(np.argmax(special))] if special.any() else head

    # --- text (for checks and display) --------------------------------------------------------
    def user_text(self, items: Sequence[int], times: Sequence[int]) -> str:
        """The user prompt as a string (what the pieces concatenate to)."""
        n = self.cfg.max_history_items
        items, times = list(items)[-n:], list(times)[-n:]
        dates = unix_to_date(np.asarray(times, dtype=np.int64)) if items else []
        entries = [
            self.cfg.history_item_template.format(index=k + 1, date=dt, title=self.titles[it])
            for k, (it, dt) in enumerate(zip(items, dates))
        ]
        return self.cfg.user_template.format(history=self.cfg.history_separator.join(entries))

    def item_text(self, item: int) -> str:
        return self.cfg.item_template.format(title=self.titles[item])

    def check_tokenization(self, items: Sequence[int]) -> bool:
        """True if piecewise ids equal whole-string tokenisation for these items' item prompts and a
        user prompt over them."""
        items = list(items)
        rows = self.item_rows(items).rows
        ok = all(np.array_equal(r, self._full(self.item_text(i))) for r, i in zip(rows, items))
        times = np.arange(len(items), dtype=np.int64) * 86400 * 40 + 1_600_000_000
        user = self.user_rows(np.asarray([items]), times[None, :]).rows[0]
        return ok and np.array_equal(user, self._full(self.user_text(items, times)))

    def _full(self, text: str) -> np.ndarray:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return np.concatenate([self._prefix, np.asarray(ids, dtype=np.int64)])


def _strip_markers(title: str) -> str:
    """`title` without the marker strings, removed to a fixed point (`[Hist[HistoryEmb]oryEmb]` leaves
    nothing behind). Cosmetic: titles are tokenised with special tokens split, so a marker left in the
    text would be plain text anyway."""
    while True:
        out = title
        for m in _MARKERS:
            out = out.replace(m, "")
        if out == title:
            return out
        title = out
