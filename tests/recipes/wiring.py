"""A recipe's first update, recorded from the trainer and composed again by hand from the recipe's components.

`record` wraps the RL trainer's update stage: on its first call it keeps a copy of the policy, the batch, the
advantages and the step's inputs, and the parameter gradient at the first optimizer step (after clipping). `by_hand`
then builds the loss of that batch from the recipe's YAML alone: each component is looked up in the registry and
called with the recipe's hyperparameters and the inputs it declares, taken from the recorded batch — the policy
loss on the fresh log-probs (old = their detached values at the first step), plus the KL to the reference and the
regularizers per token, times the token weights, aggregated with the global token and sequence counts over the whole
batch in one pass (no micro-batches, no skipped completions). Where the recipe's advantage stage is the estimator
alone, the advantages are recomputed from the rewards too. The trainer must give the same loss and gradient.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from unipo import algos
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.batch import Origin
from unipo.trainers import rl
from unipo.trainers.inputs import FROM_LOGITS


def record(monkeypatch: Any) -> dict[str, Any]:
    """Wrap the RL trainer's update stage; the returned dict fills on its first call."""
    seen: dict[str, Any] = {}
    real = rl.update

    def wrapped(cfg, model, optimizer, scheduler, algo, batch, advantages, inputs, world=None):  # noqa: ANN001, ANN202
        if seen:
            return real(cfg, model, optimizer, scheduler, algo, batch, advantages, inputs, world)
        seen.update(model=copy.deepcopy(model), batch=batch, advantages=advantages.clone(), inputs=dict(inputs))
        step = optimizer.step

        def first_step(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault("grads", {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return step(*args, **kwargs)

        optimizer.step = first_step
        seen["out"] = real(cfg, model, optimizer, scheduler, algo, batch, advantages, inputs, world)
        return seen["out"]

    monkeypatch.setattr(rl, "update", wrapped)
    return seen


def _bound(kind: str, node: Any) -> tuple[Any, dict[str, Any], frozenset[str]]:
    """The registered function of a recipe node, its hyperparameters and the inputs it declares with them."""
    entry = algos.entry(kind, node.name)
    params = dict(node.model_extra or {})
    return entry.fn, params, entry.needs(params)


def _call(kind: str, node: Any, *args: Any, available: dict[str, Any], **extra: Any) -> Any:
    fn, params, needs = _bound(kind, node)
    missing = needs - available.keys() - extra.keys()
    assert not missing, f"{kind} {node.name} declares {sorted(missing)}, which the recorded batch lacks"
    return fn(*args, **params, **extra, **{k: available[k] for k in needs if k not in extra})


def _plain_advantages(cfg: Any) -> bool:
    """Whether the recipe's advantage stage is its estimator alone on the (unshaped) rewards."""
    a = cfg.algo
    special = (a.sampler, a.critic, a.credit, a.adv_post, a.shaping, cfg.rewards and len(cfg.rewards) > 1)
    return not any(special)


def by_hand(cfg: Any, seen: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The recorded batch's loss and parameter gradient (clipped at `train.max_grad_norm` as the trainer does) from
    the recipe's components composed here; also checks recomputed advantages where the stage is plain."""
    model, batch, inputs = seen["model"], seen["batch"], seen["inputs"]
    a, temperature = cfg.algo, cfg.rollout.temperature
    model.zero_grad()
    mask = batch.loss_mask.float()
    terms = [("policy_loss", a.policy_loss), *[("regularizer", r) for r in a.regularizers],
             *[("token_weight", t) for t in a.token_weights], *([("kl", a.kl)] if a.kl.coef else [])]  # fmt: skip
    needs = [(kind, node, _bound(kind, node)[2]) for kind, node in terms]
    policy_needs = set().union(*(n for _, _, n in needs))
    logp, entropy, logits = completion_logprobs(model, batch, temperature=temperature, with_entropy=True,
                                                entropy_grad="entropy" in policy_needs, keep_logits=True)  # fmt: skip
    old = logp.detach()
    advantages = seen["advantages"]
    available = {**inputs, "old_logp": old, "rollout_logp": batch.rollout_logp, "logp": logp, "entropy": entropy,
                 "group_ids": batch.advantage_groups, "completion_ids": batch.completion_ids,
                 "truncated": batch.truncated, "demo_mask": batch.origin == Origin.DEMONSTRATION,
                 "hint_mask": batch.forced, "logits": logits, "mask": mask}  # fmt: skip
    for kind, node, names in needs:  # inputs from the sampling policy's logits (Lp-Reg, DCPO)
        for name in FROM_LOGITS.keys() & names:
            params = {**algos.entry(kind, node.name).params, **_bound(kind, node)[1]}
            available[name] = FROM_LOGITS[name](logits.detach(), batch.completion_ids, params, temperature)
    if _plain_advantages(cfg):
        again = _call(
            "advantage",
            a.advantage,
            inputs["rewards"],
            batch.advantage_groups,
            available=available,
            mask=batch.loss_mask,
        )
        torch.testing.assert_close(again, advantages, msg="the advantages are not the estimator's on the rewards")
    available["advantages"] = advantages
    per_token, _ = _call("policy_loss", a.policy_loss, logp, old, advantages, mask, available=available)
    if a.kl.coef:
        per_token = per_token + a.kl.coef * _call("kl", a.kl, logp, inputs["ref_logp"], available=available)
    for reg in a.regularizers:
        per_token = per_token + _call("regularizer", reg, logp, old, mask, available=available)[0]
    for weight in a.token_weights:
        per_token = per_token * _call("token_weight", weight, mask, available=available).detach()
    fn, params, _ = _bound("aggregation", a.aggregation)
    if "constant" in algos.entry("aggregation", a.aggregation.name).params:
        params.setdefault("constant", cfg.rollout.max_new_tokens)
    loss = fn(per_token, mask, num_tokens=mask.sum(), num_seqs=batch.num_completions, **params)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    scale = min(1.0, (cfg.train.max_grad_norm or float("inf")) / (float(norm) + 1e-6))
    return loss.detach(), {n: g * scale for n, g in grads.items()}
