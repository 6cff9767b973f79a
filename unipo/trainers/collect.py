"""The collect stage of the on-policy step: generate, score, and let the recipe's sampler (ALGORITHMS.md §6) decide
which samples the step trains on.

A sampler's registry facts say how it acts (`algos.registry.FACTS`):
- a group filter (no fact): keeps the groups it marks; more prompts are generated until the batch is full;
- `demonstrations`: the groups it marks are replaced by their demonstration (HPT);
- `hints`: the groups it marks are regenerated with a growing hint in the prompt while they fail (GHPO);
- `roll_in`: before generation it picks how many reference tokens each completion starts with (DR-PO);
- `inpaint`: the groups it marks are regenerated from reference prefixes kept in the loss; correct ones replace
  wrong originals (IGPO);
- `budget`: before generation it gives each prompt its number of rollouts from the pass rates seen so far (Knapsack
  RL); the pass rates are the sampler's state;
- `replay`: a stored success of an earlier step replaces one rollout of a group that failed everywhere (ARPO); the
  buffer is the sampler's state;
- `resample`: each sample enters the batch as many times as the sampler says (PF-PPO);
- `tiered_hints`: the groups it marks are sampled once per hint level; the least hint that solves replaces the
  group's first rollout, with its hinted prompt, in the original group (Scaf-GRPO);
- `drafts`: before the step's rollouts, drafts; each prompt's best draft is appended to it and the rest of the budget
  samples refinements, which the step trains on (iGRPO);
- `retry`: failed attempts are retried from a prefix with feedback; the retries join their groups (trainers/retry.py:
  R³L);
- `ground_truth`: the rollout it marks in a group is replaced by the prompt's reference response, scored like a
  rollout (ViSurf);
- `branch` and `entropy_branch`: multi-turn trajectories that restart at a turn of an earlier one, the earlier
  turns replayed (trainers/branching.py: REFUEL, ARPO);
- `entropy_switch`: nothing here; after the advantages, `entropy_switched` samples some prompts again at a temperature
  chosen from the last step's entropy and swaps the samples it keeps into the batch with advantage 1 (AEPO; its
  samples are keyed by the step and the prompt, and on several ranks drawn from every rank's).
The sampler's state (`RLState.sampler_state`) is checkpointed with the run. Generation and the sampler's marks are in
trainers/generation.py, the acts of `hints`, `tiered_hints`, `drafts`, `roll_in` and `inpaint` in trainers/hinted.py
(with how they run on several ranks).
Injected samples are carried as token ids from here on (never re-tokenised) and marked by `Rollouts.origin`,
`loss_mask` and `forced`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from unipo.algos.samplers import aepo_temperature
from unipo.models.loading import autocast_context
from unipo.rollout.batch import Origin, Rollouts, cat, keep_groups, right_pad
from unipo.rollout.hf import sample
from unipo.rollout.inject import demonstrations
from unipo.trainers import branching, hinted
from unipo.trainers.common import Algo, Timer, bound_params
from unipo.trainers.dist import tagged
from unipo.trainers.generation import Collected, every_mark, generate_and_score, marks, nanmean, sampler_inputs
from unipo.trainers.retry import retried

if TYPE_CHECKING:
    from unipo.trainers.rl import RLState


def collect(s: RLState, algo: Algo, timer: Timer) -> Collected:
    """The collect stage: `train.prompts_per_step` prompts, `rollout.group_size` completions each, scored, then
    shaped by the recipe's sampler (module docstring)."""
    want = s.cfg.train.prompts_per_step
    rows, positions = s.stream.take_with_positions(want)
    rows, positions = s.world.share(rows), s.world.share(positions)  # this rank's prompts (all of them when alone)
    if algo.has_fact("sampler", "roll_in"):
        return hinted.rolled_in(s, algo, rows, timer, positions)
    if algo.has_fact("sampler", "budget"):
        return _budgeted(s, algo, rows, timer, positions)
    if algo.has_fact("sampler", "drafts"):
        return hinted.refined(s, algo, rows, timer, positions)
    if algo.has_fact("sampler", "branch"):
        return branching.branched(s, algo, rows, timer, sampler_inputs(s, algo.sampler), positions)
    if algo.has_fact("sampler", "entropy_branch"):
        return branching.entropy_branched(s, algo, rows, timer, sampler_inputs(s, algo.sampler), positions)
    batch, per_fn = generate_and_score(s, rows, timer, positions=positions)
    if algo.sampler is None or algo.has_fact("sampler", "entropy_switch"):
        return batch, per_fn, {}
    keyed = (("hints", hinted.with_hints), ("tiered_hints", hinted.scaffolded), ("inpaint", hinted.inpainted),
             ("retry", retried))  # fmt: skip
    for fact, act in keyed:  # they generate more samples of the batch's prompts, keyed by the prompts' positions
        if algo.has_fact("sampler", fact):
            return act(s, algo, batch, per_fn, timer, positions)
    acts = (("demonstrations", _with_demonstrations), ("replay", _with_replay), ("resample", _resampled),
            ("ground_truth", _with_ground_truth))  # fmt: skip
    for fact, act in acts:
        if algo.has_fact("sampler", fact):
            return act(s, algo, batch, per_fn, timer)
    return _filtered(s, algo, batch, per_fn, timer)


