"""Tabular preference bandit: offline preference losses minimised exactly against their closed-form optima.

One prompt, n responses, a policy given by free logits θ (log π = log_softmax θ) and a frozen reference π_ref.
Instead of sampling a dataset we minimise the **population** loss: every ordered pair (i, j), i ≠ j, is drawn with
probability ∝ μ_i·μ_j and labelled "i chosen" with probability Q[i, j], so the objective is

    E[L] = Σ_{i≠j} μ_i μ_j · Q[i, j] · L(chosen=i, rejected=j) / (½·Σ_{i≠j} μ_i μ_j),

with L any ``preference`` loss of ``unipo.algos`` evaluated on the (single-token) sequence log-probs. Under label
noise ε each label is flipped with probability ε, so Q = (1−ε)·P + ε·Pᵀ. The closed forms checked
(ALGORITHMS.md §13 P1–P3):

- ``dpo`` on Bradley-Terry P = σ(r_i − r_j): π* ∝ π_ref·exp(r/β) (Rafailov et al. 2023, arXiv:2305.18290, §4);
- ``ipo``: π* ∝ π_ref·exp(P(y ≻ μ)/β) (Azar et al. 2023, arXiv:2310.12036, Prop. 4);
- ``rdpo`` with flip_rate = ε on ε-flipped labels: the clean DPO optimum, because its expected loss over flips is the
  clean DPO loss (Chowdhury et al. 2024, arXiv:2403.00409, Lemma 3.1);
- ``dpo`` and ``cdpo`` (label_smoothing s) on ε-flipped labels, ours: each pair's expected loss is the logistic loss
  against the soft label q' = ½ + (1−2s)(1−2ε)(P − ½), minimised at the margin β·(h_i − h_j) = logit q'. That is a
  reward difference only when it is additive over pairs, always true for n = 2 (``two_response_optimum``).
"""

from __future__ import annotations

import math

import torch

from unipo import algos

DTYPE = torch.float64
DEMO_REWARD = torch.tensor([1.0, 0.0, 0.5, -0.5], dtype=DTYPE)
"""Bradley-Terry rewards of the 4-response bandit used by ``unipo verify preference``."""
DEMO_REF = torch.softmax(torch.tensor([0.3, -0.2, 0.5, -0.6], dtype=DTYPE), -1)
"""Its (non-uniform) reference policy."""


