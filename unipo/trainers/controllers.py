"""Component state: hyperparameters that registered controllers move between steps, and their checkpointed values.

A registered component may declare one hyperparameter as state (`algos.registry.Controlled`): `adaptive_entropy`'s
coefficient, `epo_smooth_recon`'s entropy history, `r2vpo_recon`'s dual variable. The KL coefficient is state when
`algo.kl.ctrl` names a controller. The recipe gives the initial value; after each step (the after-step stage) the
controller maps (value, the step's mean of one metric) to the next value, and the trainer binds the component to
it for the next step. The values are part of every checkpoint, so a resumed run continues from them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unipo import algos
from unipo.config import Config, ConfigError, component_kwargs
from unipo.trainers.common import Algo, bound_params, build_component


@dataclass
class Slot:
    """One controlled value: where it sits in the recipe, the rule that moves it and the metric the rule reads."""

    name: str
    """`<axis>.<param>`, e.g. `regularizers[0].coef`, `kl.coef` (the key in checkpoints and `ctrl/` metrics)."""
    rule: Callable[[Any, float], Any]
    """(value, statistic) -> next value, with the controller's hyperparameters bound."""
    statistic: str
    axis: str
    index: int | None
    param: str
    per_sample: bool = False
    """The rule also takes `n_steps`, the number of samples in the step (the adaptive KL controller)."""


def slots(cfg: Config, algo: Algo) -> list[Slot]:
    """The controlled values of a recipe, in a fixed order."""
    found = []
    for axis in ("advantage", "policy_loss", "aggregation", "token_weights", "regularizers"):
        value = getattr(algo, axis)
        for index, fn in enumerate(value) if isinstance(value, list) else [(None, value)]:
            spec = algos.entry(fn.kind, fn.id).state
            if spec is None:
                continue
            params = bound_params(fn)
            rule = build_component("controller", spec.controller, {k: params[v] for k, v in spec.args})
            where = axis if index is None else f"{axis}[{index}]"
            found.append(Slot(f"{where}.{spec.param}", rule, spec.statistic, axis, index, spec.param))
    ctrl = cfg.algo.kl.ctrl
    if ctrl is not None:
        if cfg.algo.kl.coef <= 0:
            raise ConfigError("algo.kl.ctrl: a KL controller needs an initial algo.kl.coef > 0")
        try:
            rule = build_component("controller", ctrl.name, component_kwargs(ctrl))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"algo.kl.ctrl: {str(e).strip(chr(39))}") from None
        per_sample = "n_steps" in inspect.signature(algos.get("controller", ctrl.name)).parameters
        found.append(Slot("kl.coef", rule, "kl", "kl_coef", None, "coef", per_sample))
    return found


def initial(algo: Algo, found: list[Slot]) -> dict[str, Any]:
    """The recipe's starting value of each slot."""
    return {s.name: _get(algo, s) for s in found}


def bind(algo: Algo, found: list[Slot], values: dict[str, Any]) -> Algo:
    """`algo` with every controlled hyperparameter set to its current value."""
    for s in found:
        algo = _set(algo, s, values[s.name])
    return algo


def after_step(
    found: list[Slot], values: dict[str, Any], stats: dict[str, float], n_completions: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """The after-step stage: each slot's next value from the step's statistic (a slot whose metric the step did
    not produce keeps its value). Returns the new values and their `ctrl/<slot>` metrics."""
    new = dict(values)
    for s in found:
        if s.statistic not in stats:
            continue
        extra = {"n_steps": n_completions} if s.per_sample else {}
        new[s.name] = s.rule(values[s.name], stats[s.statistic], **extra)
    return new, {f"ctrl/{name}": float(v) for name, v in new.items() if v is not None}


def _get(algo: Algo, s: Slot) -> Any:
    if s.axis == "kl_coef":
        return algo.kl_coef
    fn = getattr(algo, s.axis) if s.index is None else getattr(algo, s.axis)[s.index]
    return fn.keywords.get(s.param, algos.entry(fn.kind, fn.id).params[s.param])


def _set(algo: Algo, s: Slot, value: Any) -> Algo:
    if s.axis == "kl_coef":
        return dataclasses.replace(algo, kl_coef=float(value))
    fns = getattr(algo, s.axis)
    old = fns if s.index is None else fns[s.index]
    rebound = build_component(old.kind, old.id, {**old.keywords, s.param: value})
    if s.index is None:
        return dataclasses.replace(algo, **{s.axis: rebound})
    return dataclasses.replace(algo, **{s.axis: [rebound if i == s.index else f for i, f in enumerate(fns)]})
