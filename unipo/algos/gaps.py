"""Known gaps: ids of ALGORITHMS.md that are not registered yet, each with the reason (what is missing).

`unipo list` and docs/algorithms.md show them under their kind, so the catalogue states what unipo lacks instead of
hiding it. An id leaves this table when it is registered (a test checks that no id is in both).
"""

from __future__ import annotations

GAPS: dict[tuple[str, str], str] = {
    ("sampler", "early_stop_recon"): "stops a multi-turn trajectory at a quantile of finished turn counts: needs the "
    "multi-turn loop (the agents issue)",
    ("sampler", "rex_rag_probe"): "inserts a revision prompt into a failed trajectory and continues it: needs the "
    "multi-turn/tool loop (the agents issue) and REX-RAG's revision-prompt pool",
    ("sampler", "v0_budget"): "its allocation rule is unknown (R3) and it needs a separately trained pass-rate "
    "predictor V_0; `knapsack_rl` allots budgets from any pass-rate estimate",
    ("sampler", "gdro_recon"): "not built yet: its prompt weights per pass@k bin need a weighted prompt stream (the "
    "collect stage draws prompts uniformly)",
    ("sampler", "exit_buffer"): "not built yet: partial histories become new start states, which needs a prompt "
    "stream that accepts generated tasks",
    ("sampler", "icpo_recon"): "not built yet: demonstration-conditioned rollouts are trained as answers to the bare "
    "prompt, which needs re-prompting a completion in the batch",
    ("sampler", "sage_recon"): "not built yet: two-stage sampling (a hint from the policy given the reference, then "
    "the answer given the hint)",
    ("sampler", "spear_sil_recon"): "not built yet: a replay buffer trained with its own SIL term −max(A, 0)·log π; "
    "its decaying tool-call reward needs the agents issue",
    ("policy_loss", "rex_rag_mis_recon"): "weights the probe samples of `rex_rag_probe`, which is not built",
    ("policy_loss", "bupo_recon"): "needs an internal layer's policy softmax(W_U·norm(h^l)) in the update's forward, "
    "which the log-prob path does not expose",
    ("regularizer", "otr_recon"): "needs K samples from the policy's full next-token distribution at every prefix of "
    "a demonstration (a demonstration forward that keeps the logits)",
    ("regularizer", "srpo_routed_recon"): "needs the same model conditioned on feedback as teacher: a second forward "
    "of each failed sample under a feedback-augmented prompt",
    ("regularizer", "gardo_recon"): "its uncertainty measure and its diversity embedding are unspecified (a "
    "diffusion paper); its reference reset is `ref_sync` with alpha = 1",
    ("reward", "dynamic_reward_weights"): "its hypervolume-guided and gradient-based weight updates are unknown (R3); "
    "`weighted_sum` with fixed weights (or `scores` of a multi-score reward) covers the static case",
}
"""(kind, id) -> why it is not registered yet."""


def gaps(kind: str) -> list[tuple[str, str]]:
    """The known gaps of `kind` as (id, reason), by id."""
    return sorted((name, why) for (k, name), why in GAPS.items() if k == kind)
