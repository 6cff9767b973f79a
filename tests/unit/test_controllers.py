"""Component state: controllers move their hyperparameter in the direction their rule says (hand-worked values)."""

import pytest
import torch

from unipo import algos, config
from unipo.config import ConfigError
from unipo.trainers import controllers
from unipo.trainers.common import build_algo


def _setup(recipe, *overrides):
    cfg = config.load(recipe, list(overrides))
    algo = build_algo(cfg)
    found = controllers.slots(cfg, algo)
    return algo, found, controllers.initial(algo, found)


def test_adaptive_entropy_coefficient_rises_below_target_and_falls_above():
    algo, found, values = _setup(
        "grpo", "algo.regularizers=[{name: adaptive_entropy, coef: 0.1, target: 0.5, delta: 0.02}]"
    )
    assert [s.name for s in found] == ["regularizers[0].coef"] and values == {"regularizers[0].coef": 0.1}
    assert algos.entry("regularizer", "adaptive_entropy").state.controller == "adaptive_entropy_coef"
    # H = 0.3 <= H* = 0.5: c <- 0.1 + 0.02; then H = 0.9 > H*: c <- 0.12 - 0.02
    up, metrics = controllers.after_step(found, values, {"entropy/token": 0.3}, 8)
    assert up["regularizers[0].coef"] == pytest.approx(0.12) and metrics == pytest.approx(
        {"ctrl/regularizers[0].coef": 0.12}
    )
    down, _ = controllers.after_step(found, up, {"entropy/token": 0.9}, 8)
    assert down["regularizers[0].coef"] == pytest.approx(0.10)
    # the next step's regularizer is bound to the new value
    bound = controllers.bind(algo, found, up)
    assert (
        bound.regularizers[0].keywords["coef"] == pytest.approx(0.12) and algo.regularizers[0].keywords["coef"] == 0.1
    )


def test_adaptive_kl_controller_follows_ziegler():
    algo, found, values = _setup(
        "grpo", "algo.kl.coef=0.1", "algo.kl.ctrl={name: kl_adaptive_ctrl, target: 0.05, horizon: 100}"
    )
    assert values == {"kl.coef": 0.1}
    # KL_obs = 2·target: e = clip(1, ±0.2) = 0.2; β <- 0.1·(1 + 0.2·10/100) = 0.102 (n_steps = 10 completions)
    up, _ = controllers.after_step(found, values, {"kl": 0.1}, 10)
    assert up["kl.coef"] == pytest.approx(0.102)
    # KL_obs = target leaves β unchanged (ALGORITHMS.md §13 K2); KL_obs = 0: e = -0.2, β <- 0.1·0.98
    assert controllers.after_step(found, values, {"kl": 0.05}, 10)[0]["kl.coef"] == pytest.approx(0.1)
    assert controllers.after_step(found, values, {"kl": 0.0}, 10)[0]["kl.coef"] == pytest.approx(0.098)
    assert controllers.bind(algo, found, up).kl_coef == pytest.approx(0.102)


def test_r2vpo_dual_and_epo_history():
    _, found, values = _setup("r2vpo", "algo.policy_loss.dual_coef=0.5", "algo.policy_loss.dual_lr=1.0")
    # λ <- max(0, 0.5 + 1·(0.21 - 0.01)) = 0.7; then mean (ρ-1)² = 0 pushes it down by δ = 0.01
    up, _ = controllers.after_step(found, values, {"ratio/sq_dev": 0.21}, 4)
    assert up["policy_loss.dual_coef"] == pytest.approx(0.7)
    assert controllers.after_step(found, up, {"ratio/sq_dev": 0.0}, 4)[0]["policy_loss.dual_coef"] == pytest.approx(
        0.69
    )
    _, found, values = _setup("grpo", "algo.regularizers=[{name: epo_smooth_recon, hist_momentum: 0.5}]")
    assert values == {"regularizers[0].entropy_hist": None}
    first, metrics = controllers.after_step(found, values, {"entropy/token": 2.0}, 4)
    assert first == {"regularizers[0].entropy_hist": 2.0}  # the first step starts the history
    assert controllers.after_step(found, first, {"entropy/token": 1.0}, 4)[0] == {"regularizers[0].entropy_hist": 1.5}


def test_every_stateful_component_names_a_registered_controller_and_its_hyperparameters():
    for e in algos.entries():
        if e.state is not None:
            assert e.state.controller in algos.names("controller")
            assert e.state.param in e.params and all(v in e.params for _, v in e.state.args)


def test_a_kl_controller_needs_a_starting_coefficient():
    cfg = config.load("grpo", ["algo.kl.ctrl={name: kl_adaptive_ctrl, target: 0.05, horizon: 100}"])
    with pytest.raises(ConfigError, match="initial algo.kl.coef > 0"):
        controllers.slots(cfg, build_algo(cfg))


def test_ref_sync_mixes_the_reference_towards_the_policy_every_tau_steps():
    ref_sync = algos.get("controller", "ref_sync")
    ref, policy = [torch.tensor([0.0, 1.0]), torch.tensor([[2.0]])], [torch.tensor([1.0, 3.0]), torch.tensor([[0.0]])]
    assert not ref_sync(ref, policy, 3, alpha=0.6, every=4)  # not a multiple of τ: untouched
    assert ref[0].tolist() == [0.0, 1.0]
    assert ref_sync(ref, policy, 8, alpha=0.6, every=4)  # θ_ref ← 0.6·θ + 0.4·θ_ref
    torch.testing.assert_close(ref[0], torch.tensor([0.6, 2.2]))
    torch.testing.assert_close(ref[1], torch.tensor([[0.8]]))
    with pytest.raises(ValueError, match="alpha"):
        ref_sync(ref, policy, 4, alpha=0.0, every=4)


def test_only_a_reference_mover_can_be_ref_sync():
    with pytest.raises(ConfigError, match="does not move the reference; use ref_sync"):
        config.load("grpo", ["algo.ref_sync={name: kl_adaptive_ctrl}"])
