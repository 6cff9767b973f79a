"""Rewards for training a critic with refinement feedback (RefCritic, `refcritic_reward_recon`): `verdict` checks the
critique's judgement against the row's label, `refinement` lets a frozen model rewrite the solution following the
critique and scores the rewrites. The combination is registered in `unipo.algos.reward_shaping`."""

from __future__ import annotations

import re
from collections.abc import Sequence

from unipo.rewards import final_answer, text_of

_VERDICT = re.compile(r"verdict\s*:\s*\**\s*(correct|incorrect|wrong|right)\b", re.IGNORECASE)
_SAYS = {"correct": "correct", "right": "correct", "incorrect": "incorrect", "wrong": "incorrect"}

REFINE_TEMPLATE = (
    "{prompt}\n\nA reviewer wrote this critique of the proposed solution:\n{completion}\n\n"
    "Following the critique, write the correct final answer. Reply with only the number."
)


def parse_verdict(text: str) -> str | None:
    """The critique's last `Verdict: correct|incorrect` (also right/wrong, any case, bold allowed), or None."""
    found = _VERDICT.findall(text)
    return _SAYS[found[-1].lower()] if found else None


def verdict(
    prompts: Sequence,
    completions: Sequence,
    label: Sequence[str],
    truncated: Sequence[bool] | None = None,
    **_: object,
) -> list[float]:
    """1.0 when a finished critique ends with the verdict of the row's `label` (`correct` or `incorrect`), else 0.0:
    a critique with no verdict, or one cut off by the token budget, has judged nothing."""
    cut = [False] * len(completions) if truncated is None else list(truncated)
    return [1.0 if not c and parse_verdict(text_of(t)) == str(lab).strip().lower() else 0.0
            for t, lab, c in zip(completions, label, cut, strict=True)]  # fmt: skip


def refinement(
    prompts: Sequence,
    completions: Sequence,
    answer: Sequence[str],
    *,
    path: str = "default",
    k: int = 2,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    template: str = REFINE_TEMPLATE,
    device: str = "cpu",
    seed: int = 0,
    **_: object,
) -> list[float]:
    """The share of `k` refinements that get the row's `answer` right (`final_answer`), each sampled from the frozen
    model at `path` given the problem and the critique (`template`, with `{prompt}` and `{completion}`, as a user
    message through the chat template): the mean_k 1[refinement correct] of RefCritic's reward. The model loads on the
    first call and stays loaded; the draws are seeded by `seed` and the call's texts, so a score is reproducible."""
    import torch

    from unipo.rewards.judge import frozen_model, request_text
    from unipo.rollout.hf import sample

    if k < 1:
        raise ValueError(f"refinement: k must be >= 1, got {k}")
    model, tokenizer = frozen_model(path, device)
    rows = [{"prompt": [{"role": "user", "content": template.format(prompt=request_text(p), completion=text_of(c))}]}
            for p, c in zip(prompts, completions, strict=True)]  # fmt: skip
    generator = torch.Generator().manual_seed(seed + sum(map(len, map(str, completions))))
    out = sample(model, tokenizer, rows, n=k, max_new_tokens=max_new_tokens, temperature=temperature,
                 generator=generator)  # fmt: skip
    answers = [a for a in answer for _ in range(k)]
    right = final_answer(None, out.texts, answers, truncated=out.truncated.tolist())
    return [sum(right[i * k : (i + 1) * k]) / k for i in range(len(rows))]
