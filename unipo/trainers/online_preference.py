"""Online and iterative preference optimisation (SPPO, INPO, DNO, Nash-MD, Nash-MP, SPO, XPO, SELM): sample, judge,
update.

One step: take `prompts_per_step` prompts, sample `group_size` responses each from the current policy, ask the
preference oracle (`online.oracle`) for the within-group matrix P(y_i ≻ y_j), and build what the `algo.online`
loss takes (ALGORITHMS.md §8; the loss's signature decides):

- a loss with a `win_rate` input (`sppo`, `nash_md`, `nash_mp_recon`) trains on every response (or, with
  `online.train_on=best_worst`, on each group's best and worst) with its win rate against its group, P̂(y ≻ π_t):
  the mean over the others, or over all K including itself with `online.win_rate=incl_self` (the official SPPO
  code's estimate) — except `nash_md`, whose opponent (one per response) is sampled from the geometric mixture
  softmax(α·z_ref + (1 − α)·z_θ), α = `online.mixture_coef`;
- any other loss (`inpo`, `dno`, `xpo`, `selm`) takes judged pairs: per group, the response with the highest win
  rate is y_w and the lowest y_l, kept when their win rates differ by more than `online.min_margin`. `xpo` adds an
  exploration response per prompt sampled from π_ref, `selm` one sampled from the current policy;
- `spo_selfplay` turns the group win rates into rewards for the RL update (`algo.advantage`, `algo.policy_loss`,
  `algo.aggregation`, as in trainers/rl.py);
- `iterative_dpo` samples every step of an iteration from π_t (a dataset per iteration, `samples_from_anchor`);
- two losses need no judge: `spin` pairs each response of π_t (as loser) with its prompt's reference response from
  the data (as winner), and `a_star_po` trains each response on its reward and its prompt's V*(x), estimated the
  first time the prompt is drawn from `online.value_samples` samples of π_ref (A*-PO's stage 1) and checkpointed.

Each step then runs `train.ppo_epochs` optimizer steps on its batch (none when nothing is left to learn from, e.g.
every pair tied; the schedule still advances). The previous iterate π_t (`prev_logp`) is the
policy at the start of the iteration, which lasts `online.anchor_every` steps: with one step per iteration it is
the sampling policy, whose log-probs are the first pass's, detached (no extra forward); Nash-MP's half and full prox
steps are two steps from one anchor. π_ref is the initial model, replaced by the current policy every
`online.ref_refresh_every` steps (0: never). Sequence log-probs are token sums; a loss with a `mask` input gets
per-token log-probs instead.
"""

from __future__ import annotations

import copy
import functools
import inspect
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unipo import algos
from unipo.algos.nash import optimal_value, spo_selfplay
from unipo.config import Config, ConfigError, component_kwargs
from unipo.data.tasks import PromptStream, get_task
from unipo.models.loading import autocast_context, load_model_and_tokenizer, load_policy
from unipo.models.logprobs import completion_logprobs
from unipo.rewards import oracles
from unipo.rollout.batch import Rollouts
from unipo.rollout.hf import GeometricMixture, sample
from unipo.rollout.inject import demonstrations
from unipo.run import completion_samples
from unipo.trainers import checkpoint, rl
from unipo.trainers.collect import prompt_key
from unipo.trainers.common import (
    Timer,
    build_algo,
    build_component,
    build_optimizer,
    build_rewards,
    check_runnable,
    start_run,
)
from unipo.trainers.evaluate import heldout_eval
from unipo.trainers.loop import run_steps
from unipo.trainers.update import reference_logps, update

SHOWN = {"loss": "loss", "task_reward": "reward/task_mean", "pairs": "pairs/kept_frac", "len": "tokens/completion_mean",
         "s/step": "time/step_s"}  # fmt: skip


