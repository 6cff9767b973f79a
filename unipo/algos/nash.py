"""Online, iterative and Nash / general-preference losses (ALGORITHMS.md §8), registered under kind ``online``.

Each function is the per-sample loss of one outer iteration, computed from sequence log-probs (a token sum; a 2-D
``[B, T]`` input with an optional ``mask`` is summed over T where the method's estimator is token-wise). Layouts:

- single sample: ``logp``, ``prev_logp`` (π_t, the previous iterate), ``ref_logp`` (π_ref) of shape [B];
- judged pair: shape [B, 2], column 0 is the winner y_w and column 1 the loser y_l;
- keyword tensors the trainer supplies when asked: ``win_rate`` [B] (P̂(y ≻ opponent)), ``explore_logp`` /
  ``explore_ref_logp`` [B] (a response sampled for exploration, see ``xpo`` and ``selm``).

Every function returns the unreduced per-sample loss [B]. ``prev_logp``, ``ref_logp``, ``win_rate`` and the
explore reference log-probs are constants (detached). ``spo_selfplay`` is the exception: it turns a within-group
preference matrix into rewards for any §1 estimator, so it returns [..., K] rewards.

The exact tabular update each loss implies (used by the preference-game testbed) is in ``unipo.testbeds.games``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unipo.algos.registry import register, warn_reconstruction

_SPPO = "Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment, arXiv:2405.00675"
_INPO = "Zhang et al. 2024, Iterative Nash Policy Optimization, arXiv:2407.00617"
_DNO = "Rosset et al. 2024, Direct Nash Optimization, arXiv:2404.03715"
_NASH_MD = "Munos et al. 2023, Nash Learning from Human Feedback, arXiv:2312.00886"
_NASH_MP = "Tiapkin et al. 2025, Accelerating Nash Learning from Human Feedback via Mirror Prox, arXiv:2505.19731v1"
_SPO = "Swamy et al. 2024, A Minimaximalist Approach to RLHF, arXiv:2401.04056"
_XPO = "Xie et al. 2024, Exploratory Preference Optimization, arXiv:2405.21046"
_SELM = "Zhang et al. 2024, Self-Exploring Language Models, arXiv:2405.19332"
_REBEL = "Gao et al. 2024, REBEL: Reinforcement Learning via Regressing Relative Rewards, arXiv:2404.16767"
_MMD = (
    "Sokota et al. 2023, A Unified Approach to Reinforcement Learning, Quantal Response Equilibria, and Two-Player "
    "Zero-Sum Games, arXiv:2206.05825"
)
_RLHF_WORKFLOW = "Dong et al. 2024, RLHF Workflow: From Reward Modeling to Online RLHF, arXiv:2405.07863"
_SPIN = (
    "Chen et al. 2024, Self-Play Fine-Tuning Converts Weak Language Models to Strong Language Models, arXiv:2401.01335"
)
_ASTAR = "Brantley et al. 2025, Accelerating RL for LLM Reasoning with Optimal Advantage Regression, arXiv:2505.20686"


def _seq(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Sequence log-prob: [B] stays, [B, T] is summed over the masked tokens."""
    if x.dim() == 1:
        return x
    return (x * mask.to(x.dtype)).sum(-1) if mask is not None else x.sum(-1)


