"""Per-token log-probs of completions under a causal LM, computed on completion positions only."""

from __future__ import annotations

from typing import Any

import torch

from unipo.algos.ops import entropy_from_logits, logprobs_from_logits
from unipo.rollout.batch import Rollouts
from unipo.rollout.hf import prompt_positions, visibility_mask


def completion_logprobs(
    model: Any,
    batch: Rollouts,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    share_prompt: bool = True,
    keep_logits: bool = False,
    chunk: int = 0,
) -> tuple[torch.Tensor, ...]:
    """log π(y_t | x, y_<t) for every completion token, with softmax(logits / temperature).

    With `share_prompt`, each prompt of the batch runs once and its KV cache (with its autograd graph) is
    gathered to its completions, so a group of G completions costs one prompt forward instead of G; the
    LM head runs only on the T positions that predict completion tokens. Both paths agree to float tolerance
    (tests/integration/test_update.py).

    With `chunk` > 0 (and without `keep_logits`) the LM head runs on `chunk` positions at a time and each chunk's
    logits are recomputed in the backward pass instead of kept (`chunked_token_stats`): the (N, T, V) logits never
    exist at once.

    Returns:
        logp (N, T) and, if asked, the entropy of the same distribution (N, T), detached unless `entropy_grad`
        (for entropy regularizers); with `keep_logits`, also the temperature-scaled logits (N, T, V).
    """

    def run() -> tuple[torch.Tensor, ...]:
        hidden = (_share_prompt_hidden if share_prompt else _full_hidden)(model, batch)
        if chunk > 0 and not keep_logits:
            return chunked_token_stats(model.get_output_embeddings(), hidden, batch.completion_ids, chunk,
                                       temperature=temperature, with_entropy=with_entropy,
                                       entropy_grad=entropy_grad)  # fmt: skip
        logits = model.get_output_embeddings()(hidden).float() / temperature  # (N, T, V)
        logp = logprobs_from_logits(logits, batch.completion_ids)
        entropy = None
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropy = entropy_from_logits(logits)
        return (logp, entropy, logits) if keep_logits else (logp, entropy)

    return as_forward(model, run)


def chunked_token_stats(
    head: Any,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    chunk: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(h_t) / temperature)[y_t] and, if asked, the entropy, computed `chunk` positions at a time.

    With autograd on, each chunk runs under activation checkpointing (non-reentrant): its forward keeps only the
    chunk's hidden states, and the backward pass recomputes the chunk's logits, so at most `chunk` × V logits exist at
    once in either pass, for one extra LM-head matmul per position in the backward (verl's and Liger's chunked
    log-prob idea, done with torch's checkpoint instead of a fused kernel). Values and gradients equal the unchunked
    ones (tests/integration/test_update.py).

    Args:
        head: the LM head (a module mapping (..., H) to (..., V)).
        hidden: (N, T, H) states that predict `ids`.
        ids: (N, T) the tokens whose log-probs are taken.
        chunk: positions per chunk (over the flattened N·T positions).

    Returns:
        logp (N, T); the entropy (N, T) or None, detached unless `entropy_grad`.
    """
    from torch.utils.checkpoint import checkpoint

    n, t = ids.shape
    flat, labels = hidden.reshape(n * t, -1), ids.reshape(n * t)

    def piece(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = head(h).float() / temperature
        logp = logprobs_from_logits(logits, y)
        if not with_entropy:
            return logp, None
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            return logp, entropy_from_logits(logits)

    graph = torch.is_grad_enabled() and (flat.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = [checkpoint(piece, flat[i : i + chunk], labels[i : i + chunk], use_reentrant=False) if graph
             else piece(flat[i : i + chunk], labels[i : i + chunk]) for i in range(0, n * t, chunk)]  # fmt: skip
    logp = torch.cat([p[0] for p in parts]).view(n, t)
    entropy = torch.cat([p[1] for p in parts]).view(n, t) if with_entropy else None
    return logp, entropy


def as_forward(model: Any, fn: Any) -> Any:
    """`fn()` as one forward of `model`: a model sharded with FSDP2 (trainers/dist.py) gathers its root's parameters
    (the embedding and LM head this module calls directly, not through `model.forward`) around it."""
    forward = getattr(model, "unipo_forward", None)
    return forward(fn) if forward is not None else fn()


def _backbone(model: Any) -> Any:
    """The transformer under the LM head (of a PEFT model: of its base model, whose layers carry the adapters)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix)


