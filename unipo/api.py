"""The Python API: `unipo.train(...) -> Run`, the same runs as `unipo train`, driven from a script or a notebook.

    import unipo
    run = unipo.train("grpo", model="path/or/hub-id", dataset=my_dataset, rewards=[my_fn], train={"max_steps": 50})
    run.metrics                      # the logged rows (a pandas DataFrame when pandas is installed)
    run.evaluate(task="arithmetic")  # held-out accuracy of the trained model
    model, tokenizer = run.load()

Everything the command line accepts is accepted here (a recipe name or YAML path, nested dicts or dotted keys), plus
Python objects: a model object with its tokenizer, a `datasets.Dataset` or a list of dicts, and plain callables as
reward functions or judges. Objects are turned into what the config names, so the run directory stays the record of
the run: a model object is saved to RUN_DIR/base_model, a dataset to RUN_DIR/data, and a callable is published as
`unipo.live.<name>` (a dotted path that resolves in this process; to resume from the command line, give the function
a module and pass its dotted path instead). No training logic lives here: the trainers do the work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unipo import live
from unipo.config import Config, ConfigError, load
from unipo.config.loading import merge as _merge
from unipo.config.loading import parse_overrides
from unipo.run import default_output_dir, read_jsonl


def train(
    recipe: str = "grpo",
    *,
    model: Any = None,
    tokenizer: Any = None,
    dataset: Any = None,
    eval_dataset: Any = None,
    rewards: Sequence[Any] | None = None,
    judge: Callable[[Any, str, str], float] | str | None = None,
    output_dir: str | Path | None = None,
    overrides: dict[str, Any] | Sequence[str] | None = None,
    **sections: Any,
) -> Run:
    """Train with `recipe` and return the finished run.

    Args:
        recipe: a recipe name (`unipo list recipes`) or a YAML file.
        model: a model directory or hub id, or a loaded causal LM (then `tokenizer` too); default: the default model.
        tokenizer: the tokenizer of a model object.
        dataset: a task name or data file, a `datasets.Dataset`, or a list of dicts (RL: `prompt` and `answer`
            columns unless `data.prompt_field`/`data.answer_field` say otherwise; preference: `prompt`, `chosen`,
            `rejected`).
        eval_dataset: held-out rows in the same forms (default: a share of `dataset`, `data.eval_frac`).
        rewards: reward functions, each a callable `fn(prompts, completions, **columns) -> list[float | None]`, a
            built-in name, a dotted path, a `(callable or name, weight)` pair, or a dict as in a recipe's `rewards`.
        judge: a pairwise judge `judge(prompt, a, b) -> P(a ≻ b)` for the online preference trainer (sets
            `online.oracle=judge`), or its dotted path.
        output_dir: the run directory (default runs/<recipe>-<time>); an existing run directory resumes.
        overrides: dotted keys (`{"train.lr": 1e-5}` or `["train.lr=1e-5"]`) or a nested dict.
        **sections: config sections as nested dicts (`train={"max_steps": 50}`, `algo={"kl": {"coef": 0.04}}`).

    Returns:
        The `Run`, whose directory holds config.yaml, metrics.jsonl, completions.jsonl and checkpoints/.
    """
    extra = _nested(overrides)
    for key, value in sections.items():
        extra = _merge(extra, {key: value})
    if output_dir is not None:
        extra["output_dir"] = str(output_dir)
    cfg = load(recipe, extra=extra)  # validated once without the objects: a bad key fails before anything is written
    if (model is not None and not isinstance(model, str | Path)) or dataset is not None or eval_dataset is not None:
        # objects are written into the run directory, so it is named here (else the trainer names it, on rank 0)
        extra["output_dir"] = cfg.output_dir or default_output_dir(cfg)
    out = Path(extra.get("output_dir", "."))  # used only when an object is written, and then it is set
    if model is not None:
        extra["model"] = {**extra.get("model", {}), "path": _model_path(model, tokenizer, out)}
    if dataset is not None or eval_dataset is not None:
        extra = _merge(extra, _data(cfg, dataset, eval_dataset, out))
    if rewards is not None:
        extra["rewards"] = [_reward(r, i) for i, r in enumerate(rewards)]
    if judge is not None:
        path = judge if isinstance(judge, str) else _publish(judge, "judge")
        extra["online"] = {**extra.get("online", {}), "oracle": "judge", "judge": path}
    return Run(run_config(load(recipe, extra=extra)))


def run_config(cfg: Config) -> Path:
    """Run the trainer `cfg.trainer` names; returns the run directory (what `unipo train` does)."""
    if cfg.trainer == "preference":
        from unipo.trainers import preference as trainer
    elif cfg.trainer == "online_preference":
        from unipo.trainers import online_preference as trainer
    elif cfg.trainer == "staged":
        from unipo.trainers import staged as trainer
    else:
        from unipo.trainers import rl as trainer
    return Path(trainer.train(cfg))


class Run:
    """A run directory seen from Python: its metrics and completions, evaluation, the trained model, the report."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def metrics(self) -> Any:
        """The rows of metrics.jsonl (training steps and evaluations, each with its `step`): a pandas DataFrame when
        pandas is installed, else a list of dicts."""
        rows = read_jsonl(self.path / "metrics.jsonl")
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)

    @property
    def completions(self) -> list[dict[str, Any]]:
        """The sampled completions stored each step (completions.jsonl) with their rewards and advantages."""
        return read_jsonl(self.path / "completions.jsonl")

    def evaluate(
        self, task: str | None = None, *, num_problems: int = 100, k: int = 1, max_new_tokens: int | None = None
    ) -> dict[str, Any]:
        """Greedy held-out accuracy (and pass@k for k > 1) of the latest checkpoint on `task` (default: the run's
        own), as `unipo eval` computes it: {"task", "problems", "eval/accuracy", ...}."""
        from unipo.trainers.evaluate import scores

        (row,) = scores([str(self.path)], [task] if task else None, k=k, num_problems=num_problems,
                        max_new_tokens=max_new_tokens)  # fmt: skip
        return {key: value for key, value in row.items() if key != "model"}

    def load(self, device: str = "cpu") -> tuple[Any, Any]:
        """(model, tokenizer) of the latest verified checkpoint (a LoRA run's adapters on their base)."""
        from unipo.models.loading import load_model_and_tokenizer
        from unipo.trainers.evaluate import resolve_target

        path, _ = resolve_target(str(self.path))
        return load_model_and_tokenizer(path, device=device)

    def report(self, out: str | Path | None = None) -> Path:
        """Write the plots and the HTML page (`unipo report`); returns the page's path."""
        from unipo.report import write_report

        return write_report(self.path, out)


