"""On-policy RL (GRPO and every method composed from the pure layer): generate, score, advantage, update, log.

One step: take `prompts_per_step` prompts, sample `group_size` completions each, score them with the reward
functions, turn rewards into advantages, then run `ppo_epochs` optimizer steps over the batch. Each optimizer step
accumulates gradients over micro-batches with the batch's global token and sequence counts, so the gradient does
not depend on `micro_batch_size`. On the first pass the parameters are those that sampled the batch, so
old log-probs are the detached current ones: no extra forward pass, and the ratio is exactly 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unipo import algos
from unipo.config import Config, ConfigError
from unipo.data.tasks import PromptStream, get_task
from unipo.models.loading import load_model_and_tokenizer, load_policy, store_as_autocast
from unipo.models.lora import BaseView
from unipo.rollout.batch import Origin, Rollouts, cat
from unipo.rollout.engine import Engine
from unipo.rollout.multiturn import metrics as env_metrics
from unipo.run import completion_samples
from unipo.trainers import checkpoint, controllers
from unipo.trainers import critic as critics
from unipo.trainers.checks import check_setup
from unipo.trainers.collect import Collected, collect, entropy_switched, greedy_rewards, nanmean, prompt_key
from unipo.trainers.common import (
    Algo,
    RewardScorer,
    Timer,
    build_algo,
    build_optimizer,
    build_rewards,
    call,
    check_runnable,
    log,
    shape,
    start_run,
)
from unipo.trainers.dist import World, close_world, device_for, init_world
from unipo.trainers.evaluate import heldout_eval
from unipo.trainers.generation import build_engine, close_engines, publish
from unipo.trainers.inputs import turn_inputs
from unipo.trainers.loop import run_steps
from unipo.trainers.pipeline import Pipeline
from unipo.trainers.segments import segment_values
from unipo.trainers.update import frozen_forward, turn_by_turn, update


def train(cfg: Config) -> Path:
    """Train `cfg.model` with the recipe in `cfg`; returns the run directory. Resumes from its latest checkpoint."""
    world = init_world(cfg)
    cfg, run = start_run(cfg, world)
    task = get_task(cfg.task, cfg.data)
    scorer = build_rewards(cfg, task.rewards)
    algo = build_algo(cfg)
    check_runnable(algo, len(scorer.names), cfg.rollout.max_new_tokens)
    affine = [fn.id for fn in algo.shaping if algos.entry(fn.kind, fn.id).facts & {"affine_in_reward"}]
    if affine and algo.critic is None and algo.has_fact("advantage", "group_centred"):
        log.warning("algo.shaping: %s is affine in the reward, so the %r advantage (group-centred) cancels it or "
                    "only rescales it (ALGORITHMS.md §5.3)", ", ".join(affine), algo.advantage.id)  # fmt: skip
    env = check_setup(cfg, algo, task, world)
    if "teacher_logp" in algo.needs and not cfg.model.teacher_path:
        raise ConfigError("model.teacher_path: the recipe reads a frozen second model's log-probs (the teacher of "
                          "`onpolicy_distill`, the DPO model of `rto_token_reward`); set it to a causal LM directory "
                          "or hub id with the policy's tokenizer")  # fmt: skip

    if algo.ref_sync is not None and cfg.model.lora.r:
        raise ConfigError("algo.ref_sync: with LoRA the reference is the model with its adapter disabled and cannot "
                          "move towards the policy; set model.lora.r=0 or remove algo.ref_sync")  # fmt: skip
    if algo.ref_sync is not None and not algo.needs_ref:
        raise ConfigError("algo.ref_sync: no component of this recipe reads the reference policy (set algo.kl.coef "
                          "> 0, or remove algo.ref_sync)")  # fmt: skip
    resume, saved = checkpoint.latest(run.checkpoints)  # verified before anything is loaded from it
    model, tokenizer = load_policy(cfg.model, resume, device_for(cfg))
    engine = build_engine(cfg, model, tokenizer, world)  # from the whole policy, before sharding
    model = world.shard(model)  # dist.strategy=fsdp2: this rank keeps a shard of each parameter
    model.eval()  # no dropout: the first pass reproduces the sampling policy exactly
    ref = load_reference(cfg, algo, model, resume, world) if algo.needs_ref else None
    teacher = load_teacher(cfg, tokenizer) if "teacher_logp" in algo.needs else None
    optimizer, scheduler = build_optimizer(model, cfg)
    critic = critics.build(cfg, resume, saved, td=algo.has_fact("critic", "td_replay")) if algo.critic else None
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(cfg.train.seed)
    stream = PromptStream(task.train, cfg.train.seed)
    start, found = 0, controllers.slots(cfg, algo)
    values = controllers.initial(algo, found)
    if saved is not None:
        start, position = checkpoint.restore(saved, None, scheduler, generator)
        world.load_optimizer(model, optimizer, saved["optimizer"])
        stream = PromptStream(task.train, cfg.train.seed, **position)
        values |= saved.get("components", {})
        run.truncate_metrics(start)
        log.info("resuming %s from %s", run.path, resume)
    run.prepare(cfg)

    shaping_states = (saved or {}).get("shaping", [None] * len(algo.shaping))  # each reward shaper's state
    state = RLState(cfg, model, ref, tokenizer, algo, scorer, stream, optimizer, scheduler, generator, found, values,
                    critic, shaping_states, (saved or {}).get("sampler"), teacher=teacher, world=world,
                    env=env, engine=engine)  # fmt: skip

    if cfg.rollout.max_staleness is not None:  # asynchronous rollouts: a producer samples ahead
        state.pipeline = Pipeline(state, start, cfg.rollout.max_staleness)

    def step_fn(step: int) -> dict[str, float]:
        state.step = step
        return rl_step(state)

    def evaluate(step: int) -> Any:
        with world.gathered(model):  # sharded: every rank gathers the policy, rank 0 evaluates, the others wait
            result = heldout_eval(cfg, run, model, tokenizer, task, step, env) if world.main else None
            world.barrier()
        return result

    try:
        run_steps(
            cfg,
            run,
            model,
            tokenizer,
            start,
            step_fn,
            evaluate,
            state.checkpoint_state,
            SHOWN,
            lambda: scorer.failures,
            extra_models={
                **(critic.models() if critic else {}),
                **({REFERENCE: ref} if algo.ref_sync else {}),
            },
            world=world,
            samples=lambda: state.samples,
        )
    finally:
        close_engines(state)
        scorer.close()
        close_world()
    return run.path


REFERENCE = "reference"
"""The checkpoint subdirectory of a reference that `ref_sync` moves."""

SHOWN = {"reward": "reward/mean", "kl": "kl", "entropy": "entropy", "len": "tokens/completion_mean",
         "s/step": "time/step_s"}  # fmt: skip
"""What the progress line shows for an RL run."""


@dataclass
class RLState:
    """Everything one step touches; what must survive a restart is saved by `checkpoint_state`."""

    cfg: Config
    model: Any
    ref: Any | None
    tokenizer: Any
    algo: Algo
    scorer: RewardScorer
    stream: PromptStream
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    slots: list[controllers.Slot]
    """Controlled hyperparameters (component state) of the recipe."""
    values: dict[str, Any]
    """Their current values (checkpointed)."""
    critic: critics.Critic | None = None
    """The value model and its optimizer, with `algo.critic`."""
    shaping_states: list[Any] = field(default_factory=list)
    """The state of each reward shaper (None for a stateless one; checkpointed)."""
    sampler_state: Any = None
    """The sampler's state (Knapsack RL's pass rates, ARPO's replay buffer; checkpointed)."""
    teacher: Any | None = None
    """The frozen teacher of on-policy distillation (`model.teacher_path`)."""
    world: World = field(default_factory=World)
    """The data-parallel ranks (trainers/dist.py); rank 0 of 1 in a plain run."""
    env: tuple[Any, Any] | None = None
    """The multi-turn environment's factory and settings (rollout/multiturn.py); None: single-turn completions."""
    step: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    """The last step's first completions with their rewards and advantages (completions.jsonl)."""
    pipeline: Pipeline | None = None
    """The producer of asynchronous rollouts (`rollout.max_staleness`); None: each step samples its own batch."""
    engine: Engine | None = None
    """The generation engine (rollout/engine.py; a pipeline's producer samples with it); None: the model samples."""

    def checkpoint_state(self) -> dict[str, Any]:
        position = self.pipeline.position if self.pipeline else self.stream.state()  # after the last batch trained
        optimizer = self.world.optimizer_state(self.model, self.optimizer)  # sharded: gathered to rank 0
        state = checkpoint.trainer_state(optimizer, self.scheduler, self.generator, position)
        state["components"] = dict(self.values)
        if self.critic is not None:
            state["critic"] = self.critic.state()
        state["shaping"] = list(self.shaping_states)
        state["sampler"] = self.sampler_state
        return state


