"""Setup shared by the trainers: components from config, optimizer and schedule, rewards, run directory, logging."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from unipo import algos
from unipo.algos.ops import power_sums
from unipo.config import AXES, Config, ConfigError, component_kwargs
from unipo.rewards import BUILTIN
from unipo.rewards.scorer import RewardScorer
from unipo.run import RunDir, check_loggers, default_output_dir

log = logging.getLogger("unipo")


def bound_params(fn: Callable) -> dict[str, Any]:
    """A bound component's hyperparameters: its registered defaults overlaid with the recipe's values."""
    return {**algos.entry(fn.kind, fn.id).params, **fn.keywords}  # type: ignore[attr-defined]


def build_component(kind: str, name: str, kwargs: dict[str, Any]) -> Callable:
    """The registered function with its hyperparameters bound (checked against its signature); `.needs` holds the
    trainer inputs it declares for these hyperparameters, `.kind` and `.id` where it came from."""
    entry = algos.entry(kind, name)
    inspect.signature(entry.fn).bind_partial(**kwargs)  # raises TypeError naming a bad keyword
    bound = functools.partial(entry.fn, **kwargs)
    bound.needs, bound.kind, bound.id = entry.needs(kwargs), kind, name  # type: ignore[attr-defined]
    return bound


@dataclass
class Algo:
    """The components of a recipe, bound to their hyperparameters, and the trainer inputs they ask for."""

    advantage: Callable
    policy_loss: Callable
    aggregation: Callable
    kl: Callable
    token_weights: list[Callable]
    regularizers: list[Callable]
    sampler: Callable | None = None
    """A group filter of the collect stage (kind `sampler`), or None: train on every sampled group."""
    critic: Callable | None = None
    """A critic estimator (kind `critic`): the advantages come from it and a value model, not from `advantage`."""
    shaping: list[Callable] = field(default_factory=list)
    """Reward shapers (kind `reward`) of the shape stage, in order."""
    kl_coef: float = 0.0
    """β of the KL term in the loss (0: no KL term; the `kl` estimator then is not run)."""
    multi_reward: bool = False
    """The advantage estimator takes rewards (N, K), one column per reward function, and `reward_weights`."""
    adv_post: Callable | None = None
    """The advantage post-processor (kind `adv_post`), or None."""
    credit: Callable | None = None
    """Credit assignment over multi-turn trajectories (kind `credit`), or None."""
    ref_sync: Callable | None = None
    """The reference refresh (`ref_sync`) of the after-step stage, or None: the reference stays the initial policy."""

    def all(self) -> list[Callable]:
        """The components a step runs (the KL estimator only with a KL term; the critic instead of `advantage`)."""
        kl = [self.kl] if self.kl_coef > 0 else []
        estimator = self.critic or self.advantage
        post = [fn for fn in (self.credit, self.adv_post) if fn]
        return [*self.shaping, estimator, *post, self.policy_loss, self.aggregation, *kl, *self.token_weights,
                *self.regularizers]  # fmt: skip

    @property
    def needs(self) -> set[str]:
        """Every trainer input a component of this recipe uses (as declared for its bound hyperparameters)."""
        return set().union(*(fn.needs for fn in self.all()))

    def params_for(self, name: str) -> dict[str, Any]:
        """The hyperparameters (defaults overlaid with the bound ones) of the first component that declares input
        `name`: what the trainer reads to produce it (Lp-Reg's `min_p` for its proxy log-probs)."""
        fn = next(fn for fn in self.all() if name in fn.needs)
        return bound_params(fn)

    def has_fact(self, axis: str, fact: str) -> bool:
        """Whether the component at `axis` (e.g. the sampler) is registered with `fact` (registry.FACTS)."""
        fn = getattr(self, axis)
        return fn is not None and fact in algos.entry(fn.kind, fn.id).facts

    @property
    def needs_ref(self) -> bool:
        """Whether the reference policy must be loaded and run (a KL term, or a component that reads it)."""
        return self.kl_coef > 0 or bool({"ref_logp", "ref_logits"} & self.needs)


def call(fn: Callable, *args: Any, inputs: dict[str, Any], **kwargs: Any) -> Any:
    """Call `fn` with `args`, `kwargs` and the trainer inputs it declares."""
    return fn(*args, **kwargs, **{k: inputs[k] for k in fn.needs if k in inputs and k not in kwargs})


def shape(shapers: list[Callable], rewards: torch.Tensor, states: list[Any], inputs: dict[str, Any]):  # noqa: ANN201
    """The shape stage: each shaper in order on the previous one's rewards, a stateful one (registry
    `Entry.stateful`) with its state. Returns (shaped rewards, the shapers' new states)."""
    new_states = []
    for fn, state in zip(shapers, states, strict=True):
        if algos.entry(fn.kind, fn.id).stateful:
            rewards, state = call(fn, rewards, inputs=inputs, state=state)
        else:
            rewards = call(fn, rewards, inputs=inputs)
        new_states.append(state)
    return rewards, new_states


def build_algo(cfg: Config) -> Algo:
    """Bind every component of `cfg.algo`. `seq_sum_constant` without a constant is pinned to max_new_tokens,
    so padding in a micro-batch never changes the normaliser (Dr. GRPO's L_max)."""
    built = {}
    for axis, kind in AXES.items():
        node = getattr(cfg.algo, axis)
        kwargs = component_kwargs(node)
        if kind == "aggregation" and "constant" in algos.entry(kind, node.name).params:
            kwargs.setdefault("constant", cfg.rollout.max_new_tokens)
        built[axis] = build_component(kind, node.name, kwargs)
    weights = [build_component("token_weight", n.name, component_kwargs(n)) for n in cfg.algo.token_weights]
    regs = [build_component("regularizer", n.name, component_kwargs(n)) for n in cfg.algo.regularizers]
    shaping = [build_component("reward", n.name, component_kwargs(n)) for n in cfg.algo.shaping]
    # `reward_weights` is data (a tensor), so it is not among the entry's hyperparameters: ask the signature
    multi = "reward_weights" in inspect.signature(algos.get("advantage", cfg.algo.advantage.name)).parameters
    sampler, critic, post, sync, credit = (
        build_component(kind, node.name, component_kwargs(node)) if node else None
        for kind, node in (("sampler", cfg.algo.sampler), ("critic", cfg.algo.critic), ("adv_post", cfg.algo.adv_post),
                           ("controller", cfg.algo.ref_sync), ("credit", cfg.algo.credit))
    )  # fmt: skip
    return Algo(**built, token_weights=weights, regularizers=regs, sampler=sampler, critic=critic, shaping=shaping,
                kl_coef=cfg.algo.kl.coef, multi_reward=multi and critic is None, adv_post=post,
                ref_sync=sync, credit=credit)  # fmt: skip


def check_runnable(algo: Algo, num_rewards: int = 1, max_len: int = 3) -> None:
    """Run every component once on a tiny synthetic batch with exactly the inputs this trainer supplies.

    A component that needs an input the trainer does not provide (e.g. `remax`'s greedy baseline rewards), or a
    hyperparameter value a component rejects, stops the run here with a ConfigError, before any model loads.
    `max_len` is the run's token budget (`rollout.max_new_tokens`), which shapers check their lengths against.
    """
    from unipo.config import ConfigError
    from unipo.trainers.inputs import ALWAYS_RUN, ELSEWHERE, INJECTED_BY, PURE_ONLY, unavailable

    for fn in algo.all():  # the KL estimator only when there is a KL term
        where = ALWAYS_RUN.get((fn.kind, fn.id)) or ELSEWHERE.get((fn.kind, fn.id))
        if where:
            raise ConfigError(f"{fn.kind} {fn.id!r} runs in {where}")
        if (fn.kind, fn.id) in PURE_ONLY:
            raise ConfigError(f"{fn.kind} {fn.id!r} cannot run in the on-policy trainer yet: "
                              f"{PURE_ONLY[fn.kind, fn.id]}")  # fmt: skip
        for name, fact in INJECTED_BY.items():
            if name in fn.needs and not algo.has_fact("sampler", fact):
                samplers = [n for n in algos.names("sampler") if fact in algos.entry("sampler", n).facts]
                raise ConfigError(f"{fn.kind} {fn.id!r} reads injected samples (`{name}`), and no sampler of this "
                                  f"recipe injects any: set algo.sampler to one of {', '.join(samplers)}")  # fmt: skip
        late = unavailable(fn.kind, fn.needs)
        if late:
            raise ConfigError(f"{fn.kind} {fn.id!r} needs {', '.join(late)}, which the on-policy trainer produces only "
                              f"after the {fn.kind} stage")  # fmt: skip
    token_level = [fn.id for fn in algo.shaping if "token_rewards" in algos.entry(fn.kind, fn.id).facts]
    if token_level and (token_level != [algo.shaping[-1].id] or algo.critic is None or
                        "token_rewards" not in algo.critic.needs):  # fmt: skip
        raise ConfigError(f"algo.shaping: {token_level[0]!r} gives per-token rewards, which only a critic turns into "
                          "advantages: list it last, once, with algo.critic.name=ppo_gae")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    n, t, nan = 4, 3, float("nan")
    logp, mask = -torch.rand(n, t, generator=g) - 0.1, torch.ones(n, t)
    inputs: dict[str, Any] = {
        "old_logp": logp - 0.05, "rollout_logp": logp - 0.05, "ref_logp": logp + 0.1, "logp": logp,
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5]), "rewards": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        "group_ids": torch.tensor([0, 0, 1, 1]), "entropy": torch.rand(n, t, generator=g),
        "completion_ids": torch.randint(0, 5, (n, t), generator=g), "truncated": torch.zeros(n, dtype=torch.bool),
        "progress": 0.5, "generator": g, "proxy_logp": logp - 0.2, "tempered_old_logp": logp - 0.1,
        "baseline_rewards": torch.tensor([0.5, 0.5, 0.0, 1.0]), "demo_mask": torch.tensor([False, False, True, False]),
        "lengths": torch.tensor([3, 1, 2, 3]).clamp(max=max_len), "max_len": max_len,
        "correct": torch.tensor([True, False, True, False]), "teacher_logp": logp + 0.2,
        "prompt_keys": ["a", "a", "b", "b"], "hint_mask": torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]),
        "retry_pairs": torch.tensor([0, -1, 0, -1]),
        "segment_values": torch.tensor([[0.5, nan, nan, nan], [nan, 0.2, nan, nan], [nan] * 4, [0.0, 1.0, nan, nan]]),
        "turn_ids": torch.tensor([[0, 0, -1], [0, -1, 1], [0, 0, 0], [0, -1, 1]]),
        "turn_rewards": [[1.0], [0.0, 1.0], [0.0], [0.0, 0.0]], "state_keys": [[""], ["", "x"], [""], ["", "x"]],
        "turn_info": [[{}], [{"judgement": {"said": True, "reference": False}}, {}], [{}], [{}, {}]],
    }  # fmt: skip
    logits = torch.randn(n, t, 5, generator=g)  # a 5-token vocabulary for the full-distribution inputs
    inputs["logits"], inputs["ref_logits"] = (
        logits,
        torch.log_softmax(logits + 0.3 * torch.randn(n, t, 5, generator=g), -1),
    )
    inputs["sum_pi_squared"], inputs["sum_pi_cubed"] = power_sums(logits)
    inputs["reward_components"] = inputs["rewards"][:, None].repeat(1, num_rewards)
    rewards = inputs["rewards"][:, None].repeat(1, num_rewards) if algo.multi_reward else inputs["rewards"]
    extra = {"reward_weights": torch.ones(num_rewards)} if algo.multi_reward else {}
    if algo.critic is None:
        estimate = ("advantage", lambda: call(algo.advantage, rewards, inputs["group_ids"], inputs=inputs, mask=mask,
                                              **extra))  # fmt: skip
    else:
        estimate = ("critic", lambda: call(algo.critic, rewards, torch.rand(n, t + 1, generator=g), mask.bool(),
                                           inputs=inputs))  # fmt: skip
    checks: list[tuple[str, Callable[[], Any]]] = [
        estimate,
        *([("credit", lambda: call(algo.credit, inputs["advantages"], inputs=inputs))] if algo.credit else []),
        *([("adv_post", lambda: call(algo.adv_post, inputs["advantages"], mask, inputs=inputs))] if algo.adv_post
          else []),
        ("policy_loss", lambda: call(algo.policy_loss, logp, inputs["old_logp"], inputs["advantages"], mask,
                                     inputs=inputs)),
        ("kl", lambda: call(algo.kl, logp, inputs["ref_logp"], inputs=inputs)),
    ]  # fmt: skip
    checks += [(f"shaping[{i}]", functools.partial(shape, [fn], inputs["rewards"], [None], inputs))
               for i, fn in enumerate(algo.shaping)]  # fmt: skip
    checks += [(f"token_weights[{i}]", functools.partial(call, fn, mask, inputs=inputs))
               for i, fn in enumerate(algo.token_weights)]  # fmt: skip
    checks += [(f"regularizers[{i}]", functools.partial(call, fn, logp, inputs["old_logp"], mask, inputs=inputs))
               for i, fn in enumerate(algo.regularizers)]  # fmt: skip
    for where, check in checks:
        try:
            check()  # a reconstruction logs its one-time R2 warning here, at setup
        except (ValueError, TypeError, IndexError) as e:
            raise ConfigError(f"algo.{where}: cannot run in the on-policy trainer: {e}") from None


