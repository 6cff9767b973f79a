"""Off-policy classic RL (ALGORITHMS.md §11 `mdpo_off`): a replay buffer, SAC-style critics and a squashed Gaussian.

The loop of the official off-policy MDPO code (manantomar/Mirror-Descent-Policy-Optimization, `mdpo_off/mdpo.py`,
built on stable-baselines' SAC): after `learning_starts` uniformly random actions, every environment step stores
(s, a, r, s′, terminated) and takes one gradient step on a minibatch of the buffer:

- actor: the method's loss on ã = tanh(u), u = μ_θ(s) + σ_θ(s)·ε (reparameterised), with log π_k(ã∣s) of the old
  actor at the same u and Q₁(s, ã), plus 1e-3·(μ² + log σ²) as the code has; only the actor's weights step;
- critics: Q₁, Q₂ regress on r + γ·(1 − terminated)·V̄(s′), V on min(Q₁, Q₂)(s, ã) plus the method's
  `value_bonus` metric (−λ·log π_θ(ã∣s) for `mdpo_off`), all halved squared errors; V̄ follows V by Polyak averaging (τ);
- every `old_every` steps π_k ← π_θ (the code's `sgd_steps`, m).

A time-limit truncation is not an end: the target bootstraps from V̄(s′) (the 2020 code, on gym, treated it as one).
Ours: actions during training are sampled from π_θ as in SAC (the code acts with the mean), and the networks are
64-wide as stable-baselines' default `MlpPolicy`. Needs `gymnasium` (the `classic` extra) and a continuous action
space.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unipo import algos


@dataclass(frozen=True)
class OffPolicySettings:
    """An off-policy run's hyperparameters (the official code's, except where marked)."""

    total_steps: int = 10_000
    learning_starts: int = 1_000
    """Uniformly random actions first (the code: 10 000 on MuJoCo; 1 000 is ours for Pendulum's short budget)."""
    buffer: int = 100_000
    batch: int = 256
    lr: float = 1e-3
    """Adam's step for every network (the code: 3e-4; 1e-3 is rl-zoo's SAC on Pendulum, ours)."""
    gamma: float = 0.99
    tau: float = 0.005
    hidden: int = 64
    old_every: int = 1_000
    """m: environment steps (= gradient steps) between copies π_k ← π_θ (ours; the code takes it on its command line,
    default 1)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The method's hyperparameters."""


def _mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


class SquashedGaussian(nn.Module):
    """π_θ(·∣s): a = scale·tanh(u), u ∼ N(μ_θ(s), σ_θ(s)²), log σ clamped to [−20, 2] (SAC's actor)."""

    discrete = False

    def __init__(self, obs_dim: int, act_dim: int, scale: torch.Tensor, hidden: int = 64) -> None:
        super().__init__()
        self.net, self.act_dim = _mlp(obs_dim, 2 * act_dim, hidden), act_dim
        self.register_buffer("scale", scale)

    def stats(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ) [B, A] at `obs`."""
        mu, log_std = self.net(obs).split(self.act_dim, -1)
        return mu, log_std.clamp(-20.0, 2.0)

    def log_prob(self, obs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log π(tanh(u)∣s) [B]: the Gaussian's density at u with the tanh change of variables."""
        mu, log_std = self.stats(obs)
        gauss = torch.distributions.Normal(mu, log_std.exp()).log_prob(u)
        return (gauss - torch.log(1.0 - torch.tanh(u) ** 2 + 1e-6)).sum(-1)

    def rsample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A reparameterised sample: (u [B, A], tanh(u) [B, A], log π(tanh(u)∣s) [B])."""
        mu, log_std = self.stats(obs)
        u = mu + log_std.exp() * torch.randn_like(mu)
        return u, torch.tanh(u), self.log_prob(obs, u)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """The action of the Gaussian's mean, scaled to the environment's bounds [B, A]."""
        return self.scale * torch.tanh(self.stats(obs)[0])


class Critics(nn.Module):
    """Q₁, Q₂ over (s, a) and V over s, with V̄ the Polyak-averaged target of V (SAC v1, as the code)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.q1, self.q2 = _mlp(obs_dim + act_dim, 1, hidden), _mlp(obs_dim + act_dim, 1, hidden)
        self.v = _mlp(obs_dim, 1, hidden)
        self.v_target = copy.deepcopy(self.v).requires_grad_(False)

    def q(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], -1)
        return self.q1(x)[:, 0], self.q2(x)[:, 0]

    @torch.no_grad()
    def polyak(self, tau: float) -> None:
        """V̄ ← (1 − τ)·V̄ + τ·V."""
        for target, source in zip(self.v_target.parameters(), self.v.parameters(), strict=True):
            target.mul_(1.0 - tau).add_(source, alpha=tau)