@dataclass
class OnlineLoss:
    """The `algo.online` loss bound to its hyperparameters, and how the trainer must feed it."""

    name: str
    fn: Any
    inputs: frozenset[str]
    """Every argument name it takes (positional log-probs and keyword data)."""
    pairs: bool = False
    """Takes judged pairs [B, 2] (no `win_rate`)."""
    per_token: bool = False
    """Takes per-token log-probs with a `mask`."""
    rewards: bool = False
    """Turns win rates into rewards for the RL update (`spo_selfplay`)."""

    @property
    def judged(self) -> bool:
        """Whether it needs the oracle's win rates (not SPIN, whose winner is the data, nor A*-PO, which regresses
        rewards)."""
        return not {"ground_truth_winner", "reference_value"} & self.facts

    @functools.cached_property
    def explore(self) -> str | None:
        """Where its exploration response comes from (`ref`, `policy`), or None (also when its coefficient `alpha`
        is 0: the term then weighs nothing, so nothing is sampled and it gets zeros; XPO at α = 0 is online DPO)."""
        alpha = self.fn.keywords.get("alpha", algos.entry("online", self.name).params.get("alpha"))
        if "explore_logp" not in self.inputs or alpha == 0:
            return None
        return "ref" if "explore_from_ref" in self.facts else "policy"

    @functools.cached_property
    def needs_ref(self) -> bool:
        return bool({"ref_logp", "explore_ref_logp"} & self.inputs) or self.explore == "ref" or self.mixture

    @property
    def facts(self) -> frozenset[str]:
        """Registry facts (`algos.registry.FACTS`) about how to feed it."""
        return algos.entry("online", self.name).facts

    @property
    def mixture(self) -> bool:
        return "mixture_opponent" in self.facts


def build_loss(cfg: Config) -> OnlineLoss:
    """Bind `algo.online` and run it once on a synthetic batch, so a missing hyperparameter (e.g. SPPO's `eta`)
    stops the run here with a ConfigError, before any model loads."""
    node = cfg.algo.online
    fn = build_component("online", node.name, component_kwargs(node))
    names = frozenset(inspect.signature(algos.get("online", node.name)).parameters)
    if "rewards_for_rl" in algos.entry("online", node.name).facts:
        return OnlineLoss(node.name, fn, names, rewards=True)
    single = "win_rate" in names or "reference_value" in algos.entry("online", node.name).facts
    loss = OnlineLoss(node.name, fn, names, pairs=not single, per_token="mask" in names)
    b = 3
    shape = (b, 2) if loss.pairs else (b, 4) if loss.per_token else (b,)
    fake = {"logp": -torch.rand(shape) - 1, "prev_logp": -torch.rand(shape) - 1, "ref_logp": -torch.rand(shape) - 1,
            "win_rate": torch.rand(b), "explore_logp": -torch.rand(b), "explore_ref_logp": -torch.rand(b),
            "mask": torch.ones(b, 4), "rewards": torch.rand(shape), "value": torch.rand(b)}  # fmt: skip
    try:
        out = fn(**{k: v for k, v in fake.items() if k in names})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"algo.online: {node.name!r} cannot run: {e}") from None
    if out.shape != (b,):
        raise ConfigError(f"algo.online: {node.name!r} returned shape {tuple(out.shape)}, not one loss per sample")
    return loss


@dataclass
class OnlineState:
    """Everything one step touches; `checkpoint_state` is what must survive a restart."""

    cfg: Config
    model: Any
    tokenizer: Any
    loss: OnlineLoss
    oracle: oracles.Oracle
    scorer: Any
    stream: PromptStream
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    ref: Any | None = None
    anchor: Any | None = None
    """A frozen copy of π_t when an iteration lasts more than one step."""
    ref_refreshed: bool = False
    rl_algo: Any | None = None
    step: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    """The last step's first completions with their task reward and win rate (completions.jsonl)."""
    values: dict[str, tuple[float, bool]] = field(default_factory=dict)
    """A*-PO: each prompt's V*(x) and whether it is kept (some π_ref sample scored), by `prompt_key`."""

    def checkpoint_state(self) -> dict[str, Any]:
        state = checkpoint.trainer_state(
            self.optimizer.state_dict(), self.scheduler, self.generator, self.stream.state()
        )
        models = {"anchor": self.anchor, "ref": self.ref if self.ref_refreshed else None}
        state["online_models"] = {k: m.state_dict() for k, m in models.items() if m is not None}
        state["online_values"] = dict(self.values)
        return state


