"""Policy surrogate losses (ALGORITHMS.md §2). Importing this package registers every one of them.

Signature of the family: ``fn(logp, old_logp, advantages, mask, *, <extra tensors>=None, **hparams)
-> (per_token_loss [N, T], metrics)``.

Conventions shared by every loss here:

- ρ = exp(clamp(logp − old_logp, −20, 20)) (verl's guard). ``old_logp``, ``advantages`` and every extra tensor are
  constants (detached inside), so passing ``old_logp = logp`` gives the on-policy gradient.
- The log-ratio (and, where the loss uses it directly, ``logp``) is replaced by 0 on masked tokens with
  ``torch.where``, so padding with any value (even −inf) cannot leak NaN into the loss or its gradient. The
  per-token loss on masked tokens is a harmless finite value; the aggregation (§3) drops it.
- ``advantages`` is [N] (broadcast to every token) or [N, T].
- Extra inputs (``rollout_logp``, ``ref_logp``, ``tempered_old_logp`` [N, T]; ``rewards``, ``group_ids`` [N]) are
  keyword arguments annotated ``torch.Tensor | None``: the registry treats them as data, and the trainer passes
  only what a loss's signature asks for. A missing required one raises ValueError naming it.
- Sequence-level losses return the per-token form whose aggregation (named in each docstring) equals the
  sequence objective.
- Metrics are detached per-token float tensors [N, T]; the trainer masks and averages them once, so no loss calls
  ``.item()``. Every loss returns ``clip/frac`` (the token's gradient is cut, capped or masked), ``clip/frac_low``,
  ``clip/frac_high`` (0 where the loss has no clip) and ``ratio/mean`` (the ratio the surrogate uses: token ρ, or a
  sequence ratio); some add their own keys.
- Each docstring states the effective weight W with ∇ℓ = −W·A·∇logp (ALGORITHMS.md §0.4).
- ``*_recon`` ids are reconstructions from an abstract (ALGORITHMS.md §0.2 R2); each logs a warning on first use.
"""

from unipo.algos.policy_losses import clipped, offpolicy, recon, sequence, trust_region, weighted  # noqa: F401
from unipo.algos.policy_losses.clipped import clip_higher, dual_clip, ppo_clip, ratio_cap_delta
from unipo.algos.policy_losses.offpolicy import opsm, opsm_keep, rollout_is, rollout_is_weights
from unipo.algos.policy_losses.recon import dcpo_dist_recon, dispo_recon, etr_recon, r2vpo_recon
from unipo.algos.policy_losses.sequence import gmpo, gspo, gspo_token, luspo, refuel, vespo
from unipo.algos.policy_losses.trust_region import bapo, bapo_candidates, dppo_tv, dro, mdpo
from unipo.algos.policy_losses.weighted import cispo, nft, rec, reinforce, sapo

__all__ = [
    "bapo",
    "bapo_candidates",
    "cispo",
    "clip_higher",
    "dcpo_dist_recon",
    "dispo_recon",
    "dppo_tv",
    "dro",
    "dual_clip",
    "etr_recon",
    "gmpo",
    "gspo",
    "gspo_token",
    "luspo",
    "mdpo",
    "nft",
    "opsm",
    "opsm_keep",
    "ppo_clip",
    "r2vpo_recon",
    "ratio_cap_delta",
    "rec",
    "refuel",
    "reinforce",
    "rollout_is",
    "rollout_is_weights",
    "sapo",
    "vespo",
]
