"""Component registries: one namespace per kind, filled by decorators at import time.

Every registered component records the paper it comes from and a provenance tag (ALGORITHMS.md §0.1), so
`unipo list` can show the catalogue and a reconstruction is never passed off as a paper's rule.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

KINDS = (
    "advantage",
    "adv_post",
    "policy_loss",
    "aggregation",
    "token_weight",
    "kl",
    "regularizer",
    "sampler",
    "reward",
    "critic",
    "controller",
    "preference",
    "online",
    "credit",
    "classic",
)


_WARNED: set[str] = set()


def warn_reconstruction(name: str, paper: str) -> None:
    """Log once per process that component `name` is a reconstruction, not the published rule (ALGORITHMS.md R2)."""
    if name in _WARNED:
        return
    _WARNED.add(name)
    logging.getLogger("unipo.algos").warning(
        "%r is a reconstruction of %s, not the published rule (ALGORITHMS.md R2)", name, paper
    )


class _Required:
    """Marks a hyperparameter with no default: a recipe must set it."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()

DATA_ARGS = frozenset({"mask", "num_tokens", "num_seqs", "progress", "generator", "n_steps", "state"})
"""Keyword arguments that carry data from the trainer, never hyperparameters from a recipe."""

TRAINER_INPUTS = frozenset(
    {"old_logp", "ref_logp", "rollout_logp", "advantages", "rewards", "group_ids", "entropy", "completion_ids",
     "truncated", "progress", "generator", "logp", "proxy_logp", "tempered_old_logp", "baseline_rewards", "demo_mask",
     "lengths", "max_len", "correct", "reward_components", "prompt_keys", "hint_mask",
     "teacher_logp", "segment_values", "logits", "ref_logits", "sum_pi_squared", "sum_pi_cubed", "turn_ids",
     "turn_rewards", "turn_info", "state_keys", "token_rewards", "target_values", "retry_pairs"}
)  # fmt: skip
"""The inputs a trainer may feed a component by keyword (the producers are in `unipo.trainers.inputs`)."""

