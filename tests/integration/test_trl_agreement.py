"""unipo against TRL 1.16 at the trainer level (issue 12): the same tiny model, data, tokenisation and optimiser
settings give the same DPO loss, implicit rewards, margins and log-probs step by step, and the same GRPO loss and
parameter gradient on one step whose sampling is replaced by a fixed set of completions.

Conventions aligned (both sides' defaults unless listed):
- plain-text prompts and responses, no chat template (unipo RL tasks: `data.chat=false`); each response is its
  text's tokens plus EOS, with no truncation (TRL `max_length=None`);
- the whole batch in one optimizer step (DPO: TRL batch 16, unipo `train.prompts_per_step=16`, one micro-batch;
  GRPO: 2 prompts x 4 completions) and nothing held out (`data.eval_frac=0`);
- AdamW with betas (0.9, 0.999), no weight decay, constant learning rate, no warm-up; float32 without autocast;
  dropout off. TRL's metrics are computed before its optimizer step, as unipo's are;
- GRPO: TRL `loss_type="grpo"` is unipo's `seq_mean_token_mean`; `beta=0` (no reference); group std with Bessel's
  correction and ε = 1e-4 on both sides; the reward function is the same plain callable (TRL's convention).
"""

import json

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tests.integration.rewards_for_tests import reply_length
from unipo.cli import main

pytestmark = pytest.mark.slow

PAIRS = [{"prompt": f"say {i}:", "chosen": " 7 7 7", "rejected": f" no {i} no"} for i in range(16)]
METRICS = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")  # fmt: skip


def _trl_dpo(model_dir, out, steps, lr, beta):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=len(PAIRS), learning_rate=lr,
                     lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=steps,
                     beta=beta, logging_steps=1, report_to=[], use_cpu=True, seed=0, save_strategy="no",
                     max_length=None, disable_dropout=True, bf16=False)  # fmt: skip
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
    trainer.train()
    return [{k: float(h[k]) for k in METRICS} for h in trainer.state.log_history if "loss" in h and "epoch" in h]


def test_dpo_matches_trl_step_by_step(tiny_model_dir, tmp_path):
    steps, lr, beta = 4, 1e-3, 0.1
    theirs = _trl_dpo(tiny_model_dir, tmp_path / "trl", steps, lr, beta)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    run = tmp_path / "unipo"
    args = ["train", "dpo", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={run}",
            "data.eval_frac=0", f"train.max_steps={steps}", "train.prompts_per_step=16", "train.micro_batch_size=32",
            f"train.lr={lr}", "train.lr_schedule=constant", f"algo.preference.beta={beta}", "eval.num_problems=0",
            "model.autocast=off"]  # fmt: skip
    assert main(args) == 0
    ours = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ours = [{k: r[k] for k in METRICS} for r in ours if "loss" in r]
    assert len(ours) == len(theirs) == steps
    assert theirs[-1]["loss"] < theirs[0]["loss"] - 0.1  # the run moves: agreement is not two frozen models
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for key in METRICS:  # float32 on both sides: a stated tolerance of 1e-5 relative (1e-6 absolute near 0)
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), f"step {step + 1} {key}: {a[key]} vs {b[key]}"


PROMPTS = ["say 1:", "say 2:"]
COMPLETIONS = {p: [f" {p[-2]} {'7 ' * j}ok" for j in range(4)] for p in PROMPTS}
"""The fixed 'samples': 4 completions per prompt, of unequal lengths."""


class _Gradients:
    """Records every parameter's gradient, by name, when an optimizer is about to step (a global torch hook)."""

    def __init__(self):
        self.names, self.grads = {}, {}

    def watch(self, model):
        self.names = {id(p): n for n, p in model.named_parameters()}

    def __call__(self, optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) in self.names:
                    self.grads[self.names[id(p)]] = p.grad.detach().clone()