def start_run(cfg: Config, world: Any = None) -> tuple[Config, RunDir]:
    """The run directory (`runs/<recipe>-<time>` unless `output_dir` is set; rank 0's name, written by rank 0 alone
    on several ranks), CPU threads and seeds of a run."""
    check_loggers(cfg)
    if cfg.output_dir is None:
        name = default_output_dir(cfg)
        cfg = cfg.model_copy(update={"output_dir": world.broadcast(name) if world else name})
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    return cfg, RunDir(cfg.output_dir, writes=world is None or world.main)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, cfg: Config, lr: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (at `lr`, default `train.lr`) plus a LambdaLR: linear warm-up, then constant, linear or cosine decay over
    all optimizer steps. Fused (one kernel per step, no per-parameter temporaries; FSDP2's shards too) on CPU and
    CUDA."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr or t.lr, betas=t.adam_betas, weight_decay=t.weight_decay,
                                  fused=fused or None)  # fmt: skip
    total = max(1, t.max_steps * t.ppo_epochs)

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
        if t.lr_schedule == "linear":
            return 1.0 - progress
        if t.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def import_object(dotted: str) -> Any:
    """`package.module.name` -> the object."""
    module, _, name = dotted.rpartition(".")
    if not module:
        raise ValueError(f"{dotted!r} is not a dotted path package.module.name")
    if os.getcwd() not in sys.path and importlib.util.find_spec(module.partition(".")[0]) is None:
        sys.path.append(os.getcwd())  # as `python -m` would: a module beside where the user runs unipo
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {dotted!r}: {e}") from None


