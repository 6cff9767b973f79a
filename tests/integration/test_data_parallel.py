"""Data parallelism with 2 gloo ranks on CPU (trainers/dist.py): the update's gradient, whole runs against one
process, and a rank killed mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unipo.cli import main
from unipo.models.tiny import build_tiny_model
from unipo.trainers import checkpoint
from unipo.trainers.rl import REFERENCE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
LENGTH = "{_component_: tests.integration.rewards_for_tests.reply_length}"  # a graded reward: every step trains
COMPARED = ("reward/mean", "reward/std", "loss", "grad_norm", "entropy", "tokens/completion_mean", "clip_frac")


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _train_args(model_dir, run, *extra, recipe="grpo"):
    return ["train", recipe, f"model.path={model_dir}", "task=lucky7", f"output_dir={run}", "model.autocast=off",
            "rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=4", "train.prompts_per_step=4",
            "train.lr=1e-2", "train.lr_schedule=constant", "eval.show_replies=0", f"rewards=[{LENGTH}]",
            *extra]  # fmt: skip


def _steps(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "eval/accuracy" not in r}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_update_on_two_ranks_equals_one_process(tiny_model_dir, tmp_path, strategy):
    out = tmp_path / "report.json"
    worker = Path(__file__).with_name("dp_update_worker.py")
    proc = subprocess.run(_torchrun(str(worker), tiny_model_dir, str(out), strategy), env=ENV, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report.keys() == {"token_mean_rank0_idle", "seq_mean_token_mean_kl"}
    for case, r in report.items():
        # SGD at lr 1 without clipping: each parameter's change is the gradient; the summed floats may differ in order
        assert r["grad_norm"] > 0.1, case
        assert r["param_gap"] < 1e-6 and r["loss_gap"] < 1e-6 and r["grad_norm_gap"] < 1e-6, (case, r)
        assert r["trained_frac_gap"] == 0.0, case
        assert r["sharded"] == (strategy == "fsdp2"), case  # the worker checked each rank holds half of every row


def test_two_rank_run_matches_one_process_and_resumes_after_a_killed_rank(tiny_model_dir, tmp_path):
    # one process, 4 steps, checkpoints every step
    alone = tmp_path / "alone"
    assert main(_train_args(tiny_model_dir, alone, "train.max_steps=4")) == 0
    # 2 ranks, same seeds: the same samples (per-completion generators) and the same gradient, step after step
    pair = tmp_path / "pair"
    cmd = _torchrun("-m", "unipo", *_train_args(tiny_model_dir, pair, "train.max_steps=3"))
    proc = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _steps(alone), _steps(pair)
    assert sorted(b) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in COMPARED:
            # float sums in another order (two ranks' gradients added): a gap of ~1e-7 that 3 steps keep small
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)
    assert (pair / "checkpoints").is_dir() and not list(pair.glob("**/*rank*"))  # rank 0 alone writes

    # kill rank 1 once step 2 or a later one is checkpointed (only the last 2 are kept, so step 2's may be gone when
    # this looks): the run fails (torchrun stops rank 0), nothing saved is lost
    killed = tmp_path / "killed"
    cmd = _torchrun("-m", "unipo", *_train_args(tiny_model_dir, killed, "train.max_steps=500", "train.save_every=1"))
    launcher = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while max((int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("step-*")), default=0) < 2:
            assert launcher.poll() is None and time.monotonic() < deadline, "the 2-rank run ended or stalled early"
            time.sleep(0.2)
        os.kill(_rank_pid(launcher.pid, 1), signal.SIGKILL)
        _, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    saved = checkpoint.list_checkpoints(killed / "checkpoints")
    assert saved and all(checkpoint.verify(c) for c in saved)
    last = checkpoint.verify(saved[-1])["step"]
    assert 2 <= last < 500
    # resume in ONE process to step last + 2: the same steps as the uninterrupted single-process run
    assert main(_train_args(tiny_model_dir, killed, f"train.max_steps={last + 2}", "train.save_every=1")) == 0
    reference = tmp_path / "reference"
    assert main(_train_args(tiny_model_dir, reference, f"train.max_steps={last + 2}")) == 0
    k, r = _steps(killed), _steps(reference)
    assert sorted(k) == list(range(1, last + 3))
    for step in (last + 1, last + 2):
        for key in COMPARED:
            assert k[step][key] == pytest.approx(r[step][key], rel=1e-4, abs=1e-5), (step, key)


def _same_steps(run, other, steps):
    a, b = _steps(run), _steps(other)
    for step in steps:
        for key in COMPARED:
            if key in a[step] or key in b[step]:  # a step that trains nothing has no entropy or clip fraction
                assert a[step][key] == pytest.approx(b[step][key], rel=1e-4, abs=1e-5), (step, key)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_critic_trains_on_two_ranks_as_in_one_process(tiny_model_dir, tmp_path, strategy):
    # PPO: GAE whitened over the whole batch, the value model trained on every rank's returns with summed gradients
    # (under fsdp2 too, where the policy's gradients are reduced in its backward and the critic, whole on every rank,
    # is not sharded: its gradients were once left unsummed there, and the ranks' critics drifted apart)
    args = ("train.max_steps=3", "critic.lr=1e-3")
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *args, strategy=strategy, recipe="ppo")
    _same_steps(pair, alone, (1, 2, 3))
    a, b = _steps(alone), _steps(pair)
    assert a[1]["critic/value_loss"] > 0 and a[3]["critic/values_mean"] != 0  # the critic trains
    for step in (1, 2, 3):
        for key in ("critic/value_loss", "critic/grad_norm", "critic/explained_var", "critic/values_mean"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)


def test_fsdp2_run_matches_one_process_and_resumes_into_other_world_sizes(tiny_model_dir, tmp_path):
    # one process, 5 steps, every checkpoint kept; KL to a reference, so the reference is sharded too
    kl = ("algo.kl.coef=0.05", "train.save_every=1", "train.keep_checkpoints=5")
    alone = tmp_path / "alone"
    assert main(_train_args(tiny_model_dir, alone, "train.max_steps=5", *kl)) == 0
    # 2 ranks, each with a shard of every parameter: the same 3 steps, and the same checkpoint as one process
    pair = tmp_path / "pair"
    cmd = _torchrun("-m", "unipo", *_train_args(tiny_model_dir, pair, "train.max_steps=3", "dist.strategy=fsdp2", *kl))
    proc = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_steps(pair, alone, (1, 2, 3))
    mine, theirs = (checkpoint.list_checkpoints(r / "checkpoints")[2] for r in (pair, alone))
    a, b = load_file(mine / "model.safetensors"), load_file(theirs / "model.safetensors")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    moments = [torch.load(c / checkpoint.STATE, weights_only=False)["optimizer"] for c in (mine, theirs)]
    assert moments[0]["param_groups"] == moments[1]["param_groups"]  # keyed by parameter index, as one process does
    for i, state in moments[1]["state"].items():
        assert torch.allclose(moments[0]["state"][i]["exp_avg_sq"], state["exp_avg_sq"], atol=1e-8), i
    # the sharded checkpoint resumes in ONE process (step 4), and that one on 2 sharded ranks again (step 5)
    assert main(_train_args(tiny_model_dir, pair, "train.max_steps=4", *kl)) == 0
    cmd = _torchrun("-m", "unipo", *_train_args(tiny_model_dir, pair, "train.max_steps=5", "dist.strategy=fsdp2", *kl))
    proc = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(_steps(pair)) == [1, 2, 3, 4, 5]
    _same_steps(pair, alone, (4, 5))


def _alone_and_pair(model_dir, tmp_path, *args, strategy="ddp", recipe="grpo"):
    """The same run of `recipe` in one process and on 2 ranks with `strategy`: their run directories."""
    alone, pair = tmp_path / "alone", tmp_path / "pair"
    assert main(_train_args(model_dir, alone, *args, recipe=recipe)) == 0
    cmd = _torchrun("-m", "unipo", *_train_args(model_dir, pair, f"dist.strategy={strategy}", *args, recipe=recipe))
    proc = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return alone, pair


@pytest.mark.parametrize(
    ("prompts", "rounds", "strategy", "recipe"),
    [(4, 6, "ddp", "grpo"), (2, 1, "ddp", "grpo"), (2, 1, "fsdp2", "grpo"), (2, 1, "ddp", "ppo")],
)
def test_a_group_filter_keeps_on_two_ranks_what_one_process_keeps(tiny_model_dir, tmp_path, prompts, rounds,
                                                                  strategy, recipe):  # fmt: skip
    # DAPO's dynamic sampling on a coin-flip reward with groups of 2: about half the groups are all-equal and dropped,
    # and more prompts are drawn and shared out until `prompts` groups are kept (or `rounds` ran: with 1 round and 2
    # prompts, a step may keep one rank's group only, the other rank training on none: under fsdp2 it still joins the
    # sharded reference's and the update's gathers, with a placeholder row)
    even = "{_component_: tests.integration.rewards_for_tests.even_length}"
    ds = (f"algo.sampler={{name: dynamic_sampling, max_gen_batches: {rounds}}}", "rollout.group_size=2",
          f"rewards=[{even}]", "train.max_steps=3", f"train.prompts_per_step={prompts}",
          "algo.kl.coef=0.05")  # fmt: skip
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *ds, strategy=strategy, recipe=recipe)
    _same_steps(pair, alone, (1, 2, 3))
    a, b = _steps(alone), _steps(pair)
    for step in (1, 2, 3) if recipe == "ppo" else ():  # the critic's values of an empty rank's batch crashed it once
        assert b[step]["critic/value_loss"] == pytest.approx(a[step]["critic/value_loss"], rel=1e-4, abs=1e-7), step
    if rounds > 1:  # groups were dropped and replaced
        assert any(a[step]["sampler/gen_batches"] > 1 for step in (1, 2, 3))
    else:  # a step kept one of the 2 groups
        assert any(a[step]["sampler/groups"] == 1 for step in (1, 2, 3))
    for step in (1, 2, 3):
        for key in ("sampler/gen_batches", "sampler/kept_frac", "sampler/groups"):
            assert b[step][key] == a[step][key], (step, key)
        assert b[step]["kl"] == pytest.approx(a[step]["kl"], rel=1e-4, abs=1e-7), step


@pytest.mark.parametrize(
    ("strategy", "sampler", "frac"),
    [("ddp", "{name: hpt, solved_above: 0.8}", "sampler/demo_frac"),
     ("fsdp2", "{name: gt_in_group_recon}", "sampler/ground_truth_frac")],
)  # fmt: skip
def test_a_per_group_sampler_acts_on_two_ranks_as_one_process_does(tiny_model_dir, tmp_path, strategy, sampler, frac):
    # HPT: a group with no reply above 0.8 (about 0.8^4 of them) trains on its demonstration instead, with `sft_nll`;
    # ViSurf: a rollout of each group is replaced by the reference, trained with the group's advantage. Each rank acts
    # on its own groups; the step's gradient (global counts per loss term) and the sampler's batch statistics are the
    # one process's
    sft = ("algo.regularizers=[{name: sft_nll, coef: 1.0}]",) if "hpt" in sampler else ()
    args = (f"algo.sampler={sampler}", *sft, "task=arithmetic", "train.max_steps=3")
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *args, strategy=strategy)
    _same_steps(pair, alone, (1, 2, 3))
    a, b = _steps(alone), _steps(pair)
    for step in (1, 2, 3):
        for key in [k for k in a[step] if k.startswith(("sampler/", "sft/"))]:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)
    if "hpt" in sampler:  # some groups switched and some not, on some step
        assert any(0 < a[step][frac] < 1 for step in (1, 2, 3)), [a[step][frac] for step in (1, 2, 3)]
    else:
        assert all(a[step][frac] == 1 for step in (1, 2, 3))


def test_fsdp2_moves_a_sharded_reference_as_one_process(tiny_model_dir, tmp_path):
    # TR-DPO's refresh every step: each rank mixes its shard of the reference towards its shard of the policy
    sync = ("algo.kl.coef=0.05", "algo.ref_sync={name: ref_sync, alpha: 0.5, every: 1}", "train.max_steps=3")
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *sync, strategy="fsdp2")
    _same_steps(pair, alone, (1, 2, 3))
    a, b = _steps(alone), _steps(pair)
    for step in (2, 3):  # the KL to the moved reference
        assert a[step]["ref/synced"] == b[step]["ref/synced"] == 1.0
        assert b[step]["kl"] == pytest.approx(a[step]["kl"], rel=1e-4, abs=1e-7) and a[step]["kl"] > 0, step
    # the reference is gathered from its shards into the checkpoint: one process's, and moved from the initial model
    mine, theirs = (r / "checkpoints/step-000003" / REFERENCE / "model.safetensors" for r in (pair, alone))
    x, y, initial = load_file(mine), load_file(theirs), load_file(Path(tiny_model_dir) / "model.safetensors")
    assert x.keys() == y.keys() and max(float((x[k] - y[k]).abs().max()) for k in x) < 1e-5
    assert max(float((y[k] - initial[k]).abs().max()) for k in y) > 1e-3


def test_fsdp2_lora_run_matches_one_process_and_saves_the_adapter(tiny_model_dir, tmp_path):
    # the adapters are sharded with the frozen base; the reference is the sharded model with its adapter disabled
    lora = ("model.lora.r=4", "algo.kl.coef=0.05", "train.max_steps=2")
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *lora, strategy="fsdp2")
    _same_steps(pair, alone, (1, 2))
    assert _steps(pair)[2]["kl"] > 0
    mine, theirs = (r / "checkpoints/step-000002" for r in (pair, alone))
    assert (mine / "adapter_config.json").is_file() and not (mine / "model.safetensors").exists()
    a, b = load_file(mine / "adapter_model.safetensors"), load_file(theirs / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # Adam, lr 1e-2


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The worker process torchrun started for `rank` (its environment says RANK=<rank>)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} process under torchrun {launcher_pid}")


EVEN = "{_component_: tests.integration.rewards_for_tests.even_length}"  # a coin flip: some groups fail everywhere
FAIL_SOME = (f"rewards=[{EVEN}]", "rollout.group_size=2", "train.prompts_per_step=8")  # a quarter of the groups fail


@pytest.mark.parametrize(
    ("sampler", "extra", "acted"),
    [("{name: ghpo}", FAIL_SOME, "sampler/hinted_frac"),
     ("{name: scaf_grpo, warmup_steps: 0}", (*FAIL_SOME, "train.seed=3"), "sampler/rescued_frac"),
     ("{name: igpo_inpaint}", FAIL_SOME, "sampler/inpainted_frac"),
     ("{name: r3l_retry_recon}", (f"rewards=[{EVEN}]", "train.prompts_per_step=8"), "sampler/retried_frac"),
     ("{name: igrpo}", (), "sampler/draft_reward"),
     ("{name: dr_po}", (), "sampler/roll_in_frac"),
     ("{name: pf_ppo}", (), "sampler/unique_frac"),
     ("{name: ghpo}", (*FAIL_SOME, "algo.kl.coef=0.05", "dist.strategy=fsdp2"), "sampler/hinted_frac")],
)  # fmt: skip
def test_a_sampler_that_generates_more_acts_on_two_ranks_as_one_process_does(tiny_model_dir, tmp_path, sampler, extra,
                                                                             acted):  # fmt: skip
    # GHPO, Scaf-GRPO, IGPO and R³L generate more samples of the groups (or attempts) that failed, iGRPO drafts before
    # its rollouts and DR-PO forces reference prefixes; the draws of PF-PPO, DR-PO, IGPO and R³L are over the whole
    # batch. Each rank generates for its own prompts, keyed by their stream positions: the samples, the gradient and
    # every sampler statistic are the one process's. (A mutation that draws the extra samples from the run's generator
    # fails the GHPO, IGPO, R³L and iGRPO cases; Scaf-GRPO's one rescue here is on one rank, and passes it. Arithmetic's
    # references are 1-2 tokens, so DR-PO drawing on each rank alone also passes: the gather is checked by PF-PPO.)
    # GHPO's last case runs under fsdp2 with a sharded reference: the hinted groups are generated by the gathered
    # policy and scored by the sharded reference (unequal batches under fsdp2 are the Knapsack case's, further down)
    args = (f"algo.sampler={sampler}", "task=arithmetic", "train.max_steps=2", *extra)
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *args)
    _same_steps(pair, alone, (1, 2))
    a, b = _steps(alone), _steps(pair)
    for step in (1, 2):
        for key in [k for k in a[step] if k.startswith("sampler/")]:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6, nan_ok=True), (step, key)
    assert any(a[step][acted] > 0 for step in (1, 2)), [a[step] for step in (1, 2)]


SEVENS = ("env._component_=tests.integration.envs_for_tests.Sevens", "env.max_turns=2", "rewards=[{name: env_reward}]",
          "train.lr=3e-3", "critic.lr=1e-2", "train.max_steps=3")  # fmt: skip


@pytest.fixture(scope="module")
def turns_model_dir(tmp_path_factory):
    """The tiny model whose first turns end within the budget about half the time (tests/recipes/test_learning.py)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("turns") / "model", eos_bias=2.0, token_biases={"7": 1.5}))