def _filtered(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer) -> Collected:
    """A group filter keeps the groups it keeps, and more prompts are generated until exactly `prompts_per_step`
    groups are kept (or `max_gen_batches` rounds ran; the step then trains on the groups kept so far).

    On several ranks the filter sees every rank's groups, in rank order (the order one process holds them in), every
    rank keeps the same first `prompts_per_step` of them, each rank its own, and each round's extra prompts are shared
    out as the step's are: the kept samples are those one process keeps."""
    w, want = s.world, s.cfg.train.prompts_per_step
    parts: list[tuple[Rollouts, torch.Tensor]] = []
    kept = generated = rounds = 0
    limit = bound_params(algo.sampler).get("max_gen_batches", 1)  # a filter with no regeneration: 1
    while True:
        rounds += 1
        keep, group_ids = every_mark(s, algo, batch, per_fn)  # over all ranks' groups
        generated += want
        if bool(keep.any()):
            groups = torch.unique(group_ids[keep])[: want - kept]  # never more than the batch needs
            mine = w.local(keep & torch.isin(group_ids, groups), batch.num_completions)
            if bool(mine.any()):
                parts.append((keep_groups(batch, mine.to(batch.group_ids.device)), per_fn[mine]))
            kept += groups.numel()
        if kept == want or (limit > 0 and rounds >= limit):
            break
        rows, positions = s.stream.take_with_positions(want)
        batch, per_fn = generate_and_score(s, w.share(rows), timer, positions=w.share(positions))
    stats = {"sampler/gen_batches": float(rounds), "sampler/kept_frac": kept / generated,
             "sampler/groups": float(kept)}  # fmt: skip
    if not kept:  # nothing kept within the limit: train on the last batch (its advantages are all 0)
        return batch, per_fn, stats
    if not parts:  # another rank holds every group kept: this rank trains on none of them
        empty = keep_groups(batch, torch.zeros_like(batch.group_ids, dtype=torch.bool))
        return empty, per_fn[:0], stats
    merged = cat([b for b, _ in parts], s.tokenizer.pad_token_id) if len(parts) > 1 else parts[0][0]
    return merged, torch.cat([p for _, p in parts]), stats


def _resampled(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer) -> Collected:
    """PF-PPO: sample i enters the batch `counts[i]` times (duplicates stay in their group). `reward/mean` is then
    the resampled batch's (weighted towards large |r|); `sampler/sampled_reward` is the policy's own samples'."""
    counts = marks(s, algo, batch, per_fn).cpu()
    idx = torch.arange(batch.num_completions).repeat_interleave(counts)
    w = s.world
    stats = {
        "sampler/unique_frac": w.ratio(int((counts > 0).sum()), counts.numel()),
        "sampler/kept": float(w.sum(torch.tensor(idx.numel(), dtype=torch.float64))),
        "sampler/sampled_reward": nanmean(s.scorer.combine(per_fn), w),
    }  # the policy's, before the resampling
    return batch.select(idx.to(batch.group_ids.device)), per_fn[idx], stats


