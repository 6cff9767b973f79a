"""The collect stage's reflect-then-retry (sampler fact `retry`, R³L; our reconstruction, `r3l_retry_recon`).

Each failed attempt the sampler picks is retried once: the prompt gets language feedback (the attempt and that it was
wrong, `rollout.inject.R3L_FEEDBACK`), the attempt's first ⌊c·L⌋ tokens are forced (c the sampler's failure point,
L the attempt's tokens before EOS) and the policy continues. The retry is scored, then joins the attempt's group as an
answer to the bare prompt: its completion ids are carried over unchanged (never re-tokenised), the forced prefix is
out of the loss (`Rollouts.forced`), and the attempt and its retry share an id in `Rollouts.pairs` (`retry_pairs`,
for `r3l_pivot_recon`). Its behaviour log-probs are those under the feedback, so it is off-policy for the bare prompt;
the update's old log-probs are computed on the bare prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unipo.rollout.batch import Origin, Rollouts
from unipo.rollout.inject import with_feedback
from unipo.trainers.common import Timer
from unipo.trainers.generation import Collected, generate_and_score, marks, nanmean

if TYPE_CHECKING:
    from unipo.trainers.common import Algo
    from unipo.trainers.rl import RLState


def retried(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, timer: Timer, keys: list) -> Collected:
    """The batch plus one retry of each failed attempt the sampler gives a failure point (module docstring). `keys`:
    the stream keys of the batch's prompts; a retry is keyed by its attempt's (the same retries on any number of
    ranks)."""
    w = s.world
    cuts = marks(s, algo, batch, per_fn).cpu()
    picked = (~cuts.isnan()).nonzero().squeeze(-1).tolist()
    stats = {
        "sampler/retried_frac": w.ratio(len(picked), batch.num_completions),
        "sampler/sampled_reward": nanmean(s.scorer.combine(per_fn), w),
    }  # fmt: skip  (the attempts', before retries)
    if not sum(w.sizes(len(picked))):
        return batch, per_fn, stats
    again, again_fn, forced = None, per_fn[:0], []
    if picked:
        tokens = batch.token_lists()
        eos = s.tokenizer.eos_token_id
        for i in picked:
            attempt = tokens[i][:-1] if tokens[i] and tokens[i][-1] == eos and not batch.truncated[i] else tokens[i]
            forced.append(attempt[: int(float(cuts[i]) * len(attempt))])
        owners = batch.group_ids[picked].tolist()
        first = {g: int((batch.group_ids == g).nonzero()[0]) for g in set(owners)}
        retry_keys = [f"{keys[g]}.retry{i - first[g]}" for g, i in zip(owners, picked, strict=True)]
        rows = [with_feedback(batch.rows[g], batch.texts[i]) for g, i in zip(owners, picked, strict=True)]
        again, again_fn = generate_and_score(s, rows, timer, forced=forced, n=[1] * len(rows), positions=retry_keys)
        device = batch.group_ids.device
        again.group_ids = torch.tensor(owners, device=device)  # trained on the attempt's (bare) prompt, in its group
        again.origin.fill_(int(Origin.RETRY))
        again.pairs = torch.tensor(picked, device=device)
        batch.pairs[picked] = torch.tensor(picked, device=device)
    solved = torch.nan_to_num(again_fn[:, 0], nan=0.0) > 0
    stats |= {"sampler/retry_solved": w.ratio(int(solved.sum()), solved.numel()),
              "sampler/retry_reward": nanmean(again_fn[:, 0], w),
              "sampler/forced_tokens": w.ratio(sum(map(len, forced)), len(forced))}  # fmt: skip
    if again is None:
        return batch, per_fn, stats
    return batch.concat(again), torch.cat([per_fn, again_fn]), stats