def _fixed_ids(tokenizer, prompt, j):
    return tokenizer(COMPLETIONS[prompt][j], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def _trl_grpo(model_dir, out, grads):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def rollout(prompts, trainer):  # TRL repeats each prompt num_generations times, consecutively
        seen, ids = {}, []
        for p in prompts:
            seen[p] = seen.get(p, -1) + 1
            ids.append(_fixed_ids(tokenizer, p, seen[p]))
        return {"prompt_ids": [tokenizer(p)["input_ids"] for p in prompts], "completion_ids": ids,
                "logprobs": [[0.0] * len(i) for i in ids]}  # fmt: skip

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=8, num_generations=4, learning_rate=1e-3,
                      lr_scheduler_type="constant", max_steps=1, logging_steps=1, report_to=[], use_cpu=True, seed=0,
                      save_strategy="no", loss_type="grpo", beta=0.0, max_completion_length=16, bf16=False,
                      max_grad_norm=1e9, weight_decay=0.0)  # fmt: skip
    data = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    trainer = GRPOTrainer(model=model, reward_funcs=[reply_length], args=args, train_dataset=data,
                          processing_class=tokenizer, rollout_func=rollout)  # fmt: skip
    grads.watch(trainer.model)
    trainer.train()
    return next(h for h in trainer.state.log_history if "loss" in h)


def _fixed_sample(model, tokenizer, rows, *, n, **_):
    """unipo's sampler replaced by the same fixed completions (behaviour log-probs from a forward, as sampled)."""
    from unipo.models.logprobs import completion_logprobs
    from unipo.rollout.batch import Rollouts, right_pad, tokenize_prompts

    device = next(model.parameters()).device
    prompt_ids, prompt_mask = tokenize_prompts([r["prompt"] for r in rows], tokenizer, device)
    counts = [n] * len(rows) if isinstance(n, int) else list(n)
    ids = [_fixed_ids(tokenizer, r["prompt"], j) for r, k in zip(rows, counts, strict=True) for j in range(k)]
    completion_ids, mask = right_pad(ids, tokenizer.pad_token_id, device)
    groups = torch.arange(len(rows), device=device).repeat_interleave(torch.tensor(counts, device=device))
    texts = [COMPLETIONS[r["prompt"]][j] for r, k in zip(rows, counts, strict=True) for j in range(k)]
    batch = Rollouts(prompt_ids, prompt_mask, completion_ids, mask, groups, torch.zeros_like(groups, dtype=torch.bool),
                     torch.zeros(completion_ids.shape, device=device), list(rows), texts)  # fmt: skip
    with torch.no_grad():
        batch.rollout_logp = completion_logprobs(model, batch)[0] * mask
    return batch


def test_grpo_loss_and_gradient_match_trl_on_fixed_completions(tiny_model_dir, tmp_path, monkeypatch):
    from unipo.rollout import engine
    from unipo.trainers import common, rl

    grads = _Gradients()
    handle = register_optimizer_step_pre_hook(grads)
    try:
        theirs = _trl_grpo(tiny_model_dir, tmp_path / "trl", grads)
        trl_grads, grads.grads = grads.grads, {}
        rows = tmp_path / "prompts.jsonl"
        rows.write_text("".join(json.dumps({"prompt": p, "answer": "7"}) + "\n" for p in PROMPTS))
        monkeypatch.setattr(engine, "sample", _fixed_sample)  # the HF engine's sampler
        original = common.build_optimizer
        monkeypatch.setattr(
            rl, "build_optimizer", lambda model, cfg, **kw: grads.watch(model) or original(model, cfg, **kw)
        )
        run = tmp_path / "unipo"
        args = ["train", "grpo", f"model.path={tiny_model_dir}", f"task={rows}", f"output_dir={run}",
                "data.eval_frac=0", "data.chat=false", "train.max_steps=1", "train.prompts_per_step=2",
                "rollout.group_size=4", "train.lr=1e-3", "train.lr_schedule=constant", "train.max_grad_norm=1e9",
                "eval.num_problems=0", "model.autocast=off",
                "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]"]  # fmt: skip
        assert main(args) == 0
    finally:
        handle.remove()
    ours = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line)
    assert ours["reward/mean"] == pytest.approx(theirs["reward"], rel=1e-6)
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
    assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
    assert trl_grads.keys() == grads.grads.keys() and len(trl_grads) > 5
    for name, g in trl_grads.items():
        torch.testing.assert_close(grads.grads[name], g, rtol=1e-4, atol=1e-7, msg=name)
