"""The model-facing pieces on a tiny model: sampling, log-probs and the update's micro-batch invariance."""

import pytest
import torch

from unipo import config
from unipo.models.loading import load_model_and_tokenizer
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.hf import sample
from unipo.trainers.common import build_algo, build_optimizer
from unipo.trainers.update import reference_logps, update

pytestmark = pytest.mark.slow

ROWS = [{"prompt": [{"role": "user", "content": "say 7"}]}, {"prompt": "pick a number:"}, {"prompt": "now"}]


@pytest.fixture
def tiny(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    return model.eval(), tokenizer


def _batch(model, tokenizer, n=4, max_new_tokens=6, seed=0):
    return sample(
        model, tokenizer, ROWS, n=n, max_new_tokens=max_new_tokens, generator=torch.Generator().manual_seed(seed)
    )


def test_sampler_groups_masks_and_log_probs(tiny):
    model, tokenizer = tiny
    batch = _batch(model, tokenizer)
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # prompts of different lengths are left-padded
    assert batch.prompt_mask[:, -1].all() and not batch.prompt_mask[:, 0].all()
    eos = tokenizer.eos_token_id
    for ids, m, trunc in zip(batch.completion_ids, batch.completion_mask, batch.truncated, strict=True):
        length = int(m.sum())
        assert m[:length].all() and not m[length:].any()  # one contiguous run from the start
        assert trunc == (eos not in ids[:length].tolist())
    # the sampler's log-probs are the model's own log-probs of the sampled tokens
    logp, _ = completion_logprobs(model, batch)
    m = batch.completion_mask.bool()
    torch.testing.assert_close(logp[m], batch.rollout_logp[m], atol=1e-5, rtol=0)
    assert (batch.rollout_logp[m] < 0).all()


def test_shared_prompt_forward_equals_full_forward(tiny):
    model, tokenizer = tiny
    batch = _batch(model, tokenizer)
    shared, ent_shared = completion_logprobs(model, batch, temperature=0.7, with_entropy=True)
    full, ent_full = completion_logprobs(model, batch, temperature=0.7, with_entropy=True, share_prompt=False)
    m = batch.completion_mask.bool()
    torch.testing.assert_close(shared[m], full[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_shared[m], ent_full[m], atol=1e-5, rtol=0)
    g_shared = torch.autograd.grad(shared[m].sum(), list(model.parameters()))
    g_full = torch.autograd.grad(full[m].sum(), list(model.parameters()))
    for a, b in zip(g_shared, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunked_log_probs_equal_whole_ones_and_keep_no_logits_for_backward(tiny, entropy_grad):
    model, tokenizer = tiny
    batch = _batch(model, tokenizer)
    vocab, m = model.config.vocab_size, batch.completion_mask.bool()
    params = list(model.parameters())
    results = []
    for chunk in (0, 5):  # 5 positions a chunk: chunks straddle rows, the last one is short
        saved = []  # the tensors autograd keeps for backward, outside checkpointed regions

        def keep(t, saved=saved):
            saved.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            logp, entropy = completion_logprobs(model, batch, temperature=0.7, with_entropy=True,
                                                entropy_grad=entropy_grad, chunk=chunk)  # fmt: skip
        loss = logp[m].sum() + (entropy[m].sum() if entropy_grad else 0)
        results.append((logp, entropy, torch.autograd.grad(loss, params)))
        kept_logits = [shape for shape in saved if shape and shape[-1] == vocab]
        assert bool(kept_logits) == (chunk == 0), (chunk, kept_logits)  # unchunked: (N, T, V) logits are kept
    (logp_a, ent_a, grads_a), (logp_b, ent_b, grads_b) = results
    torch.testing.assert_close(logp_b, logp_a, atol=1e-5, rtol=1e-6)  # matmuls of other shapes: float rounding
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=1e-6)
    assert ent_b.requires_grad == entropy_grad
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_greedy_sampling_is_argmax(tiny):
    model, tokenizer = tiny
    batch = sample(model, tokenizer, ROWS[:1], n=2, max_new_tokens=5, greedy=True)
    assert torch.equal(batch.completion_ids[0], batch.completion_ids[1])
    logits = model(input_ids=batch.prompt_ids).logits[0, -1]
    assert batch.completion_ids[0, 0] == logits.argmax()


def _update(cfg, model, ref, tokenizer, batch, advantages):
    optimizer, scheduler = build_optimizer(model, cfg)
    rewards = torch.zeros(batch.num_completions)
    inputs = {"rewards": rewards, "progress": 0.0, "truncated": batch.truncated}
    if ref is not None:
        inputs["ref_logp"] = reference_logps(ref, batch, cfg)
    return update(cfg, model, optimizer, scheduler, build_algo(cfg), batch, advantages, inputs)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_sum_constant"])
def test_update_does_not_depend_on_micro_batch_size(tiny_model_dir, aggregation):
    # the same batch and advantages, one micro-batch of 12 vs micro-batches of 5 (5 + 5 + 2, unequal lengths)
    results = []
    for micro in (12, 5):
        model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
        model.eval()
        cfg = config.load(
            "grpo",
            [f"train.micro_batch_size={micro}", f"algo.aggregation.name={aggregation}", "model.autocast=off",
             "algo.kl.coef=0.1", "train.lr=1e-3"],
        )  # fmt: skip
        ref, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
        batch = _batch(model, tokenizer)
        advantages = torch.linspace(-1, 1, batch.num_completions)
        stats = _update(cfg, model, ref.eval(), tokenizer, batch, advantages)
        results.append((stats["loss"], [p.detach().clone() for p in model.parameters()]))
    (loss_a, params_a), (loss_b, params_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-7)
    for a, b in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("extra", [[], ["algo.regularizers=[{name: entropy_bonus, coef: 0.01}]"]])
def test_update_with_a_chunked_head_equals_the_whole_one(tiny_model_dir, extra, monkeypatch):
    from unipo.models import logprobs

    calls = []  # the chunked path runs (policy and reference) only when asked for
    chunked = logprobs.chunked_token_stats
    monkeypatch.setattr(logprobs, "chunked_token_stats", lambda *a, **k: calls.append(a[3]) or chunked(*a, **k))
    results = []
    for chunk in (0, 7):
        model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
        ref, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
        cfg = config.load("grpo", ["model.autocast=off", "algo.kl.coef=0.1", "train.lr=1e-3",
                                   f"model.logit_chunk={chunk}", *extra])  # fmt: skip
        batch = _batch(model.eval(), tokenizer)
        stats = _update(cfg, model, ref.eval(), tokenizer, batch, torch.linspace(-1, 1, batch.num_completions))
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
        assert bool(calls) == (chunk > 0) and set(calls) <= {chunk}, (chunk, calls)
    (a, params_a), (b, params_b) = results
    for key in ("loss", "grad_norm", "kl", "entropy"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    for x, y in zip(params_a, params_b, strict=True):  # AdamW's first step at lr 1e-3 moves each weight by ~1e-3
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)


def test_zero_advantage_rows_are_skipped_without_changing_the_step(tiny_model_dir):
    # rows with A = 0 carry no gradient: training on the full batch or only on the non-zero rows is the same step
    params = []
    for skip_nothing in (True, False):
        model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
        model.eval()
        cfg = config.load("grpo", ["model.autocast=off", "train.lr=1e-3", "algo.aggregation.name=token_mean"])
        batch = _batch(model, tokenizer)
        advantages = torch.tensor([0.0, 1.0, -1.0, 0.0] * 3)
        if skip_nothing:  # a tiny non-zero advantage defeats the skip; its effect on the step is ~1e-12
            advantages = advantages + (advantages == 0) * 1e-12
        stats = _update(cfg, model, None, tokenizer, batch, advantages)
        assert stats["tokens/trained_frac"] == (1.0 if skip_nothing else pytest.approx(
            float(batch.completion_mask[advantages != 0].sum() / batch.completion_mask.sum())))  # fmt: skip
        params.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_micro_batches_keep_groups_whole_when_a_loss_takes_group_statistics():
    from unipo.trainers.update import micro_batches

    active, groups = torch.arange(7), torch.tensor([0, 0, 0, 1, 1, 2, 2])
    assert [c.tolist() for c in micro_batches(active, groups, 3, False)] == [[0, 1, 2], [3, 4, 5], [6]]
    # whole groups packed up to 3: {0,1,2}, then {3,4} (adding {5,6} would make 4), then {5,6}
    assert [c.tolist() for c in micro_batches(active, groups, 3, True)] == [[0, 1, 2], [3, 4], [5, 6]]
    # a group larger than the size is a chunk of its own; inactive completions stay out
    assert [c.tolist() for c in micro_batches(torch.tensor([0, 1, 2, 5]), groups, 2, True)] == [[0, 1, 2], [5]]
    assert micro_batches(torch.tensor([], dtype=torch.long), groups, 2, True) == []