def rl_step(s: RLState) -> dict[str, float]:
    """One rollout batch and its `ppo_epochs` optimizer steps; returns the step's scalar metrics."""
    cfg, timer, t0 = s.cfg, Timer(), time.perf_counter()
    algo = controllers.bind(s.algo, s.slots, s.values)  # this step's controlled hyperparameters
    s.world.unshard(s.model)  # sharded: the whole policy on every rank until the update (ranks decode unequal lengths)
    batch, per_fn, sampler_stats = collected(s, algo, timer)
    w, n = s.world, batch.num_completions  # batch-wide stages see every rank's rows (all_* below; module dist.py)
    raw = s.scorer.combine(per_fn).to(batch.group_ids.device)  # (N,)
    all_raw, all_fn, all_groups = w.gather_rows(raw), w.gather_rows(per_fn), w.gather_groups(batch.advantage_groups)
    frozen = frozen_logps(s, batch, timer)  # the reference stage: shapers and advantages may read it
    all_rewards, token_rewards = shaped(s, algo, batch, per_fn, all_raw, frozen, timer)
    rewards = w.local(all_rewards, n)
    inputs = step_inputs(s, batch, rewards) | frozen
    if token_rewards is not None:
        inputs["token_rewards"] = w.local(token_rewards, n, batch.loss_mask.shape[1])
    if "baseline_rewards" in algo.advantage.needs:  # ReMax: each prompt's greedy reply, scored like the samples
        with timer("baseline"):
            inputs["baseline_rewards"] = greedy_rewards(s, batch)
    if "segment_values" in algo.advantage.needs:  # SPO: Monte Carlo values of cut states from continuations
        inputs["segment_values"], more = segment_values(s, algo, batch, timer)
        sampler_stats = {**sampler_stats, **more}
    critic_stats: dict[str, float] = {}
    if s.critic is None:
        all_inputs = w.gather_inputs({k: v for k, v in inputs.items() if k in algo.advantage.needs}, n)
        all_mask = w.gather_rows(batch.loss_mask)
        all_adv = advantages_of(algo, all_rewards, all_fn, all_groups, all_mask, all_inputs, s.scorer.weights)
        if algo.credit is not None:  # over each rank's own trajectories (a prompt's group never spans ranks)
            local_adv = w.local(all_adv, n, batch.loss_mask.shape[1])
            all_adv = w.gather_rows(credited(algo, local_adv, batch, inputs, rewards))
        all_adv, post_stats = post_processed(algo, all_adv, all_mask, all_rewards, all_groups)
        advantages = w.local(all_adv, n, batch.loss_mask.shape[1])
    else:  # GAE over the value model's values; the critic then trains on the returns
        advantages, post_stats, critic_stats = critic_stage(s, algo, batch, all_rewards, all_groups, inputs, timer)
    if algo.has_fact("sampler", "entropy_switch"):  # AEPO swaps tempered samples in after the advantages
        batch, per_fn, rewards, advantages, inputs, more = tempered_swap(s, algo, batch, per_fn, rewards, advantages,
                                                                         timer)  # fmt: skip
        sampler_stats = {**sampler_stats, **more}
    if cfg.log.completions_per_step and w.main:
        s.samples = step_samples(s, batch, per_fn, rewards, advantages)
    w.reshard(s.model)
    with timer("update"):
        stats = updated(s, algo, batch, advantages, inputs)
    s.values, ctrl_metrics = controllers.after_step(s.slots, s.values, stats, len(all_raw))
    if algo.ref_sync is not None:  # TR-DPO: the reference moves towards the policy
        w.reshard(s.ref)  # FSDP2: the reference's root keeps its gathered weights after a forward; mix shard by shard
        ctrl_metrics["ref/synced"] = float(algo.ref_sync(s.ref.parameters(), s.model.parameters(), s.step))
    publish(s, timer)  # the engine loads the update before its next batch
    if "entropy" in stats and algo.has_fact("sampler", "entropy_switch"):  # the next step's temperature depends on it
        s.sampler_state = {"entropy": stats["entropy"]}
    lengths = w.gather_rows(batch.completion_mask.sum(1).float())
    per_fn_means = {f"reward/{name}": nanmean(all_fn[:, k]) for k, name in enumerate(s.scorer.names)}
    errors = {}
    for key, value in w.gather_list(list(s.scorer.take_errors().items())):
        errors[key] = errors.get(key, 0.0) + value
    return {
        "reward/mean": nanmean(all_raw),
        "reward/std": float(all_raw[~all_raw.isnan()].std()) if (~all_raw.isnan()).sum() > 1 else 0.0,
        **({"reward/shaped_mean": nanmean(all_rewards)} if algo.shaping else {}),
        **(per_fn_means if len(s.scorer.names) > 1 else {}),
        **errors,
        **stats,
        **critic_stats,
        **post_stats,
        **sampler_stats,
        **(env_metrics(batch, w) if s.env is not None else {}),
        **ctrl_metrics,
        "tokens/completion_mean": float(lengths.mean()),
        "tokens/truncated_frac": float(w.gather_rows(batch.truncated).float().mean()),
        "lr": s.scheduler.get_last_lr()[0],
        **{f"time/{phase}_s": seconds for phase, seconds in timer.totals.items()},  # generate, score, update, ...
        "time/step_s": time.perf_counter() - t0,
    }


