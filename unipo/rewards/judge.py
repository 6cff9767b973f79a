"""Scoring rules behind reward functions: `judge` (an LLM judge's expected score, Edit-R1 style) and
`soft_multichoice` (TW-GRPO partial credit). The math is registered in `unipo.algos.reward_bonus`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from unipo.rewards import tagged_or_last_line, text_of

JUDGE_TEMPLATE = (
    "Rate how well the reply answers the request, from 0 (useless) to 9 (perfect). Answer with one digit.\n\n"
    "Request: {prompt}\n\nReply: {completion}"
)
_JUDGES: dict[tuple[str, str], tuple[Any, Any]] = {}


def frozen_model(path: str, device: str) -> tuple[Any, Any]:
    """The model and tokenizer at `path` on `device`, loaded once per process (a judge's, a refiner's)."""
    if (path, device) not in _JUDGES:
        from unipo.models.loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(path)
        _JUDGES[path, device] = (model.to(device).eval(), tokenizer)
    return _JUDGES[path, device]


def label_ids(tokenizer: Any, labels: Sequence[str]) -> list[int]:
    """The token id of each label; ValueError when a label is not exactly one token."""
    ids = []
    for label in labels:
        found = tokenizer.encode(label, add_special_tokens=False)
        if len(found) != 1:
            raise ValueError(
                f"judge: the label {label!r} is {len(found)} tokens for this tokenizer; labels must be one"
            )
        ids.append(found[0])
    return ids


def request_text(prompt: object) -> str:
    """A prompt as plain text: a string as is, chat messages as their contents, one per line."""
    return prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)


def judge_texts(tokenizer: Any, prompts: Sequence, completions: Sequence, template: str) -> list[str]:
    """The judge's input for each (prompt, completion): `template` as a user message, through the chat template
    with the assistant turn opened (plain text when the tokenizer has none)."""
    out = []
    for p, c in zip(prompts, completions, strict=True):
        content = template.format(prompt=request_text(p), completion=text_of(c))
        if getattr(tokenizer, "chat_template", None):
            out.append(tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                     add_generation_prompt=True))  # fmt: skip
        else:
            out.append(content + "\n")
    return out


def judge(
    prompts: Sequence,
    completions: Sequence,
    *,
    path: str = "default",
    template: str = JUDGE_TEMPLATE,
    labels: Sequence[str] = tuple("0123456789"),
    values: Sequence[float] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    **_: object,
) -> list[float]:
    """An LLM judge's expected score of each completion (`judge_expected_score`, Edit-R1 arXiv:2510.16888): the
    judge model at `path` reads `template` (with `{prompt}` and `{completion}`), and its next-token distribution
    over the one-token `labels` weights their `values` (default: the labels' positions scaled to [0, 1], so the
    digits 0–9 give 0, 1/9, …, 1). The model loads on the first call and stays loaded."""
    import torch

    from unipo.algos.reward_bonus import judge_expected_score

    model, tokenizer = frozen_model(path, device)
    ids = label_ids(tokenizer, labels)
    scores = torch.tensor(values if values is not None else [i / max(1, len(ids) - 1) for i in range(len(ids))])
    texts = judge_texts(tokenizer, prompts, completions, template)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the last position is every row's next token
    try:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=not getattr(tokenizer, "chat_template", None)).to(device)  # fmt: skip
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # left padding does not shift them
            with torch.no_grad():
                logits = model(**enc, position_ids=positions).logits[:, -1, ids].float().cpu()
            out += judge_expected_score(logits, scores).tolist()
        return out
    finally:
        tokenizer.padding_side = side


def chosen_options(text: str) -> set[str]:
    """The option letters a reply's final answer names: its last `<answer>…</answer>`, else its last non-empty line,
    after an optional "… answer is:" lead, must be only capital letters with spaces, commas, "and", parentheses or
    a final period ("A, C", "AC", "(A) and (C)"); anything else names no option (empty set)."""
    final = re.sub(r"^.*?\banswers?\b(\s+(is|are))?\s*:?", "", tagged_or_last_line(text), flags=re.IGNORECASE)
    letters = re.sub(r"\band\b|[\s,;()&/]|\.$", "", final)
    return set(letters) if re.fullmatch(r"[A-Z]+", letters) else set()


def soft_multichoice(
    prompts: Sequence, completions: Sequence, answer: Sequence, truncated: Sequence[bool] | None = None, **_: object
) -> list[float]:
    """TW-GRPO's partial credit for multiple-choice answers (arXiv:2505.24718): 0 when the final answer names a
    wrong option, else the share of the right options (`answer`, e.g. "AC" or "A, C") it names; 0 when truncated."""
    import torch

    from unipo.algos.reward_bonus import soft_multichoice as rule

    letters = [chr(ord("A") + i) for i in range(26)]
    chosen = [chosen_options(text_of(c)) for c in completions]
    keys = [set(re.findall(r"[A-Z]", str(a))) for a in answer]
    picked = torch.tensor([[x in s for x in letters] for s in chosen], dtype=torch.bool).view(-1, 26)
    key = torch.tensor([[x in s for x in letters] for s in keys], dtype=torch.bool).view(-1, 26)
    cut = torch.tensor([False] * len(completions) if truncated is None else list(truncated), dtype=torch.bool)
    return torch.where(cut, 0.0, rule(picked, key)).tolist()
