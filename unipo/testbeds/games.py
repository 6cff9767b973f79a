"""Tabular preference game: exact §8 updates on a 3-response intransitive matrix (ALGORITHMS.md §13 N1–N2).

A policy is a probability vector π over n responses; P[i, j] = P(y_i ≻ y_j) with P + Pᵀ = 1. The game is
symmetric and zero-sum with payoff P − ½, so its value is ½ and

- exploitability(π) = max_y P(y ≻ π) − ½ ≥ 0, zero exactly at a Nash equilibrium;
- duality gap(π) = max_y P(y ≻ π) − min_y P(π ≻ y) = 2·exploitability(π).

The τ-regularised equilibrium π*_τ is the fixed point π ∝ π_ref·exp(P(y ≻ π)/τ). Each ``*_step`` maps (π_t, P)
to π_{t+1} exactly as the §8 entry of the same name says; the losses in ``unipo.algos.nash`` are these updates'
sample-based forms.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import torch

RPS_LIKE = torch.tensor([[0.5, 0.1, 0.7], [0.9, 0.5, 0.4], [0.3, 0.6, 0.5]], dtype=torch.float64)
"""The RPS-like matrix of ALGORITHMS.md §13 (rows beat columns, intransitive). Its NE is (1/7, 2/7, 4/7)."""


def win_rates(pi: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """P(y ≻ π) = Σ_j P[y, j]·π_j for every response y: [n] -> [n]."""
    return pref @ pi


def exploitability(pi: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """max_y P(y ≻ π) − ½: how much a best response beats π (0 iff π is a Nash equilibrium)."""
    return win_rates(pi, pref).max() - 0.5


def duality_gap(pi: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """max_y P(y ≻ π) − min_y P(π ≻ y); equals 2·exploitability for a symmetric game."""
    return win_rates(pi, pref).max() - (pi @ pref).min()


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) for probability vectors (0·log 0 = 0)."""
    return torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.log()), torch.zeros_like(p)).sum()


