"""Classic RL on gymnasium (ALGORITHMS.md §11): small MLP policies trained by the `classic` methods of the pure layer.

The loop is the LLM trainer's, with states for token positions: collect `n_steps` transitions from each of `n_envs`
environments, compute GAE(γ, λ) advantages from a value network, then `epochs` passes of minibatch gradient steps on
the method's policy term plus c_v·(V − R)² − c_H·H. A time-limit truncation bootstraps V(s_T) (gymnasium's
`truncated`); a termination does not. Heads: categorical for discrete actions, diagonal Gaussian with a
state-independent log-std for continuous ones. Needs `gymnasium` (the `classic` extra).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from unipo import algos
from unipo.algos.classic import adapt_kl_beta, trust_region_step
from unipo.testbeds import classic_off
from unipo.testbeds.classic_off import OffPolicySettings


@dataclass(frozen=True)
class Settings:
    """A run's hyperparameters (defaults: rl-zoo's tuned PPO for CartPole-v1)."""

    total_steps: int = 100_000
    n_envs: int = 8
    n_steps: int = 32
    epochs: int = 20
    minibatch: int = 256
    lr: float = 1e-3
    gamma: float = 0.98
    lam: float = 0.8
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: int = 64
    normalize_advantages: bool = True
    episodes_only: bool = False
    """Train only on the episodes that end within the rollout, with Monte Carlo returns (REINFORCE)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The method's hyperparameters."""


METHODS: dict[str, Settings] = {
    "ppo_classic": Settings(),
    "mdpo": Settings(),
    "ppo_kl_adaptive": Settings(),
    "a2c": Settings(n_steps=5, epochs=1, minibatch=40, lr=7e-4, lam=1.0, gamma=0.99, normalize_advantages=False),
    "reinforce_classic": Settings(n_steps=256, epochs=1, minibatch=2048, lam=1.0, gamma=0.99, episodes_only=True),
    "mmd": Settings(),
    "trpo": Settings(n_steps=256, epochs=10, minibatch=128, gamma=0.99, lam=0.95),
}
"""Each classic method's run settings on CartPole-v1 (ppo_kl_adaptive and mdpo keep PPO's, as in their papers'
comparisons; a2c: SB3's defaults; reinforce: whole episodes, one step per rollout; trpo: sb3-contrib's γ, λ, critic
minibatch and critic epochs, with 8 × 256 transitions per step)."""


ENV_OVERRIDES: dict[str, dict[str, Any]] = {
    "Pendulum-v1": {
        "n_envs": 4,
        "n_steps": 1024,
        "gamma": 0.9,
        "lam": 0.95,
        "epochs": 10,
        "minibatch": 64,
        "total_steps": 200_000,
    },
}
"""Settings that depend on the environment (rl-zoo's PPO for Pendulum-v1, with a smaller budget)."""


def settings_for(method: str, env_id: str, **overrides: Any) -> Settings | OffPolicySettings:
    """`method`'s settings on `env_id`, with `overrides` (e.g. total_steps) last; an off-policy method's are the
    replay-buffer runner's."""
    if "off_policy" in algos.entry("classic", method).facts:
        return replace(OffPolicySettings(), **overrides)
    return replace(METHODS[method], **{**ENV_OVERRIDES.get(env_id, {}), **overrides})


def curve(returns: list[float], points: int = 10) -> list[float]:
    """Mean training return over each of `points` equal, consecutive slices of the finished episodes."""
    if not returns:
        return []
    size = max(1, len(returns) // points)
    return [sum(chunk) / len(chunk) for i in range(0, len(returns), size) if (chunk := returns[i : i + size])]


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the policy head and the value (the usual classic-control setup)."""

    def __init__(self, obs_dim: int, act_dim: int, discrete: bool, hidden: int = 64) -> None:
        super().__init__()

        def mlp(out: int, gain: float) -> nn.Sequential:
            layers = [
                nn.Linear(obs_dim, hidden),
                nn.Tanh(),
                nn.Linear(hidden, hidden),
                nn.Tanh(),
                nn.Linear(hidden, out),
            ]
            for layer in layers[::2]:
                nn.init.orthogonal_(layer.weight, math.sqrt(2))
                nn.init.zeros_(layer.bias)
            nn.init.orthogonal_(layers[-1].weight, gain)
            return nn.Sequential(*layers)

        self.discrete = discrete
        self.actor, self.critic = mlp(act_dim, 0.01), mlp(1, 1.0)
        self.log_std = None if discrete else nn.Parameter(torch.zeros(act_dim))

    def dist(self, obs: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor | None]:
        """The action distribution at `obs` [B, D] and, for a categorical head, its logits [B, A]."""
        out = self.actor(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out), out
        return torch.distributions.Normal(out, self.log_std.exp()), None

    def log_prob(self, dist: torch.distributions.Distribution, actions: torch.Tensor) -> torch.Tensor:
        """log π(a∣s) [B] (a Gaussian's summed over the action's dimensions)."""
        return dist.log_prob(actions) if self.discrete else dist.log_prob(actions).sum(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs)[:, 0]

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely action [B] (categorical) or the Gaussian's mean [B, A]."""
        dist, _ = self.dist(obs)
        return dist.probs.argmax(-1) if self.discrete else dist.mean


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor, gamma: float,
        lam: float) -> torch.Tensor:  # fmt: skip
    """GAE (Schulman et al. 2016, arXiv:1506.02438) over [T, E] transitions with episode ends: δ_t = r_t + γ·V(s_{t+1})
    ·(1 − done_t) − V(s_t), A_t = δ_t + γλ·(1 − done_t)·A_{t+1}; `last_value` [E] values the state after the last step.
    A truncation's bootstrap is already in its reward (r + γ·V(s_T)), so `dones` covers both ends."""
    adv = torch.zeros_like(rewards)
    next_adv, next_value = torch.zeros_like(last_value), last_value
    for t in reversed(range(rewards.shape[0])):
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        next_adv = delta + gamma * lam * alive * next_adv
        adv[t], next_value = next_adv, values[t]
    return adv


