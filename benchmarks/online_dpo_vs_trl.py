"""Online DPO side by side with TRL's OnlineDPOTrainer on the same work: same model, prompts, lengths, lr and loss.

Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv:2402.04792): per
prompt, sample 2 completions from the current policy, let the judge pick y_w and y_l, and minimise
ℓ = −log σ(β·[log(π_θ/π_ref)(y_w) − log(π_θ/π_ref)(y_l)]), β = 0.1, π_ref the frozen initial model.

- TRL 1.16: `trl.experimental.online_dpo.OnlineDPOTrainer` with `reward_funcs=contains_answer`; the completion with
  the higher reward is y_w.
- unipo: the `online_dpo` recipe (XPO with its exploration coefficient α = 0, which samples nothing extra) with
  `rollout.group_size=2`, judged by `online.oracle=task`: the same `contains_answer` as a Bradley-Terry judge,
  P(a ≻ b) = σ((r_a − r_b)/0.1).

Both load the same float32 weights, take the same prompts in the same order (unipo's shuffled stream of the
arithmetic task; TRL reads them with a sequential sampler), train with AdamW, lr with linear decay to 0, gradient
clipping at 1.0, seed, temperature 1 and no top-k/top-p, each in its own subprocess (so peak memory is its own).
Both are scored by grpo_vs_trl.py's held-out greedy evaluation (float32), before and after, outside the timed region.

Where the two sides' work still differs, and the choices made:
- ties: with 0/1 rewards both completions of a prompt are often equally right or wrong. TRL still trains on such a
  pair (the first completion counts as chosen: `first_half >= second_half`) and averages the loss over every prompt;
  unipo drops it (`online.min_margin=0` keeps only pairs whose win rates differ) and averages over the kept pairs,
  so it skips their forward and backward passes and its kept pairs weigh more. Both fractions are in the JSON
  (`tied_pairs_frac` for TRL, `pairs_kept_frac` for unipo).
- precision: TRL runs float32 (`bf16=False`); unipo runs its default bf16 autocast over float32 weights on CPUs
  with native bf16, as in grpo_vs_trl.py. `--autocast off` runs unipo in float32 too.
- gradient checkpointing is off on TRL's side, although TRL 1.16 turns it on by default: unipo does not recompute
  activations, and OnlineDPOTrainer also generates without a KV cache when it is on (`use_cache` follows it).
  `--trl-gradient-checkpointing` measures TRL's default instead.
- sampling: each framework draws its completions from its own random stream, so the pairs themselves differ.
- timing: `loop_s` sums the training steps only (TRL: a callback around each step; unipo: its `time/step_s`);
  `train_s` is the whole call: `trainer.train()` for TRL, and `train(cfg)` for unipo, which also loads the policy
  and the reference from disk and writes the final checkpoint.

    python benchmarks/online_dpo_vs_trl.py                  # 30 steps, 8 prompts x 2 completions x 32 tokens
    python benchmarks/online_dpo_vs_trl.py --tiny           # smoke run: tiny random model, 2 steps, 8 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "online_dpo_vs_trl"
TINY = {"steps": 2, "prompts": 2, "max_new_tokens": 8, "eval": 8}
"""Settings of the `--tiny` smoke run, unless given on the command line."""
FULL = {"steps": 30, "prompts": 8, "max_new_tokens": 32, "eval": 100}


def _prompt_rows(args: argparse.Namespace) -> list[dict]:
    """The prompts of every step, in order: unipo's own shuffled stream, so TRL reads exactly what unipo takes."""
    from unipo.data.tasks import PromptStream, arithmetic

    return PromptStream(arithmetic().train, args.seed).take(args.steps * args.prompts)


def _accuracy(model, tokenizer, n: int) -> float | None:
    from grpo_vs_trl import _heldout_accuracy  # the GRPO benchmark's evaluation, unchanged

    return _heldout_accuracy(model, tokenizer, n) if n else None


def run_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from unipo.rewards import contains_answer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    before = _accuracy(model, tokenizer, args.eval)
    tied, rewards = [], []

    def reward(prompts, completions, answer, **kwargs) -> list[float]:
        # TRL scores [first completions of every prompt, then second completions]; a pair is tied when both halves
        # score the same, and TRL trains on it anyway
        r = contains_answer(prompts, completions, answer, **kwargs)
        half = len(r) // 2
        tied.append(sum(a == b for a, b in zip(r[:half], r[half:], strict=True)) / half)
        rewards.append(sum(r) / len(r))
        return r

    class StepTimer(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            StepTimer.seconds += time.perf_counter() - self.t0

    with tempfile.TemporaryDirectory() as out:
        config = OnlineDPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
            learning_rate=args.lr, lr_scheduler_type="linear", max_steps=args.steps, seed=args.seed,
            per_device_train_batch_size=args.prompts, train_sampling_strategy="sequential",
            max_new_tokens=args.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, beta=[0.1], loss_type="sigmoid",
            gradient_checkpointing=args.trl_gradient_checkpointing,
        )  # fmt: skip
        trainer = OnlineDPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=Dataset.from_list(_prompt_rows(args)),
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    after = _accuracy(trainer.model, tokenizer, args.eval)
    return {
        "train_s": seconds, "loop_s": StepTimer.seconds, "accuracy_before": before, "accuracy_after": after,
        "reward_mean": sum(rewards) / len(rewards), "tied_pairs_frac": sum(tied) / len(tied),
    }  # fmt: skip


