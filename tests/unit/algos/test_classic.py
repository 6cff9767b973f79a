"""Classic methods (ALGORITHMS.md §11, §13 C2): each is the policy term of the LLM components on one transition."""

import math

import pytest
import torch

from unipo import algos
from unipo.algos.classic import adapt_kl_beta, categorical_kl, conjugate_gradient, trust_region_step
from unipo.algos.critics import _gae
from unipo.testbeds.classic import gae

METHODS = ["ppo_classic", "mdpo", "ppo_kl_adaptive", "a2c", "reinforce_classic", "trpo"]


def test_every_method_has_the_a2c_gradient_at_ratio_one():
    # §13 C2: on the first minibatch π_θ = π_old, so ρ = 1, no clip is active and both KL terms have zero gradient
    # (KL(π_θ‖π_old) and KL(π_old‖π_θ) are minimal at π_θ = π_old): every method's gradient is −A·∇log π
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 3, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 3, (6,), generator=g)
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    grads = {}
    for name in METHODS:
        logits = theta.clone().requires_grad_(True)
        logp = torch.log_softmax(logits, -1).gather(1, actions[:, None])[:, 0]
        loss, _ = algos.get("classic", name)(logp, logp.detach(), adv, logits=logits, old_logits=theta.clone())
        (grads[name],) = torch.autograd.grad(loss.mean(), logits)
    # a2c's own by hand: ∂/∂logits of mean_i(−A_i·log softmax(θ_i)[a_i]) = −A_i·(onehot(a_i) − softmax(θ_i))/B
    by_hand = -adv[:, None] * (torch.nn.functional.one_hot(actions, 3) - torch.softmax(theta, -1)) / 6
    torch.testing.assert_close(grads["a2c"], by_hand, atol=1e-12, rtol=0)
    for name in METHODS:
        torch.testing.assert_close(grads[name], grads["a2c"], atol=1e-12, rtol=0)
    assert float(grads["a2c"].abs().max()) > 0.01


def test_adaptive_beta_halves_and_doubles_exactly_past_its_thresholds():
    target = 0.01
    assert adapt_kl_beta(1.0, target / 1.5, target) == 1.0  # at the threshold: unchanged
    assert adapt_kl_beta(1.0, target / 1.5 - 1e-9, target) == 0.5
    assert adapt_kl_beta(1.0, 1.5 * target, target) == 1.0
    assert adapt_kl_beta(1.0, 1.5 * target + 1e-9, target) == 2.0
    assert adapt_kl_beta(3.0, target, target) == 3.0


def test_mdpo_anneals_its_kl_coefficient_as_the_official_schedule():
    # with A = 0 and ρ = 1 the loss is (1/t_k)·KL(π_θ‖π_k), t_k = 1 − (k − 1)/K: 1/(1 + 1/K) at k = 0, K/2 at k = K − 1
    logits, old = torch.tensor([[0.5, -0.5, 0.0]]), torch.tensor([[0.0, 0.0, 0.3]])
    kl = float(categorical_kl(logits, old))
    lp = torch.log_softmax(logits, -1)[:, :1][:, 0]
    mdpo = algos.get("classic", "mdpo")
    for k, coef in ((0, 1 / (1 + 1 / 10)), (9, 10 / 2)):
        loss, _ = mdpo(lp, lp, torch.zeros(1), logits=logits, old_logits=old, progress=k / 10, iterations=10)
        assert float(loss) == pytest.approx(coef * kl, rel=1e-6)
    # a Gaussian head (no logits): the sampled estimate ρ·log ρ − ρ + 1, 0 at ρ = 1
    loss, _ = mdpo(lp, lp, torch.zeros(1), progress=0.5, iterations=10)
    assert float(loss) == 0.0


