"""The update stage of the on-policy trainers: the reference's log-probs of a batch, then `ppo_epochs` optimizer steps
over micro-batches with the batch's global token and sequence counts (every rank's, on several ranks)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from unipo.algos.ops import masked_sum, power_sums
from unipo.config import Config
from unipo.models import lora
from unipo.models.loading import autocast_context
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.batch import Rollouts, placeholder
from unipo.trainers.common import Algo, call
from unipo.trainers.dist import World
from unipo.trainers.inputs import FROM_LOGITS, UPDATE_INPUTS, batch_inputs


@torch.no_grad()
def reference_logps(ref: Any, batch: Rollouts, cfg: Config) -> torch.Tensor:
    """The reference stage: log π_ref of every sampled token (N, T), in the run's precision (`ref` may be a LoRA
    policy's `BaseView`)."""
    return frozen_forward(ref, batch, cfg)["logp"]


@torch.no_grad()
def frozen_forward(model: Any, batch: Rollouts, cfg: Config, *, full: bool = False, moments: bool = False) -> dict:
    """A no-grad forward of a model that does not move this step (the reference, or the policy before its update):
    `logp` (N, T) of the sampled tokens; with `full`, `log_softmax` (N, T, V) at every completion position; with
    `moments`, `sum_pi_squared` and `sum_pi_cubed` (N, T), Σ_v π(v)^k. All at the sampling temperature, in float32."""
    if batch.num_completions == 0:  # a rank whose groups a filter dropped: a placeholder's forward (a sharded model's
        out = frozen_forward(model, placeholder(batch), cfg, full=full, moments=moments)  # gathers meet the others)
        return {k: v.new_zeros((0, batch.completion_ids.shape[1], *v.shape[2:])) for k, v in out.items()}
    keep = full or moments
    with lora.reference(model) as m, autocast_context(m, cfg.model.autocast):
        logp, _, *logits = completion_logprobs(m, batch, temperature=cfg.rollout.temperature, keep_logits=keep,
                                               share_prompt=cfg.model.share_prompt_forward,
                                               chunk=cfg.model.logit_chunk)  # fmt: skip
    logits = logits[0] if keep else None
    out = {"logp": logp.float()}
    if full:
        out["log_softmax"] = torch.log_softmax(logits.float(), dim=-1)
    if moments:
        out["sum_pi_squared"], out["sum_pi_cubed"] = power_sums(logits)
    return out