def _pair(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2 or x.shape[-1] != 2:
        raise ValueError(f"{name} must be [B, 2] (winner, loser); got {tuple(x.shape)}")
    return x


def _margin(logp: torch.Tensor, base_logp: torch.Tensor) -> torch.Tensor:
    """Δ = (logp_w − base_w) − (logp_l − base_l) for [B, 2] pairs -> [B]."""
    h = _pair(logp, "logp") - _pair(base_logp, "reference log-probs").detach()
    return h[:, 0] - h[:, 1]


@register("online", "sppo", paper=_SPPO, tag="memory", facts={"zero_at_tie"})
def sppo(logp: torch.Tensor, prev_logp: torch.Tensor, *, win_rate: torch.Tensor, eta: float) -> torch.Tensor:
    """SPPO square loss (Wu et al. 2024, arXiv:2405.00675, Alg. 1).

    ℓ = (log(π_θ(y)/π_t(y)) − η·(P̂(y ≻ π_t) − ½))², with y ∼ π_t. Tabular minimiser (MWU):
    π_{t+1} ∝ π_t·exp(η·(P(y ≻ π_t) − ½)).

    Args:
        logp: [B] log π_θ(y∣x).
        prev_logp: [B] log π_t(y∣x) of the previous iterate.
        win_rate: [B] P̂(y ≻ π_t) from the group's judged matrix: the mean over the other samples of π_t, or over all
            K including y itself (P(y ≻ y) = ½), the official code's estimate (trainer option `online.win_rate`).
        eta: η, the step size (paper value unknown, ALGORITHMS.md §8; required).

    Returns:
        [B] per-sample loss.
    """
    target = eta * (win_rate.detach() - 0.5)
    return (logp - prev_logp.detach() - target) ** 2


@register("online", "inpo", paper=_INPO, tag="memory; loss partly reconstructed")
def inpo(
    logp: torch.Tensor, prev_logp: torch.Tensor, ref_logp: torch.Tensor, *, eta: float, tau: float
) -> torch.Tensor:
    """INPO pairwise square loss (Zhang et al. 2024, arXiv:2407.00617; equation number and η scaling unchecked).

    h = log(π_θ(y_w)/π_θ(y_l)) − (1−ητ)·log(π_t(y_w)/π_t(y_l)) − ητ·log(π_ref(y_w)/π_ref(y_l)); ℓ = (h − η/2)².
    Tabular OMD minimiser: π_{t+1} ∝ π_t^{1−ητ}·π_ref^{ητ}·exp(η·P(y ≻ π_t)).

    Args:
        logp: [B, 2] log π_θ of (y_w, y_l), both sampled from π_t.
        prev_logp: [B, 2] log π_t of the pair.
        ref_logp: [B, 2] log π_ref of the pair.
        eta: η, the OMD step size (required; whether the official code scales by η or 1/η is unchecked, §8).
        tau: τ, the KL-to-reference regularisation of the game.

    Returns:
        [B] per-pair loss.
    """
    lp, prev, ref = _pair(logp, "logp"), _pair(prev_logp, "prev_logp").detach(), _pair(ref_logp, "ref_logp").detach()
    h = (lp[:, 0] - lp[:, 1]) - (1 - eta * tau) * (prev[:, 0] - prev[:, 1]) - eta * tau * (ref[:, 0] - ref[:, 1])
    return (h - eta / 2) ** 2


@register("online", "dno", paper=_DNO, tag="memory")
def dno(logp: torch.Tensor, prev_logp: torch.Tensor, *, beta: float) -> torch.Tensor:
    """DNO-Prct contrastive loss against the previous iterate (Rosset et al. 2024, arXiv:2404.03715, Alg. 2).

    ℓ = −log σ(β·[log(π_θ/π_t)(y_w) − log(π_θ/π_t)(y_l)]), pairs from π_t kept when their win-rate margin is large
    (the filter is the trainer's job). The theory version's tabular step is π_{t+1} ∝ π_t·exp(P(y ≻ π_t)/β).

    Args:
        logp: [B, 2] log π_θ of (y_w, y_l).
        prev_logp: [B, 2] log π_t of the pair (the reference of iteration t).
        beta: β, the KL coefficient to π_t (required; paper value not recorded in §8).

    Returns:
        [B] per-pair loss.
    """
    return -F.logsigmoid(beta * _margin(logp, prev_logp))


@register("online", "spin", paper=_SPIN, tag="memory", facts={"ground_truth_winner"})
def spin(logp: torch.Tensor, prev_logp: torch.Tensor, *, beta: float = 0.1) -> torch.Tensor:
    """SPIN self-play loss (Chen et al. 2024, arXiv:2401.01335, §4, with the logistic loss).

    ℓ = −log σ(λ·[log(π_θ/π_t)(y_gt) − log(π_θ/π_t)(y′)]): the winner is always the prompt's reference response y_gt
    (the SFT data), the loser a response y′ ∼ π_t of the previous iterate, which is also the reference; no judge. It is
    DNO's loss with the judged winner replaced by the data (the trainer builds the pairs; `dno` computes the term).

    Args:
        logp: [B, 2] log π_θ of (y_gt, y′).
        prev_logp: [B, 2] log π_t of the pair.
        beta: λ, the regularisation of the self-play objective (0.1 is ours; the verl recipe exposes it as β).

    Returns:
        [B] per-pair loss.
    """
    return dno(logp, prev_logp, beta=beta)


@register("online", "a_star_po", paper=_ASTAR, tag="checked: TRL experimental a2po", facts={"reference_value"})
def a_star_po(
    logp: torch.Tensor, ref_logp: torch.Tensor, *, rewards: torch.Tensor, value: torch.Tensor, beta: float = 1e-3
) -> torch.Tensor:
    """A*-PO's stage 2, optimal advantage regression (Brantley et al. 2025, arXiv:2505.20686; TRL ``A2POTrainer``).

    ℓ = (β₂·log(π_θ(y)/π_ref(y)) − (r(x, y) − V*(x)))², one y ∼ π_θ per prompt, where stage 1 estimated
    V*(x) = β₁·log((1/N)·Σ_i exp(r(x, y_i)/β₁)) from N samples of π_ref (`optimal_value`; the trainer runs it once
    per prompt). With exact V* and β₁ = β₂ = β the minimiser π_ref·exp((r − V*)/β) is normalised, i.e. it is the
    KL-regularised optimum π ∝ π_ref·exp(r/β) (ALGORITHMS.md §13 N2).

    Args:
        logp: [B] log π_θ(y∣x).
        ref_logp: [B] log π_ref(y∣x).
        rewards: [B] r(x, y).
        value: [B] V*(x) of each response's prompt.
        beta: β₂ (TRL default 1e-3).

    Returns:
        [B] per-sample loss.
    """
    return (beta * (logp - ref_logp.detach()) - (rewards - value)) ** 2


def optimal_value(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """A*-PO stage 1: V*(x) = β₁·log((1/N)·Σ_i exp(r(x, y_i)/β₁)) over N samples y_i ∼ π_ref, stably as
    β₁·(logsumexp(r/β₁) − log N) (TRL ``A2POTrainer``): [P, N] rewards -> [P]. It is the soft maximum of the rewards,
    between their mean (β₁ → ∞) and their maximum (β₁ → 0)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    return beta * (torch.logsumexp(rewards / beta, dim=-1) - math.log(rewards.shape[-1]))


@register("online", "rebel", paper=_REBEL, tag="memory (the form matches the REFUEL code)")
def rebel(logp: torch.Tensor, prev_logp: torch.Tensor, *, rewards: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """REBEL: regress the policy's relative log-ratio onto the relative reward (Gao et al. 2024, arXiv:2404.16767).

    ℓ = ((log(π_θ/π_t)(y) − log(π_θ/π_t)(y′)) − η·(r(y) − r(y′)))² for two responses y, y′ ∼ π_t of a prompt. Its
    tabular minimiser is the mirror-descent step π_{t+1} ∝ π_t·exp(η·r) (a policy-gradient step with no critic and no
    clipping); the rewards are the run's reward functions, not the preference oracle.

    Args:
        logp: [B, 2] log π_θ of (y, y′).
        prev_logp: [B, 2] log π_t of the pair (the iteration's starting policy).
        rewards: [B, 2] r(y), r(y′).
        eta: η > 0, the step size (1.0 is unipo's default).

    Returns:
        [B] per-pair loss.
    """
    if not eta > 0:
        raise ValueError(f"eta must be > 0; got {eta}")
    r = _pair(rewards, "rewards")
    return (_margin(logp, prev_logp) - eta * (r[:, 0] - r[:, 1])) ** 2


@register("online", "nash_md", paper=_NASH_MD, tag="checked: TRL experimental nash_md", facts={"mixture_opponent"})
def nash_md(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    win_rate: torch.Tensor,
    mask: torch.Tensor | None = None,
    beta: float = 0.1,
) -> torch.Tensor:
    """Nash-MD policy-gradient loss as in TRL (Munos et al. 2023, arXiv:2312.00886, §7; TRL ``NashMDTrainer``).

    ℓ = β·Σ_t sg(log π_θ − log π_ref)_t·log π_θ(y_t) − (p − ½)·Σ_t log π_θ(y_t), with y ∼ π_θ and p = P(y ≻ y′)
    against an opponent y′ from the mixture softmax(α·z_ref + (1−α)·z_θ) (sampling is the trainer's job).
    Tabular: π^μ ∝ π_t^{1−ητ}·π_ref^{ητ}, π_{t+1} ∝ π^μ·exp(η·P(y ≻ π^μ)).

    Args:
        logp: [B] or [B, T] log π_θ of the sampled response (tokens).
        ref_logp: same shape, log π_ref.
        win_rate: [B] p = P(y ≻ y′) from the judge.
        mask: optional [B, T] loss mask when the inputs are per token.
        beta: β, the KL coefficient (TRL default 0.1).

    Returns:
        [B] per-sample loss.
    """
    kl_term = _seq((logp - ref_logp).detach() * logp, mask)
    return beta * kl_term - (win_rate.detach() - 0.5) * _seq(logp, mask)


@register("online", "nash_mp_recon", paper=f"{_NASH_MP} (seeds_003_004.md 003-02)", tag="reconstructed")
def nash_mp_recon(
    logp: torch.Tensor,
    prev_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    win_rate: torch.Tensor,
    mask: torch.Tensor | None = None,
    beta: float,
    eta: float,
) -> torch.Tensor:
    """Reconstruction of Nash Mirror Prox (Tiapkin et al. 2025, arXiv:2505.19731v1); the LLM loss is not the
    published one (not checked: no official code found, the paper body was not reachable).

    One prox step as a policy-gradient loss on y ∼ π_θ: maximise η·[E p − β·KL(π_θ‖π_ref)] − KL(π_θ‖π_k), i.e.
    ℓ = −(p − ½)·log π_θ(y) + β·sg(log π_θ − log π_ref)·log π_θ(y) + (1/η)·sg(log π_θ − log π_k)·log π_θ(y).
    Run it twice per iteration: the half step with the opponent y′ ∼ π_k, then the full step from the same anchor
    π_k with y′ ∼ π_{k+½}. Tabular closed form: π ∝ π_k^{1/(1+ηβ)}·π_ref^{ηβ/(1+ηβ)}·exp(η·g/(1+ηβ)). This
    tabular update matches the paper's two prox steps as a review of v1 reproduces them, with our η = the paper's
    η / β (the paper divides the preference term by β); v2 of the same arXiv id is a different algorithm.

    Args:
        logp: [B] or [B, T] log π_θ of the sampled response (tokens).
        prev_logp: same shape, log π_k of the anchor (the iterate both prox steps start from).
        ref_logp: same shape, log π_ref.
        win_rate: [B] p = P(y ≻ y′) against the step's opponent.
        mask: optional [B, T] loss mask when the inputs are per token.
        beta: β, the KL-to-reference coefficient of the regularised game (required).
        eta: η, the prox step size (required).

    Returns:
        [B] per-sample loss.
    """
    warn_reconstruction("nash_mp_recon", _NASH_MP)
    return _prox_step(logp, prev_logp, ref_logp, win_rate, mask, beta, eta)


def _prox_step(
    logp: torch.Tensor,
    prev_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    win_rate: torch.Tensor,
    mask: torch.Tensor | None,
    coef: float,
    eta: float,
) -> torch.Tensor:
    """Policy-gradient loss of one prox step on y ∼ π_θ, maximising η·[E p − c·KL(π_θ‖π_ref)] − KL(π_θ‖π_t): both KL
    terms in the score-function form E[(log π − log q)·∇log π] = ∇KL(π‖q)."""
    pull = coef * (logp - ref_logp).detach() + (logp - prev_logp).detach() / eta
    return _seq(pull * logp, mask) - (win_rate.detach() - 0.5) * _seq(logp, mask)


@register("online", "mmd", paper=_MMD, tag="memory")
def mmd(
    logp: torch.Tensor,
    prev_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    win_rate: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: float = 0.1,
    eta: float = 1.0,
) -> torch.Tensor:
    """Magnetic Mirror Descent on the preference game (Sokota et al. 2023, arXiv:2206.05825), one step per
    iteration with the magnet ρ = π_ref and the action values q = P(y ≻ π_t) of the group.

    Tabular step: π_{t+1} ∝ [π_t·ρ^{αη}·exp(η·q_t)]^{1/(1+αη)} = argmax_π η·[⟨q_t, π⟩ − α·KL(π‖ρ)] − KL(π‖π_t)
    (`unipo.testbeds.games.mmd_step`); its fixed point is the α-regularised equilibrium π ∝ ρ·exp(P(y ≻ π)/α).
    As a loss on y ∼ π_θ, with ℓ' = log π_θ(y):
    ℓ = −(p − ½)·ℓ' + α·sg(log π_θ − log ρ)·ℓ' + (1/η)·sg(log π_θ − log π_t)·ℓ', whose expected gradient is minus
    that objective's. Nash-MP's prox step has the same form (`nash_mp_recon`), run twice per iteration; MMD runs it
    once, against the iterate's own samples.

    Args:
        logp: [B] or [B, T] log π_θ of the sampled response (tokens).
        prev_logp: same shape, log π_t of the iterate that sampled it.
        ref_logp: same shape, log ρ of the magnet (the reference policy).
        win_rate: [B] p = P̂(y ≻ π_t), the response's win rate against its group.
        mask: optional [B, T] loss mask when the inputs are per token.
        alpha: α, the magnet's regularisation (the temperature of the equilibrium it reaches; 0.1 is ours).
        eta: η, the step size (1.0 is ours).

    Returns:
        [B] per-sample loss.
    """
    return _prox_step(logp, prev_logp, ref_logp, win_rate, mask, alpha, eta)


@register("online", "spo_selfplay", paper=_SPO, tag="checked: abstract; details memory", facts={"rewards_for_rl"})
def spo_selfplay(preference: torch.Tensor) -> torch.Tensor:
    """SPO self-play win-rate reward (Swamy et al. 2024, arXiv:2401.04056, Alg. 1).

    r(y_i) = (1/(K−1))·Σ_{j≠i} P(y_i ≻ y_j) within the group; feed it to any §1 estimator and §2 loss. With
    P(a ≻ b) + P(b ≻ a) = 1 the K rewards of a group sum to K/2.

    Args:
        preference: [..., K, K] judge probabilities P(y_i ≻ y_j) within each group (K ≥ 2; the diagonal is ignored).

    Returns:
        [..., K] rewards.
    """
    k = preference.shape[-1]
    if preference.shape[-2] != k or k < 2:
        raise ValueError(f"preference must be [..., K, K] with K >= 2; got {tuple(preference.shape)}")
    off_diag = 1.0 - torch.eye(k, dtype=preference.dtype, device=preference.device)
    return (preference * off_diag).sum(-1) / (k - 1)


@register("online", "iterative_dpo", paper=_RLHF_WORKFLOW, tag="memory", facts={"samples_from_anchor"})
def iterative_dpo(logp: torch.Tensor, ref_logp: torch.Tensor, *, beta: float = 0.1) -> torch.Tensor:
    """Iterative DPO of the RLHF Workflow (Dong et al. 2024, arXiv:2405.07863): DPO against the fixed SFT model on
    each iteration's best-versus-worst pairs.

    Iteration t samples n responses per prompt from π_t (the policy at the iteration's start, for every step of the
    iteration: `online.anchor_every` steps), a reward model picks y_w = argmax and y_l = argmin, and the policy,
    initialised from π_t, minimises ℓ = −log σ(β·[log(π_θ/π_ref)(y_w) − log(π_θ/π_ref)(y_l)]) with π_ref the SFT
    model. With one step per iteration and n = 2 it is online DPO (`xpo` at α = 0).

    Args:
        logp: [B, 2] log π_θ of (y_w, y_l).
        ref_logp: [B, 2] log π_ref of the pair.
        beta: β (0.1, the DPO default; the paper's value is not recorded here).

    Returns:
        [B] per-pair loss.
    """
    return -F.logsigmoid(beta * _margin(logp, ref_logp))


@register("online", "xpo", paper=_XPO, tag="checked: TRL", facts={"explore_from_ref"})
def xpo(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    explore_logp: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 1e-5,
    loss_type: str = "sigmoid",
) -> torch.Tensor:
    """XPO loss (Xie et al. 2024, arXiv:2405.21046, Alg. 1; TRL ``XPOTrainer``).

    ℓ = −log σ(β·Δ) + α·log π_θ(ỹ), Δ = h_θ(y⁺) − h_θ(y⁻), with the judged pair from y ∼ π_θ, ỹ ∼ π_ref;
    ``loss_type="ipo"`` uses (Δ − 1/(2β))². α = 0 is online DPO / IPO.

    Args:
        logp: [B, 2] log π_θ of (y⁺, y⁻).
        ref_logp: [B, 2] log π_ref of the pair.
        explore_logp: [B] log π_θ(ỹ∣x) of the reference sample ỹ ∼ π_ref.
        beta: β (TRL default 0.1).
        alpha: α, the exploration coefficient (TRL default 1e-5).
        loss_type: "sigmoid" or "ipo".

    Returns:
        [B] per-pair loss.
    """
    delta = _margin(logp, ref_logp)
    if loss_type == "sigmoid":
        pref = -F.logsigmoid(beta * delta)
    elif loss_type == "ipo":
        pref = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo'; got {loss_type!r}")
    return pref + alpha * explore_logp


@register("online", "selm", paper=_SELM, tag="checked: official code optimistic_dpo_loss")
def selm(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    explore_logp: torch.Tensor,
    explore_ref_logp: torch.Tensor,
    beta: float = 0.01,
    alpha: float = 0.001,
) -> torch.Tensor:
    """SELM optimistic DPO loss (Zhang et al. 2024, arXiv:2405.19332, eq. 9; official ``optimistic_dpo_loss``).

    ℓ = −log σ(β·[(log π_θ(y_w) − log π_θ(y_l)) − (log π_ref(y_w) − log π_ref(y_l))])
        + α·β·(log π_θ(y) − log π_ref(y)), with y a fresh response of the iteration's starting model.

    Args:
        logp: [B, 2] log π_θ of (y_w, y_l).
        ref_logp: [B, 2] log π_ref of the pair.
        explore_logp: [B] log π_θ(y∣x) of the fresh response.
        explore_ref_logp: [B] log π_ref(y∣x) of the fresh response.
        beta: β (Zephyr config 0.01).
        alpha: α, the optimism coefficient (Zephyr config 0.001).

    Returns:
        [B] per-pair loss.
    """
    return -F.logsigmoid(beta * _margin(logp, ref_logp)) + alpha * beta * (explore_logp - explore_ref_logp.detach())
