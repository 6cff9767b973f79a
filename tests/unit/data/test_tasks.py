import pytest

from unipo.data.tasks import PromptStream, arithmetic, file_task, get_task, lucky7
from unipo.rewards import (
    bare_answer,
    call_reward,
    contains_answer,
    final_answer,
    only_number,
    reward_inputs,
    share_of_target,
)


def test_arithmetic_split_is_fixed_disjoint_and_complete():
    task = arithmetic()
    assert len(task.heldout) == 100 and len(task.train) == 51 * 51 - 100
    key = lambda r: r["prompt"][0]["content"]  # noqa: E731
    assert not {key(r) for r in task.heldout} & {key(r) for r in task.train}
    assert [key(r) for r in arithmetic().heldout] == [key(r) for r in task.heldout]
    row = task.heldout[0]
    a, b = map(int, key(row).removeprefix("What is ").split("?")[0].split("+"))
    assert row["answer"] == str(a + b) and 0 <= a <= 50 and 0 <= b <= 50


def test_contains_answer_matches_whole_numbers():
    got = contains_answer(None, ["42", "The answer is 42.", "142", "4 2", "-42", ""], ["42"] * 6)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_rewards_accept_chat_completions_as_trl_passes_them():
    chat = [[{"role": "assistant", "content": "It is 42."}], [{"role": "assistant", "content": "41"}]]
    assert contains_answer(None, chat, ["42", "42"]) == [1.0, 0.0]
    assert only_number(None, chat) == [0.0, 1.0]
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        contains_answer(None, [42], ["42"])


def test_final_answer_scores_what_the_prompt_asks():
    # the replies the issue quotes: a repeated equation cut off at the budget, a hedge whose last number is wrong
    replies = ["54", "9 + 45 = 54", "9 + 45 = 54\n9 + 45 = 54\n9 +", "0 + 31 = 31 ... So 0 + 31 = 32",
               "9 + 45 = 54. 54", "The answer is 54.", "054", "54 or 55", "", "54"]  # fmt: skip
    truncated = [False, False, True, False, False, False, False, False, False, True]
    answers = ["54"] * 10
    answers[3] = "31"
    got = final_answer(None, replies, answers, truncated=truncated)
    # right | a+b=c (3 numbers) | cut off | last number 32 != 31 | 4 numbers | right | 054 == 54 | last is 55 |
    # no number | cut off (a bare right number still has no credit when the budget ended it)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    # unknown truncation counts as finished; max_numbers=None admits shown work
    assert final_answer(None, ["9 + 45 = 54. 54"], ["54"], max_numbers=None) == [1.0]
    assert final_answer(None, ["9 + 45 = 54\n9 + 45 = 54\n9 +"], ["54"]) == [0.0]  # last number 9


def test_the_arithmetic_task_trains_on_correctness_and_format_and_measures_correctness():
    task = arithmetic()
    assert task.reward is final_answer
    assert task.rewards == [(final_answer, 1.0), (bare_answer, 0.2)]
    assert task.other_rewards() == {"bare_answer": bare_answer}
    # the format credit goes only to the right bare number: a bare wrong number earns nothing
    replies = ["54", "55", "9 + 45 = 54", " 54. ", "54"]
    assert bare_answer(None, replies, ["54"] * 5, truncated=[False] * 4 + [True]) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_reward_functions_get_truncation_and_token_ids_as_columns():
    rows = [{"prompt": "p0", "answer": "3"}, {"prompt": "p1", "answer": "4"}]
    prompts, cols = reward_inputs(rows, [0, 0, 1], [False, True, False], [[5, 2], [7], [9]])
    assert prompts == ["p0", "p0", "p1"]
    assert cols == {"answer": ["3", "3", "4"], "truncated": [False, True, False], "completion_ids": [[5, 2], [7], [9]]}

    def plain(prompts, completions, answer):  # names only what it uses: gets only that
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    def trl_style(prompts, completions, **kwargs):  # takes **kwargs: gets every column
        return [float(len(kwargs["completion_ids"][i])) for i in range(len(completions))]

    assert call_reward(plain, prompts, ["3", "3", "5"], cols) == [1.0, 1.0, 0.0]
    assert call_reward(trl_style, prompts, ["a", "b", "c"], cols) == [2.0, 1.0, 1.0]
    assert call_reward(final_answer, prompts, ["3", "3", "4"], cols) == [1.0, 0.0, 1.0]


def test_only_number():
    assert only_number(None, ["42", " 42. ", "42 apples", "-3", ""]) == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_share_of_target():
    # "77 7" -> 3 of 3 non-space chars; "7a" -> 1/2; "" -> 0
    assert share_of_target(None, ["77 7", "7a", "", "xyz"], ["7"] * 4) == [1.0, 0.5, 0.0, 0.0]
    assert lucky7().reward is share_of_target and lucky7().rewards == [(share_of_target, 1.0)]


