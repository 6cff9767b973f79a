"""Activation checkpointing of the decoder layers (`model.activation_checkpointing`, models/checkpointing.py): the
same log-probs and gradients on both forward paths, far fewer tensors kept by the forward, and copies that run their
own weights."""

import copy
import json

import pytest
import torch

from unipo.cli import main
from unipo.models.checkpointing import checkpoint_layers
from unipo.models.loading import load_model_and_tokenizer
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.hf import sample

pytestmark = pytest.mark.slow

ROWS = [{"prompt": "say 7"}, {"prompt": "pick a number:"}, {"prompt": "now"}]


def _models(path):
    plain, tokenizer = load_model_and_tokenizer(path, device="cpu", dtype="float32")
    wrapped, _ = load_model_and_tokenizer(path, device="cpu", dtype="float32")
    assert checkpoint_layers(wrapped) == plain.config.num_hidden_layers
    return plain.eval(), wrapped.eval(), tokenizer


def _kept_bytes(model, batch, share_prompt):
    """Bytes of the tensors autograd keeps for the backward pass outside checkpointed regions, and the loss."""
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, _ = completion_logprobs(model, batch, share_prompt=share_prompt)
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp) * batch.completion_mask
    return sum(kept), (logp * weights).sum(), logp


@pytest.mark.parametrize("share_prompt", [True, False])
def test_checkpointed_layers_give_the_same_logprobs_and_gradients_and_keep_far_less(tiny_model_dir, share_prompt):
    plain, wrapped, tokenizer = _models(tiny_model_dir)
    batch = sample(plain, tokenizer, ROWS, n=4, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    kept_plain, loss_plain, logp_plain = _kept_bytes(plain, batch, share_prompt)
    kept_wrapped, loss_wrapped, logp_wrapped = _kept_bytes(wrapped, batch, share_prompt)
    assert torch.equal(logp_plain, logp_wrapped)
    loss_plain.backward()
    loss_wrapped.backward()  # the replay rebuilds the prompt's KV cache as the forward wrote it, or shapes differ
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert kept_wrapped < 0.5 * kept_plain  # what the layers keep inside is recomputed in the backward


def test_without_autograd_and_in_a_copy_the_layers_run_their_own_weights(tiny_model_dir):
    plain, wrapped, tokenizer = _models(tiny_model_dir)
    batch = sample(plain, tokenizer, ROWS, n=2, max_new_tokens=5, generator=torch.Generator().manual_seed(1))
    again = sample(wrapped, tokenizer, ROWS, n=2, max_new_tokens=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(batch.completion_ids, again.completion_ids)  # sampling (no autograd) is unchanged
    engine = copy.deepcopy(wrapped)
    with torch.no_grad():
        for p in engine.parameters():
            p.mul_(0.5)
        moved, _ = completion_logprobs(engine, batch)
        original, _ = completion_logprobs(wrapped, batch)
    assert not torch.equal(moved, original)  # the copy's layers are its own, not the original's


def test_a_run_with_checkpointed_layers_equals_the_plain_run(tiny_model_dir, tmp_path):
    def run(name, *extra):
        out = tmp_path / name
        args = ["train", "grpo", f"model.path={tiny_model_dir}", "task=lucky7", f"output_dir={out}",
                "rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=0", "train.prompts_per_step=2",
                "train.max_steps=4", "algo.kl.coef=0.1", *extra]  # fmt: skip
        assert main(args) == 0
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r[k] for r in rows if "loss" in r for k in ("loss", "grad_norm", "kl", "reward/mean")]

    plain, wrapped = run("plain"), run("wrapped", "model.activation_checkpointing=true")
    assert len(plain) == 4 * 4 and max(plain[1::4]) > 0.1  # some step has a gradient
    assert wrapped == pytest.approx(plain, rel=1e-4, abs=1e-6)
