"""LoRA (models/lora.py): the reference is the base model, adapters alone train, checkpoints hold adapters and
resume exactly, `unipo export` merges; with the RL and the preference trainer."""

import json
import math

import pytest
import torch

from unipo.cli import main
from unipo.models.loading import load_model_and_tokenizer
from unipo.models.logprobs import completion_logprobs
from unipo.models.lora import BaseView, with_lora
from unipo.rollout.hf import sample
from unipo.trainers import checkpoint
from unipo.trainers.update import reference_logps

pytestmark = pytest.mark.slow

LENGTH = "{_component_: tests.integration.rewards_for_tests.reply_length}"


def _steps(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def _rl(model_dir, run, *extra):
    args = ["train", "grpo", f"model.path={model_dir}", "task=lucky7", f"output_dir={run}", "model.autocast=off",
            "model.lora.r=4", "algo.kl.coef=0.1", "rollout.max_new_tokens=8", "rollout.group_size=4",
            "train.prompts_per_step=2", "train.lr=1e-2", "train.lr_schedule=constant", "eval.num_problems=2",
            "eval.show_replies=0", f"rewards=[{LENGTH}]", *extra]  # fmt: skip
    assert main(args) == 0


def test_the_reference_of_a_lora_policy_is_its_base_model(tiny_model_dir):
    from unipo import config

    base, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    policy, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    policy = with_lora(policy, config.LoraSettings(r=4))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # move the adapters off the identity, so policy and base differ
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    batch = sample(base.eval(), tok, [{"prompt": "say 7"}, {"prompt": "pick"}], n=3, max_new_tokens=6,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    cfg = config.load("grpo", ["model.autocast=off"])
    expected, _ = completion_logprobs(base, batch)
    m = batch.completion_mask.bool()
    torch.testing.assert_close(reference_logps(BaseView(policy.eval()), batch, cfg)[m], expected[m], atol=1e-6, rtol=0)
    adapted, _ = completion_logprobs(policy, batch)
    assert float((adapted[m] - expected[m]).abs().max()) > 1e-2  # outside the block the adapter is back on


def test_lora_rl_run_trains_adapters_resumes_exactly_and_exports_merged(tiny_model_dir, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    _rl(tiny_model_dir, whole, "train.max_steps=4")
    _rl(tiny_model_dir, split, "train.max_steps=2")
    _rl(tiny_model_dir, split, "train.max_steps=4")  # resumes from step 2's adapters and optimizer state
    a, b = _steps(whole), _steps(split)
    assert a[1]["kl"] == 0.0  # adapters start as the identity: policy = reference (the adapter-disabled model)
    assert a[4]["kl"] > 0  # the adapters moved the policy off its base
    for step in (3, 4):
        for key in ("reward/mean", "loss", "grad_norm", "kl", "entropy"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-7), (step, key)
    (ckpt,) = checkpoint.list_checkpoints(whole / "checkpoints")
    files = {p.name for p in ckpt.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    # export: a plain model whose logits are the adapted policy's
    out = tmp_path / "exported"
    assert main(["export", str(whole), str(out)]) == 0
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()
    merged, tok = load_model_and_tokenizer(str(out), device="cpu", dtype="float32")
    from peft import PeftModel

    base, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    adapted = PeftModel.from_pretrained(base, str(ckpt)).eval()
    ids = tok("say 7 now", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(input_ids=ids).logits, adapted(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
        plain, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")  # (PEFT wrapped `base`)
        assert float((adapted(input_ids=ids).logits - plain.eval()(input_ids=ids).logits).abs().max()) > 1e-3


def test_lora_dpo_starts_at_log_2_and_saves_adapters(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}:", "chosen": "7 7 7", "rejected": f"no {i}"}) + "\n"
                            for i in range(16)))  # fmt: skip
    run = tmp_path / "run"
    args = [
        "train",
        "dpo",
        f"model.path={tiny_model_dir}",
        f"data.path={data}",
        f"output_dir={run}",
        "model.lora.r=4",
        "train.max_steps=6",
        "train.lr=5e-2",
        "train.prompts_per_step=8",
        "eval.num_problems=2",
    ]
    assert main(args) == 0
    steps = _steps(run)
    assert steps[1]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # identity adapters: policy = reference
    assert steps[6]["loss"] < steps[1]["loss"]
    (ckpt,) = checkpoint.list_checkpoints(run / "checkpoints")
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
