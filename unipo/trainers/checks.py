"""Set-up checks of the on-policy trainer: what a recipe cannot run with (an environment, a sampler, several ranks,
asynchronous rollouts) is refused in one line before any model loads."""

from __future__ import annotations

from typing import Any

import torch

from unipo import algos
from unipo.config import Config, ConfigError
from unipo.envs import resolve as resolve_env
from unipo.rollout.inject import reference_text
from unipo.rollout.vllm import import_vllm
from unipo.trainers.common import Algo, bound_params
from unipo.trainers.dist import World
from unipo.trainers.inputs import NEEDS_REFERENCE


def check_setup(cfg: Config, algo: Algo, task: Any, world: World) -> tuple[Any, Any] | None:
    """Every check below that applies; returns the run's multi-turn environment (factory, settings) or None."""
    if algo.has_fact("policy_loss", "pairs") and cfg.rollout.group_size != 2:
        raise ConfigError(f"algo.policy_loss {algo.policy_loss.id!r} regresses within pairs of samples: set "
                          f"rollout.group_size=2 (got {cfg.rollout.group_size})")  # fmt: skip
    env = check_env(cfg, algo, task)
    if algo.sampler is not None:
        check_sampler(cfg, algo, task)
    if world.size > 1:
        check_data_parallel(cfg)
    if cfg.rollout.max_staleness is not None:
        check_async(cfg, algo)
    if cfg.rollout.engine != "hf":
        check_engine(cfg, algo, env, world)
    if cfg.dist.ray_engines:
        check_ray_engines(cfg, env, world)
    return env


def check_ray_engines(cfg: Config, env: Any, world: World) -> None:
    """Engines in Ray actors (rollout/ray_engines.py) sample single-turn completions (on several ranks, in step: the
    ranks' producers of asynchronous rollouts would ask for different policy versions)."""
    if not cfg.dist.ray:
        raise ConfigError("dist.ray_engines: the engines run in Ray actors; set dist.ray=true")
    if env is not None:
        raise ConfigError("dist.ray_engines: a multi-turn environment's episodes are sampled turn by turn by the "
                          "policy itself; set dist.ray_engines=0")  # fmt: skip
    if world.size > 1 and cfg.rollout.max_staleness is not None:
        raise ConfigError("rollout.max_staleness: the ranks' producers would share the engine actors at different "
                          "policy versions; with dist.ray_engines, train on one process or synchronously")  # fmt: skip


def check_engine(cfg: Config, algo: Algo, env: Any, world: World) -> None:
    """What the vLLM engine (rollout/vllm.py) and a generation server (rollout/server.py, which may host vLLM) cannot
    sample: they draw single-turn completions of prompts, at any temperature (the other samplers generate with them
    too)."""
    engine = f"rollout.engine={cfg.rollout.engine}"
    if env is not None:
        raise ConfigError(f"{engine}: a multi-turn environment's episodes are sampled turn by turn by the policy "
                          "itself; use rollout.engine=hf")  # fmt: skip
    forcing = [fact for fact in ("roll_in", "inpaint", "retry") if algo.has_fact("sampler", fact)]
    if forcing or "segment_values" in algo.advantage.needs:
        what = f"the sampler {algo.sampler.id!r}" if forcing else f"the advantage {algo.advantage.id!r}"
        raise ConfigError(f"{engine}: {what} continues completions from forced tokens, which vLLM does not sample; "
                          "use rollout.engine=hf")  # fmt: skip
    if cfg.rollout.engine == "vllm":
        import_vllm()
    elif cfg.dist.ray_engines:
        raise ConfigError("dist.ray_engines: the generation server (rollout.engine=server) is the engine; set "
                          "dist.ray_engines=0")  # fmt: skip
    elif cfg.rollout.max_staleness is not None and world.size > 1:
        raise ConfigError("rollout.max_staleness: the ranks' producers would share one server at different policy "
                          "versions; with rollout.engine=server, train on one process or synchronously")  # fmt: skip


def check_async(cfg: Config, algo: Algo) -> None:
    """What asynchronous rollouts (trainers/pipeline.py) cannot run with yet."""
    if algo.sampler is not None:
        raise ConfigError(f"rollout.max_staleness: the sampler {algo.sampler.id!r} reads and changes the trainer's "
                          "state between steps, which a producer sampling ahead cannot follow; unset one of "
                          "them")  # fmt: skip