def _with_demonstrations(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer) -> Collected:
    """The completions the sampler marks are replaced by their prompt's demonstration, which is unscored (NaN reward:
    no policy gradient) and trained on by `sft_nll`."""
    switch = algo.sampler(s.scorer.combine(per_fn), batch.group_ids.cpu()).to(batch.group_ids.device)
    prompts = torch.unique(batch.group_ids[switch])
    stats = {"sampler/demo_frac": s.world.ratio(prompts.numel(), batch.prompt_ids.shape[0]),
             "sampler/sampled_reward": nanmean(s.scorer.combine(per_fn), s.world)}  # before the switch  # fmt: skip
    if prompts.numel() == 0:
        return batch, per_fn, stats
    demos = demonstrations(batch, prompts, s.tokenizer, s.cfg.rollout.max_new_tokens)
    parts = [demos] if bool(switch.all()) else [keep_groups(batch, ~switch), demos]
    unscored = torch.full((demos.num_completions, per_fn.shape[1]), float("nan"))
    return cat(parts, s.tokenizer.pad_token_id), torch.cat([per_fn[~switch.cpu()], unscored]), stats


def _budgeted(s: RLState, algo: Algo, rows: list[dict], timer: Timer, positions: list[int]) -> Collected:
    """Knapsack RL: each prompt gets the number of rollouts the sampler allots from its pass rate when last seen (an
    unseen prompt: the sampler's `prior`), within the uniform split's total; then each prompt's pass rate (the mean of
    the first reward function, clamped to [0, 1]) is remembered for its next visit. On several ranks (ddp) the
    allotment is over every rank's prompts, each rank samples its own prompts' rollouts (keyed by their `positions`),
    and every rank remembers every prompt's rate, so the budgets and the memory are one process's."""
    w, params = s.world, bound_params(algo.sampler)
    rates: dict[str, float] = s.sampler_state if s.sampler_state is not None else {}
    mine = [prompt_key(r) for r in rows]
    keys = w.gather_list(mine)
    total = params["total"] or len(keys) * s.cfg.rollout.group_size
    budgets = algo.sampler(torch.tensor([rates.get(k, params["prior"]) for k in keys]), total=total)
    batch, per_fn = generate_and_score(s, rows, timer, n=w.local(budgets, len(rows)).tolist(), positions=positions)
    first = per_fn[:, 0].clamp(0, 1)
    groups = batch.group_ids.cpu()
    seen = []
    for g, key in enumerate(mine):
        scored = first[(groups == g) & ~first.isnan()]
        if scored.numel():
            seen.append((key, float(scored.mean())))
    rates.update(w.gather_list(seen))
    s.sampler_state = rates
    spread = sum(float(first[groups == g].nan_to_num(0).std()) > 0 for g in range(len(rows)))
    stats = {"sampler/budget_min": float(budgets.min()), "sampler/budget_max": float(budgets.max()),
             "sampler/spread_frac": w.ratio(spread, len(rows))}  # groups with a gradient  # fmt: skip
    return batch, per_fn, stats


def prompt_key(row: dict) -> str:
    """A row's prompt as a stable string: the key of per-prompt memories (pass rates, replay buffers, shapers')."""
    return json.dumps(row["prompt"], sort_keys=True)


