"""A value model for critic-based methods: a causal LM's backbone with a scalar head (verl / OpenRLHF critic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unipo.models.logprobs import completion_hidden
from unipo.rollout.batch import Rollouts

HEAD_FILE = "value_head.pt"


class ValueModel(torch.nn.Module):
    """V(s_t) for every state of a completion: the backbone of `lm` (its LM head unused) and a linear head on its last
    hidden state. The head starts at zero, so a fresh critic predicts V ≡ 0 (GAE then starts from the Monte Carlo
    return, ALGORITHMS.md §13 V6); OpenRLHF initialises it with small noise instead [ours: zero]."""

    def __init__(self, lm: Any):
        super().__init__()
        self.lm = lm
        param = next(lm.parameters())
        self.head = torch.nn.Linear(lm.config.hidden_size, 1, device=param.device, dtype=torch.float32)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, batch: Rollouts, *, share_prompt: bool = True) -> torch.Tensor:
        """(N, T+1) float32 values: [:, t] = V(x, y_<t); [:, L_i] is the state after row i's last token."""
        hidden = completion_hidden(self.lm, batch, share_prompt=share_prompt, states=True)
        return self.head(hidden.float()).squeeze(-1)

    def save_pretrained(self, folder: str | Path) -> None:
        """The backbone in HF format plus the head, so `load_value_model(folder)` restores both."""
        self.lm.save_pretrained(folder)
        torch.save(self.head.state_dict(), Path(folder) / HEAD_FILE)


def load_value_model(path: str, *, device: str = "auto", dtype: str = "auto") -> ValueModel:
    """A value model from a causal LM directory (the head at zero) or from a saved value model (its head restored)."""
    from unipo.models.loading import load_model_and_tokenizer, resolve_model_path

    lm, _ = load_model_and_tokenizer(path, device=device, dtype=dtype)
    model = ValueModel(lm)
    head = Path(resolve_model_path(path)) / HEAD_FILE
    if head.exists():
        model.head.load_state_dict(torch.load(head, map_location=next(lm.parameters()).device, weights_only=True))
    return model
