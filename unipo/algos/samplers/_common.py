"""Group statistics the samplers share: which groups are solved, which completion is a group's last."""

from __future__ import annotations

import torch


def solved_per_group(rewards: torch.Tensor, group_ids: torch.Tensor, solved_above: float) -> torch.Tensor:
    """[G] the number of completions of each group whose reward exceeds `solved_above` (NaN: not solved)."""
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    solved = (~torch.isnan(rewards) & (rewards > solved_above)).to(torch.long)
    return torch.zeros(g, dtype=torch.long, device=rewards.device).index_add_(0, group_ids, solved)


def unsolved_groups(first: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """[N] True for the completions of groups where no completion scores > 0 and at least one is scored."""
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    scored = torch.zeros(g, dtype=torch.long).index_add_(0, group_ids.cpu(), (~first.isnan()).long().cpu())
    solved = solved_per_group(first.cpu(), group_ids.cpu(), 0.0)
    return ((solved == 0) & (scored > 0))[group_ids.cpu()].to(group_ids.device)


def last_of_group(group_ids: torch.Tensor) -> torch.Tensor:
    """[N] True for the last completion (in batch order) of each group."""
    n = group_ids.numel()
    g = int(group_ids.max()) + 1 if n else 0
    position = torch.arange(n, device=group_ids.device)
    last = torch.full((g,), -1, dtype=torch.long, device=group_ids.device)
    return position == last.scatter_reduce(0, group_ids, position, "amax")[group_ids]
