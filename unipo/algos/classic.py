"""Classic-RL policy optimisation on gymnasium environments (ALGORITHMS.md §11), composed from the LLM components.

A classic method is the policy term of one minibatch's loss, built from the same registered pieces the LLM trainers
use: `ppo_classic` is the `ppo_clip` surrogate, `mdpo` the `mdpo` surrogate with the exact KL of the policy head
(`kl_full` on the action logits), `a2c` / `reinforce_classic` the plain policy gradient. A state of the environment
plays the part of a token position, an action the part of a sampled token: tensors are [B, 1] (B transitions, one
"token" each). The runner (`unipo.testbeds.classic`) adds the value loss and the entropy bonus, which every method
shares, and runs the loop.

Signature of the kind: ``fn(logp [B], old_logp [B], advantages [B], *, logits, old_logits, <hparams>) -> (loss [B],
metrics)``; ``logits`` / ``old_logits`` are [B, A] for a categorical head and None for a Gaussian one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from unipo.algos.kl import kl_full
from unipo.algos.policy_losses.clipped import ppo_clip
from unipo.algos.policy_losses.trust_region import mdpo as mdpo_surrogate
from unipo.algos.registry import register

Metrics = dict[str, torch.Tensor]


def _tokens(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """[B] -> [B, 1]: one transition is one "token" of the LLM components."""
    return tuple(x[:, None] for x in xs)


@register("classic", "ppo_classic", paper="Schulman et al. 2017, Proximal Policy Optimization Algorithms, "
          "arXiv:1707.06347", tag="memory")  # fmt: skip
def ppo_classic(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    old_logits: torch.Tensor | None = None,
    clip: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """PPO (Schulman et al. 2017, arXiv:1707.06347, eq. 7): ℓ = −min(ρA, clip(ρ, 1−ε, 1+ε)·A), the `ppo_clip`
    policy loss of the LLM trainers on one transition per row. ε = 0.2.

    Args:
        logp: [B] log π_θ(a∣s) of the taken actions.
        old_logp: [B] log π_old(a∣s), the policy that collected them.
        advantages: [B] GAE advantages.
        logits: [B, A] π_θ's action logits (categorical head) or None (Gaussian head).
        old_logits: [B, A] π_old's, or None.
        clip: ε.

    Returns:
        (per-transition policy loss [B], metrics).
    """
    lp, old, adv = _tokens(logp, old_logp, advantages)
    loss, metrics = ppo_clip(lp, old, adv, torch.ones_like(lp), clip_low=clip, clip_high=clip)
    return loss[:, 0], {"clip_frac": metrics["clip/frac"][:, 0]}


@register("classic", "mdpo", paper="Tomar et al. 2020, Mirror Descent Policy Optimization, arXiv:2005.09814",
          tag="checked: official code mdpo_on/mdpo.py (objective, exact KL, t_k schedule)")  # fmt: skip
def mdpo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    old_logits: torch.Tensor | None = None,
    progress: float = 0.0,
    iterations: int = 1,
) -> tuple[torch.Tensor, Metrics]:
    """On-policy MDPO (Tomar et al. 2020, arXiv:2005.09814): ℓ = −ρ·A + (1/t_k)·KL(π_θ(·∣s) ‖ π_k(·∣s)), no clip.

    The KL is exact over the actions for a categorical head (`kl_full` on the logits, as the official code) and the
    unbiased sampled estimate ρ·log ρ − ρ + 1 of the `mdpo` policy loss for a Gaussian one. t_k = 1 − (k − 1)/K with
    k = progress·K the 0-based iteration and K = `iterations` (the official schedule: from 1 + 1/K down to 2/K).

    Args:
        logp: [B] log π_θ(a∣s) of the taken actions.
        old_logp: [B] log π_old(a∣s), the policy that collected them.
        advantages: [B] GAE advantages.
        logits: [B, A] π_θ's action logits (categorical head) or None (Gaussian head).
        old_logits: [B, A] π_old's, or None.
        progress: k/K, the share of iterations done (the runner passes it).
        iterations: K.

    Returns:
        (per-transition policy loss [B], metrics).
    """
    k = progress * iterations
    coef = 1.0 / (1.0 - (k - 1.0) / iterations)
    lp, old, adv = _tokens(logp, old_logp, advantages)
    if logits is None:  # Gaussian head: the `mdpo` policy loss with its sampled KL estimate
        loss, metrics = mdpo_surrogate(lp, old, adv, torch.ones_like(lp), kl_coef=coef)
        return loss[:, 0], {"kl": metrics["kl/old"][:, 0]}
    kl = kl_full(lp, old, logits=logits[:, None], ref_logits=old_logits[:, None])[:, 0]
    surrogate, _ = mdpo_surrogate(lp, old, adv, torch.ones_like(lp), kl_coef=0.0)  # −ρ·A
    return surrogate[:, 0] + coef * kl, {"kl": kl.detach()}


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_a p(a)·(log p(a) − log q(a)) of two categorical heads given by logits [B, A] -> [B]; gradients flow
    through both."""
    log_p, log_q = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@register("classic", "ppo_kl_adaptive", paper="Schulman et al. 2017, Proximal Policy Optimization Algorithms, "
          "arXiv:1707.06347, §4 (adaptive KL penalty)", tag="memory", facts={"adaptive_kl"})  # fmt: skip
