"""Built-in reward functions on real replies, malformed ones included."""

import pytest

from unipo.rewards import contains, exact_match, final_math_answer, math_answer, regex, think_answer_format


@pytest.mark.parametrize(
    ("reply", "answer", "want"),
    [
        ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
        ("\\boxed{\\dfrac{3}{4}}", "3/4", 1.0),
        ("The total is 1,000 dollars.", "1000", 1.0),
        ("<think>2+2</think><answer>4</answer>", "4", 1.0),
        ("$x = 3$ so \\boxed{3}", "3.0", 1.0),
        ("\\boxed{x^2 + 1}", "x^2+1", 1.0),  # text compare after normalisation
        ("first 5, then \\boxed{7}", "5", 0.0),  # the boxed answer is the final one
        ("\\boxed{\\frac{1}{2}", "0.5", 0.0),  # unbalanced braces: no final answer
        ("no numbers here", "3", 0.0),
        ("", "3", 0.0),
        ("\\boxed{1/0}", "1/0", 1.0),  # not a number (zero denominator): compared as text
        # equivalent expressions (math-verify): surds, reordered sums, sets, percentages, units
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
        ("\\boxed{1 + x^2}", "x^2+1", 1.0),
        ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", 1.0),
        ("\\boxed{50\\%}", "0.5", 1.0),
        ("\\boxed{12 \\text{ apples}}", "12", 1.0),
        ("\\boxed{2\\sqrt{3}}", "\\sqrt{8}", 0.0),
        ("\\boxed{\\frac{1}{2}", "\\sqrt{8}", 0.0),  # malformed LaTeX: no answer, no crash
    ],
)
def test_math_answer(reply, answer, want):
    assert math_answer([None], [reply], [answer]) == [want]


def test_math_answer_gives_no_credit_to_a_truncated_reply():
    assert math_answer([None, None], ["\\boxed{2}", "\\boxed{2}"], ["2", "2"], truncated=[True, False]) == [0.0, 1.0]


def test_final_math_answer_prefers_boxed_then_tags_then_numbers():
    assert final_math_answer("<answer>9</answer> \\boxed{\\{1\\}}") == "\\{1\\}"
    assert final_math_answer("<answer>a</answer> then 5") == "a"
    assert final_math_answer("3 and -2/3") == "-2/3"


def test_string_rewards():
    replies = [" 42\n", "42 apples", [{"role": "assistant", "content": "42"}]]
    assert exact_match([None] * 3, replies, ["42"] * 3) == [1.0, 0.0, 1.0]
    assert contains([None] * 3, replies, ["42"] * 3) == [1.0, 1.0, 1.0]
    assert regex([None] * 3, replies, pattern=r"\s*\d+\s*") == [1.0, 0.0, 1.0]


def test_think_answer_format():
    good = "<think>add them</think>\n<answer>5</answer>"
    bad = ["<think></think><answer>5</answer>", "<answer>5</answer>", good + " extra", "<think>x</think>"]
    assert think_answer_format([None] * 5, [good, *bad]) == [1.0, 0.0, 0.0, 0.0, 0.0]