@pytest.mark.parametrize(
    ("recipe", "strategy", "extra"),
    [("gigpo", "ddp", ()), ("archer", "ddp", ()), ("seeupo", "fsdp2", ()),
     ("refuel", "ddp", ("rollout.group_size=2", "train.prompts_per_step=8")), ("arpo", "fsdp2", ())],
)  # fmt: skip
def test_a_multiturn_run_on_two_ranks_matches_one_process(turns_model_dir, tmp_path, recipe, strategy, extra):
    # two-turn episodes, each rank playing its own prompts' episodes: each episode draws from its own generator through
    # both turns (a reply that ended early draws nothing while the rest of its batch goes on, so its next turn does
    # not depend on which episodes it was batched with); GiGPO's anchor-state groups are each prompt's own. ArCHer's
    # critic: every rank holds the whole replay, draws the same rows and trains on its share with summed gradients;
    # its advantages are whitened over every rank's turns (2 critic-only steps, then one policy step). SeeUPO's
    # passes, last turn first: every rank runs one per turn index any rank reached, with every rank's counts. REFUEL's
    # and ARPO's roll-ins and branches draw from generators keyed by their prompts, and their samplers draw once for
    # every rank's roll-ins (ARPO's from the entropies of all of them)
    alone, pair = _alone_and_pair(turns_model_dir, tmp_path, *SEVENS, *extra, strategy=strategy, recipe=recipe)
    _same_steps(pair, alone, (1, 2, 3))
    a, b = _steps(alone), _steps(pair)
    assert any(a[step]["env/turns_mean"] > 1 for step in (1, 2, 3))  # second turns were played
    if recipe in ("refuel", "arpo"):  # some branch started at a later turn, its first turn replayed
        assert any(a[step].get("sampler/branch_turn", a[step].get("sampler/branches", 0)) > 0 for step in (1, 2, 3))
    for step in (1, 2, 3):
        for key in [k for k in a[step] if k.startswith(("env/", "critic/", "sampler/"))]:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)