FACTS = {
    "adaptive_kl": "classic: its `beta` is moved after each iteration by PPO's adaptive rule "
    "(`unipo.algos.classic.adapt_kl_beta`, toward `target_kl`)",
    "trust_region": "classic: its policy moves by one natural-gradient step per iteration with a KL line search "
    "(`unipo.algos.classic.trust_region_step`, its `kl` metric the constraint), not by minibatch SGD on its loss; "
    "the value network still trains by SGD (TRPO)",
    "off_policy": "classic: trained off-policy by the replay-buffer runner (`unipo.testbeds.classic_off`): SAC-style "
    "twin Q critics and a value net with a Polyak target, a tanh-squashed Gaussian actor whose reparameterised action "
    "ã carries the gradient, and π_k a copy of π_θ every `old_every` steps; the third argument is Q(s, ã)",
    "mixture_opponent": "online: its opponent is sampled from the geometric mixture of policy and reference, not the "
    "group (Nash-MD)",
    "zero_at_tie": "online: value and gradient are exactly 0 for a response with win rate 1/2 while the policy is the "
    "anchor, so such responses may skip the forward and backward (SPPO)",
    "explore_from_ref": "online: its exploration response is sampled from the reference, not the policy (XPO)",
    "samples_from_anchor": "online: with `online.anchor_every` > 1, every step of an iteration samples from the "
    "iterate π_t frozen at its start, as a dataset collected per iteration (iterative DPO), not from the current "
    "policy",
    "ground_truth_winner": "online: each pair's winner is the prompt's reference response (the dataset's `solution`, "
    "else `answer`) and its loser a sample of π_t; no judge (SPIN)",
    "reference_value": "online: each response of π_θ is trained on its reward and its prompt's V*(x), estimated once "
    "per prompt from `online.value_samples` samples of π_ref (A*-PO's stage 1); no judge",
    "couples_batch": "preference: its loss couples the examples of a batch (AOT sorts them), so the offline trainer "
    "computes it on the whole step in one pass, not per micro-batch",
    "single_trajectory": "preference: each listed response is its own trajectory with its own reward, nothing is "
    "ranked, so it also trains on single-trajectory rows `{prompt, completion, score}` and lists of one (DRO)",
    "rewards_for_rl": "online: turns the group's win rates into rewards for the RL update (SPO)",
    "group_centred": "advantage: subtracts a group or batch mean of the rewards, so an affine map of the reward with "
    "constant coefficients cancels (or only rescales the advantage)",
    "affine_in_reward": "reward: an affine map of the reward with constant coefficients (a correction that a "
    "`group_centred` estimator cancels)",
    "demonstrations": "sampler: the completions it marks are replaced by their prompt's demonstration (the dataset's "
    "`solution`, else `answer`), which carries no policy gradient and is trained on by `sft_nll` (HPT)",
    "hints": "sampler: the groups it marks are regenerated with a hint (a growing prefix of the reference solution) "
    "appended to the prompt, at each of its `fractions` in turn while they still fail (GHPO)",
    "roll_in": "sampler: called before generation with each completion's reference length, it returns how many "
    "reference tokens to force at the start of the completion (out of the loss); the policy continues (DR-PO)",
    "inpaint": "sampler: the groups it marks (with a fraction per completion) are regenerated with that fraction of "
    "the reference forced at the start and kept in the loss as `hint_mask`; correct ones replace wrong ones (IGPO)",
    "budget": "sampler: called before generation with each prompt's estimated pass rate (`prior` when unseen), it "
    "returns each prompt's number of rollouts (Knapsack RL); the pass rates are its checkpointed state",
    "replay": "sampler: called with the first reward function's scores and which prompts have a stored success, it "
    "marks the rollouts to replace by that success (ARPO); the buffer is its checkpointed state",
    "ground_truth": "sampler: the rollout it marks in a group is replaced by the prompt's reference response, scored "
    "like a rollout and trained with the group's advantage (off-policy against sg(π_θ); ViSurf)",
    "entropy_switch": "sampler: after the advantages, a share of the prompts is sampled again at a temperature chosen "
    "from the last step's entropy; the samples it keeps replace the batch's first ones with advantage 1 (AEPO)",
    "tiered_hints": "sampler: the groups it marks get one hinted rollout per hint level (least help first); the first "
    "success replaces one rollout and keeps its hinted prompt, in the original group (Scaf-GRPO)",
    "branch": "sampler: called with the number of turns of each prompt's roll-in trajectory, it returns the turn to "
    "branch at; `rollout.group_size` branches restart there (the earlier turns replayed) and finish their episodes, "
    "only the branch turn trained (REFUEL; multi-turn only)",
    "turn_sequential": "credit: the update runs once per policy turn index, the last first, each pass an optimizer "
    "step on that turn's tokens of the trajectories that reached it, normalised by their own counts (SeeUPO; "
    "multi-turn only)",
    "entropy_branch": "sampler: called with the initial trajectories' mean entropy over the first tokens of each turn, "
    "it returns how many branches restart at each (trajectory, turn), the earlier turns replayed (turn 0: a fresh "
    "trajectory); initial trajectories and branches make `rollout.group_size` per prompt, every turn trained (ARPO; "
    "multi-turn only)",
    "td_replay": "critic: an off-policy TD critic over turns: each step's trajectories join a replay of the last "
    "`critic.replay_size`, and `critic.replay_updates` optimizer steps each fit the value model to the targets the "
    "function gives on `critic.replay_batch` replayed trajectories (its `target_values` from a Polyak-averaged copy, "
    "`critic.target_tau`); the policy's advantages come after, from the updated critic (ArCHer; multi-turn only)",
    "retry": "sampler: it gives the failed attempts to retry a failure point; each is retried from its prefix up to "
    "that point (forced, out of the loss) on the prompt plus feedback, and the retry joins the group as an answer to "
    "the bare prompt, paired with its attempt (`retry_pairs`) (R³L)",
    "pairs": "policy_loss: regresses within pairs of samples of a prompt, so it needs `rollout.group_size=2` (REFUEL)",
    "drafts": "sampler: a share of the budget samples drafts; it marks each prompt's best, and the rest of the budget "
    "samples refinements of the prompt plus that draft, the only samples trained on (iGRPO)",
    "reference_sync": "controller: moves the reference policy's weights towards the policy's after a step "
    "(`algo.ref_sync`, TR-DPO); the reference is then checkpointed with the run",
    "unpaired": "preference: takes desirable and undesirable examples as two lists of any sizes and returns one term "
    "per example (desirable first); it trains on unpaired data, and on pairs as their chosen and rejected responses",
    "token_rewards": "reward: returns per-token rewards [N, T] (each completion's outcome on its last token plus dense "
    "terms) instead of [N]; it is the last shaper, and a critic that takes `token_rewards` (`ppo_gae`) turns them into "
    "advantages (RTO)",
    "resample": "sampler: returns how many times each sample enters the batch (0 drops it; duplicates allowed), "
    "e.g. PF-PPO's reward-weighted resampling",
}
"""Facts about a method that change how a trainer feeds it (declared at registration, never keyed on its id)."""

