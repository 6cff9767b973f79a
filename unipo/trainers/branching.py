"""The collect stage's multi-turn samplers (ALGORITHMS.md §9): trajectories that restart at a turn of an earlier one,
the earlier turns replayed token for token on a fresh environment (rollout/multiturn.py `branch`).

- `branch` (REFUEL): one roll-in per prompt, `rollout.group_size` branches at one turn of it, only that turn trained.
- `entropy_branch` (ARPO): a share of the group size as initial trajectories, then branches where the policy's
  entropy rose after an environment reply, every turn trained, until the group is full.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unipo.models.loading import autocast_context
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.multiturn import branch, rollout
from unipo.trainers.common import Algo, Timer, bound_params
from unipo.trainers.dist import World, sample_generators, tagged

if TYPE_CHECKING:
    from unipo.trainers.generation import Collected
    from unipo.trainers.rl import RLState


def sampling(s: RLState, temperature: float | None = None, generator: Any = None) -> dict[str, Any]:
    """The run's sampling keywords (`rollout.*`), at `temperature` and from `generator` when given (else the run's)."""
    r = s.cfg.rollout
    return {"max_new_tokens": r.max_new_tokens, "top_k": r.top_k, "top_p": r.top_p,
            "temperature": r.temperature if temperature is None else temperature,
            "generator": s.generator if generator is None else generator}  # fmt: skip


def branched(s: RLState, algo: Algo, rows: list[dict], timer: Timer, inputs: dict[str, Any], keys: list) -> Collected:
    """REFUEL: one roll-in trajectory per prompt; the sampler picks a turn h of each; `rollout.group_size` branches
    restart at turn h on environments replayed to it, sample it afresh and finish their episodes (only turn h is
    trained); the roll-in itself is not trained on. A roll-in with an unscored branch (its environment failed, or
    answered the replay differently) trains neither: the regression needs both returns. `keys`: the prompts' stream
    keys; the roll-ins and branches draw from generators keyed by them, and the sampler draws once for every rank's
    roll-ins, so any number of ranks samples what one process does."""
    n, w, seed = s.cfg.rollout.group_size, s.world, s.cfg.train.seed
    with timer("generate"), autocast_context(s.model, s.cfg.model.autocast):
        kw = sampling(s, generator=sample_generators(seed, keys, [1] * len(rows)))
        roll_in = rollout(s.model, s.tokenizer, rows, *s.env, n=1, **kw)
        every = algo.sampler(w.gather_rows(torch.tensor(roll_in.extras["turns"])), **inputs)
        at = w.local(every, len(rows))
        sources = [p for p in range(len(rows)) for _ in range(n)]
        kw["generator"] = sample_generators(seed, tagged(keys, "branch"), [n] * len(rows))
        batch = branch(s.model, s.tokenizer, roll_in, sources, at.repeat_interleave(n).tolist(), *s.env, **kw)
    with timer("score"):
        per_fn = s.scorer.score(batch)
    unscored = s.scorer.combine(per_fn).isnan().view(-1, n).any(1).repeat_interleave(n)
    batch.loss_mask[unscored.to(batch.loss_mask.device)] = 0
    return batch, per_fn, {"sampler/branch_turn": float(every.float().mean()), **_replays(batch, w)}


def entropy_branched(
    s: RLState, algo: Algo, rows: list[dict], timer: Timer, inputs: dict[str, Any], keys: list
) -> Collected:
    """ARPO: round(`initial_frac`·M) initial trajectories per prompt (M = `rollout.group_size`); the policy's entropy
    at every token of them (one no-grad forward, at the sampling temperature); the sampler's branch counts per
    (trajectory, turn); the branches restart there, the earlier turns replayed, and finish their episodes. Every turn
    of every trajectory is trained, a branch's replayed turns with the initial trajectory's behaviour log-probs.
    The batch holds each prompt's M trajectories together, the initial ones first. As `branched`, the draws are keyed
    by the prompts' stream keys and the sampler's are over every rank's trajectories."""
    m, w, seed = s.cfg.rollout.group_size, s.world, s.cfg.train.seed
    initial = min(m, max(1, round(m * bound_params(algo.sampler)["initial_frac"])))
    kw = sampling(s, generator=sample_generators(seed, keys, [initial] * len(rows)))
    with timer("generate"), autocast_context(s.model, s.cfg.model.autocast):
        roll_in = rollout(s.model, s.tokenizer, rows, *s.env, n=initial, **kw)
    with timer("entropy"), torch.no_grad(), autocast_context(s.model, s.cfg.model.autocast):
        _, entropy = completion_logprobs(s.model, roll_in, temperature=kw["temperature"], with_entropy=True,
                                         share_prompt=s.cfg.model.share_prompt_forward)  # fmt: skip
    entropy, turn_ids = w.gather_rows(entropy.float().cpu()), w.gather_rows(roll_in.turn_ids.cpu(), fill=-1)
    counts = algo.sampler(entropy, turn_ids, w.gather_groups(roll_in.group_ids.cpu()), m - initial, **inputs)
    first = float(entropy[turn_ids == 0].mean())
    counts = w.local(counts, roll_in.num_completions)
    where = [(i, t) for i, t in counts.nonzero().tolist() for _ in range(int(counts[i, t]))]  # in row order
    batch = roll_in
    if where:
        per_prompt = roll_in.group_ids[[i for i, _ in where]].bincount(minlength=len(rows)).tolist()
        kw["generator"] = sample_generators(seed, tagged(keys, "branch"), per_prompt)
        with timer("generate"), autocast_context(s.model, s.cfg.model.autocast):
            more = branch(s.model, s.tokenizer, roll_in, [i for i, _ in where], [t for _, t in where], *s.env,
                          only_branch_turn=False, **kw)  # fmt: skip
        joined = roll_in.concat(more)
        batch = joined.select(torch.argsort(joined.group_ids, stable=True))
    with timer("score"):
        per_fn = s.scorer.score(batch)
    restarts = sum(t == 0 for _, t in where)
    stats = {"sampler/branches": w.ratio(len(where) - restarts, len(rows)),
             "sampler/restarts": w.ratio(restarts, len(rows)), "sampler/initial_entropy": first}  # fmt: skip
    return batch, per_fn, {**stats, **_replays(batch, w)}


def _replays(batch: Any, world: World) -> dict[str, float]:
    """The branches whose environment answered the replay differently (they end unscored), over every rank."""
    failed = sum(e is not None and e.startswith("replay") for e in batch.extras["env_error"])
    return {"sampler/replay_failed": float(world.sum(torch.tensor(float(failed))))}
