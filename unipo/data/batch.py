"""The rollout batch that flows through the on-policy loop, and prompt tokenisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Rollouts:
    """N completions of P prompts. Prompts are left-padded, completions right-padded.

    `group_ids[i]` is the prompt row of completion i, so prompt tensors are stored once per prompt.
    `completion_mask` is 1 on generated tokens up to and including EOS.
    """

    prompt_ids: torch.Tensor  # (P, Lp)
    prompt_mask: torch.Tensor  # (P, Lp)
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T)
    group_ids: torch.Tensor  # (N,) long
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens without EOS
    rollout_logp: torch.Tensor  # (N, T) log-probs of the sampler (after temperature)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the P dataset rows
    texts: list[str] = field(default_factory=list)  # N decoded completions

    @property
    def num_completions(self) -> int:
        return self.completion_ids.shape[0]

    def token_lists(self) -> list[list[int]]:
        """Each completion's sampled token ids through its EOS (padding dropped), as reward functions get them."""
        lengths = self.completion_mask.sum(1).tolist()
        return [ids[:n] for ids, n in zip(self.completion_ids.tolist(), lengths, strict=True)]

    def select(self, idx: torch.Tensor) -> Rollouts:
        """The completions `idx`, cut to their longest completion (prompt tensors are shared, not copied)."""
        width = int(self.completion_mask[idx].sum(1).max())
        return Rollouts(
            self.prompt_ids,
            self.prompt_mask,
            self.completion_ids[idx, :width],
            self.completion_mask[idx, :width],
            self.group_ids[idx],
            self.truncated[idx],
            self.rollout_logp[idx, :width],
            self.rows,
            [self.texts[i] for i in idx.tolist()] if self.texts else [],
        )

    def concat(self, other: Rollouts) -> Rollouts:
        """These completions, then `other`'s for the same prompts (right-padded to one width)."""
        width = max(self.completion_ids.shape[1], other.completion_ids.shape[1])

        def both(name: str) -> torch.Tensor:
            a, b = getattr(self, name), getattr(other, name)
            if a.dim() == 2:
                a, b = (torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in (a, b))
            return torch.cat([a, b])

        fields = ("completion_ids", "completion_mask", "group_ids", "truncated", "rollout_logp")
        return Rollouts(self.prompt_ids, self.prompt_mask, *(both(f) for f in fields), self.rows,
                        self.texts + other.texts)  # fmt: skip


def keep_groups(batch: Rollouts, keep: torch.Tensor) -> Rollouts:
    """The completions with `keep` [N] True and only their prompts (group ids renumbered 0..P'-1, in order)."""
    idx = keep.nonzero().squeeze(-1)
    used = torch.unique(batch.group_ids[idx])  # sorted prompt indices that keep a completion
    remap = torch.full((batch.prompt_ids.shape[0],), -1, dtype=torch.long, device=batch.group_ids.device)
    remap[used] = torch.arange(used.numel(), device=remap.device)
    width = int(batch.completion_mask[idx].sum(1).max()) if idx.numel() else 0
    return Rollouts(
        batch.prompt_ids[used], batch.prompt_mask[used], batch.completion_ids[idx, :width],
        batch.completion_mask[idx, :width], remap[batch.group_ids[idx]], batch.truncated[idx],
        batch.rollout_logp[idx, :width], [batch.rows[i] for i in used.tolist()],
        [batch.texts[i] for i in idx.tolist()] if batch.texts else [],
    )  # fmt: skip


def cat(batches: list[Rollouts], pad_id: int) -> Rollouts:
    """Completions of different prompts in one batch: prompts re-left-padded to one width (with `pad_id`),
    completions right-padded, group ids offset so each batch's prompts stay distinct."""
    lp = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.completion_ids.shape[1] for b in batches)
    F = torch.nn.functional

    def left(x: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(x, (lp - x.shape[1], 0), value=value)

    def right(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, t - x.shape[1]))

    offsets = torch.tensor([0] + [b.prompt_ids.shape[0] for b in batches[:-1]]).cumsum(0).tolist()
    return Rollouts(
        torch.cat([left(b.prompt_ids, pad_id) for b in batches]),
        torch.cat([left(b.prompt_mask, 0) for b in batches]),
        torch.cat([right(b.completion_ids) for b in batches]),
        torch.cat([right(b.completion_mask) for b in batches]),
        torch.cat([b.group_ids + o for b, o in zip(batches, offsets, strict=True)]),
        torch.cat([b.truncated for b in batches]),
        torch.cat([right(b.rollout_logp) for b in batches]),
        [r for b in batches for r in b.rows],
        [x for b in batches for x in b.texts],
    )


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
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    return ids, mask