def nash_equilibrium(pref: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """Exact NE of the symmetric game by support enumeration: on the support S, (P − ½)_SS·x = 0, Σx = 1, x ≥ 0,
    and no response outside S beats x. Returns the first equilibrium found (smallest supports first)."""
    a = pref.to(torch.float64) - 0.5
    n = a.shape[0]
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            s = list(support)
            lhs = torch.cat([a[s][:, s], torch.ones(1, size, dtype=a.dtype)])
            rhs = torch.cat([torch.zeros(size, dtype=a.dtype), torch.ones(1, dtype=a.dtype)])
            x = torch.linalg.lstsq(lhs, rhs.unsqueeze(-1)).solution.squeeze(-1)
            if (lhs @ x - rhs).abs().max() > tol or (x < -tol).any():
                continue
            pi = torch.zeros(n, dtype=a.dtype)
            pi[s] = x.clamp_min(0)
            pi = pi / pi.sum()
            if (a @ pi).max() <= tol:
                return pi
    raise RuntimeError("no equilibrium found; is P + Pᵀ = 1?")


def _normalise_log(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, -1)


def geometric_md_step(pi: torch.Tensor, g: torch.Tensor, ref: torch.Tensor, *, eta: float, tau: float) -> torch.Tensor:
    """prox_π(g) = argmax_p η·[⟨g, p⟩ − τ·KL(p‖π_ref)] − KL(p‖π) ∝ π^{1/(1+ητ)}·π_ref^{ητ/(1+ητ)}·exp(η·g/(1+ητ)).

    The shared closed form of MMD, Nash-MP and the regularised-equilibrium solver (§8 ``mmd`` note)."""
    c = 1 + eta * tau
    return _normalise_log((pi.log() + eta * tau * ref.log() + eta * g) / c)


def regularized_nash(
    pref: torch.Tensor, ref: torch.Tensor, *, tau: float, eta: float = 1.0, iters: int = 20_000, tol: float = 1e-14
) -> torch.Tensor:
    """π*_τ ∝ π_ref·exp(P(y ≻ π*_τ)/τ), by iterating the prox step (MMD) until the iterate stops moving.

    The regularised game is τ-strongly monotone, so the step contracts (rate about 1/(1+ητ) for small η)."""
    pi = ref.clone()
    for _ in range(iters):
        nxt = geometric_md_step(pi, win_rates(pi, pref), ref, eta=eta, tau=tau)
        if (nxt - pi).abs().max() < tol:
            return nxt
        pi = nxt
    return pi


def sppo_step(pi, pref, ref, *, eta, tau=0.0):
    """SPPO / MWU: π_{t+1} ∝ π_t·exp(η·(P(y ≻ π_t) − ½)). ``ref`` and ``tau`` are unused."""
    return _normalise_log(pi.log() + eta * (win_rates(pi, pref) - 0.5))


def dno_step(pi, pref, ref, *, eta, tau=0.0):
    """DNO theory step with β = 1/η: π_{t+1} ∝ π_t·exp(P(y ≻ π_t)/β) (the same MWU as SPPO)."""
    return _normalise_log(pi.log() + eta * win_rates(pi, pref))


def spo_selfplay_step(pi, pref, ref, *, eta, tau=0.0):
    """SPO with exact expectations: the win-rate reward P(y ≻ π_t) and a mirror-descent step, i.e. MWU."""
    return dno_step(pi, pref, ref, eta=eta)


def inpo_step(pi, pref, ref, *, eta, tau):
    """INPO OMD: π_{t+1} ∝ π_t^{1−ητ}·π_ref^{ητ}·exp(η·P(y ≻ π_t))."""
    return _normalise_log((1 - eta * tau) * pi.log() + eta * tau * ref.log() + eta * win_rates(pi, pref))


def nash_md_step(pi, pref, ref, *, eta, tau):
    """Nash-MD: π^μ ∝ π_t^{1−ητ}·π_ref^{ητ}; π_{t+1} ∝ π^μ·exp(η·P(y ≻ π^μ))."""
    mix = _normalise_log((1 - eta * tau) * pi.log() + eta * tau * ref.log())
    return _normalise_log(mix.log() + eta * win_rates(mix, pref))


def mmd_step(pi, pref, ref, *, eta, tau):
    """Magnetic Mirror Descent with magnet π_ref and α = τ: π_{t+1} = prox_{π_t}(P(· ≻ π_t)), one prox step."""
    return geometric_md_step(pi, win_rates(pi, pref), ref, eta=eta, tau=tau)


def nash_mp_recon_step(pi, pref, ref, *, eta, tau):
    """Nash Mirror Prox (reconstructed, §8): half step π_{k+½} = prox_{π_k}(P(· ≻ π_k)), then the full step
    π_{k+1} = prox_{π_k}(P(· ≻ π_{k+½})), with β = τ."""
    half = geometric_md_step(pi, win_rates(pi, pref), ref, eta=eta, tau=tau)
    return geometric_md_step(pi, win_rates(half, pref), ref, eta=eta, tau=tau)


def bt_fit(pref: torch.Tensor, mu: torch.Tensor, *, iters: int = 100) -> torch.Tensor:
    """Bradley-Terry scores s minimising Σ_{i,j} μ_i μ_j·CE(P_ij, σ(s_i − s_j)) (Newton; centred)."""
    s = torch.zeros(pref.shape[0], dtype=pref.dtype)
    w = torch.outer(mu, mu) * pref
    for _ in range(iters):
        sig = torch.sigmoid(s[:, None] - s[None, :])  # σ(s_i − s_j)
        g = w * (1 - sig)
        grad = g.sum(0) - g.sum(1)  # ∂/∂s_k of Σ −w_ij·P_ij·log σ(s_i − s_j)
        c = w * sig * (1 - sig)
        m = c + c.T
        hess = torch.diag(m.sum(1)) - m  # a graph Laplacian: singular along the constant shift
        s = s - torch.linalg.pinv(hess) @ grad
        if grad.abs().max() < 1e-13:
            break
    return s - s.mean()


def online_dpo_step(pi, pref, ref, *, eta, tau=0.0):
    """Online DPO (xpo / selm at α = 0) with exact expectations, β = 1/η: pairs from π_t × π_t with soft labels
    P; the DPO minimiser is β·h = the BT fit s, i.e. π_{t+1} ∝ π_ref·exp(η·s)."""
    return _normalise_log(ref.log() + eta * bt_fit(pref, pi))


TABULAR: dict[str, Callable[..., torch.Tensor]] = {
    "sppo": sppo_step,
    "dno": dno_step,
    "spo_selfplay": spo_selfplay_step,
    "inpo": inpo_step,
    "nash_md": nash_md_step,
    "nash_mp_recon": nash_mp_recon_step,
    "mmd": mmd_step,
    "online_dpo": online_dpo_step,
    "xpo": online_dpo_step,
    "selm": online_dpo_step,
}
"""Exact tabular update for each ``online`` id (xpo / selm: their α = 0 case, online DPO)."""


def trajectory(
    method: str,
    iterations: int,
    *,
    pref: torch.Tensor | None = None,
    ref: torch.Tensor | None = None,
    pi0: torch.Tensor | None = None,
    eta: float = 0.1,
    tau: float = 0.0,
) -> torch.Tensor:
    """Iterates π_0..π_T of `method` on the game: [T + 1, n]. Defaults: the RPS-like matrix, uniform π_ref = π_0."""
    pref = RPS_LIKE if pref is None else pref.to(torch.float64)
    n = pref.shape[0]
    ref = torch.full((n,), 1.0 / n, dtype=torch.float64) if ref is None else ref.to(torch.float64)
    pi = ref.clone() if pi0 is None else pi0.to(torch.float64)
    step = TABULAR[method]
    out = [pi]
    for _ in range(iterations):
        pi = step(pi, pref, ref, eta=eta, tau=tau)
        out.append(pi)
    return torch.stack(out)


def run(method: str, iterations: int, *, average: bool = False, **kwargs) -> list[float]:
    """Exploitability of the last iterate (or, with ``average``, of the running average iterate) after each
    iteration t = 1..T. Keyword arguments go to ``trajectory``."""
    pref = RPS_LIKE if kwargs.get("pref") is None else kwargs["pref"].to(torch.float64)
    pis = trajectory(method, iterations, **kwargs)[1:]
    if average:
        pis = pis.cumsum(0) / torch.arange(1, iterations + 1, dtype=pis.dtype)[:, None]
    return (win_rates(pis.T, pref).max(0).values - 0.5).tolist()


def plot_nash_curves(path: str | Path, *, iterations: int = 200, eta: float = 0.2, tau: float = 0.2) -> Path:
    """Draw exploitability of the Nash-MD and Nash-MP (reconstructed) last iterates, and KL(π*_τ‖π_t) to the
    τ-regularised equilibrium, against the iteration; save to `path`. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = torch.full((3,), 1 / 3, dtype=torch.float64)
    star = regularized_nash(RPS_LIKE, ref, tau=tau)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for method, label in (("nash_md", "Nash-MD"), ("nash_mp_recon", "Nash-MP (recon)")):
        pis = trajectory(method, iterations, eta=eta, tau=tau)
        ax1.plot(run(method, iterations, eta=eta, tau=tau), label=label)
        ax2.semilogy([max(kl(star, p).item(), 1e-16) for p in pis[1:]], label=label)
    ax1.set(xlabel="iteration", ylabel="exploitability", title="last iterate, RPS-like P")
    ax2.set(xlabel="iteration", ylabel="KL(π*_τ‖π_t)", title=f"to the τ={tau} regularised NE")
    ax1.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
