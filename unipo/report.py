"""`unipo report RUN_DIR` and `unipo compare RUN_DIR...`: plots and one self-contained HTML page from a run directory.

The report reads only the run directory (config.yaml, metrics.jsonl, completions.jsonl), so it works on a finished
run, a running one and one copied from another machine. Every metric a run logged is drawn: the named panels first
(reward, held-out evaluation, loss, KL, entropy, clipping, lengths, the time split of a step), then one panel per
remaining prefix (`sampler/`, `critic/`, `ctrl/`, `env/`, ...), so whatever a sampler, critic or controller logs
shows up without a change here.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipo.config import ConfigError
from unipo.run import read_jsonl


@dataclass
class Panel:
    """One plot: its title, file name and the metric keys it draws (`stacked`: a stack of the keys, e.g. the time of
    each phase of a step)."""

    title: str
    slug: str
    keys: list[str]
    stacked: bool = False


NAMED: list[tuple[str, str, Callable[[str], bool]]] = [
    ("Reward (mean, spread, and each reward function)", "reward",
     lambda k: k.startswith("reward/") and not k.startswith("reward/errors")),
    ("Reward function errors (share of the batch)", "reward-errors", lambda k: k.startswith("reward/errors")),
    ("Held-out evaluation", "eval", lambda k: k.startswith("eval/")),
    ("Loss", "loss", lambda k: k == "loss" or k.startswith("loss/")),
    ("KL to the reference", "kl", lambda k: k == "kl" or k.startswith("kl/")),
    ("Entropy", "entropy", lambda k: k == "entropy" or k.startswith("entropy/")),
    ("Clipping and ratios", "clip", lambda k: k == "clip_frac" or k.startswith(("clip/", "ratio/"))),
    ("Completion length (tokens)", "lengths", lambda k: k.startswith("tokens/") and not k.endswith("_frac")),
    ("Truncated and trained shares", "truncation", lambda k: k.startswith("tokens/") and k.endswith("_frac")),
    ("Gradient norm (before clipping)", "grad-norm", lambda k: k == "grad_norm"),
    ("Learning rate", "lr", lambda k: k == "lr"),
]  # fmt: skip
"""The named panels, in order: (title, file name, which keys)."""

TIME_TOTAL = ("time/step_s", "time/eval_s")
"""Time keys that are not a phase of a step (the step's total; evaluation, logged on its own rows)."""


def panels(keys: set[str]) -> list[Panel]:
    """The panels for a run that logged `keys`: the named ones that have data, the time split, then one per other
    prefix (a key without a slash alone)."""
    left = set(keys) - {"step"}
    out = []
    for title, slug, wanted in NAMED:
        mine = sorted(k for k in left if wanted(k))
        if mine:
            out.append(Panel(title, slug, mine))
            left -= set(mine)
    phases = sorted(k for k in left if k.startswith("time/") and k not in TIME_TOTAL)
    if phases:
        out.append(Panel("Time split of a step (seconds per phase)", "time", phases, stacked=True))
    left -= {k for k in left if k.startswith("time/")}
    for prefix in sorted({k.split("/")[0] for k in left}):
        mine = sorted(k for k in left if k.split("/")[0] == prefix)
        out.append(Panel(prefix, prefix.replace("_", "-"), mine))
    return out


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    return plt


def draw(panel: Panel, rows: list[dict[str, Any]]) -> bytes:
    """The panel as a PNG: one line per key against the step (points where a key is logged rarely, e.g. evaluation),
    or a stack of the keys."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if panel.stacked:
        by_step = {r["step"]: r for r in rows if any(k in r for k in panel.keys)}
        steps = sorted(by_step)
        ys = [[float(by_step[s].get(k) or 0.0) for s in steps] for k in panel.keys]
        ax.stackplot(steps, ys, labels=[k.removeprefix("time/").removesuffix("_s") for k in panel.keys], alpha=0.8)
    else:
        for key in panel.keys:
            x, y = _series(rows, key)
            ax.plot(x, y, marker="o" if len(x) <= 12 else None, markersize=4, label=key)
    _axes(ax, panel.title)
    if len(panel.keys) > 1 or panel.stacked:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _axes(ax: Any, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


@dataclass
class RunData:
    """What the report reads from a run directory."""

    path: Path
    config: str
    rows: list[dict[str, Any]]
    completions: list[dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> RunData:
        path = Path(path)
        if not (path / "metrics.jsonl").exists():
            raise ConfigError(f"{path} is not a run directory (no metrics.jsonl); give the output_dir of a run")
        try:
            rows = read_jsonl(path / "metrics.jsonl")
            completions = read_jsonl(path / "completions.jsonl")
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: a line of metrics.jsonl or completions.jsonl is not JSON ({e})") from None
        config = (path / "config.yaml").read_text() if (path / "config.yaml").exists() else ""
        return cls(path, config, rows, completions)

    def summary(self) -> dict[str, Any]:
        """Steps, held-out accuracy before, after and best, the last step's reward, training time and tokens/s."""
        train = [r for r in self.rows if "time/step_s" in r]
        acc = _series(self.rows, "eval/accuracy")[1]
        reward_key = next((k for k in ("reward/mean", "reward/task_mean", "rewards/margins") if train and k in
                           train[-1]), None)  # fmt: skip
        seconds = sum(r["time/step_s"] for r in train)
        size = _batch_size(self.config)
        tokens = sum(r.get("tokens/completion_mean", 0.0) * size for r in train)
        return {
            "steps": max((r["step"] for r in train), default=0),
            "accuracy_before": acc[0] if acc else None,
            "accuracy_after": acc[-1] if acc else None,
            "accuracy_best": max(acc) if acc else None,
            "reward": train[-1][reward_key] if reward_key else None,
            "reward_key": reward_key,
            "train_s": seconds,
            "tokens_per_s": tokens / seconds if seconds and tokens else None,
        }


def _batch_size(config: str) -> int:
    """Completions per step (prompts_per_step × group_size) from config.yaml's text."""
    import yaml

    cfg = yaml.safe_load(config) or {}
    return cfg.get("train", {}).get("prompts_per_step", 1) * cfg.get("rollout", {}).get("group_size", 1)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the plots (PNG) and index.html into `out` (default RUN_DIR/report); returns the HTML page's path."""
    run = RunData.load(run_dir)
    out = Path(out) if out else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for panel in panels({k for r in run.rows for k in r}):
        png = draw(panel, run.rows)
        (out / f"{panel.slug}.png").write_bytes(png)
        images.append((panel, png))
    page = out / "index.html"
    page.write_text(render(run, images))
    return page


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


FIRST = ("step", "prompt", "completion", "reward", "advantage")
"""The completions table's first columns; every other key a run stored follows."""


def completions_table(completions: list[dict[str, Any]]) -> str:
    """The completions as an HTML table (text escaped), the first columns fixed, the others as a run stored them."""
    keys = [k for k in FIRST if any(k in c for c in completions)]
    keys += sorted({k for c in completions for k in c} - set(keys))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f'<td class="{html.escape(k)}">{html.escape(_fmt(c.get(k)))}</td>' for k in keys) + "</tr>\n"
        for c in completions
    )
    return f'<table id="completions"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def render(run: RunData, images: list[tuple[Panel, bytes]]) -> str:
    """The self-contained page: summary, plots (inline PNG), the searchable completions table, the config."""
    s = run.summary()
    facts = [("steps", s["steps"]), ("held-out accuracy before", s["accuracy_before"]),
             ("held-out accuracy after", s["accuracy_after"]), ("best held-out accuracy", s["accuracy_best"]),
             (f"last {s['reward_key'] or 'reward'}", s["reward"]), ("training time (s)", s["train_s"]),
             ("completion tokens / s", s["tokens_per_s"])]  # fmt: skip
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in facts)
    plots = "".join(
        f'<figure><img class="plot" alt="{html.escape(p.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"></figure>\n'
        for p, png in images
    )
    return PAGE.format(
        title=html.escape(f"unipo report: {run.path.name}"),
        summary=summary,
        plots=plots or "<p>No metrics logged yet.</p>",
        count=len(run.completions),
        table=completions_table(run.completions) if run.completions else "<p>No completions stored.</p>",
        config=html.escape(run.config),
    )


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
#summary th {{ text-align: left; padding-right: 1em; font-weight: normal; color: #555; }}
#plots {{ display: flex; flex-wrap: wrap; gap: 0.5em; }}
figure {{ margin: 0; }}
img.plot {{ width: 480px; }}
#completions {{ border-collapse: collapse; font-size: 0.85em; width: 100%; }}
#completions th, #completions td {{ border: 1px solid #ccc; padding: 0.3em; vertical-align: top; text-align: left; }}
#completions td.prompt, #completions td.completion {{ white-space: pre-wrap; font-family: monospace; max-width: 40em; }}
#search {{ width: 30em; padding: 0.3em; margin-bottom: 0.5em; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }}
</style></head>
<body>
<h1>{title}</h1>
<table id="summary">{summary}</table>
<h2>Curves</h2>
<div id="plots">
{plots}</div>
<h2>Sampled completions (<span id="shown">{count}</span> of {count})</h2>
<input id="search" type="search" placeholder="filter: text in any column (prompt, completion, step, ...)">
{table}
<h2>Resolved config</h2>
<pre id="config">{config}</pre>
<script>
"use strict";
const search = document.getElementById("search");
const rows = Array.from(document.querySelectorAll("#completions tbody tr"));
function filterRows() {{
  const needle = search.value.toLowerCase();
  let shown = 0;
  for (const row of rows) {{
    const hit = row.textContent.toLowerCase().includes(needle);
    row.style.display = hit ? "" : "none";
    shown += hit ? 1 : 0;
  }}
  document.getElementById("shown").textContent = String(shown);
}}
search.addEventListener("input", filterRows);
const params = new URLSearchParams(window.location.search);
if (params.has("q")) {{ search.value = params.get("q"); filterRows(); }}
window.addEventListener("load", () => {{  // after every image has loaded (or failed)
  const decoded = Array.from(document.images).filter(img => img.complete && img.naturalWidth > 0);
  document.body.dataset.plotsLoaded = String(decoded.length);
  document.body.dataset.rowsShown = document.getElementById("shown").textContent;
}});
</script>
</body></html>
"""


COMPARED = (
    "reward/mean",
    "reward/task_mean",
    "rewards/margins",
    "eval/accuracy",
    "loss",
    "kl",
    "entropy",
    "tokens/completion_mean",
)
"""The curves `unipo compare` overlays (those that some run logged)."""


def compare(run_dirs: list[str | Path], out: str | Path = "compare.png") -> tuple[str, Path]:
    """Overlay the main curves of several runs in one PNG (`out`) and return a summary table (final and best held-out
    accuracy, last reward, training time, tokens/s) as text, with the PNG's path."""
    runs = [RunData.load(p) for p in run_dirs]
    names = [r.path.name for r in runs]
    keys = [k for k in COMPARED if any(k in row for r in runs for row in r.rows)]
    plt = _pyplot()
    cols = min(3, max(1, len(keys)))
    rows_n = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.4 * rows_n), dpi=100, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for run, name in zip(runs, names, strict=True):
            x, y = _series(run.rows, key)
            ax.plot(x, y, marker="o" if len(x) <= 12 else None, markersize=4, label=name)
        _axes(ax, key)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    header = ["run", "steps", "acc before", "acc after", "best acc", "last reward", "train s", "tokens/s"]
    table = [header]
    for run, name in zip(runs, names, strict=True):
        s = run.summary()
        table.append([name, s["steps"], s["accuracy_before"], s["accuracy_after"], s["accuracy_best"], s["reward"],
                      s["train_s"], s["tokens_per_s"]])  # fmt: skip
    cells = [[_fmt(v) for v in row] for row in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    return text, out