def build_rewards(cfg: Config, task_rewards: list[tuple[Callable, float]]) -> RewardScorer:
    """The config's `rewards` (built-in names or dotted paths, extra keys bound as keyword arguments) when given,
    else the task's own reward functions and weights; called as `cfg.reward` says."""
    settings = {"timeout_s": cfg.reward.timeout_s, "workers": cfg.reward.workers, "ray": cfg.dist.ray,
                "ray_address": cfg.dist.ray_address}  # fmt: skip
    if not cfg.rewards:
        return RewardScorer([fn for fn, _ in task_rewards], [w for _, w in task_rewards], **settings)
    fns, names = [], []
    for i, r in enumerate(cfg.rewards):
        where = f"rewards[{i}]"
        if r.name is not None and r.name not in BUILTIN:
            raise ConfigError(f"{where}: unknown reward {r.name!r}; built-in: {', '.join(sorted(BUILTIN))}")
        try:
            fn = BUILTIN[r.name] if r.name is not None else import_object(r.component)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        kwargs = dict(r.model_extra or {})
        if kwargs:
            params = inspect.signature(fn).parameters
            unknown = sorted(k for k in kwargs if k not in params or k in ("prompts", "completions"))
            if unknown and (r.name is not None or not any(p.kind is p.VAR_KEYWORD for p in params.values())):
                named = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
                raise ConfigError(f"{where} ({r.name or r.component}): unknown keyword(s) {', '.join(unknown)}; "
                                  f"it takes {', '.join(named) or 'none'}")  # fmt: skip
            fn = functools.partial(fn, **kwargs)
        fns.append(fn)
        names.append(r.name or r.component.rpartition(".")[2])
    scores = [r.scores for r in cfg.rewards]
    return RewardScorer(fns, [r.weight for r in cfg.rewards], names=_unique(names), scores=scores, **settings)


def _unique(names: list[str]) -> list[str]:
    """`names` with repeats numbered (`regex`, `regex_2`), so each reward has its own metrics."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


class Timer:
    """Accumulates wall time per named phase: `with timer("generate"): ...`."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def __call__(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    def __init__(self, timer: Timer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.timer.totals[self.name] = self.timer.totals.get(self.name, 0.0) + time.perf_counter() - self.start
