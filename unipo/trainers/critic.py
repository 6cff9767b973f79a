"""The critic of the on-policy trainer (ALGORITHMS.md §10): its value model and optimizer, the values it gives the
advantage stage, and its own update: epochs x micro-batches of the clipped value loss after the policy's (PPO), or,
for a TD critic (fact `td_replay`, ArCHer), steps on replayed trajectories towards a Polyak target's TD targets,
before the advantages."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from unipo.algos.critics import CriticTargets, clipped_value_loss, explained_variance
from unipo.algos.ops import masked_sum
from unipo.config import Config
from unipo.models.loading import autocast_context
from unipo.models.value import ValueModel, load_value_model
from unipo.rollout.batch import Rollouts, cat, keep_groups
from unipo.trainers.common import build_optimizer, call
from unipo.trainers.dist import World

SUBDIR = "critic"
"""Where a checkpoint keeps the value model."""
TARGET_SUBDIR = "critic_target"
"""Where a checkpoint keeps a TD critic's target network."""


@dataclass
class Critic:
    """The value model with its optimizer and schedule (the policy's schedule, at `critic.lr`)."""

    model: ValueModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    target: ValueModel | None = None
    """A TD critic's Polyak-averaged copy (fact `td_replay`), which gives its targets; None for PPO's."""
    replay: Rollouts | None = None
    """A TD critic's last `critic.replay_size` trajectories, each with its reward in `extras["reward"]`."""

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "replay": self.replay}  # fmt: skip

    def models(self) -> dict[str, ValueModel]:
        """The value models a checkpoint saves, by folder."""
        return {SUBDIR: self.model, **({TARGET_SUBDIR: self.target} if self.target is not None else {})}


def build(cfg: Config, resume: Any, saved: dict[str, Any] | None, *, td: bool = False) -> Critic:
    """The critic of a run: from the checkpoint being resumed, else from `critic.path` (default: the policy's
    initial weights) with its head at zero; with `td` (fact `td_replay`) also its target network (a copy, or the
    checkpoint's) and replay."""
    path = str(resume / SUBDIR) if resume is not None else cfg.critic.path or cfg.model.path
    model = load_value_model(path, device=cfg.model.device, dtype=cfg.model.dtype)
    model.eval()  # no dropout: values and their update see the same function
    optimizer, scheduler = build_optimizer(model, cfg, lr=cfg.critic.lr)
    if saved is not None:
        optimizer.load_state_dict(saved["critic"]["optimizer"])
        scheduler.load_state_dict(saved["critic"]["scheduler"])
    critic = Critic(model, optimizer, scheduler)
    if td:
        saved_target = resume is not None and (resume / TARGET_SUBDIR).is_dir()
        target = (load_value_model(str(resume / TARGET_SUBDIR), device=cfg.model.device, dtype=cfg.model.dtype)
                  if saved_target else copy.deepcopy(model))  # fmt: skip
        critic.target = target.eval().requires_grad_(False)
        critic.replay = (saved or {}).get("critic", {}).get("replay")
    return critic


@torch.no_grad()
def values(critic: Critic, batch: Rollouts, cfg: Config, *, target: bool = False) -> torch.Tensor:
    """(N, T+1) V(s_t) of the batch under the critic as it is now (the advantage stage's input), or under its target
    network."""
    if batch.num_completions == 0:  # a rank whose groups a filter dropped (the critic is whole on every rank)
        return torch.zeros((0, batch.completion_ids.shape[1] + 1), device=batch.completion_ids.device)
    model = critic.target if target else critic.model
    with autocast_context(model, cfg.model.autocast):
        return model(batch, share_prompt=cfg.model.share_prompt_forward).float()


