"""Loading a config: a YAML recipe plus dotted `key=value` overrides, validated against the schema.

Component hyperparameters (`algo.<axis>.*`) are checked against the registered function's signature, so a typo names
the key and lists what is allowed.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from unipo.config.schema import AXES, LIST_AXES, AlgoConfig, ComponentConfig, Config, ConfigError


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (`grpo`) -> the YAML shipped in `unipo/recipes`; a path is returned as is."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.exists():
            raise ConfigError(f"recipe file {name_or_path} does not exist")
        return path
    path = Path(str(importlib.resources.files("unipo") / "recipes" / f"{name_or_path}.yaml"))
    if not path.exists():
        raise ConfigError(f"unknown recipe {name_or_path!r}; available: {', '.join(list_recipes())}")
    return path


def list_recipes() -> list[str]:
    """Names of the recipes shipped inside the package."""
    folder = Path(str(importlib.resources.files("unipo") / "recipes"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-5", "algo.policy_loss.clip_high=0.28"]` -> a nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-5)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {part} is set to a value and also used as a section")
            node = nxt
        node[parts[-1]] = value
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(recipe: str | None = None, overrides: list[str] | None = None, extra: dict[str, Any] | None = None) -> Config:
    """Load a recipe (name or YAML path; default `grpo`), apply dotted overrides (`key=value` strings), then the
    nested dict `extra` (the Python API's values), and validate everything."""
    path = recipe_path(recipe or "grpo")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of config keys")
    data.setdefault("recipe", path.stem)
    extra = merge(parse_overrides(overrides or []), extra or {})
    _drop_params_of_replaced_components(data, extra)
    merged = merge(data, extra)
    if merged.get("trainer") != "staged":  # a stage sets its own task's budget
        _task_token_budget(merged)
    return from_dict(merged)


def _task_token_budget(data: dict[str, Any]) -> None:
    """A built-in task's token budget (code and word problems need more than arithmetic's 32) for generation and
    evaluation, where neither the recipe nor the command line sets one."""
    from unipo.data.tasks import builtin_tasks

    task = builtin_tasks().get(str(data.get("task", Config.model_fields["task"].default)))
    for section in ("rollout", "eval"):
        if task is not None and isinstance(data.setdefault(section, {}), dict):
            data[section].setdefault("max_new_tokens", task[1])


def _drop_params_of_replaced_components(data: dict[str, Any], extra: dict[str, Any]) -> None:
    """`algo.advantage.name=dr_grpo` on a recipe that sets `grpo` with `scale: group`: the recipe's hyperparameters
    belonged to the old component, so they go (declared fields such as `kl.coef` stay)."""
    recipe_algo, new_algo = data.get("algo") or {}, extra.get("algo") or {}
    for axis, node in new_algo.items():
        old = recipe_algo.get(axis)
        if isinstance(node, dict) and isinstance(old, dict) and "name" in node and node["name"] != old.get("name"):
            field = AlgoConfig.model_fields.get(axis)
            model = field.annotation if field is not None else None  # `X | None` (sampler, critic): no extra fields
            declared = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
            recipe_algo[axis] = {k: v for k, v in old.items() if k in declared and k != "name"}


def from_dict(data: dict[str, Any]) -> Config:
    """Validate a plain dict into a Config, turning pydantic's errors into one ConfigError line per problem."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None
    check_components(cfg)
    return cfg


def _format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            allowed = sorted(_fields_at(parent))
            lines.append(f"unknown key {key}; allowed here: {', '.join(allowed)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg} (got {err.get('input')!r})")
    return "; ".join(lines)


def _fields_at(loc: tuple) -> set[str]:
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return set()
        model = field.annotation
    return {f.alias or n for n, f in model.model_fields.items()}


def check_components(cfg: Config) -> None:
    """Each `algo.<axis>.name` must be registered and every extra key must be one of its hyperparameters."""
    from unipo import algos

    nodes = [(f"algo.{axis}", kind, getattr(cfg.algo, axis)) for axis, kind in AXES.items()]
    nodes.append(("algo.preference", "preference", cfg.algo.preference))
    nodes.append(("algo.online", "online", cfg.algo.online))
    for axis in ("sampler", "critic", "adv_post"):
        if getattr(cfg.algo, axis) is not None:
            nodes.append((f"algo.{axis}", axis, getattr(cfg.algo, axis)))
    if cfg.algo.ref_sync is not None:
        nodes.append(("algo.ref_sync", "controller", cfg.algo.ref_sync))
    if cfg.algo.critic is not None and "advantage" in cfg.algo.model_fields_set:
        raise ConfigError(
            "algo.advantage: a recipe with algo.critic gets its advantages from the critic; remove algo.advantage"
        )
    for axis, kind in LIST_AXES.items():
        nodes += [(f"algo.{axis}[{i}]", kind, node) for i, node in enumerate(getattr(cfg.algo, axis))]
    for where, kind, node in nodes:
        try:  # an alias (e.g. `robust`) resolves to its component
            params = algos.entry(kind, node.name).params
        except KeyError:
            known = ", ".join(algos.names(kind))
            raise ConfigError(f"{where}.name: unknown {kind} {node.name!r}; registered: {known}") from None
        for key, value in (node.model_extra or {}).items():
            if key not in params:
                allowed = ", ".join(sorted(params)) or "(none)"
                raise ConfigError(f"unknown key {where}.{key} for {kind} {node.name!r}; allowed: {allowed}")
            default = params[key]
            if not _same_kind(default, value):
                raise ConfigError(
                    f"{where}.{key}: expected {type(default).__name__} like the default {default!r}, got {value!r}"
                )
    sync = cfg.algo.ref_sync
    if sync is not None and "reference_sync" not in algos.entry("controller", sync.name).facts:
        movers = [n for n in algos.names("controller") if "reference_sync" in algos.entry("controller", n).facts]
        raise ConfigError(f"algo.ref_sync.name: {sync.name!r} does not move the reference; use {', '.join(movers)}")


def _same_kind(default: object, value: object) -> bool:
    from unipo.algos.registry import REQUIRED

    if default is None or default is REQUIRED:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):  # YAML has lists only
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def component_kwargs(node: ComponentConfig) -> dict[str, Any]:
    """The hyperparameters set on an `algo.<axis>` node (its undeclared keys: not `name`, not `coef`)."""
    return dict(node.model_extra or {})


def to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (what `config.yaml` in a run directory holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