def updated(s: RLState, algo: Algo, batch: Rollouts, advantages: torch.Tensor, inputs: dict) -> dict[str, float]:
    """The update stage's metrics: none while the critic warms up (the policy waits); one pass per turn, the last
    first, for a credit with fact `turn_sequential` (SeeUPO); else `ppo_epochs` optimizer steps on the batch."""
    if s.step <= s.cfg.critic.warmup_steps and s.critic is not None:
        return {}
    if algo.has_fact("credit", "turn_sequential"):
        return turn_by_turn(s.cfg, s.model, s.optimizer, s.scheduler, algo, batch, advantages, inputs, s.world)
    return update(s.cfg, s.model, s.optimizer, s.scheduler, algo, batch, advantages, inputs, s.world)


def critic_stage(
    s: RLState, algo: Algo, batch: Rollouts, all_rewards: torch.Tensor, all_groups: torch.Tensor, inputs: dict,
    timer: Timer,
) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:  # fmt: skip
    """This rank's advantages from the critic estimator (e.g. GAE over the value model's values), with the
    post-processor's and the critic update's metrics. The estimator runs on every rank's rows (it may whiten over the
    batch); the value model, whole on every rank, then trains on this rank's returns with summed gradients."""
    if algo.has_fact("critic", "td_replay"):  # ArCHer: the critic learns first, then gives the advantages
        return td_critic_stage(s, algo, batch, all_rewards, all_groups, timer)
    w, n, width = s.world, batch.num_completions, batch.loss_mask.shape[1]
    with timer("values"):
        old_values = critics.values(s.critic, batch, s.cfg)
    needed = w.gather_inputs({k: v for k, v in inputs.items() if k in algo.critic.needs}, n)
    targets = call(algo.critic, all_rewards, w.gather_rows(old_values), w.gather_rows(batch.completion_mask),
                   inputs=needed)  # fmt: skip
    all_adv, post_stats = post_processed(algo, targets.advantages, w.gather_rows(batch.loss_mask), all_rewards,
                                         all_groups)  # fmt: skip
    with timer("critic_update"):
        local = type(targets)(*(w.local(x, n, width) for x in targets))
        critic_stats = critics.update(s.critic, s.cfg, batch, old_values, local, w)
    return w.local(all_adv, n, width), post_stats, critic_stats


