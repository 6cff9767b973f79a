"""BARFI on a tabular MDP with exact returns: a mixing weight φ(s, a) of an auxiliary reward, learned by the implicit
gradient of the primary return through the policy's optimisation (`reward` `barfi`, ALGORITHMS.md §5.1).

Gupta et al. 2023, "Behavior Alignment via Reward Function Optimization" (NeurIPS 2023, arXiv:2310.19007), from
memory: the inner problem trains a softmax policy on r_φ = r_p + φ·r_aux (here with entropy τ·H(π), so its optimum is
unique and finite); the outer problem moves φ along dJ_p(θ*(φ))/dφ = (−H⁻¹·∇_θJ_p)ᵀ·∂_φ∇_θF, where F is the inner
objective and H = ∇²_θF, by the implicit function theorem. −H⁻¹ is approximated by a Neumann series
α·Σ_{j<n}(I + αH)^j (Hessian-vector products only). Returns are exact: V = (I − γP_π)⁻¹ r_π, so every figure is
deterministic. The paper's experiments use deep RL; this testbed is ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unipo import algos


@dataclass(frozen=True)
class MDP:
    """A finite MDP: transitions P[s, a, s'], primary and auxiliary rewards [S, A], start distribution, discount."""

    P: torch.Tensor
    r_p: torch.Tensor
    r_aux: torch.Tensor
    start: torch.Tensor
    gamma: float = 0.9


def chain(n: int = 5, aux: str = "distractor", bonus: float = 0.5, mdp_gamma: float = 0.9) -> MDP:
    """A chain 0 … n−1 with actions left (0) and right (1), then an absorbing end state n. Primary reward 1 for
    taking any action at n−1 (which moves to the end state). `aux="distractor"`: a bonus for `left` at state 0 (where
    the agent stays): summed with weight 1 it pays more than the goal, so the naive sum keeps the agent at the start.
    `aux="helpful"`: potential-based shaping towards the goal, which leaves the optimal policy unchanged."""
    s = n + 1
    P = torch.zeros(s, 2, s, dtype=torch.float64)
    for i in range(n):
        P[i, 0, max(i - 1, 0)] = 1.0
        P[i, 1, min(i + 1, n - 1)] = 1.0
    P[n - 1, :, :] = 0.0
    P[n - 1, :, n] = 1.0  # the goal: any action ends the episode
    P[n, :, n] = 1.0
    r_p = torch.zeros(s, 2, dtype=torch.float64)
    r_p[n - 1] = 1.0
    r_aux = torch.zeros(s, 2, dtype=torch.float64)
    if aux == "distractor":
        r_aux[0, 0] = bonus
    elif aux == "helpful":  # potential-based (Ng et al. 1999): γ·Φ(s') − Φ(s) with Φ(i) = bonus·i, Φ(end) = 0
        potential = torch.cat([bonus * torch.arange(n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
        r_aux = mdp_gamma * torch.einsum("sat,t->sa", P, potential) - potential[:, None]
    else:
        raise ValueError(f"chain: aux must be 'distractor' or 'helpful', got {aux!r}")
    start = torch.zeros(s, dtype=torch.float64)
    start[0] = 1.0
    return MDP(P, r_p, r_aux, start, mdp_gamma)


def objective(mdp: MDP, logits: torch.Tensor, reward: torch.Tensor, tau: float = 0.0) -> torch.Tensor:
    """J(θ) = d₀ᵀ(I − γP_π)⁻¹(Σ_a π(a|s)·(r(s, a) − τ·log π(a|s))): the exact discounted return of the softmax policy
    (with entropy bonus τ), differentiable in θ and in the reward."""
    logp = torch.log_softmax(logits, -1)
    pi = logp.exp()
    r_pi = (pi * (reward - tau * logp)).sum(-1)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    eye = torch.eye(P_pi.shape[0], dtype=P_pi.dtype)
    return mdp.start @ torch.linalg.solve(eye - mdp.gamma * P_pi, r_pi)


def shaped(mdp: MDP, phi: torch.Tensor) -> torch.Tensor:
    """r_φ through the registered component."""
    return algos.get("reward", "barfi")(mdp.r_p, aux_rewards=mdp.r_aux, phi=phi)


def inner(mdp: MDP, phi: torch.Tensor, logits: torch.Tensor, steps: int, lr: float, tau: float) -> torch.Tensor:
    """`steps` of gradient ascent on F(θ) = J_{r_φ}(θ) + τ·H from `logits` (φ held fixed)."""
    theta = logits.detach().clone().requires_grad_(True)
    reward = shaped(mdp, phi.detach())
    for _ in range(steps):
        (grad,) = torch.autograd.grad(objective(mdp, theta, reward, tau), theta)
        theta = (theta + lr * grad).detach().requires_grad_(True)
    return theta.detach()


def _hvp(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(theta), theta, create_graph=True)
    (hv,) = torch.autograd.grad((grad * v).sum(), theta)
    return hv


def meta_gradient(
    mdp: MDP, phi: torch.Tensor, theta: torch.Tensor, tau: float, alpha: float, terms: int
) -> torch.Tensor:
    """dJ_p/dφ at the inner solution θ: w = α·Σ_{j<terms}(I + αH)^j·∇_θJ_p ≈ −H⁻¹·∇_θJ_p (`terms` = 0: the exact
    pseudo-inverse), then ∂_φ(∇_θF(θ, φ)·w)."""
    t = theta.detach().requires_grad_(True)
    (v,) = torch.autograd.grad(objective(mdp, t, mdp.r_p), t)
    reward = shaped(mdp, phi.detach())

    def inner_objective(th: torch.Tensor) -> torch.Tensor:
        return objective(mdp, th, reward, tau)

    if terms:  # the Neumann series of −H⁻¹ (Hessian-vector products only)
        w, term = torch.zeros_like(v), v.clone()
        for _ in range(terms):
            w = w + alpha * term
            term = term + alpha * _hvp(inner_objective, theta, term)
    else:  # exact: −H⁺·v (the softmax's per-state shift is H's null space, which v is orthogonal to)
        H = torch.autograd.functional.hessian(inner_objective, theta.detach()).reshape(v.numel(), v.numel())
        w = -(torch.linalg.pinv(H, hermitian=True) @ v.reshape(-1)).reshape(v.shape)
    p = phi.detach().clone().requires_grad_(True)
    t = theta.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(mdp, t, shaped(mdp, p), tau), t, create_graph=True)
    (g,) = torch.autograd.grad((grad * w.detach()).sum(), p)
    return g


def train(
    mdp: MDP,
    *,
    outer_steps: int = 40,
    inner_steps: int = 10,
    lr: float = 2.0,
    lr_phi: float = 0.1,
    tau: float = 0.1,
    alpha: float = 0.5,
    terms: int = 0,
    learn: bool = True,
) -> dict:
    """BARFI from φ ≡ 1 (the naive sum): each outer step continues the policy's training on r_φ for `inner_steps`,
    then moves φ along dJ_p/dφ with Adam at `lr_phi` (`learn=False`: φ stays 1, the naive sum). Returns the primary
    return after each outer step (`returns`), the final φ and the final policy's primary return."""
    phi = torch.ones_like(mdp.r_aux, requires_grad=True)
    optimizer = torch.optim.Adam([phi], lr=lr_phi)  # ascent on J_p: Adam on −dJ_p/dφ
    theta = torch.zeros_like(mdp.r_p)
    returns = []
    for _ in range(outer_steps):
        theta = inner(mdp, phi.detach(), theta, inner_steps, lr, tau)
        if learn:
            phi.grad = -meta_gradient(mdp, phi, theta, tau, alpha, terms)
            optimizer.step()
        returns.append(float(objective(mdp, theta, mdp.r_p)))
    phi = phi.detach()
    return {"returns": returns, "phi": phi, "primary_return": returns[-1], "theta": theta}