def test_gae_with_episode_ends_by_hand_and_as_the_llm_gae():
    # γ = λ = 1 and a zero critic: each step's advantage is the rest of its episode's reward (the Monte Carlo return)
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    dones = torch.tensor([[0.0], [1.0], [0.0], [0.0]])
    adv = gae(rewards, torch.zeros(4, 1), dones, torch.zeros(1), gamma=1.0, lam=1.0)
    assert adv[:, 0].tolist() == [3.0, 2.0, 7.0, 4.0]
    # one episode (no end inside): the same numbers as the LLM trainers' GAE over a completion (unipo.algos.critics)
    g = torch.Generator().manual_seed(0)
    r, v, last = torch.randn(7, 1, generator=g), torch.randn(7, 1, generator=g), torch.randn(1, generator=g)
    ours = gae(r, v, torch.zeros(7, 1), last, gamma=0.9, lam=0.8)[:, 0]
    llm, _ = _gae(r.T, torch.cat([v[:, 0], last])[None], torch.ones(1, 7), last, 0.9, 0.8)
    torch.testing.assert_close(ours, llm[0], atol=1e-6, rtol=0)


def test_gaussian_kl_estimate_is_unbiased_for_kl_old_to_new():
    # a ∼ π_old = N(0, 1), π_θ = N(.5, 1.2²): E[ρ − 1 − log ρ] = KL(π_old‖π_θ) = log(1.2) + (1 + .25)/(2·1.44) − ½
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400_000, generator=g, dtype=torch.float64)
    old, new = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(0.5, 1.2)
    logp, old_logp = new.log_prob(a), old.log_prob(a)
    exact = float(torch.distributions.kl_divergence(old, new))
    assert exact == pytest.approx(math.log(1.2) + 1.25 / 2.88 - 0.5)
    for name in ("ppo_kl_adaptive", "trpo"):
        fn = algos.get("classic", name)
        kw = {"beta": 1.0} if name == "ppo_kl_adaptive" else {}
        _, metrics = fn(logp, old_logp, torch.zeros_like(a), **kw)
        assert float(metrics["kl"].mean()) == pytest.approx(exact, rel=0.02)
        assert float(metrics["kl"].min()) >= 0


def test_conjugate_gradient_solves_a_positive_definite_system_in_dim_steps():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a, b = m.T @ m + torch.eye(5, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=5)
    torch.testing.assert_close(a @ x, b, atol=1e-9, rtol=0)


def test_trust_region_step_on_a_quadratic_kl_is_the_scaled_natural_gradient():
    # loss gᵀθ and KL ½θᵀFθ from θ = 0: the step is −√(2δ/gᵀF⁻¹g)·F⁻¹g, whose KL is δ (accepted within the line
    # search's first two tries, the boundary being exact up to rounding)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    f = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64)
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    out = trust_region_step([theta], lambda: (g @ theta, 0.5 * theta @ f @ theta), max_kl=0.02, cg_iters=3,
                            damping=0.0, backtrack=10, shrink=0.8)  # fmt: skip
    natural = torch.linalg.solve(f, g)
    full = -((2 * 0.02 / (g @ natural)) ** 0.5) * natural
    assert out["step_frac"] in (1.0, 0.8)
    torch.testing.assert_close(theta.detach(), out["step_frac"] * full, atol=1e-12, rtol=0)
    assert out["kl"] == pytest.approx(0.02 * out["step_frac"] ** 2, rel=1e-9)
    assert out["improvement"] == pytest.approx(float(-(g @ theta.detach())), rel=1e-12)


def test_trpo_post_step_kl_is_within_the_trust_region():
    # §13 C2: on a categorical policy (logits per state) the accepted step's mean KL(π_old‖π_new) is at most δ and the
    # surrogate improves; with little damping the quadratic model is close, so the step reaches near the boundary; with
    # A ≡ 0 no step improves the surrogate and the line search rejects them all (nothing moves)
    g = torch.Generator().manual_seed(2)
    old_logits = torch.randn(32, 4, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 4, (32,), generator=g)
    adv = torch.randn(32, generator=g, dtype=torch.float64)
    old_logp = torch.log_softmax(old_logits, -1).gather(1, actions[:, None])[:, 0]

    def step(max_kl, adv=adv, **kw):
        logits = old_logits.clone().requires_grad_(True)

        def evaluate():
            logp = torch.log_softmax(logits, -1).gather(1, actions[:, None])[:, 0]
            loss, metrics = algos.get("classic", "trpo")(logp, old_logp, adv, logits=logits, old_logits=old_logits)
            return loss.mean(), metrics["kl"].mean()

        out = trust_region_step([logits], evaluate, max_kl=max_kl, backtrack=10, shrink=0.8, **kw)
        return out, logits.detach()

    for delta in (0.05, 0.01):
        out, logits = step(delta, cg_iters=128, damping=1e-6)
        kl = float(categorical_kl(old_logits, logits).mean())
        assert out["step_frac"] > 0 and out["improvement"] > 0
        assert kl == pytest.approx(out["kl"], rel=1e-12) and 0.5 * delta < kl <= delta
    out, logits = step(0.01, adv=torch.zeros_like(adv), cg_iters=15, damping=0.1)
    assert out["step_frac"] == 0 and torch.equal(logits, old_logits)


