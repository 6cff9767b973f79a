"""Shared pieces of the advantage estimators: argument checks and vectorised group statistics.

Groups are found with ``torch.unique(return_inverse=True)``, so ``group_ids`` may be any integers, unsorted and
non-contiguous. Per-group sums use ``index_add``; nothing loops over groups or sequences in Python.
A NaN reward means "no reward": it is left out of every statistic, and the estimators give it A = 0.
"""

from __future__ import annotations

import math

import torch

from unipo.algos.ops import check_choice, masked_sum  # noqa: F401  (check_choice: re-exported)

STD_MODES = ("sample", "population")
SINGLETONS = ("zero", "raw")


def check_range(
    option: str, value: float, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False
) -> None:
    """Raise ValueError naming `option` unless low ≤ value ≤ high (low < value when `open_low`)."""
    bad_low = value <= low if open_low else value < low
    if bad_low or value > high or math.isnan(value):
        left = "(" if open_low else "["
        raise ValueError(f"{option}={value!r} is out of range; it must lie in {left}{low}, {high}]")


def check_rewards(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """1-D float rewards [N] with group_ids of the same shape."""
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D [N] (combine several reward functions first); got {tuple(rewards.shape)}"
        )
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the shape of rewards {tuple(rewards.shape)}; got {tuple(group_ids.shape)}"
        )
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def check_multi_rewards(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Rewards [N, K] (one column per reward function); a 1-D [N] tensor is read as K = 1."""
    if rewards.dim() == 1:
        rewards = rewards[:, None]  # (N,) -> (N, 1)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N] or [N, K]; got {tuple(rewards.shape)}")
    if group_ids.dim() != 1 or group_ids.shape[0] != rewards.shape[0]:
        raise ValueError(f"group_ids must be [N] with N = {rewards.shape[0]}; got {tuple(group_ids.shape)}")
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def check_mask(mask: torch.Tensor | None, n: int, estimator: str) -> torch.Tensor:
    """The [N, T] loss mask as bool; ValueError naming `mask` when it is missing or mis-shaped."""
    if mask is None:
        raise ValueError(f"{estimator} needs mask [N, T] (the loss mask of the completions)")
    if mask.dim() != 2 or mask.shape[0] != n:
        raise ValueError(f"mask must be [N, T] with N = {n}; got {tuple(mask.shape)}")
    return mask.bool()


def check_token_tensor(
    x: torch.Tensor | None, name: str, mask: torch.Tensor, like: torch.Tensor, estimator: str
) -> torch.Tensor:
    """A required per-token keyword tensor of the shape of `mask`, cast to the dtype of `like`."""
    if x is None:
        raise ValueError(f"{estimator} needs {name} [N, T] (keyword tensor)")
    if x.shape != mask.shape:
        raise ValueError(f"{name} must have the shape of mask {tuple(mask.shape)}; got {tuple(x.shape)}")
    return x.detach().to(device=like.device, dtype=like.dtype)


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(inverse [N] in [0, n_groups), n_groups); groups ordered by ascending id."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, uniq.numel()


def group_sum(x: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per-group sums: [N, ...] -> [n_groups, ...]."""
    return x.new_zeros((n_groups, *x.shape[1:])).index_add(0, inverse, x)


def group_moments(
    x: torch.Tensor, inverse: torch.Tensor, n_groups: int, std_mode: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group statistics of the valid (non-NaN) entries of x [N] or [N, K].

    Returns (valid [N, ...] bool, count [G, ...], mean [G, ...], std [G, ...]); the std is Bessel-corrected for
    "sample" and 0 for a group with fewer than two valid entries.
    """
    valid = ~torch.isnan(x)
    v = torch.where(valid, x, torch.zeros_like(x))
    count = group_sum(valid.to(x.dtype), inverse, n_groups)
    mean = group_sum(v, inverse, n_groups) / count.clamp(min=1)
    centred = torch.where(valid, v - mean[inverse], torch.zeros_like(v))
    dof = count - 1 if std_mode == "sample" else count
    std = (group_sum(centred**2, inverse, n_groups) / dof.clamp(min=1)).sqrt()
    return valid, count, mean, std


def group_stats(
    rewards: torch.Tensor, group_ids: torch.Tensor, std_mode: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element group statistics over the valid (non-NaN) rewards [N] or [N, K].

    Returns (valid bool, centred = r − mean_G r (0 where invalid), std_G, count_G), each of the shape of rewards.
    """
    inverse, n_groups = group_index(group_ids)
    valid, count, mean, std = group_moments(rewards, inverse, n_groups, std_mode)
    centred = torch.where(valid, rewards - mean[inverse], torch.zeros_like(rewards))
    return valid, centred, std[inverse], count[inverse]


def batch_std(rewards: torch.Tensor, valid: torch.Tensor, std_mode: str = "sample") -> torch.Tensor:
    """Std of the valid rewards of the whole batch (a 0-dim tensor)."""
    n = valid.to(rewards.dtype).sum()
    mean = masked_sum(rewards, valid) / n.clamp(min=1)
    dof = n - 1 if std_mode == "sample" else n
    return (masked_sum((rewards - mean) ** 2, valid) / dof.clamp(min=1)).sqrt()


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # den = 0 only where every deviation is 0 (equal rewards with eps = 0), where A = 0 is the right answer.
    return num / torch.where(den > 0, den, torch.ones_like(den))


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """(x − mean) / (std + eps) over the masked entries (Bessel-corrected std); 0 outside the mask.

    Same as ``unipo.algos.ops.masked_whiten`` except that a constant x with eps = 0 gives 0 instead of NaN.
    """
    m = mask.bool()
    n = m.to(x.dtype).sum()
    mean = masked_sum(x, m) / n.clamp(min=1)
    std = (masked_sum((x - mean) ** 2, m) / (n - 1).clamp(min=1)).sqrt()
    return torch.where(m, safe_div(x - mean, std + eps), torch.zeros_like(x))


def apply_singleton(
    adv: torch.Tensor, raw: torch.Tensor, valid: torch.Tensor, count: torch.Tensor, singleton: str
) -> torch.Tensor:
    """singleton="raw" gives a one-reward group `raw` (verl's mean 0 / std 1 convention) instead of `adv`."""
    check_choice("singleton", singleton, SINGLETONS)
    if singleton == "zero":
        return adv
    return torch.where(valid & (count == 1), raw, adv)


def tie_counts(x: torch.Tensor, inverse: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each valid x_i: (#{j in its group: x_j < x_i}, #{j in its group: x_j = x_i}), both [N] long.

    Sorts by (group, value) once; invalid entries go to a trailing pseudo-group of their own.
    """
    n = x.numel()
    key = torch.where(valid, inverse, torch.full_like(inverse, n))  # n > every group index
    xv = torch.where(valid, x, torch.zeros_like(x))
    by_value = torch.argsort(xv, stable=True)
    order = by_value[torch.argsort(key[by_value], stable=True)]  # sorted by group, then value
    gs, xs = key[order], xv[order]
    pos = torch.arange(n, device=x.device)
    first = torch.ones(1, dtype=torch.bool, device=x.device)
    new_group = torch.cat([first, gs[1:] != gs[:-1]])
    new_run = new_group | torch.cat([first, xs[1:] != xs[:-1]])
    last_of_run = torch.cat([new_run[1:], first])
    group_start = torch.cummax(torch.where(new_group, pos, torch.zeros_like(pos)), 0).values
    run_start = torch.cummax(torch.where(new_run, pos, torch.zeros_like(pos)), 0).values
    run_end = torch.where(last_of_run, pos + 1, torch.full_like(pos, n)).flip(0).cummin(0).values.flip(0)
    less, equal = torch.empty_like(pos), torch.empty_like(pos)
    less[order] = run_start - group_start
    equal[order] = run_end - run_start
    return less, equal


def row_lengths(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """|y_i| = number of loss-bearing tokens: [N, T] -> [N]."""
    return mask.to(dtype).sum(-1)