def bt_preferences(reward: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry preference matrix (Bradley & Terry 1952): P[i, j] = P(y_i ≻ y_j) = σ(r_i − r_j), [n] -> [n, n]."""
    return torch.sigmoid(reward[:, None] - reward[None, :])


def noisy_preferences(pref: torch.Tensor, label_noise: float) -> torch.Tensor:
    """Observed label probabilities when each label is flipped with probability ε: Q = (1−ε)·P + ε·Pᵀ, [n, n]."""
    if not 0.0 <= label_noise <= 0.5:
        raise ValueError(f"label_noise must lie in [0, 0.5]; got {label_noise}")
    return (1.0 - label_noise) * pref + label_noise * pref.T


def _pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    off = i != j
    return i[off], j[off]


def expected_loss(
    loss_name: str,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    label_prob: torch.Tensor,
    mu: torch.Tensor,
    *,
    beta: float,
    **loss_kwargs: object,
) -> torch.Tensor:
    """Population preference loss E_{(i,j)∼μ×μ, label∼Q}[L] over ordered pairs i ≠ j (module docstring).

    Args:
        loss_name: a ``preference`` registry id (``dpo``, ``ipo``, ``cdpo``, ``rdpo``, ...).
        logp: [n] log π_θ(y).
        ref_logp: [n] log π_ref(y).
        label_prob: [n, n] Q[i, j] = probability that the pair (i, j) is labelled "i chosen".
        mu: [n] pair-sampling distribution; pair (i, j) has weight μ_i·μ_j.
        beta: β of the loss.
        **loss_kwargs: the loss's other hyperparameters (e.g. ``flip_rate``, ``label_smoothing``, ``length_norm``).

    Returns:
        scalar expected loss.
    """
    i, j = _pairs(logp.shape[0])
    weight = mu[i] * mu[j]
    loss = algos.get("preference", loss_name)(logp[i], logp[j], ref_logp[i], ref_logp[j], beta=beta, **loss_kwargs)
    # each unordered pair appears twice, once per label outcome (Q[i, j] + Q[j, i] = 1), hence the ½
    return (weight * label_prob[i, j] * loss).sum() / (0.5 * weight.sum())


def fit_tabular(
    loss_name: str,
    pref: torch.Tensor,
    ref: torch.Tensor,
    *,
    beta: float,
    label_noise: float = 0.0,
    mu: torch.Tensor | None = None,
    steps: int = 500,
    **loss_kwargs: object,
) -> torch.Tensor:
    """Minimise ``expected_loss`` over tabular logits θ with L-BFGS in float64 (deterministic; exact to ~1e-8).

    Args:
        loss_name: a ``preference`` registry id.
        pref: [n, n] clean preference matrix P (P + Pᵀ = 1).
        ref: [n] reference probabilities π_ref (the policy starts there).
        beta: β of the loss.
        label_noise: ε, the probability that each observed label is flipped (data noise, not a loss knob).
        mu: [n] pair-sampling distribution; None means uniform over pairs.
        steps: L-BFGS iterations.
        **loss_kwargs: the loss's hyperparameters, e.g. ``flip_rate`` for ``rdpo``.

    Returns:
        [n] fitted log π_θ.
    """
    ref_logp = ref.to(DTYPE).log()
    mu = torch.ones_like(ref_logp) if mu is None else mu.to(DTYPE)
    label_prob = noisy_preferences(pref.to(DTYPE), label_noise)
    theta = ref_logp.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=steps, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = expected_loss(
            loss_name, torch.log_softmax(theta, -1), ref_logp, label_prob, mu, beta=beta, **loss_kwargs
        )
        loss.backward()
        return loss

    opt.step(closure)
    return torch.log_softmax(theta.detach(), -1)


def dpo_optimum(ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """KL-regularised optimum that DPO recovers (Rafailov et al. 2023, arXiv:2305.18290, eq. 4).

    log π* = log_softmax(log π_ref + r/β).

    Args:
        ref: [n] π_ref.
        reward: [n] r (Bradley-Terry scores; any additive constant).
        beta: β.

    Returns:
        [n] log π*.
    """
    return torch.log_softmax(ref.to(DTYPE).log() + reward.to(DTYPE) / beta, -1)


def ipo_optimum(ref: torch.Tensor, pref: torch.Tensor, beta: float, mu: torch.Tensor | None = None) -> torch.Tensor:
    """IPO's tabular minimiser (Azar et al. 2023, arXiv:2310.12036, Prop. 4; ALGORITHMS.md §13 P2).

    h_i − h_j = (P(i ≻ μ) − P(j ≻ μ))/β, i.e. log π* = log_softmax(log π_ref + P·μ/β) with μ normalised. Summed
    (not length-normalised) log-ratios, i.e. ``ipo`` with length_norm=False.

    Args:
        ref: [n] π_ref.
        pref: [n, n] the label probabilities the loss sees.
        beta: β (τ in the paper).
        mu: [n] pair-sampling distribution; None means uniform.

    Returns:
        [n] log π*.
    """
    mu = torch.ones_like(ref, dtype=DTYPE) if mu is None else mu.to(DTYPE)
    return torch.log_softmax(ref.to(DTYPE).log() + pref.to(DTYPE) @ (mu / mu.sum()) / beta, -1)


def logistic_margin(p: torch.Tensor, *, label_noise: float = 0.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Minimiser z* = β·(h_i − h_j) of one pair's expected ``cdpo`` loss (``dpo`` for s = 0) under ε-flips (ours).

    A pair labelled i ≻ j w.p. q = ½ + (1−2ε)(p − ½), scored by −(1−s)·log σ(z) − s·log σ(−z) (and the mirror
    image when labelled j ≻ i), has expected loss −q'·log σ(z) − (1−q')·log σ(−z) with
    q' = (1−s)q + s(1−q) = ½ + (1−2s)(1−2ε)(p − ½); hence z* = logit q'. Mitchell's (2023) cDPO note is the
    ε = 0 case: with hard labels (p = 1) z* = log((1−s)/s) is finite where DPO's is +∞.

    Args:
        p: clean preference probability P(i ≻ j) (any shape).
        label_noise: ε, the data's flip rate.
        label_smoothing: s, cdpo's smoothing (0 for dpo).

    Returns:
        z* with p's shape.
    """
    q = 0.5 + (1.0 - 2.0 * label_smoothing) * (1.0 - 2.0 * label_noise) * (p - 0.5)
    return torch.logit(q)


def two_response_optimum(ref: torch.Tensor, margin: torch.Tensor, beta: float) -> torch.Tensor:
    """Two-response policy with β·(h_0 − h_1) = margin: log π* = log_softmax(log π_ref + (margin/β, 0)).

    Args:
        ref: [2] π_ref.
        margin: scalar target margin z* = β·Δ (e.g. from ``logistic_margin``).
        beta: β.

    Returns:
        [2] log π*.
    """
    shift = torch.stack([margin.to(DTYPE) / beta, torch.zeros((), dtype=DTYPE)])
    return torch.log_softmax(ref.to(DTYPE).log() + shift, -1)


def max_logp_error(logp: torch.Tensor, target: torch.Tensor) -> float:
    """max_y |log π(y) − log π*(y)|: the distance reported by ``verify_*``."""
    return float((logp - target).abs().max())


def verify_closed_forms(reward: torch.Tensor, ref: torch.Tensor, *, beta: float) -> list[dict]:
    """Fit ``dpo`` and ``ipo`` on clean Bradley-Terry labels (uniform pairs); distance to their closed forms.

    Returns:
        rows {"method", "target", "error"} with error = ``max_logp_error``.
    """
    pref = bt_preferences(reward.to(DTYPE))
    dpo_fit = fit_tabular("dpo", pref, ref, beta=beta)
    ipo_fit = fit_tabular("ipo", pref, ref, beta=beta, length_norm=False)
    dpo_error = max_logp_error(dpo_fit, dpo_optimum(ref, reward, beta))
    ipo_error = max_logp_error(ipo_fit, ipo_optimum(ref, pref, beta))
    return [
        {"method": "dpo", "target": "pi_ref*exp(r/beta)", "error": dpo_error},
        {"method": "ipo", "target": "pi_ref*exp(P(y>mu)/beta)", "error": ipo_error},
    ]


def _noisy_fit(method: str, pref: torch.Tensor, ref: torch.Tensor, eps: float, beta: float) -> torch.Tensor:
    # the loss's own noise knob is set to the true ε: cdpo smooths by ε, rdpo corrects for flip rate ε
    kwargs = {"dpo": {}, "cdpo": {"label_smoothing": eps}, "rdpo": {"flip_rate": eps}}[method]
    return fit_tabular(method, pref, ref, beta=beta, label_noise=eps, **kwargs)


def _noisy_target(method: str, reward: torch.Tensor, ref: torch.Tensor, eps: float, beta: float) -> torch.Tensor:
    if method == "rdpo":
        return dpo_optimum(ref, reward, beta)
    p = torch.sigmoid(reward[0] - reward[1])
    return two_response_optimum(
        ref, logistic_margin(p, label_noise=eps, label_smoothing=eps * (method == "cdpo")), beta
    )


def verify_label_noise(
    reward: torch.Tensor,
    ref: torch.Tensor,
    *,
    beta: float,
    noise_levels: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3),
) -> list[dict]:
    """Fit ``dpo``, ``cdpo`` (label_smoothing = ε) and ``rdpo`` (flip_rate = ε) on ε-flipped BT labels.

    For every ε and method: "clean" = ``max_logp_error`` to the clean DPO optimum π_ref·exp(r/β); "theory" = to the
    minimiser theory predicts (rdpo: the clean optimum; dpo, cdpo: ``logistic_margin``, exact only for n = 2,
    NaN otherwise).

    Args:
        reward: [n] Bradley-Terry rewards.
        ref: [n] π_ref.
        beta: β.
        noise_levels: the flip rates ε to test, each in [0, ½).

    Returns:
        rows {"noise", "method", "clean", "theory"}.
    """
    reward = reward.to(DTYPE)
    pref, clean = bt_preferences(reward), dpo_optimum(ref, reward, beta)
    rows = []
    for eps in noise_levels:
        for method in ("dpo", "cdpo", "rdpo"):
            fit = _noisy_fit(method, pref, ref, eps, beta)
            exact = method == "rdpo" or reward.numel() == 2
            theory = max_logp_error(fit, _noisy_target(method, reward, ref, eps, beta)) if exact else math.nan
            rows.append({"noise": eps, "method": method, "clean": max_logp_error(fit, clean), "theory": theory})
    return rows
