"""Prompts: the paper's exact text, cached pieces, placeholder positions, padding, templates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_srec.errors import ConfigError, DataError
from dist_srec.models.prompts import PromptBuilder, PromptConfig, length_buckets, unix_to_date
from dist_srec.models.special_tokens import add_special_tokens
from dist_srec.models.tiny_lm import build_tiny_lm

TITLES = [
    None,
    "Toy Story (1995)",
    "Star Wars (1977)",
    "Heat (1995)",
    "(500) Days of Summer",
    "Amélie! — Le fabuleux destin",
    "It's a Wonderful Life",
    "Se7en [HistoryEmb] 1995",
    None,
]
MAR_2_2021 = 1614643200  # 2021-03-02 00:00:00 UTC


@pytest.fixture(scope="module")
def tok():
    model, tokenizer = build_tiny_lm()
    add_special_tokens(model, tokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def builder(tok) -> PromptBuilder:
    return PromptBuilder(tok, TITLES)


def test_user_prompt_is_the_paper_text(builder: PromptBuilder, tok) -> None:
    hist = torch.tensor([[0, 1, 2]])
    ts = torch.tensor([[0, MAR_2_2021, MAR_2_2021 + 86400 * 40 + 3600]])
    batch = builder.user_rows(hist, ts).pack()
    expected = (
        "This user has made a series of purchases in the following order: "
        'Item No.1, Time: 2021-03-02, "Toy Story (1995)"[HistoryEmb], '
        'Item No.2, Time: 2021-04-11, "Star Wars (1977)"[HistoryEmb]. '
        "Based on this sequence of purchases, generate user representation token:[UserOut]"
    )
    assert tok.decode(batch.input_ids[0]) == expected
    assert batch.input_ids[0].tolist() == tok(expected, add_special_tokens=False)["input_ids"]
    assert batch.slot_items.tolist() == [1, 2]


def test_item_prompt_is_the_paper_text(builder: PromptBuilder, tok) -> None:
    batch = builder.item_rows([3]).pack()
    expected = (
        'The item title and item embedding are as follows: "Heat (1995)"[HistoryEmb], '
        "then generate item representation token:[ItemOut]"
    )
    assert tok.decode(batch.input_ids[0]) == expected
    assert batch.input_ids[0].tolist() == tok(expected, add_special_tokens=False)["input_ids"]


def test_piecewise_ids_equal_whole_string_tokenisation(builder: PromptBuilder) -> None:
    assert builder.check_tokenization([1, 2, 3, 4, 5, 6, 7])


def test_placeholder_positions_padding_and_out_positions(builder: PromptBuilder, tok) -> None:
    hist = torch.tensor([[0, 0, 4, 5, 6], [1, 2, 3, 1, 2], [0, 0, 0, 0, 0]])
    ts = torch.full_like(hist, MAR_2_2021)
    b = builder.user_rows(hist, ts).pack()
    assert b.slot_items.tolist() == [4, 5, 6, 1, 2, 3, 1, 2]
    hist_pos = (b.input_ids == builder.hist_id).nonzero()
    assert hist_pos[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    # right padding: out token is each row's last real token, pads after it
    assert b.out_pos.tolist() == (b.lengths - 1).tolist()
    assert (b.input_ids[torch.arange(3), b.out_pos] == builder.user_out_id).all()
    assert b.attention_mask.sum(1).tolist() == b.lengths.tolist()
    assert (b.input_ids[b.attention_mask == 0] == builder.pad_id).all()
    assert b.input_ids.shape[1] == int(b.lengths.max())
    assert 0.0 < b.padding_fraction < 1.0
    # each slot's title chunk precedes it: the tokens right before [HistoryEmb] decode to `"<title>"`
    r, t = hist_pos[0].tolist()
    assert tok.decode(b.input_ids[r, :t]).endswith('"(500) Days of Summer"')


def test_only_the_last_ten_items_numbered_from_one(builder: PromptBuilder, tok) -> None:
    hist = torch.tensor([[1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]])
    b = builder.user_rows(hist, torch.full_like(hist, MAR_2_2021)).pack()
    assert b.slot_items.tolist() == [3, 4, 5, 6, 1, 2, 3, 4, 5, 6]
    text = tok.decode(b.input_ids[0])
    assert 'Item No.1, Time: 2021-03-02, "Heat (1995)"' in text and "Item No.10," in text
    assert "Item No.11" not in text


def test_titles_truncated_and_markers_stripped(tok) -> None:
    long = " ".join(["word"] * 100)
    b = PromptBuilder(tok, [None, long, "Se7en [HistoryEmb] 1995"], PromptConfig(title_max_tokens=8))
    assert len(tok(b.titles[1], add_special_tokens=False)["input_ids"]) <= 8
    assert "[HistoryEmb]" not in b.titles[2]
    assert b.item_rows([1, 2]).pack().slot_items.tolist() == [1, 2]


def test_pieces_are_cached_not_retokenised(tok) -> None:
    b = PromptBuilder(tok, TITLES)
    hist = torch.tensor([[1, 2, 3], [4, 5, 6]])
    ts = torch.full_like(hist, MAR_2_2021)
    first = b.user_rows(hist, ts).pack()
    b.item_rows([1, 2, 3])

    class NoTokenizer:
        def __call__(self, *a, **k):
            raise AssertionError("re-tokenised at step time")

    b.tok = NoTokenizer()
    again = b.user_rows(hist.flip(0), ts).pack()
    assert torch.equal(again.input_ids, first.input_ids.flip(0))
    b.item_rows([3, 2, 1]).pack()


def test_items_without_titles_raise(builder: PromptBuilder) -> None:
    with pytest.raises(DataError, match="without a title"):
        builder.item_rows([8])
    with pytest.raises(DataError, match="without a title"):
        builder.user_rows(torch.tensor([[1, 8]]), torch.tensor([[1, 1]]))
    with pytest.raises(DataError):
        builder.item_rows([99])


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("user_template", "A user bought: {items}. [UserOut]", "placeholder"),
        ("user_template", "A user bought: {history}.", r"\[UserOut\]"),
        ("history_item_template", "Item {index}[HistoryEmb]", r"\{title\}"),
        ("history_item_template", '"{title}"', r"\[HistoryEmb\]"),
        ("item_template", '"{title}"[HistoryEmb][HistoryEmb][ItemOut]', r"\[HistoryEmb\]"),
        ("item_template", '"{title}"[HistoryEmb]', r"\[ItemOut\]"),
        ("item_template", '"{title}" {date}[HistoryEmb][ItemOut]', "unknown placeholder"),
        ("max_history_items", 0, "max_history_items"),
    ],
)
def test_bad_templates_raise_config_errors(field: str, value, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PromptConfig(**{field: value})


def test_custom_template_without_dates(tok) -> None:
    cfg = PromptConfig(history_item_template="{index}. {title}[HistoryEmb]", history_separator="; ")
    b = PromptBuilder(tok, TITLES, cfg)
    assert b.check_tokenization([1, 2, 6])
    text = tok.decode(b.user_rows(torch.tensor([[1, 2]]), torch.tensor([[1, 1]])).pack().input_ids[0])
    assert "order: 1. Toy Story (1995)[HistoryEmb]; 2. Star Wars (1977)[HistoryEmb]. Based" in text


def test_dates_are_utc() -> None:
    assert unix_to_date(np.array([MAR_2_2021, MAR_2_2021 + 86399, MAR_2_2021 - 1, 0])) == [
        "2021-03-02",
        "2021-03-02",
        "2021-03-01",
        "1970-01-01",
    ]


def test_length_buckets_cover_rows_once_within_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=37)
    buckets = length_buckets(lengths, max_tokens=200)
    flat = np.concatenate(buckets)
    assert sorted(flat.tolist()) == list(range(37))
    assert list(lengths[flat]) == sorted(lengths, reverse=True)
    for b in buckets:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 200
    assert [len(b) for b in length_buckets(np.array([300, 4]), 100)] == [1, 1]


def test_length_buckets_bound_padding_once_big_enough() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(200, 420, size=40)
    loose = length_buckets(lengths, max_tokens=100_000)
    assert len(loose) == 1  # size-only bucketing: one forward, padded to the longest row
    tight = length_buckets(lengths, max_tokens=100_000, max_padding=0.05, min_tokens=0)
    flat = np.concatenate(tight)
    assert sorted(flat.tolist()) == list(range(40)) and len(tight) > 1
    for b in tight:
        head = lengths[b].max()
        assert (head - lengths[b].min()) <= 0.05 * head
    # below min_tokens a bucket is never cut for padding
    big_min = length_buckets(lengths, max_tokens=100_000, max_padding=0.05, min_tokens=10**9)
    assert len(big_min) == 1
    padded = lambda bs: sum(len(b) * lengths[b].max() for b in bs)  # noqa: E731
    assert padded(tight) < padded(loose)
