"""The reward scorer: failures, timeouts, crashes and hostile code leave a run going, and are counted."""

import asyncio
import logging
import math
import re

import pytest

from tests.integration import rewards_for_tests as hostile
from unipo.rewards.scorer import RewardScorer, _group_chunks

ROWS = [{"prompt": "p0", "answer": "1"}, {"prompt": "p1", "answer": "2"}]
GROUPS = [0, 0, 1, 1]
TEXTS = ["a", "bb", "ccc", "skip"]


@pytest.fixture(autouse=True)
def _release():
    hostile.RELEASE.clear()
    yield
    hostile.RELEASE.set()  # let abandoned in-process threads finish


def score(scorer):
    return scorer(ROWS, GROUPS, TEXTS)


def test_values_and_none_left_out_of_the_sum():
    s = RewardScorer([hostile.length, hostile.sometimes_none], [1.0, 0.5])
    got = score(s)
    assert got[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert got[:3, 1].tolist() == [1.0, 1.0, 1.0] and math.isnan(got[3, 1])
    assert s.combine(got).tolist() == [1.5, 2.5, 3.5, 4.0]  # None is not scored 0 ... nor counted as an error
    assert s.take_errors() == {"reward/errors/length": 0.0, "reward/errors/sometimes_none": 0.0}


@pytest.mark.parametrize("bad", [hostile.explodes, hostile.too_few])
def test_a_failing_call_unscores_its_completions_and_is_counted_and_logged_once(bad, caplog):
    s = RewardScorer([hostile.length, bad], [1.0, 1.0])
    with caplog.at_level(logging.WARNING, logger="unipo"):
        first, second = score(s), score(s)
    for got in (first, second):  # every column NaN: the combined reward is NaN (advantage 0), never a partial sum
        assert got.isnan().all() and s.combine(got).isnan().all()
    assert s.failures == {"length": 0, bad.__name__: 2}
    assert s.take_errors()[f"reward/errors/{bad.__name__}"] == 8.0  # 2 calls x 4 completions
    assert s.take_errors()[f"reward/errors/{bad.__name__}"] == 0.0  # reset after reading
    logged = [r for r in caplog.records if bad.__name__ in r.getMessage()]
    assert len(logged) == 1 and "'p0'" in logged[0].getMessage() and "'a'" in logged[0].getMessage()


def test_a_call_that_never_returns_times_out_in_process():
    s = RewardScorer([hostile.blocks], [1.0], timeout_s=0.2)
    assert score(s).isnan().all()
    assert s.failures == {"blocks": 1}
    ok = RewardScorer([hostile.length], [1.0], timeout_s=0.2)
    assert score(ok)[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # the abandoned thread does not block later calls


def test_async_rewards_run_concurrently():
    """Each waits until the other has started: run one after the other they would both time out."""
    started = {"a": asyncio.Event(), "b": asyncio.Event()}  # bound to the scorer's loop on first use (3.10+)

    def make(me, other, value):
        async def fn(prompts, completions, **_):
            started[me].set()
            await started[other].wait()
            return [value] * len(completions)

        fn.__name__ = me
        return fn

    s = RewardScorer([make("a", "b", 1.0), make("b", "a", 2.0)], [1.0, 1.0], timeout_s=5)
    got = score(s)
    assert got[:, 0].tolist() == [1.0] * 4 and got[:, 1].tolist() == [2.0] * 4
    assert s.failures == {"a": 0, "b": 0}


def test_group_chunks_keep_whole_groups_in_order():
    assert _group_chunks([0, 0, 1, 1, 2, 2], 2) == [[0, 1, 2, 3], [4, 5]]
    assert _group_chunks([5, 5, 7], 4) == [[0, 1], [2]]


def test_a_lambda_cannot_go_to_workers():
    with pytest.raises(ValueError, match="worker process"):
        RewardScorer([lambda p, c, **_: [0.0] * len(c)], [1.0], workers=1)


@pytest.mark.slow
def test_workers_score_in_order_and_survive_hangs_and_crashes():
    s = RewardScorer([hostile.length], [1.0], timeout_s=20, workers=2)
    try:
        assert score(s)[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # two chunks, put back in order
        for bad in (hostile.sleeps, hostile.dies):
            s.fns, s.names, s.fn_names = [bad], [bad.__name__], [bad.__name__]
            s.failures, s.unscored = {bad.__name__: 0}, {bad.__name__: 0}
            s.timeout_s = 3
            assert score(s).isnan().all()
            assert s.failures == {bad.__name__: 1}
        s.fns, s.names, s.fn_names, s.timeout_s = [hostile.length], ["length"], ["length"], 20
        assert score(s)[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # a fresh pool after the kill
    finally:
        s.close()
    named = RewardScorer([hostile.length_and_parity], [1.0], workers=2, scores=[{"length": 1.0, "even": 1.0}])
    try:  # named scores from two workers, put back in order
        got = score(named)
        assert got[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0] and got[:3, 1].tolist() == [0.0, 1.0, 0.0]
    finally:
        named.close()


def test_named_scores_are_columns_of_their_own():
    s = RewardScorer(
        [hostile.length_and_parity, hostile.length], [2.0, 1.0], scores=[{"even": 0.5, "length": 1.0}, None]
    )
    assert s.names == ["length_and_parity/even", "length_and_parity/length", "length"]
    assert s.weights == [1.0, 2.0, 1.0]
    got = score(s)
    assert got[:3, 0].tolist() == [0.0, 1.0, 0.0] and math.isnan(got[3, 0])
    assert got[:, 1].tolist() == got[:, 2].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert s.combine(got).tolist() == [3.0, 7.0, 9.0, 12.0]  # 1·even + 2·length + 1·length


@pytest.mark.parametrize(
    ("scores", "message"),
    [(None, "declare them where the reward is configured: scores: {length: 1.0, even: 1.0}"),
     ([{"length": 1.0, "odd": 1.0}], "should return the named scores \\['length', 'odd'\\]")],
)  # fmt: skip
def test_named_scores_must_be_declared(scores, message, caplog):
    s = RewardScorer([hostile.length_and_parity], [1.0], scores=scores)
    with caplog.at_level(logging.WARNING, logger="unipo"):
        assert score(s).isnan().all()
    assert s.failures == {"length_and_parity": 1}
    assert any(re.search(message, r.getMessage()) for r in caplog.records)


def test_named_scores_from_the_config_feed_gdpo_by_name():
    from unipo.config import load
    from unipo.trainers.common import build_rewards

    path = "tests.integration.rewards_for_tests.length_and_parity"
    cfg = load("gdpo", [f"rewards=[{{_component_: {path}, scores: {{length: 1.0, even: 0.5}}}}]"])
    s = build_rewards(cfg, [])
    assert s.names == ["length_and_parity/length", "length_and_parity/even"] and s.weights == [1.0, 0.5]


def test_reward_config_by_name_with_arguments():
    from unipo.config import ConfigError, load
    from unipo.trainers.common import build_rewards

    cfg = load("grpo", ["rewards=[{name: regex, pattern: 'b+'}, {name: regex, pattern: 'a', weight: 2}]"])
    s = build_rewards(cfg, [])
    assert s.names == ["regex", "regex_2"] and s.weights == [1.0, 2.0]
    assert score(s).tolist() == [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        build_rewards(load("grpo", ["rewards=[{name: nope}]"]), [])
    with pytest.raises(ConfigError, match="rewards\\[0\\] \\(regex\\)"):
        build_rewards(load("grpo", ["rewards=[{name: regex, patern: x}]"]), [])


def test_a_dotted_reward_path_resolves_beside_the_working_directory(tmp_path, monkeypatch):
    import sys

    from unipo.trainers.common import import_object

    (tmp_path / "my_rewards_for_unipo.py").write_text("def brevity(prompts, completions, **_):\n    return [1.0]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    fn = import_object("my_rewards_for_unipo.brevity")
    assert fn(None, ["x"]) == [1.0]
    with pytest.raises(ValueError, match="cannot import 'no_such_module_here.fn'"):
        import_object("no_such_module_here.fn")
