"""The rollout batch that flows through the on-policy loop, and prompt tokenisation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import torch


class Origin(IntEnum):
    """Where a completion came from (`Rollouts.origin`): samplers that inject samples mark them, so masks, losses and
    metrics can tell them apart."""

    POLICY = 0
    """sampled from the policy on the dataset's prompt."""
    HINT = 1
    """sampled from the policy on a prompt with a hint added (a prefix of the reference solution, tiered hints, the
    model's own best draft)."""
    REPLAY = 2
    """a stored earlier sample, with the behaviour log-probs of the policy that produced it."""
    DEMONSTRATION = 3
    """the dataset's reference solution, not sampled (no behaviour log-probs: NaN)."""
    ROLL_IN = 4
    """a forced prefix of a reference solution continued by the policy (`Rollouts.forced`; the forced tokens are out
    of the loss unless the method trains them, as IGPO does)."""
    TEMPERED = 5
    """sampled from the policy at another temperature than the batch's (AEPO's entropy-control samples); its behaviour
    log-probs are those of that temperature."""
    RETRY = 6
    """a retry of a failed attempt (R³L): the attempt's prefix forced, continued by the policy on the prompt plus
    feedback, trained as an answer to the bare prompt (its behaviour log-probs are those under the feedback)."""


@dataclass
class Rollouts:
    """N completions of P prompts: the typed batch of the on-policy loop. Prompts are left-padded, completions
    right-padded; groups may differ in size.

    `group_ids[i]` is the prompt row of completion i, so prompt tensors are stored once per prompt. `groups[i]` is the
    group its advantage is computed in (a prompt row too): the same as `group_ids` except for a sample generated on
    another prompt and trained in the group of the original one (a Scaf-GRPO hinted success); None: `group_ids`.
    `completion_mask` is the attention mask of the completion: 1 on its tokens up to and including EOS.
    `loss_mask` marks the tokens that get a policy gradient: the completion's tokens except injected or forced ones
    (a roll-in prefix, a tool's output), which are attended to but not trained unless a method says so.
    `rollout_logp` are the behaviour log-probs (of the policy or engine that produced each token, after temperature),
    distinct from the old (start of the update) and current log-probs the update computes.
    A multi-turn trajectory (rollout/multiturn.py) is one completion: every token after the first prompt, the
    environment's tokens attended to (`completion_mask`) but out of the loss (`loss_mask` 0); `turn_ids` numbers the
    policy turns (-1 on every other token) and `extras` holds per-completion lists (the environment's rewards, the
    conversation as messages, tool-call counts), which reward functions receive as columns.
    """

    prompt_ids: torch.Tensor  # (P, Lp)
    prompt_mask: torch.Tensor  # (P, Lp)
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T)
    group_ids: torch.Tensor  # (N,) long
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens without EOS
    rollout_logp: torch.Tensor  # (N, T) behaviour log-probs
    rows: list[dict[str, Any]] = field(default_factory=list)  # the P dataset rows
    texts: list[str] = field(default_factory=list)  # N decoded completions
    loss_mask: torch.Tensor | None = None  # (N, T); None: the completion mask
    origin: torch.Tensor | None = None  # (N,) long `Origin`; None: all sampled from the policy
    forced: torch.Tensor | None = None  # (N, T) bool: tokens forced from a reference (a roll-in), not sampled
    groups: torch.Tensor | None = None  # (N,) long advantage group of each completion; None: `group_ids`
    turn_ids: torch.Tensor | None = None  # (N, T) long: the policy turn of each token, -1 elsewhere; None: turn 0
    extras: dict[str, list[Any]] = field(default_factory=dict)  # per-completion columns (multi-turn)
    pairs: torch.Tensor | None = None  # (N,) long: a failed attempt and its retry share an id >= 0 (R³L); else -1
    # (N, T) long: token k is hidden from every token at index >= hide_from[k] (an environment reply forgotten: ReSeek);
    # 0: never hidden. None: zeros
    hide_from: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.loss_mask is None:
            self.loss_mask = self.completion_mask
        if self.origin is None:
            self.origin = torch.full_like(self.group_ids, int(Origin.POLICY))
        if self.forced is None:
            self.forced = torch.zeros_like(self.completion_mask, dtype=torch.bool)
        if self.turn_ids is None:
            self.turn_ids = torch.where(self.loss_mask.bool(), 0, -1).long()
        if self.pairs is None:
            self.pairs = torch.full_like(self.group_ids, -1)
        if self.hide_from is None:
            self.hide_from = torch.zeros_like(self.completion_ids, dtype=torch.long)

    @property
    def num_completions(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def advantage_groups(self) -> torch.Tensor:
        """(N,) the group each completion's advantage is computed in (`groups`, else `group_ids`)."""
        return self.group_ids if self.groups is None else self.groups

    def token_lists(self) -> list[list[int]]:
        """Each completion's token ids through its EOS (padding dropped), as reward functions get them."""
        lengths = self.completion_mask.sum(1).tolist()
        return [ids[:n] for ids, n in zip(self.completion_ids.tolist(), lengths, strict=True)]

    def per_completion(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """`fn` applied to every per-completion tensor ([N] or [N, T]), by field name."""
        return {name: fn(getattr(self, name)) for name in PER_COMPLETION}

    def select(self, idx: torch.Tensor) -> Rollouts:
        """The completions `idx`, cut to their longest completion (prompt tensors are shared, not copied)."""
        width = int(self.completion_mask[idx].sum(1).max())
        return replace(
            self,
            **self.per_completion(lambda x: x[idx, :width] if x.dim() == 2 else x[idx]),
            texts=[self.texts[i] for i in idx.tolist()] if self.texts else [],
            groups=None if self.groups is None else self.groups[idx],
            extras=_pick(self.extras, idx.tolist()),
        )

    def concat(self, other: Rollouts) -> Rollouts:
        """These completions, then `other`'s for the same prompts (right-padded to one width)."""
        width = max(self.completion_ids.shape[1], other.completion_ids.shape[1])

        def both(name: str) -> torch.Tensor:
            a, b = getattr(self, name), getattr(other, name)
            if a.dim() == 2:
                a, b = (torch.nn.functional.pad(x, (0, width - x.shape[1]), value=_PAD.get(name, 0)) for x in (a, b))
            return torch.cat([a, b])

        groups = None
        if self.groups is not None or other.groups is not None:
            groups = torch.cat([self.advantage_groups, other.advantage_groups])
        return replace(self, **{name: both(name) for name in PER_COMPLETION}, texts=self.texts + other.texts,
                       groups=groups, extras=_joined([self, other]))  # fmt: skip


PER_COMPLETION = (
    "completion_ids",
    "completion_mask",
    "loss_mask",
    "group_ids",
    "truncated",
    "rollout_logp",
    "origin",
    "forced",
    "turn_ids",
    "pairs",
    "hide_from",
)
"""The fields of `Rollouts` with one entry (or row) per completion."""
_PAD = {"turn_ids": -1}
"""Right padding of a per-token field other than 0."""


def placeholder(like: Rollouts) -> Rollouts:
    """One one-token completion (token id 0) of a one-token prompt, on `like`'s device: what a rank that holds no
    completion runs through a sharded model, so that its forward (and backward) joins every rank's collectives."""
    one = torch.ones((1, 1), dtype=torch.long, device=like.group_ids.device)
    return Rollouts(
        prompt_ids=one * 0,
        prompt_mask=one,
        completion_ids=one * 0,
        completion_mask=one,
        group_ids=one[0] * 0,
        truncated=one[0] < 0,
        rollout_logp=torch.zeros((1, 1), device=one.device),
    )


def keep_groups(batch: Rollouts, keep: torch.Tensor) -> Rollouts:
    """The completions with `keep` [N] True and only their prompts (group ids renumbered 0..P'-1, in order)."""
    idx = keep.nonzero().squeeze(-1)
    used = torch.unique(torch.cat([batch.group_ids[idx], batch.advantage_groups[idx]]))  # prompts still referred to
    remap = torch.full((batch.prompt_ids.shape[0],), -1, dtype=torch.long, device=batch.group_ids.device)
    remap[used] = torch.arange(used.numel(), device=remap.device)
    width = int(batch.completion_mask[idx].sum(1).max()) if idx.numel() else 0
    kept = batch.per_completion(lambda x: x[idx, :width] if x.dim() == 2 else x[idx])
    kept["group_ids"] = remap[kept["group_ids"]]
    texts = [batch.texts[i] for i in idx.tolist()] if batch.texts else []
    groups = None if batch.groups is None else remap[batch.groups[idx]]
    return replace(batch, prompt_ids=batch.prompt_ids[used], prompt_mask=batch.prompt_mask[used], **kept,
                   rows=[batch.rows[i] for i in used.tolist()], texts=texts, groups=groups,
                   extras=_pick(batch.extras, idx.tolist()))  # fmt: skip


def cat(batches: list[Rollouts], pad_id: int) -> Rollouts:
    """Completions of different prompts in one batch: prompts re-left-padded to one width (with `pad_id`),
    completions right-padded, group ids offset so each batch's prompts stay distinct."""
    lp = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.completion_ids.shape[1] for b in batches)
    F = torch.nn.functional

    def left(x: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(x, (lp - x.shape[1], 0), value=value)

    offsets = torch.tensor([0] + [b.prompt_ids.shape[0] for b in batches[:-1]]).cumsum(0).tolist()
    parts = [{k: F.pad(x, (0, t - x.shape[1]), value=_PAD.get(k, 0)) if x.dim() == 2 else x
              for k, x in b.per_completion(lambda x: x).items()} for b in batches]  # fmt: skip
    for part, o in zip(parts, offsets, strict=True):
        part["group_ids"] = part["group_ids"] + o
    groups = None
    if any(b.groups is not None for b in batches):
        groups = torch.cat([b.advantage_groups + o for b, o in zip(batches, offsets, strict=True)])
    return Rollouts(
        prompt_ids=torch.cat([left(b.prompt_ids, pad_id) for b in batches]),
        prompt_mask=torch.cat([left(b.prompt_mask, 0) for b in batches]),
        **{name: torch.cat([part[name] for part in parts]) for name in PER_COMPLETION},
        rows=[r for b in batches for r in b.rows],
        texts=[x for b in batches for x in b.texts],
        groups=groups,
        extras=_joined(batches),
    )


def _pick(extras: dict[str, list[Any]], idx: list[int]) -> dict[str, list[Any]]:
    return {k: [v[i] for i in idx] for k, v in extras.items()}


def _joined(batches: list[Rollouts]) -> dict[str, list[Any]]:
    """The batches' per-completion columns end to end; a column some batch lacks is None on its completions."""
    keys = dict.fromkeys(k for b in batches for k in b.extras)
    return {k: [x for b in batches for x in b.extras.get(k, [None] * b.num_completions)] for k in keys}


def right_pad(
    lists: list[list[Any]], pad: Any, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, mask) of shape (len(lists), longest): each list right-padded with `pad`, mask 1 on its own entries."""
    width = max((len(x) for x in lists), default=0)
    values = torch.tensor([list(x) + [pad] * (width - len(x)) for x in lists], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in lists], device=device)
    return values.view(len(lists), width), mask.view(len(lists), width)


def left_pad(lists: list[list[int]], pad: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (len(lists), longest): each token list left-padded with `pad`, mask 1 on its own tokens."""
    width = max((len(x) for x in lists), default=0)
    ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in lists], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in lists], device=device)
    return ids.view(len(lists), width), mask.view(len(lists), width)


def render_prompt(prompt: Any, tokenizer: Any) -> str:
    """A row's prompt as text: chat messages go through the tokenizer's chat template (with the generation
    prompt); a plain string is used as is."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in prompt) + "\n"


def tokenize_prompts(prompts: list[Any], tokenizer: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids, mask) of shape (P, Lp) for a list of prompts (strings or chat messages)."""
    texts = [render_prompt(p, tokenizer) for p in prompts]
    # Chat templates already contain the special tokens; plain prompts get the tokenizer's usual ones.
    add_special = not all(isinstance(p, list) for p in prompts) or not getattr(tokenizer, "chat_template", None)
    encoded = [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("a prompt tokenised to zero tokens")
    return left_pad(encoded, tokenizer.pad_token_id, device)