def prompt_values(critic: Critic, batch: Rollouts, cfg: Config) -> torch.Tensor:
    """(N,) V(x) of each row's prompt (the state before its first token), with gradient: for a loss that trains the
    value model together with the policy (DRO), followed by `step`."""
    with autocast_context(critic.model, cfg.model.autocast):
        return critic.model(batch, share_prompt=cfg.model.share_prompt_forward)[:, 0].float()


def step(critic: Critic, cfg: Config) -> dict[str, float]:
    """One optimizer step of the value model on the gradient a loss left in it, clipped as the policy's."""
    grad_norm = torch.nn.utils.clip_grad_norm_(critic.model.parameters(), cfg.train.max_grad_norm or float("inf"))
    critic.optimizer.step()
    critic.scheduler.step()
    critic.optimizer.zero_grad(set_to_none=True)
    return {"critic/grad_norm": float(grad_norm)}


def update(
    critic: Critic, cfg: Config, batch: Rollouts, old_values: torch.Tensor, t: CriticTargets, world: World | None = None
) -> dict[str, float]:
    """`ppo_epochs` optimizer steps of the clipped value loss towards the returns, each over micro-batches, averaged
    over the value mask with its global token count (so micro-batching never changes it). On several ranks (`world`)
    the count is every rank's and the gradients are summed over the ranks before clipping, as the policy's."""
    n, model, world = batch.num_completions, critic.model, world or World()
    value_mask = t.value_mask.float()
    count = world.sum(value_mask.sum()).clamp(min=1)
    rows = torch.arange(n, device=value_mask.device)[value_mask.sum(1) > 0]  # rows with a target (finished, scored)
    sums: dict[str, torch.Tensor] = {}
    losses, norms = [], []
    for _ in range(cfg.train.ppo_epochs):
        for p in model.parameters():
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
        total = torch.zeros(())
        for idx in rows.split(cfg.train.micro_batch_size) if rows.numel() else ():  # all cut off (T-PPO): none
            mb = batch.select(idx)
            width, mask = mb.completion_ids.shape[1], value_mask[idx, : mb.completion_ids.shape[1]]
            with autocast_context(model, cfg.model.autocast):
                v = model(mb, share_prompt=cfg.model.share_prompt_forward).float()[:, :-1]
            per_token, metrics = clipped_value_loss(v, old_values[idx, :width], t.returns[idx, :width],
                                                    value_clip=cfg.critic.value_clip)  # fmt: skip
            loss = masked_sum(per_token, mask) / count
            loss.backward()
            total += loss.detach().cpu()
            for key, value in metrics.items():
                pair = torch.stack([masked_sum(value, mask).cpu(), mask.sum().cpu()])
                sums[key] = sums.get(key, torch.zeros(2)) + pair
        world.all_reduce_grads(list(model.parameters()))
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))))
        critic.optimizer.step()
        critic.scheduler.step()
        losses.append(float(world.sum(total)))
    old, returns, mask = (world.gather_rows(x) for x in (old_values[:, :-1], t.returns, value_mask))
    totals: dict[str, torch.Tensor] = {}
    for key, pair in world.gather_list(list(sums.items())):  # (masked sum, count) of every rank
        totals[key] = totals.get(key, torch.zeros(2)) + pair
    return {
        "critic/value_loss": sum(losses) / len(losses),
        "critic/grad_norm": sum(norms) / len(norms),
        "critic/explained_var": explained_variance(old, returns, mask.bool()),
        "critic/values_mean": float(masked_sum(old, mask) / count),
        "critic/returns_mean": float(masked_sum(returns, mask) / count),
        **{k: float(v[0] / v[1].clamp(min=1)) for k, v in totals.items()},
    }


def remember(replay: Rollouts | None, batch: Rollouts, rewards: torch.Tensor, size: int, pad_id: int) -> Rollouts:
    """The replay with the batch's trajectories (and their rewards, NaN where unscored) added, cut to the newest
    `size` (the prompts no kept trajectory refers to are dropped)."""
    new = replace(batch, extras={**batch.extras, "reward": rewards.tolist()})
    joined = new if replay is None else cat([replay, new], pad_id)
    keep = torch.arange(joined.num_completions, device=joined.group_ids.device) >= joined.num_completions - size
    return keep_groups(joined, keep)