def ppo_kl_adaptive(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    old_logits: torch.Tensor | None = None,
    beta: float = 1.0,
    target_kl: float = 0.01,
) -> tuple[torch.Tensor, Metrics]:
    """PPO's adaptive KL penalty (Schulman et al. 2017, arXiv:1707.06347, eq. 8): ℓ = −ρ·A + β·KL(π_old‖π_θ), with
    β moved after each iteration by `adapt_kl_beta` (d_targ = `target_kl` = 0.01, β₀ = 1). The KL is exact for a
    categorical head and the sampled k3 estimate ρ − 1 − log ρ (a ∼ π_old: unbiased for KL(π_old‖π_θ)) for a Gaussian
    one.

    Args:
        logp: [B] log π_θ(a∣s) of the taken actions.
        old_logp: [B] log π_old(a∣s), the policy that collected them.
        advantages: [B] GAE advantages.
        logits: [B, A] π_θ's action logits (categorical head) or None (Gaussian head).
        old_logits: [B, A] π_old's, or None.
        beta: β, moved between iterations by `adapt_kl_beta` (the runner does).
        target_kl: d_targ.

    Returns:
        (per-transition policy loss [B], metrics).
    """
    ratio = torch.exp(logp - old_logp.detach())
    kl = _old_to_new_kl(ratio, logits, old_logits)
    return -ratio * advantages.detach() + beta * kl, {"kl": kl.detach()}


def _old_to_new_kl(ratio: torch.Tensor, logits: torch.Tensor | None, old_logits: torch.Tensor | None) -> torch.Tensor:
    """KL(π_old(·∣s)‖π_θ(·∣s)) per transition [B]: exact over the actions of a categorical head, and for a Gaussian
    head the k3 estimate ρ − 1 − log ρ on the action a ∼ π_old that was taken (E_{π_old}[ρ] = 1, so it is unbiased;
    nonnegative; its Hessian at θ_old is ∇log π·∇log πᵀ, whose mean is the Fisher matrix)."""
    if logits is None:
        return ratio - 1.0 - torch.log(ratio)
    return categorical_kl(old_logits.detach(), logits)


def adapt_kl_beta(beta: float, kl: float, target_kl: float) -> float:
    """PPO's rule (arXiv:1707.06347, §4): β/2 if d < d_targ/1.5, 2β if d > 1.5·d_targ, else β (d: the mean KL of the
    last iteration's update)."""
    if kl < target_kl / 1.5:
        return beta / 2
    if kl > 1.5 * target_kl:
        return beta * 2
    return beta


@register("classic", "a2c", paper="Mnih et al. 2016, Asynchronous Methods for Deep Reinforcement Learning (A2C, "
          "the synchronous variant), arXiv:1602.01783", tag="memory")  # fmt: skip
