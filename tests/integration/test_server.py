"""A generation server (rollout/server.py): `unipo serve` hosting an HF engine on CPU, driven by
`rollout.engine=server`. The engine-level tests run the server in a thread of this process (its engine's weights can
be read); the runs start `unipo serve` as a process of its own, as a user does. vLLM behind the server needs a GPU
(scripts/gpu_check.sh)."""

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from unipo import config
from unipo.cli import main
from unipo.config import ConfigError
from unipo.models.loading import load_model_and_tokenizer
from unipo.rollout.engine import HFEngine, checkpoint_weights
from unipo.rollout.server import GenerationServer, ServerEngine, _handler, packed, unpacked
from unipo.trainers.checks import check_engine
from unipo.trainers.common import build_algo
from unipo.trainers.dist import World, sample_generators

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"prompt": "Say seven."}, {"prompt": "What is lucky? Answer in one word, please."}]
SAMPLING = {"max_new_tokens": 6, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def test_packed_weights_come_back_whole():
    """Mixed dtypes and shapes in one buffer: an odd count of bf16 values puts the next float32 off its alignment."""
    tensors = [torch.arange(6.0).reshape(2, 3), torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16),
               torch.tensor(7, dtype=torch.int64), torch.linspace(0, 1, 5)]  # fmt: skip
    buffer = packed(tensors)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 24 + 6 + 8 + 20
    meta = [(f"t{i}", str(t.dtype).removeprefix("torch."), list(t.shape)) for i, t in enumerate(tensors)]
    back = unpacked(buffer, meta)
    assert [name for name, _ in back] == ["t0", "t1", "t2", "t3"]
    for (_, got), want in zip(back, tensors, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.fixture
def tiny(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu", dtype="float32")
    return model.eval(), tokenizer


@pytest.fixture
def in_thread(tiny):
    """A server in a thread of this process, hosting an HF engine on its own copy of the tiny model."""
    model, tokenizer = tiny
    engine = HFEngine(copy.deepcopy(model).requires_grad_(False), tokenizer)
    server = GenerationServer(engine, "hf", "tiny", tokenizer, torch.device("cpu"), timeout_s=30.0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def _perturbed(model, seed):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return other


def test_the_server_loads_the_weights_sent_in_buckets_and_samples_as_this_process(tiny, in_thread):
    model, tokenizer = tiny
    server, url = in_thread
    client = ServerEngine(url, tokenizer, "cpu", timeout_s=30.0, bucket_bytes=4096)  # many buckets
    client.attach()
    policy = _perturbed(model, 0)
    client.load_weights(client.weights(policy))
    assert client.version == server.version == 1
    held = dict(server.engine.model.named_parameters())
    sent = dict(checkpoint_weights(policy))
    assert held.keys() == sent.keys()
    assert all(torch.equal(held[name], value) for name, value in sent.items())
    # the run's generator: the server samples from its state and sends it back, advanced
    here, there = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    want = HFEngine(policy, tokenizer).generate(ROWS, n=3, generator=here, **SAMPLING)
    got = client.generate(ROWS, n=3, generator=there, **SAMPLING)
    assert torch.equal(got.completion_ids, want.completion_ids) and got.texts == want.texts
    torch.testing.assert_close(got.rollout_logp, want.rollout_logp, rtol=0, atol=1e-5)  # sums in another thread
    assert torch.equal(got.truncated, want.truncated)
    assert got.rows == ROWS and torch.equal(there.get_state(), here.get_state())
    # one generator per completion, unequal groups, and a roll-in's forced tokens
    keyed = [sample_generators(0, [5, 9], [1, 2]) for _ in range(2)]
    forced = [[7, 8], [], [9]]
    want = HFEngine(policy, tokenizer).generate(ROWS, n=[1, 2], generator=keyed[0], forced=forced, **SAMPLING)
    got = client.generate(ROWS, n=[1, 2], generator=keyed[1], forced=forced, **SAMPLING)
    assert torch.equal(got.completion_ids, want.completion_ids) and torch.equal(got.forced, want.forced)
    assert torch.equal(got.group_ids, torch.tensor([0, 1, 1])) and torch.equal(got.loss_mask, want.loss_mask)
    client.close()
    assert server.group is None


def test_a_rank_samples_only_once_the_server_holds_its_version(tiny, in_thread):
    """Rank 1 asks for version 2 before rank 0 has sent it: the request waits, then samples with version 2."""
    model, tokenizer = tiny
    server, url = in_thread
    first, second = (
        ServerEngine(url, tokenizer, "cpu", timeout_s=30.0),
        ServerEngine(url, tokenizer, "cpu", world=World(1, 2)),
    )
    first.attach()
    first.load_weights(first.weights(model))
    second.version = 1
    second.load_weights(second.weights(model))  # rank 1 sends nothing: it counts version 2
    assert (second.version, server.version) == (2, 1)
    done: dict = {}
    waiting = threading.Thread(target=lambda: done.update(batch=second.generate(ROWS, n=2, greedy=True, **SAMPLING)))
    waiting.start()
    time.sleep(0.5)
    assert waiting.is_alive() and not done
    policy = _perturbed(model, 1)
    first.load_weights(first.weights(policy))
    waiting.join(timeout=30)
    want = HFEngine(policy, tokenizer).generate(ROWS, n=2, greedy=True, **SAMPLING)
    assert torch.equal(done["batch"].completion_ids, want.completion_ids)
    before = HFEngine(model, tokenizer).generate(ROWS, n=2, greedy=True, **SAMPLING)
    assert not torch.equal(want.completion_ids, before.completion_ids)
    server.timeout_s = 0.2
    second.version = 3
    with pytest.raises(RuntimeError, match=r"/generate: RuntimeError: policy version 3's weights never came \(the "
                       r"server holds 2\)"):  # fmt: skip
        second.generate(ROWS, n=1, **SAMPLING)


def test_no_server_and_a_wrong_one_are_one_line_errors(tiny, in_thread, tmp_path):
    model, tokenizer = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(ConfigError, match=rf"no unipo server answers at http://127.0.0.1:{port}; start one"):
        ServerEngine(f"http://127.0.0.1:{port}", tokenizer, "cpu")
    server, url = in_thread
    server.about = {**server.about, "vocab": 50}
    with pytest.raises(
        ConfigError, match=rf"the server at {url} serves tiny with a vocabulary of 50 tokens; the policy"
    ):
        ServerEngine(url, tokenizer, "cpu")


def test_server_engine_refusals():
    def check(*overrides, world=None):
        cfg = config.load("grpo", ["rollout.engine=server", *overrides])
        check_engine(cfg, build_algo(cfg), None, world or World())

    with pytest.raises(ConfigError, match="rollout.engine=server: the sampler 'dr_po' continues completions from"):
        check("algo.sampler.name=dr_po")
    with pytest.raises(ConfigError, match="dist.ray_engines: the generation server"):
        check("dist.ray=true", "dist.ray_engines=2")
    with pytest.raises(ConfigError, match="rollout.max_staleness: the ranks' producers would share one server"):
        check("rollout.max_staleness=1", world=World(0, 2))
    check("rollout.max_staleness=1")  # one process: its producer's requests come one after another
    with pytest.raises(ConfigError, match="rollout.engine: a server hosts an engine of its own: hf or vllm"):
        from unipo.rollout.server import serve

        serve(config.load("grpo", ["rollout.engine=server"]))


def _free_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _serve(model_dir, url):
    """`unipo serve` in a process of its own, hosting the tiny model (as many threads as this process uses, so its
    float sums are this process's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = [f"model.path={model_dir}", "model.device=cpu", "model.dtype=float32", f"rollout.server.url={url}"]
    proc = subprocess.Popen([sys.executable, "-m", "unipo", "serve", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert f"with the hf engine at {url}" in proc.stdout.readline()
    return proc


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    url = _free_url()
    proc = _serve(tiny_model_dir, url)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _grpo(model_dir, run, *extra):
    return ["train", "grpo", f"model.path={model_dir}", "task=lucky7", f"output_dir={run}", "model.autocast=off",
            "rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=0", "train.prompts_per_step=4",
            "train.lr=1e-2", "train.max_steps=3", "log.progress=false", "log.completions_per_step=16",
            "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]", *extra]  # fmt: skip


def _completions(run):
    return [(r["step"], r["prompt"], r["completion"]) for r in map(json.loads, (run / "completions.jsonl").open())]


def _steps(run):
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r}


def _same(run, other):
    assert _completions(run) == _completions(other) and len({c[0] for c in _completions(run)}) == 3
    a, b = _steps(run), _steps(other)
    for step in (1, 2, 3):
        for key in ("reward/mean", "loss", "grad_norm", "entropy", "rollout_is/weight"):  # the last with rollout_is
            if key in a[step] or key in b[step]:
                assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)


@pytest.mark.parametrize("extra", [[], ["rollout.max_staleness=1"], ["model.lora.r=4", "train.lr=5e-2"],
                                   ["model.autocast=bf16", "algo.policy_loss.name=rollout_is"]],
                         ids=["sync", "async", "lora", "autocast"])  # fmt: skip
def test_a_run_through_the_server_samples_what_the_trainers_process_does(served, tiny_model_dir, tmp_path, extra):
    """The weights go to the server after every update (without them steps 2 and 3 differ; with LoRA, merged into
    the server's plain model under its checkpoint names), and it samples under the trainer's autocast (its log-probs
    are the behaviour ones `rollout_is` weighs with); the runs
    attach to the same server one after another."""
    here, there = tmp_path / "here", tmp_path / "there"
    assert main(_grpo(tiny_model_dir, here, *extra)) == 0
    assert main(_grpo(tiny_model_dir, there, "rollout.engine=server", f"rollout.server.url={served}", *extra)) == 0
    _same(here, there)
    assert all(r["time/sync_s"] > 0 for r in _steps(there).values())  # the weights' transfer, timed
    producer = "rollout.max_staleness=1" in extra  # in process, only the producer's copy of the policy loads them
    assert all(("time/sync_s" in r) == producer for r in _steps(here).values())


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_share_one_server(served, tiny_model_dir, tmp_path, strategy):
    """2 gloo ranks, each sampling its prompts through the server, rank 0 sending the weights (under fsdp2 gathered
    from both ranks' shards first): one process's run."""
    here, there = tmp_path / "here", tmp_path / "there"
    assert main(_grpo(tiny_model_dir, here)) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = _grpo(tiny_model_dir, there, "rollout.engine=server", f"rollout.server.url={served}",
                 f"dist.strategy={strategy}")  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unipo", *args]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _steps(here), _steps(there)
    mine = _completions(there)  # rank 0 logs its own share: half the prompts
    assert len(mine) == 3 * 8 and set(mine) <= set(_completions(here))
    for step in (1, 2, 3):
        for key in ("reward/mean", "loss", "grad_norm", "entropy"):
            # float sums in another order (two ranks' gradients added)
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)


def test_a_server_that_dies_stops_the_run_in_one_line_and_it_resumes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The server is killed once step 1's weights are sent: step 2's generation fails the run with one line, the
    checkpoint of step 1 is kept, and the same command with a new server resumes into the uninterrupted run."""
    here, there, url = tmp_path / "here", tmp_path / "there", _free_url()
    assert main(_grpo(tiny_model_dir, here)) == 0
    proc = _serve(tiny_model_dir, url)
    loads = []
    real = ServerEngine.load_weights

    def load_then_kill(self, weights):
        real(self, weights)
        loads.append(self.version)
        if self.version == 2:  # step 1's update
            proc.kill()
            proc.wait(timeout=30)

    monkeypatch.setattr(ServerEngine, "load_weights", load_then_kill)
    args = _grpo(tiny_model_dir, there, "rollout.engine=server", f"rollout.server.url={url}", "train.save_every=1")
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"unipo: error: rollout.server: the server at {url} did not answer /generate: ")
    assert error.endswith("The same command resumes from the last checkpoint.")
    assert sorted(_steps(there)) == [1]
    monkeypatch.undo()
    proc = _serve(tiny_model_dir, url)
    try:
        assert main(args) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    _same(here, there)