def td_update(
    critic: Critic, cfg: Config, fn: Callable, generator: torch.Generator, inputs: Callable[[Rollouts], dict],
    world: World | None = None,
) -> dict[str, float]:  # fmt: skip
    """A TD critic's update (fact `td_replay`, ArCHer's critic loop): `critic.replay_updates` optimizer steps, each on
    `critic.replay_batch` trajectories drawn from the replay with replacement. `fn` (the recipe's critic) gives each
    draw's targets from the target network's values (`target_values`, with `inputs(draw)`, its turn data); the loss
    is ½·(V − y)² averaged over the draw's targets (over micro-batches, with its global count). After each step the
    target moves: θ̄ ← θ̄ + τ·(θ − θ̄). A draw's trajectories mostly come from different prompts, so a micro-batch
    shares no prompt forward: `train.micro_batch_size` bounds its memory (the recipe `archer` sets 8). On several ranks
    (`world`) every rank holds the whole replay and draws the same rows (the run's generator is in step on every rank);
    each takes its contiguous share of the draw, the count is every rank's and the gradients are summed over the ranks,
    so the critic and its target stay the one process's."""
    assert critic.replay is not None and critic.target is not None, "a TD critic remembers the batch first"
    world = world or World()
    losses, norms, explained = [], [], []
    for _ in range(cfg.critic.replay_updates):
        idx = torch.randint(critic.replay.num_completions, (cfg.critic.replay_batch,), generator=generator,
                            device=generator.device).to(critic.replay.group_ids.device)  # fmt: skip
        draw = critic.replay.select(idx.tensor_split(world.size)[world.rank])
        target_values = values(critic, draw, cfg, target=True)
        rewards = torch.tensor(draw.extras["reward"], dtype=torch.float32, device=target_values.device)
        t = call(
            fn, rewards, target_values, draw.completion_mask, inputs=inputs(draw) | {"target_values": target_values}
        )
        count = world.sum(t.value_mask.sum()).clamp(min=1)
        critic.optimizer.zero_grad(set_to_none=True)
        total, fitted = torch.zeros(()), []
        for part in torch.arange(draw.num_completions).split(cfg.train.micro_batch_size):
            mb = draw.select(part)
            width = mb.completion_ids.shape[1] + 1
            with autocast_context(critic.model, cfg.model.autocast):
                v = critic.model(mb, share_prompt=cfg.model.share_prompt_forward).float()
            mask = t.value_mask[part, :width]
            loss = masked_sum(0.5 * (v - t.returns[part, :width]) ** 2, mask) / count
            loss.backward()
            total += loss.detach().cpu()
            fitted.append(torch.nn.functional.pad(v.detach(), (0, t.returns.shape[1] - width)))
        world.all_reduce_grads(list(critic.model.parameters()))
        norms.append(float(torch.nn.utils.clip_grad_norm_(critic.model.parameters(),
                                                          cfg.train.max_grad_norm or float("inf"))))  # fmt: skip
        critic.optimizer.step()
        critic.scheduler.step()
        with torch.no_grad():
            for slow, fast in zip(critic.target.parameters(), critic.model.parameters(), strict=True):
                slow.lerp_(fast, cfg.critic.target_tau)
        losses.append(float(world.sum(total)))
        fit, returns, mask = (world.gather_rows(x) for x in (torch.cat(fitted), t.returns, t.value_mask))
        explained.append(explained_variance(fit, returns, mask))
    return {
        "critic/value_loss": sum(losses) / len(losses),
        "critic/grad_norm": sum(norms) / len(norms),
        "critic/explained_var": sum(explained) / len(explained),
        "critic/replay_size": float(critic.replay.num_completions),
    }