Inputs = Callable[[dict[str, object]], "frozenset[str] | set[str]"]
"""Declared inputs: the component's hyperparameters (defaults overlaid with the bound values) -> the trainer
inputs it uses with them."""


@dataclass(frozen=True)
class Controlled:
    """A hyperparameter of a component that is training state, moved between steps by a registered controller:
    after each step the trainer sets `param` to `controller(value, statistic, **{k: params[v] for k, v in args})`,
    `statistic` being the step's mean of the metric of that name. The value is checkpointed with the run."""

    param: str
    """The keyword whose value is state (the recipe gives its initial value)."""
    controller: str
    """The id of the update rule (kind `controller`)."""
    statistic: str
    """The step metric the rule reads (e.g. `entropy/token`)."""
    args: tuple[tuple[str, str], ...] = ()
    """(controller keyword, component hyperparameter) pairs forwarded to the rule."""


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    fn: Callable
    paper: str
    """Citation: title, authors/year and arXiv id where known."""
    tag: str
    """Provenance tag of ALGORITHMS.md §0.1, e.g. "checked: TRL, verl", "memory", "reconstructed"."""
    inputs: Inputs | None = None
    """Declared trainer inputs as a function of the hyperparameters; None: every trainer input the signature takes
    as a keyword (a component whose needs do not depend on its hyperparameters)."""
    state: Controlled | None = None
    """The hyperparameter that is training state, and the controller that moves it (None: stateless)."""
    facts: frozenset[str] = frozenset()
    """Facts from `FACTS` that change how a trainer feeds the component."""

    def needs(self, bound: dict[str, object] | None = None) -> frozenset[str]:
        """The trainer inputs this component uses with hyperparameters `bound` (the rest at their defaults)."""
        if self.inputs is None:
            return self.signature_inputs
        params = {**self.params, **(bound or {})}
        needed = frozenset(self.inputs(params))
        unknown = needed - TRAINER_INPUTS
        if unknown:
            raise ValueError(f"{self.kind} {self.name!r} declares unknown inputs {sorted(unknown)}")
        return needed

    @property
    def signature_inputs(self) -> frozenset[str]:
        """Every trainer input the function can take as a keyword."""
        sig = inspect.signature(self.fn).parameters.values()
        return frozenset(p.name for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in TRAINER_INPUTS)

    @property
    def stateful(self) -> bool:
        """Whether the component keeps its own state between steps (a `state` keyword; it then returns
        `(value, new_state)` and the trainer checkpoints the state)."""
        return "state" in inspect.signature(self.fn).parameters

    @property
    def params(self) -> dict[str, object]:
        """Hyperparameters with their defaults (`REQUIRED` where there is none): keyword-only arguments that are not
        data (tensors, global counts)."""
        sig = inspect.signature(self.fn)
        return {
            p.name: REQUIRED if p.default is inspect.Parameter.empty else p.default
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
            and p.name not in DATA_ARGS
            and p.name not in TRAINER_INPUTS
            and "Tensor" not in str(p.annotation)
        }


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

