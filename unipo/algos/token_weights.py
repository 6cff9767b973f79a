"""Token masks and weights (ALGORITHMS.md §3.2).

Signature of the family: ``fn(mask [N, T], *, <keyword tensors>=None, <hparams>) -> weights [N, T]``.

The weights are detached floats that the trainer multiplies into the per-token loss before aggregation; 0 drops a
token. They are 0 on every masked position. Dropping a token this way keeps the aggregation's normaliser (TRL does
the same for ``top_entropy_quantile``); a trainer that wants the dropped tokens out of the count as well (TRL's
``mask_truncated_completions``) also passes ``mask * (weights > 0)`` to the aggregation.

Keyword tensors a weight may ask for (the trainer passes only those in the signature): ``advantages`` [N] or
[N, T], ``entropy``, ``logp``, ``old_logp``, ``completion_ids``, ``group_ids`` [N], ``rewards`` [N],
``truncated`` [N] bool, ``hint_mask`` [N, T] (tokens injected rather than generated). Batch statistics (quantiles,
min/max, counts) run over the tokens passed in, so call these once on the whole rollout batch, not per micro-batch.

The helpers ``token_covariance`` and ``select_top_k`` are shared with the regularizers (KL-Cov, Lp-Reg). They pick
tokens by rank on the device, without a host sync.
"""

from __future__ import annotations

import math

import torch

from unipo.algos.ops import masked_mean
from unipo.algos.registry import register, warn_reconstruction


def expand_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Detached advantages as [N, T]: a [N] sequence advantage is broadcast to its tokens."""
    adv = advantages.detach()
    if adv.dim() == 1 and adv.shape[0] == mask.shape[0]:
        return adv[:, None].expand(mask.shape)  # (N,) -> (N, T)
    if adv.shape == mask.shape:
        return adv
    raise ValueError(f"advantages must be [N] or [N, T] = {tuple(mask.shape)}; got {tuple(adv.shape)}")


def token_covariance(advantages: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token covariance term of Cui et al. 2025 (arXiv:2505.22617, §4): (A − mean A)·(logp − mean logp).

    Means run over the valid tokens; the result is detached and 0 on masked tokens.
    """
    adv = expand_advantages(advantages, mask).to(logp.dtype)
    lp = torch.where(mask.bool(), logp.detach(), torch.zeros_like(logp))
    cov = (adv - masked_mean(adv, mask)) * (lp - masked_mean(lp, mask))
    return torch.where(mask.bool(), cov, torch.zeros_like(cov))


