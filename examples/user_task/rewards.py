"""A user's reward function, named by dotted path: `rewards=[{_component_: examples.user_task.rewards.strict_number}]`.

TRL's convention: prompts, completions, then dataset columns as keyword lists (here `answer`, which `data.answer_field`
maps from the file's `product` column) and `truncated`."""

import re


def strict_number(prompts, completions, answer, truncated, **_):
    """1.0 for a finished reply that is only the right number, 0.5 when its last number is right but it says more."""
    out = []
    for completion, want, cut in zip(completions, answer, truncated, strict=True):
        numbers = re.findall(r"-?\d+", completion)
        if cut or not numbers or numbers[-1] != str(want):
            out.append(0.0)
        else:
            out.append(1.0 if completion.strip().rstrip(".") == str(want) else 0.5)
    return out