ALIASES: dict[str, dict[str, str]] = {
    "preference": {"robust": "rdpo"},
    "advantage": {"normalize_then_sum": "gdpo"},
}
"""Other names of one registered component (ALGORITHMS.md R2: one implementation, one entry): `robust` is TRL's
`loss_type` name for `rdpo`; `normalize_then_sum` is TRL's `multi_objective_aggregation` name for `gdpo` (ALGORITHMS.md
§5.1 lists it among the reward combinations). `entry`/`get` resolve them; `names`/`entries` list each component once."""


def register(
    kind: str,
    name: str,
    *,
    paper: str,
    tag: str,
    inputs: Inputs | None = None,
    state: Controlled | None = None,
    facts: frozenset[str] | set[str] = frozenset(),
) -> Callable[[Callable], Callable]:
    """Decorator that registers `fn` as component `name` of `kind`. Registering a name twice is an error.

    `inputs` declares the trainer inputs the component uses as a function of its hyperparameters, for components
    whose needs depend on them (`reinforce_pp` needs the reference log-probs only when its `kl_coef` > 0); by
    default they are the trainer inputs its signature takes. `state` names a hyperparameter that a controller
    moves during training (`adaptive_entropy`'s coefficient); `facts` (from `FACTS`) say how a trainer must feed it."""
    unknown = set(facts) - FACTS.keys()
    if unknown:
        raise ValueError(f"{kind} {name!r}: unknown facts {sorted(unknown)}; known: {', '.join(sorted(FACTS))}")
    if kind not in _REGISTRY:
        raise ValueError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")

    def deco(fn: Callable) -> Callable:
        if name in ALIASES.get(kind, {}):
            raise ValueError(f"{kind} {name!r} is an alias of {ALIASES[kind][name]!r}; register it once")
        if name in _REGISTRY[kind]:
            raise ValueError(f"{kind} {name!r} is already registered (by {_REGISTRY[kind][name].fn.__module__})")
        _REGISTRY[kind][name] = Entry(kind, name, fn, paper, tag, inputs, state, frozenset(facts))
        return fn

    return deco


def entry(kind: str, name: str) -> Entry:
    """The registry entry for `name` of `kind` (an alias resolves to its component); raises KeyError naming the known
    ids."""
    _load_all()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")
    name = ALIASES.get(kind, {}).get(name, name)
    if name not in _REGISTRY[kind]:
        known = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise KeyError(f"unknown {kind} {name!r}; registered: {known}")
    return _REGISTRY[kind][name]


def aliases_of(kind: str, name: str) -> list[str]:
    """The other names of component `name` of `kind` (`ALIASES`)."""
    return [alias for alias, target in ALIASES.get(kind, {}).items() if target == name]


def get(kind: str, name: str) -> Callable:
    """The function registered as `name` of `kind`."""
    return entry(kind, name).fn


def names(kind: str) -> list[str]:
    """Sorted ids registered under `kind`."""
    _load_all()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return sorted(_REGISTRY[kind])


def entries() -> list[Entry]:
    """Every registered component, by kind then name."""
    _load_all()
    return [_REGISTRY[k][n] for k in KINDS for n in sorted(_REGISTRY[k])]


def _load_all() -> None:
    # The family modules register themselves on import; importing the package imports them all.
    import unipo.algos  # noqa: F401
