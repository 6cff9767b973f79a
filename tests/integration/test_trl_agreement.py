"""unipo against TRL 1.16 at the trainer level (issue 12): the same tiny model, pairs, tokenisation and optimiser
settings give the same DPO loss, implicit rewards, margins and log-probs step by step.

Conventions aligned (both sides' defaults unless listed): plain-text prompts and responses, no chat template; each
response is its text's tokens plus EOS, with no truncation (TRL `max_length=None`); all 16 pairs in one optimizer
step (TRL batch 16; unipo `train.prompts_per_step=16`, one micro-batch) and nothing held out (`data.eval_frac=0`);
AdamW with betas (0.9, 0.999), no weight decay, gradient clipping at 1.0, constant learning rate, no warm-up; float32
without autocast; dropout off. TRL's metrics are computed before its optimizer step, as unipo's are.
"""

import json

import pytest

from unipo.cli import main

pytestmark = pytest.mark.slow

PAIRS = [{"prompt": f"say {i}:", "chosen": " 7 7 7", "rejected": f" no {i} no"} for i in range(16)]
METRICS = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")  # fmt: skip


def _trl_dpo(model_dir, out, steps, lr, beta):
    import torch
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
