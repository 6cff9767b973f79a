"""R³L's reflect-then-retry in the on-policy loop (sampler fact `retry`, trainers/retry.py), on a tiny model."""

import copy

import pytest
import torch

from unipo import algos
from unipo.cli import main
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.batch import Origin
from unipo.trainers import rl

pytestmark = pytest.mark.slow


def test_retries_join_their_group_as_answers_to_the_bare_prompt(tiny_model_dir, tmp_path, monkeypatch):
    seen = []
    original = rl.update

    def keep(cfg, model, *args, **kwargs):
        seen.append((copy.deepcopy(model), args[3], args[5]))  # the policy that sampled, the batch, its inputs
        return original(cfg, model, *args, **kwargs)

    monkeypatch.setattr(rl, "update", keep)
    args = ["train", "r3l", f"model.path={tiny_model_dir}", "task=lucky7", f"output_dir={tmp_path / 'run'}",
            "train.max_steps=1", "train.prompts_per_step=3", "rollout.group_size=4", "rollout.max_new_tokens=8",
            "eval.num_problems=0", "model.autocast=off",
            "algo.sampler={name: r3l_retry_recon, max_retries: 2, cut_low: 0.2, cut_high: 0.8}"]  # fmt: skip
    assert main(args) == 0
    model, batch, inputs = seen[0]
    retries = (batch.origin == Origin.RETRY).nonzero().squeeze(-1).tolist()
    originals = 12  # 3 prompts × 4 attempts come first
    assert retries == list(range(originals, batch.num_completions)) and retries
    rewards = inputs["rewards"]
    for j in retries:
        i = int(batch.pairs[j])  # the attempt it retries (its index in the batch)
        assert i < originals and int(batch.pairs[i]) == i and int(batch.origin[i]) == Origin.POLICY
        assert float(rewards[i]) <= 0 and int(batch.group_ids[j]) == int(batch.group_ids[i])
        k, n = int(batch.forced[j].sum()), int(batch.completion_mask[j].sum())
        assert bool(batch.forced[j, :k].all())  # the forced tokens are the attempt's first k, out of the loss
        assert batch.completion_ids[j, :k].tolist() == batch.completion_ids[i, :k].tolist()
        assert batch.loss_mask[j, :k].sum() == 0 and bool(batch.loss_mask[j, k:n].all())
    per_group = torch.bincount(batch.group_ids[retries], minlength=3)
    assert int(per_group.max()) <= 2  # max_retries
    assert all("previous attempt" not in str(row["prompt"]) for row in batch.rows)  # trained on the bare prompts
    # sampled under the feedback, trained on the bare prompt: the attempts' behaviour log-probs are the policy's on
    # the prompt; a retry's sampled tokens were drawn in another context
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch)
    sampled = batch.loss_mask.bool()
    attempts, retried = sampled.clone(), sampled.clone()
    attempts[originals:], retried[:originals] = False, False
    torch.testing.assert_close(logp[attempts], batch.rollout_logp[attempts], atol=1e-4, rtol=1e-4)
    assert float((logp[retried] - batch.rollout_logp[retried]).abs().max()) > 1e-2
    # pivotal credit: an attempt and its retry train only after their longest common prefix
    w = algos.get("token_weight", "r3l_pivot_recon")(batch.loss_mask.float(), completion_ids=batch.completion_ids,
                                                     retry_pairs=batch.pairs)  # fmt: skip
    for j in retries:
        i = int(batch.pairs[j])
        common = int((batch.completion_ids[i] == batch.completion_ids[j]).long().cumprod(0).sum())
        assert float(w[[i, j], :common].sum()) == 0 and float(w[j, common:].sum()) == float(
            batch.loss_mask[j, common:].sum()
        )