def _unipo_overrides(args: argparse.Namespace, out: str) -> list[str]:
    common = [
        f"output_dir={out}", f"model.path={args.model}", "model.dtype=float32", f"model.autocast={args.autocast}",
        f"train.max_steps={args.steps}", f"train.prompts_per_step={args.prompts}", f"train.lr={args.lr}",
        "train.lr_schedule=linear", "train.warmup_steps=0", "train.weight_decay=0.0", "train.max_grad_norm=1.0",
        f"train.seed={args.seed}", "rollout.group_size=2", f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0", "rollout.top_k=0", "rollout.top_p=1.0", "eval.num_problems=0",
        "online.oracle=task", "online.min_margin=0", "algo.online.beta=0.1",
    ]  # fmt: skip
    return common


def run_unipo(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unipo import config
    from unipo.trainers import checkpoint, online_preference

    with tempfile.TemporaryDirectory() as out:
        cfg = config.load("online_dpo", _unipo_overrides(args, out))
        before = None
        if args.eval:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
            before = _accuracy(model, AutoTokenizer.from_pretrained(args.model), args.eval)
            del model
        start = time.perf_counter()
        online_preference.train(cfg)
        seconds = time.perf_counter() - start
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        after = None
        if args.eval:
            final = checkpoint.list_checkpoints(Path(out) / "checkpoints")[-1]
            model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
            after = _accuracy(model, AutoTokenizer.from_pretrained(final), args.eval)
    steps = [r for r in rows if "loss" in r]
    return {
        "train_s": seconds, "loop_s": sum(r["time/step_s"] for r in steps), "accuracy_before": before,
        "accuracy_after": after, "reward_mean": sum(r["reward/task_mean"] for r in steps) / len(steps),
        "pairs_kept_frac": sum(r["pairs/kept_frac"] for r in steps) / len(steps),
    }  # fmt: skip


def _acc(r: dict) -> str:
    return "-" if r["accuracy_before"] is None else f"{r['accuracy_before']:.2f} -> {r['accuracy_after']:.2f}"


def _report(args: argparse.Namespace, results: dict) -> dict:
    t, u = results["trl"], results["unipo"]
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "settings": {k: v for k, v in vars(args).items() if k not in ("only", "out")},
        "results": results,
        "speedup_loop": t["loop_s"] / u["loop_s"],
        "speedup_train_time": t["train_s"] / u["train_s"],
        "memory_ratio_trl_over_unipo": t["peak_rss_mb"] / u["peak_rss_mb"],
    }
    table = [
        ("", "TRL 1.16", "unipo (online_dpo)", "TRL / unipo"),
        (f"training loop, {args.steps} steps", f"{t['loop_s']:.1f} s", f"{u['loop_s']:.1f} s",
         f"{summary['speedup_loop']:.2f}"),
        ("steps/s", f"{args.steps / t['loop_s']:.3f}", f"{args.steps / u['loop_s']:.3f}",
         f"unipo {summary['speedup_loop']:.2f}x"),
        ("whole train call", f"{t['train_s']:.1f} s", f"{u['train_s']:.1f} s", f"{summary['speedup_train_time']:.2f}"),
        ("peak RSS", f"{t['peak_rss_mb']:.0f} MB", f"{u['peak_rss_mb']:.0f} MB",
         f"{summary['memory_ratio_trl_over_unipo']:.2f}"),
        ("held-out greedy accuracy", _acc(t), _acc(u), ""),
        ("mean training reward", f"{t['reward_mean']:.3f}", f"{u['reward_mean']:.3f}", ""),
        ("pairs trained", f"all ({t['tied_pairs_frac']:.0%} tied)", f"{u['pairs_kept_frac']:.0%} (no ties)", ""),
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return summary


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help=f"optimizer steps (default {FULL['steps']})")
    p.add_argument("--prompts", type=int, help=f"prompts per step, 2 completions each (default {FULL['prompts']})")
    p.add_argument("--max-new-tokens", type=int, help=f"(default {FULL['max_new_tokens']})")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument(
        "--eval", type=int, help=f"held-out problems scored before and after, 0: none (default {FULL['eval']})"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="model directory (default: the converted SmolLM2-135M-Instruct)")
    p.add_argument("--tiny", action="store_true", help=f"smoke run: a tiny random model and {TINY}")
    p.add_argument("--autocast", choices=["auto", "off"], default="auto", help="unipo's bf16 autocast (TRL: float32)")
    p.add_argument(
        "--trl-gradient-checkpointing", action="store_true", help="TRL's default; off here, as unipo does not recompute"
    )
    p.add_argument("--only", choices=["unipo", "trl"], help="run one framework in this process (internal)")
    p.add_argument("--out", help="JSON result (default: results/online_dpo_vs_trl/{results,tiny}.json)")
    args = p.parse_args()
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or str(RESULTS / ("tiny.json" if args.tiny else "results.json"))
    return args


def main() -> None:
    args = _parse()
    from grpo_vs_trl import run_child, run_children

    if args.only:
        run_child(run_trl if args.only == "trl" else run_unipo, args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            if args.tiny:
                from unipo.models.tiny import build_tiny_model

                args.model = str(build_tiny_model(Path(tmp) / "tiny"))
            else:
                from unipo.models.loading import default_model_dir

                args.model = str(default_model_dir())
        results = run_children(__file__, [*sys.argv[1:], "--model", args.model])
        summary = _report(args, results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