def test_prompt_stream_is_reproducible_from_its_state():
    rows = [{"prompt": str(i)} for i in range(5)]
    a = PromptStream(rows, seed=3)
    first = a.take(7)  # crosses an epoch boundary
    assert sorted(r["prompt"] for r in first[:5]) == [str(i) for i in range(5)]
    state = a.state()
    assert state == {"epoch": 1, "index": 2}
    rest = a.take(6)
    b = PromptStream(rows, seed=3, **state)
    assert b.take(6) == rest
    assert PromptStream(rows, seed=3).take(7) == first


def test_a_task_file_reports_bad_rows_by_line_and_skips_a_few(tmp_path, caplog):
    from unipo.config import ConfigError, DataConfig

    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?"}\n')
    with pytest.raises(ConfigError, match=r"1 of 2 rows are bad .*t.jsonl:2: missing column\(s\) answer"):
        file_task(str(path))
    good = [f'{{"prompt": "{i}+1?", "answer": {i + 1}}}' for i in range(18)]
    path.write_text("\n".join([*good[:5], "{not json", *good[5:], '{"prompt": [1, 2], "answer": "3"}']) + "\n")
    with caplog.at_level("WARNING", logger="unipo"):
        task = file_task(str(path), DataConfig(max_bad_frac=0.2))  # 2 of 20 bad: skipped, each logged
    logged = [r.getMessage() for r in caplog.records]
    assert any("t.jsonl:6: not valid JSON" in m for m in logged)
    assert any("t.jsonl:20: prompt must be text or a list of chat messages" in m for m in logged)
    assert len(task.train) + len(task.heldout) == 18 and len(task.heldout) == 1  # 5% of 18, seeded
    # numbers become text; a plain-text prompt becomes one user message (the model's chat template applies)
    assert task.train[0] == {"prompt": [{"role": "user", "content": "0+1?"}], "answer": "1"}
    assert file_task(str(path), DataConfig(max_bad_frac=0.2)).heldout == task.heldout  # the split is fixed
    assert len(file_task(str(path), DataConfig(max_bad_frac=0.2, eval_frac=0)).train) == 18


def test_a_task_file_takes_its_split_column_an_eval_file_and_mapped_columns(tmp_path):
    from unipo.config import DataConfig

    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "1+1?", "answer": "2", "split": "test"}\n{"prompt": "2+2?", "answer": "4"}\n')
    task = get_task(str(path))
    assert [r["answer"] for r in task.heldout] == ["2"] and [r["answer"] for r in task.train] == ["4"]
    csv_path, held = tmp_path / "t.csv", tmp_path / "held.csv"
    csv_path.write_text("question,solution,level\nWhat is 3+4?,7,easy\nWhat is 5+5?,10,hard\n")
    held.write_text("question,solution,level\nWhat is 1+2?,3,easy\n")
    mapped = DataConfig(prompt_field="question", answer_field="solution", eval_path=str(held), chat=False)
    task = get_task(str(csv_path), mapped)  # data.chat=false: the prompt stays raw text (TRL's standard format)
    assert task.train == [{"prompt": "What is 3+4?", "answer": "7", "level": "easy"},
                          {"prompt": "What is 5+5?", "answer": "10", "level": "hard"}]  # fmt: skip
    assert task.heldout == [{"prompt": "What is 1+2?", "answer": "3", "level": "easy"}]
    assert task.reward([None, None], ["The sum is 7.", "\\boxed{10}"], ["7", "10"]) == [1.0, 1.0]


def test_a_parquet_task_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "t.parquet"
    datasets.Dataset.from_list([{"prompt": f"{i}+0?", "answer": str(i)} for i in range(4)]).to_parquet(str(path))
    task = get_task(str(path))
    assert sorted(r["answer"] for r in task.train + task.heldout) == ["0", "1", "2", "3"]


def test_unknown_task():
    names = "arithmetic, calculator, code, countdown, critique, gsm_style, guess_number, json_struct, lucky7, python, "
    names += "reseek, search, self_correct"
    with pytest.raises(KeyError, match=f"built-in tasks: {names}"):
        get_task("chess")


def test_a_datasets_source_by_name_and_split(tmp_path):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "mydata"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"q": ["1+1?", "2+2?", "3+3?"], "a": [2, 4, 6]}), folder / "data" / "train-0.parquet")
    pq.write_table(pa.table({"q": ["5+5?"], "a": [10]}), folder / "data" / "test-0.parquet")
    from unipo.config import ConfigError, DataConfig

    data = DataConfig(prompt_field="q", answer_field="a", eval_path=f"hf:{folder}:test")
    task = get_task(f"hf:{folder}", data)
    assert [r["answer"] for r in task.train] == ["2", "4", "6"] and [r["answer"] for r in task.heldout] == ["10"]
    with pytest.raises(ConfigError, match="cannot load .*split nope"):
        get_task(f"hf:{folder}:nope", data)