class Replay:
    """A ring buffer of transitions (s, a in [−1, 1], r, s′, terminated)."""

    def __init__(self, size: int, obs_dim: int, act_dim: int) -> None:
        self.data = {"obs": torch.zeros(size, obs_dim), "act": torch.zeros(size, act_dim), "rew": torch.zeros(size),
                     "next": torch.zeros(size, obs_dim), "term": torch.zeros(size)}  # fmt: skip
        self.size, self.count = size, 0

    def add(self, **row: Any) -> None:
        i = self.count % self.size
        for k, v in row.items():
            self.data[k][i] = torch.as_tensor(v, dtype=torch.float32)
        self.count += 1

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(min(self.count, self.size), (n,))
        return {k: v[idx] for k, v in self.data.items()}


def update(actor: SquashedGaussian, old: SquashedGaussian, critics: Critics, optimizers: tuple, loss_fn: Any,
           batch: dict[str, torch.Tensor], cfg: OffPolicySettings, params: dict) -> dict[str, float]:  # fmt: skip
    """One gradient step of the actor (the method's loss) and of the critics on `batch`, then V̄'s Polyak step."""
    actor_opt, critic_opt = optimizers
    obs = batch["obs"]
    u, action, logp = actor.rsample(obs)
    q1_pi, q2_pi = critics.q(obs, action)
    term, metrics = loss_fn(logp, old.log_prob(obs, u), q1_pi, **params)
    mu, log_std = actor.stats(obs)
    actor_loss = term.mean() + 1e-3 * ((mu**2).mean() + (log_std**2).mean())  # the code's Gaussian regulariser
    with torch.no_grad():
        q_backup = batch["rew"] + cfg.gamma * (1.0 - batch["term"]) * critics.v_target(batch["next"])[:, 0]
        v_backup = torch.minimum(q1_pi, q2_pi) + metrics["value_bonus"]  # the method's soft term (−λ·log π)
    q1, q2 = critics.q(obs, batch["act"])
    critic_loss = 0.5 * (((q1 - q_backup) ** 2).mean() + ((q2 - q_backup) ** 2).mean())
    critic_loss = critic_loss + 0.5 * ((critics.v(obs)[:, 0] - v_backup) ** 2).mean()
    actor_opt.zero_grad()
    critic_opt.zero_grad()
    actor_loss.backward(inputs=list(actor.parameters()))
    critic_loss.backward(inputs=[p for p in critics.parameters() if p.requires_grad])
    actor_opt.step()
    critic_opt.step()
    critics.polyak(cfg.tau)
    return {"actor_loss": actor_loss.item(), "critic_loss": critic_loss.item(), "kl": metrics["kl"].mean().item()}


def train(method: str, env_id: str, seed: int, cfg: OffPolicySettings) -> dict:
    """Train a fresh squashed-Gaussian policy with off-policy method `method` on `env_id` (continuous actions); returns
    {"returns": every finished training episode's return, "policy": the actor}."""
    import gymnasium as gym

    loss_fn = algos.get("classic", method)
    params = {**algos.entry("classic", method).params, **cfg.params}
    torch.manual_seed(seed)
    env = gym.make(env_id)
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"{method} needs a continuous action space; {env_id}'s is {type(env.action_space).__name__}")
    env.action_space.seed(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    scale = torch.as_tensor(env.action_space.high, dtype=torch.float32)
    actor = SquashedGaussian(obs_dim, act_dim, scale, cfg.hidden)
    old, critics = copy.deepcopy(actor).requires_grad_(False), Critics(obs_dim, act_dim, cfg.hidden)
    optimizers = (torch.optim.Adam(actor.parameters(), lr=cfg.lr),
                  torch.optim.Adam([p for p in critics.parameters() if p.requires_grad], lr=cfg.lr))  # fmt: skip
    replay = Replay(cfg.buffer, obs_dim, act_dim)
    obs, _ = env.reset(seed=seed)
    returns, running = [], 0.0
    for step in range(cfg.total_steps):
        s = torch.as_tensor(obs, dtype=torch.float32)
        if step < cfg.learning_starts:
            a = torch.rand(act_dim) * 2.0 - 1.0
        else:
            with torch.no_grad():
                a = actor.rsample(s[None])[1][0]
        obs, r, terminated, truncated, _ = env.step((scale * a).numpy())
        replay.add(obs=s, act=a, rew=float(r), next=obs, term=float(terminated))
        running += float(r)
        if terminated or truncated:
            returns.append(running)
            running, (obs, _) = 0.0, env.reset()
        if step >= cfg.learning_starts:
            update(actor, old, critics, optimizers, loss_fn, replay.sample(cfg.batch), cfg, params)
        if step % cfg.old_every == 0:
            old.load_state_dict(actor.state_dict())
    env.close()
    return {"returns": returns, "policy": actor}
