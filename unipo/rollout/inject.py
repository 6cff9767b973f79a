"""Samples that a sampler puts into the batch instead of (or beside) the policy's: demonstrations from the dataset, and
prompts with a hint from the reference solution.

Each is tokenised once, here, and carried as token ids from then on (never re-tokenised); its `origin` says what it
is. No policy sampled a demonstration, so it has no behaviour log-probs: they are stored as 0 (probability 1), never
NaN, so that a masked product can never turn into NaN; a method that must tell them apart reads `origin`.
"""

from __future__ import annotations

import torch

from unipo.rollout.batch import Origin, Rollouts, right_pad


def reference_text(row: dict) -> str:
    """A row's reference solution: its `solution` column, else its `answer`."""
    for key in ("solution", "answer"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    raise ValueError(f"a demonstration needs a `solution` or `answer` column; the row has {sorted(row)}")


GHPO_HINT = (
    "\n The following text is the beginning part of the answer, which you can refer to for solving the problem:\n"
)
"""GHPO's hint text (official `ghpo_trainer.py`), followed by the start of the reference solution."""


def with_hint(row: dict, fraction: float) -> dict:
    """`row` with the first round(fraction·|s|) characters of its reference solution s appended to its prompt after
    `GHPO_HINT`, as GHPO does."""
    solution = reference_text(row)
    return appended(row, GHPO_HINT + solution[: round(len(solution) * fraction)])


R3L_FEEDBACK = "\n\nA previous attempt at this was wrong:\n{attempt}\nFind the mistake and try again."
"""The language feedback of a retry (`r3l_retry_recon`, ours): the failed attempt and that it was wrong."""


def with_feedback(row: dict, attempt: str) -> dict:
    """`row` with R³L's feedback on a failed `attempt` appended to its prompt."""
    return appended(row, R3L_FEEDBACK.format(attempt=attempt))


def appended(row: dict, text: str) -> dict:
    """`row` with `text` appended to its prompt: to the last user message of a chat prompt, to a plain one's text."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        return {**row, "prompt": prompt + text}
    messages = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    messages[last]["content"] = messages[last]["content"] + text
    return {**row, "prompt": messages}


SCAF_LABELS = {
    "knowledge_components_parts": "Knowledge Hints",
    "planning_skeleton_parts": "Planning Hints",
    "solution_breakdown_parts": "Solution Hints",
}
"""Scaf-GRPO's hint tiers (dataset columns, each a list of hint parts) and their labels (official
`build_new_message`)."""


def scaf_hint_levels(row: dict, tiers: tuple[str, ...], per_tier: int = 4) -> list[dict]:
    """`row` with each Scaf-GRPO hint level appended to its prompt, from the least help to the most: for each tier
    column in order, "\n{label}: " and its first 1, 2, …, `per_tier` parts (official: 4 cumulative parts per tier). A
    row with none of the tier columns gets one tier from its reference solution's words in up to `per_tier` cumulative
    parts [ours]."""
    levels = []
    for column in tiers:
        parts = row.get(column) or []
        parts = [parts] if isinstance(parts, str) else list(parts)
        for k in range(1, min(per_tier, len(parts)) + 1):
            levels.append(appended(row, f"\n{SCAF_LABELS.get(column, column)}: {' '.join(parts[:k])}"))
    if levels:
        return levels
    words = reference_text(row).split()
    cuts = sorted({max(1, round(len(words) * k / per_tier)) for k in range(1, per_tier + 1)})
    return [appended(row, f"\nSolution Hints: {' '.join(words[:c])}") for c in cuts]


IGRPO_DRAFT = "\n\nA previous attempt at this question:\n{draft}\n\nWrite an improved answer."
"""The draft-conditioned prompt's addition [ours: the paper's template is not published]."""


def with_draft(row: dict, draft: str) -> dict:
    """`row` with its best draft appended to its prompt (iGRPO's second stage)."""
    return appended(row, IGRPO_DRAFT.format(draft=draft))


def demonstrations(batch: Rollouts, prompts: torch.Tensor, tokenizer: object, max_tokens: int) -> Rollouts:
    """One completion per prompt index in `prompts` (of `batch`): the row's reference solution plus EOS, cut to
    `max_tokens`; the prompts' tensors are those of `batch`, so the demonstration is trained exactly on them."""
    device = batch.prompt_ids.device
    used = [int(p) for p in prompts.tolist()]
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    encoded = [(tokenizer(reference_text(batch.rows[p]), add_special_tokens=False)["input_ids"] + [eos])[:max_tokens]
               for p in used]  # type: ignore[operator]  # fmt: skip
    ids, mask = right_pad(encoded, tokenizer.pad_token_id, device)  # type: ignore[attr-defined]
    n = len(used)
    return Rollouts(
        batch.prompt_ids[used], batch.prompt_mask[used], ids, mask, torch.arange(n, device=device),
        truncated=torch.tensor([len(e) == max_tokens and e[-1] != eos for e in encoded], device=device),
        rollout_logp=torch.zeros(ids.shape, device=device), rows=[batch.rows[p] for p in used],
        texts=[reference_text(batch.rows[p]) for p in used],
        origin=torch.full((n,), int(Origin.DEMONSTRATION), dtype=torch.long, device=device),
    )  # fmt: skip