def train(cfg: Config) -> Path:
    """Train with `algo.online` against `online.oracle`; returns the run directory. Resumes like the RL trainer."""
    cfg, run = start_run(cfg)
    task = get_task(cfg.task, cfg.data)
    scorer = build_rewards(cfg, task.rewards)
    loss = build_loss(cfg)
    if cfg.online.win_rate == "incl_self" and (loss.mixture or not loss.judged):
        raise ConfigError(f"online.win_rate: {loss.name!r} compares each response with one sampled opponent, not its "
                          "group; incl_self applies to group win rates")  # fmt: skip
    if cfg.online.train_on == "best_worst" and (loss.pairs or loss.rewards or loss.mixture or not loss.judged):
        raise ConfigError(f"online.train_on: {loss.name!r} does not train on single responses with group win rates; "
                          "best_worst applies to sppo and nash_mp_recon")  # fmt: skip
    if cfg.rollout.group_size < 2 and loss.judged and not loss.mixture:
        raise ConfigError(f"rollout.group_size: {loss.name!r} compares responses within a group; it needs at least 2")
    if cfg.model.lora.r and cfg.online.ref_refresh_every:
        raise ConfigError("online.ref_refresh_every: the reference copies the policy's weights, which a LoRA run "
                          "keeps as base plus adapters; set model.lora.r=0 or online.ref_refresh_every=0")  # fmt: skip
    rl_algo = None
    if loss.rewards:
        rl_algo = build_algo(cfg)
        check_runnable(rl_algo)
    resume, saved = checkpoint.latest(run.checkpoints)
    model, tokenizer = load_policy(cfg.model, resume)
    model.eval()
    device = next(model.parameters()).device
    oracle = oracles.from_config(cfg.online, scorer, device)
    ref = None
    if loss.needs_ref or (rl_algo is not None and rl_algo.needs_ref):
        ref, _ = load_model_and_tokenizer(cfg.model.path, device=cfg.model.device, dtype=cfg.model.dtype)
        ref.eval().requires_grad_(False)
    optimizer, scheduler = build_optimizer(model, cfg)
    generator = torch.Generator(device).manual_seed(cfg.train.seed)
    stream = PromptStream(task.train, cfg.train.seed)
    s = OnlineState(cfg, model, tokenizer, loss, oracle, scorer, stream, optimizer, scheduler, generator, ref=ref,
                    rl_algo=rl_algo)  # fmt: skip
    start = 0
    if saved is not None:
        start, position = checkpoint.restore(saved, optimizer, scheduler, generator)
        s.stream = PromptStream(task.train, cfg.train.seed, **position)
        _restore_models(s, saved.get("online_models", {}))
        s.values = dict(saved.get("online_values", {}))
        run.truncate_metrics(start)
    run.prepare(cfg)

    def step_fn(step: int) -> dict[str, float]:
        s.step = step
        return online_step(s)

    def failures() -> dict[str, int]:
        return {"oracle": oracle.failures, **scorer.failures}

    def evaluate(step: int) -> Any:
        return heldout_eval(cfg, run, model, tokenizer, task, step)

    try:
        run_steps(cfg, run, model, tokenizer, start, step_fn, evaluate, s.checkpoint_state, SHOWN, failures,
                  samples=lambda: s.samples)  # fmt: skip
    finally:
        scorer.close()
    return run.path


def _restore_models(s: OnlineState, saved: dict[str, Any]) -> None:
    """Anchor and refreshed reference from a checkpoint (they differ from both the initial and the current model)."""
    if "anchor" in saved:
        s.anchor = _frozen_copy(s.model)
        s.anchor.load_state_dict(saved["anchor"])
    if "ref" in saved and s.ref is not None:
        s.ref.load_state_dict(saved["ref"])
        s.ref_refreshed = True


def _frozen_copy(model: Any) -> Any:
    return copy.deepcopy(model).eval().requires_grad_(False)


def _new_iteration(s: OnlineState) -> None:
    """At an iteration boundary π_t becomes the current policy; every `ref_refresh_every` steps so does π_ref."""
    o, t = s.cfg.online, s.step - 1
    if o.anchor_every > 1 and t % o.anchor_every == 0:
        if s.anchor is None:
            s.anchor = _frozen_copy(s.model)
        else:
            s.anchor.load_state_dict(s.model.state_dict())
    if o.ref_refresh_every and s.ref is not None and t > 0 and t % o.ref_refresh_every == 0:
        s.ref.load_state_dict(s.model.state_dict())
        s.ref_refreshed = True


