"""Reward functions in Ray actors (`dist.ray=true`, rewards/ray_actors.py) on a local Ray with 2 CPUs."""

import json

import pytest

from tests.integration import rewards_for_tests as hostile
from unipo.cli import main
from unipo.rewards.scorer import RewardScorer

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROWS = [{"prompt": "p0", "answer": "1"}, {"prompt": "p1", "answer": "2"}]
GROUPS = [0, 0, 1, 1]
TEXTS = ["a", "bb", "ccc", "skip"]
LENGTH = "{_component_: tests.integration.rewards_for_tests.reply_length}"


def test_a_run_scored_by_ray_actors_is_the_run_scored_in_process(tiny_model_dir, tmp_path):
    # asynchronous rollouts: each batch is scored (in the actors) while the producer samples the next one
    args = ["train", "grpo", f"model.path={tiny_model_dir}", "task=lucky7", "model.autocast=off", "train.max_steps=3",
            "rollout.max_staleness=1", "rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=2",
            "train.prompts_per_step=2", "log.progress=false", "eval.show_replies=0", f"rewards=[{LENGTH}]"]  # fmt: skip
    assert main([*args, f"output_dir={tmp_path / 'local'}"]) == 0
    assert main([*args, f"output_dir={tmp_path / 'ray'}", "dist.ray=true", "reward.workers=2"]) == 0
    assert not ray.is_initialized()  # the Ray the run started is shut down with it
    local, actors = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
                     for r in ("local", "ray"))  # fmt: skip
    for a, b in zip(local, actors, strict=True):
        for key in ("reward/mean", "reward/std", "loss", "grad_norm", "eval/accuracy", "rollout/version_lag"):
            assert a.get(key) == b.get(key), key


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _scorer(fns, **kw):
    return RewardScorer(fns, [1.0] * len(fns), timeout_s=20, workers=2, ray=True, **kw)


def test_actors_score_in_order_and_report_what_the_function_raised(local_ray):
    s = _scorer([hostile.length, hostile.explodes])
    try:
        got = s(ROWS, GROUPS, TEXTS)  # two actors, one prompt group each, put back in order
        assert got[:, 0].isnan().all() and got[:, 1].isnan().all()  # a failed call unscores its completions
        assert s.failures == {"length": 0, "explodes": 1}
        error = s._run_all(["p0"], ["a"], {}, [0])[1]
        assert isinstance(error, RuntimeError) and str(error) == "this reward function always fails"  # its own
    finally:
        s.close()
    assert ray.is_initialized()  # a Ray the scorer did not start is left running
    named = _scorer([hostile.length_and_parity], scores=[{"length": 1.0, "even": 1.0}])
    try:
        got = named(ROWS, GROUPS, TEXTS)
        assert got[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0] and got[:3, 1].tolist() == [0.0, 1.0, 0.0]
    finally:
        named.close()


def test_a_hanging_or_dying_actor_fails_only_its_call(local_ray):
    # the limit covers the whole batch: after the hang, the next function's fresh actors must start within it too
    # (over 3 s once on a loaded CI machine), and a death is reported only when Ray notices it (also over 3 s once);
    # the hanging function sleeps an hour, so it reaches any of these limits
    cases = ((hostile.sleeps, 20, "no result within reward.timeout_s=20"), (hostile.dies, 60, "Ray actor died"))
    for bad, timeout_s, reason in cases:
        s = _scorer([bad, hostile.length])
        s.timeout_s = timeout_s
        try:
            results = s._run_all(["p0", "p1"], ["a", "bb"], {}, [0, 1])
            assert reason in str(results[0]), results[0]
            assert results[1] == [1.0, 2.0]  # the next function of the batch runs, on fresh actors
        finally:
            s.close()
