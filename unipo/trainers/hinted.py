"""The samplers that generate more from the reference solution or from hints (collect.py's module docstring):
GHPO (`hints`), Scaf-GRPO (`tiered_hints`), iGRPO (`drafts`), DR-PO (`roll_in`) and IGPO (`inpaint`).

On several ranks (ddp) each rank acts on its own groups: the sampler's marks see every rank's samples
(`generation.marks`), every extra sample is keyed by its prompt's stream position and a tag (`dist.tagged`),
and every statistic is a ratio of sums over the ranks, so a run on any number of ranks trains on the samples one
process trains on. Every rank runs the same rounds (each calls the collectives), also one with nothing to generate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unipo.rollout.batch import Origin, Rollouts, cat, keep_groups
from unipo.rollout.inject import reference_text, scaf_hint_levels, with_draft, with_hint
from unipo.trainers.common import Algo, Timer, bound_params
from unipo.trainers.dist import tagged
from unipo.trainers.generation import Collected, generate_and_score, marks, nanmean, sampler_inputs

if TYPE_CHECKING:
    from unipo.trainers.rl import RLState


def with_hints(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer, keys: list) -> Collected:
    """GHPO: the groups the sampler marks are regenerated on their prompt plus a hint of the first fraction of the
    reference solution, for each fraction in turn while they still fail; they replace the failed groups (the step
    trains on the hinted prompts). `keys`: the stream keys of the batch's prompts."""
    params = bound_params(algo.sampler)
    originals, keys = list(batch.rows), list(keys)  # each prompt's row without a hint, aligned with batch.rows
    hinted = torch.zeros(len(originals), dtype=torch.bool)
    stats = {"sampler/hinted_frac": 0.0, "sampler/hint_rounds": 0.0}
    if s.step < params["start_step"]:
        return batch, per_fn, stats
    for rounds, fraction in enumerate(params["fractions"], 1):
        fail = marks(s, algo, batch, per_fn)
        prompts = torch.unique(batch.group_ids[fail]).tolist()
        if not sum(s.world.sizes(len(prompts))):  # no rank has a failed group left
            break
        stats["sampler/hint_rounds"] = float(rounds)
        if not prompts:
            continue
        rows = [with_hint(originals[p], fraction) for p in prompts]
        hint_keys = tagged([keys[p] for p in prompts], f"hint{rounds}")
        again, again_fn = generate_and_score(s, rows, timer, positions=hint_keys)
        again.origin.fill_(int(Origin.HINT))
        keep = ~fail
        parts = [keep_groups(batch, keep), again] if bool(keep.any()) else [again]
        kept = torch.unique(batch.group_ids[keep]).tolist()
        originals, keys = [originals[p] for p in kept + prompts], [keys[p] for p in kept + prompts]
        hinted = torch.cat([hinted[kept], torch.ones(len(prompts), dtype=torch.bool)])
        batch = cat(parts, s.tokenizer.pad_token_id)
        per_fn = torch.cat([per_fn[keep.cpu()], again_fn])
    stats["sampler/hinted_frac"] = s.world.ratio(int(hinted.sum()), hinted.numel())
    return batch, per_fn, stats


def scaffolded(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer, keys: list) -> Collected:
    """Scaf-GRPO: after the warm-up, each group the sampler marks gets one rollout per hint level (least help first);
    the lowest level that solves it (first reward function > 0) replaces the group's first rollout, generated on and
    trained with its hinted prompt (a new prompt row) but in the original group (`Rollouts.groups`)."""
    params = bound_params(algo.sampler)
    num_prompts = batch.prompt_ids.shape[0]
    stats = {"sampler/hinted_frac": 0.0, "sampler/rescued_frac": 0.0}
    if s.step <= params["warmup_steps"]:
        return batch, per_fn, stats
    prompts = torch.unique(batch.group_ids[marks(s, algo, batch, per_fn)]).tolist()
    levels = {p: scaf_hint_levels(batch.rows[p], tuple(params["tiers"]), params["per_tier"]) for p in prompts}
    owners = [p for p in prompts for _ in levels[p]]
    chosen: dict[int, int] = {}  # original prompt -> its hinted sample of the lowest level that solves it
    if owners:
        level_keys = [f"{keys[p]}.tier{k}" for p in prompts for k in range(len(levels[p]))]
        hinted, hinted_fn = generate_and_score(s, [row for p in prompts for row in levels[p]], timer,
                                               n=[1] * len(owners), positions=level_keys)  # fmt: skip
        solved = torch.nan_to_num(hinted_fn[:, 0], nan=0.0) > 0
        for i, p in enumerate(owners):
            if bool(solved[i]) and p not in chosen:
                chosen[p] = i
    stats["sampler/hinted_frac"] = s.world.ratio(len(prompts), num_prompts)
    stats["sampler/rescued_frac"] = s.world.ratio(len(chosen), num_prompts)
    if not chosen:
        return batch, per_fn, stats
    picks = torch.tensor(sorted(chosen.values()))
    rescued = keep_groups(hinted, torch.isin(torch.arange(len(owners)), picks).to(hinted.group_ids.device))
    rescued.origin.fill_(int(Origin.HINT))
    merged = cat([batch, rescued], s.tokenizer.pad_token_id)
    device = batch.group_ids.device
    merged.groups = merged.group_ids.clone()
    merged.groups[batch.num_completions :] = torch.tensor([owners[i] for i in picks.tolist()], device=device)
    first = [int((batch.group_ids == p).nonzero()[0]) for p in chosen]  # each rescued group's first rollout
    keep = torch.ones(merged.num_completions, dtype=torch.bool, device=device)
    keep[first] = False
    return merged.select(keep.nonzero().squeeze(-1)), torch.cat([per_fn, hinted_fn[picks]])[keep.cpu()], stats