def online_step(s: OnlineState) -> dict[str, float]:
    """Sample, judge, build pairs or win rates, and run `ppo_epochs` optimizer steps; returns scalar metrics."""
    cfg, timer, t0 = s.cfg, Timer(), time.perf_counter()
    _new_iteration(s)
    rows = s.stream.take(cfg.train.prompts_per_step)
    r, k = cfg.rollout, cfg.rollout.group_size
    opts = dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                generator=s.generator)  # fmt: skip
    failures_before = s.oracle.failures
    # the policy samples, or the iteration's π_t for a method that collects a dataset per iteration
    sampler = s.anchor if "samples_from_anchor" in s.loss.facts and s.anchor is not None else s.model
    with timer("generate"), autocast_context(s.model, cfg.model.autocast):
        batch = sample(sampler, s.tokenizer, rows, n=k, **opts)
        explore = opponents = None
        if s.loss.explore:
            explore = sample(s.ref if s.loss.explore == "ref" else s.model, s.tokenizer, rows, n=1, **opts)
        if "ground_truth_winner" in s.loss.facts:  # SPIN: the winners are the data, as one extra row per prompt
            explore = demonstrations(batch, torch.arange(len(rows)), s.tokenizer, r.max_new_tokens)
        if s.loss.mixture:
            mixture = GeometricMixture(s.model, s.ref, cfg.online.mixture_coef)
            opponents = sample(mixture, s.tokenizer, rows, n=k, **opts)
    with timer("judge"):
        task_reward = s.scorer.combine(s.scorer.score(batch))
        win = _judge(s, rows, batch, opponents, task_reward) if s.loss.judged else torch.full_like(task_reward, 0.5)
        win = win.to(batch.group_ids.device)
        if "reference_value" in s.loss.facts:
            with autocast_context(s.ref, cfg.model.autocast):
                value, kept = _reference_values(s, rows, opts)
    shown = {"win_rate": win} if s.loss.judged else {}
    s.samples = completion_samples(batch, cfg.log.completions_per_step, reward=task_reward, **shown)
    with timer("update"):
        if s.loss.rewards:
            stats = _rl_update(s, batch, win)
        else:
            units, unit_win = _units(s, batch, win, explore is not None)
            per_row = {}
            if "rewards" in s.loss.inputs:  # REBEL, A*-PO: no extra rows; a unit with a failed reward (NaN) is left out
                per_row["rewards"] = task_reward.to(win.device)
                keep = ~per_row["rewards"][units].isnan().any(1)
                units, unit_win = units[keep], unit_win[keep]
            if "value" in s.loss.inputs:  # A*-PO: V*(x) of each response's prompt; prompts it filters are left out
                per_row["value"] = value.to(win.device)[batch.group_ids]
                keep = kept.to(win.device)[batch.group_ids][units[:, 0]]
                units, unit_win = units[keep], unit_win[keep]
            stats = _update(s, batch.concat(explore) if explore is not None else batch, units, unit_win, per_row)
    lengths = batch.completion_mask.sum(1).float()
    if "reference_value" in s.loss.facts:
        stats |= {"value/v_star_mean": float(value.mean()), "value/prompts_kept_frac": float(kept.float().mean())}
    if s.loss.judged:
        stats["win_rate/std"] = float(win.std()) if win.numel() > 1 else 0.0
    return {
        **stats,
        "oracle/failures": s.oracle.failures - failures_before,
        "reward/task_mean": float(task_reward[~task_reward.isnan()].mean()) if (~task_reward.isnan()).any() else 0.0,
        "tokens/completion_mean": float(lengths.mean()),
        "lr": s.scheduler.get_last_lr()[0],
        "time/generate_s": timer.totals["generate"],
        "time/judge_s": timer.totals["judge"],
        "time/update_s": timer.totals["update"],
        "time/step_s": time.perf_counter() - t0,
    }