def update(
    cfg: Config,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    algo: Algo,
    batch: Rollouts,
    advantages: torch.Tensor,
    inputs: dict[str, Any],
    world: World | None = None,
) -> dict[str, float]:
    """`ppo_epochs` optimizer steps on one batch, each accumulating gradients over micro-batches.

    Every surrogate's gradient is −W·A·∇logp (ALGORITHMS.md §0.4), so when nothing but the surrogate is in the
    loss, a completion whose advantage is 0 on every token adds nothing to the loss or its gradient: it is left out
    of the forward and backward passes (its tokens still count in the global normalisers, so the loss is
    unchanged). Entropy and clip metrics are then over the completions that carry gradient. `inputs` holds the
    step's inputs for components (`ref_logp` from the reference stage among them). On several ranks (`world`),
    this rank's batch is its share: the normalisers count every rank's tokens and sequences, and the summed
    gradients are all-reduced before clipping, so every rank steps with the gradient of the whole batch.
    """
    world, trained = world or World(), lora.trainable(model)  # a LoRA model trains its adapters only
    # global counts of trained tokens and sequences: neither micro-batching nor the ranks change the loss
    num_tokens = world.sum(batch.loss_mask.sum().float())
    n = int(world.sum(torch.tensor(batch.num_completions)))
    temperature, share = cfg.rollout.temperature, cfg.model.share_prompt_forward
    precision = autocast_context(model, cfg.model.autocast)
    active = torch.arange(batch.num_completions, device=advantages.device)
    surrogate_only = not algo.kl_coef and not algo.token_weights and not algo.regularizers
    if surrogate_only and not {"ref_logp", "rewards"} & algo.policy_loss.needs:  # NFT's loss is its rewards', not A's
        nonzero = advantages != 0  # (N) or (N, T); N may be 0 (a rank whose groups a filter dropped)
        active = active[nonzero.any(1) if nonzero.dim() > 1 else nonzero]
    # a loss that takes statistics over each prompt's group (NFT's accuracy) sees whole groups in every micro-batch
    whole_groups = any("group_ids" in fn.needs for fn in (algo.policy_loss, *algo.regularizers))
    entropy_grad = "entropy" in algo.needs
    old_logp = torch.zeros_like(batch.completion_mask, dtype=torch.float32)
    derived = {name: (FROM_LOGITS[name], algo.params_for(name), torch.zeros_like(old_logp))
               for name in FROM_LOGITS.keys() & algo.needs}  # fmt: skip
    keep_logits = "logits" in algo.needs or bool(derived)  # else the head may run in chunks
    whole = {**inputs, "old_logp": batch.rollout_logp, "rollout_logp": batch.rollout_logp, "advantages": advantages,
             **batch_inputs(batch)}  # fmt: skip
    early = {i: call(fn, batch.loss_mask.float(), inputs=whole).detach()  # token weights of the whole batch
             for i, fn in enumerate(algo.token_weights) if not fn.needs & UPDATE_INPUTS}  # fmt: skip
    sums: dict[str, torch.Tensor] = {}
    losses, grad_norms = [], []
    for epoch in range(cfg.train.ppo_epochs):
        for p in trained:  # the backward pass allocates each gradient when it reaches it (none held in the forward)
            p.grad = None
        total = torch.zeros(())
        chunks = micro_batches(active, batch.advantage_groups, cfg.train.micro_batch_size, whole_groups)
        _idle_passes(model, batch, world.padding(len(chunks)), precision, share)
        for idx in chunks:
            mb = batch.select(idx)
            width, mask = mb.completion_ids.shape[1], mb.loss_mask.float()
            with precision:
                logp, entropy, *logits = completion_logprobs(
                    model, mb, temperature=temperature, with_entropy=epoch == 0 or entropy_grad,
                    entropy_grad=entropy_grad, share_prompt=share, keep_logits=keep_logits, chunk=cfg.model.logit_chunk,
                )  # fmt: skip
            logits = logits[0] if keep_logits else None
            if epoch == 0:  # the parameters still are the sampling ones: old log-probs are these, detached
                old_logp[idx, :width] = logp.detach().float()
            adv = advantages[idx] if advantages.dim() == 1 else advantages[idx, :width]
            mb_inputs = {
                **inputs,
                "old_logp": old_logp[idx, :width],
                "rollout_logp": mb.rollout_logp,
                **{k: inputs[k][idx, :width] for k in PER_TOKEN if k in inputs},
                "advantages": adv,
                "logp": logp,
                "rewards": inputs["rewards"][idx],
                "entropy": entropy,
                **batch_inputs(mb),
            }
            for name, (make, params, values) in derived.items():  # of the sampling policy (= the current one, pass 1)
                if epoch == 0:
                    values[idx, :width] = make(logits.detach(), mb.completion_ids, params, temperature)
                mb_inputs[name] = values[idx, :width]
            if "logits" in algo.needs:  # e.g. the exact KL over the vocabulary (`kl_full`)
                mb_inputs["logits"] = logits
            del logits
            per_token, metrics = call(algo.policy_loss, logp, old_logp[idx, :width], adv, mask, inputs=mb_inputs)
            weights = {i: w[idx, :width] for i, w in early.items()}
            per_token, metrics = _add_terms(algo, per_token, metrics, logp, mask, mb_inputs, weights)
            if entropy is not None:
                metrics["entropy"] = entropy.detach()
            loss = algo.aggregation(per_token, mask, num_tokens=num_tokens, num_seqs=n)
            loss.backward()
            total += loss.detach().float().cpu()
            for key, value in metrics.items():
                pair = torch.stack([masked_sum(value.detach().float(), mask).cpu(), mask.sum().cpu()])
                sums[key] = sums.get(key, torch.zeros(2)) + pair
        grad_norms.append(_step(cfg, optimizer, scheduler, trained, world))
        losses.append(float(world.sum(total)))
    out = {"loss": sum(losses) / len(losses), "grad_norm": sum(grad_norms) / len(grad_norms)}
    totals: dict[str, torch.Tensor] = {}
    for key, pair in world.gather_list(list(sums.items())):  # (masked sum, count) of every rank
        totals[key] = totals.get(key, torch.zeros(2)) + pair
    out.update({_metric_name(k): float(v[0] / v[1].clamp(min=1)) for k, v in totals.items()})
    out["tokens/trained_frac"] = float(world.sum(batch.loss_mask[active].sum().float()) / num_tokens)
    return out


