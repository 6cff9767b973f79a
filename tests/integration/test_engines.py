"""Generation engines (rollout/engine.py, rollout/vllm.py): a model's weights under its checkpoint names with LoRA
merged; the vLLM engine driven through a stand-in with vLLM's API (tests/integration/fake_vllm.py: no GPU here) —
the batch it builds from vLLM's outputs, its sleep/load order, and a GRPO run that loads every update into it.
The real engine runs in tests/gpu/test_vllm.py."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from threading import Condition
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.integration import fake_vllm
from unipo import config
from unipo.cli import main
from unipo.config import ConfigError
from unipo.models.loading import autocast_context, load_model_and_tokenizer
from unipo.models.lora import with_lora
from unipo.rollout.batch import tokenize_prompts
from unipo.rollout.engine import HFEngine, checkpoint_weights
from unipo.rollout.hf import sample_tokens
from unipo.rollout.ray_engines import _EngineActor
from unipo.rollout.vllm import VLLMEngine
from unipo.trainers import checkpoint, generation
from unipo.trainers.checks import check_engine, check_ray_engines
from unipo.trainers.common import Timer, build_algo
from unipo.trainers.dist import World, sample_generators
from unipo.trainers.pipeline import Pipeline

pytestmark = pytest.mark.slow

ROWS = [{"prompt": "Say seven."}, {"prompt": "What is lucky? Answer in one word, please."}]


@pytest.fixture
def tiny(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu", dtype="float32")
    return model.eval(), tokenizer


def test_checkpoint_weights_are_the_saved_checkpoints(tiny, tiny_model_dir):
    model, _ = tiny
    saved = load_file(str(next(Path(tiny_model_dir).glob("*.safetensors"))))
    ours = dict(checkpoint_weights(model))
    assert ours.keys() == saved.keys()  # a tied LM head comes once, as its embedding
    for name, value in saved.items():
        assert torch.equal(ours[name], value), name


def test_checkpoint_weights_merge_lora_as_peft_does(tiny):
    model, _ = tiny
    lora = SimpleNamespace(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"])
    peft = with_lora(copy.deepcopy(model), lora)
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # B = 0 at the start would make the merge the base
    before = {n: p.clone() for n, p in peft.named_parameters()}
    merged = copy.deepcopy(peft).merge_and_unload().state_dict()
    ours = dict(checkpoint_weights(peft))
    assert ours.keys() == dict(checkpoint_weights(model)).keys()  # the plain model's checkpoint names
    for name, value in ours.items():
        torch.testing.assert_close(value, merged[name], rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(
        ours["model.layers.0.self_attn.q_proj.weight"], model.model.layers[0].self_attn.q_proj.weight
    )
    assert all(torch.equal(p, before[n]) for n, p in peft.named_parameters())  # the trainer's weights are untouched


def test_hf_engine_copy_loads_the_trainable_weights_by_name(tiny):
    model, tokenizer = tiny
    engine = HFEngine.copy_of(model, tokenizer)
    with torch.no_grad():
        model.model.norm.weight.mul_(2)
    engine.load_weights(engine.weights(model))
    assert all(torch.equal(a, b) for a, b in zip(engine.model.parameters(), model.parameters(), strict=True))
    assert not any(p.requires_grad for p in engine.model.parameters())


def _vllm_engine(monkeypatch, tiny_model_dir, tokenizer, sleep_level):
    vllm = fake_vllm.install(monkeypatch)
    return VLLMEngine(vllm.LLM(model=str(tiny_model_dir)), vllm, tokenizer, "cpu", sleep_level)


def test_vllm_engine_batch_is_what_vllm_sampled(monkeypatch, tiny, tiny_model_dir):
    model, tokenizer = tiny
    engine = _vllm_engine(monkeypatch, tiny_model_dir, tokenizer, None)
    stops = list(range(0, len(tokenizer), 5))  # every fifth token ends a completion: some stop, some are cut
    model.generation_config.eos_token_id = engine.llm.hf.generation_config.eos_token_id = stops
    kw = {"n": 3, "max_new_tokens": 6, "temperature": 0.7}
    batch = engine.generate(ROWS, **kw, generator=sample_generators(5, [0, 1], [3, 3]))
    prompt_ids, prompt_mask = tokenize_prompts([r["prompt"] for r in ROWS], tokenizer, torch.device("cpu"))
    assert torch.equal(batch.prompt_ids, prompt_ids) and torch.equal(batch.prompt_mask, prompt_mask)
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for g in sample_generators(5, [0, 1], [3, 3])]
    for i, seed in enumerate(seeds):  # completion i: vLLM's request i, with the seed of the completion's generator
        ids = prompt_ids[i // 3][prompt_mask[i // 3].bool()][None]
        alone = sample_tokens(model, tokenizer, ids, torch.ones_like(ids), [{}], n=1, max_new_tokens=6,
                              temperature=0.7, generator=[torch.Generator().manual_seed(seed)])  # fmt: skip
        n = int(alone.completion_mask.sum())
        assert batch.completion_mask[i].tolist() == [1] * n + [0] * (batch.completion_ids.shape[1] - n)
        assert batch.completion_ids[i, :n].tolist() == alone.completion_ids[0, :n].tolist()
        torch.testing.assert_close(batch.rollout_logp[i, :n], alone.rollout_logp[0, :n])
        assert bool(batch.truncated[i]) == bool(alone.truncated[0])
        assert batch.texts[i] == tokenizer.decode(alone.completion_ids[0, :n].tolist(), skip_special_tokens=True)
    assert bool(batch.truncated.any()) and not bool(batch.truncated.all())  # both kinds of ending were checked
    # a completion depends only on its generator: prompt 1 alone samples what it did in the batch of two
    again = engine.generate(ROWS[1:], **kw, generator=sample_generators(5, [1], [3]))
    width = again.completion_ids.shape[1]
    assert torch.equal(again.completion_ids, batch.completion_ids[3:, :width])


def test_vllm_engine_sleeps_between_batches_and_loads_awake(monkeypatch, tiny, tiny_model_dir):
    model, tokenizer = tiny
    engine = _vllm_engine(monkeypatch, tiny_model_dir, tokenizer, 2)
    llm, kw = engine.llm, {"n": 2, "max_new_tokens": 4, "generator": torch.Generator().manual_seed(0)}
    engine.generate(ROWS, **kw)
    assert llm.calls == ["generate", "sleep2"]
    with pytest.raises(RuntimeError, match="discarded its weights"):  # level 2: nothing to sample with
        engine.generate(ROWS, **kw)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)  # tied: the embedding moves too
    engine.load_weights(engine.weights(model))
    assert llm.calls[2:] == ["wake weights", "apply_model", "reset_prefix_cache"]
    assert all(torch.equal(a, b) for a, b in zip(llm.hf.parameters(), model.parameters(), strict=True))
    engine.generate(ROWS, **kw)
    assert llm.calls[5:] == ["wake kv_cache", "generate", "sleep2"]


def test_vllm_engine_refusals():
    def check(*overrides):
        cfg = config.load("grpo", ["rollout.engine=vllm", *overrides])
        check_engine(cfg, build_algo(cfg), None, World())

    with pytest.raises(ConfigError, match="the sampler 'dr_po' continues completions from forced tokens"):
        check("algo.sampler.name=dr_po")
    with pytest.raises(ConfigError, match="the advantage 'spo_segment' continues completions from forced tokens"):
        check("algo.advantage.name=spo_segment")
    with pytest.raises(ConfigError, match="multi-turn environment"):
        check_engine(
            config.load("grpo", ["rollout.engine=vllm"]), build_algo(config.load("grpo", [])), object(), World()
        )


def test_vllm_engine_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    cfg = config.load("grpo", ["rollout.engine=vllm"])
    with pytest.raises(ConfigError, match=r"rollout.engine=vllm needs vLLM on a GPU machine: pip install"):
        check_engine(cfg, build_algo(cfg), None, World())


def _run(model_dir, run, *extra):
    return main(["train", "grpo", f"model.path={model_dir}", "task=lucky7", f"output_dir={run}", "model.autocast=off",
                 "rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=0", "train.prompts_per_step=2",
                 "train.lr=1e-2", "train.max_steps=2", "log.progress=false", "rollout.engine=vllm",
                 "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]", *extra])  # fmt: skip


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_on_vllm_loads_every_update(monkeypatch, tiny_model_dir, tmp_path, lora):
    fake_vllm.install(monkeypatch)
    extra = ["model.lora.r=4", "model.lora.alpha=8"] if lora else []
    assert _run(tiny_model_dir, tmp_path / "run", *extra) == 0
    (llm,) = fake_vllm.LLM.instances
    load = ["wake weights", "apply_model", "reset_prefix_cache"]
    sample = ["wake kv_cache", "generate", "sleep1"]
    assert llm.calls == ["apply_model", "reset_prefix_cache", "generate", "sleep1", *load, *sample, *load]
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["enable_sleep_mode"]
    (ckpt,) = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    if lora:
        from unipo.models.lora import merged_base

        trained = merged_base(ckpt, lambda path: load_model_and_tokenizer(path, device="cpu", dtype="float32")[0])
    else:
        trained, _ = load_model_and_tokenizer(str(ckpt), device="cpu", dtype="float32")
    final = dict(checkpoint_weights(trained))
    held = dict(llm.hf.named_parameters())
    assert final.keys() <= held.keys()
    for name, value in final.items():  # the engine holds the policy after the last update
        torch.testing.assert_close(held[name], value, rtol=0, atol=1e-6, msg=name)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2]


def _grpo(model_dir, run, *extra):
    return main(["train", "grpo", f"model.path={model_dir}", "task=lucky7", f"output_dir={run}", "model.autocast=off",
                 "rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=0", "train.prompts_per_step=4",
                 "train.lr=1e-2", "train.max_steps=3", "log.progress=false", "log.completions_per_step=16",
                 "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]", *extra])  # fmt: skip


def _completions(run):
    return [(r["step"], r["prompt"], r["completion"]) for r in map(json.loads, (run / "completions.jsonl").open())]


@pytest.mark.parametrize("extra", [[], ["rollout.max_staleness=1"]], ids=["sync", "async"])
def test_two_ray_engines_sample_what_the_trainers_process_does(tiny_model_dir, tmp_path, extra):
    """The prompts split over two engine actors, each completion keyed by its prompt, weights loaded after every update:
    every step's completions and metrics are the in-process run's (without the loads, steps 2 and 3 differ)."""
    here, actors = tmp_path / "here", tmp_path / "actors"
    assert _grpo(tiny_model_dir, here, *extra) == 0
    assert _grpo(tiny_model_dir, actors, "dist.ray=true", "dist.ray_engines=2", "reward.workers=1", *extra) == 0
    assert _completions(actors) == _completions(here) and len({c[0] for c in _completions(here)}) == 3
    a, b = (_steps(run) for run in (here, actors))
    for step in (1, 2, 3):
        for key in ("reward/mean", "loss", "grad_norm", "entropy"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)


def _steps(run):
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r}


def test_an_engine_actor_samples_under_the_trainers_autocast(tiny):
    """The behaviour log-probs of an HF engine actor are those the trainer's process samples under `model.autocast`
    (bf16 and float32 ones differ by 100 times the tolerance and more)."""
    model, tokenizer = tiny
    actor = _EngineActor("hf", (copy.deepcopy(model), tokenizer, "bf16"))
    sampling = {"n": 2, "max_new_tokens": 6, "temperature": 1.0}
    got, _ = actor.generate(ROWS, dict(sampling), [g.get_state() for g in sample_generators(0, [1, 2], [2, 2])])
    with autocast_context(model, "bf16"):
        want = HFEngine(model, tokenizer).generate(ROWS, generator=sample_generators(0, [1, 2], [2, 2]), **sampling)
    plain = HFEngine(model, tokenizer).generate(ROWS, generator=sample_generators(0, [1, 2], [2, 2]), **sampling)
    assert torch.equal(got.completion_ids, want.completion_ids)
    torch.testing.assert_close(got.rollout_logp, want.rollout_logp, rtol=0, atol=1e-6)
    assert (plain.rollout_logp - want.rollout_logp).abs().max() > 1e-4


def test_ray_engines_refusals():
    cfg = config.load("grpo", ["dist.ray_engines=2"])
    with pytest.raises(ConfigError, match="dist.ray_engines: the engines run in Ray actors; set dist.ray=true"):
        check_ray_engines(cfg, None, World())
    shared = ["dist.ray_engines=2", "dist.ray=true", "dist.ray_address=auto"]
    check_ray_engines(config.load("grpo", shared), None, World(0, 2))  # ranks in step share rank 0's actors
    cfg = config.load("grpo", [*shared, "rollout.max_staleness=1"])
    with pytest.raises(ConfigError, match="the ranks' producers would share the engine actors"):
        check_ray_engines(cfg, None, World(0, 2))


def test_two_ranks_share_the_engine_actors_of_one_cluster(tiny_model_dir, tmp_path):
    """A Ray cluster started as a user does (`ray start --head`), 2 torchrun ranks on it: rank 0's two engine actors
    sample every rank's prompts, loaded with the weights after every update; the run is one process's."""
    here, there = tmp_path / "here", tmp_path / "there"
    assert _grpo(tiny_model_dir, here) == 0
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = [ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        args = ["train", "grpo", f"model.path={tiny_model_dir}", "task=lucky7", f"output_dir={there}",
                "model.autocast=off", "rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=0",
                "train.prompts_per_step=4", "train.lr=1e-2", "train.max_steps=3", "log.progress=false",
                "log.completions_per_step=16", "dist.ray=true", "dist.ray_engines=2", "reward.workers=1",
                f"dist.ray_address=127.0.0.1:{port}",
                "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]"]  # fmt: skip
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unipo"]
        proc = subprocess.run([*cmd, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    mine = _completions(there)  # rank 0 logs its own share: half the prompts
    assert len(mine) == 3 * 8 and set(mine) <= set(_completions(here))
    a, b = (_steps(run) for run in (here, there))
    for step in (1, 2, 3):
        for key in ("reward/mean", "loss", "grad_norm", "entropy"):
            # float sums in another order (two ranks' gradients added)
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)


def test_multi_turn_episodes_are_sampled_by_the_engines_model(tiny, monkeypatch):
    """The producer of asynchronous rollouts samples episodes with its engine's copy of the policy, never with the
    model the trainer is updating meanwhile."""
    model, tokenizer = tiny
    used = []
    monkeypatch.setattr(generation, "rollout", lambda m, *args, **kwargs: used.append(m))
    engine = HFEngine.copy_of(model, tokenizer)
    s = SimpleNamespace(cfg=config.load("grpo", ["model.autocast=off"]), model=model, tokenizer=tokenizer,
                        env=(None, None), engine=engine, generator=torch.Generator())  # fmt: skip
    generation.generate(s, ROWS, Timer())
    assert used == [s.engine.model] and s.engine.model is not model


def test_a_published_update_is_the_weights_at_publishing(tiny):
    """The producer loads a published version later, after further updates: vLLM's weight stream is read when the
    trainer publishes (in its thread, where a sharded model gathers), not when the producer loads it."""
    model, _ = tiny
    pipeline = Pipeline.__new__(Pipeline)  # its publishing alone, without the producer thread
    pipeline.engine, pipeline.changed, pipeline.published = SimpleNamespace(weights=VLLMEngine.weights), Condition(), {}
    before = model.model.norm.weight.detach().clone()
    pipeline.publish(model, 1)
    with torch.no_grad():
        model.model.norm.weight.mul_(2)  # the next update
    assert torch.equal(dict(pipeline.published[1])["model.norm.weight"], before)