def _judge(s: OnlineState, rows: list[dict], batch: Rollouts, opponents: Rollouts | None,
           task_reward: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Each response's win rate: against its sampled opponent (Nash-MD), else against its group (`online.win_rate`)."""
    cfg, k = s.cfg, s.cfg.rollout.group_size
    if opponents is not None:
        per_response = [rows[g] for g in batch.group_ids.tolist()]
        return s.oracle.compare(per_response, batch.texts, opponents.texts).float()
    if cfg.online.oracle == "task":  # the task rewards just computed are the oracle's scores: not twice
        win = spo_selfplay(s.oracle.matrix_from_scores(task_reward.view(len(rows), k))).reshape(-1).float()
    else:
        groups = [batch.texts[p * k : (p + 1) * k] for p in range(len(rows))]
        win = spo_selfplay(s.oracle.matrix(rows, groups)).reshape(-1).float()
    if cfg.online.win_rate == "incl_self":  # the mean over all K, P(y ≻ y) = ½ included (official SPPO)
        win = 0.5 + (k - 1) / k * (win - 0.5)
    return win


def _units(s: OnlineState, batch: Rollouts, win: torch.Tensor, explore: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the (batch + exploration) table each loss term uses: [U, 1] single responses, or [U, 2|3] pairs
    (winner, loser[, exploration response]); and the win rate of each unit's first response."""
    n, k = batch.num_completions, s.cfg.rollout.group_size
    grouped = win.view(-1, k)
    best, worst = grouped.argmax(1), grouped.argmin(1)
    offset = torch.arange(grouped.shape[0], device=win.device) * k
    if "ground_truth_winner" in s.loss.facts:  # SPIN: (the prompt's reference response, each response of π_t)
        rows = torch.arange(n, device=win.device)
        return torch.stack([n + batch.group_ids.to(win.device), rows], 1), win
    if not s.loss.pairs and s.cfg.online.train_on == "best_worst":  # official SPPO: each group's best and worst
        rows = torch.stack([offset + best, offset + worst], 1).flatten()
        return rows[:, None], win[rows]
    if not s.loss.pairs:
        return torch.arange(n, device=win.device)[:, None], win
    keep = (grouped.max(1).values - grouped.min(1).values) > s.cfg.online.min_margin
    cols = [offset + best, offset + worst] + (
        [n + torch.arange(grouped.shape[0], device=win.device)] if explore else []
    )
    return torch.stack(cols, 1)[keep], grouped.max(1).values[keep]


@torch.no_grad()
def _reference_values(s: OnlineState, rows: list[dict], opts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A*-PO's stage 1 for the prompts of `rows` not seen before: `online.value_samples` samples of π_ref each, scored
    by the run's reward functions, give V*(x) = β₁·log mean exp(r/β₁) (`optimal_value`; a failed score counts 0) and
    whether the prompt is kept (`online.value_filter`: some sample's reward is nonzero). Returns V* [P] and kept [P]."""
    o = s.cfg.online
    new = list({prompt_key(row): row for row in rows if prompt_key(row) not in s.values}.items())
    if new:
        ref_batch = sample(s.ref, s.tokenizer, [row for _, row in new], n=o.value_samples, **opts)
        r = s.scorer.combine(s.scorer.score(ref_batch)).float().nan_to_num(0.0).view(len(new), o.value_samples)
        for (key, _), v, total in zip(new, optimal_value(r, o.value_beta).tolist(), r.sum(1).tolist(), strict=True):
            s.values[key] = (v, total != 0 or not o.value_filter)
    value, kept = zip(*(s.values[prompt_key(row)] for row in rows), strict=True)
    return torch.tensor(value), torch.tensor(kept)


@torch.no_grad()
def _fixed_logps(s: OnlineState, model: Any, batch: Rollouts, rows: torch.Tensor) -> torch.Tensor:
    """[R, T] log-probs of `rows` under a frozen model (reference or anchor), zeros elsewhere."""
    out = torch.zeros(batch.completion_mask.shape, device=rows.device)
    for idx in rows.split(s.cfg.train.micro_batch_size) if rows.numel() else ():
        mb = batch.select(idx)
        with autocast_context(model, s.cfg.model.autocast):
            logp, _ = completion_logprobs(model, mb, temperature=s.cfg.rollout.temperature,
                                          share_prompt=s.cfg.model.share_prompt_forward)  # fmt: skip
        out[idx, : logp.shape[1]] = logp.float()
    return out


def _update(
    s: OnlineState, batch: Rollouts, units: torch.Tensor, win: torch.Tensor, per_row: dict[str, torch.Tensor]
) -> dict[str, float]:
    """`ppo_epochs` optimizer steps on the loss averaged over `units`, accumulated over micro-batches of units; a loss
    that takes `rewards` (REBEL, A*-PO) or `value` (A*-PO) gets `per_row`'s values at each unit's responses."""
    cfg, model, loss = s.cfg, s.model, s.loss
    num_units = normaliser = units.shape[0]
    if "zero_at_tie" in loss.facts and s.anchor is None and cfg.train.ppo_epochs == 1:
        # SPPO: (log π_θ/π_t − η·(P̂ − ½))² and its gradient are 0 at π_θ = π_t when P̂ = ½ (e.g. a group the oracle
        # cannot tell apart)
        units, win = units[win != 0.5], win[win != 0.5]
        num_units = units.shape[0]
    used = units.flatten()
    frozen = {}
    if {"ref_logp", "explore_ref_logp"} & loss.inputs:  # XPO needs no reference log-probs of its exploration rows
        ref_rows = used if "explore_ref_logp" in loss.inputs else units[:, :2].flatten()
        frozen["ref_logp"] = _fixed_logps(s, s.ref, batch, ref_rows)
    if "prev_logp" in loss.inputs and s.anchor is not None:
        frozen["prev_logp"] = _fixed_logps(s, s.anchor, batch, used)
    first_pass = torch.zeros(batch.completion_mask.shape, device=used.device)  # π_t = the sampling policy
    per_chunk = max(1, cfg.train.micro_batch_size // units.shape[1])
    losses, grad_norms = [], []
    for epoch in range(cfg.train.ppo_epochs):
        for p in model.parameters():
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
        total = 0.0
        for chunk in torch.arange(num_units, device=used.device).split(per_chunk) if num_units else ():
            idx = units[chunk].flatten()
            mb = batch.select(idx)
            with autocast_context(model, cfg.model.autocast):
                logp, _ = completion_logprobs(model, mb, temperature=cfg.rollout.temperature,
                                              share_prompt=cfg.model.share_prompt_forward)  # fmt: skip
            width = logp.shape[1]
            if epoch == 0:
                first_pass[idx, :width] = logp.detach().float()
            tokens = {"logp": logp, "prev_logp": frozen.get("prev_logp", first_pass)[idx, :width]}
            if "ref_logp" in frozen:
                tokens["ref_logp"] = frozen["ref_logp"][idx, :width]
            args = _loss_args(loss, tokens, mb.completion_mask.float(), win[chunk], units.shape[1])
            for name, column in per_row.items():  # [b, 2] for pairs, [b] for single responses
                at = column[units[chunk]]
                args[name] = at if loss.pairs else at[:, 0]
            value = loss.fn(**{k: v for k, v in args.items() if k in loss.inputs}).sum() / normaliser
            value.backward()
            total += float(value.detach())
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or 1e30)))
        if num_units:  # nothing to learn (every pair tied): AdamW's momentum alone must not move the weights
            s.optimizer.step()
        with warnings.catch_warnings():  # torch warns when a schedule advances before the first optimizer step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            s.scheduler.step()
        losses.append(total)
    out = {"loss": sum(losses) / len(losses), "grad_norm": sum(grad_norms) / len(grad_norms)}
    if loss.pairs and loss.judged:
        out["pairs/kept_frac"] = normaliser / cfg.train.prompts_per_step
    return out


def _loss_args(loss: OnlineLoss, tokens: dict, mask: torch.Tensor, win: torch.Tensor, width: int) -> dict:
    """Token log-probs of a micro-batch of units -> the loss's arguments: [b] or [b, T] (single), [b, 2] (pairs),
    [b] exploration log-probs."""
    if loss.per_token:
        return {**tokens, "mask": mask, "win_rate": win}
    seq = {k: (v * mask).sum(-1).view(-1, width) for k, v in tokens.items()}
    if not loss.pairs:
        return {k: v[:, 0] for k, v in seq.items()} | {"win_rate": win}
    out = {k: v[:, :2] for k, v in seq.items()}
    if width == 3:
        out["explore_logp"] = seq["logp"][:, 2]
        if "ref_logp" in seq:
            out["explore_ref_logp"] = seq["ref_logp"][:, 2]
    elif "explore_logp" in loss.inputs:  # α = 0: the exploration term is 0·(anything)
        zeros = torch.zeros_like(out["logp"][:, 0]).detach()
        out |= {"explore_logp": zeros, "explore_ref_logp": zeros}
    return out


def _rl_update(s: OnlineState, batch: Rollouts, win: torch.Tensor) -> dict[str, float]:
    """SPO: the group win rates are rewards; advantages and the update are the RL trainer's."""
    cfg, rewards = s.cfg, win.float()
    inputs = {"old_logp": batch.rollout_logp, "rollout_logp": batch.rollout_logp, "truncated": batch.truncated,
              "progress": (s.step - 1) / max(1, cfg.train.max_steps), "generator": s.generator,
              "rewards": rewards}  # fmt: skip
    if s.rl_algo.needs_ref:
        inputs["ref_logp"] = reference_logps(s.ref, batch, cfg)
    advantages = rl.advantages_of(
        s.rl_algo, rewards, rewards[:, None], batch.advantage_groups, batch.loss_mask, inputs, [1.0]
    )
    return update(cfg, s.model, s.optimizer, s.scheduler, s.rl_algo, batch, advantages, inputs)
