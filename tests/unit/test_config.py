import subprocess
import sys

import pytest
import yaml

from unipo import config
from unipo.cli import main
from unipo.config import ConfigError


def test_default_recipe_is_grpo_with_contract_keys():
    cfg = config.load()
    assert cfg.recipe == "grpo"
    assert (cfg.algo.advantage.name, cfg.algo.policy_loss.name) == ("grpo", "ppo_clip")
    assert cfg.algo.kl.coef == 0.0 and cfg.task == "arithmetic" and cfg.model.path == "default"


def test_dotted_overrides_reach_every_contract_key():
    cfg = config.load(
        "grpo",
        [
            "model.path=/some/dir",
            "task=lucky7",
            "output_dir=out",
            "train.max_steps=7",
            "train.seed=3",
            "train.prompts_per_step=4",
            "train.lr=1e-5",
            "train.save_every=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=16",
            "rollout.temperature=0.7",
            "algo.advantage.name=dr_grpo",
            "algo.policy_loss.clip_high=0.28",
            "algo.aggregation.name=token_mean",
            "algo.kl.coef=0.04",
        ],
    )
    assert cfg.model.path == "/some/dir" and cfg.task == "lucky7" and cfg.output_dir == "out"
    assert (cfg.train.max_steps, cfg.train.seed, cfg.train.prompts_per_step, cfg.train.save_every) == (7, 3, 4, 2)
    assert cfg.train.lr == 1e-5 and cfg.rollout.temperature == 0.7
    assert (cfg.rollout.group_size, cfg.rollout.max_new_tokens) == (4, 16)
    assert cfg.algo.advantage.name == "dr_grpo" and cfg.algo.aggregation.name == "token_mean"
    assert cfg.algo.policy_loss.model_extra["clip_high"] == 0.28 and cfg.algo.kl.coef == 0.04


def test_resolved_yaml_round_trips():
    cfg = config.load("grpo", ["algo.policy_loss.clip_high=0.28", "train.lr=3e-6"])
    again = config.from_dict(yaml.safe_load(config.to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.lrr=1e-5"], "unknown key train.lrr; allowed here:"),
        (["trian.lr=1e-5"], "unknown key trian; allowed here:"),
        (["train.lr=abc"], "train.lr: Input should be a valid number"),
        (["train.lr=-1"], "train.lr: Input should be greater than 0"),
        (["rollout.group_size=0"], "rollout.group_size: Input should be greater than or equal to 1"),
        (["algo.advantage.name=nope"], "algo.advantage.name: unknown advantage 'nope'; registered:"),
        (
            ["algo.policy_loss.clip_hihg=0.3"],
            "unknown key algo.policy_loss.clip_hihg for policy_loss 'ppo_clip'; allowed:",
        ),
        (["algo.policy_loss.clip_high=wide"], "algo.policy_loss.clip_high: expected float"),
        (["task=chess"], "task: unknown task 'chess'; built-in tasks:"),
        (["train.lr"], "override 'train.lr' is not of the form key=value"),
        (["model.dtype=fp8"], "model.dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16'"),
    ],
)
def test_bad_config_names_the_key(overrides, expected):
    with pytest.raises(ConfigError) as e:
        config.load("grpo", overrides)
    assert expected in str(e.value)


def test_unknown_key_lists_what_is_allowed():
    with pytest.raises(ConfigError) as e:
        config.load("grpo", ["train.lrr=1"])
    assert "max_steps" in str(e.value) and "prompts_per_step" in str(e.value)


def test_unknown_recipe_lists_recipes():
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; available: .*grpo"):
        config.load("nope")


def test_cli_bad_value_exits_2_with_one_line_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "unipo", "train", "train.max_steps=many"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "unipo: error: train.max_steps: Input should be a valid integer, unable to parse string as an integer "
        "(got 'many')"
    ]