@pytest.mark.parametrize(
    ("strategy", "sampler", "size"),
    [("ddp", "{name: knapsack_rl}", 6), ("fsdp2", "{name: knapsack_rl}", 6), ("fsdp2", "{name: arpo_gui_replay}", 2)],
)  # fmt: skip
def test_a_sampler_with_a_memory_keeps_one_process_memory_on_two_ranks(tiny_model_dir, tmp_path, strategy, sampler,
                                                                       size):  # fmt: skip
    # 4 prompts, each revisited at every step: Knapsack RL allots the step's rollouts over every rank's prompts from
    # their last pass rates (every rank remembers every prompt's), and each rank samples its own prompts' budgets;
    # the ARPO replay puts a stored success in place of the last rollout of a group that failed everywhere (every rank
    # stores every rank's successes). Memories, budgets, samples and gradients are one process's. Knapsack's ranks
    # hold different numbers of rollouts, so in micro-batches of 4 one runs more passes: under fsdp2 the other joins
    # their gathers with zero-weight passes (without them it hangs). Remembering only the rank's own pass rates, or
    # storing only its own successes, fails every case
    task = tmp_path / "four.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"question number {i}:", "answer": "1"}) + "\n" for i in range(4)))
    args = (f"algo.sampler={sampler}", f"task={task}", "data.eval_frac=0", "eval.num_problems=0",
            f"rewards=[{EVEN}]", f"rollout.group_size={size}", "train.max_steps=3",
            "train.micro_batch_size=4")  # fmt: skip
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *args, strategy=strategy)
    _same_steps(pair, alone, (1, 2, 3))
    a, b = _steps(alone), _steps(pair)
    for step in (1, 2, 3):
        for key in [k for k in a[step] if k.startswith("sampler/")]:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)
    if "knapsack" in sampler:  # the pass rates moved the budgets off the even split of 6 per prompt
        assert any(a[step]["sampler/budget_max"] > 6 for step in (2, 3)), a
    else:  # a stored success took the place of a rollout
        assert any(a[step]["sampler/replayed"] > 0 for step in (2, 3)), a


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_asynchronous_rollouts_on_two_ranks_match_one_process(tiny_model_dir, tmp_path, strategy):
    # each rank's producer samples its share of the step's prompts, one version late, with its own whole copy of the
    # policy; after each update every rank publishes the whole weights (gathered from the shards under fsdp2)
    args = ("train.max_steps=3", "rollout.max_staleness=1", "algo.policy_loss.name=rollout_is")
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *args, strategy=strategy)
    _same_steps(pair, alone, (1, 2, 3))
    a, b = _steps(alone), _steps(pair)
    assert [b[t]["rollout/version_lag"] for t in (1, 2, 3)] == [0.0, 1.0, 1.0]
    assert abs(a[3]["rollout_is/weight"] - 1.0) > 1e-4  # off-policy: the correction acts
    for step in (1, 2, 3):
        assert b[step]["rollout_is/weight"] == pytest.approx(a[step]["rollout_is/weight"], rel=1e-5), step


def test_aepo_swaps_in_one_process_tempered_samples_on_two_ranks(tiny_model_dir, tmp_path):
    # every prompt is sampled again (prompt_frac 1): each rank samples its own, every rank draws the kept ones from all
    # of them (advantage above -0.5: most), and rank 0's rows among the batch's first m take samples of rank 1's
    # prompts too (with their prompts); hot on step 1 (every kept sample swaps in), cold after (half of them). Each
    # rank keeping its own samples fails, and so does a sample put on a prompt of the rank it lands on
    args = (
        "algo.sampler={name: aepo, prompt_frac: 1.0, entropy_target: 1.0, adv_threshold: -0.5}",
        "train.max_steps=3",
    )
    alone, pair = _alone_and_pair(tiny_model_dir, tmp_path, *args, recipe="aepo")
    _same_steps(pair, alone, (1, 2, 3))
    a, b = _steps(alone), _steps(pair)
    assert [a[t]["sampler/temperature"] for t in (1, 2, 3)] == [1.2, 0.8, 0.8]
    assert a[1]["sampler/tempered"] > 8  # past rank 0's 8 rows
    for step in (1, 2, 3):
        for key in ("sampler/temperature", "sampler/tempered"):
            assert b[step][key] == a[step][key], (step, key)
