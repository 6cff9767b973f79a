"""Reconstructions (rule R2): g2rpo_recon, a_grae_recon, copo_recon; one-time warning; §13 V7."""

import logging
import math
from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos
from unipo.algos import registry

grpo = algos.get("advantage", "grpo")
g2rpo = algos.get("advantage", "g2rpo_recon")
a_grae = algos.get("advantage", "a_grae_recon")
copo = algos.get("advantage", "copo_recon")

NAN = float("nan")
PROPS = settings(max_examples=30, deadline=None, derandomize=True)
PHI_INV = NormalDist().inv_cdf


def t(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("name", ["g2rpo_recon", "a_grae_recon", "copo_recon"])
def test_reconstructions_warn_once(name, monkeypatch, caplog):
    monkeypatch.setattr(registry, "_WARNED", set())
    fn = algos.get("advantage", name)
    with caplog.at_level(logging.WARNING, logger="unipo.algos"):
        fn(t([1.0, 0.0]), torch.tensor([0, 0]))
        fn(t([1.0, 0.0]), torch.tensor([0, 0]))
    records = [r for r in caplog.records if name in r.getMessage()]
    assert len(records) == 1 and "not the published rule" in records[0].getMessage()
    assert fn.__doc__.startswith("Reconstruction of ") and "from its abstract; not the published rule" in fn.__doc__


def test_g2rpo_by_hand():
    # group 3, distinct rewards [.3, -1, 2, .5]: ranks 2, 1, 4, 3 -> q = (rank - .5)/4 = .375, .125, .875, .625
    # -> Φ⁻¹: -.3186, -1.1503, 1.1503, .3186.
    # group 8, [1, 1, 0]: the two 1s share rank 2.5 -> q = 2/3 -> .4307; the 0 has q = 1/6 -> -.9674.
    # group -1 is a singleton (q = .5 -> 0); group 5 has equal rewards (q = .5 -> 0); NaN -> 0.
    rewards = t([0.3, -1.0, 2.0, 0.5, 1.0, 1.0, 0.0, 4.0, 2.0, 2.0, NAN])
    groups = torch.tensor([3, 3, 3, 3, 8, 8, 8, -1, 5, 5, 5])
    q = [0.375, 0.125, 0.875, 0.625, 2 / 3, 2 / 3, 1 / 6]
    expected = t([PHI_INV(x) for x in q] + [0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(g2rpo(rewards, groups), expected)


@PROPS
@given(
    st.lists(st.integers(-50, 50), min_size=1, max_size=9, unique=True),
    st.lists(st.integers(-50, 50), min_size=1, max_size=9, unique=True),
)
def test_v7_g2rpo_distinct_rewards_give_normal_quantiles(a, b):
    rewards = t([x / 4 for x in a + b])
    groups = torch.tensor([2] * len(a) + [-7] * len(b))
    adv = g2rpo(rewards, groups)
    for g, size in ((2, len(a)), (-7, len(b))):
        quantiles = t([PHI_INV((k + 0.5) / size) for k in range(size)])
        torch.testing.assert_close(adv[groups == g].sort().values, quantiles)
        torch.testing.assert_close(adv[groups == g].sum(), torch.tensor(0.0, dtype=torch.float64), atol=1e-9, rtol=0)
    # only ranks matter: a strictly increasing transform leaves A unchanged
    torch.testing.assert_close(g2rpo(rewards**3 + rewards, groups), adv)


# group 0: {1, 0, 0, 0} (p = .25, z = 1.5, -.5, -.5, -.5); group 5: {1, 1, 0, 0} (p = .5, z = ±sqrt(3)/2).
AG_REWARDS = t([1, 0, 0, 0, 1, 1, 0, 0])
AG_GROUPS = torch.tensor([0, 0, 0, 0, 5, 5, 5, 5])


def test_a_grae_by_hand():
    # progress 0: μ = .75, c = 2 -> a = 1.5, b = .5. w(.25) = (1/3)^1.5·3^.5 = 1/3; w(.5) = (2/3)^1.5·2^.5,
    # and w(.5)·sqrt(3)/2 = 2/3. Positive advantages are scaled by λ = .8.
    adv = a_grae(AG_REWARDS, AG_GROUPS, eps=0.0)
    torch.testing.assert_close(adv, t([0.4, -1 / 6, -1 / 6, -1 / 6, 0.8 * 2 / 3, 0.8 * 2 / 3, -2 / 3, -2 / 3]))
    # progress 1: μ = .25 -> w(.25) = 1 (the peak), w(.5) unchanged by symmetry.
    adv = a_grae(AG_REWARDS, AG_GROUPS, eps=0.0, progress=1.0)
    torch.testing.assert_close(adv, t([1.2, -0.5, -0.5, -0.5, 0.8 * 2 / 3, 0.8 * 2 / 3, -2 / 3, -2 / 3]))
    # progress .5: μ = .5, a = b = 1 -> w(p) = 4p(1 - p): w(.25) = .75, w(.5) = 1.
    s = math.sqrt(3) / 2
    adv = a_grae(AG_REWARDS, AG_GROUPS, eps=0.0, progress=0.5, pos_scale=1.0)
    torch.testing.assert_close(adv, t([1.125, -0.375, -0.375, -0.375, s, s, -s, -s]))


@pytest.mark.parametrize(
    "kwargs,name",
    [({"progress": 1.5}, "progress"), ({"pos_scale": 0.0}, "pos_scale"), ({"mode_start": 1.0}, "mode_start")],
)
def test_a_grae_rejects_out_of_range(kwargs, name):
    with pytest.raises(ValueError, match=name):
        a_grae(AG_REWARDS, AG_GROUPS, **kwargs)


@PROPS
@given(st.lists(st.integers(0, 1).map(float), min_size=8, max_size=8), st.floats(0.0, 1.0))
def test_a_grae_keeps_signs_and_never_amplifies(values, progress):
    rewards = t(values)
    adv, base = a_grae(rewards, AG_GROUPS, progress=progress), grpo(rewards, AG_GROUPS)
    assert bool((torch.sign(adv) == torch.sign(base)).all()) and bool((adv.abs() <= base.abs() + 1e-12).all())


def test_copo_by_hand():
    # c = [1, 0, 2/3] for groups 4 {1,1,1}, -3 {0,0,0}, 9 {1,0,1}: mean 5/9, squared deviations
    # 16/81 + 25/81 + 1/81 = 42/81, sample var 21/81 -> std sqrt(21)/9. A^glob = (c - 5/9)/std.
    # Group 9: H = -(2/3 ln 2/3 + 1/3 ln 1/3), w = H/ln 3; z = 1/sqrt(3), -2/sqrt(3), 1/sqrt(3).
    # All-agree groups have H = 0, so they get A^glob only.
    rewards = t([1, 1, 1, 0, 0, 0, 1, 0, 1])
    groups = torch.tensor([4, 4, 4, -3, -3, -3, 9, 9, 9])
    std_c = math.sqrt(21) / 9
    glob = [(1 - 5 / 9) / std_c, (0 - 5 / 9) / std_c, (2 / 3 - 5 / 9) / std_c]
    w = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(3)
    z = 1 / math.sqrt(3)
    mixed = [w * z + (1 - w) * glob[2], w * -2 * z + (1 - w) * glob[2]]
    expected = t([glob[0]] * 3 + [glob[1]] * 3 + [mixed[0], mixed[1], mixed[0]])
    torch.testing.assert_close(copo(rewards, groups, eps=0.0), expected)


def test_copo_binary_pair_is_pure_grpo():
    # a group of two with one success: H = ln 2 = log G, so w = 1 and A = the grpo z-score
    rewards, groups = t([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(copo(rewards, groups)[:2], grpo(rewards, groups)[:2])
