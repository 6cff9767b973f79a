"""The environment protocol, tool calling and the built-in environments, on hand-written actions."""

import math
import time

import pytest

from unipo.envs import EnvSettings, Step, ToolEnv, ToolError, parse_call, resolve, run_with_limit
from unipo.envs.builtin import (
    BM25,
    CalculatorEnv,
    GuessNumberEnv,
    PythonEnv,
    SearchEnv,
    SelfCorrectEnv,
    calc,
    guess_rows,
    search_corpus,
)


def test_parse_call_tagged_and_json():
    assert parse_call("Let me add. <calc> 12 + 7 </calc>", ["calc"]) == ("calc", "12 + 7")
    assert parse_call("the answer is 19", ["calc"]) is None
    assert parse_call("<search>x</search>", ["calc"]) is None  # not a tool of this environment
    # the first call counts
    assert parse_call("<python>print(1)</python> <calc>2</calc>", ["calc", "python"]) == ("python", "print(1)")
    with pytest.raises(ToolError, match="without </calc>"):
        parse_call("<calc>12+7", ["calc"])
    call = '<tool_call>{"name": "calc", "arguments": "3*4"}</tool_call>'
    assert parse_call(call, ["calc"], "json") == ("calc", "3*4")
    call = '<tool_call>{"name": "calc", "arguments": {"expression": "3*4"}}</tool_call>'
    assert parse_call(call, ["calc"], "json") == ("calc", '{"expression": "3*4"}')
    with pytest.raises(ToolError, match="malformed tool call"):
        parse_call("<tool_call>{name: calc}</tool_call>", ["calc"], "json")
    with pytest.raises(ToolError, match="unknown tool 'web'"):
        parse_call('<tool_call>{"name": "web"}</tool_call>', ["calc"], "json")
    with pytest.raises(ToolError, match="no closing"):
        parse_call('<tool_call>{"name": "calc"}', ["calc"], "json")


def test_calc_evaluates_arithmetic_only():
    assert calc("37+48-19") == "66" and calc("(3 + 4) * 5") == "35" and calc("7/2") == "3.5" and calc("-3*2") == "-6"
    assert calc("12 × 3 ÷ 4") == "9"
    for bad in ("2**99999", "__import__('os')", "x + 1", "1 +"):
        with pytest.raises(ValueError):
            calc(bad)


def test_calculator_env_runs_a_tool_then_scores_the_final_answer():
    env = CalculatorEnv()
    env.reset({"prompt": "…", "answer": "66"})
    step = env.step("First <calc>37+48-19</calc>")
    assert step == Step("<result>66</result>", 0.0, False, {"tool_calls": 1})
    bad = env.step("<calc>37 +* 2</calc>")
    assert bad.observation.startswith("<error>") and not bad.done and bad.info == {"tool_calls": 1, "tool_errors": 1}
    assert env.step("So 66.") == Step(None, 1.0, True, {"answered": True})
    assert env.step("It is 65").reward == 0.0


def test_json_calls_and_a_hanging_tool_gets_an_error_observation():
    class Slow(ToolEnv):
        tools = {"wait": lambda arg: time.sleep(float(arg)) or "woke"}

        def answer_reward(self, text):
            return 0.0

    env = Slow(call_format="json", tool_timeout_s=0.2)
    env.reset({})
    step = env.step('<tool_call>{"name": "wait", "arguments": "30"}</tool_call>')
    assert "time limit of 0.2 s" in step.observation and step.info["tool_errors"] == 1 and not step.done
    assert env.step('<tool_call>{"name": "wait", "arguments": "0"}</tool_call>').observation == "<result>woke</result>"
    with pytest.raises(ValueError, match="call_format"):
        Slow(call_format="xml")


def test_run_with_limit_reports_what_the_tool_raised():
    with pytest.raises(ToolError, match="ZeroDivisionError"):
        run_with_limit(lambda: 1 / 0, 1.0)


def test_python_env_runs_code_in_the_sandbox():
    env = PythonEnv()
    env.reset({"prompt": "…", "answer": "285"})
    assert env.step("<python>print(sum(i * i for i in range(1, 10)))</python>").observation == "<result>285</result>"
    failed = env.step("<python>raise KeyError('k')</python>")
    assert failed.observation.startswith("<error>") and "KeyError" in failed.observation
    assert env.step("285").reward == 1.0


