"""`unipo train | serve | eval | report | compare | export | verify | list`: the command line (also `python -m unipo`).
Heavy imports stay lazy."""

from __future__ import annotations

import argparse
import logging
import os
import sys

USAGE_TRAIN = "unipo train [RECIPE|path.yaml] [key=value ...]   (default recipe: grpo)"
USAGE_SERVE = (
    "unipo serve [key=value ...]   e.g. model.path=DIR rollout.engine=vllm rollout.server.url=http://0.0.0.0:8765"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unipo", description="Policy optimization of language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a model with a recipe", usage=USAGE_TRAIN)
    p_train.add_argument("args", nargs="*", help="a recipe name or YAML file, then dotted key=value overrides")
    p_serve = sub.add_parser("serve", help="host a generation engine for trainers with rollout.engine=server",
                             usage=USAGE_SERVE)  # fmt: skip
    p_serve.add_argument("args", nargs="*", help="dotted key=value settings: model.*, rollout.engine (hf or vllm), "
                         "rollout.vllm.*, rollout.server.url (where to listen)")  # fmt: skip
    p_eval = sub.add_parser("eval", help="score models or run directories on tasks' held-out splits, in one table")
    p_eval.add_argument(
        "args", nargs="*", help="run directories (their latest checkpoint) or model paths, then task=NAME[,NAME...] "
        "k=N (pass@k) num_problems=N max_new_tokens=N",
    )  # fmt: skip
    p_export = sub.add_parser("export", help="write a run's latest checkpoint as a model directory (LoRA merged)")
    p_export.add_argument("source", help="a run directory (its latest checkpoint) or a checkpoint directory")
    p_export.add_argument("out", help="the model directory to write (loadable by transformers and vLLM)")
    p_verify = sub.add_parser(
        "verify", help="run a testbed with known answers (nash: the RPS-like preference game; preference: DPO-type "
        "losses; classic: policy optimisation on gymnasium, needs the `classic` extra; barfi: a learned auxiliary "
        "reward weight on a tabular chain)",
    )  # fmt: skip
    p_verify.add_argument("testbed", choices=["nash", "preference", "classic", "barfi"])
    p_verify.add_argument("--methods", default="ppo_classic,mdpo,ppo_kl_adaptive,a2c,reinforce_classic,trpo,mmd",
                          help="classic: the methods to train")  # fmt: skip
    p_verify.add_argument("--env", default="CartPole-v1", help="classic: a gymnasium environment id")
    p_verify.add_argument("--steps", type=int, default=0, help="classic: environment steps (0: each method's)")
    p_verify.add_argument("--seed", type=int, default=0)
    p_verify.add_argument("--iterations", type=int, default=200)
    p_verify.add_argument("--eta", type=float, default=0.2)
    p_verify.add_argument("--tau", type=float, default=0.2)
    p_verify.add_argument("--plot", metavar="PNG", help="also draw Nash-MD vs Nash-MP curves (needs matplotlib)")
    p_verify.add_argument("--beta", type=float, default=0.5, help="preference: the losses' beta")
    p_report = sub.add_parser("report", help="plots and one self-contained HTML page (curves, sampled completions, "
                              "config) from a run directory")  # fmt: skip
    p_report.add_argument("run_dir", help="a run directory (output_dir of a run, finished or not)")
    p_report.add_argument("--out", help="where to write the plots and index.html (default RUN_DIR/report)")
    p_compare = sub.add_parser("compare", help="overlay the curves of several runs and print a summary table")
    p_compare.add_argument("run_dirs", nargs="+", help="run directories")
    p_compare.add_argument("--out", default="compare.png", help="the PNG of overlaid curves (default compare.png)")
    p_list = sub.add_parser("list", help="every registered component with its paper")
    p_list.add_argument(
        "kind", nargs="?", help="only this kind (advantage, policy_loss, ...), or recipes, tasks, rewards, envs"
    )
    p_list.add_argument("--markdown", nargs="?", const="docs/algorithms.md", metavar="PATH",
                        help="write the whole catalogue as Markdown (default docs/algorithms.md)")  # fmt: skip
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' per-load bars hide ours
    from unipo.config import ConfigError

    try:
        if ns.command == "train":
            return _train(ns.args)
        if ns.command == "eval":
            return _eval(ns.args)
        if ns.command == "serve":
            return _serve(ns.args)
        if ns.command == "export":
            return _export(ns.source, ns.out)
        if ns.command == "report":
            return _report(ns.run_dir, ns.out)
        if ns.command == "compare":
            return _compare(ns.run_dirs, ns.out)
        if ns.command == "verify":
            verifiers = {"preference": _verify_preference, "classic": _verify_classic, "barfi": _verify_barfi}
            return verifiers.get(ns.testbed, _verify)(ns)
        return _write_markdown(ns.markdown) if ns.markdown else _list(ns.kind)
    except ConfigError as e:
        print(f"unipo: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        message = _known_failure(e)
        if message is None:
            raise
        print(f"unipo: error: {message}", file=sys.stderr)
        return 1


def _known_failure(e: Exception) -> str | None:
    """The one-line message of a failure that is not a bug (a corrupt checkpoint, a generation server that failed),
    else None."""
    from unipo.trainers.checkpoint import CheckpointError

    if isinstance(e, CheckpointError):
        return f"{e}. Delete that checkpoint directory to resume from an earlier one."
    server = sys.modules.get("unipo.rollout.server")  # imported by a run with a generation server
    if server is not None and isinstance(e, server.ServerError):
        return f"{e}. The same command resumes from the last checkpoint."
    return None


def _train(args: list[str]) -> int:
    from unipo import api

    recipe = args[0] if args and "=" not in args[0] else None
    api.train(recipe or "grpo", overrides=args[1:] if recipe else args)
    return 0


def _serve(args: list[str]) -> int:
    from unipo.config import load
    from unipo.rollout.server import serve

    serve(load("grpo", overrides=args))
    return 0


def _eval(args: list[str]) -> int:
    from unipo.config import ConfigError
    from unipo.trainers.evaluate import compare

    options = {"task": None, "model": None, "k": "1", "num_problems": "100", "max_new_tokens": None}
    targets = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            targets.append(arg)
        elif key in options:
            options[key] = value
        else:
            raise ConfigError(f"unknown eval option {key}; allowed: {', '.join(options)}")
    if options["model"]:
        targets.append(options["model"])
    try:
        k, n = int(options["k"]), int(options["num_problems"])
        max_new = int(options["max_new_tokens"]) if options["max_new_tokens"] else None
    except ValueError as e:
        raise ConfigError(f"k, num_problems and max_new_tokens must be integers: {e}") from None
    tasks = options["task"].split(",") if options["task"] else None
    print(compare(targets or ["default"], tasks, k=k, num_problems=n, max_new_tokens=max_new))
    return 0


def _export(source: str, out: str) -> int:
    """A plain HF model directory from a run or checkpoint: a LoRA checkpoint's adapters merged into its base."""
    from pathlib import Path

    from unipo.config import ConfigError
    from unipo.models.loading import load_model_and_tokenizer
    from unipo.trainers.evaluate import resolve_target

    if Path(out).exists() and any(Path(out).iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new directory")
    path, _ = resolve_target(source)
    model, tokenizer = load_model_and_tokenizer(path, device="cpu")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"wrote {out} (from {path})")
    return 0


def _report(run_dir: str, out: str | None) -> int:
    from unipo.report import write_report

    page = write_report(run_dir, out)
    print(f"wrote {page} and the plots beside it")
    return 0


def _compare(run_dirs: list[str], out: str) -> int:
    from unipo.report import compare

    table, png = compare(run_dirs, out)
    print(table)
    print(f"wrote {png}")
    return 0


def _verify(ns: argparse.Namespace) -> int:
    """Exploitability per iteration of each online method on the RPS-like preference game (ALGORITHMS.md §13 N1)."""
    import torch

    from unipo.testbeds import games

    ref = torch.full((3,), 1 / 3, dtype=torch.float64)
    star = games.regularized_nash(games.RPS_LIKE, ref, tau=ns.tau)
    nash = games.nash_equilibrium(games.RPS_LIKE)
    gap = float(games.exploitability(star, games.RPS_LIKE))
    print(f"Nash equilibrium {[round(x, 4) for x in nash.tolist()]}; tau={ns.tau}-regularised equilibrium "
          f"{[round(x, 4) for x in star.tolist()]} (its exploitability {gap:.4f}: the regularised methods' last "
          "iterates should reach it; SPPO's average iterate should go to 0)")  # fmt: skip
    rows = {
        "sppo (average iterate)": games.run("sppo", ns.iterations, eta=ns.eta, average=True),
        "inpo (last)": games.run("inpo", ns.iterations, eta=ns.eta, tau=ns.tau),
        "nash_md (last)": games.run("nash_md", ns.iterations, eta=ns.eta, tau=ns.tau),
        "nash_mp_recon (last)": games.run("nash_mp_recon", ns.iterations, eta=ns.eta, tau=ns.tau),
        "online_dpo (last)": games.run("online_dpo", ns.iterations, eta=ns.eta),
    }
    marks = sorted({1, 10, ns.iterations // 4, ns.iterations // 2, ns.iterations} - {0})
    print(f"exploitability (max_y P(y > pi) - 1/2) at iterations {marks}:")
    for name, curve in rows.items():
        print(f"  {name:24s} " + "  ".join(f"{curve[m - 1]:.4f}" for m in marks))
    if ns.plot:
        print(f"wrote {games.plot_nash_curves(ns.plot, iterations=ns.iterations, eta=ns.eta, tau=ns.tau)}")
    return 0


def _verify_preference(ns: argparse.Namespace) -> int:
    """Offline preference losses fitted exactly on a tabular bandit vs their closed forms (ALGORITHMS.md §13 P1–P3)."""
    import math

    import torch

    from unipo.testbeds import bandit

    beta = ns.beta
    print(f"DPO-type losses minimised on the exact pair population of a tabular bandit (beta={beta}); "
          "distance = max_y |log pi(y) - log pi*(y)|")  # fmt: skip
    print("clean Bradley-Terry labels, 4 responses, distance to the closed form:")
    for row in bandit.verify_closed_forms(bandit.DEMO_REWARD, bandit.DEMO_REF, beta=beta):
        print(f"  {row['method']:5s} vs {row['target']:26s} {row['error']:.2e}")
    two_reward = torch.tensor([math.log(3.0), 0.0], dtype=torch.float64)
    two_ref = torch.tensor([0.6, 0.4], dtype=torch.float64)
    rows4 = bandit.verify_label_noise(bandit.DEMO_REWARD, bandit.DEMO_REF, beta=beta)
    rows2 = bandit.verify_label_noise(two_reward, two_ref, beta=beta)
    print("labels flipped with probability eps (cdpo: label_smoothing=eps, rdpo: flip_rate=eps); distance to the clean")
    print("DPO optimum, and for 2 responses to the predicted minimiser (rdpo: clean; dpo/cdpo: logit q'):")
    print(f"  {'eps':5s} {'method':6s} {'clean(n=4)':>11s} {'clean(n=2)':>11s} {'theory(n=2)':>12s}")
    for r4, r2 in zip(rows4, rows2, strict=True):
        print(f"  {r4['noise']:<5.1f} {r4['method']:6s} {r4['clean']:11.2e} {r2['clean']:11.2e} {r2['theory']:12.2e}")
    return 0


def _verify_classic(ns: argparse.Namespace) -> int:
    """Classic methods of ALGORITHMS.md §11 trained on a gymnasium environment: return curves and the greedy policy's
    mean return (CartPole-v1 is solved at 475)."""
    import time

    from unipo import algos
    from unipo.config import ConfigError
    from unipo.testbeds import classic

    try:
        import gymnasium  # noqa: F401
    except ImportError:
        raise ConfigError("unipo verify classic needs gymnasium: pip install 'unipo[classic]'") from None
    methods = [m for m in ns.methods.split(",") if m]
    unknown = sorted(set(methods) - set(algos.names("classic")))
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(algos.names('classic'))}")
    print(f"{ns.env}, seed {ns.seed}: mean training return per tenth of the episodes, then the greedy policy's return")
    for method in methods:
        settings = classic.settings_for(method, ns.env, **({"total_steps": ns.steps} if ns.steps else {}))
        start = time.perf_counter()
        try:
            out = classic.train(method, ns.env, seed=ns.seed, settings=settings)
        except ValueError as e:  # e.g. a method for categorical heads on a continuous environment
            raise ConfigError(f"--methods: {method} on {ns.env}: {e}") from None
        final = classic.evaluate(out["policy"], ns.env)
        points = " ".join(f"{x:.0f}" for x in classic.curve(out["returns"]))
        print(f"  {method:18s} {settings.total_steps} steps, {time.perf_counter() - start:5.1f} s: {points}  -> "
              f"greedy {final:.1f}")  # fmt: skip
    return 0


def _verify_barfi(ns: argparse.Namespace) -> int:
    """BARFI (`reward` `barfi`) on a 5-state chain with exact returns: the primary return of the policy trained on the
    primary reward alone, on the naive sum r_p + r_aux, and on r_p + φ·r_aux with φ learned by the implicit gradient,
    for a distracting and for a potential-based (helpful) auxiliary reward."""
    from unipo.testbeds import barfi

    print("chain of 5 states, γ = 0.9 (best primary return 0.656): primary return after each fifth of the outer steps")
    for aux in ("distractor", "helpful"):
        mdp = barfi.chain(aux=aux)
        alone = barfi.MDP(mdp.P, mdp.r_p, 0 * mdp.r_aux, mdp.start, mdp.gamma)
        runs = {"primary only": (alone, False), "naive sum": (mdp, False), "barfi": (mdp, True)}
        for label, (problem, learn) in runs.items():
            out = barfi.train(problem, learn=learn)
            fifth = len(out["returns"]) // 5
            print(f"  {aux:10s} {label:12s} " + " ".join(f"{x:.3f}" for x in out["returns"][fifth - 1 :: fifth]))
        print(f"  {aux:10s} learned φ(s, left)  = {[round(x, 2) for x in out['phi'][:5, 0].tolist()]}")
        print(f"  {aux:10s} learned φ(s, right) = {[round(x, 2) for x in out['phi'][:5, 1].tolist()]}")
    return 0


def _write_markdown(path: str) -> int:
    from pathlib import Path

    from unipo.catalogue import markdown

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(markdown())
    print(f"wrote {path}")
    return 0


def _recipes() -> list[str]:
    from unipo.config import list_recipes

    return list_recipes()


def _tasks() -> list[str]:
    from unipo.data.tasks import builtin_tasks

    return [f"{name:12s} {make().description} ({budget} tokens)" for name, (make, budget) in
            sorted(builtin_tasks().items())]  # fmt: skip


def _first_doc_lines(named: dict) -> list[str]:
    return [f"{name:16s} {(obj.__doc__ or '').strip().splitlines()[0]}" for name, obj in sorted(named.items())]


def _rewards() -> list[str]:
    from unipo.rewards import BUILTIN

    return _first_doc_lines(BUILTIN)


def _envs() -> list[str]:
    from unipo.envs import builtin_envs

    return _first_doc_lines(builtin_envs())


_LISTINGS = {"recipes": _recipes, "tasks": _tasks, "rewards": _rewards, "envs": _envs}
"""`unipo list NAME` for what is not a component kind."""


def _list(kind: str | None) -> int:
    from unipo.config import ConfigError

    if kind in _LISTINGS:
        print("\n".join(_LISTINGS[kind]()))
        return 0
    from unipo import algos
    from unipo.algos.verification import summary
    from unipo.trainers.inputs import RUNS_IN, where_it_runs

    if kind is not None and kind not in algos.KINDS:
        raise ConfigError(f"unknown kind {kind!r}; kinds: {', '.join(algos.KINDS)}, recipes, tasks, rewards, envs")
    current = None
    for e in algos.entries():
        if kind is not None and e.kind != kind:
            continue
        if e.kind != current:
            current = e.kind
            print(f"\n[{current}]")
        params = ", ".join(f"{k}={v!r}" for k, v in e.params.items())
        params += "".join(f"; also called {a}" for a in algos.registry.aliases_of(e.kind, e.name))
        print(f"  {e.name:24s} {e.paper}  [{e.tag}]" + (f"\n  {'':24s} params: {params}" if params else ""))
        print(f"  {'':24s} verified: {summary(e.kind, e.name)}")
        runs = where_it_runs(e.kind, e.name)
        if runs != RUNS_IN.get(e.kind):  # pure only, or run somewhere other than its kind's trainer
            print(f"  {'':24s} {runs}")
    for k in algos.KINDS if kind is None else [kind]:
        _print_gaps(k)
    return 0


def _print_gaps(kind: str) -> None:
    """The ids of `kind` that are not registered yet, with why (`unipo.algos.gaps`)."""
    from unipo import algos
    from unipo.algos.gaps import gaps

    missing = gaps(kind)
    if missing or not algos.names(kind):
        empty = "" if algos.names(kind) else "\n  (none registered yet: a known gap)"
        print(f"\n[{kind}: not registered yet]{empty}")
    for name, why in missing:
        print(f"  {name:24s} {why}")


if __name__ == "__main__":
    sys.exit(main())