def td_critic_stage(
    s: RLState, algo: Algo, batch: Rollouts, rewards: torch.Tensor, groups: torch.Tensor, timer: Timer
) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
    """A TD critic's stage (fact `td_replay`): every rank's trajectories join the replay (whole on every rank, as in
    one process), the critic takes its steps on replayed trajectories, then the recipe's critic gives the advantages
    of every rank's rows from the updated value model and its target network (it may whiten over the batch)."""
    critic, cfg, w, n = s.critic, s.cfg, s.world, batch.num_completions
    whole = cat(w.gather_list([batch]), s.tokenizer.pad_token_id) if w.size > 1 else batch
    critic.replay = critics.remember(critic.replay, whole, rewards, cfg.critic.replay_size, s.tokenizer.pad_token_id)
    with timer("critic_update"):
        critic_stats = critics.td_update(critic, cfg, algo.critic, s.generator, turn_inputs, w)
    with timer("values"):
        now, target = (w.gather_rows(critics.values(critic, batch, cfg, target=t)) for t in (False, True))
    targets = call(
        algo.critic, rewards, now, whole.completion_mask, inputs=turn_inputs(whole) | {"target_values": target}
    )
    advantages, post_stats = post_processed(algo, targets.advantages, whole.loss_mask, rewards, groups)
    return w.local(advantages, n, batch.loss_mask.shape[1]), post_stats, critic_stats