def _with_replay(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer) -> Collected:
    """ARPO: in a group that failed everywhere, the rollout the sampler marks is replaced by the latest stored success
    of its prompt (its tokens, its behaviour log-probs and its rewards as stored, `Origin.REPLAY`); then every new
    success of this batch is stored, one per prompt (the latest). On several ranks each rank marks its own groups and
    every rank stores every rank's successes, in one process's order, so every rank holds one process's buffer."""
    buffer: dict[str, dict[str, Any]] = s.sampler_state if s.sampler_state is not None else {}
    keys = [prompt_key(r) for r in batch.rows]
    stored = torch.tensor([k in buffer for k in keys], dtype=torch.bool)
    first = per_fn[:, 0]
    replace = algo.sampler(first, batch.group_ids.cpu(), stored).to(batch.group_ids.device)
    success = first > bound_params(algo.sampler)["success_above"]
    tokens, found = batch.token_lists(), []
    for i in success.nonzero().squeeze(-1).tolist():
        n = len(tokens[i])
        found.append((keys[int(batch.group_ids[i])], {
            "ids": tokens[i], "logp": batch.rollout_logp[i, :n].tolist(), "truncated": bool(batch.truncated[i]),
            "rewards": per_fn[i].tolist(), "text": batch.texts[i] if batch.texts else "",
        }))  # fmt: skip
    buffer.update(s.world.gather_list(found))
    s.sampler_state = buffer
    out = replace.nonzero().squeeze(-1).tolist()
    replayed = s.world.sum(torch.tensor(float(len(out))))
    stats = {"sampler/replayed": float(replayed), "sampler/buffer_size": float(len(buffer))}
    if not out:
        return batch, per_fn, stats
    items = [buffer[keys[int(batch.group_ids[i])]] for i in out]
    replayed = _stored(batch, [int(batch.group_ids[i]) for i in out], items, s.tokenizer.pad_token_id)
    keep = torch.ones(batch.num_completions + len(out), dtype=torch.bool, device=batch.group_ids.device)
    keep[out] = False
    merged = batch.concat(replayed).select(keep.nonzero().squeeze(-1))
    scores = torch.cat([per_fn, torch.tensor([it["rewards"] for it in items], dtype=per_fn.dtype)])
    return merged, scores[keep.cpu()], stats


def _stored(batch: Rollouts, groups: list[int], items: list[dict[str, Any]], pad: int) -> Rollouts:
    """Stored completions as a batch over `batch`'s prompts (their group ids index them)."""
    device = batch.group_ids.device
    ids, mask = right_pad([it["ids"] for it in items], pad, device)
    logp, _ = right_pad([it["logp"] for it in items], 0.0, device)
    return Rollouts(
        batch.prompt_ids, batch.prompt_mask, ids, mask, torch.tensor(groups, device=device),
        truncated=torch.tensor([it["truncated"] for it in items], device=device), rollout_logp=logp,
        rows=batch.rows, texts=[it["text"] for it in items],
        origin=torch.full((len(items),), int(Origin.REPLAY), dtype=torch.long, device=device),
    )  # fmt: skip


def _with_ground_truth(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer) -> Collected:
    """ViSurf: the rollout the sampler marks in a group is replaced by the prompt's reference response (its tokens plus
    EOS, `Origin.DEMONSTRATION`), scored by the reward functions like a rollout and trained with the group's
    advantage."""
    out = marks(s, algo, batch, per_fn).nonzero().squeeze(-1)
    stats = {"sampler/ground_truth_frac": s.world.ratio(out.numel(), batch.prompt_ids.shape[0])}
    prompts = batch.group_ids[out]
    truth = demonstrations(batch, prompts, s.tokenizer, s.cfg.rollout.max_new_tokens) if out.numel() else None
    with timer("score"):
        truth_fn = s.scorer.score(truth) if truth is not None else per_fn[:0]
    stats["sampler/ground_truth_reward"] = nanmean(s.scorer.combine(truth_fn), s.world)  # every rank joins the sum
    if truth is None:
        return batch, per_fn, stats
    truth.group_ids = prompts[truth.group_ids]  # index batch's prompts (the same rows)
    keep = torch.ones(batch.num_completions + out.numel(), dtype=torch.bool, device=batch.group_ids.device)
    keep[out] = False
    merged = batch.concat(truth).select(keep.nonzero().squeeze(-1))
    return merged, torch.cat([per_fn, truth_fn])[keep.cpu()], stats


Advantages = Callable[[Rollouts, torch.Tensor], torch.Tensor]
"""The step's advantage estimator on another batch: (rollouts, their rewards (N, K)) -> advantages."""