def test_mmd_is_solved_per_state_by_the_magnetic_prox_step():
    # exact expectation over a ∼ π_old in one state: Σ_a π_old(a)·ℓ(a) = −Σ π_θ·A + α·KL(π_θ‖u) + KL(π_θ‖π_old)/η,
    # minimised at π ∝ [π_old·u^{αη}·exp(ηA)]^{1/(1+αη)}, the games testbed's `geometric_md_step`
    from unipo.testbeds.games import geometric_md_step

    old_logits = torch.tensor([[0.4, -0.3, 0.1, 0.0]], dtype=torch.float64)
    adv = torch.tensor([0.5, -1.0, 0.2, 0.3], dtype=torch.float64)
    alpha, eta = 0.3, 0.7
    old = torch.log_softmax(old_logits, -1)[0]
    logits = old_logits.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16)
    fn = algos.get("classic", "mmd")

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(logits, -1)[0]
        loss, _ = fn(logp, old, adv, logits=logits.expand(4, 4), old_logits=old_logits.expand(4, 4), alpha=alpha,
                     eta=eta)  # fmt: skip
        (old.exp() * loss).sum().backward()
        return loss.sum()

    opt.step(closure)
    uniform = torch.full((4,), 0.25, dtype=torch.float64)
    step = geometric_md_step(old.exp(), adv, uniform, eta=eta, tau=alpha)
    torch.testing.assert_close(torch.softmax(logits, -1)[0].detach(), step, atol=1e-9, rtol=0)
    # the magnet term is α·(log|A| − H(π)): with A = 0 and π = π_old the loss is α·(log 4 − H(π_old))
    loss, _ = fn(old, old, torch.zeros(4, dtype=torch.float64), logits=old_logits.expand(4, 4),
                 old_logits=old_logits.expand(4, 4), alpha=alpha)  # fmt: skip
    entropy = -(old.exp() * old).sum()
    torch.testing.assert_close(loss, (alpha * (math.log(4) - entropy)).expand(4))
    with pytest.raises(ValueError, match="categorical head"):
        fn(old, old, adv)


def test_mdpo_off_actor_loss_by_hand_and_sac_at_lambda_equal_c():
    mdpo_off = algos.get("classic", "mdpo_off")
    logp, old, q = torch.tensor([-1.0, 0.5]), torch.tensor([-1.5, 0.0]), torch.tensor([2.0, -1.0])
    # c = 2, λ = 0.5: 2·(−1 + 1.5) + 0.5·(−1.5) − 2 = −1.75; 2·0.5 + 0 + 1 = 2
    loss, metrics = mdpo_off(logp, old, q, kl_coef=2.0, entropy_coef=0.5)
    torch.testing.assert_close(loss, torch.tensor([-1.75, 2.0]))
    torch.testing.assert_close(metrics["kl"], torch.tensor([0.5, 0.5]))
    # λ = c: the π_k terms cancel, leaving SAC's α·log π − Q with α = c, whatever π_k is
    old = old.clone().requires_grad_(True)
    sac, _ = mdpo_off(logp, old, q, kl_coef=0.2, entropy_coef=0.2)
    torch.testing.assert_close(sac, 0.2 * logp - q)
    sac.sum().backward()
    assert old.grad.abs().max() < 1e-6


