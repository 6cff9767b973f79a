"""Environments for the tests, at module level so the trainer can import them by dotted path."""

import threading

from unipo.envs import Step

RELEASE = threading.Event()
"""Set by the tests' teardown so a hanging environment's thread ends."""


class Echo:
    """Never done: replies `obs <k>` after turn k (as a tool), reward 0.25 per turn."""

    role = "tool"

    def reset(self, row):
        self.k = 0

    def step(self, action):
        self.k += 1
        return Step(f"obs {self.k}", 0.25, False, {"state_key": self.k})


class Hangs:
    """Its second step blocks until the tests release it."""

    role = "user"

    def reset(self, row):
        self.turn = 0

    def step(self, action):
        self.turn += 1
        if self.turn > 1:
            RELEASE.wait(60)
        return Step("go on", 1.0, False, {})


class Raises:
    role = "user"

    def reset(self, row):
        pass

    def step(self, action):
        raise RuntimeError("the environment broke")


class Drifts(Echo):
    """Like Echo, but every reply of every instance carries a fresh number: the same actions get other answers (an
    environment that cannot be replayed)."""

    count = 0

    def step(self, action):
        Drifts.count += 1
        return Step(f"obs {Drifts.count}", 0.25, False, {"state_key": Drifts.count})


class EveryOtherFails(Echo):
    """Like Echo, but every second instance made raises at its first step (one branch of each pair fails)."""

    made = 0

    def __init__(self):
        EveryOtherFails.made += 1
        self.fails = EveryOtherFails.made % 2 == 0

    def step(self, action):
        if self.fails:
            raise RuntimeError("the environment broke")
        return super().step(action)


class Forgets(Echo):
    """Echo that forgets its previous reply at every step after the first (`info["forget"]`, ReSeek's context rule)."""

    def step(self, action):
        step = super().step(action)
        step.info["forget"] = self.k > 1
        return step


class Sevens:
    """The multi-turn toy task of tests/recipes/test_learning.py: `turns` turns, each answered "Again:"; a turn's
    reward is the share of 7s among its non-space characters (lucky7's reward) over `turns`, so the episode's reward,
    their sum, is the mean share over the turns (a turn cut by the token budget scores nothing); the state key is the
    turn (GiGPO's anchor states)."""

    role = "user"

    def __init__(self, turns: int = 2):
        self.turns = turns

    def reset(self, row):
        self.k = 0

    def step(self, action):
        chars = [c for c in action if not c.isspace()]
        share = sum(c == "7" for c in chars) / len(chars) if chars else 0.0
        self.k += 1
        done = self.k >= self.turns
        said = "Good. Again:" if share else "Again:"
        return Step(None if done else said, share / self.turns, done, {"state_key": (self.k, said)})
