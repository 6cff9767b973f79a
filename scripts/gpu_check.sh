#!/usr/bin/env bash
# GPU check (run on a CUDA machine): the test suite's model tests, then GRPO on CUDA with bf16 autocast.
set -euo pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -c "import torch; print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0), torch.__version__)"
python3 -m pytest -q -m "not gpu" tests 2>&1 | tail -5 || true
python3 - <<'PY'
from unipo.models.tiny import build_tiny_model
build_tiny_model("/tmp/tiny")
PY
python3 -m unipo train task=lucky7 model.path=/tmp/tiny output_dir="$OUT/tiny" train.max_steps=40 train.lr=1e-2 \
  rollout.max_new_tokens=8 eval.num_problems=8 2>&1 | grep -v Warn | tail -4
python3 - <<'PY'
# a mid-size llama (random init, ~125M params) to time a GRPO step at 4 prompts x 8 completions x 128 tokens
import json, os, torch
from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("/tmp/tiny")
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=4, pad_token_id=tok.pad_token_id,
                  eos_token_id=tok.eos_token_id, bos_token_id=None)
LlamaForCausalLM(cfg).save_pretrained("/tmp/mid"); tok.save_pretrained("/tmp/mid")
PY
python3 -m unipo train task=lucky7 model.path=/tmp/mid output_dir="$OUT/mid" train.max_steps=6 train.prompts_per_step=4 \
  rollout.max_new_tokens=128 eval.num_problems=0 algo.kl.coef=0.04 2>&1 | grep -v Warn | tail -8
python3 - <<PY
import json
rows = [json.loads(l) for l in open("$OUT/mid/metrics.jsonl") if "loss" in l]
print("mid-size steps:", [(r["step"], round(r["time/step_s"], 2), round(r["time/generate_s"], 2), round(r["time/update_s"], 2), round(r["tokens/completion_mean"])) for r in rows])
print("peak GPU MB", torch.cuda.max_memory_allocated() // 2**20 if False else "n/a")
PY
