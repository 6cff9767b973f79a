"""SeeUPO's turn-by-turn update (fact `turn_sequential`) against its passes composed by hand on a tiny model."""

import copy

import pytest
import torch

from unipo import algos, config
from unipo.models.loading import load_model_and_tokenizer
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.hf import sample
from unipo.trainers.common import build_algo, build_optimizer
from unipo.trainers.update import turn_by_turn

ROWS = [{"prompt": "say 7"}, {"prompt": "pick a number:"}]


def _two_turn_batch(model, tokenizer):
    """Sampled completions split into turns by hand: tokens 0–2 turn 0, token 3 the environment's, the rest turn 1;
    completion 1 (and any shorter than 5 tokens) has turn 0 only."""
    batch = sample(model, tokenizer, ROWS, n=3, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    width = batch.completion_ids.shape[1]
    pos = torch.arange(width).expand_as(batch.completion_ids)
    turn_ids = torch.where(pos < 3, 0, torch.where(pos == 3, -1, 1))
    turn_ids[1, 3:] = -1
    turn_ids = torch.where(batch.completion_mask.bool(), turn_ids, -1)
    batch.turn_ids, batch.loss_mask = turn_ids, (turn_ids >= 0).long()
    return batch


def _by_hand(model, cfg, batch, advantages, order):
    """θ after one AdamW step per turn in `order`, each on −Σ_t A·log π over the turn's tokens of a trajectory,
    averaged over the trajectories that have the turn (REINFORCE, sequence level), at the parameters the previous
    pass left; the learning rate as at the step's start."""
    optimizer, _ = build_optimizer(model, cfg)
    for k in order:
        at_k = (batch.turn_ids == k).float()
        rows = at_k.sum(1) > 0
        logp, _ = completion_logprobs(model, batch, temperature=cfg.rollout.temperature)
        loss = -(advantages * logp * at_k).sum(1)[rows].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.slow
def test_turn_by_turn_updates_the_last_turn_first_each_pass_on_its_own_counts(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    model.eval()
    cfg = config.load(
        "seeupo", ["model.autocast=off", "train.lr=1e-2", "train.max_grad_norm=0", "train.warmup_steps=0"]
    )
    batch = _two_turn_batch(model, tokenizer)
    n, width = batch.completion_ids.shape
    assert (batch.turn_ids == 1).any() and not (batch.turn_ids[1] == 1).any()
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 0.2])  # each trajectory's; the first turn's reward is 0.1
    turns = (batch.turn_ids.max(1).values + 1).tolist()
    credit = algos.get("credit", "seeupo_recon")
    advantages = credit(torch.zeros(n), turn_ids=batch.turn_ids, group_ids=batch.group_ids, rewards=rewards,
                        turn_rewards=[[0.1] * k for k in turns])  # fmt: skip
    assert advantages.abs().sum() > 0 and advantages.shape == (n, width)
    expected = _by_hand(copy.deepcopy(model), cfg, batch, advantages, order=[1, 0])
    reverse = _by_hand(copy.deepcopy(model), cfg, batch, advantages, order=[0, 1])
    optimizer, scheduler = build_optimizer(model, cfg)
    inputs = {"rewards": torch.zeros(n), "progress": 0.0, "truncated": batch.truncated}
    stats = turn_by_turn(cfg, model, optimizer, scheduler, build_algo(cfg), batch, advantages, inputs)
    assert stats["turns/passes"] == 2 and scheduler.last_epoch == 1  # the schedule moves once per step
    # AdamW's first steps are about ±lr per parameter, so float noise in a near-zero gradient moves one by up to ~1e-5;
    # the other order moves parameters by ~lr
    got = [p.detach() for p in model.parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True)) < 1e-4
    assert max(float((a - b).abs().max()) for a, b in zip(got, reverse, strict=True)) > 1e-3
