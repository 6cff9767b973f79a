"""Activation checkpointing of a model's decoder layers that keeps the KV cache (`model.activation_checkpointing`).

The update's shared-prompt forward (`models/logprobs.py`) runs each prompt once, keeps its KV cache with its autograd
graph, and runs the completions on that cache; HF's own gradient checkpointing drops the cache in training (a layer
that writes the cache would write it again when the backward pass replays it). Here each layer's replay first puts
the cache back as it was before the layer ran, so the replay writes what the forward wrote and reads what it read:
the forward keeps only each layer's input, and the backward recomputes the layer (one extra forward of the model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def checkpoint_layers(model: Any) -> int:
    """Run each decoder layer of `model` (the classes in its `_no_split_modules`, as FSDP2 wraps them) under
    non-reentrant activation checkpointing whenever autograd records; returns how many layers were wrapped.
    Without autograd (sampling, frozen forwards) a layer runs as it did. Each layer's class becomes a subclass whose
    `forward` checkpoints (as FSDP2 does), so a deep copy of the model (an engine's copy) runs its own weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in names]
    for layer in layers:
        layer.__class__ = _checkpointed(type(layer))
    return len(layers)


_CHECKPOINTED: dict[type, type] = {}


def _checkpointed(cls: type) -> type:
    if cls not in _CHECKPOINTED:

        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            run = super(sub, self).forward
            if not torch.is_grad_enabled():
                return run(*args, **kwargs)
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            before = _CacheState(cache) if cache is not None else None

            def body(*a: Any, **k: Any) -> Any:
                if before is not None:  # the cache as the layer found it (in the forward: as it is)
                    before.restore()
                return run(*a, **k)

            return checkpoint(body, *args, use_reentrant=False, **kwargs)

        sub = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward})
        _CHECKPOINTED[cls] = sub
    return _CHECKPOINTED[cls]


class _CacheState:
    """What a cache holds before a layer runs (each cache layer's attributes, by reference), to put back."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.layers = list(cache.layers)
        self.attrs = [dict(layer.__dict__) for layer in self.layers]

    def restore(self) -> None:
        self.cache.layers[:] = self.layers
        for layer, attrs in zip(self.layers, self.attrs, strict=True):
            layer.__dict__.clear()
            layer.__dict__.update(attrs)
