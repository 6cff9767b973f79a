"""SPO's preference-degree classifier for the offline preference trainer (`spo_aux_recon`, our reconstruction): a
linear head on the policy's last hidden state after a copy of the chosen response with k key phrases removed, with
its own optimizer on the policy's schedule. It is a training aid: checkpoints keep it in the trainer state (weights,
optimizer, schedule), and the exported model is the policy alone."""

from __future__ import annotations

from typing import Any

import torch

from unipo.config import Config
from unipo.data.keyphrases import degraded_copies
from unipo.data.preference import responses
from unipo.models.loading import autocast_context
from unipo.models.logprobs import completion_hidden
from unipo.trainers.common import build_optimizer

STATE_KEY = "degree_head"
"""Where the trainer state keeps the head."""


class DegreeHead:
    """The head (K + 1 classes, weights and bias at zero: every copy starts at CE = log(K + 1)), its optimizer and
    schedule (the policy's `train.*`), restored from `saved` (a checkpoint's trainer state) when it has one."""

    def __init__(self, cfg: Config, policy: Any, max_removed: int, saved: dict[str, Any] | None):
        self.max_removed = max_removed
        device = next(policy.parameters()).device
        self.linear = torch.nn.Linear(policy.config.hidden_size, max_removed + 1, device=device, dtype=torch.float32)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        self.optimizer, self.scheduler = build_optimizer(self.linear, cfg)
        if saved is not None and STATE_KEY in saved:
            state = saved[STATE_KEY]
            self.linear.load_state_dict(state["weights"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    def logits(self, cfg: Config, policy: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
        """(logits [b, K + 1, K + 1] with gradient into the policy and the head, labels [b, K + 1]) for the copies
        j = 0..K of each row's chosen response (`degraded_copies`)."""
        from unipo.trainers.preference import _response_batch

        copies = [degraded_copies(responses(r)[0], self.max_removed) for r in rows]
        batch_rows = [{"prompt": r["prompt"], "responses": texts} for r, (texts, _) in zip(rows, copies, strict=True)]
        device = next(policy.parameters()).device
        batch = _response_batch(tokenizer, batch_rows, device, cfg.data.max_response_tokens)  # row j·b + i
        with autocast_context(policy, cfg.model.autocast):
            states = completion_hidden(policy, batch, share_prompt=cfg.model.share_prompt_forward, states=True)
        last = batch.completion_mask.sum(-1)  # the state after each copy's last token (its EOS)
        hidden = states[torch.arange(len(last), device=device), last].float()
        b, width = len(rows), self.max_removed + 1
        logits = self.linear(hidden).view(width, b, width).transpose(0, 1)
        labels = torch.tensor([removed for _, removed in copies], device=device)
        return logits, labels

    def step(self, cfg: Config) -> dict[str, float]:
        """One optimizer step of the head on the gradient the loss left in it, clipped as the policy's."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.linear.parameters(), cfg.train.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"degree/grad_norm": float(grad_norm)}

    def state(self) -> dict[str, Any]:
        return {STATE_KEY: {"weights": self.linear.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.scheduler.state_dict()}}  # fmt: skip


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(correct, total) of the head's argmax over the copies."""
    return float((logits.argmax(-1) == labels).sum()), labels.numel()