def refined(s: RLState, algo: Algo, rows: list[dict], timer: Timer, keys: list) -> Collected:
    """iGRPO: N = round(draft_frac · G) drafts per prompt (scored, not trained on), then G − N refinements of each
    prompt with its best draft appended; the step trains on the refinements."""
    group = s.cfg.rollout.group_size
    n_drafts = round(group * bound_params(algo.sampler)["draft_frac"])
    drafts, drafts_fn = generate_and_score(s, rows, timer, n=[n_drafts] * len(rows), positions=tagged(keys, "draft"))
    best = marks(s, algo, drafts, drafts_fn).nonzero().squeeze(-1).tolist()
    draft_of = {int(drafts.group_ids[i]): drafts.texts[i] for i in best}
    rows = [with_draft(row, draft_of[q]) if q in draft_of else row for q, row in enumerate(rows)]
    batch, per_fn = generate_and_score(s, rows, timer, n=[group - n_drafts] * len(rows), positions=keys)
    drafted = torch.isin(batch.group_ids, torch.tensor(list(draft_of), dtype=torch.long, device=batch.group_ids.device))
    batch.origin[drafted] = int(Origin.HINT)
    combined = s.scorer.combine(drafts_fn)
    stats = {"sampler/draft_reward": nanmean(combined, s.world),
             "sampler/best_draft_reward": nanmean(combined[torch.tensor(best, dtype=torch.long)], s.world)}  # fmt: skip
    return batch, per_fn, stats


def reference_tokens(s: RLState, rows: list[dict]) -> list[list[int]]:
    """Each row's reference solution as token ids (no special tokens): the source of forced prefixes."""
    return [s.tokenizer(reference_text(r), add_special_tokens=False)["input_ids"] for r in rows]


def rolled_in(s: RLState, algo: Algo, rows: list[dict], timer: Timer, keys: list) -> Collected:
    """DR-PO: each completion starts with the first h reference tokens the sampler draws (h = 0: a plain rollout);
    the policy continues in the same decode, the whole sequence is scored, and the forced tokens are out of the loss.
    The sampler draws for every rank's completions, in rank order."""
    n, w = s.cfg.rollout.group_size, s.world
    refs = [ref for ref in reference_tokens(s, rows) for _ in range(n)]
    every = w.gather_rows(torch.tensor([len(r) for r in refs], dtype=torch.long))
    lengths = w.local(algo.sampler(every, **sampler_inputs(s, algo.sampler)), len(refs))
    forced = [ref[:h] for ref, h in zip(refs, lengths.tolist(), strict=True)]
    batch, per_fn = generate_and_score(s, rows, timer, forced=forced, positions=keys)
    rolled = lengths > 0
    batch.origin[rolled.to(batch.origin.device)] = int(Origin.ROLL_IN)
    stats = {"sampler/roll_in_frac": w.ratio(int(rolled.sum()), rolled.numel()),
             "sampler/forced_tokens": w.ratio(int(batch.forced.sum()), batch.num_completions)}  # fmt: skip
    return batch, per_fn, stats


def inpainted(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer, keys: list) -> Collected:
    """IGPO: the groups the sampler marks are regenerated with the fraction r_i of the reference it gives each
    completion forced at the start (kept in the loss, marked `forced` for `hint_mask`); up to `max_replace`
    regenerated completions that are correct (first reward function > 0) replace wrong originals of their group."""
    fractions = marks(s, algo, batch, per_fn).cpu()
    target = (fractions > 0).to(batch.group_ids.device)
    prompts = torch.unique(batch.group_ids[target]).tolist()
    swap_in: list[int] = []
    swap_out: list[int] = []
    if prompts:
        n = s.cfg.rollout.group_size
        refs = reference_tokens(s, [batch.rows[p] for p in prompts])
        r = fractions[target.cpu()].view(len(prompts), n)  # every group has group_size completions before the sampler
        forced = [refs[j][: int(r[j, i] * len(refs[j]))] for j in range(len(prompts)) for i in range(n)]
        again, again_fn = generate_and_score(s, [batch.rows[p] for p in prompts], timer, forced=forced,
                                             positions=tagged([keys[p] for p in prompts], "inpaint"))  # fmt: skip
        again.loss_mask = again.completion_mask.clone()  # IGPO trains the fixed tokens (igpo_hint_mask weighs them)
        again.origin.fill_(int(Origin.ROLL_IN))
        correct = torch.nan_to_num(again_fn[:, 0], nan=0.0) > 0
        max_replace = bound_params(algo.sampler)["max_replace"]
        for j, p in enumerate(prompts):
            good = [j * n + i for i in range(n) if bool(correct[j * n + i])][:max_replace]
            wrong = (batch.group_ids == p).nonzero().squeeze(-1).tolist()[: len(good)]  # all originals are wrong
            swap_in += good[: len(wrong)]
            swap_out += wrong[: len(good)]
    stats = {"sampler/inpainted_frac": s.world.ratio(len(prompts), batch.prompt_ids.shape[0]),
             "sampler/replaced": float(s.world.sum(torch.tensor(len(swap_in), dtype=torch.float64)))}  # fmt: skip
    if not swap_in:
        return batch, per_fn, stats
    device = batch.group_ids.device
    again.group_ids = torch.tensor(prompts, device=device)[again.group_ids]  # index batch's prompts (same rows)
    keep = torch.ones(batch.num_completions + again.num_completions, dtype=torch.bool, device=device)
    keep[swap_out] = False
    keep[batch.num_completions :] = False
    keep[[batch.num_completions + i for i in swap_in]] = True
    merged = batch.concat(again).select(keep.nonzero().squeeze(-1))
    return merged, torch.cat([per_fn, again_fn])[keep.cpu()], stats
