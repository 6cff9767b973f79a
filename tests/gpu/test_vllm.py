"""The vLLM engine (rollout/vllm.py) for real: needs CUDA and vLLM (`pip install 'unipo[vllm]'`); CI skips it
and `scripts/gpu_check.sh` runs it. The CPU tests drive the same code through a stand-in
(tests/integration/test_engines.py).
What only a GPU shows (`../shared/notes/scale.md` §4): vLLM's processed log-probs equal the trainer's at T = 0.7 without
filtering (importance ratio ≈ 1); sleeping and waking keeps the weights; loading weights changes the samples and loading
the old ones back restores them (the prefix cache does not serve stale KV); a GRPO run trains on vLLM's samples."""

import json

import pytest
import torch

from unipo import config
from unipo.cli import main
from unipo.models.loading import load_model_and_tokenizer
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.vllm import VLLMEngine

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
vllm = pytest.importorskip("vllm")
if not torch.cuda.is_available():
    pytest.skip("vLLM needs CUDA", allow_module_level=True)

ROWS = [{"prompt": "Say seven."}, {"prompt": "What is lucky? Answer in one word."}]


@pytest.fixture(scope="module")
def engine_and_model(tiny_model_dir):
    settings = ["rollout.vllm.gpu_memory_utilization=0.2", "rollout.vllm.max_model_len=512"]
    cfg = config.load("grpo", [f"model.path={tiny_model_dir}", "model.dtype=float32", *settings])
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cuda", dtype="float32")
    return VLLMEngine.from_config(cfg, tokenizer, "cuda", sleeps=True), model.eval()


def test_processed_logprobs_are_the_trainers(engine_and_model):
    engine, model = engine_and_model
    g = torch.Generator().manual_seed(0)
    batch = engine.generate(ROWS, n=8, max_new_tokens=24, temperature=0.7, generator=g)
    with torch.no_grad():
        logp, *_ = completion_logprobs(model, batch, temperature=0.7)
    mask = batch.completion_mask.bool()
    gap = (logp - batch.rollout_logp)[mask].abs()
    ratio = (logp - batch.rollout_logp)[mask].exp()
    stats = f"mean |gap| {gap.mean():.2e}, max {gap.max():.2e}, IS mean {ratio.mean():.4f}"
    print(f"vLLM vs trainer log-probs at T=0.7: {stats}")
    assert float(gap.mean()) < 1e-2 and abs(float(ratio.mean()) - 1) < 1e-2


def test_sleep_wake_keeps_and_load_changes_the_samples(engine_and_model):
    engine, model = engine_and_model
    kw = {"n": 2, "max_new_tokens": 16, "greedy": True}
    first = engine.generate(ROWS, **kw).completion_ids  # then asleep (level 1: weights on CPU)
    assert torch.equal(engine.generate(ROWS, **kw).completion_ids, first)
    with torch.no_grad():
        model.model.norm.weight.mul_(-3)
    engine.load_weights(engine.weights(model))
    moved = engine.generate(ROWS, **kw).completion_ids
    assert not torch.equal(moved, first)
    with torch.no_grad():
        model.model.norm.weight.div_(-3)
    engine.load_weights(engine.weights(model))
    assert torch.equal(engine.generate(ROWS, **kw).completion_ids, first)


def test_grpo_trains_on_vllm_samples(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "grpo", f"model.path={tiny_model_dir}", "task=lucky7", f"output_dir={run}",
                 "rollout.engine=vllm", "rollout.vllm.gpu_memory_utilization=0.2", "rollout.max_new_tokens=16",
                 "train.max_steps=3", "eval.num_problems=0", "log.progress=false", "algo.policy_loss.name=rollout_is",
                 "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]"]) == 0  # fmt: skip
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2, 3]
