"""The run directory and what a run records as it goes.

A run directory holds `config.yaml` (fully resolved), `metrics.jsonl` (one JSON object per logged row, with its
`step`), `completions.jsonl` (a few sampled completions per step, with their rewards and advantages: one JSON object
per completion), `checkpoints/`, and what the loggers of `log.backends` write (`tensorboard/`, `wandb/`, `mlruns/`).
Each logger gets the same config, metric rows and completion samples; a logger whose package is missing stops the
run at start-up with one line saying what to install.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from unipo.config import Config, ConfigError, to_yaml


class RunDir:
    """The run directory: config.yaml, metrics.jsonl and completions.jsonl (appended one JSON object per row),
    checkpoints/, and the loggers (`log.backends`), opened by `prepare`."""

    def __init__(self, path: str | Path, writes: bool = True):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"
        self.completions_path = self.path / "completions.jsonl"
        self.writes = writes
        """False on ranks other than 0 of a data-parallel run: they read the directory, rank 0 writes it."""
        self.loggers: list[Logger] = []

    def prepare(self, cfg: Config) -> None:
        """Create the directory, write config.yaml and open the loggers (which receive the config)."""
        if not self.writes:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.yaml", to_yaml(cfg))
        self.loggers = open_loggers(cfg, self.path)

    def log(self, row: dict[str, Any]) -> None:
        """Append one metrics row (`step` and scalars) to metrics.jsonl and send it to every logger."""
        if not self.writes:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(_finite(row)) + "\n")
        for logger in self.loggers:
            logger.metrics(row)

    def log_completions(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Append `samples` (dicts with prompt, completion, reward, ...) of `step` to completions.jsonl and the
        loggers."""
        if not self.writes or not samples:
            return
        rows = [{"step": step, **_finite(s)} for s in samples]
        with self.completions_path.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        for logger in self.loggers:
            logger.completions(step, rows)

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def completions(self) -> list[dict[str, Any]]:
        return read_jsonl(self.completions_path)

    def truncate_metrics(self, step: int) -> None:
        """Drop metric and completion rows past `step` (written after the checkpoint a resumed run starts from)."""
        if not self.writes:
            return
        for path in (self.metrics_path, self.completions_path):
            if path.exists():
                kept = [r for r in read_jsonl(path) if r["step"] <= step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        """Flush and close the loggers."""
        for logger in self.loggers:
            logger.close()
        self.loggers = []


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, one per non-empty line ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with NaN and infinite floats as None (strict JSON, which browsers and other tools read)."""
    bad = lambda v: isinstance(v, float) and not math.isfinite(v)  # noqa: E731
    return {k: (None if bad(v) else _finite(v) if isinstance(v, dict) else v) for k, v in row.items()}


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def default_output_dir(cfg: Config) -> str:
    return str(Path("runs") / f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")


def setup_progress(items: Any, desc: str, total: int, quiet: bool = False) -> Any:
    """Iterate `items` (`total` of them) showing the progress of long set-up work: a tqdm bar on a terminal, else a
    line when it starts and one with its time when it ends (logs, CI); nothing when `quiet` (`log.progress=false`)."""
    import sys

    if quiet:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    t0 = time.perf_counter()
    print(f"{desc} ...", file=sys.stderr, flush=True)
    yield from items
    print(f"{desc}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def completion_samples(batch: Any, k: int, **columns: Any) -> list[dict[str, Any]]:
    """The first `k` completions of a rollout batch as rows for completions.jsonl: prompt, completion (a multi-turn
    episode's messages after the prompt's), tokens, truncated, and each of `columns` at that completion: a tensor
    (N,) or (N, T) (averaged over the completion's loss mask), a list, or a dict of (N,) tensors (e.g. per-function
    rewards)."""
    from unipo.rewards import text_of

    n = min(k, batch.num_completions)
    mask = batch.loss_mask[:n].float()
    out = []
    for i in range(n):
        prompt = batch.rows[int(batch.group_ids[i])]["prompt"]
        messages = batch.extras.get("messages")
        completion = batch.texts[i]
        if messages is not None:  # an episode: every message after the prompt's, each with its role
            skip = 1 if isinstance(prompt, str) else len(prompt)
            completion = "\n".join(f"[{m['role']}] {m['content']}" for m in messages[i][skip:])
        row = {"prompt": prompt if isinstance(prompt, str) else text_of(prompt), "completion": completion,
               "tokens": int(batch.completion_mask[i].sum()), "truncated": bool(batch.truncated[i])}  # fmt: skip
        for name, value in columns.items():
            row[name] = _at(value, i, mask[i])
        out.append(row)
    return out


def _at(value: Any, i: int, mask: Any) -> Any:
    if isinstance(value, dict):
        return {k: _at(v, i, mask) for k, v in value.items()}
    if isinstance(value, list):
        return value[i]
    x = value[i].float()
    if x.dim() == 1:  # a per-token column: its mean over the completion's trained tokens
        x = (x[: mask.numel()] * mask).sum() / mask.sum().clamp(min=1)
    return float(x)


class Logger(Protocol):
    """A backend that mirrors the run directory: the config once, then metric rows and completion samples."""

    def metrics(self, row: dict[str, Any]) -> None: ...

    def completions(self, step: int, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, int | float) and math.isfinite(v)}


COLUMNS = ("prompt", "completion", "reward", "advantage", "tokens", "truncated")
"""The completion columns the loggers' tables show (every key stays in completions.jsonl)."""


class TensorBoardLogger:
    """Scalars in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR`); the config and each step's completions as
    text (Markdown)."""

    def __init__(self, cfg: Config, path: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(path / "tensorboard"))
        self.writer.add_text("config", "```\n" + to_yaml(cfg) + "```", 0)

    def metrics(self, row: dict[str, Any]) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, row["step"])

    def completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", "⏎")  # noqa: E731
        body = "".join("| " + " | ".join(cell(r.get(c, "")) for c in COLUMNS) + " |\n" for r in rows)
        self.writer.add_text("completions", head + body, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run in RUN_DIR/wandb (offline by default: `wandb sync` uploads it later); completions as a
    `wandb.Table` per step."""

    def __init__(self, cfg: Config, path: Path):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb = wandb
        self.run = wandb.init(project=cfg.log.project, name=path.name, dir=str(path), mode=cfg.log.wandb_mode,
                              config=cfg.model_dump(mode="json", by_alias=True), reinit="create_new")  # fmt: skip

    def metrics(self, row: dict[str, Any]) -> None:
        self.run.log(_scalars(row), step=row["step"])

    def completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        data = [[json.dumps(r.get(c)) if isinstance(r.get(c), dict) else r.get(c) for c in COLUMNS] for r in rows]
        self.run.log({"completions": self.wandb.Table(columns=list(COLUMNS), data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    """An MLflow run (experiment `log.project`) at `log.mlflow_uri`, by default the file store RUN_DIR/mlruns: the
    flattened config as parameters, config.yaml and each step's completions (completions/step_N.json) as
    artifacts."""

    def __init__(self, cfg: Config, path: Path):
        uri = cfg.log.mlflow_uri or (path / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store behind this switch; it needs no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(cfg.log.project)
        experiment = found.experiment_id if found else self.client.create_experiment(cfg.log.project)
        self.run_id = self.client.create_run(experiment, run_name=path.name).info.run_id
        params = _flatten(cfg.model_dump(mode="json", by_alias=True))
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=items[start : start + 100])
        self.client.log_text(self.run_id, to_yaml(cfg), "config.yaml")

    def metrics(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, row["step"]) for k, v in _scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        self.client.log_dict(self.run_id, rows, f"completions/step_{step:06d}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


LOGGERS = {"tensorboard": (TensorBoardLogger, "tensorboard", "tensorboard"), "wandb": (WandbLogger, "wandb", "wandb"),
           "mlflow": (MLflowLogger, "mlflow", "mlflow-skinny")}  # fmt: skip
"""`log.backends` name -> (logger class, the module it imports, the package that provides it)."""


def check_loggers(cfg: Config) -> None:
    """Stop in one line, before any model loads, when a logger of `log.backends` is not installed."""
    import importlib.util

    for name in cfg.log.backends:
        _, module, package = LOGGERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"log.backends: {name} needs the {package} package: pip install 'unipo[loggers]' "
                              f"(or pip install {package})")  # fmt: skip


def open_loggers(cfg: Config, path: Path) -> list[Logger]:
    """The loggers of `log.backends`, each given the config."""
    return [LOGGERS[name][0](cfg, path) for name in cfg.log.backends]