def check_env(cfg: Config, algo: Algo, task: Any) -> tuple[Any, Any] | None:
    """The run's multi-turn environment (factory, settings), or None; what cannot run with one is refused before any
    model loads."""
    try:
        env = resolve_env(cfg.env, task.env)
    except ValueError as e:
        raise ConfigError(f"env: {e}") from None
    if env is None:
        if branches(algo):
            raise ConfigError(f"algo.sampler {algo.sampler.id!r} branches multi-turn trajectories at a turn: set "
                              "`env`, or a task with an environment (task=calculator)")  # fmt: skip
        if algo.credit is not None or algo.has_fact("critic", "td_replay"):
            which = f"algo.credit {algo.credit.id!r}" if algo.credit else f"algo.critic {algo.critic.id!r}"
            raise ConfigError(f"{which} assigns credit over the turns of multi-turn trajectories: set `env`, or a task "
                              "with an environment (task=guess_number)")  # fmt: skip
        turned = [fn for fn in algo.all() if fn.needs & {"turn_rewards", "turn_info", "state_keys"}]
        if turned:
            raise ConfigError(f"{turned[0].kind} {turned[0].id!r} reads what an environment says after each turn: set "
                              "`env`, or a task with an environment (task=reseek)")  # fmt: skip
        return None
    if task.train:  # an environment that cannot start an episode on this task's rows fails here, not in every step
        try:
            env[0]().reset(task.train[0])
        except Exception as e:  # noqa: BLE001 (any failure of user code, reported in one line)
            raise ConfigError(f"env: the environment cannot start an episode on the first row of task {task.name!r} "
                              f"({type(e).__name__}: {e}); pick the task it was made for (e.g. task=guess_number "
                              "with env=guess_number)") from None  # fmt: skip
    if algo.critic is not None and not algo.has_fact("critic", "td_replay"):
        raise ConfigError(f"algo.critic {algo.critic.id!r} runs GAE over single completions; over multi-turn "
                          "trajectories use a turn-level critic (algo.critic=archer) or an estimator")  # fmt: skip
    if algo.critic is not None and algo.credit is not None:
        raise ConfigError(f"algo.critic {algo.critic.id!r} gives the turns' advantages itself: unset algo.credit "
                          f"{algo.credit.id!r}")  # fmt: skip
    if algo.sampler is not None and not branches(algo):
        raise ConfigError(f"algo.sampler {algo.sampler.id!r}: samplers do not run with a multi-turn environment yet "
                          "(they re-generate or inject single completions)")  # fmt: skip
    late = {"baseline_rewards", "segment_values"} & algo.advantage.needs
    if late:
        raise ConfigError(f"algo.advantage {algo.advantage.id!r} needs {', '.join(sorted(late))} from single-turn "
                          "completions, which a multi-turn environment does not give")  # fmt: skip
    return env


def branches(algo: Algo) -> bool:
    """Whether the recipe's sampler branches multi-turn trajectories (REFUEL, ARPO): the samplers that need an
    environment, and the only ones that run with one."""
    return algo.has_fact("sampler", "branch") or algo.has_fact("sampler", "entropy_branch")


def check_data_parallel(cfg: Config) -> None:
    """What cannot run on several ranks as launched is refused before any model loads (every component and sampler
    runs there: trainers/dist.py)."""
    if cfg.dist.ray and not cfg.dist.ray_address:
        raise ConfigError("dist.ray: on several ranks, start one Ray cluster (`ray start --head`) and set "
                          "dist.ray_address=auto, so that the ranks share it instead of each starting "
                          "its own")  # fmt: skip


def check_sampler(cfg: Config, algo: Algo, task: Any) -> None:
    """The sampler's config-time checks: what it needs from the config, the recipe and the task's rows."""
    if algo.has_fact("sampler", "budget"):  # the allotment must be possible before any model loads
        try:
            algo.sampler(torch.full((cfg.train.prompts_per_step,), 0.5), total=algo.sampler.keywords.get("total") or
                         cfg.train.prompts_per_step * cfg.rollout.group_size)  # fmt: skip
        except ValueError as e:
            raise ConfigError(f"algo.sampler: {e}") from None
    if algo.has_fact("sampler", "drafts"):
        drafts = round(cfg.rollout.group_size * bound_params(algo.sampler)["draft_frac"])
        if drafts < 1 or cfg.rollout.group_size - drafts < 2:
            raise ConfigError(f"algo.sampler {algo.sampler.id}: {drafts} drafts of rollout.group_size="
                              f"{cfg.rollout.group_size} leave no draft or fewer than 2 refinements; set "
                              "algo.sampler.draft_frac")  # fmt: skip
    late = {"ref_logp", "baseline_rewards", "segment_values"}  # inputs the swap's extra batch does not get
    if algo.has_fact("sampler", "entropy_switch") and (algo.critic or late & algo.advantage.needs):
        estimator = algo.critic.id if algo.critic else algo.advantage.id
        raise ConfigError(f"algo.sampler {algo.sampler.id} computes advantages of extra samples with the step's "
                          f"estimator, which cannot be {estimator!r} (it needs a critic, a reference, a greedy "
                          "baseline or Monte Carlo values)")  # fmt: skip
    if algo.sampler is not None and algos.entry("sampler", algo.sampler.id).facts & NEEDS_REFERENCE and task.train:
        try:
            reference_text(task.train[0])
        except ValueError as e:
            raise ConfigError(f"algo.sampler {algo.sampler.id!r} on task {task.name!r}: {e}") from None