def test_guess_number_feedback_and_state_keys():
    env = GuessNumberEnv(high=20)
    env.reset({"secret": 13})
    assert env.step("10") == Step("Higher.", 0.0, False, {"state_key": (11, 20)})
    assert env.step("My guess: 15") == Step("Lower.", 0.0, False, {"state_key": (11, 14)})
    assert env.step("twelve").observation == "Reply with only a number from 1 to 20."  # state unchanged
    assert env.step("13") == Step(None, 1.0, True, {})
    assert len({r["episode"] for r in guess_rows(n=50)}) == 50


def test_self_correct_turn_rewards_sum_to_the_second_attempt():
    for first, second in (("12", "12"), ("12", "13"), ("13", "12"), ("13", "13")):
        env = SelfCorrectEnv()
        env.reset({"answer": "12"})
        a, b = env.step(first), env.step(second)
        assert not a.done and b.done and "There might be an error" in a.observation
        assert a.reward == float(first == "12") and a.reward + b.reward == float(second == "12")


def test_resolve_merges_the_task_environment_with_the_config():
    from unipo.config.schema import EnvConfig

    assert resolve(None, None) is None
    make, settings = resolve(None, {"name": "guess_number", "max_turns": 6, "high": 10})
    assert settings == EnvSettings(max_turns=6) and make().high == 10
    make, settings = resolve(EnvConfig(max_turns=3, timeout_s=5), {"name": "guess_number", "max_turns": 6, "high": 10})
    assert settings == EnvSettings(max_turns=3, timeout_s=5.0) and make().high == 10
    make, settings = resolve(EnvConfig(name="calculator"), {"name": "guess_number", "max_turns": 6, "high": 10})
    assert isinstance(make(), CalculatorEnv) and settings.max_turns == 6  # the task's keywords are not calculator's
    make, _ = resolve(EnvConfig(**{"_component_": "unipo.envs.builtin.GuessNumberEnv", "high": 7}), None)
    assert make().high == 7
    with pytest.raises(ValueError, match="unknown environment 'chess'"):
        resolve(EnvConfig(name="chess"), None)
    with pytest.raises(ValueError, match="unexpected keyword argument 'depth'"):
        resolve(EnvConfig(name="guess_number", depth=3), None)
    with pytest.raises(ValueError, match="this task has none of its own"):
        resolve(EnvConfig(max_turns=2), None)
    with pytest.raises(ValueError, match="cannot import"):
        resolve(EnvConfig(**{"_component_": "nowhere.Env"}), None)


def test_bm25_hand_worked_and_never_zero_for_a_common_term():
    docs = ["berlin is the capital of germany", "paris is the capital of france", "rome is in italy",
            "madrid is in spain"]  # fmt: skip
    index = BM25(docs)
    # N = 4, avg length 5; "capital" and "of" are in 2 documents: IDF ln(1 + 2.5/2.5) = ln 2 (rank-bm25 gives 0);
    # "france" in 1: ln(1 + 3.5/1.5). A 6-token document with tf = 1: weight IDF·2.5/(1 + 1.5·(0.25 + 0.75·6/5))
    w = 2.5 / (1 + 1.5 * (0.25 + 0.75 * 6 / 5))
    want = [2 * math.log(2) * w, (2 * math.log(2) + math.log(1 + 3.5 / 1.5)) * w, 0.0, 0.0]
    assert index.scores("capital of France?") == pytest.approx(want)
    assert index.top("capital of france", 1) == [docs[1]] and index.top("tokyo", 2) == []


def test_search_env_finds_the_passage_of_each_question():
    passage, question, answer = search_corpus()[7]
    env = SearchEnv(top_k=1)
    env.reset({"answer": answer})
    assert env.step(f"<search>{question}</search>").observation == f"<result>{passage}</result>"
    assert env.step(f"It is {answer}.").reward == 1.0
    assert len({q for _, q, _ in search_corpus()}) == len(search_corpus())  # every question is its own