def completion_hidden(model: Any, batch: Rollouts, *, share_prompt: bool = True, states: bool = False) -> torch.Tensor:
    """Last hidden states of the backbone (N, T, H) at the positions that predict each completion token: h_t
    summarises the state s_t = (x, y_<t). With `states`, also the state after the last token: (N, T+1, H), so that
    row i's h[:, L_i] is s_{L_i} (a critic's bootstrap value). A batch with hidden tokens (`Rollouts.hide_from`, a
    forgotten environment reply) runs under the mask its turns were sampled with (`visibility_mask`)."""
    return as_forward(model, lambda: (_share_prompt_hidden if share_prompt else _full_hidden)(model, batch, states))


def _share_prompt_hidden(model: Any, batch: Rollouts, states: bool = False) -> torch.Tensor:
    """Hidden states (N, T, H) at the positions that predict each completion token, prompts run once each."""
    used, inverse = torch.unique(batch.group_ids, return_inverse=True)
    prompt_ids, prompt_mask = batch.prompt_ids[used], batch.prompt_mask[used]
    out = _backbone(model)(
        input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions(prompt_mask), use_cache=True
    )
    first = out.last_hidden_state[inverse, -1:]  # (N, 1, H): predicts completion token 0
    keep = batch.completion_ids.shape[1] - (0 if states else 1)  # completion tokens fed in
    fed = max(keep, int(hasattr(model, "unipo_forward")))  # a sharded model's ranks run both forwards, or gathers part
    if fed == 0:
        return first
    cache = out.cache
    cache.reorder_cache(inverse)
    completion_in = batch.completion_ids[:, :fed]
    attn = torch.cat([prompt_mask[inverse], batch.completion_mask[:, :fed]], dim=1)
    if batch.hide_from.any():  # the completion's queries under the mask its turns were sampled with
        width = prompt_mask.shape[1]
        attn = _visibility(model, attn, width, batch.hide_from[:, :fed])[:, :, width:]
    positions = prompt_mask.sum(-1)[inverse, None] + torch.arange(completion_in.shape[1], device=attn.device)
    rest = _backbone(model)(
        input_ids=completion_in, attention_mask=attn, position_ids=positions, cache=cache, use_cache=True
    ).last_hidden_state
    return torch.cat([first, rest[:, :keep]], dim=1)


def _full_hidden(model: Any, batch: Rollouts, states: bool = False) -> torch.Tensor:
    """Same as `_share_prompt_hidden`, by running prompt + completion for every row (works for any model)."""
    prompt_ids, prompt_mask = batch.prompt_ids[batch.group_ids], batch.prompt_mask[batch.group_ids]
    ids = torch.cat([prompt_ids, batch.completion_ids], dim=1)
    attn = torch.cat([prompt_mask, batch.completion_mask], dim=1)
    width = prompt_ids.shape[1]
    attend = attn
    if batch.hide_from.any():
        attend = _visibility(model, attn, width, batch.hide_from)
    hidden = _backbone(model)(
        input_ids=ids, attention_mask=attend, position_ids=prompt_positions(attn)
    ).last_hidden_state
    return hidden[:, width - 1 :] if states else hidden[:, width - 1 : -1]


def _visibility(model: Any, attn: torch.Tensor, width: int, hide_from: torch.Tensor) -> torch.Tensor:
    """The (N, 1, L, L) mask of prompt (`width` columns) + completion under `attn`, the completion's `hide_from` moved
    into the sequence's coordinates (`rollout.hf.visibility_mask`)."""
    hide = torch.cat([torch.zeros_like(attn[:, :width]), (hide_from + width) * (hide_from > 0)], dim=1)
    return visibility_mask(attn, hide, next(model.parameters()).dtype)
