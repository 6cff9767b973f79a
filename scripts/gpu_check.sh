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
PY

# vLLM (rollout.engine=vllm): its GPU tests, then GRPO with each engine on SmolLM2 and on a 0.5B llama with random
# weights (SmolLM2's tokenizer), reporting generated and updated tokens per second and the peak GPU memory in use
if ! python3 -c "import vllm" 2>/dev/null; then
  echo "vLLM is not installed: its checks are skipped (pip install 'unipo[vllm]')"; exit 0
fi
python3 -m pytest -q -s -m gpu tests/gpu 2>&1 | grep -E "vLLM vs trainer|passed|failed|Error" || true
python3 - <<'PY'
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from unipo.models.loading import default_model_dir
tok = AutoTokenizer.from_pretrained(default_model_dir())
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=True, torch_dtype="bfloat16",
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
model = LlamaForCausalLM(cfg)
print(f"0.5B model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
model.save_pretrained("/tmp/half"); tok.save_pretrained("/tmp/half")
PY
# server: `unipo serve` hosting vLLM in a second process on the same GPU (its weights come through gloo: NCCL joins
# two processes only on two GPUs)
URL=http://127.0.0.1:8765
for model in default /tmp/half; do
  for engine in hf vllm server; do
    run="$OUT/$(basename $model)-$engine"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$run.mem" & smi=$!
    if [ $engine = server ]; then
      python3 -m unipo serve model.path=$model rollout.engine=vllm rollout.vllm.gpu_memory_utilization=0.3 \
        rollout.server.url=$URL > "$run.serve.log" 2>&1 & served=$!
      for _ in $(seq 120); do grep -q "unipo: serving" "$run.serve.log" && break; sleep 2; done
    fi
    python3 -m unipo train grpo task=countdown model.path=$model output_dir="$run" rollout.engine=$engine \
      rollout.server.url=$URL train.max_steps=5 train.prompts_per_step=8 rollout.group_size=8 \
      rollout.max_new_tokens=256 eval.num_problems=0 log.progress=false algo.kl.coef=0.04 2>&1 \
      | grep -iE "error|Traceback" || true
    if [ $engine = server ]; then kill $served; wait $served || true; fi
    kill $smi
    python3 - "$run" <<'PY'
import json, sys
run = sys.argv[1]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if "loss" in l][1:]  # the first step warms up
tokens = sum(r["tokens/completion_mean"] * 64 for r in rows)  # 8 prompts x 8 completions
gen, upd = sum(r["time/generate_s"] for r in rows), sum(r["time/update_s"] for r in rows)
peak = max(int(x) for x in open(f"{run}.mem").read().split() if x.strip().isdigit())
print(f"{run}: generate {tokens / gen:.0f} tokens/s, update {tokens / upd:.0f} tokens/s, peak GPU memory {peak} MiB")
PY
  done
done