def a2c(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    old_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Advantage actor-critic (Mnih et al. 2016, arXiv:1602.01783): ℓ = −(G_t − V(s_t))·log π(a_t∣s_t) with n-step
    bootstrapped returns (the runner's advantages with λ = 1 over the rollout segment); one gradient step per
    rollout, so ρ = 1 and this is the ρ = 1 gradient of every surrogate above (§13 C2).

    Args:
        logp: [B] log π_θ(a∣s) of the taken actions.
        old_logp: [B] log π_old(a∣s), the policy that collected them.
        advantages: [B] GAE advantages.
        logits: [B, A] π_θ's action logits (categorical head) or None (Gaussian head).
        old_logits: [B, A] π_old's, or None.

    Returns:
        (per-transition policy loss [B], metrics).
    """
    return -advantages.detach() * logp, {}


@register("classic", "reinforce_classic", paper="Williams 1992, Simple Statistical Gradient-Following Algorithms "
          "for Connectionist Reinforcement Learning, https://doi.org/10.1007/BF00992696", tag="memory")  # fmt: skip
def reinforce_classic(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    old_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE with a baseline (Williams 1992, https://doi.org/10.1007/BF00992696): ℓ = −(G_t − V(s_t))·log π.

    G_t is the Monte Carlo return of complete episodes: the runner trains only on the episodes that end within a
    rollout (λ = 1, no bootstrap except at a time-limit truncation).

    Args:
        logp: [B] log π_θ(a∣s) of the taken actions.
        old_logp: [B] log π_old(a∣s), the policy that collected them.
        advantages: [B] GAE advantages.
        logits: [B, A] π_θ's action logits (categorical head) or None (Gaussian head).
        old_logits: [B, A] π_old's, or None.

    Returns:
        (per-transition policy loss [B], metrics).
    """
    return a2c(logp, old_logp, advantages)


@register("classic", "mmd", paper="Sokota et al. 2023, A Unified Approach to Reinforcement Learning, Quantal Response "
          "Equilibria, and Two-Player Zero-Sum Games, arXiv:2206.05825", tag="memory")  # fmt: skip
def mmd(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    old_logits: torch.Tensor | None = None,
    alpha: float = 0.01,
    eta: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """Magnetic Mirror Descent as a deep RL method (Sokota et al. 2023, arXiv:2206.05825): ℓ = −ρ·A +
    α·KL(π_θ‖ρ_mag) + (1/η)·KL(π_θ‖π_old), the magnet ρ_mag the uniform policy (a maximum-entropy magnet); the online
    `mmd` id is the same step on the preference game. Its exact solution per state is
    π ∝ [π_old·ρ_mag^{αη}·exp(η·A)]^{1/(1+αη)}. It is on-policy `mdpo` (fixed 1/η) plus the magnet term, which for
    the uniform magnet is α·(log|A| − H(π_θ)), an entropy bonus. Both KLs are exact over the actions of a categorical
    head; a Gaussian head is refused (the uniform magnet has no Gaussian counterpart here).

    Args:
        logp: [B] log π_θ(a∣s) of the taken actions.
        old_logp: [B] log π_old(a∣s), the policy that collected them.
        advantages: [B] GAE advantages.
        logits: [B, A] π_θ's action logits.
        old_logits: [B, A] π_old's.
        alpha: α, the magnet's weight (0.01 is ours).
        eta: η, the step size; 1/η weighs the KL to π_old (1.0 is ours).

    Returns:
        (per-transition policy loss [B], metrics).
    """
    if logits is None:
        raise ValueError("mmd needs a categorical head (its magnet is the uniform policy over the actions)")
    ratio = torch.exp(logp - old_logp.detach())
    uniform = torch.zeros_like(logits)
    magnet, anchor = categorical_kl(logits, uniform), categorical_kl(logits, old_logits.detach())
    return -ratio * advantages.detach() + alpha * magnet + anchor / eta, {"kl": anchor.detach()}


@register("classic", "trpo", paper="Schulman et al. 2015, Trust Region Policy Optimization, arXiv:1502.05477",
          tag="memory", facts={"trust_region"})  # fmt: skip
def trpo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    old_logits: torch.Tensor | None = None,
    max_kl: float = 0.01,
    cg_iters: int = 15,
    damping: float = 0.1,
    backtrack: int = 10,
    shrink: float = 0.8,
) -> tuple[torch.Tensor, Metrics]:
    """TRPO (Schulman et al. 2015, arXiv:1502.05477, §6 "practical algorithm"): maximise the surrogate E[ρ·A] subject
    to mean KL(π_old‖π_θ) ≤ δ. This returns the surrogate ℓ = −ρ·A and, as metric `kl`, the per-transition
    KL(π_old‖π_θ) (exact for a categorical head, k3 for a Gaussian); the step is not SGD on ℓ but `trust_region_step`
    on the whole batch (the runner's `trust_region` fact): the natural direction x = F⁻¹g by conjugate gradient on
    Fisher-vector products (the KL's Hessian, plus `damping`), scaled to the boundary √(2δ/xᵀFx), then halved by
    `shrink` until the KL is at most δ and the surrogate improved (at most `backtrack` tries, else no step).
    δ = 0.01, 15 CG iterations, damping 0.1, 10 tries at 0.8: stable-baselines3-contrib's TRPO defaults.

    Args:
        logp: [B] log π_θ(a∣s) of the taken actions.
        old_logp: [B] log π_old(a∣s), the policy that collected them.
        advantages: [B] GAE advantages.
        logits: [B, A] π_θ's action logits (categorical head) or None (Gaussian head).
        old_logits: [B, A] π_old's, or None.
        max_kl: δ, the trust region's radius in mean KL.
        cg_iters: conjugate-gradient iterations.
        damping: λ added to the Fisher matrix (F + λI) for a stable solve.
        backtrack: line-search tries.
        shrink: the line search's factor per try.

    Returns:
        (per-transition surrogate loss [B], metrics with the per-transition `kl`).
    """
    ratio = torch.exp(logp - old_logp.detach())
    return -ratio * advantages.detach(), {"kl": _old_to_new_kl(ratio, logits, old_logits)}


@register("classic", "mdpo_off", paper="Tomar et al. 2020, Mirror Descent Policy Optimization (off-policy MDPO), "
          "arXiv:2005.09814", tag="checked: official code mdpo_off/mdpo.py (actor loss, Q and V targets, old-policy "
          "copy)", facts={"off_policy"})  # fmt: skip
def mdpo_off(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    old_logits: torch.Tensor | None = None,
    kl_coef: float = 1.0,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Off-policy MDPO (Tomar et al. 2020, arXiv:2005.09814, §5.2): on states s of a replay buffer and an action
    ã = tanh(μ_θ(s) + σ_θ(s)·ε) reparameterised from π_θ, ℓ = c·(log π_θ(ã∣s) − log π_k(ã∣s)) + λ·log π_k(ã∣s)
    − Q(s, ã): the paper's E_{a∼π_θ}[(1/t_k)·(log π_θ − log π_k) − Q^{π_k}] with c = 1/t_k fixed, as the official
    code (`klconst`, default 1), whose λ (`lamda`) adds an entropy term; λ = c makes the π_k terms cancel, leaving
    SAC's α·log π − Q with α = c. Here the third argument is Q₁(s, ã) of the runner's SAC-style critics (gradients
    flow through ã into log π_k and Q, which the runner does not step), not a GAE advantage; π_k is a copy of π_θ
    refreshed every `old_every` environment steps by the runner (the `off_policy` fact). λ = 0 is the paper's
    unregularised MDPO (the code's command line defaults to λ = 1, i.e. SAC).

    Args:
        logp: [B] log π_θ(ã∣s), with the tanh correction.
        old_logp: [B] log π_k(ã∣s) at the same pre-tanh sample.
        advantages: [B] Q(s, ã) of the first Q critic.
        logits: unused (a Gaussian head).
        old_logits: unused.
        kl_coef: c = 1/t_k.
        entropy_coef: λ.

    Returns:
        (per-state actor loss [B], metrics with the per-state sampled `kl` log π_θ − log π_k and `value_bonus`
        −λ·log π_θ(ã∣s), which the runner adds to V's target min Q(s, ã), as the code does).
    """
    metrics = {"kl": (logp - old_logp).detach(), "value_bonus": -entropy_coef * logp.detach()}
    return kl_coef * (logp - old_logp) + entropy_coef * old_logp - advantages, metrics


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int,
                       tol: float = 1e-10) -> torch.Tensor:  # fmt: skip
    """x ≈ A⁻¹b for a symmetric positive-definite A given as `matvec(v) = A·v`, by at most `iters` conjugate-gradient
    iterations from x = 0 (exact after dim(b) iterations in exact arithmetic)."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for _ in range(iters):
        if rr <= tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr, rr_old = r @ r, rr
        p = r + (rr / rr_old) * p
    return x


def trust_region_step(
    params: list[torch.Tensor],
    evaluate: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    *,
    max_kl: float,
    cg_iters: int,
    damping: float,
    backtrack: int,
    shrink: float,
) -> dict[str, float]:
    """One TRPO step of `params` in place (arXiv:1502.05477, Appendix C). `evaluate()` returns (mean surrogate loss,
    mean KL(π_old‖π_θ)) at the current parameters, the KL's value and gradient being 0 at the start. Returns the
    accepted KL, the surrogate's improvement and the step's fraction of the full step (0: rejected, nothing moved)."""
    loss, kl = evaluate()
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    g = torch.cat([x.reshape(-1) for x in grads])
    kl_grads = torch.autograd.grad(kl, params, create_graph=True)
    flat_kl_grad = torch.cat([x.reshape(-1) for x in kl_grads])

    def fisher(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(flat_kl_grad @ v, params, retain_graph=True)
        return torch.cat([x.reshape(-1) for x in hv]) + damping * v

    direction = conjugate_gradient(fisher, -g, cg_iters)
    curvature = float(direction @ fisher(direction))
    start = [p.detach().clone() for p in params]
    full = direction * (2 * max_kl / max(curvature, 1e-12)) ** 0.5 if curvature > 0 else torch.zeros_like(direction)
    before = float(loss.detach())
    with torch.no_grad():
        for k in range(backtrack):
            _assign(params, start, full * shrink**k)
            new_loss, new_kl = evaluate()
            if float(new_kl) <= max_kl and float(new_loss) < before:
                return {"kl": float(new_kl), "improvement": before - float(new_loss), "step_frac": shrink**k}
        _assign(params, start, torch.zeros_like(full))
    return {"kl": 0.0, "improvement": 0.0, "step_frac": 0.0}


def _assign(params: list[torch.Tensor], start: list[torch.Tensor], step: torch.Tensor) -> None:
    """params ← start + step (a flat vector laid out as the parameters)."""
    offset = 0
    for p, p0 in zip(params, start, strict=True):
        n = p.numel()
        p.copy_(p0 + step[offset : offset + n].view_as(p))
        offset += n
