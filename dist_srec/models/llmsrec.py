"""LLM-SRec: a frozen LLM reads a prompt whose [HistoryEmb] slots hold projected teacher item vectors,
and MLP heads map the hidden state at [UserOut] / [ItemOut] to 128-d user and item representations.

    user:  h_u = LM(splice(user prompt))[out_pos],  u = user_head(h_u)                  [B, d]
    item:  h_i = LM(splice(item prompt))[out_pos],  v = item_head(h_i)                  [N, d]
    splice: [HistoryEmb] <- item_proj(teacher item embedding), [UserOut]/[ItemOut] <- trainable vectors
    score(u, v) = u · v

Only `LLMSRecHeads` trains; the LM and the teacher are frozen explicitly and stay in eval mode even
under `.train()`. Efficiency: prompts come from cached token pieces; each pass sorts its prompts by
length and cuts them into buckets of at most `max_tokens_per_forward` padded tokens; candidate items
are deduplicated before the item pass; `item_proj` runs once per distinct item per pass; prompts are
right-padded and run without an attention mask (exact for causal attention, see
`FrozenLM.hidden`), and the hidden state is read at each row's out token; no vocabulary logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from dist_srec.errors import CheckpointError, ConfigError
from dist_srec.kernels.seq_embed import seq_embed
from dist_srec.models.frozen_lm import FrozenLM, PrefixKV
from dist_srec.models.heads import LLMSRecHeads
from dist_srec.models.losses import LossConfig, llmsrec_loss
from dist_srec.models.prompts import PromptBuilder, PromptConfig, PromptRows, length_buckets
from dist_srec.models.zero3 import gathered, is_partitioned


class Teacher(Protocol):
    """What LLM-SRec needs from the frozen sequential recommender (SASRec)."""

    def item_embeddings(self) -> Tensor: ...  # [N+1, D], row 0 = padding

    def user_vector(self, history: Tensor) -> Tensor: ...  # [B, L] left-padded -> [B, D]


@dataclass(kw_only=True)
class LLMSRecConfig:
    """Heads, bucketing, loss and prompt settings of LLM-SRec (the LM itself: `LLMConfig`)."""

    head_hidden: int = 2048
    """Width inside user_head / item_head."""
    out_dim: int = 128
    """d: width of user and item representations."""
    teacher_hidden: int = 128
    """Width inside teacher_proj."""
    max_tokens_per_forward: int = 16384
    """Length buckets hold at most this many padded tokens (rows x longest row) per LM forward."""
    bucket_max_padding: float = 0.08
    """A row whose padding would exceed this fraction of its bucket's longest row starts a new bucket
    (once the bucket holds `bucket_min_tokens`); 1.0 buckets by size only. Results do not depend on
    it (right padding under causal attention); only the padded work does."""
    bucket_min_tokens: int = 2048
    """Buckets are not cut for padding below this many padded tokens (GEMMs stay large enough)."""
    reuse_prefix: bool = True
    """Run each prompt kind's constant template head (`PromptBuilder.shared_prefix`) through the LM
    once, and every prompt from the position after it, attending to the head's cached keys/values.
    Same hidden states (to rounding); saves the head's share of every forward and backward."""
    no_grad_prefix: bool = True
    """While training, run each bucket's leading positions before its first spliced token (an item
    prompt's title; a user prompt's first date and title), after the cached head, without a graph: as
    per-row keys/values (`FrozenLM.extend_kv`) that the rest of the bucket attends to. Nothing
    trainable reaches those positions, so the loss and gradients are the same (to rounding); the
    backward skips them. Not under DeepSpeed ZeRO-3, where every rank must run the same forwards."""
    seed: int = 0
    """Seeds the out-vector initialisation (the Linear layers follow torch's global seed)."""
    teacher_dropout: bool = False
    """Compute the distillation target with the teacher's dropout on during training, as the authors'
    code does (its `model.train()` reaches the teacher). Off: the teacher's deterministic vector.
    Validation and evaluation never use dropout."""
    loss: LossConfig = field(default_factory=LossConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        for name in ("head_hidden", "out_dim", "teacher_hidden", "max_tokens_per_forward"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}': must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.bucket_max_padding <= 1.0:
            raise ConfigError(
                f"config field 'bucket_max_padding': must be in [0, 1], got {self.bucket_max_padding}"
            )
        if self.bucket_min_tokens < 0:
            raise ConfigError(f"config field 'bucket_min_tokens': must be >= 0, got {self.bucket_min_tokens}")


class LLMSRec(nn.Module):
    """The composition: frozen LM + frozen teacher + trainable heads.

    Args:
        lm: the frozen LM (`dist_srec.models.frozen_lm.load_frozen_lm`).
        teacher: the trained SASRec (or anything with `item_embeddings()` and `user_vector()`).
        titles: `titles[i]` is item i's title, i in 0..N (0 = padding); must match the teacher's items.
        config: see `LLMSRecConfig`.
    """

    def __init__(
        self, lm: FrozenLM, teacher: nn.Module, titles: Sequence[str | None], config: LLMSRecConfig
    ) -> None:
        super().__init__()
        self.cfg = config
        self.lm = lm
        self.teacher = teacher
        teacher.eval()
        teacher.requires_grad_(False)
        with torch.no_grad():
            items = teacher.item_embeddings().detach().float().clone()  # [N+1, D]
        if items.shape[0] != len(titles):
            raise CheckpointError(
                f"the teacher has {items.shape[0] - 1} items but the catalog has {len(titles) - 1}: "
                "was the teacher trained on another catalog?"
            )
        self.register_buffer("teacher_items", items, persistent=False)
        self.prompts = PromptBuilder(lm.tokenizer, titles, config.prompts)
        self.heads = LLMSRecHeads(
            teacher_dim=items.shape[1],
            lm_hidden=lm.hidden_size,
            head_hidden=config.head_hidden,
            out_dim=config.out_dim,
            teacher_hidden=config.teacher_hidden,
        )
        self.heads.init_out_vectors(lm.input_embeddings(), torch.Generator().manual_seed(config.seed))
        self.heads.to(items.device)
        self.prompt_tokens = 0
        """Real (non-padding) prompt tokens run through the LM since the last `take_prompt_tokens()`."""
        # out-token id -> (constant head ids [p], its per-layer keys/values); built now, on every rank
        # at once (under ZeRO-3 a forward is a collective), and never saved: the LM determines it.
        self.prefixes: dict[int, tuple[Tensor, PrefixKV]] = {}
        if config.reuse_prefix:
            for kind, out_id in (("user", lm.user_out_id), ("item", lm.item_out_id)):
                ids = torch.from_numpy(self.prompts.shared_prefix(kind))
                if len(ids):
                    self.prefixes[out_id] = (ids.to(items.device), lm.prefix_kv(ids))

    def train(self, mode: bool = True) -> LLMSRec:
        super().train(mode)
        self.lm.eval()  # frozen parts never leave eval mode (no dropout)
        self.teacher.eval()
        return self

    # --- parameters ---------------------------------------------------------------------------
    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint holds: the heads only (the LM and teacher are identified by their hashes).

        Whole tensors: heads partitioned by one ZeRO-3 engine (`dist_srec.parallel.one_engine`) are
        gathered and copied, a collective that every rank must make."""
        params = list(self.heads.parameters())
        if not any(is_partitioned(p) for p in params):
            return self.heads.state_dict()
        with gathered(params):
            return {k: v.detach().clone() for k, v in self.heads.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        self.heads.load_state_dict(state)

    def take_prompt_tokens(self) -> int:
        """The `prompt_tokens` counted so far (user and item prompts, items deduplicated as run, a
        cached constant head included in each prompt's count), and reset the count to 0."""
        n, self.prompt_tokens = self.prompt_tokens, 0
        return n

    # --- encoders -----------------------------------------------------------------------------
    def encode_users(self, batch: dict[str, Tensor]) -> Tensor:
        """User representations [B, d] from a batch with `history` [B, L] and `history_ts` [B, L]."""
        rows = self.prompts.user_rows(batch["history"].cpu(), batch["history_ts"].cpu())
        return self.heads.user_head(self._out_hidden(rows))

    def encode_items(self, item_ids: Tensor) -> Tensor:
        """Item representations [N, d] for item ids [N]; each distinct item runs through the LM once."""
        uniq, inv = torch.unique(item_ids.reshape(-1).cpu(), return_inverse=True)
        z = self.heads.item_head(self._out_hidden(self.prompts.item_rows(uniq)))
        return z[inv.to(z.device)]

    def teacher_user(self, history: Tensor) -> Tensor:
        """teacher_proj(teacher user vector) [B, d]; the teacher itself runs without a graph (in train
        mode, i.e. with dropout, only while training with `teacher_dropout`)."""
        self.teacher.train(self.training and self.cfg.teacher_dropout)
        try:
            with torch.no_grad():
                t = self.teacher.user_vector(history.to(self.teacher_items.device))
        finally:
            self.teacher.eval()
        return self.heads.teacher_proj(t.float())

    def _out_hidden(self, rows: PromptRows) -> Tensor:
        """Hidden state at each row's out token, [n, H] in fp32, in the rows' order."""
        dev = self.teacher_items.device
        self.prompt_tokens += int(rows.lengths.sum())
        slot_items = np.concatenate(rows.slot_items) if rows.rows else np.zeros(0, np.int64)
        uniq = torch.from_numpy(np.unique(slot_items))  # distinct items of this pass, sorted
        proj = self.heads.item_proj(self.teacher_items[uniq.to(dev)])  # [R, H]
        out_vectors = self.heads.out_vectors()
        table = self.lm.input_embeddings()
        c = self.cfg
        buckets = length_buckets(
            rows.lengths, c.max_tokens_per_forward, c.bucket_max_padding, c.bucket_min_tokens
        )
        idle = self.lm.forwards_to_match(len(buckets))  # ZeRO-3: equal LM forwards on every rank
        outs = []
        for idx in buckets:
            pb = rows.pack(idx)
            slot_to_row = torch.searchsorted(uniq, pb.slot_items).to(dev)
            ids = pb.input_ids.to(dev)
            emb = seq_embed(
                ids, table, proj, slot_to_row, out_vectors,
                hist_id=self.lm.hist_id, out_ids=(self.lm.user_out_id, self.lm.item_out_id),
            )  # fmt: skip
            hidden, p = self._hidden(ids, emb, self.prefixes.get(rows.out_id))  # [b, T - p, H]
            outs.append(hidden[torch.arange(len(idx), device=dev), pb.out_pos.to(dev) - p])
        h = torch.cat(outs).float() + self.lm.idle_forwards(idle, dev)
        back = torch.from_numpy(np.argsort(np.concatenate(buckets))).to(dev)
        return h[back]

    @property
    def no_grad_prefix_applies(self) -> bool:
        """Whether passes with a graph start it at each bucket's first spliced column
        (`LLMSRecConfig.no_grad_prefix`; not under ZeRO-3, where every rank must run the same forwards)."""
        return self.cfg.no_grad_prefix and not self.lm.partitioned

    def _hidden(self, ids: Tensor, emb: Tensor, prefix: tuple[Tensor, PrefixKV] | None) -> tuple[Tensor, int]:
        """The LM's hidden states of a padded bucket [b, T] (right padding, so no mask is needed) from
        position s on, and s: the cached constant head's length p when every row starts with it (always,
        for prompts of the builder; else 0); with a graph and `no_grad_prefix`, the first column that
        holds a spliced token in any row (>= p), the columns p..s-1 run without a graph."""
        kv, p = None, 0
        if prefix is not None:
            head, head_kv = prefix
            if ids.shape[1] > len(head) and bool((ids[:, : len(head)] == head).all()):
                kv, p = head_kv, len(head)
        if self.no_grad_prefix_applies and torch.is_grad_enabled():
            spliced = (ids == self.lm.hist_id) | (ids == self.lm.user_out_id) | (ids == self.lm.item_out_id)
            s = int(spliced.int().argmax(1).min())  # every row holds its out token
            if s > p:
                kv, p = self.lm.extend_kv(kv, emb[:, p:s]), s
        if kv is None:
            return self.lm.hidden(emb), 0
        return self.lm.hidden_after(kv, emb[:, p:]), p

    # --- training objective -------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor], negatives: Tensor) -> dict[str, Tensor]:
        """Loss terms (see `dist_srec.models.losses.llmsrec_loss`) for a batch and sampled negatives [B, K].

        Candidates are [target, negatives] per user; the item pass covers their distinct items once.
        """
        cfg = self.cfg.loss
        if negatives.shape[1] != cfg.num_negatives:
            raise ValueError(f"got {negatives.shape[1]} negatives per user, config says {cfg.num_negatives}")
        cand = torch.cat([batch["target"].reshape(-1, 1), negatives], dim=1).cpu()  # [B, C]
        items = self.encode_items(cand).view(cand.shape[0], cand.shape[1], -1)  # [B, C, d]
        user = self.encode_users(batch)
        teacher = self.teacher_user(batch["history"]) if cfg.distill else None
        return llmsrec_loss(user, items, teacher, cfg, cand.to(user.device))