def turn_by_turn(
    cfg: Config,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    algo: Algo,
    batch: Rollouts,
    advantages: torch.Tensor,
    inputs: dict[str, Any],
    world: World | None = None,
) -> dict[str, float]:
    """The sequential update of a credit with fact `turn_sequential` (SeeUPO): one `update` per policy turn index k,
    the last first, on the trajectories that reached turn k with only turn k's tokens in the loss, so each pass is
    normalised by its own token and sequence counts and sees the parameters the later turns' passes left. The
    learning-rate schedule moves after the last pass only, once per step as with `update`. Old log-probs are each
    pass's own first forward (the parameters that sampled the batch only in the first pass); behaviour log-probs stay
    the sampling policy's. Returns the passes' mean metrics and `turns/passes`. On several ranks (`world`) every rank
    runs a pass for each turn index any rank reached (with no rows where none of its trajectories did), each pass
    normalised by every rank's counts, as one process's."""
    n, per_pass = batch.num_completions, []
    for k in reversed(range(max((world or World()).sizes(int(batch.turn_ids.max()))) + 1)):
        at_k = batch.turn_ids == k
        rows = at_k.any(1).nonzero().squeeze(1)
        part = batch.select(rows)
        part = replace(part, loss_mask=part.loss_mask * at_k[rows, : part.loss_mask.shape[1]])
        rows_of = {key: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
                   for key, v in inputs.items()}  # fmt: skip
        held = scheduler if k == 0 else _HeldSchedule()
        per_pass.append(update(cfg, model, optimizer, held, algo, part, advantages[rows], rows_of, world))
    out = {key: sum(p[key] for p in per_pass if key in p) / sum(key in p for p in per_pass)
           for key in dict.fromkeys(key for p in per_pass for key in p)}  # fmt: skip
    return {**out, "turns/passes": float(len(per_pass))}


class _HeldSchedule:
    """A learning-rate schedule that does not move (the passes of `turn_by_turn` before its last)."""

    def step(self) -> None:
        pass


def micro_batches(active: torch.Tensor, groups: torch.Tensor, size: int, whole_groups: bool) -> list[torch.Tensor]:
    """The completions `active` in chunks of at most `size`; with `whole_groups`, consecutive whole advantage groups
    packed up to `size` (a group larger than `size` is a chunk of its own), so no group is cut."""
    if not active.numel():
        return []
    if not whole_groups:
        return list(active.split(size))
    chunks: list[list[int]] = [[]]
    for members in (active[groups[active] == g].tolist() for g in dict.fromkeys(groups[active].tolist())):
        if chunks[-1] and len(chunks[-1]) + len(members) > size:
            chunks.append([])
        chunks[-1] += members
    return [torch.tensor(c, device=active.device) for c in chunks]


def _step(cfg: Config, optimizer: Any, scheduler: Any, trained: list[torch.Tensor], world: World) -> float:
    """Sum the gradients over the ranks, clip them to `train.max_grad_norm`, step, and free them until the next
    backward pass (sampling and the next forward run without them). Returns the norm before clipping."""
    for p in trained:  # zeros, not None: AdamW then steps every parameter, as with a full batch
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    world.all_reduce_grads(trained)
    norm = torch.nn.utils.clip_grad_norm_(trained, cfg.train.max_grad_norm or float("inf"))
    optimizer.step()
    scheduler.step()
    for p in trained:
        p.grad = None
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded: a DTensor


def _idle_passes(model: Any, batch: Rollouts, count: int, precision: Any, share: bool) -> None:
    """`count` forward and backward passes of weight zero on one completion: a sharded model's rank with fewer
    micro-batches than the busiest one joins the all-gathers and reduce-scatters of the passes it lacks."""
    one = batch.select(torch.arange(1)) if batch.num_completions else placeholder(batch)
    for _ in range(count):
        with precision:
            logp, _ = completion_logprobs(model, one, share_prompt=share)
        (logp.sum() * 0.0).backward()


PER_TOKEN = ("ref_logp", "teacher_logp", "ref_logits", "sum_pi_squared", "sum_pi_cubed")
"""The reference stage's per-token inputs ([N, T] or [N, T, V]), cut to each micro-batch's rows and width."""


def _add_terms(
    algo: Algo,
    per_token: torch.Tensor,
    metrics: dict,
    logp: torch.Tensor,
    mask: torch.Tensor,
    inputs: dict,
    early: dict[int, torch.Tensor],
) -> tuple[torch.Tensor, dict]:
    """KL to the reference, regularizers and token weights, all per token (so they share the normaliser); `early`
    holds the micro-batch's rows of the token weights computed on the whole batch, by their index."""
    metrics = dict(metrics)
    if algo.kl_coef > 0:
        kl = call(algo.kl, logp, inputs["ref_logp"], inputs=inputs)
        per_token = per_token + algo.kl_coef * kl
        metrics["kl"] = kl.detach()
    for reg in algo.regularizers:
        term, reg_metrics = call(reg, logp, inputs["old_logp"], mask, inputs=inputs)
        per_token = per_token + term
        metrics.update(reg_metrics)
    for i, weight_fn in enumerate(algo.token_weights):
        per_token = per_token * (early[i] if i in early else call(weight_fn, mask, inputs=inputs).detach())
    return per_token, metrics


def _metric_name(key: str) -> str:
    return {"clip/frac": "clip_frac"}.get(key, key)
