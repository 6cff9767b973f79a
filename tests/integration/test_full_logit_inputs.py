"""Inputs from the full next-token distribution on a tiny model: Σπ² and Σπ³ of the policy before it moves
(`optimal_token_baseline`, `capo_recon`), the reference's log-softmax and the current logits (`kl_full`)."""

import pytest
import torch

from unipo import algos, config
from unipo.algos.aggregation import token_mean
from unipo.models.loading import load_model_and_tokenizer, store_as_autocast
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.hf import sample
from unipo.trainers.common import build_algo, build_optimizer
from unipo.trainers.update import frozen_forward, update

pytestmark = pytest.mark.slow

ROWS = [{"prompt": "say 7"}, {"prompt": "pick a number:"}, {"prompt": "now"}]


def _tiny(path):
    model, tokenizer = load_model_and_tokenizer(path, device="cpu", dtype="float32")
    return model.eval(), tokenizer


def _batch(model, tokenizer, temperature=1.0):
    return sample(model, tokenizer, ROWS, n=4, max_new_tokens=6, temperature=temperature,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip


def test_moments_of_the_old_policy_are_power_sums_of_its_tempered_softmax(tiny_model_dir):
    model, tokenizer = _tiny(tiny_model_dir)
    cfg = config.load("grpo", ["rollout.temperature=0.7", "model.autocast=off"])
    batch = _batch(model, tokenizer, temperature=0.7)
    out = frozen_forward(model, batch, cfg, moments=True, full=True)
    # brute force: every row's prompt + completion through the whole model, softmax(logits / T), powers summed
    with torch.no_grad():
        _, _, logits = completion_logprobs(model, batch, temperature=0.7, keep_logits=True, share_prompt=False)
    p = torch.softmax(logits.double(), -1)
    m = batch.completion_mask.bool()
    torch.testing.assert_close(out["sum_pi_squared"][m].double(), (p**2).sum(-1)[m], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["sum_pi_cubed"][m].double(), (p**3).sum(-1)[m], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["log_softmax"].exp().sum(-1), torch.ones(m.shape), atol=1e-5, rtol=0)
    # the sampled tokens' log-probs are the sampler's (π_old of the batch)
    torch.testing.assert_close(out["logp"][m], batch.rollout_logp[m], atol=1e-5, rtol=0)
    assert ((out["sum_pi_squared"] > out["sum_pi_cubed"]) & (out["sum_pi_squared"] <= 1 + 1e-6))[m].all()


def test_kl_full_in_the_update_has_the_gradient_of_the_loss_composed_by_hand(tiny_model_dir):
    # a reference away from the policy, so that the exact KL and its gradient are not 0
    model, tokenizer = _tiny(tiny_model_dir)
    ref, _ = _tiny(tiny_model_dir)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    coef = 0.5
    cfg = config.load("grpo", ["model.autocast=off", "algo.kl.name=kl_full", f"algo.kl.coef={coef}",
                               "algo.aggregation.name=token_mean", "train.micro_batch_size=5",
                               "train.max_grad_norm=0"])  # fmt: skip
    batch = _batch(model, tokenizer)
    advantages = torch.linspace(-1, 1, batch.num_completions)
    inputs = {"rewards": torch.zeros(batch.num_completions), "progress": 0.0, "truncated": batch.truncated}
    frozen = frozen_forward(ref, batch, cfg, full=True)
    inputs |= {"ref_logp": frozen["logp"], "ref_logits": frozen["log_softmax"]}
    algo = build_algo(cfg)
    assert {"logits", "ref_logits"} <= algo.needs and algo.needs_ref

    # by hand: the clipped surrogate at ratio 1 plus coef * Σ_v π(log π − log π_ref), token mean over the batch
    logp, _, logits = completion_logprobs(model, batch, keep_logits=True)
    mask = batch.completion_mask.float()
    surrogate, _ = algos.get("policy_loss", "ppo_clip")(logp, logp.detach(), advantages, mask)
    log_p, log_q = torch.log_softmax(logits, -1), frozen["log_softmax"]
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    assert float((kl.detach() * mask).sum() / mask.sum()) > 1e-3  # the reference really differs
    expected = torch.autograd.grad(token_mean(surrogate + coef * kl, mask), list(model.parameters()))

    optimizer, scheduler = build_optimizer(model, cfg)
    seen = []
    optimizer.register_step_pre_hook(lambda *_: seen.append([p.grad.clone() for p in model.parameters()]))
    stats = update(cfg, model, optimizer, scheduler, algo, batch, advantages, inputs)
    for got, want in zip(seen[0], expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    assert stats["kl"] == pytest.approx(float((kl * mask).sum() / mask.sum()), rel=1e-5)


def test_optimal_token_baseline_learns_the_toy_task(tiny_model_dir, tmp_path):
    # OTB's baseline weights each token by 1 − 2π_old(y) + Σπ_old², from the old-policy pass; the settings of the grpo
    # learning test (tests/integration/test_rl_runs.py)
    from tests.integration.test_rl_runs import _rows, _train

    run = tmp_path / "run"
    _train(tiny_model_dir, run, "train.max_steps=40", "train.lr=1e-2", "rollout.group_size=8",
           "algo.advantage={name: optimal_token_baseline}")  # fmt: skip
    steps = [r for r in _rows(run) if "eval/accuracy" not in r]
    assert all(r["time/old_forward_s"] > 0 for r in steps)  # the old-policy pass ran every step
    assert sum(r["reward/mean"] for r in steps[:3]) / 3 < 0.1
    assert sum(r["reward/mean"] for r in steps[-5:]) / 5 > 0.8


def test_a_token_weight_with_a_batch_quantile_does_not_depend_on_the_micro_batch_size(tiny_model_dir):
    # capo_recon rejects the top 30% of the batch's tokens by curvature: computed once on the whole batch, the step is
    # the same with one micro-batch of 12 or micro-batches of 5 (per micro-batch, each would reject its own top 30%)
    params = {}
    capo = "[{name: capo_recon, reject_frac: 0.3}]"
    for micro, weights in ((12, capo), (5, capo), (12, "[]")):
        model, tokenizer = _tiny(tiny_model_dir)
        cfg = config.load("grpo", ["model.autocast=off", f"train.micro_batch_size={micro}", "train.lr=1e-3",
                                   f"algo.token_weights={weights}", "algo.aggregation.name=token_mean"])  # fmt: skip
        batch = _batch(model, tokenizer)
        inputs = {"rewards": torch.zeros(batch.num_completions), "progress": 0.0, "truncated": batch.truncated}
        moments = frozen_forward(model, batch, cfg, moments=True)
        inputs |= {k: moments[k] for k in ("sum_pi_squared", "sum_pi_cubed")}
        optimizer, scheduler = build_optimizer(model, cfg)
        advantages = torch.linspace(-1, 1, batch.num_completions)
        update(cfg, model, optimizer, scheduler, build_algo(cfg), batch, advantages, inputs)
        params[micro, weights] = [p.detach().clone() for p in model.parameters()]
    a, b, plain = params.values()
    for x, y in zip(a, b, strict=True):  # AdamW's first step is ±lr wherever the gradient is not ~0: loose atol
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(x, y, atol=1e-6) for x, y in zip(a, plain, strict=True))  # the weights act


def test_adv_post_whitens_and_clips_what_the_update_receives(tiny_model_dir, tmp_path, monkeypatch):
    # the estimator's advantages, whitened over the batch's tokens and clipped at 1.5 (by hand here), are exactly
    # what the update trains on
    from tests.integration.test_rl_runs import _rows, _train
    from unipo.trainers import rl

    raw, seen = [], []
    estimator, original = rl.advantages_of, rl.update
    monkeypatch.setattr(rl, "advantages_of", lambda *a: raw.append((estimator(*a), a[4])) or raw[-1][0])
    monkeypatch.setattr(rl, "update", lambda *a: seen.append(a[6]) or original(*a))
    run = tmp_path / "run"
    _train(tiny_model_dir, run, "train.max_steps=10", "rollout.group_size=8", "train.lr=1e-2",
           "algo.adv_post={name: adv_post, clip: 1.5}")  # fmt: skip
    steps = [r for r in _rows(run) if "eval/accuracy" not in r]
    assert len(seen) == 10 and all(0 <= r["adv/zero_std_frac"] <= 1 for r in steps)
    spread = 0
    for (adv, mask), got in zip(raw, seen, strict=True):
        tokens = adv[:, None].expand(mask.shape)[mask.bool()]
        if float(tokens.std()) == 0:
            continue
        spread += 1
        expected = ((adv - tokens.mean()) / (tokens.std() + 1e-8)).clamp(-1.5, 1.5)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert spread >= 2  # the check ran on batches with reward spread


def test_a_frozen_model_stored_as_autocast_gives_the_same_outputs_bit_for_bit_in_half_the_linear_memory(
    tiny_model_dir,
):
    model, tokenizer = _tiny(tiny_model_dir)
    stored, _ = _tiny(tiny_model_dir)
    linear = [m for m in stored.modules() if isinstance(m, torch.nn.Linear)]
    tied = stored.get_input_embeddings().weight
    expect = sum(m.weight.numel() for m in linear if m.weight is not tied)
    assert store_as_autocast(stored, "off") == 0 and all(p.dtype == torch.float32 for p in stored.parameters())
    assert store_as_autocast(stored, "bf16") == expect > 0
    assert all(m.weight.dtype == (torch.float32 if m.weight is tied else torch.bfloat16) for m in linear)
    assert stored.get_input_embeddings().weight.dtype == torch.float32  # the lookup runs outside autocast
    batch = _batch(model, tokenizer)
    cfg = config.load("grpo", ["model.autocast=bf16"])
    a, b = frozen_forward(model, batch, cfg, full=True), frozen_forward(stored, batch, cfg, full=True)
    assert torch.equal(a["logp"], b["logp"]) and torch.equal(a["log_softmax"], b["log_softmax"])
    # without autocast the float32 model computes something else: the equality above is autocast's rounding
    plain = frozen_forward(model, batch, config.load("grpo", ["model.autocast=off"]))
    assert not torch.equal(plain["logp"], a["logp"])