def _nested(overrides: dict[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """Dotted keys (`{"train.lr": 1e-5}`, `["train.lr=1e-5"]`) or a nested dict -> one nested dict."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        return parse_overrides(list(overrides))
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        for part in reversed(key.split(".")):
            value = {part: value}
        out = _merge(out, value)
    return out


def _model_path(model: Any, tokenizer: Any, out: Path) -> str:
    """A path or hub id as given; a model object saved (with its tokenizer) to RUN_DIR/base_model, once."""
    if isinstance(model, str | Path):
        return str(model)
    if tokenizer is None:
        raise ConfigError("model: a model object needs its tokenizer (tokenizer=...)")
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(f"model: {type(model).__name__} is neither a path nor a transformers model")
    target = out / "base_model"
    if not (target / "config.json").exists():
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return str(target)


def _data(cfg: Config, dataset: Any, eval_dataset: Any, out: Path) -> dict[str, Any]:
    """The config keys that point the trainer at `dataset` and `eval_dataset` (objects written to RUN_DIR/data)."""
    train_path = None if dataset is None else _data_path(dataset, out / "data", "train")
    eval_path = None if eval_dataset is None else _data_path(eval_dataset, out / "data", "eval")
    data: dict[str, Any] = {"eval_path": eval_path} if eval_path else {}
    if cfg.trainer in ("preference", "staged"):  # a staged recipe's stages read `data.path` (mpo_mixed)
        return {"data": {**data, **({"path": train_path} if train_path else {})}}
    return {"data": data, **({"task": train_path} if train_path else {})}


def _data_path(data: Any, folder: Path, name: str) -> str:
    """A task name or data path as given; a `datasets.Dataset` saved with `save_to_disk`; a list of dicts as JSONL."""
    if isinstance(data, str | Path):
        return str(data)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(data, "save_to_disk"):
        data.save_to_disk(str(folder / name))
        return str(folder / name)
    rows = list(data)
    if not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"dataset: expected a datasets.Dataset or a list of dicts, got {type(data).__name__}")
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _publish(fn: Callable, fallback: str) -> str:
    """`fn` as `unipo.live.<its name>` (`fallback` for a lambda or a callable object); its dotted path."""
    name = getattr(fn, "__name__", "")
    return live.publish(fn, name if re.fullmatch(r"\w+", name) else fallback)


def _reward(spec: Any, i: int) -> dict[str, Any]:
    """A `rewards` entry of the config from a callable, a name or dotted path, a (spec, weight) pair or a dict."""
    weight = 1.0
    if isinstance(spec, tuple):
        spec, weight = spec
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, str):
        from unipo.rewards import BUILTIN

        return {"name" if spec in BUILTIN else "_component_": spec, "weight": weight}
    if callable(spec):
        return {"_component_": _publish(spec, f"reward_{i}"), "weight": weight}
    raise ConfigError(f"rewards[{i}]: expected a callable, a name, a dotted path or a dict, got {type(spec).__name__}")
