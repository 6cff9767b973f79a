"""Train several recipes on the same task and budget and compare them: a table and a reward-curve plot.

    python benchmarks/recipes_compare.py                         # tiny model, toy task `lucky7`, a dozen recipes
    python benchmarks/recipes_compare.py --recipes all           # every shipped recipe
    python benchmarks/recipes_compare.py --smollm --steps 40     # SmolLM2-135M-Instruct on `arithmetic`

Every recipe gets the same model, task, reward, seed, steps, prompts, group size, lengths and learning rate; only
the components differ, plus what a recipe sets itself (`ppo_epochs: 2` for cispo, bapo, rec, opmd, mdpo; one
completion per prompt for flash_reinforce, pairs for p3o). Writes `<out>/table.md`, `<out>/curves.png`
and `<out>/results.json`. A single seed on a toy task shows how methods differ, not which is best.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT = "grpo dr_grpo dapo lite_ppo rloo reinforce_pp_baseline gspo cispo sapo gmpo gpg opo".split()


def run_recipe(name: str, args: argparse.Namespace, model_path: str, out: Path) -> dict:
    from unipo import config
    from unipo.trainers import rl

    run = out / name
    overrides = [
        f"model.path={model_path}", f"task={args.task}", f"output_dir={run}", f"train.max_steps={args.steps}",
        f"train.seed={args.seed}", f"train.lr={args.lr}", f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"train.prompts_per_step={args.prompts}",
        f"eval.num_problems={args.eval}", "train.lr_schedule=constant",
    ]  # fmt: skip
    if config.load(name).rewards:  # a recipe's own rewards fit its own task; here every recipe scores the same task
        overrides.append("rewards=[]")
    cfg = config.load(name, overrides)
    start = time.perf_counter()
    rl.train(cfg)
    seconds = time.perf_counter() - start
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    tail = steps[-max(1, len(steps) // 5) :]
    return {
        "recipe": name,
        "paper": cfg.paper,
        "rewards": [r["reward/mean"] for r in steps],
        "final_reward": sum(r["reward/mean"] for r in tail) / len(tail),
        "accuracy_before": evals[0]["eval/accuracy"] if evals else None,
        "accuracy_after": evals[-1]["eval/accuracy"] if len(evals) > 1 else None,
        "seconds": seconds,
        "step_s": sum(r["time/step_s"] for r in steps) / len(steps),
    }


def write_outputs(results: list[dict], args: argparse.Namespace, out: Path) -> None:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores: task `{args.task}`, {args.steps} steps, "
        f"{args.prompts} prompts x {args.group} completions x {args.max_new_tokens} tokens, lr {args.lr}, "
        f"seed {args.seed}. Recipes keep their own `train:`/`rollout:` settings (ppo_epochs 2 for cispo, bapo, rec, "
        "opmd, mdpo), which is most of the spread on this toy task; one seed shows how methods differ, not which "
        "is best.\n",
        "| recipe | mean reward, last 20% of steps | held-out accuracy before -> after | s/step |",
        "|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: -r["final_reward"]):
        acc = "n/a" if r["accuracy_after"] is None else f"{r['accuracy_before']:.2f} -> {r['accuracy_after']:.2f}"
        lines.append(f"| `{r['recipe']}` | {r['final_reward']:.3f} | {acc} | {r['step_s']:.2f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for r in results:
        window = max(1, args.steps // 10)
        smooth = [sum(r["rewards"][max(0, i - window + 1) : i + 1]) / len(r["rewards"][max(0, i - window + 1) : i + 1])
                  for i in range(len(r["rewards"]))]  # fmt: skip
        ax.plot(range(1, len(smooth) + 1), smooth, label=r["recipe"])
    ax.set_xlabel("step")
    ax.set_ylabel(f"mean reward (moving average over {max(1, args.steps // 10)} steps)")
    ax.set_title(f"unipo recipes on {args.task}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    print("\n".join(lines))
    print(f"wrote {out}/table.md, curves.png, results.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(DEFAULT), help="comma-separated recipe names, or `all`")
    p.add_argument("--smollm", action="store_true", help="SmolLM2-135M-Instruct on `arithmetic` instead of tiny")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/recipes_compare")
    args = p.parse_args()
    from unipo import config

    names = config.list_recipes() if args.recipes == "all" else args.recipes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if args.smollm:
            model_path, args.task, args.eval = "default", "arithmetic", 100
            args.steps, args.lr = args.steps or 40, args.lr or 3e-5
            args.max_new_tokens = args.max_new_tokens or 32
        else:
            from unipo.models.tiny import build_tiny_model

            model_path, args.task, args.eval = str(build_tiny_model(Path(tmp) / "tiny")), "lucky7", 16
            args.steps, args.lr = args.steps or 30, args.lr or 3e-3
            args.max_new_tokens = args.max_new_tokens or 8
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for name in names:
            print(f"== {name}", flush=True)
            results.append(run_recipe(name, args, model_path, Path(tmp) / "runs"))
    write_outputs(results, args, out)


if __name__ == "__main__":
    main()
