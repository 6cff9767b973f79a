"""GRPO side by side with TRL's GRPOTrainer on the same work: same model, task, batch, lengths, lr and loss.

Each framework runs in its own subprocess (so peak memory is its own), from the same converted SmolLM2 weights,
on the arithmetic task (a + b, a, b <= 50) with the task's own rewards on both sides: `final_answer` (a finished
reply whose last number is the sum; TRL's side reads truncation off the completion ids it passes, as TRL itself
does for its clipped ratio) with weight 1 and `only_number` with weight 0.2. Both are scored by the same held-out
greedy evaluation (the strict `final_answer` metric) before and after training. Prints the ratios and writes JSON
to benchmarks/results/.

    python benchmarks/grpo_vs_trl.py                  # 30 steps, 2 prompts x 8 completions x 32 tokens
    python benchmarks/grpo_vs_trl.py --steps 2 --eval 8   # a quick check

TRL 1.16's GRPOConfig turns gradient checkpointing on by default; here it is off (`--trl-gradient-checkpointing`
turns it back on; pair it with `--unipo-set model.activation_checkpointing=true`), so that both do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _common(args: argparse.Namespace) -> dict:
    return {
        "steps": args.steps, "prompts": args.prompts, "group": args.group, "max_new_tokens": args.max_new_tokens,
        "lr": args.lr, "eval": args.eval, "seed": args.seed,
        "trl_gradient_checkpointing": args.trl_gradient_checkpointing, "beta": args.beta, "unipo_set": args.unipo_set,
    }  # fmt: skip


def _heldout_accuracy(model, tokenizer, n: int) -> float:
    from unipo.data.tasks import arithmetic
    from unipo.trainers.evaluate import evaluate

    task = arithmetic()
    model.eval()
    return evaluate(model, tokenizer, task.heldout[:n], task.reward, max_new_tokens=32)["eval/accuracy"]


def run_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from unipo.data.tasks import arithmetic
    from unipo.models.loading import default_model_dir

    torch.manual_seed(args.seed)
    path = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    before = _heldout_accuracy(model, tokenizer, args.eval) if args.eval else None
    task = arithmetic()
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id, *_as_list(model.generation_config.eos_token_id)}
    funcs = [_with_truncation(fn, eos) for fn, _ in task.rewards]
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
            learning_rate=args.lr, max_steps=args.steps, per_device_train_batch_size=args.prompts * args.group,
            num_generations=args.group, max_completion_length=args.max_new_tokens, beta=args.beta, seed=args.seed,
            lr_scheduler_type="linear", temperature=1.0, gradient_checkpointing=args.trl_gradient_checkpointing,
            reward_weights=[w for _, w in task.rewards],
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=config,
            train_dataset=Dataset.from_list(task.train),
            processing_class=tokenizer,
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    after = _heldout_accuracy(trainer.model, tokenizer, args.eval) if args.eval else None
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = sum(lengths) * args.prompts * args.group  # logged every step: the batch's mean completion length
    return {"train_s": seconds, "accuracy_before": before, "accuracy_after": after, "completion_tokens": tokens}


def _as_list(ids) -> list:
    return [] if ids is None else ids if isinstance(ids, list) else [ids]


def _with_truncation(fn: Callable, eos: set) -> Callable:
    """A unipo task reward for TRL: TRL passes the completion ids (through EOS) but no truncation flag, so a
    completion is truncated when its last id is no EOS or pad (TRL's own rule for `completions/clipped_ratio`)."""

    def reward(prompts, completions, completion_ids, **kwargs):
        kwargs["truncated"] = [not ids or ids[-1] not in eos for ids in completion_ids]
        return fn(prompts, completions, completion_ids=completion_ids, **kwargs)

    reward.__name__ = fn.__name__
    return reward


def run_child(fn: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> None:
    """In a framework's own process: run it on every core, add its peak RSS, print the result for the parent."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    result = fn(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_children(script: str, argv: list[str]) -> dict[str, dict]:
    """Run `script argv --only NAME` for TRL, then unipo, each in its own process (so peak memory is its own)."""
    results = {}
    for name in ("trl", "unipo"):
        proc = subprocess.run([sys.executable, script, *argv, "--only", name], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
        results[name] = json.loads(line.removeprefix("RESULT "))
        print(f"{name}: {results[name]}", flush=True)
    return results


def run_unipo(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unipo import config
    from unipo.trainers import checkpoint, rl

    with tempfile.TemporaryDirectory() as out:
        cfg = config.load(
            "grpo",
            [
                f"output_dir={out}", f"train.max_steps={args.steps}", f"train.prompts_per_step={args.prompts}",
                f"rollout.group_size={args.group}", f"rollout.max_new_tokens={args.max_new_tokens}",
                f"train.lr={args.lr}", f"train.seed={args.seed}", "eval.num_problems=0", "train.lr_schedule=linear",
                # TRL 1.16's default loss_type="dapo" is a global token mean
                "algo.aggregation.name=token_mean", f"algo.kl.coef={args.beta}", *args.unipo_set,
            ],
        )  # fmt: skip
        from unipo.models.loading import default_model_dir

        base = default_model_dir()
        if args.eval:
            tokenizer = AutoTokenizer.from_pretrained(base)
            before = _heldout_accuracy(
                AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tokenizer, args.eval
            )
        start = time.perf_counter()
        rl.train(cfg)
        seconds = time.perf_counter() - start
        final = checkpoint.list_checkpoints(Path(out) / "checkpoints")[-1]
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        after = None
        if args.eval:
            model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
            after = _heldout_accuracy(model, AutoTokenizer.from_pretrained(final), args.eval)
    steps = [r for r in rows if "loss" in r]
    return {
        "train_s": seconds,
        "accuracy_before": before if args.eval else None,
        "accuracy_after": after,
        "step_s_mean": sum(r["time/step_s"] for r in steps) / len(steps),
        "completion_tokens": sum(r["tokens/completion_mean"] for r in steps) * args.prompts * args.group,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--eval", type=int, default=100, help="held-out problems scored before and after (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl-gradient-checkpointing", action="store_true",
                   help="TRL's own default (recomputes activations in backward); off by default, as unipo's "
                   "model.activation_checkpointing is, so both do the same work")  # fmt: skip
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient to the initial model on both sides (TRL's "
                   "beta, unipo's algo.kl.coef; k3 on both); > 0 loads a reference model")  # fmt: skip
    p.add_argument("--unipo-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra unipo override, e.g. rollout.max_staleness=1 (repeatable)")  # fmt: skip
    p.add_argument("--only", choices=["unipo", "trl"], help="run one framework in this process (internal)")
    p.add_argument("--out", default="benchmarks/results/grpo_vs_trl.json")
    args = p.parse_args()
    if args.only:
        run_child(run_trl if args.only == "trl" else run_unipo, args)
        return
    results = run_children(__file__, sys.argv[1:])
    t, u = results["trl"], results["unipo"]
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "settings": _common(args),
        "results": results,
        "speedup_train_time": t["train_s"] / u["train_s"],
        "memory_ratio_trl_over_unipo": t["peak_rss_mb"] / u["peak_rss_mb"],
        # time per completion token: the two runs sample different lengths (both count through the EOS token)
        "time_per_token_ratio_unipo_over_trl": (u["train_s"] / u["completion_tokens"])
        / (t["train_s"] / t["completion_tokens"]),
    }
    speed, mem = summary["speedup_train_time"], summary["memory_ratio_trl_over_unipo"]
    print(f"train time: TRL {t['train_s']:.0f} s, unipo {u['train_s']:.0f} s -> unipo is {speed:.2f}x faster")
    print(f"per completion token: TRL {1e3 * t['train_s'] / t['completion_tokens']:.0f} ms, unipo "
          f"{1e3 * u['train_s'] / u['completion_tokens']:.0f} ms -> unipo/TRL "
          f"{summary['time_per_token_ratio_unipo_over_trl']:.2f}")  # fmt: skip
    print(f"peak RSS: TRL {t['peak_rss_mb']:.0f} MB, unipo {u['peak_rss_mb']:.0f} MB -> TRL/unipo {mem:.2f}")
    if args.eval:
        print(f"held-out accuracy: TRL {t['accuracy_before']:.2f} -> {t['accuracy_after']:.2f}, "
              f"unipo {u['accuracy_before']:.2f} -> {u['accuracy_after']:.2f}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