def test_cli_main_returns_2_on_bad_component(capsys):
    assert main(["train", "grpo", "algo.kl.name=k9"]) == 2
    assert "algo.kl.name: unknown kl 'k9'; registered: k1, k1+, k2, k3, k3+," in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "algo.regularizers=[{name: sft_nll}]",
            "regularizer 'sft_nll' reads injected samples (`demo_mask`), and no "
            "sampler of this recipe injects any: set algo.sampler to one of hpt",
        ),
        (
            "algo.token_weights=[{name: igpo_hint_mask}]",
            "token_weight 'igpo_hint_mask' reads injected samples (`hint_mask`), and no sampler of this recipe injects "
            "any: set algo.sampler to one of igpo_inpaint",
        ),
        ("algo.sampler={name: knapsack_rl, n_min: 9}", "algo.sampler: knapsack_rl: 4 prompts cannot share 32 rollouts"),
        ("algo.policy_loss.dual_clip=0.5", "algo.policy_loss: cannot run in the on-policy trainer:"),
        ("model.path=/no/such/dir", "model.path: /no/such/dir is not a directory"),
    ],
)
def test_what_the_trainer_cannot_run_is_reported_before_training(override, expected, capsys, tmp_path):
    extra = ["algo.policy_loss.name=dual_clip"] if "dual_clip" in override else []
    assert main(["train", "grpo", override, *extra, f"output_dir={tmp_path / 'run'}"]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_multi_reward_estimators_get_one_reward_column_per_function():
    # GDPO normalises each reward function separately; its `reward_weights` input is a tensor, so the trainer must
    # find it in the signature (it is not a hyperparameter of the registry entry)
    from unipo.trainers.common import build_algo

    assert build_algo(config.load("gdpo")).multi_reward
    assert not build_algo(config.load("grpo")).multi_reward


def test_declared_inputs_follow_the_bound_hyperparameters():
    # REINFORCE++ reads the reference only for its KL-penalised rewards: with kl_coef = 0 (its recipe) the run
    # loads no reference model, runs no reference forward and keeps the zero-advantage skip
    from unipo import algos
    from unipo.trainers.common import build_algo

    entry = algos.entry("advantage", "reinforce_pp")
    assert entry.needs({"kl_coef": 0.0}) == frozenset()
    assert entry.needs({"kl_coef": 0.1}) == {"old_logp", "ref_logp"}
    assert not build_algo(config.load("reinforce_pp")).needs_ref
    assert build_algo(config.load("reinforce_pp", ["algo.advantage.kl_coef=0.1"])).needs_ref
    # a KL estimator is needed only with a KL term; dro reads the reference only when anchored to it
    assert not build_algo(config.load("grpo")).needs_ref
    assert build_algo(config.load("grpo", ["algo.kl.coef=0.05"])).needs_ref
    assert algos.entry("policy_loss", "dro").needs({"anchor": "old"}) == frozenset()
    assert algos.entry("policy_loss", "dro").needs({"anchor": "ref"}) == {"ref_logp"}


def test_an_input_produced_after_a_components_stage_is_a_config_error():
    from unipo.trainers.inputs import PRODUCED_AT, Stage, unavailable

    assert unavailable("advantage", frozenset({"ref_logp", "old_logp", "rewards"})) == []
    assert unavailable("advantage", frozenset({"logp", "entropy", "rewards"})) == ["entropy", "logp"]
    assert unavailable("policy_loss", frozenset(PRODUCED_AT)) == []
    assert PRODUCED_AT["ref_logp"] < Stage.ADVANTAGE < PRODUCED_AT["logp"]


def test_every_on_policy_component_runs_in_the_trainer_or_is_listed_pure_only():
    # the registry walk: each id of an on-policy kind, put alone into the grpo recipe, passes the trainer's setup
    # check (declared inputs produced in time, a dry run with exactly those inputs), unless it is listed as pure
    # only, in which case setup refuses it with the listed reason
    from unipo import algos
    from unipo.algos.registry import REQUIRED
    from unipo.trainers.common import build_algo, check_runnable
    from unipo.trainers.inputs import ALWAYS_RUN, ELSEWHERE, INJECTED_BY, PURE_ONLY, RUNS_IN

    axes = {"advantage": "advantage", "policy_loss": "policy_loss", "aggregation": "aggregation", "kl": "kl",
            "token_weight": "token_weights", "regularizer": "regularizers", "sampler": "sampler",
            "critic": "critic", "reward": "shaping", "adv_post": "adv_post"}  # fmt: skip
    checked = 0
    for e in algos.entries():
        if e.kind not in axes or (e.kind, e.name) in ALWAYS_RUN:
            continue
        if (e.kind, e.name) in ELSEWHERE:  # refused at setup, naming where it runs
            with pytest.raises(ConfigError, match="runs in unipo verify"):
                check_runnable(build_algo(config.load("grpo", [f"algo.shaping=[{{name: {e.name}}}]"])))
            continue
        assert RUNS_IN[e.kind].startswith("rl")
        required = [k for k, v in e.params.items() if v is REQUIRED]
        node = "{name: " + e.name + "".join(f", {k}: 1.0" for k in required) + "}"
        axis = axes[e.kind]
        listed = axis in ("token_weights", "regularizers", "shaping")
        override = f"algo.{axis}=[{node}]" if listed else f"algo.{axis}={node}"
        extra = ["algo.kl.coef=0.1"] if e.kind == "kl" else []
        for name, fact in INJECTED_BY.items():  # reads injected samples: only with a sampler that injects them
            if name in e.needs():
                injector = {"demonstrations": "hpt", "inpaint": "igpo_inpaint", "retry": "r3l_retry_recon"}[fact]
                extra.append(f"algo.sampler={{name: {injector}}}")
                with pytest.raises(ConfigError, match="no sampler of this recipe injects any"):
                    check_runnable(build_algo(config.load("grpo", [override])))
        ppo = e.kind == "critic" or "token_rewards" in e.facts  # per-token rewards need a critic (RTO)
        algo = build_algo(config.load("ppo" if ppo else "grpo", [override, *extra]))
        if (e.kind, e.name) in PURE_ONLY:
            with pytest.raises(ConfigError, match="cannot run in the on-policy trainer yet"):
                check_runnable(algo)
        elif any(k.endswith("_index") for k in e.params):  # reads a second reward function (a flag or a count)
            with pytest.raises(ConfigError, match="list the correctness reward first"):
                check_runnable(algo)
            check_runnable(algo, num_rewards=2)
        else:
            check_runnable(algo)
        checked += 1
    assert checked >= 91  # every on-policy id (91 at the time of writing)
    with pytest.raises(ConfigError, match="combines the reward functions' scores"):
        check_runnable(build_algo(config.load("grpo", ["algo.shaping=[{name: weighted_sum}]"])))


def test_replacing_an_optional_component_drops_the_old_ones_hyperparameters():
    # dapo's sampler is dynamic_sampling; naming another sampler keeps none of its keys (they would be unknown)
    cfg = config.load("dapo", ["algo.sampler.name=red_drop"])
    assert cfg.algo.sampler.name == "red_drop" and not cfg.algo.sampler.model_extra
    assert config.load("ppo", ["algo.critic.name=t_ppo_recon"]).algo.critic.model_extra == {}