def _step_envs(
    envs: list,
    actions: torch.Tensor,
    obs: torch.Tensor,
    policy: ActorCritic,
    gamma: float,
    returns: list[float],
    running: list[float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of every environment; finished ones are reset. Returns (next obs, rewards with a truncation's
    bootstrap γ·V(s_T) added, done flags)."""
    next_obs, rewards, dones = obs.clone(), torch.zeros(len(envs)), torch.zeros(len(envs))
    for i, env in enumerate(envs):
        a = actions[i].item() if policy.discrete else actions[i].numpy()
        o, r, terminated, truncated, _ = env.step(a)
        running[i] += float(r)
        rewards[i] = float(r)
        if truncated and not terminated:  # a time limit, not a real end: bootstrap from the state reached
            with torch.no_grad():
                rewards[i] += gamma * float(policy.value(torch.as_tensor(o, dtype=torch.float32)[None])[0])
        if terminated or truncated:
            returns.append(running[i])
            running[i], dones[i] = 0.0, 1.0
            o, _ = env.reset()
        next_obs[i] = torch.as_tensor(o, dtype=torch.float32)
    return next_obs, rewards, dones


def train(method: str, env_id: str = "CartPole-v1", seed: int = 0,
          settings: Settings | OffPolicySettings | None = None) -> dict:  # fmt: skip
    """Train a fresh policy with classic method `method` on `env_id`; returns {"returns": every finished training
    episode's return, "policy": the trained policy}. An `off_policy` method runs in `classic_off`'s replay loop."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide MLP gains nothing from intra-op threads, and loses much to their contention
    settings = settings or settings_for(method, env_id)
    try:
        if isinstance(settings, OffPolicySettings):
            return classic_off.train(method, env_id, seed, settings)
        return _train(method, env_id, seed, settings)
    finally:
        torch.set_num_threads(threads)


def _train(method: str, env_id: str, seed: int, cfg: Settings) -> dict:
    import gymnasium as gym

    loss_fn = algos.get("classic", method)
    takes = inspect.signature(loss_fn).parameters
    adaptive = "adaptive_kl" in algos.entry("classic", method).facts
    params = {**algos.entry("classic", method).params, **cfg.params}  # the method's defaults, then the run's
    torch.manual_seed(seed)
    envs = [gym.make(env_id) for _ in range(cfg.n_envs)]
    obs = torch.stack([torch.as_tensor(env.reset(seed=seed + i)[0], dtype=torch.float32) for i, env in enumerate(envs)])
    for i, env in enumerate(envs):
        env.action_space.seed(seed + i)
    space = envs[0].action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    policy = ActorCritic(obs.shape[1], int(space.n) if discrete else int(space.shape[0]), discrete, cfg.hidden)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    iterations = cfg.total_steps // (cfg.n_envs * cfg.n_steps)
    returns: list[float] = []
    running = [0.0] * cfg.n_envs
    for it in range(iterations):
        for group in optimizer.param_groups:  # linear decay to 0 (rl-zoo's schedule)
            group["lr"] = cfg.lr * (1 - it / iterations)
        batch = _rollout(envs, policy, obs, cfg, returns, running)
        obs = batch.pop("next_obs")
        schedule = {"progress": it / iterations, "iterations": iterations}  # for a method that anneals (MDPO)
        _update(
            policy,
            optimizer,
            loss_fn,
            batch,
            cfg,
            {**params, **{k: v for k, v in schedule.items() if k in takes}},
            trust_region="trust_region" in algos.entry("classic", method).facts,
        )
        if adaptive:  # PPO's adaptive KL: β moves by the KL(π_old‖π_new) of this iteration's update
            params["beta"] = adapt_kl_beta(params["beta"], _mean_kl(policy, batch), params["target_kl"])
    for env in envs:
        env.close()
    return {"returns": returns, "policy": policy}


def _rollout(envs: list, policy: ActorCritic, obs: torch.Tensor, cfg: Settings, returns: list[float],
             running: list[float]) -> dict[str, torch.Tensor]:  # fmt: skip
    """`n_steps` steps of every environment, flattened to [T·E] transitions with their advantages and returns."""
    keys = ("obs", "actions", "logp", "values", "rewards", "dones", "logits")
    steps: dict[str, list] = {k: [] for k in keys}
    for _ in range(cfg.n_steps):
        with torch.no_grad():
            dist, logits = policy.dist(obs)
            actions = dist.sample()
            logp = policy.log_prob(dist, actions)
            values = policy.value(obs)
        next_obs, rewards, dones = _step_envs(envs, actions, obs, policy, cfg.gamma, returns, running)
        for k, v in zip(keys, (obs, actions, logp, values, rewards, dones, logits), strict=True):
            steps[k].append(v)
        obs = next_obs
    batch = {k: torch.stack(v) for k, v in steps.items() if v[0] is not None}
    with torch.no_grad():
        last = torch.zeros(len(envs)) if cfg.episodes_only else policy.value(obs)
    adv = gae(batch["rewards"], batch["values"], batch["dones"], last, cfg.gamma, cfg.lam)
    batch["returns"] = adv + batch["values"]
    batch["advantages"] = adv
    # REINFORCE: only the episodes that ended within the rollout (after an env's last end, no Monte Carlo return)
    ended = batch["dones"].flip(0).cumsum(0).flip(0) > 0
    batch["keep"] = ended if cfg.episodes_only else torch.ones_like(ended)
    out = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
    out["next_obs"] = obs
    return out


def _update(policy: ActorCritic, optimizer: torch.optim.Optimizer, loss_fn: Any, batch: dict, cfg: Settings,
            params: dict, trust_region: bool = False) -> None:  # fmt: skip
    """`epochs` passes of minibatch steps on the method's policy term + value loss − entropy bonus; a `trust_region`
    method (TRPO) instead moves the policy by one `trust_region_step` on the whole batch, then the value loss alone
    takes the minibatch steps."""
    keep = batch["keep"].nonzero()[:, 0]
    adv = batch["advantages"][keep]
    if cfg.normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    data = {k: v[keep] for k, v in batch.items() if k != "keep"}
    data["advantages"] = adv
    if trust_region:
        _trust_region_policy_step(policy, loss_fn, data, params)
    n = keep.numel()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n).split(cfg.minibatch):
            mb = {k: v[idx] for k, v in data.items()}
            loss = cfg.value_coef * ((policy.value(mb["obs"]) - mb["returns"]) ** 2).mean()
            if not trust_region:
                dist, logits = policy.dist(mb["obs"])
                logp = policy.log_prob(dist, mb["actions"])
                entropy = dist.entropy() if policy.discrete else dist.entropy().sum(-1)
                term, _ = loss_fn(logp, mb["logp"], mb["advantages"], logits=logits, old_logits=mb.get("logits"),
                                  **params)  # fmt: skip
                loss = loss + term.mean() - cfg.entropy_coef * entropy.mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()


def _trust_region_policy_step(policy: ActorCritic, loss_fn: Any, data: dict, params: dict) -> dict[str, float]:
    """TRPO's policy step on the whole batch: the method's surrogate and its `kl` metric, to `trust_region_step`."""
    actor = [p for name, p in policy.named_parameters() if not name.startswith("critic.")]

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        dist, logits = policy.dist(data["obs"])
        term, metrics = loss_fn(policy.log_prob(dist, data["actions"]), data["logp"], data["advantages"],
                                logits=logits, old_logits=data.get("logits"), **params)  # fmt: skip
        return term.mean(), metrics["kl"].mean()

    region = ("max_kl", "cg_iters", "damping", "backtrack", "shrink")
    return trust_region_step(actor, evaluate, **{k: params[k] for k in region})


def _mean_kl(policy: ActorCritic, batch: dict) -> float:
    """E_{a∼π_old}[log π_old(a∣s) − log π_new(a∣s)] over the rollout's transitions: the KL(π_old‖π_new) of an update."""
    with torch.no_grad():
        dist, _ = policy.dist(batch["obs"])
        return float((batch["logp"] - policy.log_prob(dist, batch["actions"])).mean())


def evaluate(policy: nn.Module, env_id: str = "CartPole-v1", episodes: int = 10, seed: int = 10_000) -> float:
    """Mean return of the greedy policy (argmax action, or the Gaussian's mean) over `episodes` seeded episodes."""
    import gymnasium as gym

    env, total = gym.make(env_id), 0.0
    for e in range(episodes):
        o, _ = env.reset(seed=seed + e)
        done = False
        while not done:
            with torch.no_grad():
                a = policy.greedy(torch.as_tensor(o, dtype=torch.float32)[None])[0]
                a = a.item() if policy.discrete else a.numpy()
            o, r, terminated, truncated, _ = env.step(a)
            total += float(r)
            done = terminated or truncated
    env.close()
    return total / episodes


__all__ = ["METHODS", "ActorCritic", "Settings", "curve", "evaluate", "gae", "settings_for", "train"]