def test_squashed_gaussian_density_is_the_tanh_transformed_normal():
    from unipo.testbeds.classic_off import SquashedGaussian

    torch.manual_seed(0)
    actor = SquashedGaussian(3, 2, torch.tensor([2.0, 2.0]))
    obs = torch.randn(5, 3)
    u, action, logp = actor.rsample(obs)
    mu, log_std = actor.stats(obs)
    base = torch.distributions.Normal(mu, log_std.exp())
    tanh = torch.distributions.TransformedDistribution(base, [torch.distributions.transforms.TanhTransform()])
    torch.testing.assert_close(logp, tanh.log_prob(action).sum(-1), atol=1e-4, rtol=1e-4)
    assert bool((action.abs() < 1).all()) and torch.equal(actor.greedy(obs), 2.0 * torch.tanh(mu))


def test_mdpo_off_update_regresses_the_critics_on_the_bootstrapped_targets_and_keeps_the_actor_loss_out_of_them():
    import copy

    from unipo.testbeds.classic_off import Critics, OffPolicySettings, SquashedGaussian, update

    torch.manual_seed(0)
    actor, critics = SquashedGaussian(3, 1, torch.tensor([1.0])), Critics(3, 1)
    old = copy.deepcopy(actor).requires_grad_(False)
    batch = {"obs": torch.randn(8, 3), "act": torch.rand(8, 1) * 2 - 1, "rew": torch.randn(8),
             "next": torch.randn(8, 3), "term": torch.tensor([0.0, 1.0] * 4)}  # fmt: skip
    cfg = OffPolicySettings(gamma=0.9, tau=0.25)
    with torch.no_grad():  # Q's target r + γ(1 − terminated)·V̄(s′), before the step
        target = batch["rew"] + 0.9 * (1 - batch["term"]) * critics.v_target(batch["next"])[:, 0]
        q1, q2 = critics.q(batch["obs"], batch["act"])
    v_target_before, v_before = [copy.deepcopy(m.state_dict()) for m in (critics.v_target, critics.v)]
    torch.manual_seed(1)  # the update's reparameterised sample ã, drawn again here: V's target min Q(s, ã) − λ·log π
    with torch.no_grad():
        _, a_pi, _ = actor.rsample(batch["obs"])
        q1_pi, q2_pi = critics.q(batch["obs"], a_pi)
        v_part = 0.5 * ((critics.v(batch["obs"])[:, 0] - torch.minimum(q1_pi, q2_pi)) ** 2).mean()
        mu, log_std = actor.stats(batch["obs"])
    optimizers = (torch.optim.SGD(actor.parameters(), lr=0.0), torch.optim.SGD(critics.parameters(), lr=0.0))
    torch.manual_seed(1)
    out = update(actor, old, critics, optimizers, algos.get("classic", "mdpo_off"), batch, cfg, {})
    # the critics' halved squared errors; the actor's −Q₁(s, ã) (π_θ = π_k: no KL) plus the Gaussian regulariser
    q_part = 0.5 * (((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean())
    assert out["critic_loss"] == pytest.approx(float(q_part + v_part), rel=1e-5)
    reg = 1e-3 * ((mu**2).mean() + (log_std**2).mean())
    assert out["actor_loss"] == pytest.approx(float(-q1_pi.mean() + reg), rel=1e-5)
    assert out["kl"] == pytest.approx(0.0, abs=1e-6)
    # V̄ ← (1 − τ)·V̄ + τ·V (V unchanged by a zero step)
    for k, w in critics.v_target.state_dict().items():
        torch.testing.assert_close(w, 0.75 * v_target_before[k] + 0.25 * v_before[k])
    # Q₁'s gradient is its regression's alone: the actor's −Q₁(s, ã), which also runs through Q₁, adds nothing to it
    q1_again = critics.q(batch["obs"], batch["act"])[0]
    by_hand = torch.autograd.grad(0.5 * ((q1_again - target) ** 2).mean(), list(critics.q1.parameters()))
    for grad, p in zip(by_hand, critics.q1.parameters(), strict=True):
        torch.testing.assert_close(p.grad, grad)
    assert all(p.grad is None for p in old.parameters())
