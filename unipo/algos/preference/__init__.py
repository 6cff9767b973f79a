"""Offline pairwise, unpaired and listwise preference losses (ALGORITHMS.md §7), registry kind ``preference``.

Signature of the family::

    fn(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, *, beta=0.1, <hparams>) -> loss [B]

The four positional arguments are **summed** sequence log-probs [B] of the chosen (y_w) and rejected (y_l) responses
under the policy and the frozen reference; h = logp − ref_logp and Δ = h_w − h_l (ALGORITHMS.md §0.3). Reference
log-probs are detached. Reference-free losses accept and ignore the reference arguments. The loss is per pair and
unreduced; the trainer takes the mean (or a weighted sum Σ_j w_j·L_j of several losses, as TRL's ``loss_weights``).
Extra inputs are keyword tensors the trainer supplies only when the signature asks for them:

- ``chosen_len``, ``rejected_len`` [B]: numbers of completion tokens (length-normalised scores, NLL terms);
- ``kto``: unpaired, see its docstring; ``lipo_lambda``: listwise, ``(logp, ref_logp, *, scores)`` with [B, L]
  lists; ``copg``: ``chosen_rewards``/``rejected_rewards``; ``hypo``: fresh on-policy samples;
  ``tgdpo``, ``ld_dpo``: per-token [B, T] log-probs with masks (``tgdpo`` also a guide model's token log-probs);
  ``rpo``, ``sft``: ``chosen_len_mean``, the step's mean chosen length (a batch-token NLL).
"""

from unipo.algos.preference import anchored, dpo_variants, reference_free, reward_aware, sigmoid  # noqa: F401

__all__ = ["anchored", "dpo_variants", "reference_free", "reward_aware", "sigmoid"]