def collected(s: RLState, algo: Algo, timer: Timer) -> Collected:
    """The collect stage's batch; with asynchronous rollouts, the one the producer sampled ahead for this step, at
    most `rollout.max_staleness` versions ago (its lag among the sampler metrics)."""
    if s.pipeline is None:
        return collect(s, algo, timer)
    (batch, per_fn, stats), lag = s.pipeline.take(s.step, timer)
    return batch, per_fn, {**stats, **lag}


def shaped(
    s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, all_raw: torch.Tensor, frozen: dict, timer: Timer
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The shape stage on every rank's rows: (shaped rewards (N,), per-token rewards (N, T) of a `token_rewards`
    shaper such as RTO's, for the critic, or None). The (N,) rewards are then each row's sum of its token rewards."""
    if not algo.shaping:
        return all_raw, None
    needed = {k: v for k, v in frozen.items() if any(k in fn.needs for fn in algo.shaping)}  # gathered only if read
    inputs = s.world.gather_inputs(shape_inputs(s, batch, per_fn) | needed, batch.num_completions)
    with timer("shape"):
        rewards, s.shaping_states = shape(algo.shaping, all_raw, s.shaping_states, inputs)
    return (rewards, None) if rewards.dim() == 1 else (rewards.sum(1), rewards)


def step_samples(
    s: RLState, batch: Rollouts, per_fn: torch.Tensor, rewards: torch.Tensor, advantages: torch.Tensor
) -> list[dict[str, Any]]:
    """The step's first `log.completions_per_step` completions with their reward (and each function's, and the shaped
    one when a shaper runs) and advantage (its mean over the completion's trained tokens when per-token)."""
    columns: dict[str, Any] = {"reward": s.scorer.combine(per_fn), "advantage": advantages}
    if s.algo.shaping:
        columns["shaped_reward"] = rewards
    if len(s.scorer.names) > 1:
        columns["rewards"] = {name: per_fn[:, k] for k, name in enumerate(s.scorer.names)}
    return completion_samples(batch, s.cfg.log.completions_per_step, **columns)


def credited(
    algo: Algo, advantages: torch.Tensor, batch: Rollouts, inputs: dict[str, Any], rewards: torch.Tensor
) -> torch.Tensor:
    """The credit stage (`algo.credit`): trajectory advantages to per-token advantages over the turns (N, T), with the
    turn data, the trajectories' `rewards` (N,) (NaN where unscored) and the step's other inputs (progress, old and
    reference log-probs)."""
    turns = turn_inputs(batch) | {"group_ids": batch.advantage_groups, "completion_ids": batch.completion_ids,
                                  "rewards": rewards}  # fmt: skip
    return call(algo.credit, advantages, inputs=inputs | turns)


def post_processed(
    algo: Algo, advantages: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """The recipe's advantage post-processor (`algo.adv_post`) on the whole batch, and its metrics."""
    if algo.adv_post is None:
        return advantages, {}
    out, metrics = call(algo.adv_post, advantages, mask, inputs={"rewards": rewards, "group_ids": groups})
    return out, {k: float(v) for k, v in metrics.items()}


def tempered_swap(
    s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor, rewards: torch.Tensor, advantages: torch.Tensor,
    timer: Timer,
) -> tuple[Rollouts, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any], dict[str, float]]:  # fmt: skip
    """AEPO's swap (`collect.entropy_switched`) with the step's advantage estimator, then the step's inputs for the new
    batch (a swapped sample's reward is its raw one). Returns (batch, rewards (N, K), rewards, advantages, inputs,
    the sampler's metrics)."""

    def advantages_for(extra: Rollouts, extra_fn: torch.Tensor) -> torch.Tensor:
        extra_rewards = s.scorer.combine(extra_fn).to(extra.group_ids.device)
        return advantages_of(algo, extra_rewards, extra_fn, extra.advantage_groups, extra.loss_mask,
                             step_inputs(s, extra, extra_rewards), s.scorer.weights)  # fmt: skip

    batch, per_fn, advantages, stats = entropy_switched(s, algo, batch, per_fn, advantages, advantages_for, timer)
    m = int((batch.origin == Origin.TEMPERED).sum())  # this rank's first m samples were swapped
    rewards = torch.cat([s.scorer.combine(per_fn[:m]).to(rewards.device), rewards[m:]])
    inputs = step_inputs(s, batch, rewards) | frozen_logps(s, batch, timer)
    return batch, per_fn, rewards, advantages, inputs, stats


def frozen_logps(s: RLState, batch: Rollouts, timer: Timer) -> dict[str, torch.Tensor]:
    """The reference stage: the frozen models' log-probs of the batch's tokens (`ref_logp`, `teacher_logp`), the
    reference's full log-softmax (`ref_logits`) and the moments of the policy before it moves (`sum_pi_squared`,
    `sum_pi_cubed`), each only when a component of the recipe declares it."""
    out, needs = {}, s.algo.needs
    if s.ref is not None:
        with timer("reference"):
            forward = frozen_forward(s.ref, batch, s.cfg, full="ref_logits" in needs)
        out["ref_logp"] = forward["logp"]
        if "log_softmax" in forward:
            out["ref_logits"] = forward["log_softmax"]
    if s.teacher is not None:
        with timer("teacher"):
            out["teacher_logp"] = frozen_forward(s.teacher, batch, s.cfg)["logp"]
    if needs & {"sum_pi_squared", "sum_pi_cubed"}:  # verl's old-log-prob pass, before any parameter moves
        with timer("old_forward"):
            forward = frozen_forward(s.model, batch, s.cfg, moments=True)
        out |= {k: forward[k] for k in ("sum_pi_squared", "sum_pi_cubed")}
    return out


def load_reference(cfg: Config, algo: Algo, model: Any, resume: Path | None, world: World) -> Any:
    """The reference policy: the initial policy, also on resume, unless `ref_sync` moves it (then it is
    checkpointed); with LoRA, the policy with its adapter disabled."""
    if cfg.model.lora.r:
        return BaseView(model)
    synced = resume is not None and algo.ref_sync is not None and (resume / REFERENCE).is_dir()
    ref, _ = load_model_and_tokenizer(str(resume / REFERENCE) if synced else cfg.model.path,
                                      device=device_for(cfg), dtype=cfg.model.dtype)  # fmt: skip
    if algo.ref_sync is None and not world.sharded:  # FSDP2 gathers one dtype per layer
        store_as_autocast(ref, cfg.model.autocast)
    return world.shard(ref.eval().requires_grad_(False))


def load_teacher(cfg: Config, tokenizer: Any) -> Any:
    """The frozen teacher (`model.teacher_path`), which must share the student's tokenizer: it scores the student's
    token ids as they are."""
    teacher, teacher_tokenizer = load_model_and_tokenizer(cfg.model.teacher_path, device=cfg.model.device,
                                                          dtype=cfg.model.dtype)  # fmt: skip
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"model.teacher_path: {cfg.model.teacher_path} has another tokenizer than the student; "
                          "the teacher scores the student's token ids, so both need one")  # fmt: skip
    store_as_autocast(teacher, cfg.model.autocast)
    return teacher.eval().requires_grad_(False)