def select_top_k(
    score: torch.Tensor, candidates: torch.Tensor, k: int | torch.Tensor, dim: int | None = None
) -> torch.Tensor:
    """Bool mask of the `k` highest-scoring candidates (over everything, or per slice along `dim` with k [N, 1]).

    Ties go to the earlier position; fewer than `k` candidates selects them all. Ranking by a double argsort keeps
    `k` a tensor, so no count ever leaves the device.
    """
    candidates = candidates.bool()
    finite_min = torch.finfo(score.dtype).min
    keyed = torch.where(candidates, torch.nan_to_num(score.detach(), nan=finite_min, neginf=finite_min), -math.inf)
    flat = keyed.reshape(-1) if dim is None else keyed
    axis = 0 if dim is None else dim
    order = torch.argsort(flat, dim=axis, descending=True, stable=True)
    rank = torch.argsort(order, dim=axis)  # rank[i] = position of i in the descending order
    return (rank.reshape(score.shape) < k) & candidates


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    # torch.quantile (linear interpolation) without its 16M-element limit.
    v = values.sort().values
    pos = q * (v.numel() - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _keep_top_fraction(score: torch.Tensor, mask: torch.Tensor, frac: float) -> torch.Tensor:
    """Valid tokens whose score is ≥ the (1 − frac) quantile of the valid scores (TRL ``get_high_entropy_mask``)."""
    valid = mask.bool()
    values = score.detach()[valid]
    if values.numel() == 0:
        return torch.zeros_like(valid)
    threshold = _quantile(values.to(torch.promote_types(values.dtype, torch.float32)), 1.0 - frac)
    return (score.detach() >= threshold.to(score.dtype)) & valid


def _weights(keep: torch.Tensor, mask: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
    return (keep.bool() & mask.bool()).to(dtype)


def require_inputs(kind: str, name: str, **tensors: torch.Tensor | None) -> None:
    """Raise a ValueError naming the keyword tensors that component `name` of `kind` needs but did not get."""
    missing = [k for k, v in tensors.items() if v is None]
    if missing:
        raise ValueError(f"{kind} {name!r} needs the keyword tensor(s) {', '.join(missing)}")


@register(
    "token_weight",
    "mask_truncated",
    paper="Yu et al. 2025, DAPO: An Open-Source LLM RL System at Scale, arXiv:2503.14476",
    tag="checked: TRL",
)
def mask_truncated(mask: torch.Tensor, *, truncated: torch.Tensor | None = None) -> torch.Tensor:
    """DAPO overlong filtering (Yu et al. 2025, arXiv:2503.14476, §3.4; TRL ``mask_truncated_completions``).

    w_{i,t} = m_{i,t}·1[response i ended with EOS]: a response cut at the length limit gets no gradient.

    Args:
        mask: [N, T] loss mask.
        truncated: [N] bool, True where the response hit the length limit without EOS.

    Returns:
        [N, T] weights in {0, 1}.

    Note:
        TRL removes these tokens from the normaliser too; pass ``mask * weights`` to the aggregation for that.
    """
    require_inputs("token_weight", "mask_truncated", truncated=truncated)
    return _weights(~truncated.bool()[:, None].expand(mask.shape), mask)


@register(
    "token_weight",
    "top_entropy_tokens",
    paper="Wang et al. 2025, Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL, arXiv:2506.01939",
    tag="mechanism checked: TRL; paper memory",
)
def top_entropy_tokens(
    mask: torch.Tensor, *, entropy: torch.Tensor | None = None, keep_frac: float = 0.2
) -> torch.Tensor:
    """High-entropy "forking" tokens only (Wang et al. 2025, Beyond the 80/20 Rule, arXiv:2506.01939).

    w_{i,t} = 1[H_{i,t} ≥ Quantile_{1−q}(H over the valid tokens)] (TRL ``top_entropy_quantile`` = q).

    Args:
        mask: [N, T] loss mask.
        entropy: [N, T] token entropy H of π_θ.
        keep_frac: q, the fraction of valid tokens kept (paper 0.2; 1 keeps all, 0 keeps the maximum only).

    Returns:
        [N, T] weights in {0, 1}.

    Note:
        TRL gathers the entropies of every rank before the quantile; call this on the gathered batch.
    """
    require_inputs("token_weight", "top_entropy_tokens", entropy=entropy)
    if not 0.0 <= keep_frac <= 1.0:
        raise ValueError(f"keep_frac must be in [0, 1]; got {keep_frac}")
    return _weights(_keep_top_fraction(entropy, mask, keep_frac), mask, entropy)


@register(
    "token_weight",
    "clip_cov",
    paper="Cui et al. 2025, The Entropy Mechanism of RL for Reasoning Language Models, arXiv:2505.22617",
    tag="checked: verl",
)
def clip_cov(
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    logp: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    select_frac: float = 2e-4,
    cov_low: float = 1.0,
    cov_high: float = 5.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> torch.Tensor:
    """Clip-Cov: detach a few random high-covariance tokens (Cui et al. 2025, arXiv:2505.22617, §5; verl).

    Cov_t = (A_t − mean A)·(logp_t − mean logp); among tokens not already PPO-clipped with cov_low < Cov < cov_high,
    max(1, ⌊r·N_valid⌋) picked at random get w = 0; all others w = 1. Multiply into the ``ppo_clip`` loss.

    Args:
        mask: [N, T] loss mask.
        advantages: [N] or [N, T].
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old; None means on-policy (ρ = 1, nothing is clipped).
        generator: RNG for the random pick (reproducible runs); None uses the global one.
        select_frac: r (verl 2e-4).
        cov_low: lower covariance bound (verl 1).
        cov_high: upper covariance bound (verl 5).
        clip_low: ε_low of the paired ``ppo_clip``.
        clip_high: ε_high of the paired ``ppo_clip``.

    Returns:
        [N, T] weights in {0, 1}.
    """
    require_inputs("token_weight", "clip_cov", advantages=advantages, logp=logp)
    valid = mask.bool()
    adv = expand_advantages(advantages, mask)
    log_ratio = torch.zeros_like(logp) if old_logp is None else (logp - old_logp).detach()
    ratio = torch.exp(torch.clamp(torch.where(valid, log_ratio, torch.zeros_like(log_ratio)), -20.0, 20.0))
    # exactly the tokens whose gradient ppo_clip already removes (ALGORITHMS.md §13 U2)
    clipped = ((adv < 0) & (ratio < 1.0 - clip_low)) | ((adv > 0) & (ratio > 1.0 + clip_high))
    cov = token_covariance(adv, logp, mask)
    candidates = valid & ~clipped & (cov > cov_low) & (cov < cov_high)
    k = torch.floor(select_frac * valid.sum()).clamp(min=1)
    device = generator.device if generator is not None else mask.device
    keys = torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
    return _weights(~select_top_k(keys, candidates, k), mask, logp)


def _conflict(keys: torch.Tensor, present: torch.Tensor, pos_tok: torch.Tensor, neg_tok: torch.Tensor) -> torch.Tensor:
    """True where a present (position, token) key occurs in ≥1 positive and ≥1 negative completion."""
    out = torch.zeros_like(present)
    if not bool(present.any()):
        return out
    uniq, inv = torch.unique(keys[present], return_inverse=True)
    n_keys = uniq.numel()
    has_pos = torch.zeros(n_keys, dtype=torch.long, device=keys.device).index_add_(0, inv, pos_tok[present].long())
    has_neg = torch.zeros(n_keys, dtype=torch.long, device=keys.device).index_add_(0, inv, neg_tok[present].long())
    out[present] = (has_pos[inv] > 0) & (has_neg[inv] > 0)
    return out


@register(
    "token_weight",
    "gtpo",
    paper="Simoni et al. 2025, GTPO: Trajectory-Based Policy Optimization in LLMs, arXiv:2508.03772",
    tag="checked: official code gtpo_training.py",
)
def gtpo(
    mask: torch.Tensor,
    *,
    completion_ids: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    conflict_weight: float = 2.0,
    divide_by_conflicts: bool = True,
) -> torch.Tensor:
    """GTPO conflict-token weights (Simoni et al. 2025, arXiv:2508.03772; official ``build_conflict_mask``).

    A conflict token is a (position, token id) in ≥1 positive (A>0) and ≥1 negative (A<0) completion of the group,
    in the leading run from the start or the run aligned from the end. δ = w per run on positive completions
    (w² in both), 0 on negative ones, 1 elsewhere; then ÷ max(1, #conflict tokens of the completion).

    Args:
        mask: [N, T] loss mask (a masked token breaks a run).
        completion_ids: [N, T] token ids.
        advantages: [N] (or [N, T], reduced to each row's masked mean); only the sign is used.
        group_ids: [N] prompt index; None puts every completion in one group.
        conflict_weight: W_RAW, the weight of a positive conflict token (official 2.0).
        divide_by_conflicts: divide each completion's weights by its conflict count, as the official loss does.

    Returns:
        [N, T] weights ≥ 0.

    Note:
        With an on-policy ratio and ``seq_mean_token_mean`` this reproduces the official loss. The completion
        entropy filter (A ← 0 if H̄ > 0.7, else A − 0.1·H̄) changes advantages, not weights: it is the regularizer
        ``gtpo_entropy_filter``, which these weights then multiply.
    """
    require_inputs("token_weight", "gtpo", completion_ids=completion_ids, advantages=advantages)
    valid = mask.bool()
    adv = advantages.detach()
    if adv.dim() == 2:
        adv = masked_mean(adv, mask, dim=-1)  # (N, T) -> (N,)
    pos, neg = adv > 0, adv < 0
    n, t = mask.shape
    gid = torch.zeros(n, dtype=torch.long, device=mask.device) if group_ids is None else group_ids
    gid = torch.unique(gid, return_inverse=True)[1]  # dense labels keep the keys far from int64 overflow
    ids = completion_ids.long()
    vocab = ids.max().clamp(min=0) + 1
    steps = torch.arange(t, device=mask.device)
    present = valid & (pos | neg)[:, None]
    pos_tok, neg_tok = pos[:, None].expand(n, t), neg[:, None].expand(n, t)
    fwd_raw = _conflict((gid[:, None] * t + steps) * vocab + ids, present, pos_tok, neg_tok)
    last = torch.where(valid, steps, -1).amax(-1)  # index of each row's last valid token
    from_end = (last[:, None] - steps).clamp(min=0)
    rev_raw = _conflict((gid[:, None] * t + from_end) * vocab + ids, present, pos_tok, neg_tok)
    fwd = torch.cumprod(fwd_raw.int(), dim=1).bool() & valid
    after_end = steps[None, :] > last[:, None]  # padding after the last token must not break the trailing run
    rev = torch.cumprod((rev_raw | after_end).int().flip(1), dim=1).flip(1).bool() & valid
    w = torch.tensor(conflict_weight, dtype=torch.get_default_dtype(), device=mask.device)
    one = torch.ones((), dtype=w.dtype, device=mask.device)
    pos_delta = torch.where(fwd, w, one) * torch.where(rev, w, one)
    neg_delta = torch.where(fwd | rev, torch.zeros_like(one), one)
    delta = torch.where(pos[:, None], pos_delta, torch.where(neg[:, None], neg_delta, one)) * valid
    if divide_by_conflicts:
        n_conflict = ((fwd | rev) & present).sum(-1).clamp(min=1)
        delta = delta / n_conflict[:, None]
    return delta


@register(
    "token_weight",
    "steer",
    paper="Hao et al. 2025, Rethinking Entropy Interventions in RLVR (STEER), arXiv:2510.10150",
    tag="checked: official code compute_token_weights",
)
def steer(
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    logp: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    w_min: float = 0.8,
    w_max: float = 1.2,
    mapping: str = "linear",
) -> torch.Tensor:
    """STEER entropy-change reweighting (Hao et al. 2025, arXiv:2510.10150; official ``compute_token_weights``).

    Ω_t = (A_t/π_old(y_t))·p(1−p)·(log p + H_t), p = π_θ(y_t). linear: w = w_max − (|Ω| − min|Ω|)·(w_max − w_min)
    /(max|Ω| − min|Ω|) over the tokens it is given (the trainer calls it per micro-batch, since p moves with the
    update: `train.micro_batch_size` ≥ the batch makes the range the whole batch's); exp: w = exp(−k|Ω|),
    k = −ln(w_min)/max(max|Ω|, 0.02), clamped to [w_min, 1].

    Args:
        mask: [N, T] loss mask.
        advantages: [N] or [N, T].
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old.
        entropy: [N, T] token entropy H (the official code takes it from the π_old pass).
        w_min: lower weight (paper 0.8).
        w_max: upper weight (paper 1.2).
        mapping: "linear" (paper default) or "exp".

    Returns:
        [N, T] weights in [w_min, w_max] on valid tokens, 0 elsewhere; all (w_min + w_max)/2 when |Ω| is constant.

    Note:
        The paper multiplies them into the dual-clip PPO loss (``dual_clip`` with c = 3).
    """
    require_inputs("token_weight", "steer", advantages=advantages, logp=logp, old_logp=old_logp, entropy=entropy)
    if mapping not in ("linear", "exp") or not 0.0 < w_min <= w_max:
        raise ValueError(f"need mapping in ('linear', 'exp') and 0 < w_min <= w_max; got {mapping}, {w_min}, {w_max}")
    valid = mask.bool()
    p = torch.exp(logp.detach()).clamp(1e-8, 1.0 - 1e-8)
    p_old = torch.exp(old_logp.detach()).clamp(1e-8, 1.0)
    omega = expand_advantages(advantages, mask).to(p.dtype) / p_old * p * (1.0 - p) * (torch.log(p) + entropy.detach())
    metric = torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega)).abs()
    lo = torch.where(valid, metric, math.inf).amin()
    hi = torch.where(valid, metric, -math.inf).amax()
    if mapping == "linear":
        spread = hi - lo
        scale = (w_max - w_min) / torch.where(spread > 0, spread, torch.ones_like(spread))
        w = torch.where(spread > 0, w_max - (metric - lo) * scale, torch.full_like(metric, (w_min + w_max) / 2))
        w = w.clamp(w_min, w_max)
    else:
        k = -math.log(w_min) / torch.clamp(hi, min=0.02)
        w = torch.exp(-k * metric).clamp(w_min, 1.0)
    return torch.where(valid, w, torch.zeros_like(w))


@register(
    "token_weight",
    "igpo_hint_mask",
    paper="Zhao et al. 2025, Inpainting-Guided Policy Optimization for Diffusion LLMs (IGPO), arXiv:2509.10396",
    tag="checked: official code trainer_igpo.py",
)
def igpo_hint_mask(
    mask: torch.Tensor,
    *,
    hint_mask: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    keep_frac: float = 0.2,
) -> torch.Tensor:
    """IGPO hint-token entropy filter (Zhao et al. 2025, arXiv:2509.10396; official ``trainer_igpo.py``).

    Generated tokens always count; in each sequence, of its n injected (hint) tokens only the top max(1, ⌊q·n⌋)
    by entropy count.

    Args:
        mask: [N, T] loss mask; it must still include the injected tokens (this weight drops most of them).
        hint_mask: [N, T] bool, tokens injected from the ground truth rather than generated.
        entropy: [N, T] token entropy H.
        keep_frac: q, the fraction of each sequence's hint tokens kept (official 0.2).

    Returns:
        [N, T] weights in {0, 1}.
    """
    require_inputs("token_weight", "igpo_hint_mask", hint_mask=hint_mask, entropy=entropy)
    valid, hint = mask.bool(), hint_mask.bool()
    candidates = valid & hint
    n_hint = candidates.sum(-1, keepdim=True)  # (N, 1)
    k = torch.where(n_hint > 0, torch.floor(keep_frac * n_hint).clamp(min=1), torch.zeros_like(n_hint))
    keep = ~hint | select_top_k(entropy, candidates, k, dim=-1)
    return _weights(keep, mask, entropy)


@register(
    "token_weight",
    "d3s_token_recon",
    paper="Wang et al. 2025, Learning More with Less: Dynamic Dual-Level Down-Sampling (D³S), arXiv:2509.22115",
    tag="mechanism checked: abstract; schedule reconstructed",
)
def d3s_token_recon(
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    progress: float = 0.0,
    keep_frac_start: float = 0.2,
    keep_frac_end: float = 1.0,
) -> torch.Tensor:
    """Reconstruction of D³S (Wang et al. 2025, arXiv:2509.22115) from its abstract; not the published rule.

    Keep the valid tokens whose |A_{i,t}|·H_{i,t} is in the top ρ fraction (quantile threshold, as
    ``top_entropy_tokens``), with ρ = ρ_0 + (ρ_1 − ρ_0)·progress rising linearly over training.

    Args:
        mask: [N, T] loss mask.
        advantages: [N] or [N, T].
        entropy: [N, T] token entropy H.
        progress: fraction of training done, in [0, 1] (the trainer passes it).
        keep_frac_start: ρ_0 (reconstructed, 0.2).
        keep_frac_end: ρ_1 (reconstructed, 1.0).

    Returns:
        [N, T] weights in {0, 1}.

    Note:
        The sample-level Var(A) down-sampling of D³S is a sampler (ALGORITHMS.md §6), not part of this weight.
    """
    warn_reconstruction("d3s_token_recon", "D³S (arXiv:2509.22115)")
    require_inputs("token_weight", "d3s_token_recon", advantages=advantages, entropy=entropy)
    frac = keep_frac_start + (keep_frac_end - keep_frac_start) * min(max(float(progress), 0.0), 1.0)
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"keep fractions must lie in [0, 1]; got {keep_frac_start}, {keep_frac_end}")
    score = expand_advantages(advantages, mask).abs().to(entropy.dtype) * entropy.detach()
    return _weights(_keep_top_fraction(score, mask, frac), mask, entropy)