def entropy_switched(
    s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, advantages: torch.Tensor,
    advantages_for: Advantages, timer: Timer,
) -> tuple[Rollouts, torch.Tensor, torch.Tensor, dict[str, float]]:  # fmt: skip
    """AEPO, after the advantages (as its official trainer): the first `prompt_frac` of the prompts are sampled again at
    a temperature chosen from the last step's entropy (the sampler's state), their advantages computed by the step's
    estimator, and the m samples the sampler keeps replace the batch's first m with advantage 1 (`Origin.TEMPERED`;
    their behaviour log-probs are those of that temperature, their old log-probs the update's). Returns the batch, its
    rewards (N, K), its advantages and the sampler's metrics.

    On several ranks the first prompts and samples are those of every rank's batch in rank order (one process's): each
    rank samples its own prompts among the first ones, from generators keyed by the step and the prompt's index, every
    rank gathers these samples and draws the same m, and each replaces its own rows among the batch's first m. A
    sample whose prompt another rank holds comes with its prompt."""
    params, w = bound_params(algo.sampler), s.world
    last = float((s.sampler_state or {}).get("entropy", 0.0))  # 0 before the first update, as the official code
    temperature = aepo_temperature(last, params)
    counts = w.sizes(len(batch.rows))
    first, total = sum(counts[: w.rank]), sum(counts)  # this rank's first prompt among every rank's
    mine = range(first, min(first + len(batch.rows), max(1, int(total * params["prompt_frac"]))))
    if mine:
        keys = tagged([f"{s.step}:{g}" for g in mine], "aepo")
        extra, extra_fn = generate_and_score(s, batch.rows[: len(mine)], timer, temperature=temperature, positions=keys)
    if w.size > 1:  # every rank's resampled prompts, in rank order (rank 0 holds the first): group ids index them
        extra = cat(w.gather_list([extra] if mine else []), s.tokenizer.pad_token_id)
        extra_fn = w.gather_rows(extra_fn if mine else per_fn[:0])
    extra_adv = advantages_for(extra, extra_fn)
    chosen = algo.sampler((extra_adv if extra_adv.dim() == 1 else extra_adv[:, 0]).cpu(), last).nonzero().squeeze(-1)
    stats = {"sampler/temperature": temperature, "sampler/tempered": float(chosen.numel())}
    n, start = batch.num_completions, sum(w.sizes(batch.num_completions)[: w.rank])
    picked = chosen[start : start + n]  # the samples that replace this rank's rows among the batch's first m
    m = picked.numel()
    if m == 0:
        return batch, per_fn, advantages, stats
    joined = cat([batch, extra], s.tokenizer.pad_token_id)  # the extra samples' prompts after this rank's
    merged = joined.select(torch.cat([n + picked, torch.arange(m, n)]).to(batch.group_ids.device))
    own = merged.group_ids[:m] - len(batch.rows) - first  # a prompt of this rank: the group of its other samples
    held = (own >= 0) & (own < len(batch.rows))
    merged.group_ids[:m] = torch.where(held, own, merged.group_ids[:m])
    merged.origin[:m] = int(Origin.TEMPERED)
    if advantages.dim() == 2:  # per-token advantages: one width for the merged batch
        width = merged.completion_ids.shape[1]
        advantages = torch.nn.functional.pad(advantages, (0, max(0, width - advantages.shape[1])))[:, :width]
    ones = torch.ones((m, *advantages.shape[1:]), dtype=advantages.dtype, device=advantages.device)
    return merged, torch.cat([extra_fn[picked], per_fn[m:]]), torch.cat([ones, advantages[m:]]), stats


def greedy_rewards(s: RLState, batch: Rollouts) -> torch.Tensor:
    """(N,) the reward of the greedy reply to each completion's prompt (ReMax's baseline; NaN when unscored)."""
    cfg = s.cfg
    with autocast_context(s.model, cfg.model.autocast):
        greedy = sample(s.model, s.tokenizer, batch.rows, n=1, max_new_tokens=cfg.rollout.max_new_tokens,
                        greedy=True)  # fmt: skip
    per_prompt = s.scorer.combine(s.scorer.score(greedy)).to(batch.group_ids.device)  # (P,)
    return per_prompt[batch.group_ids]