def step_inputs(s: RLState, batch: Rollouts, rewards: torch.Tensor) -> dict[str, Any]:
    """The per-sample inputs of the advantage and update stages that come with the batch (the reference's log-probs
    and ReMax's baseline are added by their own stages)."""
    return {
        "old_logp": batch.rollout_logp,  # the sampling policy's log-probs (the parameters have not moved yet)
        "rollout_logp": batch.rollout_logp,
        "truncated": batch.truncated,
        "progress": (s.step - 1) / max(1, s.cfg.train.max_steps),
        "generator": s.generator,
        "rewards": torch.nan_to_num(rewards),
        "demo_mask": batch.origin == Origin.DEMONSTRATION,
    }


def shape_inputs(s: RLState, batch: Rollouts, per_fn: torch.Tensor) -> dict[str, Any]:
    """What the shape stage's components may take (reward_shaping.py's module docstring)."""
    device = batch.group_ids.device
    return {
        "lengths": batch.completion_mask.sum(1),
        "max_len": s.cfg.rollout.max_new_tokens,
        "truncated": batch.truncated,
        "group_ids": batch.advantage_groups,
        "reward_components": per_fn.to(device),
        "correct": torch.nan_to_num(per_fn[:, 0], nan=0.0).to(device) >= 1,
        "prompt_keys": [prompt_key(batch.rows[g]) for g in batch.group_ids.tolist()],
        **({"turn_info": batch.extras["turn_info"]} if "turn_info" in batch.extras else {}),
    }


def advantages_of(
    algo: Algo,
    rewards: torch.Tensor,
    per_fn: torch.Tensor,
    groups: torch.Tensor,
    mask: torch.Tensor,
    inputs: dict[str, Any],
    weights: list,
) -> torch.Tensor:
    """The advantage stage on samples with these advantage `groups` (N,) and loss `mask` (N, T): (N,) or (N, T)
    advantages; 0 for a completion no reward function could score."""
    if algo.multi_reward:  # e.g. GDPO normalises each reward function separately
        advantages = call(algo.advantage, per_fn.to(rewards.device), groups, inputs=inputs, mask=mask,
                          reward_weights=torch.tensor(weights))  # fmt: skip
    else:
        advantages = call(algo.advantage, rewards, groups, inputs=inputs, mask=mask)
    return torch.nan_to_num(advantages) * ~rewards.isnan().view(-1, *[1] * (advantages.dim() - 1))
