"""Classic RL on gymnasium (ALGORITHMS.md §11, §13 C2's smoke test): PPO, MDPO, TRPO and MMD solve CartPole-v1; TRPO
and off-policy MDPO swing up Pendulum-v1."""

import pytest

from unipo.testbeds import classic

pytestmark = pytest.mark.slow
pytest.importorskip("gymnasium")


@pytest.mark.parametrize("method", ["ppo_classic", "mdpo", "trpo", "mmd"])
def test_cartpole_is_solved_within_the_budget(method):
    # 100k environment steps (rl-zoo's tuned PPO budget), seed 0: the greedy policy's mean return over 10 held-out
    # episodes reaches 475 (the solved threshold; 500 is the maximum), from ~20 at the start
    out = classic.train(method, "CartPole-v1", seed=0)
    assert sum(out["returns"][:20]) / 20 < 50
    assert classic.evaluate(out["policy"]) >= 475


@pytest.mark.parametrize(("method", "steps", "above"), [("a2c", 20_000, 200), ("reinforce_classic", 100_000, 50)])
def test_the_plain_policy_gradients_learn(method, steps, above):
    out = classic.train(method, "CartPole-v1", seed=0, settings=classic.settings_for(method, "CartPole-v1",
                                                                                    total_steps=steps))  # fmt: skip
    assert sum(out["returns"][:20]) / 20 < 50
    assert classic.evaluate(out["policy"]) > above


def test_verify_classic_prints_curves_and_rejects_unknown_methods(capsys):
    from unipo.cli import main

    assert main(["verify", "classic", "--methods", "a2c", "--steps", "2000"]) == 0
    out = capsys.readouterr().out
    assert "CartPole-v1, seed 0" in out and "a2c" in out and "greedy" in out
    assert main(["verify", "classic", "--methods", "ppo,a2c"]) == 2
    assert "--methods: unknown ppo" in capsys.readouterr().err
    assert main(["verify", "classic", "--methods", "mmd", "--env", "Pendulum-v1", "--steps", "4096"]) == 2
    assert "--methods: mmd on Pendulum-v1: mmd needs a categorical head" in capsys.readouterr().err


def test_off_policy_mdpo_swings_up_the_pendulum():
    # 10k environment steps (1k random first), seed 0: the greedy policy's mean return over 10 held-out episodes
    # rises from about −1200 (the random first episodes) to above −300 (measured: about −150)
    out = classic.train("mdpo_off", "Pendulum-v1", seed=0)
    assert sum(out["returns"][:5]) / 5 < -900
    assert classic.evaluate(out["policy"], "Pendulum-v1") > -300


def test_trpo_swings_up_the_pendulum_with_a_gaussian_head():
    # Pendulum's settings (4 envs x 1024 steps per iteration, gamma 0.9, 200k environment steps), seed 0: the natural
    # gradient step with its KL line search on a Gaussian head; the mean training return rises from about -1100 over
    # the first tenth of the episodes to about -160 over the last, and the greedy policy's mean return over 10 held-out
    # episodes reaches above -300 (measured: -132, in about 45 s)
    out = classic.train("trpo", "Pendulum-v1", seed=0)
    assert sum(out["returns"][:20]) / 20 < -900
    assert classic.evaluate(out["policy"], "Pendulum-v1") > -300


def test_verify_classic_refuses_off_policy_mdpo_on_discrete_actions(capsys):
    from unipo.cli import main

    assert main(["verify", "classic", "--methods", "mdpo_off", "--steps", "100"]) == 2
    assert "--methods: mdpo_off on CartPole-v1: mdpo_off needs a continuous action space" in capsys.readouterr().err
