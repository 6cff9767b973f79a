"""The `judge` reward (an LLM judge's expected score) and `soft_multichoice`, on a tiny model and real replies."""

import pytest
import torch

from unipo.rewards import BUILTIN
from unipo.rewards.judge import chosen_options, judge, judge_texts, label_ids, soft_multichoice


@pytest.mark.parametrize(
    ("reply", "options"),
    [("A and C", {"A", "C"}), ("<answer>B</answer> more text", {"B"}), ("So the answer is AC", {"A", "C"}),
     ("(A) (C).", {"A", "C"}), ("The answers are: A, C, D", {"A", "C", "D"}), ("I pick A", set()), ("", set())],
)  # fmt: skip
def test_chosen_options(reply, options):
    assert chosen_options(reply) == options


def test_soft_multichoice_gives_partial_credit_and_nothing_for_a_wrong_option():
    replies = ["A, C", "A", "A, B", "B", "C and A", "A, C"]
    got = soft_multichoice([None] * 6, replies, ["AC"] * 6, truncated=[False] * 5 + [True])
    assert got == [1.0, 0.5, 0.0, 0.0, 1.0, 0.0]
    assert BUILTIN["soft_multichoice"] is soft_multichoice


def test_judge_is_the_expected_score_under_the_judge_and_batching_does_not_change_it(tiny_model_dir):
    from unipo.models.loading import load_model_and_tokenizer

    labels = ["a", "b", "c"]
    prompts = ["what is a?", [{"role": "user", "content": "say something longer than the first"}]]
    replies = ["a", "b c a b"]
    got = judge(prompts, replies, path=tiny_model_dir, labels=labels, batch_size=2, template="{prompt} | {completion}")
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    ids = label_ids(tok, labels)
    want = []
    for text in judge_texts(tok, prompts, replies, "{prompt} | {completion}"):  # one at a time: no padding
        enc = tok(text, return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))
        with torch.no_grad():
            p = torch.softmax(model(**enc).logits[0, -1, ids].double(), -1)
        want.append(float(p @ torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)))
    assert got == pytest.approx(want, abs=1e-5)
    assert all(0.0 <= g <= 1.0 for g in got)
    yes = judge(prompts, replies, path=tiny_model_dir, labels=["a", "b"], values=[0.0, 1.0])  # P("b"): P(yes)-style
    assert all(0.0 < y < 1.0 for y in yes)
    with pytest.raises(ValueError, match="labels must be one"):
        label_ids(tok, ["a", "a b c d e f g"])
