"""Per-token regularizers added to the policy loss (ALGORITHMS.md §4.2, §4.3).

Signature of the family: ``fn(logp, old_logp, mask, *, <keyword tensors>=None, <hparams>) -> (term [N, T], metrics)``.

The trainer adds ``term`` to the policy loss's per-token loss before aggregation, so a regularizer shares the policy
term's mask and normaliser (under ``token_mean`` a term of −c·H_t becomes −c·H̄, TRL's entropy bonus). ``term`` is
0 on masked tokens; metrics are detached per-token [N, T] tensors, masked and averaged once by the trainer.

Keyword tensors: ``entropy``, ``advantages``, ``proxy_logp``, ``demo_mask``. Trainer state kept between steps (the
adaptive entropy coefficient, the entropy running mean) comes in as a keyword float, and the controllers
``adaptive_entropy_coef`` / ``epo_entropy_hist`` (``unipo.algos.controllers``) give its next value; hyperparameters
that only those updates (or the trainer's extra pass) read are still declared in the regularizer's signature, so a
recipe sets them once.

``kl_cov`` and ``lp_reg`` replace the loss on a few selected tokens in their papers. Here they are correction terms:
``ppo_clip(clip_low, clip_high)`` plus the term equals the published loss, in value and gradient, provided the
term is given the same ``clip_low`` / ``clip_high``.

Modules: ``entropy`` (bonuses and filters on the entropy), ``selective`` (KL-Cov, Lp-Reg), ``likelihood`` (proximal
and likelihood terms, SFT), ``distill`` (a teacher's log-probs), ``reference`` (trust-region SFT and χ² to the
reference).
"""

from unipo.algos.regularizers import distill, entropy, likelihood, reference, selective  # noqa: F401  (registers)
from unipo.algos.regularizers._common import Metrics
from unipo.algos.regularizers.distill import kepo_gated_distill_recon, onpolicy_distill
from unipo.algos.regularizers.entropy import adaptive_entropy, entropy_bonus, epo_smooth_recon, gtpo_entropy_filter
from unipo.algos.regularizers.likelihood import asymre, llds_recon, opmd, sft_nll
from unipo.algos.regularizers.reference import om_chi2_recon, tpsft_recon
from unipo.algos.regularizers.selective import kl_cov, lp_reg, lp_reg_proxy_logp

__all__ = [
    "Metrics",
    "adaptive_entropy",
    "asymre",
    "entropy_bonus",
    "epo_smooth_recon",
    "gtpo_entropy_filter",
    "kepo_gated_distill_recon",
    "kl_cov",
    "llds_recon",
    "lp_reg",
    "lp_reg_proxy_logp",
    "om_chi2_recon",
    "onpolicy_distill",
    "opmd",
    "sft_nll",
    "tpsft_recon",
]
